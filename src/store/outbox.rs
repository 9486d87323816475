//! The durable outbox: rows are written in the transaction that stores what they announce,
//! claimed by one sender (one instance, `FOR UPDATE SKIP LOCKED` on PostgreSQL), and marked
//! sent as soon as the relay or webhook accepted them.

use super::{Backend, StoreError, Tx, now};
use crate::{with_tx, with_tx_as_is};

/// Milliseconds since the epoch, the outbox's clock.
pub fn now_ms() -> i64 {
    now().timestamp_millis()
}

/// What an outbox row carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The outgoing message with this id.
    Email { message_id: i64 },
    /// A webhook event and its JSON body.
    Webhook { event: String, payload: String },
}

/// Queues `item` for organization `org_id`, due now.
pub async fn enqueue(tx: &mut Tx, org_id: i64, item: &Item) -> Result<(), StoreError> {
    let (kind, message_id, event, payload) = match item {
        Item::Email { message_id } => ("email", Some(*message_id), "", ""),
        Item::Webhook { event, payload } => ("webhook", None, event.as_str(), payload.as_str()),
    };
    let ts = now();
    // The outbox has no foreign keys and nothing reads it before the commit: held-back
    // rows (the message this names, say) may stay held back.
    with_tx_as_is!(tx, |c| {
        sqlx::query(
        "INSERT INTO outbox (organization_id, kind, message_id, event, payload, state, attempts, next_attempt_ms, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7, $7)"
    )
    .bind(org_id)
    .bind(kind)
    .bind(message_id)
    .bind(event)
    .bind(payload)
    .bind(ts.timestamp_millis())
    .bind(ts)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// A claimed outbox row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    pub id: i64,
    pub organization_id: i64,
    pub kind: String,
    pub message_id: Option<i64>,
    pub event: String,
    pub payload: String,
    /// Attempts including this one.
    pub attempts: i64,
}

// Due rows, and rows whose claim expired (a sender died mid-send), oldest first. Each kind
// is read in the order of the `outbox_due` index, so a claim reads about as many rows as it
// takes (one `OR` over both made PostgreSQL read and sort every due row, each claim). On
// PostgreSQL other instances skip the rows one has locked, so each row goes to one sender.
const CLAIM_POSTGRES: &str = "WITH due AS (
       SELECT organization_id, id, next_attempt_ms FROM outbox
       WHERE state = 'pending' AND next_attempt_ms <= $3
       ORDER BY next_attempt_ms, id LIMIT $4 FOR UPDATE SKIP LOCKED),
     expired AS (
       SELECT organization_id, id, next_attempt_ms FROM outbox
       WHERE state = 'sending' AND claimed_until_ms < $3
       ORDER BY next_attempt_ms, id LIMIT $4 FOR UPDATE SKIP LOCKED)
     UPDATE outbox SET state = 'sending', claimed_by = $1, claimed_until_ms = $2, attempts = attempts + 1
     WHERE (organization_id, id) IN (
       SELECT organization_id, id FROM (SELECT * FROM due UNION ALL SELECT * FROM expired) d
       ORDER BY next_attempt_ms, id LIMIT $4)
     RETURNING id, organization_id, kind, message_id, event, payload, attempts";
// SQLite: the transaction holds the write lock (BEGIN IMMEDIATE), so the claim is atomic.
const CLAIM_SQLITE: &str = "UPDATE outbox SET state = 'sending', claimed_by = $1, claimed_until_ms = $2, attempts = attempts + 1
     WHERE id IN (
       SELECT id FROM (
         SELECT * FROM (SELECT id, next_attempt_ms FROM outbox
           WHERE state = 'pending' AND next_attempt_ms <= $3 ORDER BY next_attempt_ms, id LIMIT $4)
         UNION ALL
         SELECT * FROM (SELECT id, next_attempt_ms FROM outbox
           WHERE state = 'sending' AND claimed_until_ms < $3 ORDER BY next_attempt_ms, id LIMIT $4))
       ORDER BY next_attempt_ms, id LIMIT $4)
     RETURNING id, organization_id, kind, message_id, event, payload, attempts";

/// Claims up to `limit` due rows for `holder` for `lease_ms`.
pub async fn claim(
    tx: &mut Tx,
    holder: &str,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<Job>, StoreError> {
    let now = now_ms();
    let sql = match tx.backend() {
        Backend::Sqlite => CLAIM_SQLITE,
        Backend::Postgres => CLAIM_POSTGRES,
    };
    let mut jobs: Vec<Job> = with_tx!(tx, |c| sqlx::query_as(sql)
        .bind(holder)
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(c)
        .await)?;
    jobs.sort_by_key(|j| j.id);
    Ok(jobs)
}

/// How a claimed row that was not handed over ends its attempt (handed over:
/// [`settle_sent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled<'a> {
    /// Another attempt at this time (milliseconds since the epoch), after this error.
    RetryAt(i64, &'a str),
    /// Given up, for this reason.
    Failed(&'a str),
}

/// Ends the attempt on a claimed row: the claim is released and the state recorded.
pub async fn settle(
    tx: &mut Tx,
    org_id: i64,
    id: i64,
    how: &Settled<'_>,
) -> Result<(), StoreError> {
    let (state, next_attempt_ms, error) = match how {
        Settled::RetryAt(at, error) => ("pending", Some(*at), *error),
        Settled::Failed(error) => ("failed", None, *error),
    };
    with_tx!(tx, |c| sqlx::query(
        "UPDATE outbox SET state = $3, claimed_by = NULL, claimed_until_ms = NULL,
           next_attempt_ms = COALESCE($4, next_attempt_ms), last_error = $5, updated_at = $6
         WHERE organization_id = $1 AND id = $2"
    )
    .bind(org_id)
    .bind(id)
    .bind(state)
    .bind(next_attempt_ms)
    .bind(super::clean_text(error))
    .bind(now())
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Ends the attempts on claimed rows of organization `org_id` that were handed over (the
/// relay said 250, the webhook answered 2xx).
pub async fn settle_sent(tx: &mut Tx, org_id: i64, ids: &[i64]) -> Result<(), StoreError> {
    let ts = now();
    for chunk in ids.chunks(super::MAX_ROWS) {
        with_tx!(tx, |c| {
            let mut q = sqlx::QueryBuilder::new(
                "UPDATE outbox SET state = 'sent', claimed_by = NULL, claimed_until_ms = NULL, last_error = '', updated_at = ",
            );
            q.push_bind(ts)
                .push(" WHERE organization_id = ")
                .push_bind(org_id)
                .push(" AND id");
            super::push_in_list(&mut q, chunk);
            q.build().execute(c).await.map(|r| r.rows_affected())
        })?;
    }
    Ok(())
}

/// Rows of an organization by state, for tests and operators: `(id, kind, state, attempts, last_error)`.
pub async fn list(
    tx: &mut Tx,
    org_id: i64,
) -> Result<Vec<(i64, String, String, i64, String)>, StoreError> {
    Ok(with_tx!(tx, |c| {
        sqlx::query_as(
        "SELECT id, kind, state, attempts, last_error FROM outbox WHERE organization_id = $1 ORDER BY id"
    )
    .bind(org_id)
    .fetch_all(c)
    .await
    })?)
}
