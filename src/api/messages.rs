//! A ticket's messages, oldest first.
//!
//! [`render_messages`] turns message rows into the API's message objects with one query each
//! for the page's authors and attachments; the write side answers with it too.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::attachments::AttachmentRef;
use super::auth::OrgScope;
use super::error::ApiError;
use super::openapi::{ErrorDetail, FieldErrors, PageParams};
use super::pagination::{ListQuery, PageMeta, page_type};
use super::tickets::UserOut;
use super::{AppState, finish_read, path_id, route_both, timestamp};
use crate::store::orgs::User;
use crate::store::tickets::Message;
use crate::store::{Tx, parse_json_list, views};

/// `role` values.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // documentation: the stored text is sent as it is
pub enum MessageRole {
    /// From the requester.
    Customer,
    /// From an external CC participant.
    Cc,
    /// From an agent (a reply, or an internal note).
    Associate,
    /// An automated line (delivery failures, closures).
    System,
}

/// Who sent a message; the shape follows `role`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum MessageSender {
    /// `customer` and `cc`.
    Customer {
        #[schema(format = Email)]
        email: String,
        name: String,
        customer_id: Option<i64>,
    },
    /// `associate` with an author.
    Associate {
        #[schema(format = Email)]
        email: String,
        name: String,
        user_id: i64,
    },
}

/// A message of a ticket. Messages are immutable.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MessageOut {
    pub id: i64,
    #[schema(value_type = MessageRole)]
    pub role: String,
    /// The agent who wrote it (legacy; see `sender`).
    pub author: Option<UserOut>,
    /// Null for `system`, and for an `associate` message without an author.
    pub sender: Option<MessageSender>,
    /// The assignee set with this message, when one was (not stored for inbound mail).
    pub next_assignee: Option<UserOut>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    pub attachments: Vec<AttachmentRef>,
    pub content: String,
    pub content_html: String,
    pub is_visible_to_customer: bool,
    /// This message's CC snapshot.
    pub external_recipient_emails: Vec<String>,
    /// Outgoing mail only: where its delivery stands (`queued`, `sent`, `failed`, ...);
    /// null for inbound messages. An addition to the seed pages.
    pub delivery_state: Option<String>,
}

page_type!(MessagePage, MessageOut, "A page of messages, oldest first.");

/// The message routes (reading; creating them is the write side's).
pub fn routes() -> Router<AppState> {
    route_both(
        Router::new(),
        "/organizations/{org_id}/tickets/{ticket_id}/messages/",
        get(list_messages).post(super::write::create_message),
    )
}

/// List a ticket's messages, oldest first.
#[utoipa::path(
    get,
    path = "/organizations/{org_id}/tickets/{ticket_id}/messages/",
    tag = "messages",
    operation_id = "tickets_messages_list",
    params(
        ("org_id" = i64, Path, description = "The organization's numeric id"),
        ("ticket_id" = i64, Path, description = "The ticket's id (`pk`)"),
        PageParams,
    ),
    responses(
        (status = 200, description = "A page of messages", body = MessagePage),
        (status = 400, description = "A bad `page` or `page_size`", body = FieldErrors),
        (status = 401, description = "No token, or a bad one", body = ErrorDetail),
        (status = 404, description = "No such ticket in this organization, or a page past the end", body = ErrorDetail),
    ),
    security(("initdesk_token" = []))
)]
pub async fn list_messages(
    scope: OrgScope,
    State(state): State<AppState>,
    Path((_, ticket_id)): Path<(String, String)>,
    q: ListQuery,
) -> Result<Json<MessagePage>, ApiError> {
    let ticket_id = path_id(&ticket_id)?;
    let request = q.page_request()?;
    let mut tx = state.pipeline.store().begin_read().await?;
    let result = async {
        if !views::ticket_exists(&mut tx, scope.org_id, ticket_id).await? {
            return Err(ApiError::NotFound);
        }
        let count = views::count_messages(&mut tx, scope.org_id, ticket_id).await?;
        let w = request.window(count)?;
        let rows = views::message_page(&mut tx, scope.org_id, ticket_id, w.limit, w.offset).await?;
        let out = render_messages(&mut tx, scope.org_id, &state.public_url, rows).await?;
        Ok((w, out))
    }
    .await;
    let (w, results) = finish_read(tx, result).await?;
    Ok(Json(MessagePage::new(
        PageMeta::new(&q, &state.public_url, &w),
        results,
    )))
}

/// Message rows as API objects, in the same order: one query each for the authors and the
/// attachments of all of them.
pub async fn render_messages(
    tx: &mut Tx,
    org_id: i64,
    public_url: &str,
    rows: Vec<Message>,
) -> Result<Vec<MessageOut>, ApiError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = rows.iter().map(|m| m.id).collect();
    let author_ids: Vec<i64> = rows.iter().filter_map(|m| m.author_user_id).collect();
    let users: HashMap<i64, User> = views::users_by_ids(tx, org_id, &author_ids)
        .await?
        .into_iter()
        .map(|u| (u.id, u))
        .collect();
    let mut attachments: HashMap<i64, Vec<AttachmentRef>> = HashMap::new();
    for a in views::attachments_of_messages(tx, org_id, &ids).await? {
        if let Some(m) = a.message_id {
            attachments
                .entry(m)
                .or_default()
                .push(AttachmentRef::new(&a, public_url));
        }
    }
    Ok(rows
        .into_iter()
        .map(|m| {
            let author = m.author_user_id.and_then(|id| users.get(&id));
            let sender = match m.role.as_str() {
                "customer" | "cc" => Some(MessageSender::Customer {
                    email: m.sender_email.clone(),
                    name: m.sender_name.clone(),
                    customer_id: m.sender_customer_id,
                }),
                "associate" => author.map(|u| MessageSender::Associate {
                    email: u.email.clone(),
                    name: u.name.clone(),
                    user_id: u.id,
                }),
                _ => None,
            };
            MessageOut {
                id: m.id,
                author: author.map(UserOut::from),
                sender,
                next_assignee: None,
                created_at: timestamp(m.created_at),
                updated_at: timestamp(m.updated_at),
                attachments: attachments.remove(&m.id).unwrap_or_default(),
                content: m.content,
                content_html: m.content_html,
                is_visible_to_customer: m.is_visible_to_customer,
                external_recipient_emails: parse_json_list(&m.external_recipient_emails),
                delivery_state: m.delivery_state,
                role: m.role,
            }
        })
        .collect())
}
