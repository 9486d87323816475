//! Recipient to organization and inbox (SPEC 2.1), with sub-addressing.
//!
//! Routing data is small and read on every message, so it is cached per organization and
//! reloaded on a miss or after a short time, which keeps new inboxes and agents visible.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::IngestError;
use crate::address::{AddrSpec, normalize, parse_addr_spec};
use crate::store::orgs::{self, Inbox, Org, User};
use crate::store::{Store, StoreError};

/// How long cached routing data is trusted before it is read again.
const TTL: Duration = Duration::from_secs(30);

/// Where a message is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// An envelope recipient address (SMTP/LMTP `RCPT TO`, `deliver --recipient`).
    Address(String),
    /// The inbox an IMAP mailbox belongs to.
    Inbox(i64),
}

impl std::fmt::Display for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recipient::Address(a) => f.write_str(a),
            Recipient::Inbox(id) => write!(f, "inbox:{id}"),
        }
    }
}

/// An organization with everything routing and role decisions need.
#[derive(Debug)]
pub struct OrgEntry {
    pub org: Org,
    pub inboxes: Vec<Inbox>,
    pub agents: HashMap<String, User>,
    loaded: Instant,
}

impl OrgEntry {
    /// True when `email` is one of the organization's inbox addresses (with or without `+tag`).
    pub fn is_inbox_address(&self, email: &str) -> bool {
        parse_addr_spec(email).is_some_and(|a| self.inbox_for(&a).is_some())
    }

    fn inbox_for(&self, addr: &AddrSpec) -> Option<&Inbox> {
        if !self.org.domains.iter().any(|d| d == &addr.domain) {
            return None;
        }
        let base = addr.base_local().to_ascii_lowercase();
        self.inboxes.iter().find(|i| i.email_prefix == base)
    }

    /// The agent with this address, if any.
    pub fn agent(&self, email: &str) -> Option<&User> {
        normalize(email).and_then(|n| self.agents.get(&n))
    }
}

/// A routed message: the organization, the inbox, and the `+detail` of the address.
#[derive(Debug, Clone)]
pub struct Route {
    pub entry: Arc<OrgEntry>,
    pub inbox: Inbox,
    pub detail: Option<String>,
    /// The domain the mail was addressed to (lower case); empty for an IMAP mailbox.
    pub domain: String,
}

/// Cached routing data, shared by every listener.
#[derive(Debug, Default)]
pub struct RouteCache {
    by_org: RwLock<HashMap<i64, Arc<OrgEntry>>>,
    /// Domain to organization, with unknown domains cached too (`None`) so the loop check
    /// does not query the database for every customer's domain.
    by_domain: RwLock<HashMap<String, (Option<i64>, Instant)>>,
}

impl RouteCache {
    /// Routes a recipient; an unknown address is [`IngestError::UnknownRecipient`].
    pub async fn resolve(
        &self,
        store: &Store,
        recipient: &Recipient,
    ) -> Result<Route, IngestError> {
        match recipient {
            Recipient::Address(address) => {
                let addr = parse_addr_spec(address).ok_or_else(|| {
                    IngestError::UnknownRecipient(format!("{address:?} is not an address"))
                })?;
                for fresh in [false, true] {
                    let entry = self
                        .org_for_domain(store, &addr.domain, fresh)
                        .await
                        .map_err(IngestError::from_store)?;
                    let Some(entry) = entry else { continue };
                    if let Some(inbox) = entry.inbox_for(&addr) {
                        return Ok(Route {
                            inbox: inbox.clone(),
                            detail: addr.detail().map(str::to_string),
                            domain: addr.domain.to_ascii_lowercase(),
                            entry,
                        });
                    }
                }
                Err(IngestError::UnknownRecipient(format!(
                    "no inbox for {address}"
                )))
            }
            Recipient::Inbox(inbox_id) => {
                let inbox = {
                    let mut tx = store.begin_read().await.map_err(IngestError::from_store)?;
                    let inbox = orgs::inbox_by_id(&mut tx, *inbox_id)
                        .await
                        .map_err(IngestError::from_store)?;
                    tx.rollback().await.map_err(IngestError::from_store)?;
                    inbox.ok_or_else(|| {
                        IngestError::UnknownRecipient(format!("inbox {inbox_id} does not exist"))
                    })?
                };
                let entry = self
                    .org(store, inbox.organization_id, false)
                    .await
                    .map_err(IngestError::from_store)?;
                Ok(Route {
                    entry,
                    inbox,
                    detail: None,
                    domain: String::new(),
                })
            }
        }
    }

    /// The cached organization that receives mail for `domain`, if any.
    pub async fn org_for_domain(
        &self,
        store: &Store,
        domain: &str,
        fresh: bool,
    ) -> Result<Option<Arc<OrgEntry>>, StoreError> {
        let cached = self
            .by_domain
            .read()
            .ok()
            .and_then(|m| m.get(domain).copied())
            .filter(|(_, at)| !fresh && at.elapsed() < TTL);
        match cached {
            Some((Some(org_id), _)) => self.org(store, org_id, false).await.map(Some),
            Some((None, _)) => Ok(None),
            None => {
                let mut tx = store.begin_read().await?;
                let org = orgs::org_for_domain(&mut tx, domain).await?;
                tx.rollback().await?;
                match org {
                    Some(org) => self.org(store, org.id, true).await.map(Some),
                    None => {
                        if let Ok(mut m) = self.by_domain.write() {
                            if m.len() > 100_000 {
                                m.retain(|_, (id, _)| id.is_some());
                            }
                            m.insert(domain.to_string(), (None, Instant::now()));
                        }
                        Ok(None)
                    }
                }
            }
        }
    }

    /// The cached entry of one organization, reloaded when stale or when `fresh` is asked.
    pub async fn org(
        &self,
        store: &Store,
        org_id: i64,
        fresh: bool,
    ) -> Result<Arc<OrgEntry>, StoreError> {
        if !fresh
            && let Some(e) = self
                .by_org
                .read()
                .ok()
                .and_then(|m| m.get(&org_id).cloned())
            && e.loaded.elapsed() < TTL
        {
            return Ok(e);
        }
        let mut tx = store.begin_read().await?;
        let org = orgs::get_org(&mut tx, org_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("organization {org_id}")))?;
        let inboxes = orgs::list_inboxes(&mut tx, org_id).await?;
        let agents = orgs::list_users(&mut tx, org_id).await?;
        tx.rollback().await?;
        let entry = Arc::new(OrgEntry {
            agents: agents
                .into_iter()
                .filter_map(|u| normalize(&u.email).map(|n| (n, u)))
                .collect(),
            inboxes,
            loaded: Instant::now(),
            org,
        });
        if let Ok(mut m) = self.by_domain.write() {
            m.retain(|_, (id, _)| *id != Some(org_id));
            for d in &entry.org.domains {
                m.insert(d.clone(), (Some(org_id), Instant::now()));
            }
        }
        if let Ok(mut m) = self.by_org.write() {
            m.insert(org_id, entry.clone());
        }
        Ok(entry)
    }

    /// Forgets everything (after configuration changes in this process).
    pub fn clear(&self) {
        if let Ok(mut m) = self.by_org.write() {
            m.clear();
        }
        if let Ok(mut m) = self.by_domain.write() {
            m.clear();
        }
    }
}
