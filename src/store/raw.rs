//! Raw mail, compressed and content-addressed per organization (SPEC 2.10).
//!
//! Small mail is kept in the database row. Compressed mail above [`INLINE_MAX`] bytes (nearly
//! always a message with attachments) goes to the blob store and the row names it: written
//! into the database it would be written twice more (WAL, then checkpoint) inside the serial
//! commit, which measured as the largest single cost of ingesting mail with attachments.

use super::blobs::{self, BlobStore};
use super::{StoreError, Tx, now};
use crate::with_tx;

/// zstd level for raw mail: the fastest; higher levels gain little on mail and cost 50 % more.
const LEVEL: i32 = 1;

/// zstd level for big raw mail: matches only, literals stored as they are.
///
/// Big mail is nearly all base64 of an attachment that is itself compressed (PDF, JPEG,
/// ZIP, Office). Level 1 gains only its Huffman coding of base64's 64 symbols there (the
/// mail shrinks by a quarter), at about 2 ns per byte: measured as 7 % of all the CPU the
/// pipeline spends. A negative level keeps the text parts compressed and skips that.
const BIG_LEVEL: i32 = -1;

/// Raw mail from this size on is compressed at [`BIG_LEVEL`].
const BIG_FROM: usize = 64 * 1024;

/// Compressed raw mail larger than this is kept in the blob store, not in the row.
pub const INLINE_MAX: usize = 32 * 1024;

/// Where a message's compressed raw bytes are kept.
#[derive(Debug, Clone)]
pub enum Stored {
    /// In the `raw_messages` row.
    Inline(Vec<u8>),
    /// In the blob store, under this name (`raw/<sha256 of the raw mail>`; mail stored
    /// before that naming is under the SHA-256 of its compressed bytes).
    Blob(String),
}

/// Compresses `raw` (whose hex SHA-256 is `sha256`) and puts it where it belongs: the row,
/// or the blob store when large.
/// A blob is durable only after the blob store's sync, which the batch does before commit.
pub fn keep(raw: &[u8], sha256: &str, blobs: &dyn BlobStore) -> std::io::Result<Stored> {
    let compressed = compress(raw)?;
    if compressed.len() > INLINE_MAX {
        let name = blobs::raw_name(sha256);
        blobs.put_as(&name, &compressed)?;
        Ok(Stored::Blob(name))
    } else {
        Ok(Stored::Inline(compressed))
    }
}

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
        let level = if raw.len() >= BIG_FROM {
            BIG_LEVEL
        } else {
            LEVEL
        };
        match slot.as_mut() {
            Some(c) => {
                c.set_compression_level(level)?;
                c.compress(raw)
            }
            None => zstd::bulk::compress(raw, level),
        }
    })
}

/// Keeps a message's raw bytes (already compressed); the same bytes are kept once.
pub async fn insert(
    tx: &mut Tx,
    org_id: i64,
    sha256: &str,
    size: usize,
    stored: &Stored,
) -> Result<(), StoreError> {
    let (data, blob): (&[u8], Option<&str>) = match stored {
        Stored::Inline(bytes) => (bytes, None),
        Stored::Blob(sha) => (&[], Some(sha)),
    };
    with_tx!(tx, |c| {
        sqlx::query(
        "INSERT INTO raw_messages (organization_id, sha256, size, data, blob_sha256, created_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (organization_id, sha256) DO NOTHING"
    )
    .bind(org_id)
    .bind(sha256)
    .bind(i64::try_from(size).unwrap_or(i64::MAX))
    .bind(data)
    .bind(blob)
    .bind(now())
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// One message's raw bytes for [`insert_many`].
#[derive(Debug, Clone, Copy)]
pub struct NewRaw<'a> {
    pub org_id: i64,
    pub sha256: &'a str,
    pub size: usize,
    pub stored: &'a Stored,
}

/// Keeps many messages' raw bytes with one statement per [`super::MAX_ROWS`] rows: in the
/// serial commit each statement is a round trip, and raw mail is one row per message.
pub async fn insert_many(tx: &mut Tx, rows: &[NewRaw<'_>]) -> Result<(), StoreError> {
    let ts = now();
    for chunk in rows.chunks(super::MAX_ROWS) {
        with_tx!(tx, |c| {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO raw_messages (organization_id, sha256, size, data, blob_sha256, created_at) ",
            );
            q.push_values(chunk, |mut row, r| {
                let (data, blob): (&[u8], Option<&str>) = match r.stored {
                    Stored::Inline(bytes) => (bytes, None),
                    Stored::Blob(sha) => (&[], Some(sha)),
                };
                row.push_bind(r.org_id)
                    .push_bind(r.sha256)
                    .push_bind(i64::try_from(r.size).unwrap_or(i64::MAX))
                    .push_bind(data)
                    .push_bind(blob)
                    .push_bind(ts);
            });
            q.push(" ON CONFLICT (organization_id, sha256) DO NOTHING");
            q.build().execute(c).await.map(|r| r.rows_affected())
        })?;
    }
    Ok(())
}

/// The raw bytes of a message, decompressed, from the row or the blob store.
pub async fn get(
    tx: &mut Tx,
    blobs: &dyn BlobStore,
    org_id: i64,
    sha256: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let row: Option<(i64, Vec<u8>, Option<String>)> = with_tx!(tx, |c| {
        sqlx::query_as(
        "SELECT size, data, blob_sha256 FROM raw_messages WHERE organization_id = $1 AND sha256 = $2"
    )
    .bind(org_id)
    .bind(sha256)
    .fetch_optional(c)
    .await
    })?;
    match row {
        None => Ok(None),
        Some((size, data, blob)) => {
            let data = match blob {
                Some(blob) => blobs.get(&blob).map_err(|e| {
                    StoreError::Corrupt(format!("raw message {sha256} in blob {blob}: {e}"))
                })?,
                None => data,
            };
            let capacity = usize::try_from(size).unwrap_or(0);
            zstd::bulk::decompress(&data, capacity.max(1))
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("raw message {sha256}: {e}")))
        }
    }
}
