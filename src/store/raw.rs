//! Raw mail, compressed and content-addressed per organization (SPEC 2.10).

use super::{StoreError, Tx, now};
use crate::with_tx;

/// zstd level for raw mail: fast, and mail compresses well at any level.
const LEVEL: i32 = 3;

thread_local! {
    /// One compressor per thread: setting up zstd's context costs as much as compressing a
    /// typical mail.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// Compresses raw mail for [`insert`]; CPU work, done before the transaction.
pub fn compress(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Compressor::new(LEVEL)?);
        }
        match slot.as_mut() {
            Some(c) => c.compress(raw),
            None => zstd::bulk::compress(raw, LEVEL),
        }
    })
}

/// Keeps a message's raw bytes (already compressed); the same bytes are kept once.
pub async fn insert(
    tx: &mut Tx,
    org_id: i64,
    sha256: &str,
    size: usize,
    compressed: &[u8],
) -> Result<(), StoreError> {
    with_tx!(tx, |c| {
        sqlx::query(
        "INSERT INTO raw_messages (organization_id, sha256, size, data, created_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (organization_id, sha256) DO NOTHING"
    )
    .bind(org_id)
    .bind(sha256)
    .bind(i64::try_from(size).unwrap_or(i64::MAX))
    .bind(compressed)
    .bind(now())
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// The raw bytes of a message, decompressed.
pub async fn get(tx: &mut Tx, org_id: i64, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let row: Option<(i64, Vec<u8>)> = with_tx!(tx, |c| sqlx::query_as(
        "SELECT size, data FROM raw_messages WHERE organization_id = $1 AND sha256 = $2"
    )
    .bind(org_id)
    .bind(sha256)
    .fetch_optional(c)
    .await)?;
    match row {
        None => Ok(None),
        Some((size, data)) => {
            let capacity = usize::try_from(size).unwrap_or(0);
            zstd::bulk::decompress(&data, capacity.max(1))
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("raw message {sha256}: {e}")))
        }
    }
}
