//! Webhooks (SPEC 5.5): `ticket.created`, `ticket.updated` and `message.created`, queued in
//! the transaction of the change and POSTed from the outbox with an HMAC-SHA256 signature.
//!
//! The row keeps the event and the ids; the ticket and message objects (as the API shows
//! them) are rendered when the webhook is sent. The signature header is
//! `X-Initdesk-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, keyed by
//! the organization's `webhook_secret`; receivers should reject old `t` to stop replays.

use std::time::Duration;

use serde_json::{Value, json};

use crate::store::outbox::{self, Item, Job};
use crate::store::{Store, StoreError, Tx, orgs};

/// Queues `event` about a ticket (and a message) unless the organization has no webhook URL
/// or the ticket is spam.
pub async fn enqueue(
    tx: &mut Tx,
    org: &orgs::Org,
    event: &str,
    ticket_id: i64,
    message_id: Option<i64>,
    ticket_is_spam: bool,
) -> Result<(), StoreError> {
    if org.webhook_url.is_empty() || ticket_is_spam {
        return Ok(());
    }
    let payload = json!({
        "ticket_id": ticket_id,
        "message_id": message_id,
        "occurred_at": crate::store::now().to_rfc3339(),
    });
    outbox::enqueue(
        tx,
        org.id,
        &Item::Webhook {
            event: event.to_string(),
            payload: payload.to_string(),
        },
    )
    .await
}

/// Why a webhook was not delivered; `permanent` ones are not retried.
#[derive(Debug)]
pub struct Failed {
    pub permanent: bool,
    pub reason: String,
}

fn temporary(reason: impl Into<String>) -> Failed {
    Failed {
        permanent: false,
        reason: reason.into(),
    }
}

/// Delivers webhooks.
#[derive(Clone, Debug)]
pub struct Webhooks {
    client: reqwest::Client,
}

impl Webhooks {
    /// A client with the gateway's TLS settings and a 10-second limit per delivery.
    pub fn new() -> Result<Webhooks, String> {
        let tls = crate::ops::tls::client_config("")?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("initdesk-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Webhooks { client })
    }

    /// Renders and POSTs one queued webhook.
    pub async fn deliver(&self, store: &Store, public_url: &str, job: &Job) -> Result<(), Failed> {
        let ids: Value = serde_json::from_str(&job.payload).map_err(|e| Failed {
            permanent: true,
            reason: format!("bad payload: {e}"),
        })?;
        let ticket_id = ids["ticket_id"].as_i64().unwrap_or_default();
        let message_id = ids["message_id"].as_i64();
        let mut tx = store
            .begin_read()
            .await
            .map_err(|e| temporary(e.to_string()))?;
        let rendered = render(
            &mut tx,
            job.organization_id,
            public_url,
            ticket_id,
            message_id,
        )
        .await;
        let _ = tx.rollback().await;
        let Some((org, data, is_spam)) = rendered.map_err(|e| temporary(e.to_string()))? else {
            return Err(Failed {
                permanent: true,
                reason: "the organization or ticket no longer exists".into(),
            });
        };
        // The ticket may have been marked spam since the event; spam sends nothing.
        if is_spam || org.webhook_url.is_empty() {
            return Ok(());
        }
        let body = json!({
            "event": job.event,
            "delivery_id": job.id,
            "occurred_at": ids["occurred_at"],
            "data": data,
        })
        .to_string();
        let t = crate::store::now().timestamp();
        let signature = sign(&org.webhook_secret, t, &body);
        let response = self
            .client
            .post(&org.webhook_url)
            .header("content-type", "application/json")
            .header("x-initdesk-event", &job.event)
            .header("x-initdesk-delivery", job.id.to_string())
            .header("x-initdesk-signature", format!("t={t},v1={signature}"))
            .body(body)
            .send()
            .await
            .map_err(|e| temporary(format!("POST {}: {e}", org.webhook_url)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // 410 Gone says the receiver is gone for good; anything else may pass.
        Err(Failed {
            permanent: status == reqwest::StatusCode::GONE,
            reason: format!("POST {} answered {status}", org.webhook_url),
        })
    }
}

/// `t` and the body, signed with `secret`: hex HMAC-SHA256 of `"<t>.<body>"`.
pub fn sign(secret: &str, t: i64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    hex::encode(ring::hmac::sign(&key, format!("{t}.{body}").as_bytes()).as_ref())
}

type Rendered = Option<(orgs::Org, Value, bool)>;

async fn render(
    tx: &mut Tx,
    org_id: i64,
    public_url: &str,
    ticket_id: i64,
    message_id: Option<i64>,
) -> Result<Rendered, crate::api::error::ApiError> {
    let Some(org) = orgs::get_org(tx, org_id).await? else {
        return Ok(None);
    };
    let ticket = match crate::api::tickets::ticket_view(tx, org_id, public_url, ticket_id).await {
        Ok(t) => t,
        Err(crate::api::error::ApiError::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    let is_spam = ticket.is_spam;
    let mut data = json!({ "ticket": ticket });
    if let Some(id) = message_id {
        let rows: Vec<_> = crate::store::views::message(tx, org_id, id)
            .await?
            .into_iter()
            .collect();
        let mut out = crate::api::messages::render_messages(tx, org_id, public_url, rows).await?;
        if let Some(m) = out.pop() {
            data["message"] = serde_json::to_value(m).unwrap_or(Value::Null);
        }
    }
    Ok(Some((org, data, is_spam)))
}

#[cfg(test)]
mod tests {
    use super::sign;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_body() {
        // Independently computed: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            sign("secret", 1_700_000_000, r#"{"a":1}"#),
            "49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686".to_string()
        );
    }
}
