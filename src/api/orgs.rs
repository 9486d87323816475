//! `GET /organizations/{org_id}/` and `GET /organizations/{org_id}/inboxes/`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::OrgScope;
use super::error::ApiError;
use super::openapi::{ErrorDetail, PageParams};
use super::pagination::{ListQuery, PageMeta, page_type};
use super::{AppState, finish_read, route_both};
use crate::store::orgs;

/// The organization a token belongs to. The webhook URL and secret are never shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrganizationOut {
    pub id: i64,
    /// The string id used in product URLs and branding.
    pub public_id: String,
    pub name: String,
    /// The mail domains it receives for.
    pub domains: Vec<String>,
    pub cc_email_routing: bool,
    pub auto_tagging: bool,
    /// A reply within this many days of closing reopens the ticket.
    pub reopen_window_days: i64,
}

/// An inbox: its addresses are `email_prefix@domain` for each organization domain.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InboxOut {
    pub id: i64,
    pub name: String,
    pub email_prefix: String,
    pub auto_acknowledge: bool,
}

page_type!(InboxPage, InboxOut, "A page of inboxes, by id.");

/// The organization routes.
pub fn routes() -> Router<AppState> {
    let r = Router::new();
    let r = route_both(r, "/organizations/{org_id}/", get(get_organization));
    route_both(r, "/organizations/{org_id}/inboxes/", get(list_inboxes))
}

/// Retrieve the organization of the token.
#[utoipa::path(
    get,
    path = "/organizations/{org_id}/",
    tag = "organizations",
    operation_id = "organizations_retrieve",
    params(("org_id" = i64, Path, description = "The organization's numeric id")),
    responses(
        (status = 200, description = "The organization", body = OrganizationOut),
        (status = 401, description = "No token, or a bad one", body = ErrorDetail),
        (status = 404, description = "Not this token's organization", body = ErrorDetail),
    ),
    security(("initdesk_token" = []))
)]
pub async fn get_organization(
    scope: OrgScope,
    State(state): State<AppState>,
) -> Result<Json<OrganizationOut>, ApiError> {
    let mut tx = state.pipeline.store().begin_read().await?;
    let org = orgs::get_org(&mut tx, scope.org_id)
        .await
        .map_err(ApiError::from);
    let org = finish_read(tx, org).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(OrganizationOut {
        id: org.id,
        public_id: org.public_id,
        name: org.name,
        domains: org.domains,
        cc_email_routing: org.cc_email_routing,
        auto_tagging: org.auto_tagging,
        reopen_window_days: org.reopen_window_days,
    }))
}

/// List the organization's inboxes, by id.
#[utoipa::path(
    get,
    path = "/organizations/{org_id}/inboxes/",
    tag = "organizations",
    operation_id = "inboxes_list",
    params(("org_id" = i64, Path, description = "The organization's numeric id"), PageParams),
    responses(
        (status = 200, description = "A page of inboxes", body = InboxPage),
        (status = 400, description = "A bad `page` or `page_size`", body = super::openapi::FieldErrors),
        (status = 401, description = "No token, or a bad one", body = ErrorDetail),
        (status = 404, description = "Not this token's organization, or a page past the end", body = ErrorDetail),
    ),
    security(("initdesk_token" = []))
)]
pub async fn list_inboxes(
    scope: OrgScope,
    State(state): State<AppState>,
    q: ListQuery,
) -> Result<Json<InboxPage>, ApiError> {
    let request = q.page_request()?;
    let mut tx = state.pipeline.store().begin_read().await?;
    // An organization has a handful of inboxes: one query for all, paged here.
    let inboxes = orgs::list_inboxes(&mut tx, scope.org_id)
        .await
        .map_err(ApiError::from);
    let inboxes = finish_read(tx, inboxes).await?;
    let count = i64::try_from(inboxes.len()).unwrap_or(i64::MAX);
    let w = request.window(count)?;
    let results = inboxes
        .into_iter()
        .skip(usize::try_from(w.offset).unwrap_or(usize::MAX))
        .take(usize::try_from(w.limit).unwrap_or(usize::MAX))
        .map(|i| InboxOut {
            id: i.id,
            name: i.name,
            email_prefix: i.email_prefix,
            auto_acknowledge: i.auto_acknowledge,
        })
        .collect();
    Ok(Json(InboxPage::new(
        PageMeta::new(&q, &state.public_url, &w),
        results,
    )))
}
