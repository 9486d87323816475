//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers'
//! `#[utoipa::path]` attributes and the response types' `ToSchema` derives.
//!
//! To document a new endpoint: put `#[utoipa::path(...)]` on its handler (copy one of
//! `tickets.rs`; add `security(("initdesk_token" = []))` when it takes the token), add the
//! handler to `paths(...)` below and its request/response types to `components(schemas(...))`
//! (types reached from a path's `body = ...` are picked up anyway). The test
//! `api::openapi_lists_every_path` checks the document.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

/// `{"detail": "..."}`: 401, 404 (also "Invalid page."), 500, 503.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorDetail {
    pub detail: String,
}

/// `{"<field>": ["<message>"]}`: 400 (and 413 for an upload) naming the field or query
/// parameter to fix; `non_field_errors` when the body as a whole is wrong.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct FieldErrors(pub HashMap<String, Vec<String>>);

/// Page-number pagination of every list.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documentation; the query is read by `ListQuery`
pub struct PageParams {
    /// 1-based page number, or `last`. Past the end: 404 "Invalid page.".
    #[param(value_type = Option<String>, example = "1")]
    pub page: Option<String>,
    /// Items per page: default 25, at most 100 (larger values are capped).
    #[param(minimum = 1, maximum = 100)]
    pub page_size: Option<i64>,
}

/// Adds the `X-Initdesk-Token` header scheme the organization endpoints require.
struct TokenScheme;

impl Modify for TokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "initdesk_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Initdesk-Token",
                "An API token of the organization in the path (`initdesk-gateway token create`).",
            ))),
        );
    }
}

/// The API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "initdesk-gateway",
        description = "The organization-scoped API of the initdesk inbound email gateway. Every \
            `/organizations/{org_id}/...` call takes the header `X-Initdesk-Token`: none or a \
            bad one is 401; a token of another organization is 404, as if nothing existed. \
            Paths are written with a trailing slash and served without it too. Lists are \
            paginated as `{count, next, previous, results}` with `?page=` and `?page_size=`."
    ),
    paths(
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        openapi_json,
        super::orgs::get_organization,
        super::orgs::list_inboxes,
        super::customers::list_customers,
        super::customers::get_customer,
        super::customers::patch_customer,
        super::tickets::list_tickets,
        super::tickets::get_ticket,
        super::tickets::unassign,
        super::tickets::list_statuses,
        super::messages::list_messages,
        super::attachments::upload,
        super::attachments::download,
        super::quarantine::list,
        super::quarantine::reprocess,
        super::write::create_message,
        super::write::create_ticket,
    ),
    components(schemas(
        ErrorDetail,
        FieldErrors,
        super::orgs::OrganizationOut,
        super::orgs::InboxOut,
        super::customers::CustomerOut,
        super::customers::CustomerPatch,
        super::tickets::TicketOut,
        super::tickets::TicketStatusOut,
        super::messages::MessageOut,
        super::messages::MessageSender,
        super::attachments::AttachmentRef,
        super::attachments::AttachmentOut,
        super::quarantine::QuarantineOut,
        super::quarantine::ReprocessOut,
        // Write side: add its request and response types here.
    )),
    modifiers(&TokenScheme),
    tags(
        (name = "organizations", description = "The token's organization and its inboxes"),
        (name = "customers", description = "Requesters"),
        (name = "tickets", description = "Tickets and their statuses"),
        (name = "messages", description = "The thread of a ticket"),
        (name = "attachments", description = "Uploads and downloads"),
        (name = "quarantine", description = "Messages whose processing failed"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// The document as JSON, rendered once.
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    })
}

/// The OpenAPI document of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi_retrieve",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json"))
)]
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
}
