//! `X-Initdesk-Token` authentication, scoped to the organization in the path.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use std::collections::HashMap;

use super::AppState;
use super::error::ApiError;
use crate::store::orgs;

/// The organization a request is for, proven by its token. A token of another organization
/// gets 404, exactly as if the organization did not exist.
#[derive(Debug, Clone, Copy)]
pub struct OrgScope {
    pub org_id: i64,
}

impl FromRequestParts<AppState> for OrgScope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get("x-initdesk-token")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?
            .to_string();
        let mut tx = state.pipeline.store().begin_read().await?;
        let owner = orgs::org_for_token(&mut tx, &token).await?;
        tx.rollback().await?;
        let owner = owner.ok_or(ApiError::Unauthorized)?;
        let Path(params): Path<HashMap<String, String>> = Path::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound)?;
        let wanted = params
            .get("org_id")
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or(ApiError::NotFound)?;
        if wanted != owner {
            return Err(ApiError::NotFound);
        }
        Ok(OrgScope { org_id: owner })
    }
}
