//! The HTTP interface. So far: health, readiness and metrics for supervisors and monitoring.

mod health;

use axum::Router;
use axum::routing::get;

use crate::pipeline::Pipeline;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub pipeline: Pipeline,
    /// Renders `/metrics`; absent when no recorder could be installed.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// What each IMAP fetcher is doing, for `/readyz`.
    pub imap: crate::listeners::imap::ImapStatus,
}

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(state)
}
