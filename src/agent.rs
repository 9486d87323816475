//! What agents do through the API (SPEC 3 and 4): replies and internal notes with their
//! workflow effects, stored and queued for sending in one transaction.

use serde::Deserialize;

use crate::address::parse_addr_spec;
use crate::outbox::webhook;
use crate::store::outbox::{self, Item};
use crate::store::tickets::{self, NewMessage, Ticket, TicketState};
use crate::store::{StoreError, Tx, orgs, replies};

/// Why a request cannot be carried out.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("not found")]
    NotFound,
    /// Bad input, naming the field.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
}

fn invalid(field: &'static str, message: impl Into<String>) -> AgentError {
    AgentError::Invalid {
        field,
        message: message.into(),
    }
}

/// `next_action` of a message create (SPEC 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NextAction {
    #[serde(rename = "")]
    None,
    CloseAndMarkResolved,
    CloseAndMarkInvalid,
    CloseAndMarkCustomerInactivity,
    CloseAndMarkOther,
    ReopenWaitingCustomer,
    ReopenWaitingAssociate,
    ReportSpam,
    RemoveFromSpam,
}

/// The body of `POST .../tickets/{id}/messages/`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReply {
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub content_html: String,
    #[serde(default)]
    pub is_visible_to_customer: Option<bool>,
    /// Absent and `null` both copy the previous snapshot; a list (even empty) is this
    /// message's snapshot.
    #[serde(default)]
    pub external_recipient_emails: Option<Vec<String>>,
    #[serde(default)]
    pub attachment_ids: Vec<String>,
    #[serde(default)]
    pub next_action: Option<NextAction>,
    #[serde(default)]
    pub next_assignee_id: Option<i64>,
    /// The agent writing (an extension: the seed's `author`); none for an integration.
    #[serde(default)]
    pub author_id: Option<i64>,
}

/// What was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    pub message_id: i64,
    /// True when a mail was queued for the relay.
    pub queued: bool,
}

/// Stores an agent reply or internal note on ticket `ticket_id`, applies its workflow, and
/// queues the mail for a visible reply, all in `tx`.
pub async fn reply(
    tx: &mut Tx,
    org_id: i64,
    ticket_id: i64,
    req: &NewReply,
) -> Result<Created, AgentError> {
    let ticket = tickets::ticket_by_id(tx, org_id, ticket_id)
        .await?
        .ok_or(AgentError::NotFound)?;
    let org = orgs::get_org(tx, org_id)
        .await?
        .ok_or(AgentError::NotFound)?;
    let visible = req.is_visible_to_customer.unwrap_or(true);
    let html = if req.content_html.trim().is_empty() {
        String::new()
    } else {
        crate::pipeline::parse::sanitize_html(&req.content_html, &Default::default())
    };
    if req.content.trim().is_empty() && html.trim().is_empty() {
        return Err(invalid(
            "content",
            "content or content_html must not be empty",
        ));
    }
    let author =
        match req.author_id {
            Some(id) => Some(agent_by_id(tx, org_id, id).await?.ok_or_else(|| {
                invalid("author_id", format!("no agent {id} in this organization"))
            })?),
            None => None,
        };
    if let Some(id) = req.next_assignee_id
        && agent_by_id(tx, org_id, id).await?.is_none()
    {
        return Err(invalid(
            "next_assignee_id",
            format!("no agent {id} in this organization"),
        ));
    }
    let uploads = dedup(&req.attachment_ids);
    if !uploads.is_empty() {
        let free = replies::free_uploads(tx, org_id, &uploads).await?;
        if let Some(bad) = uploads.iter().find(|id| !free.contains(id)) {
            return Err(invalid(
                "attachment_ids",
                format!("{bad} is not an unused upload of this organization"),
            ));
        }
    }
    let snapshot = if !visible {
        Vec::new()
    } else {
        snapshot(tx, &org, &ticket, req.external_recipient_emails.as_deref()).await?
    };

    let domain = replies::reply_domain(&org, &ticket).unwrap_or_else(|| "localhost".into());
    let message_id_header = visible.then(|| format!("{}@{domain}", uuid::Uuid::now_v7().simple()));
    let (sender_email, sender_name) = author
        .as_ref()
        .map(|a| (a.email.clone(), a.name.clone()))
        .unwrap_or_default();
    let message_id = tickets::insert_message(
        tx,
        &NewMessage {
            organization_id: org_id,
            ticket_id,
            role: "associate",
            direction: if visible { "outbound" } else { "internal" },
            author_user_id: author.as_ref().map(|a| a.id),
            sender_email: &sender_email,
            sender_name: &sender_name,
            content: &req.content,
            content_html: &html,
            is_visible_to_customer: visible,
            external_recipient_emails: &snapshot,
            message_id_header: message_id_header.as_deref(),
            delivery_state: visible.then_some("queued"),
            ..NewMessage::default()
        },
    )
    .await?;
    let attached = replies::attach_uploads(tx, org_id, ticket_id, message_id, &uploads).await?;

    let action = req.next_action.unwrap_or(NextAction::None);
    let state = next_state(&ticket, action, visible);
    tickets::update_ticket_after_message(tx, org_id, ticket_id, state.as_ref(), attached > 0)
        .await?;
    match action {
        NextAction::ReportSpam => replies::set_ticket_spam(tx, org_id, ticket_id, true).await?,
        NextAction::RemoveFromSpam => {
            replies::set_ticket_spam(tx, org_id, ticket_id, false).await?
        }
        _ => {}
    }
    if let Some(id) = req.next_assignee_id {
        replies::set_assignee(tx, org_id, ticket_id, Some(id)).await?;
    }
    if visible {
        replies::count_visible_reply(tx, org_id, ticket_id).await?;
        outbox::enqueue(tx, org_id, &Item::Email { message_id }).await?;
    }
    let spam_now = match action {
        NextAction::ReportSpam => true,
        NextAction::RemoveFromSpam => false,
        _ => ticket.is_spam,
    };
    webhook::enqueue(
        tx,
        &org,
        "message.created",
        ticket_id,
        Some(message_id),
        spam_now,
    )
    .await?;
    let changed = state.as_ref().is_some_and(|s| {
        s.status != ticket.status
            || s.waiting_on != ticket.waiting_on
            || s.classification != ticket.classification
    }) || spam_now != ticket.is_spam
        || req
            .next_assignee_id
            .is_some_and(|a| ticket.assignee_id != Some(a));
    if changed {
        webhook::enqueue(tx, &org, "ticket.updated", ticket_id, None, spam_now).await?;
    }
    Ok(Created {
        message_id,
        queued: visible,
    })
}

/// The ticket state after an agent message (SPEC 4); `None` leaves it as it is.
fn next_state(ticket: &Ticket, action: NextAction, visible: bool) -> Option<TicketState> {
    let closed = |classification: &str| TicketState {
        status: "closed".into(),
        waiting_on: String::new(),
        classification: classification.into(),
        closed_at: Some(crate::store::now()),
    };
    let active = |waiting_on: &str| TicketState {
        status: "active".into(),
        waiting_on: waiting_on.into(),
        classification: String::new(),
        closed_at: None,
    };
    match action {
        NextAction::CloseAndMarkResolved => Some(closed("resolved")),
        NextAction::CloseAndMarkInvalid => Some(closed("invalid")),
        NextAction::CloseAndMarkCustomerInactivity => Some(closed("customer_inactivity")),
        NextAction::CloseAndMarkOther => Some(closed("other")),
        NextAction::ReopenWaitingCustomer => Some(active("customer")),
        NextAction::ReopenWaitingAssociate => Some(active("associate")),
        NextAction::ReportSpam | NextAction::RemoveFromSpam | NextAction::None => {
            // A visible reply puts the ball in the customer's court; a note changes nothing.
            visible.then(|| TicketState {
                status: "active".into(),
                waiting_on: "customer".into(),
                classification: if ticket.status == "closed" {
                    String::new()
                } else {
                    ticket.classification.clone()
                },
                closed_at: None,
            })
        }
    }
}

/// The CC snapshot of a visible reply (SPEC 3): a list sent is the snapshot (requester
/// kept); none copies the last visible message's snapshot, else the ticket's creation list.
async fn snapshot(
    tx: &mut Tx,
    org: &orgs::Org,
    ticket: &Ticket,
    sent: Option<&[String]>,
) -> Result<Vec<String>, AgentError> {
    let requester = tickets::customer_by_id(tx, org.id, ticket.customer_id)
        .await?
        .map(|c| c.email)
        .unwrap_or_default();
    let mut list = match sent {
        Some(list) => {
            let mut out = Vec::new();
            for raw in list {
                let Some(addr) = parse_addr_spec(raw.trim()) else {
                    return Err(invalid(
                        "external_recipient_emails",
                        format!("{raw:?} is not an email address"),
                    ));
                };
                out.push(format!("{}@{}", addr.local, addr.domain));
            }
            out
        }
        None => match replies::last_visible_snapshot(tx, org.id, ticket.id).await? {
            Some(previous) => previous,
            None => crate::store::parse_json_list(&ticket.external_recipient_emails),
        },
    };
    if !org.cc_email_routing {
        list.clear();
    }
    if !requester.is_empty() && !list.iter().any(|a| a.eq_ignore_ascii_case(&requester)) {
        list.insert(0, requester);
    }
    Ok(dedup_ci(list))
}

/// An agent of the organization by id.
async fn agent_by_id(tx: &mut Tx, org_id: i64, id: i64) -> Result<Option<orgs::User>, StoreError> {
    Ok(crate::store::views::users_by_ids(tx, org_id, &[id])
        .await?
        .pop())
}

fn dedup(ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in ids {
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    out
}

fn dedup_ci(list: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in list {
        if !out.iter().any(|b| b.eq_ignore_ascii_case(&a)) {
            out.push(a);
        }
    }
    out
}

/// The body of `POST .../tickets/` (origin `api`).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTicketRequest {
    /// The inbox the ticket belongs to.
    pub inbox_id: i64,
    /// The requester; created when new.
    pub customer_email: String,
    #[serde(default)]
    pub customer_name: String,
    pub subject: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub description_html: String,
    /// The creation-time CC list; the requester is always kept.
    #[serde(default)]
    pub external_recipient_emails: Option<Vec<String>>,
    #[serde(default)]
    pub assignee_id: Option<i64>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Opens a ticket for a customer on behalf of an integration; returns its id. No mail is
/// sent: the first agent reply goes out as usual.
pub async fn create_ticket(
    tx: &mut Tx,
    org_id: i64,
    req: &NewTicketRequest,
) -> Result<i64, AgentError> {
    let org = orgs::get_org(tx, org_id)
        .await?
        .ok_or(AgentError::NotFound)?;
    let inbox = orgs::inbox_by_id(tx, req.inbox_id)
        .await?
        .filter(|i| i.organization_id == org_id)
        .ok_or_else(|| {
            invalid(
                "inbox_id",
                format!("no inbox {} in this organization", req.inbox_id),
            )
        })?;
    let subject = crate::outbox::compose::one_line(&req.subject);
    if subject.is_empty() {
        return Err(invalid("subject", "must not be empty"));
    }
    if subject.chars().count() > 255 {
        return Err(invalid("subject", "at most 255 characters"));
    }
    let Some(addr) = parse_addr_spec(req.customer_email.trim()) else {
        return Err(invalid("customer_email", "is not an email address"));
    };
    let email = format!("{}@{}", addr.local, addr.domain);
    let email_norm = crate::address::normalize(&email)
        .ok_or_else(|| invalid("customer_email", "is not an email address"))?;
    let name = crate::outbox::compose::one_line(&req.customer_name);
    if name.chars().count() > 255 {
        return Err(invalid("customer_name", "at most 255 characters"));
    }
    if let Some(id) = req.assignee_id
        && agent_by_id(tx, org_id, id).await?.is_none()
    {
        return Err(invalid(
            "assignee_id",
            format!("no agent {id} in this organization"),
        ));
    }
    if req
        .tags
        .iter()
        .any(|t| t.trim().is_empty() || t.chars().count() > 100)
    {
        return Err(invalid("tags", "tags must be 1 to 100 characters"));
    }
    let customer = tickets::find_or_create_customer(tx, org_id, &email, &email_norm, &name).await?;
    let mut ccs = Vec::new();
    for raw in req.external_recipient_emails.iter().flatten() {
        let Some(a) = parse_addr_spec(raw.trim()) else {
            return Err(invalid(
                "external_recipient_emails",
                format!("{raw:?} is not an email address"),
            ));
        };
        ccs.push(format!("{}@{}", a.local, a.domain));
    }
    if !org.cc_email_routing {
        ccs.clear();
    }
    ccs.insert(0, customer.email.clone());
    let ccs = dedup_ci(ccs);
    let html = if req.description_html.trim().is_empty() {
        String::new()
    } else {
        crate::pipeline::parse::sanitize_html(&req.description_html, &Default::default())
    };
    let (ticket_id, _) = tickets::insert_ticket(
        tx,
        &tickets::NewTicket {
            organization_id: org_id,
            inbox_id: inbox.id,
            customer_id: customer.id,
            subject: &subject,
            status: "created",
            waiting_on: "associate",
            is_spam: customer.is_spam,
            origin: "api",
            description: &req.description,
            description_html: &html,
            external_recipient_emails: &ccs,
            language: "",
            has_attachments: false,
            created_by_role: "associate",
            created_by_user_id: None,
            reply_domain: "",
        },
    )
    .await?;
    if req.assignee_id.is_some() {
        replies::set_assignee(tx, org_id, ticket_id, req.assignee_id).await?;
    }
    if !req.tags.is_empty() {
        let tags: Vec<String> = req.tags.iter().map(|t| t.trim().to_string()).collect();
        replies::set_tags(tx, org_id, ticket_id, &tags).await?;
    }
    webhook::enqueue(
        tx,
        &org,
        "ticket.created",
        ticket_id,
        None,
        customer.is_spam,
    )
    .await?;
    Ok(ticket_id)
}
