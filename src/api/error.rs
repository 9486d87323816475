//! API errors as HTTP answers: 401 without a valid token, 404 for anything outside the
//! caller's organization (and for a page past the end), 400 naming the field (413 for an
//! upload over the limit), 503 when the database cannot answer.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

/// What a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("authentication credentials were not provided or are not valid")]
    Unauthorized,
    #[error("not found")]
    NotFound,
    /// Bad input: `field` names what to fix (DRF style: `{"field": ["message"]}`).
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    /// A page number past the end of a list (DRF: 404 "Invalid page.").
    #[error("invalid page")]
    InvalidPage,
    /// An upload over the size limit: 413 naming the field.
    #[error("{field}: {message}")]
    TooLarge { field: String, message: String },
    #[error("the database is not available: {0}")]
    Unavailable(StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 about `field`.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_transient() {
            ApiError::Unavailable(e)
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, body) = match &self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"detail": self.to_string()}),
            ),
            ApiError::NotFound => (StatusCode::NOT_FOUND, json!({"detail": "Not found."})),
            ApiError::InvalidPage => (StatusCode::NOT_FOUND, json!({"detail": "Invalid page."})),
            ApiError::BadRequest { field, message } => {
                (StatusCode::BAD_REQUEST, json!({ field: [message] }))
            }
            ApiError::TooLarge { field, message } => {
                (StatusCode::PAYLOAD_TOO_LARGE, json!({ field: [message] }))
            }
            ApiError::Unavailable(_) => {
                tracing::warn!(error = %self, "API request failed: database unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"detail": "The database is not available; try again."}),
                )
            }
            ApiError::Internal(_) => {
                tracing::error!(error = %self, "API request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"detail": "Internal error."}),
                )
            }
        };
        (code, Json(body)).into_response()
    }
}
