//! Content-addressed blob storage for attachments and raw mail.
//!
//! Blobs are named by the SHA-256 of their content, so the same attachment arriving
//! twice is stored once. The trait is the seam where an object store can replace the
//! directory (a directory on a shared mount serves several gateway instances).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Where blobs live. Writes are durable when they return.
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` under `kind` and returns the hex SHA-256 of `bytes`.
    fn put(&self, kind: BlobKind, bytes: &[u8]) -> io::Result<String>;
    /// Reads back what [`BlobStore::put`] stored.
    fn get(&self, kind: BlobKind, sha256: &str) -> io::Result<Vec<u8>>;
}

/// What a blob holds; raw mail is kept zstd-compressed, attachments as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    Attachment,
    RawMail,
}

/// The hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Blobs in a directory tree: `<root>/attachments/ab/abcdef...`, `<root>/raw/ab/abcdef....zst`.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, kind: BlobKind, sha256: &str) -> io::Result<PathBuf> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a sha256 name",
            ));
        }
        let (dir, suffix) = match kind {
            BlobKind::Attachment => ("attachments", ""),
            BlobKind::RawMail => ("raw", ".zst"),
        };
        Ok(self
            .root
            .join(dir)
            .join(&sha256[..2])
            .join(format!("{sha256}{suffix}")))
    }
}

impl BlobStore for FsBlobStore {
    fn put(&self, kind: BlobKind, bytes: &[u8]) -> io::Result<String> {
        let hash = sha256_hex(bytes);
        let path = self.path(kind, &hash)?;
        if path.exists() {
            return Ok(hash);
        }
        let dir = path
            .parent()
            .ok_or_else(|| io::Error::other("blob path has no parent"))?;
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{hash}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut file = File::create(&tmp)?;
            match kind {
                BlobKind::Attachment => file.write_all(bytes)?,
                BlobKind::RawMail => zstd::stream::copy_encode(bytes, &mut file, 3)?,
            }
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| hash)
    }

    fn get(&self, kind: BlobKind, sha256: &str) -> io::Result<Vec<u8>> {
        let path = self.path(kind, sha256)?;
        let mut file = File::open(path)?;
        let mut out = Vec::new();
        match kind {
            BlobKind::Attachment => {
                file.read_to_end(&mut out)?;
            }
            BlobKind::RawMail => zstd::stream::copy_decode(file, &mut out)?,
        }
        Ok(out)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_dedupes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsBlobStore::new(dir.path());
        let a = store.put(BlobKind::Attachment, b"hello").expect("put");
        let b = store
            .put(BlobKind::Attachment, b"hello")
            .expect("put again");
        assert_eq!(a, b);
        assert_eq!(store.get(BlobKind::Attachment, &a).expect("get"), b"hello");
        let raw = vec![b'x'; 100_000];
        let h = store.put(BlobKind::RawMail, &raw).expect("put raw");
        assert_eq!(store.get(BlobKind::RawMail, &h).expect("get raw"), raw);
        let on_disk = fs::metadata(store.path(BlobKind::RawMail, &h).expect("path"))
            .expect("meta")
            .len();
        assert!(
            on_disk < 1000,
            "raw mail is compressed, got {on_disk} bytes"
        );
    }

    #[test]
    fn rejects_path_tricks() {
        let store = FsBlobStore::new("/nonexistent");
        assert!(store.get(BlobKind::Attachment, "../../etc/passwd").is_err());
    }
}
