//! What each IMAP fetcher is doing, for `/readyz` and the logs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// The state of one mailbox's fetcher.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MailboxStatus {
    /// `starting`, `standby` (another instance holds the lease), `connecting`, `idle`,
    /// `polling`, `fetching`, `failing` or `stopped`.
    pub state: &'static str,
    /// The last error, kept until a connection succeeds again.
    pub last_error: Option<String>,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// Messages committed since start-up.
    pub committed: u64,
    /// When the mailbox was last checked to the end (RFC 3339).
    pub last_sync: Option<String>,
}

/// Shared by every fetcher and the HTTP handlers; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ImapStatus {
    inner: Arc<Mutex<BTreeMap<String, MailboxStatus>>>,
}

impl ImapStatus {
    fn update(&self, mailbox: &str, f: impl FnOnce(&mut MailboxStatus)) {
        // A poisoned lock only means a fetcher panicked mid-update; the map is still usable.
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(mailbox.to_string()).or_insert(MailboxStatus {
            state: "starting",
            last_error: None,
            failures: 0,
            committed: 0,
            last_sync: None,
        });
        f(entry);
    }

    /// Sets the state of `mailbox`.
    pub fn set_state(&self, mailbox: &str, state: &'static str) {
        self.update(mailbox, |s| s.state = state);
    }

    /// Records a failure.
    pub fn failed(&self, mailbox: &str, error: &str) {
        self.update(mailbox, |s| {
            s.state = "failing";
            s.last_error = Some(error.to_string());
            s.failures += 1;
        });
        metrics::gauge!("initdesk_imap_failing", "mailbox" => mailbox.to_string()).set(1.0);
    }

    /// Records a successful login: the failure streak ends.
    pub fn connected(&self, mailbox: &str) {
        self.update(mailbox, |s| {
            s.last_error = None;
            s.failures = 0;
        });
        metrics::gauge!("initdesk_imap_failing", "mailbox" => mailbox.to_string()).set(0.0);
    }

    /// Counts messages committed by one batch (so a long backlog shows its progress).
    pub fn committed(&self, mailbox: &str, count: u64) {
        self.update(mailbox, |s| s.committed += count);
    }

    /// Notes the time of a sync that read the mailbox to its end.
    pub fn synced(&self, mailbox: &str) {
        self.update(mailbox, |s| {
            s.last_sync = Some(chrono::Utc::now().to_rfc3339());
        });
    }

    /// Every mailbox's status, by name.
    pub fn snapshot(&self) -> BTreeMap<String, MailboxStatus> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
