//! The work before the transaction: parse, render the bodies, compress the raw mail, write
//! the attachment blobs (made durable in one go before the commit).
//! CPU- and disk-bound, so it runs on the blocking pool and never holds the write lock.

use std::collections::HashMap;
use std::sync::Arc;

use super::parse::{self, ParsedMail};
use crate::config::LimitsConfig;
use crate::store::blobs::{BlobStore, sha256_hex};
use crate::store::raw;

/// An attachment whose bytes are stored, ready for its row.
#[derive(Debug, Clone)]
pub struct StoredAttachment {
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
    pub content_id: String,
    pub is_inline: bool,
}

/// A message ready to be decided on and written.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub mail: ParsedMail,
    /// `content`: the text/plain body, or readable text from the HTML when there is none.
    pub text: String,
    /// `content_html`: the sanitized HTML body, empty for plain-text mail.
    pub html: String,
    /// The language, detected here or, for a likely reply, only if it opens a ticket.
    pub language: Language,
    pub raw_sha256: String,
    pub raw_size: usize,
    /// The raw bytes, zstd-compressed, in the row or the blob store.
    pub raw_stored: raw::Stored,
    pub attachments: Vec<StoredAttachment>,
}

/// A message's language: detected, or left until the message turns out to open a ticket.
///
/// Detection is a fixed cost of about 100 µs a message (whatlang scores every candidate
/// language's 300 trigrams whatever the text's length), the largest single step of preparing
/// mail. The language that matters is the ticket's (SPEC 1), which is its first message's, so
/// a message with `In-Reply-To` or `References` skips it here. Most such messages are replies
/// to a ticket and keep an empty `language`; the rest are detected when they open one.
#[derive(Debug, Clone)]
pub enum Language {
    /// The two-letter code, or empty when detection was unsure.
    Detected(String),
    /// Not detected yet: the limits for rendering HTML to text when it is.
    Deferred { max_bytes: usize, max_depth: usize },
}

impl Prepared {
    /// The language, detecting it now if that was left for later.
    pub fn language(&self) -> std::borrow::Cow<'_, str> {
        match &self.language {
            Language::Detected(code) => code.as_str().into(),
            Language::Deferred {
                max_bytes,
                max_depth,
            } => detect_language(&self.text, &self.html, *max_bytes, *max_depth).into(),
        }
    }

    /// The language if it was detected, empty otherwise.
    pub fn detected_language(&self) -> &str {
        match &self.language {
            Language::Detected(code) => code,
            Language::Deferred { .. } => "",
        }
    }
}

/// The language of what a person reads: the plain text when the mail has some (the
/// alternative HTML says the same words), the HTML's text otherwise.
fn detect_language(text: &str, html: &str, max_bytes: usize, max_depth: usize) -> String {
    if text.split_whitespace().nth(19).is_some() || html.is_empty() {
        parse::detect_language(text)
    } else {
        parse::detect_language(&parse::html_to_text(html, max_bytes, max_depth))
    }
}

/// Why preparing failed: the disk (try again later) or the message itself (quarantine).
#[derive(Debug)]
pub enum PrepareError {
    Blob(std::io::Error),
    Parse(String),
}

/// The threads that prepare messages: one per core, at a lower scheduling priority.
///
/// Commits are serial and every statement is a hand-off to SQLite's thread and back; when
/// preparing threads take the cores those hand-offs wait for a time slice. Below them, the
/// commit path runs as soon as it is ready, and preparing still gets every idle cycle.
#[derive(Debug)]
pub struct Workers {
    pool: Option<rayon_core::ThreadPool>,
}

/// Nice value of preparing threads: low enough that commits go first, not idle-only.
const WORKER_NICE: i32 = 10;

impl Workers {
    /// A pool with one thread per core (without one, preparing runs on the blocking pool).
    pub fn new() -> Self {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let pool = rayon_core::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("prepare-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .map_err(|e| tracing::warn!(error = %e, "no prepare threads; using the blocking pool"))
            .ok();
        Self { pool }
    }

    /// How many preparing threads there are (at least one).
    pub fn threads(&self) -> usize {
        self.pool
            .as_ref()
            .map_or(1, rayon_core::ThreadPool::current_num_threads)
            .max(1)
    }

    /// Runs `job` on a preparing thread; a panic comes back as an error, never unwinds here.
    pub async fn run<T, F>(&self, job: F) -> Result<T, String>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let guarded = move || guarded(job);
        match &self.pool {
            Some(pool) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                pool.spawn(move || {
                    // The receiver is gone only when the caller was cancelled.
                    let _ = tx.send(guarded());
                });
                rx.await
                    .unwrap_or_else(|_| Err("the preparing thread went away".into()))
            }
            None => tokio::task::spawn_blocking(guarded)
                .await
                .unwrap_or_else(|e| Err(e.to_string())),
        }
    }
}

impl Default for Workers {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `job` here; a panic comes back as an error, never unwinds.
pub fn guarded<T>(job: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
        .map_err(|p| panic_message(p.as_ref()))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Lowers the calling thread's priority (on Linux `setpriority` with 0 is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers and only changes this thread's nice value.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, WORKER_NICE) };
    #[cfg(not(target_os = "linux"))]
    let rc = 0;
    if rc != 0 {
        tracing::debug!("could not lower the priority of a preparing thread");
    }
}

/// Parses and renders `raw` for organization `org_id`, storing raw mail and attachments.
pub fn prepare(
    raw: &[u8],
    org_id: i64,
    public_url: &str,
    limits: &LimitsConfig,
    blobs: &Arc<dyn BlobStore>,
) -> Result<Prepared, PrepareError> {
    let mut mail = parse::parse_guarded(raw, limits).map_err(PrepareError::Parse)?;
    let raw_sha256 = sha256_hex(raw);

    let mut attachments = Vec::with_capacity(mail.attachments.len());
    let mut cid_urls = HashMap::new();
    for a in &mut mail.attachments {
        let sha256 = blobs.put(&a.bytes).map_err(PrepareError::Blob)?;
        let size = i64::try_from(a.bytes.len()).unwrap_or(i64::MAX);
        // On disk now. Freed before the raw mail is compressed, so a large message's decoded
        // attachments and its compressed copy are never in memory together.
        a.bytes = Vec::new();
        let id = uuid::Uuid::now_v7().to_string();
        if !a.content_id.is_empty() {
            cid_urls.insert(a.content_id.clone(), download_url(public_url, org_id, &id));
        }
        attachments.push(StoredAttachment {
            id,
            name: a.name.clone(),
            content_type: a.content_type.clone(),
            size,
            sha256,
            content_id: a.content_id.clone(),
            is_inline: a.is_inline,
        });
    }

    let raw_stored = raw::keep(raw, &raw_sha256, blobs.as_ref()).map_err(PrepareError::Blob)?;

    let (max_bytes, max_depth) = (limits.max_html_to_text_bytes, limits.max_html_depth);
    let depth = parse::html_guard::max_depth(&mail.html);
    let html = if depth > max_depth {
        mail.notes.push(format!(
            "HTML is nested {depth} levels deep (limit {max_depth}); kept as text only"
        ));
        String::new()
    } else {
        parse::sanitize_html(&mail.html, &cid_urls)
    };
    let html_only = mail.text.trim().is_empty() && !mail.html.trim().is_empty();
    let text = if html_only {
        parse::html_to_text(&mail.html, max_bytes, max_depth)
    } else {
        mail.text.clone()
    };
    // The ids threading rule 2 looks up: a message that has any most likely joins a ticket.
    let likely_reply = super::thread::referenced_ids(&mail).next().is_some();
    let language = if likely_reply {
        Language::Deferred {
            max_bytes,
            max_depth,
        }
    } else {
        Language::Detected(detect_language(&text, &html, max_bytes, max_depth))
    };
    Ok(Prepared {
        mail,
        text,
        html,
        language,
        raw_sha256,
        raw_size: raw.len(),
        raw_stored,
        attachments,
    })
}

/// Where an attachment is served: `{public_url}/organizations/{org}/attachments/{id}/download/`.
pub fn download_url(public_url: &str, org_id: i64, attachment_id: &str) -> String {
    format!(
        "{}/organizations/{org_id}/attachments/{attachment_id}/download/",
        public_url.trim_end_matches('/')
    )
}
