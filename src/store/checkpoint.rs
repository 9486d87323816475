//! SQLite WAL checkpoints in the background, off the serial write path.
//!
//! By default the connection whose commit pushes the log past 1,000 pages copies the log into
//! the database file inside that `COMMIT`, fsyncing the log and then the database, while it
//! holds the only write lock: every few dozen small SMTP batches one of them took
//! milliseconds more, and every message queued behind it waited. Here a reading connection
//! runs `PRAGMA wal_checkpoint(PASSIVE)` shortly after commits happened instead; a passive
//! checkpoint never blocks a writer. Each run also copies only the newest version of a page
//! that many commits rewrote. The writer keeps a far higher automatic threshold
//! ([`FALLBACK_PAGES`]) in case this task cannot keep up or is gone.

use std::sync::Arc;
use std::time::Duration;

use sqlx::SqlitePool;

use super::wal_sync::WalSync;

/// How often the log is looked at; at most one checkpoint per period, none without commits.
const PERIOD: Duration = Duration::from_millis(100);

/// The writer's own automatic checkpoint threshold, in pages (40 MiB of log at 4 KiB pages).
pub const FALLBACK_PAGES: &str = "10000";

/// Starts checkpointing `wal`'s database through `readers` until the pool is closed.
pub fn spawn(readers: SqlitePool, wal: Arc<WalSync>) {
    tokio::spawn(async move {
        let mut seen = wal.commits();
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !readers.is_closed() {
            tick.tick().await;
            let now = wal.commits();
            if now == seen {
                continue;
            }
            match checkpoint(&readers).await {
                Ok(()) => seen = now,
                // Tried again next period; the writer's fallback threshold bounds the log.
                Err(e) if readers.is_closed() => tracing::debug!(error = %e, "checkpointer stops"),
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
            }
        }
    });
}

async fn checkpoint(readers: &SqlitePool) -> Result<(), sqlx::Error> {
    let mut conn = readers.acquire().await?;
    sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::store::{self, Store, raw};
    use crate::with_tx;

    #[tokio::test]
    async fn committed_pages_reach_the_database_file_without_the_writer_checkpointing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("gateway.db");
        let url = format!("sqlite://{}", db.display());
        let store = store::open(&url, 4).await.expect("open");
        let Store::Sqlite(..) = &store else {
            panic!("not SQLite")
        };
        let mut tx = store.begin().await.expect("begin");
        with_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO organizations (public_id, name, created_at, updated_at) VALUES ('o', 'O', '', '')"
        )
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .expect("org");
        tx.commit().await.expect("commit");
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let before = std::fs::metadata(&db).expect("db").len();

        // 400 KiB of incompressible bytes: about 100 pages, far below the writer's own
        // threshold, so only the background checkpoint can copy them into the file.
        let bytes: Vec<u8> = (0..400 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut tx = store.begin().await.expect("begin");
        raw::insert(&mut tx, 1, "sha", bytes.len(), &raw::Stored::Inline(bytes))
            .await
            .expect("insert");
        tx.commit().await.expect("commit");

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut after = std::fs::metadata(&db).expect("db").len();
        while after < before + 400 * 1024 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            after = std::fs::metadata(&db).expect("db").len();
        }
        assert!(
            after >= before + 400 * 1024,
            "the database file grew from {before} to {after} bytes only"
        );
        store.close().await;
    }
}
