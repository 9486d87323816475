//! The write side: agent replies and notes (SPEC 3, 4). Each is stored and its mail queued
//! in one transaction; the sender is woken right after the commit.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::auth::OrgScope;
use super::error::ApiError;
use super::messages::{MessageOut, render_messages};
use super::{AppState, path_id};
use crate::agent::{self, AgentError, NewReply};
use crate::store::views;

/// Parses a JSON body; a 400 names the field that is wrong (`non_field_errors` when the
/// body is not a JSON object at all).
pub(crate) fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // "unknown field `x`": the field is the unknown one, not its parent.
        let field = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string)
            .unwrap_or(if path == "." || path.is_empty() {
                "non_field_errors".to_string()
            } else {
                path
            });
        ApiError::field(field, message)
    })
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::NotFound => ApiError::NotFound,
            AgentError::Invalid { field, message } => ApiError::field(field, message),
            AgentError::Store(e) => ApiError::from(e),
        }
    }
}

/// Reply or create an internal note.
#[utoipa::path(
    post,
    path = "/organizations/{org_id}/tickets/{ticket_id}/messages/",
    tag = "messages",
    operation_id = "tickets_messages_create",
    params(
        ("org_id" = i64, Path, description = "The organization's numeric id"),
        ("ticket_id" = i64, Path, description = "The ticket's id (`pk`)"),
    ),
    request_body(content = crate::agent::NewReply, description = "A reply (is_visible_to_customer true, the default: stored and queued for sending) or an internal note"),
    responses(
        (status = 201, description = "The stored message", body = MessageOut),
        (status = 400, description = "A bad field, named in the body", body = super::openapi::FieldErrors),
        (status = 401, description = "No token, or a bad one", body = super::openapi::ErrorDetail),
        (status = 404, description = "No such ticket in this organization", body = super::openapi::ErrorDetail),
    ),
    security(("initdesk_token" = []))
)]
pub async fn create_message(
    scope: OrgScope,
    State(state): State<AppState>,
    Path((_, ticket_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<MessageOut>), ApiError> {
    let ticket_id = path_id(&ticket_id)?;
    let req: NewReply = json_body(&body)?;
    let mut tx = state.pipeline.store().begin().await?;
    let created = match agent::reply(&mut tx, scope.org_id, ticket_id, &req).await {
        Ok(c) => c,
        Err(e) => {
            tx.discard().await;
            return Err(e.into());
        }
    };
    let rows = views::message(&mut tx, scope.org_id, created.message_id)
        .await
        .map(|m| m.into_iter().collect());
    let rendered = match rows {
        Ok(rows) => render_messages(&mut tx, scope.org_id, &state.public_url, rows).await,
        Err(e) => Err(e.into()),
    };
    let mut rendered = match rendered {
        Ok(r) => r,
        Err(e) => {
            tx.discard().await;
            return Err(e);
        }
    };
    tx.commit().await?;
    if created.queued
        && let Some(wake) = &state.outbox_wake
    {
        wake.notify_one();
    }
    let mut out = rendered
        .pop()
        .ok_or_else(|| ApiError::Internal("the new message is not readable".into()))?;
    out.next_assignee = match req.next_assignee_id {
        Some(id) => {
            let mut tx = state.pipeline.store().begin_read().await?;
            let users = views::users_by_ids(&mut tx, scope.org_id, &[id]).await;
            tx.rollback().await?;
            users?.into_iter().next().map(|u| (&u).into())
        }
        None => None,
    };
    Ok((StatusCode::CREATED, Json(out)))
}

/// Create a ticket (origin `api`).
#[utoipa::path(
    post,
    path = "/organizations/{org_id}/tickets/",
    tag = "tickets",
    operation_id = "tickets_create",
    params(("org_id" = i64, Path, description = "The organization's numeric id")),
    request_body(content = crate::agent::NewTicketRequest, description = "The ticket to open; no mail is sent"),
    responses(
        (status = 201, description = "The new ticket", body = super::tickets::TicketOut),
        (status = 400, description = "A bad field, named in the body", body = super::openapi::FieldErrors),
        (status = 401, description = "No token, or a bad one", body = super::openapi::ErrorDetail),
        (status = 404, description = "Another organization", body = super::openapi::ErrorDetail),
    ),
    security(("initdesk_token" = []))
)]
pub async fn create_ticket(
    scope: OrgScope,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<super::tickets::TicketOut>), ApiError> {
    let req: agent::NewTicketRequest = json_body(&body)?;
    let mut tx = state.pipeline.store().begin().await?;
    let result = async {
        let id = agent::create_ticket(&mut tx, scope.org_id, &req).await?;
        super::tickets::ticket_view(&mut tx, scope.org_id, &state.public_url, id).await
    }
    .await;
    match result {
        Ok(out) => {
            tx.commit().await?;
            Ok((StatusCode::CREATED, Json(out)))
        }
        Err(e) => {
            tx.discard().await;
            Err(e)
        }
    }
}
