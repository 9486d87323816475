//! The HTTP interface: the organization-scoped API of SPEC 5.4 under `X-Initdesk-Token`,
//! `/openapi.json` generated from the handlers, and health, readiness and metrics for
//! supervisors and monitoring.
//!
//! One module per resource; each has `routes()` and documents its handlers with
//! `#[utoipa::path]` (listed in [`openapi::ApiDoc`]). Every path is served as the spec writes
//! it (with the trailing slash) and without the slash ([`route_both`]).

pub mod attachments;
pub mod auth;
pub mod customers;
pub mod error;
mod health;
pub mod listener;
pub mod messages;
pub mod openapi;
pub mod orgs;
pub mod pagination;
pub mod quarantine;
pub mod tickets;
pub mod write;

use axum::Router;
use axum::routing::{MethodRouter, get};

use crate::pipeline::Pipeline;
use crate::store::Tx;
use error::ApiError;

/// Largest attachment upload accepted by default (as `smtp.max_message_bytes`).
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 26_214_400;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub pipeline: Pipeline,
    /// Renders `/metrics`; absent when no recorder could be installed.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// What each IMAP fetcher is doing, for `/readyz`.
    pub imap: crate::listeners::imap::ImapStatus,
    /// `http.public_url`: base of `download_url`s and of pagination links.
    pub public_url: String,
    /// Largest attachment upload, in bytes (`smtp.max_message_bytes`).
    pub max_upload_bytes: usize,
    /// Wakes the outbox sender after a commit that queued mail; `None` without a sender.
    pub outbox_wake: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl AppState {
    /// State for `pipeline` with defaults for the rest (tests, tools): no metrics, no IMAP
    /// fetchers, 25 MiB uploads.
    pub fn new(pipeline: Pipeline, public_url: impl Into<String>) -> Self {
        AppState {
            pipeline,
            metrics: None,
            imap: crate::listeners::imap::ImapStatus::default(),
            public_url: public_url.into(),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            outbox_wake: None,
        }
    }
}

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(orgs::routes())
        .merge(customers::routes())
        .merge(tickets::routes())
        .merge(messages::routes())
        .merge(attachments::routes(state.max_upload_bytes))
        .merge(quarantine::routes())
        // Routes merged above this line get the JSON 405 below.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
}

/// Unknown paths: 404 with the same body as a missing object.
async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// A known path with a method it does not serve: 405 in DRF's words.
async fn method_not_allowed(method: axum::http::Method) -> impl axum::response::IntoResponse {
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(serde_json::json!({"detail": format!("Method \"{method}\" not allowed.")})),
    )
}

/// Adds `path` as written (ending in `/`, as in the spec) and the same path without the
/// trailing slash, both to `method`.
pub(crate) fn route_both(
    router: Router<AppState>,
    path: &str,
    method: MethodRouter<AppState>,
) -> Router<AppState> {
    let bare = path.trim_end_matches('/');
    if bare.is_empty() || bare == path {
        return router.route(path, method);
    }
    router.route(path, method.clone()).route(bare, method)
}

/// An integer id from the path; anything else names no object (404, as Django's `<int:pk>`).
pub(crate) fn path_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or(ApiError::NotFound)
}

/// A timestamp as DRF writes it: ISO 8601 in UTC with `Z`, microseconds only when present.
pub(crate) fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::{SecondsFormat, Timelike};
    let format = if t.nanosecond() == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Micros
    };
    t.to_rfc3339_opts(format, true)
}

/// Ends a read-only transaction and hands back what was read in it.
pub(crate) async fn finish_read<T>(tx: Tx, result: Result<T, ApiError>) -> Result<T, ApiError> {
    match result {
        Ok(value) => {
            tx.rollback().await?;
            Ok(value)
        }
        Err(e) => {
            // Whatever the rollback does, the first error is the answer.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// Commits a write transaction when `result` is Ok, rolls it back otherwise.
pub(crate) async fn finish_write<T>(tx: Tx, result: Result<T, ApiError>) -> Result<T, ApiError> {
    match result {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(e) => {
            // A failed rollback leaves the connection marked open; the pool then drops it.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamps_look_like_drf() {
        let t = chrono::Utc
            .with_ymd_and_hms(2023, 11, 7, 5, 31, 56)
            .unwrap();
        assert_eq!(timestamp(t), "2023-11-07T05:31:56Z");
        let t = t + chrono::Duration::microseconds(1500);
        assert_eq!(timestamp(t), "2023-11-07T05:31:56.001500Z");
    }

    #[test]
    fn path_ids_are_positive_integers() {
        assert_eq!(path_id("12").ok(), Some(12));
        assert!(path_id("0").is_err());
        assert!(path_id("-1").is_err());
        assert!(path_id("1e3").is_err());
        assert!(path_id("99999999999999999999").is_err());
    }
}
