//! Customers (requesters): list (`?email=`), retrieve, and PATCH `name` / `is_spam`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::OrgScope;
use super::error::ApiError;
use super::openapi::{ErrorDetail, FieldErrors, PageParams};
use super::pagination::{ListQuery, PageMeta, page_type};
use super::{AppState, finish_read, finish_write, path_id, route_both};
use crate::store::tickets::{self, Customer};
use crate::store::views;

/// Longest customer name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 255;

/// A customer: an end user who opens and takes part in tickets.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CustomerOut {
    pub id: i64,
    pub name: String,
    #[schema(format = Email)]
    pub email: String,
    /// Mail from a spam customer makes spam tickets.
    pub is_spam: bool,
}

impl From<Customer> for CustomerOut {
    fn from(c: Customer) -> Self {
        CustomerOut {
            id: c.id,
            name: c.name,
            email: c.email,
            is_spam: c.is_spam,
        }
    }
}

/// What a PATCH may change; every field is optional. `id` and `email` are read-only: sent
/// with their current values they are ignored, with other values refused.
#[derive(Debug, Clone, ToSchema)]
#[allow(dead_code)] // documentation of the request body; it is parsed field by field
pub struct CustomerPatch {
    /// At most 255 characters.
    #[schema(max_length = 255)]
    pub name: Option<String>,
    pub is_spam: Option<bool>,
}

/// `?email=` filter of the customer list.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documentation; the query is read by `ListQuery`
pub struct CustomerFilters {
    /// Exact address, compared case-insensitively.
    pub email: Option<String>,
}

page_type!(CustomerPage, CustomerOut, "A page of customers, by id.");

/// The customer routes.
pub fn routes() -> Router<AppState> {
    let r = Router::new();
    let r = route_both(r, "/organizations/{org_id}/customers/", get(list_customers));
    route_both(
        r,
        "/organizations/{org_id}/customers/{id}/",
        get(get_customer).patch(patch_customer),
    )
}

/// List customers, by id; `?email=` finds one by address.
#[utoipa::path(
    get,
    path = "/organizations/{org_id}/customers/",
    tag = "customers",
    operation_id = "customers_list",
    params(("org_id" = i64, Path, description = "The organization's numeric id"), CustomerFilters, PageParams),
    responses(
        (status = 200, description = "A page of customers", body = CustomerPage),
        (status = 400, description = "A bad `page` or `page_size`", body = FieldErrors),
        (status = 401, description = "No token, or a bad one", body = ErrorDetail),
        (status = 404, description = "Not this token's organization, or a page past the end", body = ErrorDetail),
    ),
    security(("initdesk_token" = []))
)]
pub async fn list_customers(
    scope: OrgScope,
    State(state): State<AppState>,
    q: ListQuery,
) -> Result<Json<CustomerPage>, ApiError> {
    let request = q.page_request()?;
    // Normalized as stored; something that is no address matches nobody.
    let email = q
        .get("email")
        .map(|e| crate::address::normalize(e).unwrap_or_else(|| e.trim().to_lowercase()));
    let mut tx = state.pipeline.store().begin_read().await?;
    let result = async {
        let count = views::count_customers(&mut tx, scope.org_id, email.as_deref()).await?;
        let w = request.window(count)?;
        let rows = views::customer_page(&mut tx, scope.org_id, email.as_deref(), w.limit, w.offset)
            .await?;
        Ok::<_, ApiError>((w, rows))
    }
    .await;
    let (w, rows) = finish_read(tx, result).await?;
    Ok(Json(CustomerPage::new(
        PageMeta::new(&q, &state.public_url, &w),
        rows.into_iter().map(CustomerOut::from).collect(),
    )))
}

/// Retrieve a customer.
#[utoipa::path(
    get,
    path = "/organizations/{org_id}/customers/{id}/",
    tag = "customers",
    operation_id = "customers_retrieve",
    params(
        ("org_id" = i64, Path, description = "The organization's numeric id"),
        ("id" = i64, Path, description = "The customer's id"),
    ),
    responses(
        (status = 200, description = "The customer", body = CustomerOut),
        (status = 401, description = "No token, or a bad one", body = ErrorDetail),
        (status = 404, description = "No such customer in this organization", body = ErrorDetail),
    ),
    security(("initdesk_token" = []))
)]
pub async fn get_customer(
    scope: OrgScope,
    State(state): State<AppState>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<CustomerOut>, ApiError> {
    let id = path_id(&id)?;
    let mut tx = state.pipeline.store().begin_read().await?;
    let customer = tickets::customer_by_id(&mut tx, scope.org_id, id)
        .await
        .map_err(ApiError::from);
    let customer = finish_read(tx, customer).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(customer.into()))
}

/// Change a customer's `name` and/or `is_spam`. Marking a customer as spam makes their
/// future mail spam tickets; tickets already there keep their flag.
#[utoipa::path(
    patch,
    path = "/organizations/{org_id}/customers/{id}/",
    tag = "customers",
    operation_id = "customers_partial_update",
    params(
        ("org_id" = i64, Path, description = "The organization's numeric id"),
        ("id" = i64, Path, description = "The customer's id"),
    ),
    request_body = CustomerPatch,
    responses(
        (status = 200, description = "The customer as changed", body = CustomerOut),
        (status = 400, description = "A field of the wrong type, too long, unknown or read-only", body = FieldErrors),
        (status = 401, description = "No token, or a bad one", body = ErrorDetail),
        (status = 404, description = "No such customer in this organization", body = ErrorDetail),
    ),
    security(("initdesk_token" = []))
)]
pub async fn patch_customer(
    scope: OrgScope,
    State(state): State<AppState>,
    Path((_, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<CustomerOut>, ApiError> {
    let id = path_id(&id)?;
    let fields = parse_object(&body)?;
    let mut tx = state.pipeline.store().begin().await?;
    let result = async {
        let current = tickets::customer_by_id(&mut tx, scope.org_id, id)
            .await?
            .ok_or(ApiError::NotFound)?;
        let patch = validate_patch(&fields, &current)?;
        if patch.name.is_some() || patch.is_spam.is_some() {
            tickets::update_customer(
                &mut tx,
                scope.org_id,
                id,
                patch.name.as_deref(),
                patch.is_spam,
            )
            .await?;
        }
        tickets::customer_by_id(&mut tx, scope.org_id, id)
            .await?
            .ok_or(ApiError::NotFound)
    }
    .await;
    let customer = finish_write(tx, result).await?;
    Ok(Json(customer.into()))
}

/// A JSON object body (an empty body is an empty object); 400 otherwise.
pub(crate) fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::field(
            "non_field_errors",
            format!(
                "Invalid data. Expected a dictionary, but got {}.",
                json_kind(&other)
            ),
        )),
        Err(e) => Err(ApiError::field(
            "non_field_errors",
            format!("JSON parse error - {e}"),
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// The checked changes of a PATCH.
#[derive(Debug, Default, PartialEq, Eq)]
struct Patch {
    name: Option<String>,
    is_spam: Option<bool>,
}

fn validate_patch(
    fields: &serde_json::Map<String, Value>,
    current: &Customer,
) -> Result<Patch, ApiError> {
    let mut patch = Patch::default();
    for (key, value) in fields {
        match key.as_str() {
            "name" => match value {
                Value::String(s) if s.chars().count() <= MAX_NAME_CHARS => {
                    patch.name = Some(s.clone());
                }
                Value::String(_) => {
                    return Err(ApiError::field(
                        "name",
                        format!("Ensure this field has no more than {MAX_NAME_CHARS} characters."),
                    ));
                }
                Value::Null => return Err(ApiError::field("name", "This field may not be null.")),
                _ => return Err(ApiError::field("name", "Not a valid string.")),
            },
            "is_spam" => match value {
                Value::Bool(b) => patch.is_spam = Some(*b),
                Value::Null => {
                    return Err(ApiError::field("is_spam", "This field may not be null."));
                }
                _ => return Err(ApiError::field("is_spam", "Must be a valid boolean.")),
            },
            "id" if value.as_i64() == Some(current.id) => {}
            "email" if value.as_str() == Some(current.email.as_str()) => {}
            "id" | "email" => {
                return Err(ApiError::field(key.as_str(), "This field is read-only."));
            }
            _ => {
                return Err(ApiError::field(
                    key.as_str(),
                    "Unknown field; only `name` and `is_spam` can be changed.",
                ));
            }
        }
    }
    Ok(patch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn customer() -> Customer {
        Customer {
            id: 5,
            organization_id: 1,
            name: "Ann".into(),
            email: "ann@example.test".into(),
            is_spam: false,
        }
    }

    fn check(body: Value) -> Result<Patch, String> {
        let map = parse_object(body.to_string().as_bytes()).map_err(|e| e.to_string())?;
        validate_patch(&map, &customer()).map_err(|e| e.to_string())
    }

    #[test]
    fn patches_name_and_spam() {
        assert_eq!(
            check(json!({"name": "Ann B", "is_spam": true})).unwrap(),
            Patch {
                name: Some("Ann B".into()),
                is_spam: Some(true)
            }
        );
        assert_eq!(
            check(json!({"id": 5, "email": "ann@example.test"})).unwrap(),
            Patch::default()
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert!(
            check(json!({"is_spam": "yes"}))
                .unwrap_err()
                .starts_with("is_spam:")
        );
        assert!(check(json!({"name": 3})).unwrap_err().starts_with("name:"));
        assert!(
            check(json!({"name": "x".repeat(256)}))
                .unwrap_err()
                .starts_with("name:")
        );
        assert!(
            check(json!({"email": "b@x.test"}))
                .unwrap_err()
                .starts_with("email:")
        );
        assert!(
            check(json!({"colour": "red"}))
                .unwrap_err()
                .starts_with("colour:")
        );
        assert!(
            check(json!([1]))
                .unwrap_err()
                .starts_with("non_field_errors:")
        );
        assert!(parse_object(b"{").is_err());
        assert!(parse_object(b"").unwrap().is_empty());
    }
}
