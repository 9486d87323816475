//! The quarantine: messages whose processing failed, listed and re-run.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::OrgScope;
use super::error::ApiError;
use super::openapi::{ErrorDetail, FieldErrors, PageParams};
use super::pagination::{ListQuery, PageMeta, page_type};
use super::{AppState, finish_read, path_id, route_both, timestamp};
use crate::pipeline::{IngestError, Outcome};
use crate::store::views::{self, QuarantineEntry};

/// A message waiting in the quarantine (its raw bytes stay in the database).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QuarantineOut {
    pub id: i64,
    /// The envelope recipient it was delivered to.
    pub recipient: String,
    /// How it arrived: `smtp`, `lmtp`, `pipe`, `imap`, ...
    pub source: String,
    /// SHA-256 of the raw message.
    pub raw_sha256: String,
    /// Size of the raw message in bytes.
    pub size: i64,
    /// Why processing failed.
    pub reason: String,
    /// How many times it failed.
    pub attempts: i64,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<QuarantineEntry> for QuarantineOut {
    fn from(q: QuarantineEntry) -> Self {
        QuarantineOut {
            id: q.id,
            recipient: q.recipient,
            source: q.source,
            raw_sha256: q.raw_sha256,
            size: q.size,
            reason: q.reason,
            attempts: q.attempts,
            created_at: timestamp(q.created_at),
            updated_at: timestamp(q.updated_at),
        }
    }
}

page_type!(
    QuarantinePage,
    QuarantineOut,
    "A page of quarantined messages, oldest first."
);

/// What re-running a quarantined message came to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReprocessOut {
    /// The quarantine entry.
    pub id: i64,
    /// `created`, `appended`, `duplicate`, `loop`, `bounce`, `rejected`, or `quarantined`
    /// (it failed again and stays).
    pub outcome: String,
    /// True when the entry left the quarantine.
    pub resolved: bool,
    pub ticket_id: Option<i64>,
    pub message_id: Option<i64>,
    /// Why it failed again or was rejected; empty otherwise.
    pub detail: String,
}

/// The quarantine routes.
pub fn routes() -> Router<AppState> {
    let r = Router::new();
    let r = route_both(r, "/organizations/{org_id}/quarantine/", get(list));
    route_both(
        r,
        "/organizations/{org_id}/quarantine/{id}/reprocess/",
        post(reprocess),
    )
}

/// List the organization's quarantined messages, oldest first.
#[utoipa::path(
    get,
    path = "/organizations/{org_id}/quarantine/",
    tag = "quarantine",
    operation_id = "quarantine_list",
    params(("org_id" = i64, Path, description = "The organization's numeric id"), PageParams),
    responses(
        (status = 200, description = "A page of quarantined messages", body = QuarantinePage),
        (status = 400, description = "A bad `page` or `page_size`", body = FieldErrors),
        (status = 401, description = "No token, or a bad one", body = ErrorDetail),
        (status = 404, description = "Not this token's organization, or a page past the end", body = ErrorDetail),
    ),
    security(("initdesk_token" = []))
)]
pub async fn list(
    scope: OrgScope,
    State(state): State<AppState>,
    q: ListQuery,
) -> Result<Json<QuarantinePage>, ApiError> {
    let request = q.page_request()?;
    let mut tx = state.pipeline.store().begin_read().await?;
    let result = async {
        let count = views::count_quarantine(&mut tx, scope.org_id).await?;
        let w = request.window(count)?;
        let rows = views::quarantine_page(&mut tx, scope.org_id, w.limit, w.offset).await?;
        Ok::<_, ApiError>((w, rows))
    }
    .await;
    let (w, rows) = finish_read(tx, result).await?;
    Ok(Json(QuarantinePage::new(
        PageMeta::new(&q, &state.public_url, &w),
        rows.into_iter().map(QuarantineOut::from).collect(),
    )))
}

/// Re-run a quarantined message through the pipeline. It leaves the quarantine unless it
/// fails again; a resolved entry is no longer found.
#[utoipa::path(
    post,
    path = "/organizations/{org_id}/quarantine/{id}/reprocess/",
    tag = "quarantine",
    operation_id = "quarantine_reprocess_create",
    params(
        ("org_id" = i64, Path, description = "The organization's numeric id"),
        ("id" = i64, Path, description = "The quarantine entry's id"),
    ),
    responses(
        (status = 200, description = "What re-running it came to", body = ReprocessOut),
        (status = 401, description = "No token, or a bad one", body = ErrorDetail),
        (status = 404, description = "No such open entry in this organization", body = ErrorDetail),
        (status = 503, description = "The database is not available; try again", body = ErrorDetail),
    ),
    security(("initdesk_token" = []))
)]
pub async fn reprocess(
    scope: OrgScope,
    State(state): State<AppState>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<ReprocessOut>, ApiError> {
    let id = path_id(&id)?;
    let mut tx = state.pipeline.store().begin_read().await?;
    let entry = views::quarantine_entry(&mut tx, scope.org_id, id)
        .await
        .map_err(ApiError::from);
    finish_read(tx, entry).await?.ok_or(ApiError::NotFound)?;
    let out =
        |outcome: &str, resolved: bool, ids: Option<(i64, i64)>, detail: String| ReprocessOut {
            id,
            outcome: outcome.to_string(),
            resolved,
            ticket_id: ids.map(|(t, _)| t),
            message_id: ids.map(|(_, m)| m),
            detail,
        };
    let result = match state.pipeline.reprocess(id).await {
        Ok(Outcome::Quarantined { reason, .. }) => out("quarantined", false, None, reason),
        Ok(
            o @ (Outcome::Created {
                ticket_id,
                message_id,
                ..
            }
            | Outcome::Appended {
                ticket_id,
                message_id,
                ..
            }
            | Outcome::Duplicate {
                ticket_id,
                message_id,
            }),
        ) => out(o.kind(), true, Some((ticket_id, message_id)), String::new()),
        Ok(o) => out(o.kind(), true, None, String::new()),
        Err(IngestError::Temporary(e)) => return Err(ApiError::from(e)),
        // The entry was resolved by another request between our look and the re-run.
        Err(IngestError::Unusable(reason)) if reason.starts_with("quarantine entry") => {
            return Err(ApiError::NotFound);
        }
        Err(e) => out("rejected", true, None, e.to_string()),
    };
    Ok(Json(result))
}
