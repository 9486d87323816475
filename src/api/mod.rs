//! The HTTP interface. So far: health and readiness for supervisors and load balancers.

mod health;

use axum::Router;
use axum::routing::get;

use crate::pipeline::Pipeline;

/// Shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    pub pipeline: Pipeline,
}

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
}
