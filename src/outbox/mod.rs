//! The sender: drains the durable outbox through the SMTP relay (lettre, pooled
//! connections), with retries and backoff; the last failure marks the message failed and
//! notes why on its ticket (SPEC 3).

pub mod compose;
pub mod relay;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lettre::transport::smtp::extension::ClientId;
use rand::Rng as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::pipeline::thread::ReplyTokens;
use crate::store::blobs::BlobStore;
use crate::store::outbox::{self, Job, Settled};
use crate::store::tickets::{self, NewMessage};
use crate::store::{Store, StoreError};
use compose::ComposeError;

/// How the sender runs.
#[derive(Debug, Clone)]
pub struct SenderSettings {
    /// lettre URL of the relay: `smtp://host:port`, `smtps://`, `?tls=required`, `user:pass@`.
    pub relay: String,
    /// Name given in EHLO.
    pub hello_name: String,
    /// Attempts before a message is given up on.
    pub max_attempts: u32,
    /// First retry delay; each later one doubles (with jitter), up to an hour.
    pub retry_base: Duration,
    /// Messages sent at once (and pooled relay connections).
    pub concurrency: usize,
    /// Extra CA certificates (PEM) for the relay's TLS certificate; empty: none.
    pub ca_file: String,
    /// This instance's name on claimed rows.
    pub holder: String,
    /// `http.public_url`, for the `download_url`s in webhook payloads.
    pub public_url: String,
}

/// Why the relay could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("outbound.relay {relay:?}: {reason}")]
pub struct RelayError {
    relay: String,
    reason: String,
}

/// The outbox sender of one instance.
#[derive(Clone)]
pub struct Sender {
    store: Store,
    blobs: Arc<dyn BlobStore>,
    tokens: ReplyTokens,
    relay: Arc<relay::Relay>,
    directory: Arc<compose::Directory>,
    settings: SenderSettings,
    wake: Arc<Notify>,
    webhooks: webhook::Webhooks,
}

/// How long a claim lasts; a sender that dies mid-send leaves its rows to others after it.
const CLAIM_MS: i64 = 5 * 60 * 1000;
/// The queue of claimed rows is topped up when it holds fewer than this many per connection…
const CLAIM_LOW: usize = 2;
/// …to this many per connection.
const CLAIM_HIGH: usize = 4;
/// How long marking handed-over rows as sent is retried through a database outage (a
/// restart or fail-over), well inside the claim; a stopping sender waits for it.
const RECORD_RETRY_FOR: Duration = Duration::from_secs(30);
/// How long the first handed-over row waits for others to be recorded with it. Recording is
/// what a crash would lose (those rows are sent again after their claim), so this stays
/// short; at 400 mails a second it makes a transaction of about eight rows instead of one.
const RECORD_GATHER: Duration = Duration::from_millis(20);
/// How often the outbox is looked at when nothing wakes the sender (retries fall due,
/// another instance queued something).
const POLL: Duration = Duration::from_millis(500);

impl Sender {
    /// A sender over `store`, sending through `settings.relay`.
    pub fn new(
        store: Store,
        blobs: Arc<dyn BlobStore>,
        tokens: ReplyTokens,
        settings: SenderSettings,
    ) -> Result<Sender, RelayError> {
        let fail = |reason: String| RelayError {
            relay: crate::cli::redact(&settings.relay),
            reason,
        };
        let relay = relay::Relay::from_url(
            &settings.relay,
            &settings.ca_file,
            ClientId::Domain(settings.hello_name.clone()),
            Duration::from_secs(60),
            settings.concurrency.max(1),
        )
        .map_err(fail)?;
        let webhooks = webhook::Webhooks::new().map_err(fail)?;
        Ok(Sender {
            webhooks,
            store,
            blobs,
            tokens,
            relay: Arc::new(relay),
            directory: Arc::default(),
            settings,
            wake: Arc::new(Notify::new()),
        })
    }

    /// Wakes the sender at once (after a commit that queued something).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Sends until `stop`; the rows in hand are finished first.
    ///
    /// Claims top up a small queue while sends run, so the relay connections never wait for
    /// a claim or for the slowest send of a batch; the queue stays short, so a claimed row
    /// starts long before its lease ends even when every send runs into the relay's timeout.
    pub async fn run(self, stop: CancellationToken) {
        let concurrency = self.settings.concurrency.max(1);
        let mut queue: std::collections::VecDeque<(Job, Option<Arc<compose::Inputs>>)> =
            std::collections::VecDeque::new();
        let mut running = tokio::task::JoinSet::new();
        let mut failures = 0u32;
        // The last claim found fewer rows than it asked for: no more until a wake-up, the
        // poll interval, or the sends in hand are done.
        let mut drained = false;
        let (sent, sent_rx) = tokio::sync::mpsc::unbounded_channel();
        let settler = tokio::spawn(self.clone().record_sent_in_batches(sent_rx));
        loop {
            if !stop.is_cancelled() && !drained && queue.len() < concurrency * CLAIM_LOW {
                let want = concurrency * CLAIM_HIGH - queue.len();
                match self.claim(want).await {
                    Ok(jobs) => {
                        failures = 0;
                        drained = jobs.len() < want;
                        let mut inputs = self.read_inputs(&jobs).await;
                        queue.extend(jobs.into_iter().map(|job| {
                            let read = inputs.remove(&job.id);
                            (job, read)
                        }));
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        if failures == 1 {
                            tracing::warn!(error = %e, "outbox: cannot claim messages; retrying");
                        }
                        drained = true;
                    }
                }
            }
            while running.len() < concurrency {
                let Some((job, inputs)) = queue.pop_front() else {
                    break;
                };
                let (sender, sent) = (self.clone(), sent.clone());
                running.spawn(async move { sender.handle(job, inputs, &sent).await });
            }
            if running.is_empty() {
                if stop.is_cancelled() {
                    break;
                }
                let wait = if failures > 0 {
                    Duration::from_millis(200 * u64::from(failures.min(25)))
                } else {
                    POLL
                };
                tokio::select! {
                    () = self.wake.notified(), if failures == 0 => {}
                    () = tokio::time::sleep(wait) => {}
                    () = stop.cancelled() => {}
                }
                drained = false;
                continue;
            }
            tokio::select! {
                done = running.join_next() => {
                    if let Some(Err(e)) = done {
                        tracing::error!(error = %e, "outbox: a send task failed");
                    }
                }
                () = self.wake.notified(), if drained && failures == 0 => drained = false,
            }
        }
        // Every send has ended; what they handed over is recorded before the sender stops.
        drop(sent);
        if let Err(e) = settler.await {
            tracing::error!(error = %e, "outbox: the recording task failed");
        }
        self.relay.shutdown().await;
    }

    /// Records handed-over rows as sent, all that finish within [`RECORD_GATHER`] in one
    /// transaction: with a commit per mail, the sender's statements and fsyncs outnumbered
    /// the sends'.
    async fn record_sent_in_batches(self, mut sent: tokio::sync::mpsc::UnboundedReceiver<Job>) {
        while let Some(first) = sent.recv().await {
            let mut jobs = vec![first];
            let until = tokio::time::Instant::now() + RECORD_GATHER;
            while jobs.len() < crate::store::MAX_ROWS {
                match sent.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => match tokio::time::timeout_at(until, sent.recv()).await {
                        Ok(Some(job)) => jobs.push(job),
                        _ => break,
                    },
                }
            }
            self.record_sent_retrying(&jobs).await;
        }
    }

    /// Records `jobs` as sent, trying again for a while when the database fails in a way
    /// that passes: unrecorded, their claims expire and the relay gets them a second time.
    async fn record_sent_retrying(&self, jobs: &[Job]) {
        let give_up = tokio::time::Instant::now() + RECORD_RETRY_FOR;
        let mut wait = Duration::from_millis(100);
        loop {
            match self.record_sent(jobs).await {
                Ok(()) => return,
                Err(e) if e.is_transient() && tokio::time::Instant::now() + wait < give_up => {
                    tracing::debug!(rows = jobs.len(), error = %e, "outbox: recording sent messages again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    // The claims expire and other attempts follow; a relay that already
                    // accepted a message then gets it twice (the Message-ID stays the same).
                    tracing::warn!(rows = jobs.len(), error = %e, "outbox: cannot record sent messages");
                    return;
                }
            }
        }
    }

    async fn claim(&self, limit: usize) -> Result<Vec<Job>, StoreError> {
        let mut tx = self.store.begin().await?;
        let limit = i64::try_from(limit).unwrap_or(64);
        let jobs = outbox::claim(&mut tx, &self.settings.holder, CLAIM_MS, limit).await?;
        tx.commit().await?;
        Ok(jobs)
    }

    /// Reads, for every email among `jobs`, what composing it needs: one read transaction
    /// for the claim. Keyed by outbox row; a row left out (the read failed) reads its own.
    async fn read_inputs(&self, jobs: &[Job]) -> HashMap<i64, Arc<compose::Inputs>> {
        let mut by_org: std::collections::BTreeMap<i64, Vec<&Job>> =
            std::collections::BTreeMap::new();
        for job in jobs.iter().filter(|j| j.kind == "email") {
            by_org.entry(job.organization_id).or_default().push(job);
        }
        let mut read = HashMap::new();
        if by_org.is_empty() {
            return read;
        }
        let mut tx = match self.store.begin_read().await {
            Ok(tx) => tx,
            Err(e) => {
                tracing::debug!(error = %e, "outbox: claimed mail not read ahead");
                return read;
            }
        };
        for (org_id, jobs) in by_org {
            let ids: Vec<i64> = jobs.iter().filter_map(|j| j.message_id).collect();
            match compose::Inputs::load(&mut tx, &self.directory, org_id, &ids).await {
                Ok(inputs) => {
                    let inputs = Arc::new(inputs);
                    read.extend(jobs.iter().map(|j| (j.id, inputs.clone())));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "outbox: claimed mail not read ahead");
                    break;
                }
            }
        }
        let _ = tx.rollback().await;
        read
    }

    /// Sends one row (with what composing it needs, when that was read with its claim); a
    /// row handed over goes to `sent` for recording, any other outcome is recorded here.
    async fn handle(
        &self,
        job: Job,
        inputs: Option<Arc<compose::Inputs>>,
        sent: &tokio::sync::mpsc::UnboundedSender<Job>,
    ) {
        let result = match (job.kind.as_str(), job.message_id) {
            ("email", Some(message_id)) => self.send_email(&job, message_id, inputs).await,
            ("webhook", _) => self
                .webhooks
                .deliver(&self.store, &self.settings.public_url, &job)
                .await
                .map(|()| {
                    metrics::counter!("initdesk_outbox_sent_total", "kind" => "webhook")
                        .increment(1);
                })
                .map_err(|f| {
                    if f.permanent {
                        Failure::Permanent(f.reason)
                    } else {
                        Failure::Temporary(f.reason)
                    }
                }),
            _ => Err(Failure::Permanent(format!(
                "unknown outbox item {:?}",
                job.kind
            ))),
        };
        let id = job.id;
        let recorded = match result {
            // The recording task is gone only if the sender stopped; then record it here.
            Ok(()) => match sent.send(job) {
                Ok(()) => return,
                Err(unsent) => self.record_sent(&[unsent.0]).await,
            },
            Err(Failure::Temporary(reason))
                if job.attempts < i64::from(self.settings.max_attempts) =>
            {
                self.record_retry(&job, &reason).await
            }
            Err(Failure::Temporary(reason) | Failure::Permanent(reason)) => {
                self.record_failed(&job, &reason).await
            }
        };
        if let Err(e) = recorded {
            // The claim expires and another attempt follows; a relay that already accepted
            // the message may then get it twice (the Message-ID stays the same).
            tracing::warn!(outbox_id = id, error = %e, "outbox: cannot record the result of a send");
        }
    }

    async fn send_email(
        &self,
        job: &Job,
        message_id: i64,
        inputs: Option<Arc<compose::Inputs>>,
    ) -> Result<(), Failure> {
        let composed = match inputs {
            Some(inputs) => compose::build(
                &inputs,
                self.blobs.as_ref(),
                &self.tokens,
                job.organization_id,
                message_id,
            ),
            None => {
                let mut tx = self
                    .store
                    .begin_read()
                    .await
                    .map_err(|e| Failure::Temporary(e.to_string()))?;
                let composed = compose::compose(
                    &mut tx,
                    self.blobs.as_ref(),
                    &self.tokens,
                    &self.directory,
                    job.organization_id,
                    message_id,
                )
                .await;
                let _ = tx.rollback().await;
                composed
            }
        }
        .map_err(|e| match e {
            ComposeError::Store(e) if e.is_transient() => Failure::Temporary(e.to_string()),
            e => Failure::Permanent(e.to_string()),
        })?;
        let sent = self
            .relay
            .send(composed.message.envelope(), &composed.message.formatted())
            .await;
        match sent {
            Ok(_) => {
                metrics::counter!("initdesk_outbox_sent_total", "kind" => "email").increment(1);
                Ok(())
            }
            Err(e) if e.is_permanent() => {
                Err(Failure::Permanent(format!("the relay refused it: {e}")))
            }
            Err(e) => Err(Failure::Temporary(format!("relay: {e}"))),
        }
    }

    async fn record_sent(&self, jobs: &[Job]) -> Result<(), StoreError> {
        let mut by_org: std::collections::BTreeMap<i64, (Vec<i64>, Vec<i64>)> =
            std::collections::BTreeMap::new();
        for job in jobs {
            let (rows, messages) = by_org.entry(job.organization_id).or_default();
            rows.push(job.id);
            messages.extend(job.message_id);
        }
        let mut tx = self.store.begin().await?;
        for (org_id, (rows, messages)) in &by_org {
            outbox::settle_sent(&mut tx, *org_id, rows).await?;
            tickets::record_send_progress(&mut tx, *org_id, messages, "sent").await?;
        }
        tx.commit().await
    }

    async fn record_retry(&self, job: &Job, reason: &str) -> Result<(), StoreError> {
        let delay = backoff(self.settings.retry_base, job.attempts);
        tracing::info!(
            outbox_id = job.id,
            attempt = job.attempts,
            retry_in_secs = delay.as_secs(),
            reason,
            "outbox: send failed; will retry"
        );
        metrics::counter!("initdesk_outbox_retries_total").increment(1);
        let next = outbox::now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
        let mut tx = self.store.begin().await?;
        outbox::settle(
            &mut tx,
            job.organization_id,
            job.id,
            &Settled::RetryAt(next, reason),
        )
        .await?;
        if let Some(message_id) = job.message_id {
            tickets::record_send_progress(&mut tx, job.organization_id, &[message_id], "retrying")
                .await?;
        }
        tx.commit().await
    }

    async fn record_failed(&self, job: &Job, reason: &str) -> Result<(), StoreError> {
        tracing::warn!(
            outbox_id = job.id,
            attempts = job.attempts,
            reason,
            "outbox: giving up"
        );
        metrics::counter!("initdesk_outbox_failed_total", "kind" => job.kind.clone()).increment(1);
        let mut tx = self.store.begin().await?;
        outbox::settle(
            &mut tx,
            job.organization_id,
            job.id,
            &Settled::Failed(reason),
        )
        .await?;
        if let Some(message_id) = job.message_id
            && let Some((ticket_id, _)) =
                tickets::outbound_message(&mut tx, job.organization_id, message_id).await?
        {
            tickets::set_delivery_state(&mut tx, job.organization_id, message_id, "failed").await?;
            let note = format!(
                "Delivery of message {message_id} failed after {} attempt(s): {reason}",
                job.attempts
            );
            tickets::insert_message(
                &mut tx,
                &NewMessage {
                    organization_id: job.organization_id,
                    ticket_id,
                    role: "system",
                    direction: "internal",
                    content: &note,
                    is_visible_to_customer: false,
                    ..NewMessage::default()
                },
            )
            .await?;
        }
        tx.commit().await
    }
}

/// Why a send did not happen.
enum Failure {
    /// Worth another attempt (relay down, 4xx, database busy).
    Temporary(String),
    /// Never going to work (5xx, no usable recipient).
    Permanent(String),
}

/// `base`, doubling per attempt up to an hour, each drawn between half and all of it.
fn backoff(base: Duration, attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.clamp(1, 20) - 1).unwrap_or(0);
    let full = base
        .saturating_mul(2u32.saturating_pow(exp))
        .min(Duration::from_secs(3600));
    let ms = u64::try_from(full.as_millis()).unwrap_or(u64::MAX).max(2);
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let base = Duration::from_secs(30);
        for (attempt, full) in [(1, 30), (2, 60), (3, 120), (10, 3600), (40, 3600)] {
            let d = backoff(base, attempt);
            assert!(
                d >= Duration::from_secs(full) / 2 && d <= Duration::from_secs(full),
                "attempt {attempt}: {d:?}"
            );
        }
    }
}
