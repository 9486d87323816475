//! Read-model queries of the HTTP API: counted, paged lists and the related rows of a page,
//! each loaded in one query (no query per row).
//!
//! Every query is scoped by `organization_id`, so an id of another organization reads as
//! absent. Pages are `LIMIT`/`OFFSET` over an index in the list's order (see migration 0005);
//! a ticket page picks its ids from the index alone, then reads those rows.

use chrono::{DateTime, Utc};

use super::orgs::{Inbox, User};
use super::tickets::{Attachment, Customer, MESSAGE_COLUMNS, Message, TICKET_COLUMNS, Ticket};
use super::{StoreError, Tx};
use crate::with_tx;

/// A value bound to a dynamically built query.
#[derive(Debug, Clone)]
enum Arg {
    Int(i64),
    Bool(bool),
    Text(String),
}

/// Binds `args` in order to a sqlx query (expanded once per backend inside [`with_tx!`]).
macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut q = $query;
        for arg in $args {
            q = match arg {
                Arg::Int(v) => q.bind(*v),
                Arg::Bool(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.clone()),
            };
        }
        q
    }};
}

/// `$first, $first+1, ...`: `n` numbered placeholders.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn dedup(ids: &[i64]) -> Vec<i64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}

// --- customers ----------------------------------------------------------------------------

const CUSTOMER_COLUMNS: &str = "id, organization_id, name, email, is_spam";

/// Customers of an organization, optionally only the one with this normalized address.
pub async fn count_customers(
    tx: &mut Tx,
    org_id: i64,
    email_norm: Option<&str>,
) -> Result<i64, StoreError> {
    let (filter, args) = customer_filter(org_id, email_norm);
    let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM customers WHERE {filter}"));
    Ok(with_tx!(tx, |c| bind_all!(sqlx::query_scalar(sql), &args)
        .fetch_one(c)
        .await)?)
}

/// One page of customers, by id.
pub async fn customer_page(
    tx: &mut Tx,
    org_id: i64,
    email_norm: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<Customer>, StoreError> {
    let (filter, mut args) = customer_filter(org_id, email_norm);
    let n = args.len();
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE {filter} ORDER BY id LIMIT ${} OFFSET ${}",
        n + 1,
        n + 2
    ));
    args.push(Arg::Int(limit));
    args.push(Arg::Int(offset));
    Ok(with_tx!(tx, |c| bind_all!(sqlx::query_as(sql), &args)
        .fetch_all(c)
        .await)?)
}

fn customer_filter(org_id: i64, email_norm: Option<&str>) -> (String, Vec<Arg>) {
    let mut filter = "organization_id = $1".to_string();
    let mut args = vec![Arg::Int(org_id)];
    if let Some(email) = email_norm {
        filter.push_str(" AND email_norm = $2");
        args.push(Arg::Text(email.to_string()));
    }
    (filter, args)
}

/// The customers with these ids (any order; ids of other organizations are not found).
pub async fn customers_by_ids(
    tx: &mut Tx,
    org_id: i64,
    ids: &[i64],
) -> Result<Vec<Customer>, StoreError> {
    by_ids(tx, org_id, ids, "customers", CUSTOMER_COLUMNS).await
}

// --- inboxes and agents -------------------------------------------------------------------

/// The inboxes with these ids.
pub async fn inboxes_by_ids(
    tx: &mut Tx,
    org_id: i64,
    ids: &[i64],
) -> Result<Vec<Inbox>, StoreError> {
    by_ids(
        tx,
        org_id,
        ids,
        "inboxes",
        "id, organization_id, name, email_prefix, auto_acknowledge",
    )
    .await
}

/// The agents with these ids.
pub async fn users_by_ids(tx: &mut Tx, org_id: i64, ids: &[i64]) -> Result<Vec<User>, StoreError> {
    by_ids(tx, org_id, ids, "users", "id, organization_id, email, name").await
}

/// Rows of `table` with these ids, in one query.
async fn by_ids<T>(
    tx: &mut Tx,
    org_id: i64,
    ids: &[i64],
    table: &'static str,
    columns: &'static str,
) -> Result<Vec<T>, StoreError>
where
    T: Send
        + Unpin
        + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let ids = dedup(ids);
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {columns} FROM {table} WHERE organization_id = $1 AND id IN ({})",
        placeholders(2, ids.len())
    ));
    let args: Vec<Arg> = std::iter::once(org_id).chain(ids).map(Arg::Int).collect();
    Ok(with_tx!(tx, |c| bind_all!(sqlx::query_as(sql), &args)
        .fetch_all(c)
        .await)?)
}

// --- tickets ------------------------------------------------------------------------------

/// What a ticket list is narrowed to. Spam tickets are listed only when `is_spam` is true,
/// and then only they.
#[derive(Debug, Clone, Default)]
pub struct TicketFilter {
    pub status: Option<String>,
    pub is_spam: bool,
    pub inbox_id: Option<i64>,
    pub customer_id: Option<i64>,
}

fn ticket_filter(org_id: i64, f: &TicketFilter) -> (String, Vec<Arg>) {
    let mut filter = "organization_id = $1 AND is_spam = $2".to_string();
    let mut args = vec![Arg::Int(org_id), Arg::Bool(f.is_spam)];
    if let Some(status) = &f.status {
        args.push(Arg::Text(status.clone()));
        filter.push_str(&format!(" AND status = ${}", args.len()));
    }
    if let Some(inbox) = f.inbox_id {
        args.push(Arg::Int(inbox));
        filter.push_str(&format!(" AND inbox_id = ${}", args.len()));
    }
    if let Some(customer) = f.customer_id {
        args.push(Arg::Int(customer));
        filter.push_str(&format!(" AND customer_id = ${}", args.len()));
    }
    (filter, args)
}

/// True when the organization has this ticket.
pub async fn ticket_exists(tx: &mut Tx, org_id: i64, ticket_id: i64) -> Result<bool, StoreError> {
    let found: Option<i64> = with_tx!(tx, |c| sqlx::query_scalar(
        "SELECT id FROM tickets WHERE organization_id = $1 AND id = $2"
    )
    .bind(org_id)
    .bind(ticket_id)
    .fetch_optional(c)
    .await)?;
    Ok(found.is_some())
}

/// How many tickets the filter lets through. Without a customer filter this sums the
/// trigger-kept `ticket_list_counts` (a few rows, however many tickets there are); a
/// customer's tickets are few and counted on their index.
pub async fn count_tickets(tx: &mut Tx, org_id: i64, f: &TicketFilter) -> Result<i64, StoreError> {
    let (filter, args) = ticket_filter(org_id, f);
    let sql = if f.customer_id.is_some() {
        format!("SELECT COUNT(*) FROM tickets WHERE {filter}")
    } else {
        // The same columns by the same names: the filter applies as it is.
        format!("SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM ticket_list_counts WHERE {filter}")
    };
    let sql = sqlx::AssertSqlSafe(sql);
    Ok(with_tx!(tx, |c| bind_all!(sqlx::query_scalar(sql), &args)
        .fetch_one(c)
        .await)?)
}

/// One page of tickets, newest first. The inner query walks only the index (offset included);
/// the outer one reads the page's rows.
pub async fn ticket_page(
    tx: &mut Tx,
    org_id: i64,
    f: &TicketFilter,
    limit: i64,
    offset: i64,
) -> Result<Vec<Ticket>, StoreError> {
    let (filter, mut args) = ticket_filter(org_id, f);
    let n = args.len();
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {TICKET_COLUMNS} FROM tickets WHERE organization_id = $1 AND id IN (
             SELECT id FROM tickets WHERE {filter} ORDER BY id DESC LIMIT ${} OFFSET ${}
         ) ORDER BY id DESC",
        n + 1,
        n + 2
    ));
    args.push(Arg::Int(limit));
    args.push(Arg::Int(offset));
    Ok(with_tx!(tx, |c| bind_all!(sqlx::query_as(sql), &args)
        .fetch_all(c)
        .await)?)
}

/// The tickets with these ids (any order; ids of other organizations are not found).
pub async fn tickets_by_ids(
    tx: &mut Tx,
    org_id: i64,
    ids: &[i64],
) -> Result<Vec<Ticket>, StoreError> {
    by_ids(tx, org_id, ids, "tickets", TICKET_COLUMNS).await
}

/// The messages with these ids (any order; ids of other organizations are not found).
pub async fn messages_by_ids(
    tx: &mut Tx,
    org_id: i64,
    ids: &[i64],
) -> Result<Vec<Message>, StoreError> {
    by_ids(tx, org_id, ids, "messages", MESSAGE_COLUMNS).await
}

/// Every attachment of these tickets (whichever message brought it), oldest first.
pub async fn attachments_of_tickets(
    tx: &mut Tx,
    org_id: i64,
    ticket_ids: &[i64],
) -> Result<Vec<Attachment>, StoreError> {
    attachments_by(tx, org_id, "ticket_id", ticket_ids).await
}

/// Every attachment of these messages, oldest first.
pub async fn attachments_of_messages(
    tx: &mut Tx,
    org_id: i64,
    message_ids: &[i64],
) -> Result<Vec<Attachment>, StoreError> {
    attachments_by(tx, org_id, "message_id", message_ids).await
}

async fn attachments_by(
    tx: &mut Tx,
    org_id: i64,
    column: &'static str,
    ids: &[i64],
) -> Result<Vec<Attachment>, StoreError> {
    let ids = dedup(ids);
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {ATTACHMENT_COLUMNS} FROM attachments WHERE organization_id = $1 AND {column} IN ({})
         ORDER BY created_at, id",
        placeholders(2, ids.len())
    ));
    let args: Vec<Arg> = std::iter::once(org_id).chain(ids).map(Arg::Int).collect();
    Ok(with_tx!(tx, |c| bind_all!(sqlx::query_as(sql), &args)
        .fetch_all(c)
        .await)?)
}

const ATTACHMENT_COLUMNS: &str = "id, organization_id, ticket_id, message_id, name, content_type, size, sha256, content_id, is_inline";

/// One attachment of an organization.
pub async fn attachment(
    tx: &mut Tx,
    org_id: i64,
    id: &str,
) -> Result<Option<Attachment>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {ATTACHMENT_COLUMNS} FROM attachments WHERE organization_id = $1 AND id = $2"
    ));
    Ok(with_tx!(tx, |c| sqlx::query_as(sql)
        .bind(org_id)
        .bind(id)
        .fetch_optional(c)
        .await)?)
}

// --- messages -----------------------------------------------------------------------------

/// How many messages a ticket has.
pub async fn count_messages(tx: &mut Tx, org_id: i64, ticket_id: i64) -> Result<i64, StoreError> {
    Ok(with_tx!(tx, |c| sqlx::query_scalar(
        "SELECT COUNT(*) FROM messages WHERE organization_id = $1 AND ticket_id = $2"
    )
    .bind(org_id)
    .bind(ticket_id)
    .fetch_one(c)
    .await)?)
}

/// One page of a ticket's messages, oldest first.
pub async fn message_page(
    tx: &mut Tx,
    org_id: i64,
    ticket_id: i64,
    limit: i64,
    offset: i64,
) -> Result<Vec<Message>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE organization_id = $1 AND ticket_id = $2
         ORDER BY id LIMIT $3 OFFSET $4"
    ));
    Ok(with_tx!(tx, |c| sqlx::query_as(sql)
        .bind(org_id)
        .bind(ticket_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(c)
        .await)?)
}

/// One message of an organization.
pub async fn message(tx: &mut Tx, org_id: i64, id: i64) -> Result<Option<Message>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE organization_id = $1 AND id = $2"
    ));
    Ok(with_tx!(tx, |c| sqlx::query_as(sql)
        .bind(org_id)
        .bind(id)
        .fetch_optional(c)
        .await)?)
}

// --- quarantine ---------------------------------------------------------------------------

/// A quarantine entry without its raw bytes (their size instead).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QuarantineEntry {
    pub id: i64,
    pub recipient: String,
    pub source: String,
    pub raw_sha256: String,
    pub size: i64,
    pub reason: String,
    pub attempts: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const QUARANTINE_COLUMNS: &str = "id, recipient, source, raw_sha256, CAST(LENGTH(raw) AS BIGINT) AS size, reason, attempts, created_at, updated_at";

/// Open (not yet re-processed) quarantine entries of an organization.
pub async fn count_quarantine(tx: &mut Tx, org_id: i64) -> Result<i64, StoreError> {
    Ok(with_tx!(tx, |c| sqlx::query_scalar(
        "SELECT COUNT(*) FROM quarantine WHERE organization_id = $1 AND resolved_at IS NULL"
    )
    .bind(org_id)
    .fetch_one(c)
    .await)?)
}

/// One page of the open quarantine entries, oldest first.
pub async fn quarantine_page(
    tx: &mut Tx,
    org_id: i64,
    limit: i64,
    offset: i64,
) -> Result<Vec<QuarantineEntry>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE organization_id = $1 AND resolved_at IS NULL
         ORDER BY id LIMIT $2 OFFSET $3"
    ));
    Ok(with_tx!(tx, |c| sqlx::query_as(sql)
        .bind(org_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(c)
        .await)?)
}

/// One open quarantine entry of an organization.
pub async fn quarantine_entry(
    tx: &mut Tx,
    org_id: i64,
    id: i64,
) -> Result<Option<QuarantineEntry>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE organization_id = $1 AND id = $2 AND resolved_at IS NULL"
    ));
    Ok(with_tx!(tx, |c| sqlx::query_as(sql)
        .bind(org_id)
        .bind(id)
        .fetch_optional(c)
        .await)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_from_first() {
        assert_eq!(placeholders(2, 3), "$2, $3, $4");
        assert_eq!(placeholders(1, 1), "$1");
    }

    #[test]
    fn ticket_filters_number_their_parameters_in_order() {
        let (sql, args) = ticket_filter(
            7,
            &TicketFilter {
                status: Some("active".into()),
                is_spam: false,
                inbox_id: None,
                customer_id: Some(3),
            },
        );
        assert_eq!(
            sql,
            "organization_id = $1 AND is_spam = $2 AND status = $3 AND customer_id = $4"
        );
        assert_eq!(args.len(), 4);
    }
}
