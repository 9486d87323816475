//! Customers, tickets, messages, attachments and the inbound log.

use chrono::{DateTime, Utc};

use super::{StoreError, Tx, clean_text, json_list, now};
use crate::{with_tx, with_tx_as_is};

/// A customer row.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Customer {
    pub id: i64,
    #[serde(skip)]
    pub organization_id: i64,
    pub name: String,
    pub email: String,
    pub is_spam: bool,
}

/// A ticket row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Ticket {
    pub id: i64,
    pub organization_id: i64,
    pub public_id: i64,
    pub inbox_id: i64,
    pub customer_id: i64,
    pub assignee_id: Option<i64>,
    pub subject: String,
    pub status: String,
    pub waiting_on: String,
    pub classification: String,
    pub is_spam: bool,
    pub origin: String,
    pub description: String,
    pub description_html: String,
    pub external_recipient_emails: String,
    pub tags: String,
    pub language: String,
    pub has_attachments: bool,
    pub customer_visible_reply_count: i64,
    pub created_by_role: String,
    pub created_by_user_id: Option<i64>,
    pub summary: String,
    pub sentiment_analysis_class: String,
    pub csat_rating: Option<i64>,
    pub csat_comment: Option<String>,
    pub closed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The organization domain the customer wrote to; replies come from it (empty: unknown).
    pub reply_domain: String,
}

pub(crate) const TICKET_COLUMNS: &str = "id, organization_id, public_id, inbox_id, customer_id, assignee_id, subject, status, waiting_on, classification, is_spam, origin, description, description_html, external_recipient_emails, tags, language, has_attachments, customer_visible_reply_count, created_by_role, created_by_user_id, summary, sentiment_analysis_class, csat_rating, csat_comment, closed_at, created_at, updated_at, reply_domain";

/// A message row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Message {
    pub id: i64,
    pub organization_id: i64,
    pub ticket_id: i64,
    pub role: String,
    pub direction: String,
    pub author_user_id: Option<i64>,
    pub sender_customer_id: Option<i64>,
    pub sender_email: String,
    pub sender_name: String,
    pub content: String,
    pub content_html: String,
    pub is_visible_to_customer: bool,
    pub external_recipient_emails: String,
    pub subject: String,
    pub message_id_header: Option<String>,
    pub in_reply_to: String,
    pub references_header: String,
    pub reply_to: String,
    pub threaded_by: String,
    pub thread_note: String,
    pub auth_results: String,
    pub is_auto_reply: bool,
    pub spam_reason: String,
    pub processing_notes: String,
    pub language: String,
    pub raw_sha256: Option<String>,
    pub delivery_state: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub(crate) const MESSAGE_COLUMNS: &str = "id, organization_id, ticket_id, role, direction, author_user_id, sender_customer_id, sender_email, sender_name, content, content_html, is_visible_to_customer, external_recipient_emails, subject, message_id_header, in_reply_to, references_header, reply_to, threaded_by, thread_note, auth_results, is_auto_reply, spam_reason, processing_notes, language, raw_sha256, delivery_state, created_at, updated_at";

/// An attachment row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Attachment {
    pub id: String,
    pub organization_id: i64,
    pub ticket_id: Option<i64>,
    pub message_id: Option<i64>,
    pub name: String,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
    pub content_id: String,
    pub is_inline: bool,
}

/// Finds the customer with this address, creating it when new; fills an empty name.
pub async fn find_or_create_customer(
    tx: &mut Tx,
    org_id: i64,
    email: &str,
    email_norm: &str,
    name: &str,
) -> Result<Customer, StoreError> {
    let ts = now();
    let name = clean_text(name.trim());
    // One statement for a new customer, or for a known one whose empty name this fills;
    // a known customer with a name returns nothing here and is read below.
    let upserted: Option<Customer> = with_tx!(tx, |c| {
        sqlx::query_as(
        "INSERT INTO customers (organization_id, name, email, email_norm, is_spam, created_at, updated_at) VALUES ($1, $2, $3, $4, FALSE, $5, $5)
         ON CONFLICT (organization_id, email_norm) DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at
           WHERE customers.name = '' AND excluded.name <> ''
         RETURNING id, organization_id, name, email, is_spam"
    )
    .bind(org_id)
    .bind(&name)
    .bind(clean_text(email))
    .bind(email_norm)
    .bind(ts)
    .fetch_optional(c)
    .await
    })?;
    match upserted {
        Some(customer) => Ok(customer),
        None => customer_by_email(tx, org_id, email_norm)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("customer {email_norm}"))),
    }
}

/// Creates a customer the caller found missing; held back when the transaction holds
/// rows back (a concurrent creation then fails the bulk write), else as
/// [`find_or_create_customer`].
pub async fn create_customer(
    tx: &mut Tx,
    org_id: i64,
    email: &str,
    email_norm: &str,
    name: &str,
) -> Result<Customer, StoreError> {
    if !tx.holds_back() {
        return find_or_create_customer(tx, org_id, email, email_norm, name).await;
    }
    let name = clean_text(name.trim());
    let id = tx
        .hold_customer(org_id, email, email_norm, &name, now())
        .await?;
    Ok(Customer {
        id,
        organization_id: org_id,
        name,
        email: clean_text(email),
        is_spam: false,
    })
}

/// The customer of `org_id` with this normalized address.
pub async fn customer_by_email(
    tx: &mut Tx,
    org_id: i64,
    email_norm: &str,
) -> Result<Option<Customer>, StoreError> {
    Ok(with_tx!(tx, |c| {
        sqlx::query_as("SELECT id, organization_id, name, email, is_spam FROM customers WHERE organization_id = $1 AND email_norm = $2")
        .bind(org_id)
        .bind(email_norm)
        .fetch_optional(c)
        .await
    })?)
}

/// A customer by id within an organization.
pub async fn customer_by_id(
    tx: &mut Tx,
    org_id: i64,
    id: i64,
) -> Result<Option<Customer>, StoreError> {
    Ok(with_tx!(tx, |c| {
        sqlx::query_as("SELECT id, organization_id, name, email, is_spam FROM customers WHERE organization_id = $1 AND id = $2")
        .bind(org_id)
        .bind(id)
        .fetch_optional(c)
        .await
    })?)
}

/// Every customer of an organization, by id.
pub async fn list_customers(tx: &mut Tx, org_id: i64) -> Result<Vec<Customer>, StoreError> {
    Ok(with_tx!(tx, |c| {
        sqlx::query_as("SELECT id, organization_id, name, email, is_spam FROM customers WHERE organization_id = $1 ORDER BY id")
        .bind(org_id)
        .fetch_all(c)
        .await
    })?)
}

/// Sets a customer's spam flag.
pub async fn set_customer_spam(
    tx: &mut Tx,
    org_id: i64,
    customer_id: i64,
    is_spam: bool,
) -> Result<(), StoreError> {
    with_tx!(tx, |c| sqlx::query(
        "UPDATE customers SET is_spam = $3, updated_at = $4 WHERE organization_id = $1 AND id = $2"
    )
    .bind(org_id)
    .bind(customer_id)
    .bind(is_spam)
    .bind(now())
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Changes a customer's name and/or spam flag (the fields the API may PATCH); true when the
/// customer exists in the organization.
pub async fn update_customer(
    tx: &mut Tx,
    org_id: i64,
    customer_id: i64,
    name: Option<&str>,
    is_spam: Option<bool>,
) -> Result<bool, StoreError> {
    let rows = with_tx!(tx, |c| {
        sqlx::query(
        "UPDATE customers SET name = COALESCE($3, name), is_spam = COALESCE($4, is_spam), updated_at = $5
         WHERE organization_id = $1 AND id = $2"
    )
    .bind(org_id)
    .bind(customer_id)
    .bind(name.map(clean_text))
    .bind(is_spam)
    .bind(now())
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(rows > 0)
}

/// Clears a ticket's assignee and nothing else (SPEC 4); true when the ticket exists.
pub async fn unassign_ticket(tx: &mut Tx, org_id: i64, ticket_id: i64) -> Result<bool, StoreError> {
    let rows = with_tx!(tx, |c| {
        sqlx::query(
        "UPDATE tickets SET assignee_id = NULL, updated_at = $3 WHERE organization_id = $1 AND id = $2"
    )
    .bind(org_id)
    .bind(ticket_id)
    .bind(now())
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(rows > 0)
}

/// A ticket by primary key within an organization.
pub async fn ticket_by_id(tx: &mut Tx, org_id: i64, id: i64) -> Result<Option<Ticket>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {TICKET_COLUMNS} FROM tickets WHERE organization_id = $1 AND id = $2"
    ));
    Ok(with_tx!(tx, |c| sqlx::query_as(sql)
        .bind(org_id)
        .bind(id)
        .fetch_optional(c)
        .await)?)
}

/// A ticket by its per-organization number.
pub async fn ticket_by_public_id(
    tx: &mut Tx,
    org_id: i64,
    public_id: i64,
) -> Result<Option<Ticket>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {TICKET_COLUMNS} FROM tickets WHERE organization_id = $1 AND public_id = $2"
    ));
    Ok(with_tx!(tx, |c| sqlx::query_as(sql)
        .bind(org_id)
        .bind(public_id)
        .fetch_optional(c)
        .await)?)
}

/// Every ticket of an organization, spam included, by number.
pub async fn list_tickets(tx: &mut Tx, org_id: i64) -> Result<Vec<Ticket>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {TICKET_COLUMNS} FROM tickets WHERE organization_id = $1 ORDER BY public_id"
    ));
    Ok(with_tx!(tx, |c| sqlx::query_as(sql)
        .bind(org_id)
        .fetch_all(c)
        .await)?)
}

/// The messages of a ticket, oldest first.
pub async fn list_messages(
    tx: &mut Tx,
    org_id: i64,
    ticket_id: i64,
) -> Result<Vec<Message>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE organization_id = $1 AND ticket_id = $2 ORDER BY id"
    ));
    Ok(with_tx!(tx, |c| sqlx::query_as(sql)
        .bind(org_id)
        .bind(ticket_id)
        .fetch_all(c)
        .await)?)
}

/// The attachments of a message.
pub async fn list_attachments(
    tx: &mut Tx,
    org_id: i64,
    message_id: i64,
) -> Result<Vec<Attachment>, StoreError> {
    Ok(with_tx!(tx, |c| {
        sqlx::query_as(
        "SELECT id, organization_id, ticket_id, message_id, name, content_type, size, sha256, content_id, is_inline FROM attachments
         WHERE organization_id = $1 AND message_id = $2 ORDER BY created_at, id"
    )
    .bind(org_id)
    .bind(message_id)
    .fetch_all(c)
    .await
    })?)
}

/// Every Message-ID of these tickets' messages: (ticket id, message id, Message-ID), by
/// message id within each ticket.
pub async fn message_ids_of_tickets(
    tx: &mut Tx,
    org_id: i64,
    ticket_ids: &[i64],
) -> Result<Vec<(i64, i64, String)>, StoreError> {
    super::select_in(
        tx,
        "SELECT ticket_id, id, message_id_header FROM messages
         WHERE message_id_header IS NOT NULL AND organization_id = ",
        org_id,
        "ticket_id",
        ticket_ids,
        " ORDER BY ticket_id, id",
    )
    .await
}

/// [`TICKET_COLUMNS`], each prefixed with the table alias `alias`.
fn ticket_columns_of(alias: &str) -> String {
    TICKET_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tickets of the messages that carry the first of these Message-IDs any message
/// carries, in the order of those messages, each ticket once; with the Message-ID matched.
pub async fn tickets_by_message_ids(
    tx: &mut Tx,
    org_id: i64,
    ids: &[String],
) -> Result<Option<(String, Vec<Ticket>)>, StoreError> {
    // `m.id + 0`: ordering by the bare id let PostgreSQL walk the whole primary key in id
    // order looking for the header (9 M index entries per 10,000 messages while its
    // statistics lagged a growing table); a Message-ID is on one message or a few.
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {} FROM messages m JOIN tickets t ON t.id = m.ticket_id
             WHERE m.organization_id = $1 AND m.message_id_header = $2 ORDER BY m.id + 0 LIMIT 20",
            ticket_columns_of("t")
        )
    });
    // Held-back messages answer only to their own Message-IDs.
    if tx.holds_message_id(org_id, ids) {
        tx.write_pending().await?;
    }
    for id in ids {
        let found: Vec<Ticket> =
            with_tx_as_is!(tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(SQL.as_str()))
                .bind(org_id)
                .bind(id)
                .fetch_all(c)
                .await)?;
        if !found.is_empty() {
            let mut seen = std::collections::HashSet::new();
            let tickets = found.into_iter().filter(|t| seen.insert(t.id)).collect();
            return Ok(Some((id.clone(), tickets)));
        }
    }
    Ok(None)
}

/// A ticket with the Message-ID of one of its messages.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TicketByMessageId {
    pub header: String,
    #[sqlx(flatten)]
    pub ticket: Ticket,
}

/// For each of these Message-IDs, the tickets of the first 20 messages carrying it, in the
/// order of those messages: [`tickets_by_message_ids`] for a whole batch in one statement.
pub async fn tickets_by_message_id_list(
    tx: &mut Tx,
    org_id: i64,
    ids: &[&str],
) -> Result<Vec<TicketByMessageId>, StoreError> {
    static HEAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT x.header, {} FROM (
               SELECT message_id_header AS header, ticket_id, id,
                      ROW_NUMBER() OVER (PARTITION BY message_id_header ORDER BY id) AS n
               FROM messages WHERE organization_id = ",
            ticket_columns_of("t")
        )
    });
    let mut found = Vec::new();
    for chunk in ids.chunks(super::MAX_ROWS) {
        let rows: Vec<TicketByMessageId> = with_tx!(tx, |c| {
            let mut q = sqlx::QueryBuilder::new(HEAD.as_str());
            q.push_bind(org_id).push(" AND message_id_header");
            super::push_in_list(&mut q, chunk);
            q.push(
                ") x JOIN tickets t ON t.id = x.ticket_id WHERE x.n <= 20 ORDER BY x.header, x.id",
            );
            q.build_query_as().fetch_all(c).await
        })?;
        found.extend(rows);
    }
    Ok(found)
}

/// The messages that carry the first of these Message-IDs that any message carries.
pub async fn find_by_message_ids(
    tx: &mut Tx,
    org_id: i64,
    ids: &[String],
) -> Result<Option<(String, Vec<Message>)>, StoreError> {
    // Normally one message carries an id; more when someone reused it, so all come back
    // (bounded) and the caller decides which ticket is meant.
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE organization_id = $1 AND message_id_header = $2 ORDER BY id + 0 LIMIT 20"
    );
    for id in ids {
        let found: Vec<Message> =
            with_tx!(tx, |c| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(org_id)
                .bind(id)
                .fetch_all(c)
                .await)?;
        if !found.is_empty() {
            return Ok(Some((id.clone(), found)));
        }
    }
    Ok(None)
}

/// Of these duplicate keys, the ones stored in `org_id` already: (key, ticket id, message id).
pub async fn existing_dedupe_keys(
    tx: &mut Tx,
    org_id: i64,
    keys: &[&str],
) -> Result<Vec<(String, i64, i64)>, StoreError> {
    super::select_in(
        tx,
        "SELECT dedupe_key, ticket_id, id FROM messages WHERE organization_id = ",
        org_id,
        "dedupe_key",
        keys,
        "",
    )
    .await
}

/// A customer with the normalized address it was found by.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CustomerByEmail {
    pub email_norm: String,
    #[sqlx(flatten)]
    pub customer: Customer,
}

/// The customers of `org_id` with these normalized addresses (the unknown ones are absent).
pub async fn customers_by_emails(
    tx: &mut Tx,
    org_id: i64,
    norms: &[&str],
) -> Result<Vec<CustomerByEmail>, StoreError> {
    super::select_in(
        tx,
        "SELECT email_norm, id, organization_id, name, email, is_spam FROM customers WHERE organization_id = ",
        org_id,
        "email_norm",
        norms,
        "",
    )
    .await
}

/// When each of these customers opened a ticket by mail after `since`: (customer id, time).
pub async fn tickets_opened_since(
    tx: &mut Tx,
    org_id: i64,
    customer_ids: &[i64],
    since: DateTime<Utc>,
) -> Result<Vec<(i64, DateTime<Utc>)>, StoreError> {
    let mut found = Vec::new();
    for chunk in customer_ids.chunks(super::MAX_ROWS) {
        let rows: Vec<(i64, DateTime<Utc>)> = with_tx!(tx, |c| {
            let mut q = sqlx::QueryBuilder::new(
                "SELECT customer_id, created_at FROM tickets WHERE origin = 'email' AND organization_id = ",
            );
            q.push_bind(org_id)
                .push(" AND created_at > ")
                .push_bind(since)
                .push(" AND customer_id");
            super::push_in_list(&mut q, chunk);
            q.build_query_as().fetch_all(c).await
        })?;
        found.extend(rows);
    }
    Ok(found)
}

/// Addresses of the ticket's participants: its creation-time list and every message's CC snapshot.
pub async fn ticket_snapshot_addresses(
    tx: &mut Tx,
    org_id: i64,
    ticket: &Ticket,
) -> Result<Vec<String>, StoreError> {
    let lists: Vec<String> = with_tx!(tx, |c| {
        sqlx::query_scalar(
        "SELECT external_recipient_emails FROM messages WHERE organization_id = $1 AND ticket_id = $2 AND external_recipient_emails <> '[]'"
    )
    .bind(org_id)
    .bind(ticket.id)
    .fetch_all(c)
    .await
    })?;
    let mut out: Vec<String> = super::parse_json_list(&ticket.external_recipient_emails);
    for l in lists {
        out.extend(super::parse_json_list(&l));
    }
    let mut norm: Vec<String> = out
        .iter()
        .filter_map(|a| crate::address::normalize(a))
        .collect();
    norm.sort();
    norm.dedup();
    Ok(norm)
}

/// Tickets a customer opened by mail since `since`.
pub async fn count_tickets_since(
    tx: &mut Tx,
    org_id: i64,
    customer_id: i64,
    since: DateTime<Utc>,
) -> Result<i64, StoreError> {
    Ok(with_tx!(tx, |c| {
        sqlx::query_scalar(
        "SELECT COUNT(*) FROM tickets WHERE organization_id = $1 AND customer_id = $2 AND origin = 'email' AND created_at > $3"
    )
    .bind(org_id)
    .bind(customer_id)
    .bind(since)
    .fetch_one(c)
    .await
    })?)
}

/// Takes the next ticket number. The counter row stays locked until commit, so numbers are
/// gap-free: a rolled-back ticket gives its number back.
pub async fn next_public_id(tx: &mut Tx, org_id: i64) -> Result<i64, StoreError> {
    reserve_public_ids(tx, org_id, 1).await
}

/// Takes `count` ticket numbers at once and returns the last; the counter row stays locked
/// until commit. Numbers not used must be given back with [`return_public_ids`] before the
/// commit, so that numbering stays gap-free.
pub async fn reserve_public_ids(tx: &mut Tx, org_id: i64, count: i64) -> Result<i64, StoreError> {
    // The counter row depends on no held-back row: they may stay held back.
    Ok(with_tx_as_is!(tx, |c| {
        sqlx::query_scalar(
        "UPDATE ticket_counters SET last_public_id = last_public_id + $2 WHERE organization_id = $1 RETURNING last_public_id"
    )
    .bind(org_id)
    .bind(count)
    .fetch_one(c)
    .await
    })?)
}

/// Gives back the last `count` numbers taken by [`reserve_public_ids`] in this transaction.
pub async fn return_public_ids(tx: &mut Tx, org_id: i64, count: i64) -> Result<(), StoreError> {
    with_tx_as_is!(tx, |c| {
        sqlx::query(
            "UPDATE ticket_counters SET last_public_id = last_public_id - $2 WHERE organization_id = $1",
        )
        .bind(org_id)
        .bind(count)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// A ticket to insert.
#[derive(Debug, Clone)]
pub struct NewTicket<'a> {
    pub organization_id: i64,
    pub inbox_id: i64,
    pub customer_id: i64,
    pub subject: &'a str,
    pub status: &'a str,
    pub waiting_on: &'a str,
    pub is_spam: bool,
    pub origin: &'a str,
    pub description: &'a str,
    pub description_html: &'a str,
    pub external_recipient_emails: &'a [String],
    pub language: &'a str,
    pub has_attachments: bool,
    pub created_by_role: &'a str,
    pub created_by_user_id: Option<i64>,
    /// The organization domain replies are sent from: the one the customer wrote to.
    pub reply_domain: &'a str,
}

/// Inserts a ticket with the next number; returns `(id, public_id)`.
pub async fn insert_ticket(tx: &mut Tx, t: &NewTicket<'_>) -> Result<(i64, i64), StoreError> {
    let public_id = next_public_id(tx, t.organization_id).await?;
    let id = insert_numbered_ticket(tx, t, public_id).await?;
    Ok((id, public_id))
}

/// Inserts a ticket under a number taken already ([`reserve_public_ids`]); returns its id.
pub async fn insert_numbered_ticket(
    tx: &mut Tx,
    t: &NewTicket<'_>,
    public_id: i64,
) -> Result<i64, StoreError> {
    let ts = now();
    if tx.holds_back() {
        return tx.hold_ticket(t, public_id, ts).await;
    }
    let id: i64 = with_tx!(tx, |c| {
        sqlx::query_scalar(
        "INSERT INTO tickets (organization_id, public_id, inbox_id, customer_id, subject, status, waiting_on, classification, is_spam, origin,
            description, description_html, external_recipient_emails, tags, language, has_attachments, created_by_role, created_by_user_id,
            reply_domain, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, '', $8, $9, $10, $11, $12, '[]', $13, $14, $15, $16, $18, $17, $17) RETURNING id"
    )
    .bind(t.organization_id)
    .bind(public_id)
    .bind(t.inbox_id)
    .bind(t.customer_id)
    .bind(clean_text(t.subject))
    .bind(t.status)
    .bind(t.waiting_on)
    .bind(t.is_spam)
    .bind(t.origin)
    .bind(clean_text(t.description))
    .bind(clean_text(t.description_html))
    .bind(json_list(t.external_recipient_emails))
    .bind(t.language)
    .bind(t.has_attachments)
    .bind(t.created_by_role)
    .bind(t.created_by_user_id)
    .bind(ts)
    .bind(t.reply_domain)
    .fetch_one(c)
    .await
    })?;
    Ok(id)
}

/// The state fields an inbound message may change on its ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketState {
    pub status: String,
    pub waiting_on: String,
    pub classification: String,
    pub closed_at: Option<DateTime<Utc>>,
}

/// Records a new message on a ticket: its workflow state when the message changes it, and
/// whether the ticket now has attachments; one statement.
pub async fn update_ticket_after_message(
    tx: &mut Tx,
    org_id: i64,
    ticket_id: i64,
    state: Option<&TicketState>,
    has_attachments: bool,
) -> Result<(), StoreError> {
    // Held-back rows are inserts: only a held-back ticket itself changes this statement.
    if tx.holds_ticket(ticket_id) {
        tx.write_pending().await?;
    }
    match state {
        Some(s) => with_tx_as_is!(tx, |c| {
            sqlx::query(
            "UPDATE tickets SET status = $3, waiting_on = $4, classification = $5, closed_at = $6,
             has_attachments = (has_attachments OR $7), updated_at = $8 WHERE organization_id = $1 AND id = $2"
        )
        .bind(org_id)
        .bind(ticket_id)
        .bind(&s.status)
        .bind(&s.waiting_on)
        .bind(&s.classification)
        .bind(s.closed_at)
        .bind(has_attachments)
        .bind(now())
        .execute(c)
        .await
        .map(|r| r.rows_affected())
        })?,
        None => with_tx_as_is!(tx, |c| {
            sqlx::query(
            "UPDATE tickets SET has_attachments = (has_attachments OR $3), updated_at = $4 WHERE organization_id = $1 AND id = $2"
        )
        .bind(org_id)
        .bind(ticket_id)
        .bind(has_attachments)
        .bind(now())
        .execute(c)
        .await
        .map(|r| r.rows_affected())
        })?,
    };
    Ok(())
}

/// Writes a ticket's workflow state.
pub async fn update_ticket_state(
    tx: &mut Tx,
    org_id: i64,
    ticket_id: i64,
    s: &TicketState,
) -> Result<(), StoreError> {
    update_ticket_after_message(tx, org_id, ticket_id, Some(s), false).await
}

/// A message to insert.
#[derive(Debug, Clone, Default)]
pub struct NewMessage<'a> {
    pub organization_id: i64,
    pub ticket_id: i64,
    pub role: &'a str,
    pub direction: &'a str,
    pub author_user_id: Option<i64>,
    pub sender_customer_id: Option<i64>,
    pub sender_email: &'a str,
    pub sender_name: &'a str,
    pub content: &'a str,
    pub content_html: &'a str,
    pub is_visible_to_customer: bool,
    pub external_recipient_emails: &'a [String],
    pub subject: &'a str,
    pub message_id_header: Option<&'a str>,
    pub in_reply_to: &'a str,
    pub references_header: &'a str,
    pub reply_to: &'a str,
    pub threaded_by: &'a str,
    pub thread_note: &'a str,
    pub auth_results: &'a str,
    pub is_auto_reply: bool,
    pub spam_reason: &'a str,
    pub processing_notes: &'a str,
    pub language: &'a str,
    pub raw_sha256: Option<&'a str>,
    pub dedupe_key: Option<&'a str>,
    pub delivery_state: Option<&'a str>,
}

/// Inserts a message; returns its id. A duplicate key surfaces as a unique violation.
pub async fn insert_message(tx: &mut Tx, m: &NewMessage<'_>) -> Result<i64, StoreError> {
    let ts = now();
    if tx.holds_back() {
        return tx.hold_message(m, ts).await;
    }
    Ok(with_tx!(tx, |c| {
        sqlx::query_scalar(
        "INSERT INTO messages (organization_id, ticket_id, role, direction, author_user_id, sender_customer_id, sender_email, sender_name,
            content, content_html, is_visible_to_customer, external_recipient_emails, subject, message_id_header, in_reply_to,
            references_header, reply_to, threaded_by, thread_note, auth_results, is_auto_reply, spam_reason, processing_notes, language,
            raw_sha256, dedupe_key, delivery_state, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $28)
         RETURNING id"
    )
    .bind(m.organization_id)
    .bind(m.ticket_id)
    .bind(m.role)
    .bind(m.direction)
    .bind(m.author_user_id)
    .bind(m.sender_customer_id)
    .bind(clean_text(m.sender_email))
    .bind(clean_text(m.sender_name))
    .bind(clean_text(m.content))
    .bind(clean_text(m.content_html))
    .bind(m.is_visible_to_customer)
    .bind(json_list(m.external_recipient_emails))
    .bind(clean_text(m.subject))
    .bind(m.message_id_header.map(clean_text))
    .bind(clean_text(m.in_reply_to))
    .bind(clean_text(m.references_header))
    .bind(clean_text(m.reply_to))
    .bind(m.threaded_by)
    .bind(clean_text(m.thread_note))
    .bind(clean_text(m.auth_results))
    .bind(m.is_auto_reply)
    .bind(m.spam_reason)
    .bind(clean_text(m.processing_notes))
    .bind(m.language)
    .bind(m.raw_sha256)
    .bind(m.dedupe_key)
    .bind(m.delivery_state)
    .bind(ts)
    .fetch_one(c)
    .await
    })?)
}

/// An attachment to insert.
#[derive(Debug, Clone)]
pub struct NewAttachment<'a> {
    pub id: &'a str,
    pub organization_id: i64,
    pub ticket_id: i64,
    pub message_id: i64,
    pub name: &'a str,
    pub content_type: &'a str,
    pub size: i64,
    pub sha256: &'a str,
    pub content_id: &'a str,
    pub is_inline: bool,
}

/// Inserts an attachment row (its bytes are in the blob store already).
pub async fn insert_attachment(tx: &mut Tx, a: &NewAttachment<'_>) -> Result<(), StoreError> {
    if tx.holds_back() {
        return tx.hold_attachment(a, now());
    }
    with_tx!(tx, |c| {
        sqlx::query(
        "INSERT INTO attachments (id, organization_id, ticket_id, message_id, name, content_type, size, sha256, content_id, is_inline, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    )
    .bind(a.id)
    .bind(a.organization_id)
    .bind(a.ticket_id)
    .bind(a.message_id)
    .bind(clean_text(a.name))
    .bind(clean_text(a.content_type))
    .bind(a.size)
    .bind(a.sha256)
    .bind(clean_text(a.content_id))
    .bind(a.is_inline)
    .bind(now())
    .execute(c)
    .await
        .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// Inserts an attachment uploaded through the API, not yet on any ticket or message (its
/// bytes are durable in the blob store already).
pub async fn insert_uploaded_attachment(
    tx: &mut Tx,
    org_id: i64,
    id: &str,
    name: &str,
    content_type: &str,
    size: i64,
    sha256: &str,
) -> Result<(), StoreError> {
    with_tx!(tx, |c| {
        sqlx::query(
        "INSERT INTO attachments (id, organization_id, ticket_id, message_id, name, content_type, size, sha256, content_id, is_inline, created_at)
         VALUES ($1, $2, NULL, NULL, $3, $4, $5, $6, '', FALSE, $7)"
    )
    .bind(id)
    .bind(org_id)
    .bind(clean_text(name))
    .bind(clean_text(content_type))
    .bind(size)
    .bind(sha256)
    .bind(now())
    .execute(c)
    .await
        .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// Records a message's outgoing delivery state (`failed`, `delayed`, ...).
pub async fn set_delivery_state(
    tx: &mut Tx,
    org_id: i64,
    message_id: i64,
    state: &str,
) -> Result<(), StoreError> {
    update_delivery_states(tx, org_id, &[message_id], state, false).await
}

/// Records the sender's progress (`sent`, `retrying`) on messages still waiting for it
/// (`queued`, `retrying`). A bounce's `failed` stays: the relay's `250` can be recorded
/// after the DSN it led to was read, and the DSN is the later news.
pub async fn record_send_progress(
    tx: &mut Tx,
    org_id: i64,
    message_ids: &[i64],
    state: &str,
) -> Result<(), StoreError> {
    update_delivery_states(tx, org_id, message_ids, state, true).await
}

async fn update_delivery_states(
    tx: &mut Tx,
    org_id: i64,
    message_ids: &[i64],
    state: &str,
    only_while_sending: bool,
) -> Result<(), StoreError> {
    let ts = now();
    for chunk in message_ids.chunks(super::MAX_ROWS) {
        with_tx!(tx, |c| {
            let mut q = sqlx::QueryBuilder::new("UPDATE messages SET delivery_state = ");
            q.push_bind(state)
                .push(", updated_at = ")
                .push_bind(ts)
                .push(" WHERE organization_id = ")
                .push_bind(org_id);
            if only_while_sending {
                q.push(" AND delivery_state IN ('queued', 'retrying')");
            }
            q.push(" AND id");
            super::push_in_list(&mut q, chunk);
            q.build().execute(c).await.map(|r| r.rows_affected())
        })?;
    }
    Ok(())
}

/// One row of the inbound log.
#[derive(Debug, Clone)]
pub struct InboundLog<'a> {
    pub organization_id: i64,
    pub recipient: &'a str,
    pub source: &'a str,
    pub raw_sha256: &'a str,
    pub outcome: &'a str,
    pub detail: &'a str,
    pub ticket_id: Option<i64>,
    pub message_id: Option<i64>,
}

/// Records what became of a delivery.
pub async fn log_inbound(tx: &mut Tx, l: &InboundLog<'_>) -> Result<(), StoreError> {
    // The log has no foreign keys and nothing reads it before the commit: held-back rows
    // may stay held back.
    with_tx_as_is!(tx, |c| {
        sqlx::query(
        "INSERT INTO inbound_log (organization_id, recipient, source, raw_sha256, outcome, detail, ticket_id, message_id, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    )
    .bind(l.organization_id)
    .bind(clean_text(l.recipient))
    .bind(l.source)
    .bind(l.raw_sha256)
    .bind(l.outcome)
    .bind(clean_text(l.detail))
    .bind(l.ticket_id)
    .bind(l.message_id)
    .bind(now())
    .execute(c)
    .await
        .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// `(ticket_id, id)` of an outgoing message.
pub async fn outbound_message(
    tx: &mut Tx,
    org_id: i64,
    message_id: i64,
) -> Result<Option<(i64, i64)>, StoreError> {
    Ok(with_tx!(tx, |c| {
        sqlx::query_as(
        "SELECT ticket_id, id FROM messages WHERE organization_id = $1 AND id = $2 AND direction = 'outbound'"
    )
    .bind(org_id)
    .bind(message_id)
    .fetch_optional(c)
    .await
    })?)
}

/// An inbound log row, for people and fixtures.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InboundLogRow {
    pub id: i64,
    pub recipient: String,
    pub source: String,
    pub outcome: String,
    pub detail: String,
    pub ticket_id: Option<i64>,
    pub message_id: Option<i64>,
}

/// The inbound log of an organization, oldest first.
pub async fn list_inbound_log(tx: &mut Tx, org_id: i64) -> Result<Vec<InboundLogRow>, StoreError> {
    Ok(with_tx!(tx, |c| {
        sqlx::query_as(
        "SELECT id, recipient, source, outcome, detail, ticket_id, message_id FROM inbound_log WHERE organization_id = $1 ORDER BY id"
    )
    .bind(org_id)
    .fetch_all(c)
    .await
    })?)
}
