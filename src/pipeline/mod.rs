//! The inbound pipeline: raw bytes and an envelope in, a committed ticket or message out.
//!
//! The steps run in the order of the modules: [`parse`] -> [`route`] -> [`customer`] ->
//! [`thread`] -> [`policy`] -> [`record`] (the store). [`Pipeline::ingest_batch`] commits
//! many messages in one transaction, each under a savepoint, so one bad message never
//! undoes or blocks the others: it goes to the quarantine instead.

pub mod customer;
mod known;
pub mod parse;
pub mod policy;
pub mod prepare;
mod record;
pub mod route;
pub mod thread;

use std::sync::Arc;

pub use route::Recipient;
pub use thread::ReplyTokens;

use crate::config::{Config, LimitsConfig, PolicyConfig};
use crate::store::blobs::{BlobStore, FsBlobStore};
use crate::store::wal_sync::Durable;
use crate::store::{Store, StoreError, Tx, now, quarantine, raw};
use known::Known;
use prepare::{PrepareError, Prepared};
use route::{Route, RouteCache};

/// How a message reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Smtp,
    Lmtp,
    Pipe,
    Imap,
    Replay,
    Reprocess,
}

impl Source {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Smtp => "smtp",
            Source::Lmtp => "lmtp",
            Source::Pipe => "pipe",
            Source::Imap => "imap",
            Source::Replay => "replay",
            Source::Reprocess => "reprocess",
        }
    }
}

/// Where a message goes and who handed it over.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub recipient: Recipient,
    /// SMTP `MAIL FROM` (empty string for the null sender), when known.
    pub mail_from: Option<String>,
    pub source: Source,
}

impl Envelope {
    /// An envelope for `recipient` with no envelope sender.
    pub fn to(recipient: impl Into<String>, source: Source) -> Self {
        Self {
            recipient: Recipient::Address(recipient.into()),
            mail_from: None,
            source,
        }
    }
}

/// What became of an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new ticket with its first message.
    Created {
        ticket_id: i64,
        public_id: i64,
        message_id: i64,
    },
    /// A message on an existing ticket.
    Appended {
        ticket_id: i64,
        public_id: i64,
        message_id: i64,
    },
    /// The same mail was stored before; nothing new was written.
    Duplicate { ticket_id: i64, message_id: i64 },
    /// From one of the gateway's own addresses: dropped and logged.
    Loop,
    /// A delivery-status report, linked to the outgoing message it is about when it is ours.
    Bounce { linked_message_id: Option<i64> },
    /// Processing failed; the raw message waits in the quarantine.
    Quarantined { id: i64, reason: String },
}

impl Outcome {
    /// A short name for logs, metrics and fixture files.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Created { .. } => "created",
            Outcome::Appended { .. } => "appended",
            Outcome::Duplicate { .. } => "duplicate",
            Outcome::Loop => "loop",
            Outcome::Bounce { .. } => "bounce",
            Outcome::Quarantined { .. } => "quarantined",
        }
    }
}

/// Why a message was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No inbox answers to the recipient (SMTP 550 5.1.1, exit 67).
    #[error("unknown recipient: {0}")]
    UnknownRecipient(String),
    /// Nothing usable to make a message from, such as no sender address (exit 65).
    #[error("unusable message: {0}")]
    Unusable(String),
    /// The database or disk failed in a way that may pass (SMTP 451, exit 75).
    #[error("temporary failure: {0}")]
    Temporary(StoreError),
    /// A fault in processing this message; [`Pipeline`] turns it into a quarantine entry.
    #[error("processing failed: {0}")]
    Failed(String),
}

impl IngestError {
    /// Classifies a store error: transient ones are retried, the rest quarantine the message.
    pub fn from_store(e: StoreError) -> Self {
        if e.is_transient() {
            IngestError::Temporary(e)
        } else {
            IngestError::Failed(e.to_string())
        }
    }

    /// True when the sender should keep the message and try again.
    pub fn is_transient(&self) -> bool {
        matches!(self, IngestError::Temporary(_))
    }
}

/// Settings the pipeline runs with.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub limits: LimitsConfig,
    pub policy: PolicyConfig,
    /// Base of attachment download URLs.
    pub public_url: String,
}

/// The inbound pipeline over one store.
#[derive(Debug, Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    blobs: Arc<dyn BlobStore>,
    settings: Settings,
    tokens: ReplyTokens,
    routes: RouteCache,
    /// Batches prepare concurrently but commit one at a time, in order: a reply in one batch
    /// must see the ticket its original opened in the batch before.
    commit_lock: tokio::sync::Mutex<()>,
    /// Parses and renders messages, one thread per core, below the committing threads.
    workers: prepare::Workers,
}

/// One message to ingest.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Shared: one message to several recipients is one buffer.
    pub raw: Arc<Vec<u8>>,
    pub envelope: Envelope,
}

impl Pipeline {
    /// A pipeline over `store`, keeping blobs in `blobs`.
    pub fn new(
        store: Store,
        blobs: Arc<dyn BlobStore>,
        settings: Settings,
        tokens: ReplyTokens,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                blobs,
                settings,
                tokens,
                routes: RouteCache::default(),
                commit_lock: tokio::sync::Mutex::new(()),
                workers: prepare::Workers::new(),
            }),
        }
    }

    /// A pipeline as the configuration describes it (blob directory, secret file, limits).
    pub fn from_config(config: &Config, store: Store) -> std::io::Result<Self> {
        let tokens = ReplyTokens::load_or_create(&config.outbound.secret_file)?;
        let blobs: Arc<dyn BlobStore> = Arc::new(FsBlobStore::new(&config.storage.data_dir));
        let settings = Settings {
            limits: config.limits.clone(),
            policy: config.policy.clone(),
            public_url: config.http.public_url.clone(),
        };
        Ok(Self::new(store, blobs, settings, tokens))
    }

    /// The store this pipeline writes to.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The blob store for attachments and raw mail.
    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.inner.blobs
    }

    /// The reply-token signer.
    pub fn tokens(&self) -> &ReplyTokens {
        &self.inner.tokens
    }

    /// Forgets cached routing data (after organizations, inboxes or agents changed).
    pub fn refresh_routes(&self) {
        self.inner.routes.clear();
    }

    /// Checks a recipient without a message, as SMTP does at `RCPT TO`.
    pub async fn check_recipient(&self, recipient: &Recipient) -> Result<(), IngestError> {
        self.inner
            .routes
            .resolve(&self.inner.store, recipient)
            .await
            .map(|_| ())
    }

    /// Ingests one message and commits it.
    pub async fn ingest(&self, raw: &[u8], envelope: &Envelope) -> Result<Outcome, IngestError> {
        let delivery = Delivery {
            raw: Arc::new(raw.to_vec()),
            envelope: envelope.clone(),
        };
        self.ingest_batch(vec![delivery])
            .await
            .pop()
            .unwrap_or_else(|| Err(IngestError::Failed("empty batch".into())))
    }

    /// Ingests several messages in one transaction; one result per message, in order.
    /// A transient failure fails the whole batch (nothing is committed, everything is retried).
    pub async fn ingest_batch(&self, batch: Vec<Delivery>) -> Vec<Result<Outcome, IngestError>> {
        let prepared = self.prepare_all(batch).await;
        self.commit_prepared(prepared).await
    }

    /// Prepares messages for [`Pipeline::commit_prepared`]: routing, parsing, rendering and
    /// the attachment files, concurrently on every core; nothing is committed yet.
    pub async fn prepare_all(&self, batch: Vec<Delivery>) -> Vec<PreparedDelivery> {
        let mut routed = Vec::with_capacity(batch.len());
        for delivery in batch {
            let route = self
                .inner
                .routes
                .resolve(&self.inner.store, &delivery.envelope.recipient)
                .await;
            routed.push((route, delivery));
        }
        // The CPU work of the whole batch in one job per preparing thread, each taking the
        // next message until none is left: a job per message cost two thread wake-ups each.
        let inputs: Arc<Vec<(Arc<Vec<u8>>, i64)>> = Arc::new(
            routed
                .iter()
                .filter_map(|(route, d)| {
                    route.as_ref().ok().map(|r| (d.raw.clone(), r.entry.org.id))
                })
                .collect(),
        );
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let jobs = (0..self.inner.workers.threads().min(inputs.len())).map(|_| {
            let (inputs, next, inner) = (inputs.clone(), next.clone(), self.inner.clone());
            self.inner.workers.run(move || {
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((raw, org_id)) = inputs.get(i) else {
                        break done;
                    };
                    let result = prepare::guarded(|| {
                        prepare::prepare(
                            raw,
                            *org_id,
                            &inner.settings.public_url,
                            &inner.settings.limits,
                            &inner.blobs,
                        )
                    });
                    done.push((i, result));
                }
            })
        });
        let mut results: Vec<Option<Result<Result<Prepared, PrepareError>, String>>> =
            (0..inputs.len()).map(|_| None).collect();
        for job in futures_util::future::join_all(jobs).await {
            match job {
                Ok(done) => {
                    for (i, result) in done {
                        if let Some(slot) = results.get_mut(i) {
                            *slot = Some(result);
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "a preparing job failed"),
            }
        }
        let mut results = results.into_iter();
        let prepared: Vec<PreparedDelivery> = routed
            .into_iter()
            .map(|(route, delivery)| {
                PreparedDelivery(match route {
                    Err(e) => Staged::Rejected(e),
                    Ok(route) => {
                        let result = results
                            .next()
                            .flatten()
                            .unwrap_or_else(|| Err("the preparing thread went away".into()));
                        staged(route, delivery, result)
                    }
                })
            })
            .collect();
        self.look_up_sender_domains(&prepared).await;
        prepared
    }

    /// Loads the organizations (or their absence) of the senders' domains into the route
    /// cache, for the loop check. Done here, outside the write lock: a domain not seen for a
    /// while costs a read transaction, which inside the serial commit every other message
    /// of the batch and of the batches behind it would wait for.
    async fn look_up_sender_domains(&self, prepared: &[PreparedDelivery]) {
        for p in prepared {
            let Staged::Ready(r) = &p.0 else { continue };
            let Some(from) = record::sender_of(&r.prepared.mail, &r.envelope) else {
                continue;
            };
            let (routes, store) = (&self.inner.routes, &self.inner.store);
            if let Err(e) = policy::loops::is_own_address(routes, store, &from.email).await {
                // The commit asks again and answers for it.
                tracing::debug!(error = %e, "sender domain not looked up ahead");
            }
        }
    }

    /// Commits prepared messages in one transaction, after every batch that asked earlier
    /// (a reply must see the ticket its original opened); one result per message, in order.
    pub async fn commit_prepared(
        &self,
        prepared: Vec<PreparedDelivery>,
    ) -> Vec<Result<Outcome, IngestError>> {
        let (results, durable) = self.commit_prepared_then_sync(prepared).await;
        Self::once_durable(results, durable).await
    }

    /// [`Pipeline::commit_prepared`] that returns as soon as the commit is made, before it
    /// is durable: the next batch can be committed while the disk catches up. The results
    /// may be acknowledged only through [`Pipeline::once_durable`].
    pub async fn commit_prepared_then_sync(
        &self,
        prepared: Vec<PreparedDelivery>,
    ) -> (Vec<Result<Outcome, IngestError>>, Durable) {
        let n = prepared.len();
        // Attachment bytes are durable before the rows that name them; synced before the
        // commit turn, so another batch commits meanwhile (listeners did it already).
        if let Err(e) = self.sync_files(unsynced_files(&prepared)).await {
            return (failed_batch(n, &e), Durable::already());
        }
        let staged = prepared.into_iter().map(|p| p.0).collect();
        let committed = {
            let _turn = self.inner.commit_lock.lock().await;
            self.commit_batch(staged).await
        };
        match committed {
            Ok((results, durable)) => (results, durable),
            Err(e) => (failed_batch(n, &e), Durable::already()),
        }
    }

    /// The results of a commit once it is durable; all temporary failures when it cannot be
    /// made durable (the senders keep the mail and retry).
    pub async fn once_durable(
        results: Vec<Result<Outcome, IngestError>>,
        durable: Durable,
    ) -> Vec<Result<Outcome, IngestError>> {
        match durable.wait().await {
            Ok(()) => results,
            Err(e) => failed_batch(results.len(), &e),
        }
    }

    /// Makes the attachment and raw-mail files of prepared messages durable now, so that
    /// their commit need not: a listener's session does this before it queues its message
    /// for the serial commit. On failure the commit tries again (and answers for it).
    pub async fn make_files_durable(&self, prepared: &mut [PreparedDelivery]) {
        match self.sync_files(unsynced_files(prepared)).await {
            Ok(()) => {
                for p in prepared.iter_mut() {
                    if let Staged::Ready(r) = &mut p.0 {
                        r.blobs_synced = true;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "attachment files not synced; the commit retries"),
        }
    }

    /// Makes these blob-store files durable.
    async fn sync_files(&self, names: Vec<String>) -> Result<(), StoreError> {
        if names.is_empty() {
            return Ok(());
        }
        let blobs = self.inner.blobs.clone();
        match tokio::task::spawn_blocking(move || blobs.sync(&names)).await {
            Ok(synced) => synced.map_err(StoreError::Io),
            Err(e) => Err(StoreError::Io(std::io::Error::other(format!(
                "blob sync task failed: {e}"
            )))),
        }
    }

    async fn commit_batch(
        &self,
        staged: Vec<Staged>,
    ) -> Result<(Vec<Result<Outcome, IngestError>>, Durable), StoreError> {
        // Nothing to write (e.g. every recipient unknown): no transaction at all.
        if staged.iter().all(|s| matches!(s, Staged::Rejected(_))) {
            let results = staged
                .into_iter()
                .map(|s| match s {
                    Staged::Rejected(e) => Err(e),
                    _ => Err(IngestError::Failed("unreachable".into())),
                })
                .collect();
            return Ok((results, Durable::already()));
        }
        // No savepoint per message (on PostgreSQL each is a subtransaction, on SQLite two more
        // round trips): a message that fails half-written aborts the transaction, and the batch
        // runs again with that message quarantined. Failures are rare; the re-run is cheap.
        let mut poisoned: std::collections::HashMap<usize, String> =
            std::collections::HashMap::new();
        let mut raced: std::collections::HashSet<usize> = std::collections::HashSet::new();
        // Set when keeping the batch's raw mail in one statement failed for a reason of its
        // own: then each message keeps its own, so the failure has a message to blame.
        let mut raw_each = false;
        // Set when writing the held-back rows in bulk failed for a reason of their own: then
        // each row is written as it is decided, so the failure has a message to blame.
        let mut eager = false;
        'attempt: for _ in 0..=staged.len() + 1 {
            let mut tx = self.inner.store.begin().await?;
            if let Err(e) = tx.plan_each_execution().await {
                tx.discard().await;
                return Err(e);
            }
            let accepted: Vec<&Ready> = staged
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match s {
                    Staged::Ready(r) if !poisoned.contains_key(&i) => Some(r.as_ref()),
                    _ => None,
                })
                .filter(|r| record::refusal(&r.prepared.mail, &r.envelope).is_none())
                .collect();
            if !eager {
                tx.hold_back_inserts(accepted.len());
            }
            let senders: Vec<Option<String>> = accepted
                .iter()
                .map(|r| record::sender_norm(&r.prepared.mail, &r.envelope))
                .collect();
            let keys: Vec<known::Keys> = accepted
                .iter()
                .zip(&senders)
                .map(|(r, sender)| known::Keys {
                    org_id: r.route.entry.org.id,
                    dedupe_key: &r.prepared.mail.dedupe_key,
                    sender: sender.as_deref(),
                    refs: thread::referenced_ids(&r.prepared.mail)
                        .map(|(id, _)| id.as_str())
                        .collect(),
                })
                .collect();
            let window =
                chrono::Duration::seconds(self.inner.settings.policy.rate_limit_window_secs);
            // SQLite's batch transaction holds the database's only write lock from BEGIN.
            let exclusive = self.inner.store.backend() == crate::store::Backend::Sqlite;
            let mut known = match Known::load(&mut tx, &keys, window, now(), exclusive).await {
                Ok(known) => known,
                Err(e) => {
                    tx.discard().await;
                    return Err(e);
                }
            };
            if !raw_each {
                let rows: Vec<raw::NewRaw> = accepted
                    .iter()
                    .map(|r| raw::NewRaw {
                        org_id: r.route.entry.org.id,
                        sha256: &r.prepared.raw_sha256,
                        size: r.prepared.raw_size,
                        stored: &r.prepared.raw_stored,
                    })
                    .collect();
                if let Err(e) = raw::insert_many(&mut tx, &rows).await {
                    tx.discard().await;
                    if e.is_transient() {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "raw mail of the batch not kept in one statement; keeping it message by message");
                    raw_each = true;
                    continue 'attempt;
                }
            }
            let mut results: Vec<Option<Result<Outcome, IngestError>>> =
                Vec::with_capacity(staged.len());
            for (index, item) in staged.iter().enumerate() {
                let result = match item {
                    Staged::Rejected(_) => None,
                    Staged::Quarantine {
                        org_id,
                        envelope,
                        raw,
                        reason,
                    } => Some(
                        self.quarantine(&mut tx, *org_id, envelope, raw, reason)
                            .await,
                    ),
                    Staged::Ready(ready) => match poisoned.get(&index) {
                        Some(reason) => Some(
                            self.quarantine(
                                &mut tx,
                                Some(ready.route.entry.org.id),
                                &ready.envelope,
                                &ready.raw,
                                reason,
                            )
                            .await,
                        ),
                        None => match self.apply_one(&mut tx, ready, &mut known, !raw_each).await {
                            Applied::Raced | Applied::Poisoned(_) if tx.bulk_write_failed() => {
                                tracing::warn!(
                                    "held-back rows of the batch not written in bulk; writing them one by one"
                                );
                                eager = true;
                                tx.discard().await;
                                continue 'attempt;
                            }
                            Applied::Done(result) => Some(result),
                            Applied::Raced if raced.insert(index) => {
                                tx.discard().await;
                                continue 'attempt;
                            }
                            Applied::Raced => {
                                poisoned.insert(index, "unique key conflict persisted".into());
                                tx.discard().await;
                                continue 'attempt;
                            }
                            Applied::Poisoned(reason) => {
                                poisoned.insert(index, reason);
                                tx.discard().await;
                                continue 'attempt;
                            }
                        },
                    },
                };
                if let Some(Err(IngestError::Temporary(e))) = result {
                    tx.discard().await;
                    return Err(e);
                }
                results.push(result);
            }
            if let Err(e) = tx.write_pending().await.map_err(StoreError::from) {
                tx.discard().await;
                if e.is_transient() {
                    return Err(e);
                }
                tracing::warn!(error = %e, "held-back rows of the batch not written in bulk; writing them one by one");
                eager = true;
                continue 'attempt;
            }
            if let Err(e) = known.return_unused(&mut tx).await {
                tx.discard().await;
                return Err(e);
            }
            let durable = tx.commit_then_sync().await?;
            let results = staged
                .into_iter()
                .zip(results)
                .map(|(item, result)| match (item, result) {
                    (_, Some(r)) => r,
                    (Staged::Rejected(e), None) => Err(e),
                    (_, None) => Err(IngestError::Failed("no result".into())),
                })
                .collect();
            return Ok((results, durable));
        }
        Err(StoreError::Conflict(
            "the batch kept failing; every message is retried later".into(),
        ))
    }

    /// Decides and writes one message inside the batch transaction.
    async fn apply_one(
        &self,
        tx: &mut Tx,
        ready: &Ready,
        known: &mut Known,
        raw_kept: bool,
    ) -> Applied {
        let ctx = record::Context {
            route: &ready.route,
            envelope: &ready.envelope,
            prepared: &ready.prepared,
            tokens: &self.inner.tokens,
            policy: &self.inner.settings.policy,
            routes: &self.inner.routes,
            store: &self.inner.store,
            raw_kept,
        };
        match record::apply(tx, &ctx, known).await {
            Ok(outcome) => Applied::Done(Ok(outcome)),
            // Refused before anything was written (record::apply checks the sender first).
            Err(record::Error::Unusable(reason)) => {
                Applied::Done(Err(IngestError::Unusable(reason)))
            }
            Err(record::Error::Store(e)) if e.is_transient() => {
                Applied::Done(Err(IngestError::Temporary(e)))
            }
            // Another instance stored the same mail at the same moment: the re-run finds it.
            Err(record::Error::Store(e)) if e.is_unique_violation() => Applied::Raced,
            Err(record::Error::Store(e)) => Applied::Poisoned(format!("store: {e}")),
        }
    }

    async fn quarantine(
        &self,
        tx: &mut Tx,
        org_id: Option<i64>,
        envelope: &Envelope,
        raw: &[u8],
        reason: &str,
    ) -> Result<Outcome, IngestError> {
        tracing::error!(recipient = %envelope.recipient, %reason, "message quarantined");
        let id = quarantine::add(
            tx,
            org_id,
            &envelope.recipient.to_string(),
            envelope.source.as_str(),
            raw,
            reason,
        )
        .await
        .map_err(|e| {
            IngestError::Temporary(StoreError::Io(std::io::Error::other(format!(
                "cannot quarantine: {e}"
            ))))
        })?;
        Ok(Outcome::Quarantined {
            id,
            reason: reason.to_string(),
        })
    }

    /// Re-runs one quarantined message; it leaves the quarantine unless it fails again.
    pub async fn reprocess(&self, quarantine_id: i64) -> Result<Outcome, IngestError> {
        let mut tx = self
            .inner
            .store
            .begin_read()
            .await
            .map_err(IngestError::from_store)?;
        let entry = quarantine::get(&mut tx, quarantine_id)
            .await
            .map_err(IngestError::from_store)?;
        tx.rollback().await.map_err(IngestError::from_store)?;
        let entry = entry.ok_or_else(|| {
            IngestError::Unusable(format!("quarantine entry {quarantine_id} does not exist"))
        })?;
        if entry.resolved_at.is_some() {
            return Err(IngestError::Unusable(format!(
                "quarantine entry {quarantine_id} was resolved already ({})",
                entry.resolution
            )));
        }
        let recipient = match entry
            .recipient
            .strip_prefix("inbox:")
            .and_then(|id| id.parse().ok())
        {
            Some(inbox_id) => Recipient::Inbox(inbox_id),
            None => Recipient::Address(entry.recipient.clone()),
        };
        let envelope = Envelope {
            recipient,
            mail_from: None,
            source: Source::Reprocess,
        };
        let outcome = self.ingest(&entry.raw, &envelope).await;
        let resolution = match &outcome {
            Ok(Outcome::Quarantined { .. }) | Err(IngestError::Temporary(_)) => None,
            Ok(o) => Some(o.kind().to_string()),
            Err(e) => Some(format!("rejected: {e}")),
        };
        if let Some(resolution) = resolution {
            let mut tx = self
                .inner
                .store
                .begin()
                .await
                .map_err(IngestError::from_store)?;
            quarantine::resolve(&mut tx, quarantine_id, &resolution)
                .await
                .map_err(IngestError::from_store)?;
            tx.commit().await.map_err(IngestError::from_store)?;
        }
        outcome
    }
}

/// The blob-store files of prepared messages not known to be durable yet.
fn unsynced_files(prepared: &[PreparedDelivery]) -> Vec<String> {
    prepared
        .iter()
        .filter_map(|p| match &p.0 {
            Staged::Ready(r) if !r.blobs_synced => Some(r.blob_names()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// What preparing one routed message came to.
fn staged(
    route: Route,
    delivery: Delivery,
    result: Result<Result<Prepared, PrepareError>, String>,
) -> Staged {
    let org_id = route.entry.org.id;
    let raw = delivery.raw;
    match result {
        Ok(Ok(p)) => Staged::Ready(Box::new(Ready {
            route,
            prepared: p,
            envelope: delivery.envelope,
            raw,
            blobs_synced: false,
        })),
        Ok(Err(PrepareError::Blob(e))) => {
            Staged::Rejected(IngestError::Temporary(StoreError::Io(e)))
        }
        Ok(Err(PrepareError::Parse(reason))) => Staged::Quarantine {
            org_id: Some(org_id),
            envelope: delivery.envelope,
            raw,
            reason,
        },
        Err(failure) => Staged::Quarantine {
            org_id: Some(org_id),
            envelope: delivery.envelope,
            raw,
            reason: format!("processing failed: {failure}"),
        },
    }
}

/// Every message of a batch that could not be committed (or made durable): temporary.
fn failed_batch(n: usize, e: &StoreError) -> Vec<Result<Outcome, IngestError>> {
    let msg = e.to_string();
    tracing::warn!(error = %msg, messages = n, "batch not committed; the sender will retry");
    (0..n)
        .map(|_| {
            Err(IngestError::Temporary(StoreError::Io(
                std::io::Error::other(msg.clone()),
            )))
        })
        .collect()
}

/// What applying one message inside the batch transaction came to.
enum Applied {
    Done(Result<Outcome, IngestError>),
    /// A unique key raced with another instance; run the batch again.
    Raced,
    /// A fault that aborted the transaction; run the batch again with this one quarantined.
    Poisoned(String),
}

/// A message prepared and waiting for [`Pipeline::commit_prepared`].
pub struct PreparedDelivery(Staged);

/// A message between preparing and committing.
enum Staged {
    Ready(Box<Ready>),
    Rejected(IngestError),
    Quarantine {
        org_id: Option<i64>,
        envelope: Envelope,
        raw: Arc<Vec<u8>>,
        reason: String,
    },
}

struct Ready {
    route: Route,
    prepared: Prepared,
    envelope: Envelope,
    raw: Arc<Vec<u8>>,
    /// Its files in the blob store are durable already ([`Pipeline::make_files_durable`]).
    blobs_synced: bool,
}

impl Ready {
    /// The blob-store names of its attachments and, when kept there, its raw mail.
    fn blob_names(&self) -> impl Iterator<Item = String> + '_ {
        self.prepared
            .attachments
            .iter()
            .map(|a| a.sha256.clone())
            .chain(match &self.prepared.raw_stored {
                raw::Stored::Blob(sha) => Some(sha.clone()),
                raw::Stored::Inline(_) => None,
            })
    }
}
