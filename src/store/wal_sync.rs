//! Durability of SQLite commits with the fsync taken off the write lock.
//!
//! The writing connection commits with `synchronous = NORMAL`: `COMMIT` appends the
//! transaction to the write-ahead log without waiting for the disk. The commit is durable once
//! the log file is fsynced after it, and nothing is acknowledged before that ([`Durable`]).
//! The next transaction runs meanwhile instead of waiting behind the fsync (measured: the
//! fsync was a third of a small SMTP batch's time under the write lock).
//!
//! One fsync covers every commit before it, so waiters share them. A failed fsync may have
//! dropped log pages that a later, successful one would not write again, so after one every
//! later sync fails too, until the gateway restarts and SQLite recovers the log (what
//! PostgreSQL does on a failed fsync, too).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::StoreError;

/// The log of one SQLite database and how far it is known to be on disk.
#[derive(Debug)]
pub struct WalSync {
    path: PathBuf,
    /// Commits made so far; a commit's number is this after its `COMMIT` returned.
    committed: AtomicU64,
    /// The highest commit number an fsync finished for; held while an fsync runs, so they
    /// run one at a time and in order.
    synced: tokio::sync::Mutex<u64>,
    failed: AtomicBool,
}

impl WalSync {
    /// The log beside the database file `db`.
    pub fn for_database(db: &std::path::Path) -> Arc<WalSync> {
        let mut path = db.as_os_str().to_owned();
        path.push("-wal");
        Arc::new(WalSync {
            path: PathBuf::from(path),
            committed: AtomicU64::new(0),
            synced: tokio::sync::Mutex::new(0),
            failed: AtomicBool::new(false),
        })
    }

    /// Counts a commit that returned; the result is what [`WalSync::wait`] needs.
    pub fn committed(self: &Arc<Self>) -> Durable {
        let number = self.committed.fetch_add(1, Ordering::SeqCst) + 1;
        Durable {
            wal: Some((self.clone(), number)),
        }
    }

    /// How many commits were made so far.
    pub fn commits(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// An error when an fsync failed before: writes must not go on.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(failed_before());
        }
        Ok(())
    }

    async fn wait(&self, number: u64) -> Result<(), StoreError> {
        let mut synced = self.synced.lock().await;
        self.check()?;
        if *synced >= number {
            return Ok(());
        }
        // Everything committed up to now is in the file: this fsync covers it all.
        let upto = self.committed.load(Ordering::SeqCst);
        let path = self.path.clone();
        let outcome = tokio::task::spawn_blocking(move || match std::fs::File::open(&path) {
            Ok(file) => file.sync_data(),
            // No log: the last connection checkpointed it into the (synced) database file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match outcome {
            Ok(()) => {
                *synced = upto;
                Ok(())
            }
            Err(e) => {
                self.failed.store(true, Ordering::SeqCst);
                tracing::error!(error = %e, path = %self.path.display(), "fsync of the SQLite log failed; no more writes until the gateway restarts");
                Err(StoreError::Io(std::io::Error::other(format!(
                    "fsync of the database log {} failed: {e}",
                    self.path.display()
                ))))
            }
        }
    }
}

fn failed_before() -> StoreError {
    StoreError::Io(std::io::Error::other(
        "an fsync of the database log failed earlier; restart the gateway once the disk is sound",
    ))
}

/// A committed transaction, durable once [`Durable::wait`] returns `Ok`.
#[derive(Debug, Default)]
#[must_use = "a commit is acknowledged only after it is durable"]
pub struct Durable {
    wal: Option<(Arc<WalSync>, u64)>,
}

impl Durable {
    /// A commit durable when it returned (PostgreSQL, SQLite in memory or `synchronous = FULL`).
    pub fn already() -> Self {
        Self::default()
    }

    /// Waits until the commit is on disk.
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.wal {
            Some((wal, number)) => wal.wait(number).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_share_fsyncs_and_a_failure_stops_every_later_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("gateway.db");
        std::fs::write(dir.path().join("gateway.db-wal"), b"log").expect("write");
        let wal = WalSync::for_database(&db);
        let first = wal.committed();
        let second = wal.committed();
        first.wait().await.expect("synced");
        assert_eq!(
            *wal.synced.lock().await,
            2,
            "one fsync covered both commits"
        );
        second.wait().await.expect("covered already");

        // A log that cannot be opened (its folder is a file) fails the sync, and every sync
        // after it, even once the log is fine again.
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, b"").expect("write");
        let broken = WalSync::for_database(&blocked.join("gateway.db"));
        assert!(broken.committed().wait().await.is_err());
        assert!(broken.check().is_err());
        std::fs::remove_file(&blocked).expect("remove");
        assert!(broken.committed().wait().await.is_err());

        // No log at all: checkpointed into the database file by the last connection.
        let gone = WalSync::for_database(&dir.path().join("other.db"));
        gone.committed().wait().await.expect("nothing to sync");
    }
}
