//! Content-addressed storage for attachment bytes and large raw mail.
//!
//! Blobs are named by the SHA-256 of their content, so the same attachment arriving twice
//! is stored once. Raw mail is kept compressed under the SHA-256 of the *uncompressed* mail
//! (already computed for the `raw_messages` row), in its own namespace `raw/<sha256>`: the
//! same bytes can arrive both as a raw mail and as an attachment (a forwarded `.eml`), and
//! the two files hold different content.
//!
//! Writes are made durable in groups: [`BlobStore::put`] writes, and [`BlobStore::sync`]
//! flushes a whole batch's blobs in parallel right before the database commit that
//! references them (one fsync per file costs milliseconds; in parallel the file system
//! journals them together). The trait is the seam where an object store can
//! replace the directory (a directory on a shared mount serves several instances).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Where attachment bytes live.
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` and returns their hex SHA-256; durable only after [`BlobStore::sync`].
    fn put(&self, bytes: &[u8]) -> io::Result<String> {
        let hash = sha256_hex(bytes);
        self.put_as(&hash, bytes)?;
        Ok(hash)
    }
    /// Stores `bytes` under `name` (a hex SHA-256, or [`raw_name`] of one), which the caller
    /// vouches for; durable only after [`BlobStore::sync`].
    fn put_as(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Makes the named blobs durable.
    fn sync(&self, names: &[String]) -> io::Result<()>;
    /// Reads a blob back.
    fn get(&self, name: &str) -> io::Result<Vec<u8>>;
}

/// The hex SHA-256 of `bytes`.
///
/// ring's assembly is twice as fast as the `sha2` crate's portable code on CPUs without the
/// SHA extensions, and every accepted mail is hashed whole (see `docs/benchmarks.md`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// The blob name of a raw mail whose uncompressed bytes hash to `sha256`.
pub fn raw_name(sha256: &str) -> String {
    format!("{RAW_PREFIX}{sha256}")
}

const RAW_PREFIX: &str = "raw/";

/// Blobs in a directory tree: `<root>/attachments/ab/abcdef...`, raw mail under `<root>/raw/`.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

/// Threads that fsync in parallel; beyond this the journal gains nothing.
const SYNC_THREADS: usize = 16;

impl FsBlobStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        let (dir, sha256) = match name.strip_prefix(RAW_PREFIX) {
            Some(sha256) => ("raw", sha256),
            None => ("attachments", name),
        };
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a sha256 name",
            ));
        }
        Ok(self.root.join(dir).join(&sha256[..2]).join(sha256))
    }
}

impl BlobStore for FsBlobStore {
    fn put_as(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(name)?;
        // A crash between write and sync can leave a short file; only a whole one counts.
        if fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
            return Ok(());
        }
        let dir = path
            .parent()
            .ok_or_else(|| io::Error::other("blob path has no parent"))?;
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        let result = File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes))
            .and_then(|()| fs::rename(&tmp, &path));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn sync(&self, names: &[String]) -> io::Result<()> {
        let files: BTreeSet<PathBuf> = names
            .iter()
            .map(|n| self.path(n))
            .collect::<io::Result<_>>()?;
        if files.is_empty() {
            return Ok(());
        }
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        let all: Vec<PathBuf> = files.into_iter().chain(dirs).collect();
        let chunk = all.len().div_ceil(SYNC_THREADS).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = all
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || part.iter().try_for_each(|p| File::open(p)?.sync_all()))
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| io::Error::other("fsync thread panicked"))?
            })
        })
    }

    fn get(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        File::open(self.path(name)?)?.read_to_end(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn round_trips_and_dedupes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsBlobStore::new(dir.path());
        let a = store.put(b"hello").expect("put");
        let b = store.put(b"hello").expect("put again");
        assert_eq!(a, b);
        store.sync(&[a.clone(), b]).expect("sync");
        assert_eq!(store.get(&a).expect("get"), b"hello");
    }

    #[test]
    fn a_short_file_is_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsBlobStore::new(dir.path());
        let h = store.put(b"complete content").expect("put");
        fs::write(store.path(&h).expect("path"), b"compl").expect("truncate");
        store.put(b"complete content").expect("put again");
        assert_eq!(store.get(&h).expect("get"), b"complete content");
    }

    #[test]
    fn raw_mail_has_its_own_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsBlobStore::new(dir.path());
        let attachment = store.put(b"the same bytes").expect("put");
        let raw = raw_name(&attachment);
        store.put_as(&raw, b"compressed form").expect("put raw");
        store
            .sync(&[attachment.clone(), raw.clone()])
            .expect("sync");
        assert_eq!(store.get(&attachment).expect("get"), b"the same bytes");
        assert_eq!(store.get(&raw).expect("get raw"), b"compressed form");
        assert!(store.get("raw/../attachments").is_err());
    }

    #[test]
    fn rejects_path_tricks() {
        let store = FsBlobStore::new("/nonexistent");
        assert!(store.get("../../etc/passwd").is_err());
        assert!(store.sync(&["../x".into()]).is_err());
    }
}
