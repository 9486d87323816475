//! `/healthz` (the process answers) and `/readyz` (the database answers too).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

/// Liveness: the process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the database answers; 503 with the reason when it does not.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.pipeline.store().ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "database": "ok"})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "database": e.to_string()})),
        ),
    }
}

/// Prometheus text exposition of the gateway's metrics.
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
