//! The quarantine: raw messages whose processing failed, kept with the reason until re-run.

use chrono::{DateTime, Utc};

use super::{StoreError, Tx, clean_text, now};
use crate::with_tx;

/// A quarantined message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Quarantined {
    pub id: i64,
    pub organization_id: Option<i64>,
    pub recipient: String,
    pub source: String,
    pub raw: Vec<u8>,
    pub raw_sha256: String,
    pub reason: String,
    pub attempts: i64,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolution: String,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, organization_id, recipient, source, raw, raw_sha256, reason, attempts, resolved_at, resolution, created_at";

/// Puts a message into quarantine; the same raw message failing again raises its attempt count.
pub async fn add(
    tx: &mut Tx,
    org_id: Option<i64>,
    recipient: &str,
    source: &str,
    raw: &[u8],
    reason: &str,
) -> Result<i64, StoreError> {
    let sha = super::blobs::sha256_hex(raw);
    let existing: Option<i64> = with_tx!(tx, |c| {
        sqlx::query_scalar(
        "SELECT id FROM quarantine WHERE raw_sha256 = $1 AND recipient = $2 AND resolved_at IS NULL"
    )
    .bind(&sha)
    .bind(clean_text(recipient))
    .fetch_optional(c)
    .await
    })?;
    let ts = now();
    if let Some(id) = existing {
        with_tx!(tx, |c| {
            sqlx::query("UPDATE quarantine SET attempts = attempts + 1, reason = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(clean_text(reason))
            .bind(ts)
            .execute(c)
            .await
        .map(|r| r.rows_affected())
        })?;
        return Ok(id);
    }
    Ok(with_tx!(tx, |c| {
        sqlx::query_scalar(
        "INSERT INTO quarantine (organization_id, recipient, source, raw, raw_sha256, reason, attempts, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7) RETURNING id"
    )
    .bind(org_id)
    .bind(clean_text(recipient))
    .bind(source)
    .bind(raw)
    .bind(&sha)
    .bind(clean_text(reason))
    .bind(ts)
    .fetch_one(c)
    .await
    })?)
}

/// Open (unresolved) quarantine entries, optionally of one organization, oldest first.
pub async fn list_open(tx: &mut Tx, org_id: Option<i64>) -> Result<Vec<Quarantined>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM quarantine WHERE resolved_at IS NULL AND ($1 IS NULL OR organization_id = $1) ORDER BY id"
    ));
    Ok(with_tx!(tx, |c| sqlx::query_as(sql)
        .bind(org_id)
        .fetch_all(c)
        .await)?)
}

/// One quarantine entry.
pub async fn get(tx: &mut Tx, id: i64) -> Result<Option<Quarantined>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM quarantine WHERE id = $1"));
    Ok(with_tx!(tx, |c| sqlx::query_as(sql)
        .bind(id)
        .fetch_optional(c)
        .await)?)
}

/// Marks an entry resolved with what re-running it gave.
pub async fn resolve(tx: &mut Tx, id: i64, resolution: &str) -> Result<(), StoreError> {
    with_tx!(tx, |c| sqlx::query(
        "UPDATE quarantine SET resolved_at = $2, resolution = $3, updated_at = $2 WHERE id = $1"
    )
    .bind(id)
    .bind(now())
    .bind(clean_text(resolution))
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}
