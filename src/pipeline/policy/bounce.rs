//! Bounces (SPEC 2.9): a delivery-status report about an outgoing message marks that
//! message's delivery and notes the reason on its ticket; it never opens a ticket.

use crate::pipeline::parse::BounceReport;
use crate::pipeline::route::Route;
use crate::pipeline::thread::ReplyTokens;
use crate::store::tickets::{self, NewMessage};
use crate::store::{StoreError, Tx};

/// The outgoing message a bounce was linked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linked {
    pub ticket_id: i64,
    pub message_id: i64,
}

/// Links a bounce to the outgoing message it is about (VERP address first, then the
/// returned Message-ID) and records it there; `None` when it is about no message of ours.
pub async fn apply(
    tx: &mut Tx,
    route: &Route,
    report: &BounceReport,
    tokens: &ReplyTokens,
) -> Result<Option<Linked>, StoreError> {
    let org_id = route.entry.org.id;
    let mut target = None;
    if let Some(detail) = route.detail.as_deref()
        && let Some(message_id) = tokens.verify_bounce(org_id, detail)
    {
        target = tickets::outbound_message(tx, org_id, message_id)
            .await?
            .map(|(ticket_id, message_id)| Linked {
                ticket_id,
                message_id,
            });
    }
    if target.is_none()
        && let Some(original) = &report.original_message_id
        && let Some((_, candidates)) =
            tickets::find_by_message_ids(tx, org_id, std::slice::from_ref(original)).await?
    {
        target = candidates
            .iter()
            .find(|m| m.direction == "outbound")
            .map(|m| Linked {
                ticket_id: m.ticket_id,
                message_id: m.id,
            });
    }
    let Some(linked) = target else {
        return Ok(None);
    };
    let reason = report.reason();
    if report.is_failure() {
        tickets::set_delivery_state(tx, org_id, linked.message_id, "failed").await?;
    }
    let note = format!("{} (message {})", reason, linked.message_id);
    tickets::insert_message(
        tx,
        &NewMessage {
            organization_id: org_id,
            ticket_id: linked.ticket_id,
            role: "system",
            direction: "internal",
            content: &note,
            is_visible_to_customer: false,
            ..NewMessage::default()
        },
    )
    .await?;
    Ok(Some(linked))
}
