//! Acknowledgement of new tickets (SPEC 3), for inboxes that ask for it: queued in the
//! transaction that opens the ticket, sent like any reply with `Auto-Submitted:
//! auto-replied`, never for spam, auto-replies or bounces, and at most once per sender in
//! `policy.acknowledge_window_secs`, so two auto-responders cannot loop through us.

use chrono::{DateTime, Duration, Utc};

use crate::store::outbox::{self, Item};
use crate::store::tickets::{self, NewMessage};
use crate::store::{StoreError, Tx};
use crate::with_tx;

/// What the acknowledgement is about.
pub struct NewTicket<'a> {
    pub org_id: i64,
    pub domain: &'a str,
    pub ticket_id: i64,
    pub public_id: i64,
    pub customer_id: i64,
    pub subject: &'a str,
}

/// Queues the acknowledgement unless this customer got one within `window_secs`; true when queued.
pub async fn queue(
    tx: &mut Tx,
    t: &NewTicket<'_>,
    window_secs: i64,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let since = now - Duration::seconds(window_secs.max(0));
    let recent: i64 = with_tx!(tx, |c| {
        sqlx::query_scalar(
        "SELECT COUNT(*) FROM messages m JOIN tickets t ON t.organization_id = m.organization_id AND t.id = m.ticket_id
         WHERE m.organization_id = $1 AND t.customer_id = $2 AND m.role = 'system' AND m.direction = 'outbound'
           AND m.is_auto_reply = TRUE AND m.created_at > $3"
    )
    .bind(t.org_id)
    .bind(t.customer_id)
    .bind(since)
    .fetch_one(c)
    .await
    })?;
    if recent > 0 {
        return Ok(false);
    }
    let content = format!(
        "Thank you for your message \"{}\". We have opened ticket #{} for it and will answer as soon as we can.\n\nTo add anything, reply to this email.",
        t.subject, t.public_id
    );
    let message_id_header = format!("{}@{}", uuid::Uuid::now_v7().simple(), t.domain);
    let message_id = tickets::insert_message(
        tx,
        &NewMessage {
            organization_id: t.org_id,
            ticket_id: t.ticket_id,
            role: "system",
            direction: "outbound",
            content: &content,
            is_visible_to_customer: true,
            is_auto_reply: true,
            message_id_header: Some(&message_id_header),
            delivery_state: Some("queued"),
            ..NewMessage::default()
        },
    )
    .await?;
    outbox::enqueue(tx, t.org_id, &Item::Email { message_id }).await?;
    Ok(true)
}
