//! Organizations, their domains, inboxes, agents and API tokens.

use rand::RngCore;

use super::{StoreError, Tx, now};
use crate::config::OrganizationConfig;
use crate::with_tx;

/// An organization row with its mail domains.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Org {
    pub id: i64,
    pub public_id: String,
    pub name: String,
    pub cc_email_routing: bool,
    pub auto_tagging: bool,
    pub reopen_window_days: i64,
    pub subject_tag_prefix: String,
    pub authserv_id: String,
    pub require_authenticated_sender: bool,
    #[serde(skip)]
    pub webhook_url: String,
    #[serde(skip)]
    pub webhook_secret: String,
    #[sqlx(skip)]
    pub domains: Vec<String>,
}

/// An inbox row.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Inbox {
    pub id: i64,
    #[serde(skip)]
    pub organization_id: i64,
    pub name: String,
    pub email_prefix: String,
    pub auto_acknowledge: bool,
}

/// An agent (user) row.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct User {
    pub id: i64,
    #[serde(skip)]
    pub organization_id: i64,
    pub email: String,
    pub name: String,
}

/// What `org create` needs.
#[derive(Debug, Clone)]
pub struct NewOrg<'a> {
    pub name: &'a str,
    pub domains: &'a [String],
    pub cc_email_routing: bool,
    pub auto_tagging: bool,
    pub reopen_window_days: i64,
    pub subject_tag_prefix: &'a str,
    pub authserv_id: &'a str,
    pub require_authenticated_sender: bool,
    pub webhook_url: &'a str,
    pub webhook_secret: &'a str,
}

impl<'a> NewOrg<'a> {
    /// An organization with default settings.
    pub fn named(name: &'a str, domains: &'a [String]) -> Self {
        Self {
            name,
            domains,
            cc_email_routing: true,
            auto_tagging: false,
            reopen_window_days: 30,
            subject_tag_prefix: "",
            authserv_id: "",
            require_authenticated_sender: false,
            webhook_url: "",
            webhook_secret: "",
        }
    }

    /// The settings a config file declares.
    pub fn from_config(c: &'a OrganizationConfig) -> Self {
        Self {
            name: &c.name,
            domains: &c.domains,
            cc_email_routing: c.cc_email_routing,
            auto_tagging: c.auto_tagging,
            reopen_window_days: c.reopen_window_days,
            subject_tag_prefix: &c.subject_tag_prefix,
            authserv_id: &c.authserv_id,
            require_authenticated_sender: c.require_authenticated_sender,
            webhook_url: &c.webhook_url,
            webhook_secret: &c.webhook_secret,
        }
    }
}

const ORG_COLUMNS: &str = "id, public_id, name, cc_email_routing, auto_tagging, reopen_window_days, subject_tag_prefix, authserv_id, require_authenticated_sender, webhook_url, webhook_secret";

/// Creates an organization with its domains and ticket counter.
pub async fn create_org(tx: &mut Tx, new: &NewOrg<'_>) -> Result<Org, StoreError> {
    let ts = now();
    let public_id = format!("org_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let id: i64 = with_tx!(tx, |c| sqlx::query_scalar(
        "INSERT INTO organizations (public_id, name, cc_email_routing, auto_tagging, reopen_window_days, subject_tag_prefix, authserv_id, require_authenticated_sender, webhook_url, webhook_secret, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING id"
    )
    .bind(&public_id)
    .bind(new.name)
    .bind(new.cc_email_routing)
    .bind(new.auto_tagging)
    .bind(new.reopen_window_days)
    .bind(new.subject_tag_prefix)
    .bind(new.authserv_id)
    .bind(new.require_authenticated_sender)
    .bind(new.webhook_url)
    .bind(new.webhook_secret)
    .bind(ts)
    .fetch_one(c)
    .await)
    .map_err(|e| conflict(e, &format!("an organization named {:?} exists already", new.name)))?;
    with_tx!(tx, |c| sqlx::query(
        "INSERT INTO ticket_counters (organization_id, last_public_id) VALUES ($1, 0)"
    )
    .bind(id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    set_domains(tx, id, new.domains).await?;
    get_org(tx, id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("organization {id}")))
}

/// Applies a config-declared organization: created when new, otherwise updated in place.
pub async fn apply_config(tx: &mut Tx, c: &OrganizationConfig) -> Result<Org, StoreError> {
    // Every command applies the configuration at start, and MTAs start many `deliver`s at
    // once: applying must write nothing when nothing changed, and tolerate a concurrent
    // first creation.
    let new = NewOrg::from_config(c);
    let existing = match org_by_name(tx, &c.name).await? {
        Some(org) => org,
        None => {
            // Under a savepoint: on PostgreSQL a lost race aborts everything after it otherwise.
            tx.savepoint().await?;
            match create_org(tx, &new).await {
                Ok(org) => {
                    tx.release_savepoint().await?;
                    org
                }
                Err(StoreError::Conflict(_)) => {
                    tx.rollback_to_savepoint().await?;
                    org_by_name(tx, &c.name)
                        .await?
                        .ok_or_else(|| StoreError::NotFound(format!("organization {:?}", c.name)))?
                }
                Err(e) => return Err(e),
            }
        }
    };
    let org_id = existing.id;
    let same = existing.cc_email_routing == new.cc_email_routing
        && existing.auto_tagging == new.auto_tagging
        && existing.reopen_window_days == new.reopen_window_days
        && existing.subject_tag_prefix == new.subject_tag_prefix
        && existing.authserv_id == new.authserv_id
        && existing.require_authenticated_sender == new.require_authenticated_sender
        && existing.webhook_url == new.webhook_url
        && existing.webhook_secret == new.webhook_secret;
    if !same {
        with_tx!(tx, |conn| {
            sqlx::query(
            "UPDATE organizations SET cc_email_routing = $2, auto_tagging = $3, reopen_window_days = $4, subject_tag_prefix = $5,
             authserv_id = $6, require_authenticated_sender = $7, webhook_url = $8, webhook_secret = $9, updated_at = $10 WHERE id = $1"
        )
        .bind(org_id)
        .bind(new.cc_email_routing)
        .bind(new.auto_tagging)
        .bind(new.reopen_window_days)
        .bind(new.subject_tag_prefix)
        .bind(new.authserv_id)
        .bind(new.require_authenticated_sender)
        .bind(new.webhook_url)
        .bind(new.webhook_secret)
        .bind(now())
        .execute(conn)
        .await
        .map(|r| r.rows_affected())
        })?;
    }
    let wanted: Vec<String> = c
        .domains
        .iter()
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    if existing.domains != {
        let mut sorted = wanted.clone();
        sorted.sort();
        sorted.dedup();
        sorted
    } {
        set_domains(tx, org_id, &wanted).await?;
    }
    let inboxes = list_inboxes(tx, org_id).await?;
    for inbox in &c.inboxes {
        let prefix = inbox.email_prefix.to_ascii_lowercase();
        let unchanged = inboxes.iter().any(|i| {
            i.email_prefix == prefix
                && i.name == inbox.name
                && i.auto_acknowledge == inbox.auto_acknowledge
        });
        if !unchanged {
            upsert_inbox(
                tx,
                org_id,
                &inbox.email_prefix,
                &inbox.name,
                inbox.auto_acknowledge,
            )
            .await?;
        }
    }
    let users = list_users(tx, org_id).await?;
    for user in &c.users {
        let unchanged = users
            .iter()
            .any(|u| u.email.eq_ignore_ascii_case(user.email.trim()) && u.name == user.name);
        if !unchanged {
            upsert_user(tx, org_id, &user.email, &user.name).await?;
        }
    }
    get_org(tx, org_id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("organization {org_id}")))
}

async fn org_by_name(tx: &mut Tx, name: &str) -> Result<Option<Org>, StoreError> {
    let id: Option<i64> = with_tx!(tx, |c| sqlx::query_scalar(
        "SELECT id FROM organizations WHERE name = $1"
    )
    .bind(name)
    .fetch_optional(c)
    .await)?;
    match id {
        Some(id) => get_org(tx, id).await,
        None => Ok(None),
    }
}

/// Makes the organization's domains exactly `domains`, touching only what differs.
async fn set_domains(tx: &mut Tx, org_id: i64, domains: &[String]) -> Result<(), StoreError> {
    let domains: Vec<String> = domains
        .iter()
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    let current: Vec<String> = with_tx!(tx, |c| sqlx::query_scalar(
        "SELECT domain FROM organization_domains WHERE organization_id = $1"
    )
    .bind(org_id)
    .fetch_all(c)
    .await)?;
    for old in current.iter().filter(|d| !domains.contains(d)) {
        with_tx!(tx, |c| sqlx::query(
            "DELETE FROM organization_domains WHERE organization_id = $1 AND domain = $2"
        )
        .bind(org_id)
        .bind(old)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
    }
    for domain in domains.iter().filter(|d| !current.contains(d)) {
        with_tx!(tx, |c| {
            sqlx::query("INSERT INTO organization_domains (domain, organization_id) VALUES ($1, $2) ON CONFLICT (domain) DO NOTHING")
            .bind(domain)
            .bind(org_id)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        let owner: Option<i64> = with_tx!(tx, |c| sqlx::query_scalar(
            "SELECT organization_id FROM organization_domains WHERE domain = $1"
        )
        .bind(domain)
        .fetch_optional(c)
        .await)?;
        if owner != Some(org_id) {
            return Err(StoreError::Conflict(format!(
                "domain {domain} belongs to another organization"
            )));
        }
    }
    Ok(())
}

fn conflict(e: sqlx::Error, what: &str) -> StoreError {
    let e = StoreError::from(e);
    if e.is_unique_violation() {
        StoreError::Conflict(what.to_string())
    } else {
        e
    }
}

/// Reads an organization with its domains.
pub async fn get_org(tx: &mut Tx, id: i64) -> Result<Option<Org>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {ORG_COLUMNS} FROM organizations WHERE id = $1"
    ));
    let org: Option<Org> = with_tx!(tx, |c| sqlx::query_as(sql).bind(id).fetch_optional(c).await)?;
    match org {
        None => Ok(None),
        Some(mut org) => {
            org.domains = with_tx!(tx, |c| {
                sqlx::query_scalar(
                "SELECT domain FROM organization_domains WHERE organization_id = $1 ORDER BY domain"
            )
            .bind(id)
            .fetch_all(c)
            .await
            })?;
            Ok(Some(org))
        }
    }
}

/// The organization that receives mail for `domain`.
pub async fn org_for_domain(tx: &mut Tx, domain: &str) -> Result<Option<Org>, StoreError> {
    let id: Option<i64> = with_tx!(tx, |c| sqlx::query_scalar(
        "SELECT organization_id FROM organization_domains WHERE domain = $1"
    )
    .bind(domain.to_ascii_lowercase())
    .fetch_optional(c)
    .await)?;
    match id {
        Some(id) => get_org(tx, id).await,
        None => Ok(None),
    }
}

/// Every organization, by id.
pub async fn list_orgs(tx: &mut Tx) -> Result<Vec<Org>, StoreError> {
    let ids: Vec<i64> = with_tx!(tx, |c| sqlx::query_scalar(
        "SELECT id FROM organizations ORDER BY id"
    )
    .fetch_all(c)
    .await)?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(org) = get_org(tx, id).await? {
            out.push(org);
        }
    }
    Ok(out)
}

/// Creates an inbox; a second inbox with the same prefix is a conflict.
pub async fn create_inbox(
    tx: &mut Tx,
    org_id: i64,
    prefix: &str,
    name: &str,
    auto_acknowledge: bool,
) -> Result<Inbox, StoreError> {
    let prefix = prefix.to_ascii_lowercase();
    with_tx!(tx, |c| sqlx::query_as(
        "INSERT INTO inboxes (organization_id, name, email_prefix, auto_acknowledge, created_at) VALUES ($1, $2, $3, $4, $5)
         RETURNING id, organization_id, name, email_prefix, auto_acknowledge"
    )
    .bind(org_id)
    .bind(name)
    .bind(&prefix)
    .bind(auto_acknowledge)
    .bind(now())
    .fetch_one(c)
    .await)
    .map_err(|e| conflict(e, &format!("inbox {prefix:?} exists already")))
}

async fn upsert_inbox(
    tx: &mut Tx,
    org_id: i64,
    prefix: &str,
    name: &str,
    auto_acknowledge: bool,
) -> Result<(), StoreError> {
    with_tx!(tx, |c| {
        sqlx::query(
        "INSERT INTO inboxes (organization_id, name, email_prefix, auto_acknowledge, created_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (organization_id, email_prefix) DO UPDATE SET name = excluded.name, auto_acknowledge = excluded.auto_acknowledge"
    )
    .bind(org_id)
    .bind(name)
    .bind(prefix.to_ascii_lowercase())
    .bind(auto_acknowledge)
    .bind(now())
    .execute(c)
    .await
        .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// The inbox of `org_id` whose prefix is `prefix` (case-insensitive).
pub async fn inbox_by_prefix(
    tx: &mut Tx,
    org_id: i64,
    prefix: &str,
) -> Result<Option<Inbox>, StoreError> {
    Ok(with_tx!(tx, |c| {
        sqlx::query_as(
        "SELECT id, organization_id, name, email_prefix, auto_acknowledge FROM inboxes WHERE organization_id = $1 AND email_prefix = $2"
    )
    .bind(org_id)
    .bind(prefix.to_ascii_lowercase())
    .fetch_optional(c)
    .await
    })?)
}

/// An inbox by id, with its organization.
pub async fn inbox_by_id(tx: &mut Tx, inbox_id: i64) -> Result<Option<Inbox>, StoreError> {
    Ok(with_tx!(tx, |c| {
        sqlx::query_as("SELECT id, organization_id, name, email_prefix, auto_acknowledge FROM inboxes WHERE id = $1")
        .bind(inbox_id)
        .fetch_optional(c)
        .await
    })?)
}

/// Every inbox of an organization.
pub async fn list_inboxes(tx: &mut Tx, org_id: i64) -> Result<Vec<Inbox>, StoreError> {
    Ok(with_tx!(tx, |c| {
        sqlx::query_as(
        "SELECT id, organization_id, name, email_prefix, auto_acknowledge FROM inboxes WHERE organization_id = $1 ORDER BY id"
    )
    .bind(org_id)
    .fetch_all(c)
    .await
    })?)
}

/// Creates an agent; a second agent with the same address is a conflict.
pub async fn create_user(
    tx: &mut Tx,
    org_id: i64,
    email: &str,
    name: &str,
) -> Result<User, StoreError> {
    let norm = crate::address::normalize(email)
        .ok_or_else(|| StoreError::Conflict(format!("{email:?} is not an email address")))?;
    with_tx!(tx, |c| sqlx::query_as(
        "INSERT INTO users (organization_id, email, email_norm, name, created_at) VALUES ($1, $2, $3, $4, $5)
         RETURNING id, organization_id, email, name"
    )
    .bind(org_id)
    .bind(email.trim())
    .bind(&norm)
    .bind(name)
    .bind(now())
    .fetch_one(c)
    .await)
    .map_err(|e| conflict(e, &format!("user {norm} exists already")))
}

async fn upsert_user(tx: &mut Tx, org_id: i64, email: &str, name: &str) -> Result<(), StoreError> {
    let norm = crate::address::normalize(email)
        .ok_or_else(|| StoreError::Conflict(format!("{email:?} is not an email address")))?;
    with_tx!(tx, |c| {
        sqlx::query(
        "INSERT INTO users (organization_id, email, email_norm, name, created_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (organization_id, email_norm) DO UPDATE SET name = excluded.name"
    )
    .bind(org_id)
    .bind(email.trim())
    .bind(&norm)
    .bind(name)
    .bind(now())
    .execute(c)
    .await
        .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// The agent of `org_id` with this normalized address.
pub async fn agent_by_email(
    tx: &mut Tx,
    org_id: i64,
    email_norm: &str,
) -> Result<Option<User>, StoreError> {
    Ok(with_tx!(tx, |c| {
        sqlx::query_as("SELECT id, organization_id, email, name FROM users WHERE organization_id = $1 AND email_norm = $2")
        .bind(org_id)
        .bind(email_norm)
        .fetch_optional(c)
        .await
    })?)
}

/// Issues a new API token for an organization; only its SHA-256 is stored.
pub async fn create_token(tx: &mut Tx, org_id: i64) -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("idk_{}", hex::encode(bytes));
    with_tx!(tx, |c| sqlx::query(
        "INSERT INTO api_tokens (organization_id, token_hash, created_at) VALUES ($1, $2, $3)"
    )
    .bind(org_id)
    .bind(super::blobs::sha256_hex(token.as_bytes()))
    .bind(now())
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(token)
}

/// The organization an API token belongs to.
pub async fn org_for_token(tx: &mut Tx, token: &str) -> Result<Option<i64>, StoreError> {
    Ok(with_tx!(tx, |c| sqlx::query_scalar(
        "SELECT organization_id FROM api_tokens WHERE token_hash = $1"
    )
    .bind(super::blobs::sha256_hex(token.as_bytes()))
    .fetch_optional(c)
    .await)?)
}

/// Every agent of an organization.
pub async fn list_users(tx: &mut Tx, org_id: i64) -> Result<Vec<User>, StoreError> {
    Ok(with_tx!(tx, |c| sqlx::query_as(
        "SELECT id, organization_id, email, name FROM users WHERE organization_id = $1 ORDER BY id"
    )
    .bind(org_id)
    .fetch_all(c)
    .await)?)
}
