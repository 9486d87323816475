//! IMAP sources: the committed position in each mailbox, and the lease that lets one
//! instance at a time fetch it.

use super::{Backend, StoreError, Tx, TxConn, now};
use crate::with_tx;

// Within one UIDVALIDITY the position only moves forward (two-argument MAX is SQLite's
// GREATEST).
const SAVE_POSITION_SQLITE: &str = "INSERT INTO imap_state (organization_id, inbox_id, source_key, uidvalidity, last_uid, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (organization_id, inbox_id, source_key) DO UPDATE SET
       last_uid = CASE WHEN imap_state.uidvalidity = excluded.uidvalidity
                       THEN MAX(imap_state.last_uid, excluded.last_uid) ELSE excluded.last_uid END,
       uidvalidity = excluded.uidvalidity,
       updated_at = excluded.updated_at";
const SAVE_POSITION_POSTGRES: &str = "INSERT INTO imap_state (organization_id, inbox_id, source_key, uidvalidity, last_uid, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (organization_id, inbox_id, source_key) DO UPDATE SET
       last_uid = CASE WHEN imap_state.uidvalidity = excluded.uidvalidity
                       THEN GREATEST(imap_state.last_uid, excluded.last_uid) ELSE excluded.last_uid END,
       uidvalidity = excluded.uidvalidity,
       updated_at = excluded.updated_at";

// Expiry by the database's clock (milliseconds), so instances on different hosts need not
// agree on the time.
const LEASE_SQLITE: &str = "INSERT INTO imap_leases (organization_id, inbox_id, holder, expires_ms)
     VALUES ($1, $2, $3, CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) + $4)
     ON CONFLICT (organization_id, inbox_id) DO UPDATE SET
       holder = excluded.holder, expires_ms = excluded.expires_ms
     WHERE imap_leases.holder = excluded.holder
        OR imap_leases.expires_ms < CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)
     RETURNING holder";
const LEASE_POSTGRES: &str =
    "INSERT INTO imap_leases (organization_id, inbox_id, holder, expires_ms)
     VALUES ($1, $2, $3, CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + $4)
     ON CONFLICT (organization_id, inbox_id) DO UPDATE SET
       holder = excluded.holder, expires_ms = excluded.expires_ms
     WHERE imap_leases.holder = excluded.holder
        OR imap_leases.expires_ms < CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)
     RETURNING holder";

/// Where fetching a mailbox has got to: every UID up to `last_uid` is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub uidvalidity: u32,
    pub last_uid: u32,
}

/// The stored position of a mailbox, if it was ever fetched.
pub async fn position(
    tx: &mut Tx,
    org_id: i64,
    inbox_id: i64,
    source_key: &str,
) -> Result<Option<Position>, StoreError> {
    let row: Option<(i64, i64)> = with_tx!(tx, |c| {
        sqlx::query_as(
        "SELECT uidvalidity, last_uid FROM imap_state WHERE organization_id = $1 AND inbox_id = $2 AND source_key = $3"
    )
    .bind(org_id)
    .bind(inbox_id)
    .bind(source_key)
    .fetch_optional(c)
    .await
    })?;
    Ok(row.map(|(v, u)| Position {
        uidvalidity: u32::try_from(v).unwrap_or(0),
        last_uid: u32::try_from(u).unwrap_or(0),
    }))
}

/// Records a position; it never moves back within one UIDVALIDITY, so an instance that lost
/// its lease mid-batch cannot undo another's progress.
pub async fn save_position(
    tx: &mut Tx,
    org_id: i64,
    inbox_id: i64,
    source_key: &str,
    p: Position,
) -> Result<(), StoreError> {
    let sql = match tx.backend() {
        Backend::Sqlite => SAVE_POSITION_SQLITE,
        Backend::Postgres => SAVE_POSITION_POSTGRES,
    };
    with_tx!(tx, |c| sqlx::query(sql)
        .bind(org_id)
        .bind(inbox_id)
        .bind(source_key)
        .bind(i64::from(p.uidvalidity))
        .bind(i64::from(p.last_uid))
        .bind(now())
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Takes or renews the lease on a mailbox for `ttl_ms`; true when `holder` has it now.
/// A lease is free when nobody holds it or its holder let it expire (died or hung).
pub async fn acquire_lease(
    tx: &mut Tx,
    org_id: i64,
    inbox_id: i64,
    holder: &str,
    ttl_ms: i64,
) -> Result<bool, StoreError> {
    tx.write_pending().await?;
    let got: Option<String> = match &mut tx.conn {
        TxConn::Sqlite(t) => {
            sqlx::query_scalar(LEASE_SQLITE)
                .bind(org_id)
                .bind(inbox_id)
                .bind(holder)
                .bind(ttl_ms)
                .fetch_optional(&mut **t)
                .await?
        }
        TxConn::Postgres(t) => {
            sqlx::query_scalar(LEASE_POSTGRES)
                .bind(org_id)
                .bind(inbox_id)
                .bind(holder)
                .bind(ttl_ms)
                .fetch_optional(&mut **t)
                .await?
        }
    };
    Ok(got.as_deref() == Some(holder))
}

/// Gives a lease back so another instance can take over at once (clean shutdown).
pub async fn release_lease(
    tx: &mut Tx,
    org_id: i64,
    inbox_id: i64,
    holder: &str,
) -> Result<(), StoreError> {
    with_tx!(tx, |c| sqlx::query(
        "DELETE FROM imap_leases WHERE organization_id = $1 AND inbox_id = $2 AND holder = $3"
    )
    .bind(org_id)
    .bind(inbox_id)
    .bind(holder)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}
