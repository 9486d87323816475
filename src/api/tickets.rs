//! Tickets: list (newest first; `?status=`, `?is_spam=`, `?inbox=`, `?customer=`), retrieve,
//! unassign, and the list of ticket statuses.
//!
//! [`render_tickets`] turns ticket rows into the API's ticket objects with one query each for
//! the page's inboxes, customers, agents and attachments; the write side answers with it too.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::attachments::AttachmentRef;
use super::auth::OrgScope;
use super::customers::CustomerOut;
use super::error::ApiError;
use super::openapi::{ErrorDetail, FieldErrors, PageParams};
use super::pagination::{ListQuery, PageMeta, page_type};
use super::{AppState, finish_read, finish_write, path_id, route_both, timestamp};
use crate::store::orgs::{Inbox, User};
use crate::store::tickets::{self, Ticket};
use crate::store::views::{self, TicketFilter};
use crate::store::{StoreError, Tx, parse_json_list};

/// Every ticket status with its label (the legacy ones last), as the API lists them.
pub const TICKET_STATUSES: [(&str, &str); 8] = [
    ("created", "Created"),
    ("active", "Active"),
    ("closed", "Closed"),
    ("pending_associate", "Pending (associate)"),
    ("pending_customer", "Pending (customer)"),
    ("resolved", "Resolved"),
    ("reopened", "Reopened"),
    ("invalid", "Invalid"),
];

/// `status` values.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // documentation: the stored text is sent as it is
pub enum TicketStatus {
    Created,
    Active,
    Closed,
    PendingAssociate,
    PendingCustomer,
    Resolved,
    Reopened,
    Invalid,
}

/// `waiting_on` values: `''` (none), `customer`, `associate`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[allow(dead_code)] // documentation
pub enum WaitingOn {
    #[serde(rename = "")]
    None,
    #[serde(rename = "customer")]
    Customer,
    #[serde(rename = "associate")]
    Associate,
}

/// `classification` values: `''` (pending) or why the ticket was closed.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[allow(dead_code)] // documentation
pub enum Classification {
    #[serde(rename = "")]
    Pending,
    #[serde(rename = "no_response")]
    NoResponse,
    #[serde(rename = "customer_inactivity")]
    CustomerInactivity,
    #[serde(rename = "resolved")]
    Resolved,
    #[serde(rename = "invalid")]
    Invalid,
    #[serde(rename = "other")]
    Other,
}

/// `origin` values.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // documentation
pub enum Origin {
    Email,
    Api,
}

/// `sentiment_analysis_class` values (`pending` until something classifies the ticket).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // documentation
pub enum Sentiment {
    Positive,
    Negative,
    Neutral,
    Pending,
}

/// An inbox as a ticket shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InboxRef {
    pub id: i64,
    pub name: String,
    pub email_prefix: String,
}

/// An agent (initdesk user).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserOut {
    pub id: i64,
    #[schema(format = Email)]
    pub email: String,
    pub name: String,
}

impl From<&User> for UserOut {
    fn from(u: &User) -> Self {
        UserOut {
            id: u.id,
            email: u.email.clone(),
            name: u.name.clone(),
        }
    }
}

/// The customer's satisfaction rating, when they gave one.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CsatResponse {
    pub rating: i64,
    pub comment: String,
}

/// Who opened the ticket: `role` is `customer` for mail, and the agent for the API.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedBy {
    pub role: String,
    pub user: Option<UserOut>,
}

/// A ticket.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TicketOut {
    pub id: i64,
    pub inbox: InboxRef,
    pub customer: CustomerOut,
    pub assignee: Option<UserOut>,
    /// The per-organization ticket number shown to people ("#12").
    pub public_id: i64,
    #[schema(max_length = 255)]
    pub subject: String,
    /// AI-generated summary of the ticket (empty until something writes one).
    pub summary: String,
    pub customer_visible_reply_count: i64,
    #[schema(value_type = TicketStatus)]
    pub status: String,
    #[schema(value_type = Classification)]
    pub classification: String,
    #[schema(value_type = WaitingOn)]
    pub waiting_on: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    pub csat_response: Option<CsatResponse>,
    /// Every attachment of the ticket, whichever message brought it, oldest first.
    pub attachments: Vec<AttachmentRef>,
    pub tags: Vec<String>,
    #[schema(value_type = Origin)]
    pub origin: String,
    pub has_attachments: bool,
    pub created_by: CreatedBy,
    /// Non-inbox recipients of the original mail (CC routing); used when agents reply.
    pub external_recipient_emails: Vec<String>,
    pub description: String,
    pub description_html: String,
    #[schema(value_type = Sentiment)]
    pub sentiment_analysis_class: String,
    /// Detected language (two letters), or empty.
    #[schema(max_length = 2)]
    pub language: String,
    pub is_spam: bool,
}

page_type!(TicketPage, TicketOut, "A page of tickets, newest first.");

/// A ticket status and its label.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TicketStatusOut {
    pub value: String,
    pub label: String,
}

page_type!(
    TicketStatusPage,
    TicketStatusOut,
    "The ticket statuses, current ones first."
);

/// Filters of the ticket list.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documentation; the query is read by `ListQuery`
pub struct TicketFilters {
    /// Only tickets in this status.
    #[param(value_type = Option<TicketStatus>)]
    pub status: Option<String>,
    /// `true`: only spam tickets. Spam tickets are left out unless this is `true`.
    pub is_spam: Option<bool>,
    /// Only tickets of this inbox (id).
    pub inbox: Option<i64>,
    /// Only tickets of this customer (id).
    pub customer: Option<i64>,
}

/// The ticket routes.
pub fn routes() -> Router<AppState> {
    let r = Router::new();
    let r = route_both(
        r,
        "/organizations/{org_id}/tickets/",
        get(list_tickets).post(super::write::create_ticket),
    );
    let r = route_both(r, "/organizations/{org_id}/tickets/{pk}/", get(get_ticket));
    let r = route_both(
        r,
        "/organizations/{org_id}/tickets/{pk}/unassign/",
        post(unassign),
    );
    route_both(
        r,
        "/organizations/{org_id}/ticket-statuses/",
        get(list_statuses),
    )
}

/// The ticket filter a list request asks for; 400 naming a bad parameter.
fn filter_from(q: &ListQuery) -> Result<TicketFilter, ApiError> {
    let status = match q.get("status") {
        None => None,
        Some(s) if TICKET_STATUSES.iter().any(|(v, _)| *v == s) => Some(s.to_string()),
        Some(s) => {
            return Err(ApiError::field(
                "status",
                format!("Select a valid choice. {s} is not one of the available choices."),
            ));
        }
    };
    Ok(TicketFilter {
        status,
        is_spam: q.bool_param("is_spam")?.unwrap_or(false),
        inbox_id: q.id_param("inbox")?,
        customer_id: q.id_param("customer")?,
    })
}

/// List tickets, newest first. Spam tickets are excluded unless `is_spam=true`.
#[utoipa::path(
    get,
    path = "/organizations/{org_id}/tickets/",
    tag = "tickets",
    operation_id = "tickets_list",
    params(("org_id" = i64, Path, description = "The organization's numeric id"), TicketFilters, PageParams),
    responses(
        (status = 200, description = "A page of tickets", body = TicketPage),
        (status = 400, description = "A bad filter, `page` or `page_size` (the body names it)", body = FieldErrors),
        (status = 401, description = "No token, or a bad one", body = ErrorDetail),
        (status = 404, description = "Not this token's organization, or a page past the end", body = ErrorDetail),
    ),
    security(("initdesk_token" = []))
)]
pub async fn list_tickets(
    scope: OrgScope,
    State(state): State<AppState>,
    q: ListQuery,
) -> Result<Json<TicketPage>, ApiError> {
    let filter = filter_from(&q)?;
    let request = q.page_request()?;
    let mut tx = state.pipeline.store().begin_read().await?;
    let result = async {
        let count = views::count_tickets(&mut tx, scope.org_id, &filter).await?;
        let w = request.window(count)?;
        let rows = views::ticket_page(&mut tx, scope.org_id, &filter, w.limit, w.offset).await?;
        let out = render_tickets(&mut tx, scope.org_id, &state.public_url, rows).await?;
        Ok::<_, ApiError>((w, out))
    }
    .await;
    let (w, results) = finish_read(tx, result).await?;
    Ok(Json(TicketPage::new(
        PageMeta::new(&q, &state.public_url, &w),
        results,
    )))
}

/// Retrieve a ticket by its id (`pk`, not the public number).
#[utoipa::path(
    get,
    path = "/organizations/{org_id}/tickets/{pk}/",
    tag = "tickets",
    operation_id = "tickets_retrieve",
    params(
        ("org_id" = i64, Path, description = "The organization's numeric id"),
        ("pk" = i64, Path, description = "A unique integer value identifying this ticket"),
    ),
    responses(
        (status = 200, description = "The ticket", body = TicketOut),
        (status = 401, description = "No token, or a bad one", body = ErrorDetail),
        (status = 404, description = "No such ticket in this organization", body = ErrorDetail),
    ),
    security(("initdesk_token" = []))
)]
pub async fn get_ticket(
    scope: OrgScope,
    State(state): State<AppState>,
    Path((_, pk)): Path<(String, String)>,
) -> Result<Json<TicketOut>, ApiError> {
    let pk = path_id(&pk)?;
    let mut tx = state.pipeline.store().begin_read().await?;
    let result = ticket_view(&mut tx, scope.org_id, &state.public_url, pk).await;
    let ticket = finish_read(tx, result).await?;
    Ok(Json(ticket))
}

/// Clear the ticket's assignee; nothing else changes.
#[utoipa::path(
    post,
    path = "/organizations/{org_id}/tickets/{pk}/unassign/",
    tag = "tickets",
    operation_id = "tickets_unassign_create",
    params(
        ("org_id" = i64, Path, description = "The organization's numeric id"),
        ("pk" = i64, Path, description = "A unique integer value identifying this ticket"),
    ),
    responses(
        (status = 200, description = "The ticket, unassigned", body = TicketOut),
        (status = 401, description = "No token, or a bad one", body = ErrorDetail),
        (status = 404, description = "No such ticket in this organization", body = ErrorDetail),
    ),
    security(("initdesk_token" = []))
)]
pub async fn unassign(
    scope: OrgScope,
    State(state): State<AppState>,
    Path((_, pk)): Path<(String, String)>,
) -> Result<Json<TicketOut>, ApiError> {
    let pk = path_id(&pk)?;
    let mut tx = state.pipeline.store().begin().await?;
    let result = async {
        if !tickets::unassign_ticket(&mut tx, scope.org_id, pk).await? {
            return Err(ApiError::NotFound);
        }
        let view = ticket_view(&mut tx, scope.org_id, &state.public_url, pk).await?;
        if let Some(org) = crate::store::orgs::get_org(&mut tx, scope.org_id).await? {
            crate::outbox::webhook::enqueue(
                &mut tx,
                &org,
                "ticket.updated",
                pk,
                None,
                view.is_spam,
            )
            .await?;
        }
        Ok(view)
    }
    .await;
    let ticket = finish_write(tx, result).await?;
    Ok(Json(ticket))
}

/// List the ticket statuses with their labels.
#[utoipa::path(
    get,
    path = "/organizations/{org_id}/ticket-statuses/",
    tag = "tickets",
    operation_id = "ticket_statuses_list",
    params(("org_id" = i64, Path, description = "The organization's numeric id"), PageParams),
    responses(
        (status = 200, description = "The statuses", body = TicketStatusPage),
        (status = 400, description = "A bad `page` or `page_size`", body = FieldErrors),
        (status = 401, description = "No token, or a bad one", body = ErrorDetail),
        (status = 404, description = "Not this token's organization, or a page past the end", body = ErrorDetail),
    ),
    security(("initdesk_token" = []))
)]
pub async fn list_statuses(
    _scope: OrgScope,
    State(state): State<AppState>,
    q: ListQuery,
) -> Result<Json<TicketStatusPage>, ApiError> {
    let w = q.page_request()?.window(TICKET_STATUSES.len() as i64)?;
    let results = TICKET_STATUSES
        .iter()
        .skip(usize::try_from(w.offset).unwrap_or(usize::MAX))
        .take(usize::try_from(w.limit).unwrap_or(usize::MAX))
        .map(|(value, label)| TicketStatusOut {
            value: (*value).into(),
            label: (*label).into(),
        })
        .collect();
    Ok(Json(TicketStatusPage::new(
        PageMeta::new(&q, &state.public_url, &w),
        results,
    )))
}

/// One ticket of the organization as the API shows it; 404 when there is none.
pub async fn ticket_view(
    tx: &mut Tx,
    org_id: i64,
    public_url: &str,
    ticket_id: i64,
) -> Result<TicketOut, ApiError> {
    let ticket = tickets::ticket_by_id(tx, org_id, ticket_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    render_tickets(tx, org_id, public_url, vec![ticket])
        .await?
        .pop()
        .ok_or(ApiError::NotFound)
}

/// Ticket rows as API objects, in the same order: one query each for the inboxes,
/// customers, agents and attachments of all of them.
pub async fn render_tickets(
    tx: &mut Tx,
    org_id: i64,
    public_url: &str,
    rows: Vec<Ticket>,
) -> Result<Vec<TicketOut>, ApiError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = rows.iter().map(|t| t.id).collect();
    let inbox_ids: Vec<i64> = rows.iter().map(|t| t.inbox_id).collect();
    let customer_ids: Vec<i64> = rows.iter().map(|t| t.customer_id).collect();
    let user_ids: Vec<i64> = rows
        .iter()
        .flat_map(|t| [t.assignee_id, t.created_by_user_id])
        .flatten()
        .collect();
    let inboxes: HashMap<i64, Inbox> = views::inboxes_by_ids(tx, org_id, &inbox_ids)
        .await?
        .into_iter()
        .map(|i| (i.id, i))
        .collect();
    let customers: HashMap<i64, tickets::Customer> =
        views::customers_by_ids(tx, org_id, &customer_ids)
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
    let users: HashMap<i64, User> = views::users_by_ids(tx, org_id, &user_ids)
        .await?
        .into_iter()
        .map(|u| (u.id, u))
        .collect();
    let mut attachments: HashMap<i64, Vec<AttachmentRef>> = HashMap::new();
    for a in views::attachments_of_tickets(tx, org_id, &ids).await? {
        if let Some(t) = a.ticket_id {
            attachments
                .entry(t)
                .or_default()
                .push(AttachmentRef::new(&a, public_url));
        }
    }
    rows.into_iter()
        .map(|t| {
            // The foreign keys guarantee these rows; a miss is corrupt data, not a 404.
            let inbox = inboxes.get(&t.inbox_id).ok_or_else(|| {
                StoreError::Corrupt(format!("inbox {} of ticket {}", t.inbox_id, t.id))
            })?;
            let customer = customers.get(&t.customer_id).cloned().ok_or_else(|| {
                StoreError::Corrupt(format!("customer {} of ticket {}", t.customer_id, t.id))
            })?;
            let user = |id: Option<i64>| id.and_then(|id| users.get(&id)).map(UserOut::from);
            Ok(TicketOut {
                id: t.id,
                inbox: InboxRef {
                    id: inbox.id,
                    name: inbox.name.clone(),
                    email_prefix: inbox.email_prefix.clone(),
                },
                customer: customer.into(),
                assignee: user(t.assignee_id),
                public_id: t.public_id,
                subject: t.subject,
                summary: t.summary,
                customer_visible_reply_count: t.customer_visible_reply_count,
                status: t.status,
                classification: t.classification,
                waiting_on: t.waiting_on,
                created_at: timestamp(t.created_at),
                updated_at: timestamp(t.updated_at),
                csat_response: t.csat_rating.map(|rating| CsatResponse {
                    rating,
                    comment: t.csat_comment.clone().unwrap_or_default(),
                }),
                attachments: attachments.remove(&t.id).unwrap_or_default(),
                tags: parse_json_list(&t.tags),
                origin: t.origin,
                has_attachments: t.has_attachments,
                created_by: CreatedBy {
                    role: t.created_by_role,
                    user: user(t.created_by_user_id),
                },
                external_recipient_emails: parse_json_list(&t.external_recipient_emails),
                description: t.description,
                description_html: t.description_html,
                sentiment_analysis_class: t.sentiment_analysis_class,
                language: t.language,
                is_spam: t.is_spam,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()
        .map_err(ApiError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked() {
        let f = filter_from(&ListQuery::new("/", "")).unwrap();
        assert!(!f.is_spam && f.status.is_none());
        let f = filter_from(&ListQuery::new("/", "is_spam=true&status=active&inbox=2")).unwrap();
        assert!(f.is_spam);
        assert_eq!(f.status.as_deref(), Some("active"));
        assert_eq!(f.inbox_id, Some(2));
        for (query, field) in [
            ("status=open", "status"),
            ("is_spam=maybe", "is_spam"),
            ("inbox=x", "inbox"),
            ("customer=-3", "customer"),
        ] {
            match filter_from(&ListQuery::new("/", query)) {
                Err(ApiError::BadRequest { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{query}: {other:?}"),
            }
        }
    }
}
