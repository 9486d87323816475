//! IMAP ingestion (SPEC 5.3): one fetcher per inbox with an IMAP source.
//!
//! Each fetcher holds a lease on its mailbox in the database (one instance fetches a mailbox
//! at a time), logs in, drains what is new since the last committed UID in batches through
//! the intake committer, records the position, then marks, moves or deletes what was
//! committed; then it waits under IDLE (or polls) and drains again. Any failure ends the
//! session and the fetcher reconnects after an exponential backoff with jitter; fetchers
//! never share a failure.

pub mod connect;
mod mailbox;
pub mod status;

use std::time::Duration;

use rand::Rng as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ImapConfig, ImapGlobalConfig};
use crate::intake::Intake;
use crate::store::{Store, StoreError, imap as state, orgs};
pub use status::ImapStatus;

/// Why a fetcher's session ended.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("login refused: {0}")]
    Auth(String),
    #[error("secret: {0}")]
    Secret(String),
    #[error("IMAP: {0}")]
    Protocol(#[from] async_imap::error::Error),
    #[error("no answer within the timeout while {0}")]
    Timeout(&'static str),
    #[error("the server sent no UIDVALIDITY for the folder")]
    NoUidValidity,
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the database could not take the batch: {0}")]
    Ingest(String),
}

impl ImapError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ImapError::Connect(_) => "connect",
            ImapError::Tls(_) => "tls",
            ImapError::Auth(_) | ImapError::Secret(_) => "auth",
            ImapError::Protocol(_) | ImapError::NoUidValidity => "protocol",
            ImapError::Timeout(_) => "timeout",
            ImapError::Store(_) | ImapError::Ingest(_) => "database",
        }
    }
}

/// An inbox's IMAP source, resolved to database ids.
#[derive(Debug, Clone)]
pub struct Source {
    pub org_id: i64,
    pub inbox_id: i64,
    /// `org-domain/prefix`, the name in logs, metrics and `/readyz`.
    pub name: String,
    pub config: ImapConfig,
}

impl Source {
    /// Identifies the mailbox; the stored position belongs to it, so pointing an inbox at
    /// another server, account or folder starts from the beginning of that one.
    pub fn key(&self) -> String {
        format!(
            "{}:{}/{}/{}",
            self.config.host, self.config.port, self.config.user, self.config.folder
        )
    }
}

/// The IMAP sources of the configured inboxes (organizations are applied at start-up).
pub async fn sources(store: &Store, config: &Config) -> Result<Vec<Source>, StoreError> {
    let mut out = Vec::new();
    let mut tx = store.begin_read().await?;
    for org in &config.organizations {
        let Some(domain) = org.domains.first() else {
            continue;
        };
        let Some(found) = orgs::org_for_domain(&mut tx, domain).await? else {
            continue;
        };
        for inbox in &org.inboxes {
            let Some(imap) = &inbox.imap else { continue };
            if let Some(i) = orgs::inbox_by_prefix(&mut tx, found.id, &inbox.email_prefix).await? {
                out.push(Source {
                    org_id: found.id,
                    inbox_id: i.id,
                    name: format!("{domain}/{}", inbox.email_prefix),
                    config: imap.clone(),
                });
            }
        }
    }
    tx.rollback().await?;
    Ok(out)
}

/// What every fetcher shares.
#[derive(Clone, Debug)]
pub struct Fetchers {
    pub store: Store,
    pub intake: Intake,
    pub status: ImapStatus,
    pub global: ImapGlobalConfig,
    /// Largest message taken (`smtp.max_message_bytes`); a larger one is left in the mailbox.
    pub max_message_bytes: u64,
    /// This instance's name in leases.
    pub holder: String,
}

/// A name for this instance that no other running instance has.
pub fn instance_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_string();
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Starts one fetcher per source on `tracker`; they stop when `stopping` is cancelled.
pub fn spawn(
    sources: Vec<Source>,
    shared: Fetchers,
    stopping: CancellationToken,
    tracker: &TaskTracker,
) {
    for source in sources {
        shared.status.set_state(&source.name, "starting");
        tracker.spawn(run(source, shared.clone(), stopping.clone()));
    }
}

/// Backoff between attempts: 1 s doubling to the configured maximum, each wait drawn
/// between half and all of it so many fetchers do not reconnect in step.
fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_secs(1u64 << failures.min(16)).min(max);
    let millis = u64::try_from(base.as_millis()).unwrap_or(u64::MAX).max(2);
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
}

/// Waits `d` unless `stop` comes first; false when stopped.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = stop.cancelled() => false,
    }
}

/// One mailbox's fetcher: lease, session, backoff, for as long as the gateway runs.
async fn run(source: Source, shared: Fetchers, stopping: CancellationToken) {
    let lease_ttl = Duration::from_secs(shared.global.lease_secs);
    let max_backoff = Duration::from_secs(shared.global.max_backoff_secs);
    let mut failures = 0u32;
    while !stopping.is_cancelled() {
        match take_lease(&shared, &source, lease_ttl).await {
            Ok(true) => {}
            Ok(false) => {
                shared.status.set_state(&source.name, "standby");
                metrics::gauge!("initdesk_imap_lease_held", "mailbox" => source.name.clone())
                    .set(0.0);
                if !pause(lease_ttl / 3, &stopping).await {
                    break;
                }
                continue;
            }
            Err(e) => {
                report(&shared, &source, &ImapError::Store(e), failures);
                failures = failures.saturating_add(1);
                if !pause(backoff(failures, max_backoff), &stopping).await {
                    break;
                }
                continue;
            }
        }
        metrics::gauge!("initdesk_imap_lease_held", "mailbox" => source.name.clone()).set(1.0);

        // The session runs while the lease is renewed beside it; losing the lease (or the
        // database) ends the session before another instance can take the mailbox over.
        let lost = stopping.child_token();
        let renewer = tokio::spawn(keep_lease(
            shared.clone(),
            source.clone(),
            lease_ttl,
            lost.clone(),
        ));
        let mut logged_in = false;
        let result = mailbox::run(&source, &shared, &lost, &mut logged_in).await;
        lost.cancel();
        let _ = renewer.await;
        if logged_in {
            failures = 0;
        }
        match result {
            Ok(()) => {}
            Err(e) => {
                report(&shared, &source, &e, failures);
                failures = failures.saturating_add(1);
                if !pause(backoff(failures, max_backoff), &stopping).await {
                    break;
                }
            }
        }
    }
    // Hand the mailbox over at once rather than after the lease runs out.
    if let Ok(mut tx) = shared.store.begin().await {
        let released =
            state::release_lease(&mut tx, source.org_id, source.inbox_id, &shared.holder).await;
        if released.is_ok() {
            let _ = tx.commit().await;
        }
    }
    metrics::gauge!("initdesk_imap_lease_held", "mailbox" => source.name.clone()).set(0.0);
    shared.status.set_state(&source.name, "stopped");
}

fn report(shared: &Fetchers, source: &Source, e: &ImapError, failures: u32) {
    // The first failure of a streak is a warning; the rest repeat it quietly at debug so a
    // mailbox that is down for hours does not flood the log, but stays visible in /readyz.
    if failures == 0 {
        tracing::warn!(mailbox = %source.name, error = %e, "IMAP fetcher failed; reconnecting with backoff");
    } else {
        tracing::debug!(mailbox = %source.name, error = %e, failures, "IMAP fetcher still failing");
    }
    metrics::counter!("initdesk_imap_errors_total", "mailbox" => source.name.clone(), "kind" => e.kind())
        .increment(1);
    shared.status.failed(&source.name, &e.to_string());
}

async fn take_lease(shared: &Fetchers, source: &Source, ttl: Duration) -> Result<bool, StoreError> {
    let mut tx = shared.store.begin().await?;
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let held = state::acquire_lease(
        &mut tx,
        source.org_id,
        source.inbox_id,
        &shared.holder,
        ttl_ms,
    )
    .await?;
    tx.commit().await?;
    Ok(held)
}

/// Renews the lease every third of its lifetime; cancels `lost` when it cannot.
async fn keep_lease(shared: Fetchers, source: Source, ttl: Duration, lost: CancellationToken) {
    loop {
        if !pause(ttl / 3, &lost).await {
            return;
        }
        match take_lease(&shared, &source, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(mailbox = %source.name, "IMAP lease taken over by another instance; stopping this fetcher's session");
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(mailbox = %source.name, error = %e, "cannot renew the IMAP lease; stopping the session");
                lost.cancel();
                return;
            }
        }
    }
}
