//! Attachments: multipart upload (for the write side to attach by id) and download.

use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::OrgScope;
use super::error::ApiError;
use super::openapi::{ErrorDetail, FieldErrors};
use super::{AppState, finish_read, finish_write, route_both};
use crate::pipeline::parse::sanitize_filename;
use crate::pipeline::prepare::download_url;
use crate::store::tickets::{self, Attachment};
use crate::store::{StoreError, views};

/// Room for the multipart framing and other small fields around the file.
const MULTIPART_SLACK_BYTES: usize = 64 * 1024;

/// An attachment as tickets and messages list it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttachmentRef {
    #[schema(format = "uuid")]
    pub id: String,
    pub name: String,
    /// Where the bytes are served (with the organization's token).
    pub download_url: String,
}

impl AttachmentRef {
    /// The reference to `a` with its download URL on `public_url`.
    pub fn new(a: &Attachment, public_url: &str) -> Self {
        AttachmentRef {
            id: a.id.clone(),
            name: a.name.clone(),
            download_url: download_url(public_url, a.organization_id, &a.id),
        }
    }
}

/// An uploaded attachment, not yet on any ticket or message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttachmentOut {
    #[schema(format = "uuid")]
    pub id: String,
    pub name: String,
    pub content_type: String,
    /// Bytes.
    pub size: i64,
    pub download_url: String,
}

/// The multipart form of an upload.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documentation of the request body; it is read as a stream
pub struct AttachmentUpload {
    /// The file (its name and content type come from the part's headers).
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// The attachment routes; uploads are limited to `max_upload_bytes`.
pub fn routes(max_upload_bytes: usize) -> Router<AppState> {
    let r = Router::new();
    let r = route_both(
        r,
        "/organizations/{org_id}/attachments/",
        post(upload).layer(DefaultBodyLimit::max(
            max_upload_bytes.saturating_add(MULTIPART_SLACK_BYTES),
        )),
    );
    route_both(
        r,
        "/organizations/{org_id}/attachments/{id}/download/",
        get(download),
    )
}

/// Upload a file as `multipart/form-data` in the field `file`; attach it later by its id.
#[utoipa::path(
    post,
    path = "/organizations/{org_id}/attachments/",
    tag = "attachments",
    operation_id = "attachments_create",
    params(("org_id" = i64, Path, description = "The organization's numeric id")),
    request_body(content = AttachmentUpload, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored; attach it by `id`", body = AttachmentOut),
        (status = 400, description = "No `file` part, an empty file, or not multipart", body = FieldErrors),
        (status = 401, description = "No token, or a bad one", body = ErrorDetail),
        (status = 404, description = "Not this token's organization", body = ErrorDetail),
        (status = 413, description = "The file is over the size limit (`smtp.max_message_bytes`)", body = FieldErrors),
    ),
    security(("initdesk_token" = []))
)]
pub async fn upload(
    scope: OrgScope,
    State(state): State<AppState>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<AttachmentOut>), ApiError> {
    let mut multipart = multipart.map_err(|_| {
        ApiError::field(
            "file",
            "Send the file as multipart/form-data in a part named \"file\".",
        )
    })?;
    let limit = state.max_upload_bytes;
    let too_large = || ApiError::TooLarge {
        field: "file".into(),
        message: format!("The file is larger than the limit of {limit} bytes."),
    };
    let read_error = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::field(
                "file",
                format!("The upload could not be read: {}", e.body_text()),
            )
        }
    };
    let mut file: Option<(String, Option<String>, Vec<u8>)> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(read_error)? {
        if field.name() != Some("file") || file.is_some() {
            // Other parts are ignored, as DRF ignores unknown fields (they count to the limit).
            while field.chunk().await.map_err(read_error)?.is_some() {}
            continue;
        }
        let name = field.file_name().unwrap_or_default().to_string();
        let content_type = field.content_type().map(str::to_string);
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(read_error)? {
            if bytes.len() + chunk.len() > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        file = Some((name, content_type, bytes));
    }
    let (raw_name, content_type, bytes) =
        file.ok_or_else(|| ApiError::field("file", "No file was submitted."))?;
    if bytes.is_empty() {
        return Err(ApiError::field("file", "The submitted file is empty."));
    }
    let mut name = sanitize_filename(&raw_name);
    if name.is_empty() {
        name = "attachment".into();
    }
    let content_type = content_type
        .as_deref()
        .and_then(clean_content_type)
        .unwrap_or_else(|| {
            mime_guess::from_path(&name)
                .first_or_octet_stream()
                .essence_str()
                .to_string()
        });
    let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);

    // Bytes durable first, then the row that names them.
    let blobs = state.pipeline.blobs().clone();
    let sha256 = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let sha = blobs.put(&bytes)?;
        blobs.sync(std::slice::from_ref(&sha))?;
        Ok(sha)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("blob task failed: {e}")))?
    .map_err(|e| ApiError::from(StoreError::Io(e)))?;

    let id = uuid::Uuid::now_v7().to_string();
    let mut tx = state.pipeline.store().begin().await?;
    let inserted = tickets::insert_uploaded_attachment(
        &mut tx,
        scope.org_id,
        &id,
        &name,
        &content_type,
        size,
        &sha256,
    )
    .await
    .map_err(ApiError::from);
    finish_write(tx, inserted).await?;
    Ok((
        StatusCode::CREATED,
        Json(AttachmentOut {
            download_url: download_url(&state.public_url, scope.org_id, &id),
            id,
            name,
            content_type,
            size,
        }),
    ))
}

/// Download an attachment's bytes.
#[utoipa::path(
    get,
    path = "/organizations/{org_id}/attachments/{id}/download/",
    tag = "attachments",
    operation_id = "attachments_download",
    params(
        ("org_id" = i64, Path, description = "The organization's numeric id"),
        ("id" = String, Path, format = "uuid", description = "The attachment's id"),
    ),
    responses(
        (status = 200, description = "The bytes, with the attachment's content type", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, description = "No token, or a bad one", body = ErrorDetail),
        (status = 404, description = "No such attachment in this organization", body = ErrorDetail),
    ),
    security(("initdesk_token" = []))
)]
pub async fn download(
    scope: OrgScope,
    State(state): State<AppState>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::NotFound)?
        .hyphenated()
        .to_string();
    let mut tx = state.pipeline.store().begin_read().await?;
    let row = views::attachment(&mut tx, scope.org_id, &id)
        .await
        .map_err(ApiError::from);
    let row = finish_read(tx, row).await?.ok_or(ApiError::NotFound)?;
    let blobs = state.pipeline.blobs().clone();
    let sha = row.sha256.clone();
    let bytes = tokio::task::spawn_blocking(move || blobs.get(&sha))
        .await
        .map_err(|e| ApiError::Internal(format!("blob task failed: {e}")))?
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ApiError::Internal(format!(
                    "the bytes of attachment {} (blob {}) are missing",
                    row.id, row.sha256
                ))
            } else {
                ApiError::from(StoreError::Io(e))
            }
        })?;
    let content_type = clean_content_type(&row.content_type)
        .and_then(|ct| HeaderValue::from_str(&ct).ok())
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    let disposition = HeaderValue::from_str(&content_disposition(&row.name))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_DISPOSITION, disposition),
            // Served from the API's origin: never sniffed, never run as a page.
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("sandbox; default-src 'none'"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("private")),
        ],
        bytes,
    )
        .into_response())
}

/// `type/subtype` in lower case without parameters, when it is a well-formed media type.
fn clean_content_type(raw: &str) -> Option<String> {
    let essence = raw.split(';').next()?.trim().to_ascii_lowercase();
    let (kind, sub) = essence.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    (token(kind) && token(sub)).then_some(essence)
}

/// Always `attachment` (never shown inline from our origin), with an ASCII fallback name
/// and the exact name in RFC 5987 `filename*`.
fn content_disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' && c != '%' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_cleaned() {
        assert_eq!(
            clean_content_type("Text/Plain; charset=utf-8").as_deref(),
            Some("text/plain")
        );
        assert_eq!(clean_content_type("nonsense"), None);
        assert_eq!(clean_content_type("text/pl ain"), None);
        assert_eq!(clean_content_type("a/b\r\nX-Evil: 1"), None);
    }

    #[test]
    fn dispositions_are_safe_headers() {
        let d = content_disposition("r\u{e9}sum\u{e9} \"final\".pdf");
        assert_eq!(
            d,
            "attachment; filename=\"r_sum_ _final_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.pdf"
        );
        assert!(HeaderValue::from_str(&content_disposition("a\r\nb")).is_ok());
    }
}
