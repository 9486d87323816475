//! `/healthz` (the process answers) and `/readyz` (the database answers too).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

/// Liveness: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    responses((status = 200, description = "`{\"status\": \"ok\"}`"))
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the database answers; 503 with the reason when it does not. Each IMAP
/// mailbox's state is listed; a failing mailbox does not make the instance unready, since
/// the listeners and the other mailboxes still work (it shows in `imap_failing`).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready: the database answers; each IMAP mailbox's state"),
        (status = 503, description = "Not ready, with the reason"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let mailboxes = state.imap.snapshot();
    let failing = mailboxes.values().filter(|m| m.state == "failing").count();
    let (code, status, database) = match state.pipeline.store().ping().await {
        Ok(()) => (StatusCode::OK, "ready", "ok".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, "not ready", e.to_string()),
    };
    (
        code,
        Json(json!({
            "status": status,
            "database": database,
            "imap": mailboxes,
            "imap_failing": failing,
        })),
    )
}

/// Prometheus text exposition of the gateway's metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain"),
        (status = 503, description = "Metrics are not being recorded"),
    )
)]
pub async fn metrics(
    State(state): State<AppState>,
) -> (
    StatusCode,
    [(axum::http::HeaderName, &'static str); 1],
    String,
) {
    let content_type = (
        axum::http::header::CONTENT_TYPE,
        "text/plain; version=0.0.4",
    );
    match &state.metrics {
        Some(handle) => (StatusCode::OK, [content_type], handle.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [content_type],
            "metrics are not being recorded\n".into(),
        ),
    }
}
