//! Writes of the agent side: assignment, spam flag, reply counters, uploaded attachments
//! joining a message, and the CC snapshot a reply inherits.

use super::{StoreError, Tx, now, parse_json_list};
use crate::with_tx;

/// Sets or clears a ticket's assignee.
pub async fn set_assignee(
    tx: &mut Tx,
    org_id: i64,
    ticket_id: i64,
    assignee: Option<i64>,
) -> Result<(), StoreError> {
    with_tx!(tx, |c| {
        sqlx::query(
        "UPDATE tickets SET assignee_id = $3, updated_at = $4 WHERE organization_id = $1 AND id = $2"
    )
    .bind(org_id)
    .bind(ticket_id)
    .bind(assignee)
    .bind(now())
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// Marks a ticket spam or not.
pub async fn set_ticket_spam(
    tx: &mut Tx,
    org_id: i64,
    ticket_id: i64,
    is_spam: bool,
) -> Result<(), StoreError> {
    with_tx!(tx, |c| sqlx::query(
        "UPDATE tickets SET is_spam = $3, updated_at = $4 WHERE organization_id = $1 AND id = $2"
    )
    .bind(org_id)
    .bind(ticket_id)
    .bind(is_spam)
    .bind(now())
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Counts one more customer-visible reply on a ticket.
pub async fn count_visible_reply(
    tx: &mut Tx,
    org_id: i64,
    ticket_id: i64,
) -> Result<(), StoreError> {
    with_tx!(tx, |c| {
        sqlx::query(
        "UPDATE tickets SET customer_visible_reply_count = customer_visible_reply_count + 1, updated_at = $3
         WHERE organization_id = $1 AND id = $2"
    )
    .bind(org_id)
    .bind(ticket_id)
    .bind(now())
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// Attaches uploaded attachments (not yet on any message) to a message; returns how many
/// were attached. Ids of another organization or already used are not touched.
pub async fn attach_uploads(
    tx: &mut Tx,
    org_id: i64,
    ticket_id: i64,
    message_id: i64,
    ids: &[String],
) -> Result<usize, StoreError> {
    let mut attached = 0;
    for id in ids {
        let n = with_tx!(tx, |c| sqlx::query(
            "UPDATE attachments SET ticket_id = $3, message_id = $4
             WHERE organization_id = $1 AND id = $2 AND message_id IS NULL"
        )
        .bind(org_id)
        .bind(id)
        .bind(ticket_id)
        .bind(message_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        attached += usize::try_from(n).unwrap_or(0);
    }
    Ok(attached)
}

/// Ids among `ids` that are uploads of this organization not yet on a message.
pub async fn free_uploads(
    tx: &mut Tx,
    org_id: i64,
    ids: &[String],
) -> Result<Vec<String>, StoreError> {
    let mut free = Vec::new();
    for id in ids {
        let found: Option<String> = with_tx!(tx, |c| {
            sqlx::query_scalar(
            "SELECT id FROM attachments WHERE organization_id = $1 AND id = $2 AND message_id IS NULL"
        )
        .bind(org_id)
        .bind(id)
        .fetch_optional(c)
        .await
        })?;
        free.extend(found);
    }
    Ok(free)
}

/// The CC snapshot of the latest customer-visible message of a ticket, if any.
pub async fn last_visible_snapshot(
    tx: &mut Tx,
    org_id: i64,
    ticket_id: i64,
) -> Result<Option<Vec<String>>, StoreError> {
    let row: Option<String> = with_tx!(tx, |c| {
        sqlx::query_scalar(
        "SELECT external_recipient_emails FROM messages
         WHERE organization_id = $1 AND ticket_id = $2 AND is_visible_to_customer = TRUE AND role <> 'system'
         ORDER BY id DESC LIMIT 1"
    )
    .bind(org_id)
    .bind(ticket_id)
    .fetch_optional(c)
    .await
    })?;
    Ok(row.map(|r| parse_json_list(&r)))
}

/// Replaces a ticket's tags.
pub async fn set_tags(
    tx: &mut Tx,
    org_id: i64,
    ticket_id: i64,
    tags: &[String],
) -> Result<(), StoreError> {
    with_tx!(tx, |c| sqlx::query(
        "UPDATE tickets SET tags = $3, updated_at = $4 WHERE organization_id = $1 AND id = $2"
    )
    .bind(org_id)
    .bind(ticket_id)
    .bind(super::json_list(tags))
    .bind(now())
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// The domain replies on a ticket leave from: the one its customer wrote to when it is
/// still the organization's, else the organization's first domain.
pub fn reply_domain(org: &super::orgs::Org, ticket: &super::tickets::Ticket) -> Option<String> {
    Some(ticket.reply_domain.clone())
        .filter(|d| org.domains.iter().any(|o| o.eq_ignore_ascii_case(d)))
        .or_else(|| org.domains.first().cloned())
}
