//! One session on one mailbox: select, drain, apply the after-action, wait, repeat.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_imap::extensions::idle::IdleResponse;
use futures_util::TryStreamExt as _;
use tokio_util::sync::CancellationToken;

use super::connect::{self, Session, within};
use super::{Fetchers, ImapError, Source};
use crate::pipeline::{Delivery, Envelope, IngestError, Recipient, Source as Via};
use crate::store::imap::{self as state, Position};

/// Set on a message the gateway could not take (no usable sender, too large), so it stays
/// in the mailbox for a person to look at and is not swept by the after-action.
const REJECTED_KEYWORD: &str = "$InitdeskRejected";

/// Most bytes fetched into one batch; a batch holds at least one message whatever its size.
const MAX_BATCH_BYTES: u64 = 64 * 1024 * 1024;

/// What happens to a committed message in the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
enum After {
    Seen,
    Delete,
    Move(String),
}

impl After {
    fn parse(s: &str) -> After {
        match s {
            "delete" => After::Delete,
            _ => match s.strip_prefix("move:") {
                Some(folder) => After::Move(folder.to_string()),
                None => After::Seen,
            },
        }
    }
}

/// What the server can do, read once per session.
struct Caps {
    idle: bool,
    mv: bool,
    uidplus: bool,
}

/// Runs one session until `stop` (shutdown or a lost lease) or an error.
/// `logged_in` turns true once the server accepted the login (the backoff resets).
pub(super) async fn run(
    source: &Source,
    shared: &Fetchers,
    stop: &CancellationToken,
    logged_in: &mut bool,
) -> Result<(), ImapError> {
    let cfg = &source.config;
    let timeout = Duration::from_secs(cfg.timeout_secs);
    shared.status.set_state(&source.name, "connecting");
    let mut session = tokio::select! {
        s = connect::open(cfg, timeout) => s?,
        () = stop.cancelled() => return Ok(()),
    };
    *logged_in = true;
    shared.status.connected(&source.name);
    tracing::info!(mailbox = %source.name, host = %cfg.host, folder = %cfg.folder, "IMAP logged in");

    let caps = within(timeout, "CAPABILITY", async {
        Ok(session.capabilities().await?)
    })
    .await?;
    let caps = Caps {
        idle: cfg.idle && caps.has_str("IDLE"),
        mv: caps.has_str("MOVE"),
        uidplus: caps.has_str("UIDPLUS"),
    };
    let mut m = Mailbox {
        source,
        shared,
        session: Some(session),
        caps,
        after: After::parse(&cfg.after),
        timeout,
        last_uid: 0,
        uidvalidity: 0,
    };
    let result = m.serve(stop).await;
    // Polite logout on the way out; the connection may already be gone.
    if let Some(session) = m.session.as_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(2), session.logout()).await;
    }
    result
}

struct Mailbox<'a> {
    source: &'a Source,
    shared: &'a Fetchers,
    /// `None` only while the session is inside an IDLE handle, or after IDLE failed.
    session: Option<Session>,
    caps: Caps,
    after: After,
    timeout: Duration,
    last_uid: u32,
    uidvalidity: u32,
}

impl Mailbox<'_> {
    async fn serve(&mut self, stop: &CancellationToken) -> Result<(), ImapError> {
        let fresh = self.select().await?;
        if !fresh {
            // A crash between a commit and its after-action leaves committed messages in
            // place; finish their after-action now (they are never fetched again).
            self.sweep().await?;
        }
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            self.shared.status.set_state(&self.source.name, "fetching");
            self.drain(stop).await?;
            self.shared.status.synced(&self.source.name);
            if stop.is_cancelled() {
                return Ok(());
            }
            self.wait(stop).await?;
        }
    }

    /// Selects the folder and loads the position; true when starting from nothing (a new
    /// mailbox or a changed UIDVALIDITY).
    async fn select(&mut self) -> Result<bool, ImapError> {
        let folder = self.source.config.folder.clone();
        let session = live(&mut self.session)?;
        let mailbox = within(self.timeout, "SELECT", async {
            Ok(session.select(&folder).await?)
        })
        .await?;
        self.uidvalidity = mailbox.uid_validity.ok_or(ImapError::NoUidValidity)?;
        let key = self.source.key();
        let mut tx = self.shared.store.begin().await?;
        let stored =
            state::position(&mut tx, self.source.org_id, self.source.inbox_id, &key).await?;
        let fresh = match stored {
            Some(p) if p.uidvalidity == self.uidvalidity => {
                self.last_uid = p.last_uid;
                false
            }
            Some(p) => {
                tracing::warn!(
                    mailbox = %self.source.name,
                    old = p.uidvalidity,
                    new = self.uidvalidity,
                    "UIDVALIDITY changed: the folder is read again from the start; messages already stored are recognised as duplicates"
                );
                metrics::counter!("initdesk_imap_resyncs_total", "mailbox" => self.source.name.clone())
                    .increment(1);
                self.last_uid = 0;
                true
            }
            None => {
                self.last_uid = 0;
                true
            }
        };
        state::save_position(
            &mut tx,
            self.source.org_id,
            self.source.inbox_id,
            &key,
            Position {
                uidvalidity: self.uidvalidity,
                last_uid: self.last_uid,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(fresh)
    }

    /// Applies the after-action to committed messages still in the folder.
    async fn sweep(&mut self) -> Result<(), ImapError> {
        if self.last_uid == 0 {
            return Ok(());
        }
        let unseen = if self.after == After::Seen {
            " UNSEEN"
        } else {
            ""
        };
        let query = format!(
            "UID 1:{}{unseen} NOT KEYWORD {REJECTED_KEYWORD}",
            self.last_uid
        );
        let uids = self.search(&query).await?;
        let mut uids: Vec<u32> = uids.into_iter().filter(|u| *u <= self.last_uid).collect();
        uids.sort_unstable();
        if !uids.is_empty() {
            tracing::info!(mailbox = %self.source.name, count = uids.len(), "finishing the after-action for messages committed before a restart");
            for chunk in uids.chunks(500) {
                self.after_action(chunk).await?;
            }
        }
        Ok(())
    }

    async fn search(&mut self, query: &str) -> Result<HashSet<u32>, ImapError> {
        let session = live(&mut self.session)?;
        within(self.timeout, "UID SEARCH", async {
            Ok(session.uid_search(query).await?)
        })
        .await
    }

    /// New messages above the position, with their sizes, in UID order, and the highest UID
    /// listed. With `after = "seen"` only unseen ones: a mailbox a team has been reading by
    /// hand should not turn its history into tickets, and mail someone already read is theirs.
    async fn pending(&mut self) -> Result<(Vec<(u32, u64)>, u32), ImapError> {
        let from = self.last_uid.saturating_add(1);
        let session = live(&mut self.session)?;
        let timeout = self.timeout;
        let mut sizes: Vec<(u32, u64)> = within(timeout, "UID FETCH sizes", async {
            let stream = session
                .uid_fetch(format!("{from}:*"), "(UID RFC822.SIZE)")
                .await?;
            let fetches: Vec<_> = stream.try_collect().await?;
            Ok(fetches
                .iter()
                .filter_map(|f| Some((f.uid?, u64::from(f.size.unwrap_or(0)))))
                .collect())
        })
        .await?;
        // `n:*` always names the last message, even when its UID is below n.
        sizes.retain(|(uid, _)| *uid >= from);
        let top = sizes.iter().map(|(uid, _)| *uid).max().unwrap_or(0);
        // Searched after the listing and only up to its end: mail arriving in between gets
        // a higher UID and waits for the next pass instead of being skipped as "read".
        let wanted: Option<HashSet<u32>> = if self.after == After::Seen && top >= from {
            Some(self.search(&format!("UID {from}:{top} UNSEEN")).await?)
        } else {
            None
        };
        sizes.retain(|(uid, _)| wanted.as_ref().is_none_or(|w| w.contains(uid)));
        sizes.sort_unstable();
        sizes.dedup_by_key(|(uid, _)| *uid);
        Ok((sizes, top))
    }

    /// Fetches and commits everything new, batch by batch; returns how many were committed.
    /// The next batch is fetched while the previous one commits.
    async fn drain(&mut self, stop: &CancellationToken) -> Result<u64, ImapError> {
        let (pending, top) = self.pending().await?;
        if pending.is_empty() {
            // Only read mail above the position: move past it.
            self.advance(top).await?;
            return Ok(0);
        }
        tracing::debug!(mailbox = %self.source.name, count = pending.len(), "IMAP messages to fetch");
        let batches = batches(
            &pending,
            self.source.config.batch_size,
            MAX_BATCH_BYTES,
            self.shared.max_message_bytes,
        );
        let mut committed = 0u64;
        let mut in_flight: Option<(Vec<u32>, Vec<u32>, tokio::task::JoinHandle<Results>)> = None;
        for batch in batches {
            if stop.is_cancelled() {
                break;
            }
            let (fetched, too_large) = self.fetch(&batch).await?;
            if let Some((uids, rejected, task)) = in_flight.take() {
                committed += self.finish(uids, rejected, task).await?;
            }
            let uids: Vec<u32> = fetched.iter().map(|(u, _)| *u).collect();
            let deliveries: Vec<Delivery> = fetched
                .into_iter()
                .map(|(_, raw)| Delivery {
                    raw: Arc::from(raw),
                    envelope: Envelope {
                        recipient: Recipient::Inbox(self.source.inbox_id),
                        mail_from: None,
                        source: Via::Imap,
                    },
                })
                .collect();
            let intake = self.shared.intake.clone();
            let task = tokio::spawn(async move {
                if deliveries.is_empty() {
                    Vec::new()
                } else {
                    intake.submit(deliveries).await
                }
            });
            in_flight = Some((uids, too_large, task));
        }
        if let Some((uids, rejected, task)) = in_flight.take() {
            committed += self.finish(uids, rejected, task).await?;
        }
        if !stop.is_cancelled() {
            // Everything listed was taken or deliberately skipped (already read).
            self.advance(top).await?;
        }
        Ok(committed)
    }

    /// Moves the position to `uid` when that is forward.
    async fn advance(&mut self, uid: u32) -> Result<(), ImapError> {
        if uid <= self.last_uid {
            return Ok(());
        }
        let mut tx = self.shared.store.begin().await?;
        state::save_position(
            &mut tx,
            self.source.org_id,
            self.source.inbox_id,
            &self.source.key(),
            Position {
                uidvalidity: self.uidvalidity,
                last_uid: uid,
            },
        )
        .await?;
        tx.commit().await?;
        self.last_uid = uid;
        Ok(())
    }

    /// Fetches one batch's bodies; messages over the size limit are not fetched at all.
    async fn fetch(&mut self, batch: &Batch) -> Result<(Vec<(u32, Vec<u8>)>, Vec<u32>), ImapError> {
        if batch.take.is_empty() {
            return Ok((Vec::new(), batch.too_large.clone()));
        }
        let set = uid_set(&batch.take);
        let session = live(&mut self.session)?;
        let mut bodies: Vec<(u32, Vec<u8>)> = within(self.timeout, "UID FETCH bodies", async {
            let mut stream = session.uid_fetch(&set, "(UID BODY.PEEK[])").await?;
            let mut out = Vec::with_capacity(batch.take.len());
            while let Some(f) = stream.try_next().await? {
                if let (Some(uid), Some(body)) = (f.uid, f.body()) {
                    out.push((uid, body.to_vec()));
                }
            }
            Ok(out)
        })
        .await?;
        bodies.sort_unstable_by_key(|(uid, _)| *uid);
        bodies.dedup_by_key(|(uid, _)| *uid);
        // A message expunged by someone else between the size listing and this fetch is
        // simply gone; the rest go on.
        Ok((bodies, batch.too_large.clone()))
    }

    /// Waits for a batch's commit, records the position and applies the after-action.
    async fn finish(
        &mut self,
        uids: Vec<u32>,
        mut rejected: Vec<u32>,
        task: tokio::task::JoinHandle<Results>,
    ) -> Result<u64, ImapError> {
        let results = task
            .await
            .map_err(|e| ImapError::Ingest(format!("commit task failed: {e}")))?;
        let mut done = Vec::with_capacity(uids.len());
        // The position moves over a prefix of the batch only: a message that hit a
        // temporary failure (and everything after it) is fetched again next time.
        let mut stopped_at: Option<(u32, String)> = None;
        for (uid, result) in uids.iter().copied().zip(results) {
            match result {
                Ok(outcome) => {
                    metrics::counter!("initdesk_imap_messages_total", "mailbox" => self.source.name.clone(), "outcome" => outcome.kind())
                        .increment(1);
                    done.push(uid);
                }
                Err(e) if e.is_transient() => {
                    stopped_at = Some((uid, e.to_string()));
                    break;
                }
                Err(e) => {
                    tracing::warn!(mailbox = %self.source.name, uid, error = %e, "message left in the mailbox: the gateway cannot take it");
                    metrics::counter!("initdesk_imap_messages_total", "mailbox" => self.source.name.clone(), "outcome" => rejection_kind(&e))
                        .increment(1);
                    rejected.push(uid);
                }
            }
        }
        let limit = stopped_at.as_ref().map_or(u32::MAX, |(uid, _)| *uid);
        rejected.retain(|u| *u < limit);
        let new_last = done
            .iter()
            .chain(rejected.iter())
            .copied()
            .max()
            .unwrap_or(self.last_uid);
        self.advance(new_last).await?;
        if !rejected.is_empty() {
            self.mark_rejected(&rejected).await?;
        }
        if !done.is_empty() {
            self.after_action(&done).await?;
        }
        let count = done.len() as u64;
        self.shared.status.committed(&self.source.name, count);
        match stopped_at {
            Some((uid, e)) => Err(ImapError::Ingest(format!("UID {uid}: {e}"))),
            None => Ok(count),
        }
    }

    async fn mark_rejected(&mut self, uids: &[u32]) -> Result<(), ImapError> {
        let set = uid_set(uids);
        let command = format!("+FLAGS.SILENT ({REJECTED_KEYWORD})");
        // Servers without keywords refuse the flag; the message stays in place either way.
        if let Err(e) = self.store_flags(&set, &command).await {
            tracing::debug!(mailbox = %self.source.name, error = %e, "cannot set the rejected keyword");
            if matches!(e, ImapError::Timeout(_)) {
                return Err(e);
            }
        }
        Ok(())
    }

    async fn store_flags(&mut self, set: &str, command: &str) -> Result<(), ImapError> {
        let session = live(&mut self.session)?;
        within(self.timeout, "UID STORE", async {
            let stream = session.uid_store(set, command).await?;
            let _: Vec<_> = stream.try_collect().await?;
            Ok(())
        })
        .await
    }

    /// Marks, deletes or moves committed messages.
    async fn after_action(&mut self, uids: &[u32]) -> Result<(), ImapError> {
        let set = uid_set(uids);
        match self.after.clone() {
            After::Seen => self.store_flags(&set, "+FLAGS.SILENT (\\Seen)").await,
            After::Delete => {
                self.store_flags(&set, "+FLAGS.SILENT (\\Deleted)").await?;
                self.expunge(&set).await
            }
            After::Move(folder) => {
                let session = live(&mut self.session)?;
                if self.caps.mv {
                    within(self.timeout, "UID MOVE", async {
                        Ok(session.uid_mv(&set, &folder).await?)
                    })
                    .await
                } else {
                    within(self.timeout, "UID COPY", async {
                        Ok(session.uid_copy(&set, &folder).await?)
                    })
                    .await?;
                    self.store_flags(&set, "+FLAGS.SILENT (\\Deleted)").await?;
                    self.expunge(&set).await
                }
            }
        }
    }

    /// Expunges `set`; without UIDPLUS, EXPUNGE removes every `\Deleted` message of the folder.
    async fn expunge(&mut self, set: &str) -> Result<(), ImapError> {
        let session = live(&mut self.session)?;
        let uidplus = self.caps.uidplus;
        within(self.timeout, "EXPUNGE", async {
            if uidplus {
                let stream = session.uid_expunge(set).await?;
                let _: Vec<_> = stream.try_collect().await?;
            } else {
                let stream = session.expunge().await?;
                let _: Vec<_> = stream.try_collect().await?;
            }
            Ok(())
        })
        .await
    }

    /// Waits for new mail: IDLE until the server reports something (or the refresh time,
    /// or `stop`), else one poll interval.
    async fn wait(&mut self, stop: &CancellationToken) -> Result<(), ImapError> {
        // Responses that arrived outside a command (EXISTS, EXPUNGE) only mean "look again",
        // which the next drain does anyway.
        while live(&mut self.session)?
            .unsolicited_responses
            .try_recv()
            .is_ok()
        {}
        let cfg = &self.source.config;
        if !self.caps.idle {
            self.shared.status.set_state(&self.source.name, "polling");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(cfg.poll_interval_secs)) => {}
                () = stop.cancelled() => {}
            }
            // Keeps the connection alive and notices a dead one before the next drain.
            let session = live(&mut self.session)?;
            return within(self.timeout, "NOOP", async { Ok(session.noop().await?) }).await;
        }
        self.shared.status.set_state(&self.source.name, "idle");
        let refresh = Duration::from_secs(cfg.idle_refresh_secs);
        // The session moves into the IDLE handle and back out; on error it is gone, which
        // ends this session and the fetcher reconnects.
        let mut handle = match self.session.take() {
            Some(session) => session.idle(),
            None => {
                return Err(ImapError::Connect(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the session was lost in IDLE",
                )));
            }
        };
        within(self.timeout, "IDLE", async { Ok(handle.init().await?) }).await?;
        let outcome = {
            let (wait, _interrupt) = handle.wait_with_timeout(refresh);
            // Keepalives from the server reset the crate's own timeout, so the refresh
            // deadline is kept here.
            tokio::select! {
                r = wait => r.map_err(ImapError::Protocol),
                () = tokio::time::sleep(refresh) => Ok(IdleResponse::Timeout),
                () = stop.cancelled() => Ok(IdleResponse::ManualInterrupt),
            }
        };
        let session = within(self.timeout, "DONE", async { Ok(handle.done().await?) }).await?;
        self.session = Some(session);
        outcome.map(|_| ())
    }
}

/// The session, unless it was lost inside IDLE (the caller then reconnects).
fn live(session: &mut Option<Session>) -> Result<&mut Session, ImapError> {
    session
        .as_mut()
        .ok_or(ImapError::Connect(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "the session was lost in IDLE",
        )))
}

/// Per-message results of one committed batch.
type Results = Vec<Result<crate::pipeline::Outcome, IngestError>>;

fn rejection_kind(e: &IngestError) -> &'static str {
    match e {
        IngestError::UnknownRecipient(_) => "unknown_recipient",
        IngestError::Unusable(_) => "unusable",
        IngestError::Temporary(_) => "temporary",
        IngestError::Failed(_) => "failed",
    }
}

/// One batch to fetch: the UIDs to take and those left in the mailbox for their size.
#[derive(Debug, Default, PartialEq)]
struct Batch {
    take: Vec<u32>,
    too_large: Vec<u32>,
}

/// Splits pending messages into batches of at most `count` messages and `bytes` bytes.
fn batches(pending: &[(u32, u64)], count: usize, bytes: u64, max_message: u64) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut current = Batch::default();
    let mut size = 0u64;
    for &(uid, len) in pending {
        if len > max_message {
            current.too_large.push(uid);
            continue;
        }
        if !current.take.is_empty() && (current.take.len() >= count || size + len > bytes) {
            out.push(std::mem::take(&mut current));
            size = 0;
        }
        current.take.push(uid);
        size += len;
    }
    if !current.take.is_empty() || !current.too_large.is_empty() {
        out.push(current);
    }
    out
}

/// A compact IMAP sequence set of sorted UIDs: `1:5,7,9:10`.
fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(uid_set(&[1, 2, 3, 5, 7, 8, 9, 12]), "1:3,5,7:9,12");
        assert_eq!(uid_set(&[4]), "4");
        assert_eq!(uid_set(&[3, 1, 2, 2]), "1:3");
        assert_eq!(uid_set(&[]), "");
    }

    #[test]
    fn batches_respect_count_bytes_and_the_size_limit() {
        let pending = [(1, 10), (2, 10), (3, 10), (4, 1000), (5, 50), (6, 10)];
        let b = batches(&pending, 2, 60, 500);
        assert_eq!(
            b,
            vec![
                Batch {
                    take: vec![1, 2],
                    too_large: vec![]
                },
                Batch {
                    take: vec![3, 5],
                    too_large: vec![4]
                },
                Batch {
                    take: vec![6],
                    too_large: vec![]
                },
            ]
        );
        // One message larger than the byte budget still goes, alone.
        let b = batches(&[(1, 100), (2, 100)], 10, 50, 1000);
        assert_eq!(b.len(), 2);
        assert!(batches(&[], 10, 50, 1000).is_empty());
    }

    #[test]
    fn after_actions_parse() {
        assert_eq!(After::parse("seen"), After::Seen);
        assert_eq!(After::parse("delete"), After::Delete);
        assert_eq!(After::parse("move:Done"), After::Move("Done".into()));
    }
}
