//! The HTTP API's read side (SPEC 5.4) over the real router, in process, on SQLite and
//! PostgreSQL: every endpoint's happy path, 401s, the organization-isolation matrix,
//! pagination, filters, PATCH validation, uploads, and the OpenAPI document.

use std::collections::BTreeSet;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use base64::Engine as _;
use initdesk_gateway::api::{self, AppState};
use initdesk_gateway::pipeline::{Delivery, Envelope, Outcome, Source};
use initdesk_gateway::store::{orgs, quarantine, tickets};
use initdesk_gateway::with_tx;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::helpers::{Db, TestGateway};

const PUBLIC_URL: &str = "http://gateway.test";

/// A response, read whole.
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// The fixture world, tokens for both organizations, and the router over them.
struct Api {
    gw: TestGateway,
    router: Router,
    acme: i64,
    globex: i64,
    acme_token: String,
    globex_token: String,
}

impl Api {
    async fn new(db: Db) -> Api {
        Self::with_upload_limit(db, api::DEFAULT_MAX_UPLOAD_BYTES).await
    }

    async fn with_upload_limit(db: Db, max_upload_bytes: usize) -> Api {
        let gw = TestGateway::new(db).await;
        let mut tx = gw.store.begin().await.expect("begin");
        let all = orgs::list_orgs(&mut tx).await.expect("orgs");
        let id = |name: &str| all.iter().find(|o| o.name == name).expect("org").id;
        let (acme, globex) = (id("Acme"), id("Globex"));
        let acme_token = orgs::create_token(&mut tx, acme).await.expect("token");
        let globex_token = orgs::create_token(&mut tx, globex).await.expect("token");
        tx.commit().await.expect("commit");
        let mut state = AppState::new(gw.pipeline.clone(), PUBLIC_URL);
        state.max_upload_bytes = max_upload_bytes;
        Api {
            router: api::router(state),
            gw,
            acme,
            globex,
            acme_token,
            globex_token,
        }
    }

    async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body")
            .to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("x-initdesk-token", t);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        self.send(req.body(Body::from(body)).expect("request"))
            .await
    }

    /// GET with Acme's token.
    async fn get(&self, path: &str) -> Resp {
        self.call("GET", path, Some(&self.acme_token), None, Vec::new())
            .await
    }

    /// GET with Acme's token, expecting 200 and JSON.
    async fn get_ok(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "GET {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()
    }

    async fn patch(&self, path: &str, token: &str, body: &str) -> Resp {
        self.call(
            "PATCH",
            path,
            Some(token),
            Some("application/json"),
            body.as_bytes().to_vec(),
        )
        .await
    }

    async fn post(&self, path: &str, token: &str) -> Resp {
        self.call("POST", path, Some(token), None, Vec::new()).await
    }

    async fn upload(&self, org: i64, token: &str, field: &str, name: &str, bytes: &[u8]) -> Resp {
        let boundary = "XyZzY-boundary";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n\
             Content-Type: text/plain\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        self.call(
            "POST",
            &format!("/organizations/{org}/attachments/"),
            Some(token),
            Some(&format!("multipart/form-data; boundary={boundary}")),
            body,
        )
        .await
    }

    async fn ingest(&self, raw: Vec<u8>, to: &str) -> Outcome {
        self.gw
            .pipeline
            .ingest(&raw, &Envelope::to(to, Source::Replay))
            .await
            .expect("ingest")
    }

    async fn sql(&self, sql: &'static str, a: i64, b: i64) {
        let mut tx = self.gw.store.begin().await.expect("begin");
        with_tx!(&mut tx, |c| sqlx::query(sql)
            .bind(a)
            .bind(b)
            .execute(c)
            .await
            .map(|_| ()))
        .expect("sql");
        tx.commit().await.expect("commit");
    }

    async fn cleanup(self) {
        self.gw.cleanup().await;
    }
}

fn mail(from: &str, to: &str, subject: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{}@example.com>\r\n{extra_headers}Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n",
        uuid::Uuid::new_v4().simple()
    )
    .into_bytes()
}

const PDF: &[u8] = b"%PDF-1.4\n% not really a pdf\n";

fn mail_with_attachment(message_id: &str) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(PDF);
    format!(
        "From: Ann Customer <Ann@Customer.test>\r\nTo: support@acme.test\r\nCc: carl@partner.test\r\n\
         Subject: Printer on fire\r\nMessage-ID: <{message_id}>\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nIt is on fire.\r\n\
         --b1\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n\
         Content-Disposition: attachment; filename=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         {b64}\r\n--b1--\r\n"
    )
    .into_bytes()
}

/// Ids of the seeded world.
struct Seeded {
    /// Ann's ticket in support: attachment, a CC reply, an agent's note; assigned to the agent.
    fire: i64,
    /// Bob's ticket in sales.
    sales: i64,
    /// A spam ticket (upstream verdict) in support.
    spam: i64,
    /// A Globex ticket.
    globex_ticket: i64,
    ann: i64,
    bob: i64,
    support: i64,
    sales_inbox: i64,
    agent: i64,
    /// An open quarantine entry of Acme.
    quarantined: i64,
}

fn created(o: Outcome) -> i64 {
    match o {
        Outcome::Created { ticket_id, .. } => ticket_id,
        other => panic!("expected a new ticket, got {other:?}"),
    }
}

async fn seed(api: &Api) -> Seeded {
    let fire = created(
        api.ingest(
            mail_with_attachment("fire-1@customer.test"),
            "support@acme.test",
        )
        .await,
    );
    // A reply from the CC'd partner, then the agent's answer by mail: both thread by In-Reply-To.
    let reply = mail(
        "Carl <carl@partner.test>",
        "support@acme.test",
        "Re: Printer on fire",
        "In-Reply-To: <fire-1@customer.test>\r\n",
        "Still burning.",
    );
    assert!(matches!(
        api.ingest(reply, "support@acme.test").await,
        Outcome::Appended { .. }
    ));
    let agent_mail = mail(
        "Alice Agent <agent@acme.test>",
        "support@acme.test",
        "Re: Printer on fire",
        "In-Reply-To: <fire-1@customer.test>\r\n",
        "Internal: on our way.",
    );
    assert!(matches!(
        api.ingest(agent_mail, "support@acme.test").await,
        Outcome::Appended { .. }
    ));
    let sales = created(
        api.ingest(
            mail(
                "Bob <bob@buyer.test>",
                "sales@acme.test",
                "Quote please",
                "",
                "How much?",
            ),
            "sales@acme.test",
        )
        .await,
    );
    let spam = created(
        api.ingest(
            mail(
                "Spammer <win@lottery.test>",
                "support@acme.test",
                "You won",
                "X-Spam-Flag: YES\r\n",
                "Claim now.",
            ),
            "support@acme.test",
        )
        .await,
    );
    let globex_ticket = created(
        api.ingest(
            mail(
                "Gina <gina@client.test>",
                "help@globex.test",
                "Globex question",
                "",
                "Hi Globex.",
            ),
            "help@globex.test",
        )
        .await,
    );

    let mut tx = api.gw.store.begin().await.expect("begin");
    let ann = tickets::customer_by_email(&mut tx, api.acme, "ann@customer.test")
        .await
        .expect("ann")
        .expect("ann exists")
        .id;
    let bob = tickets::customer_by_email(&mut tx, api.acme, "bob@buyer.test")
        .await
        .expect("bob")
        .expect("bob exists")
        .id;
    let inboxes = orgs::list_inboxes(&mut tx, api.acme)
        .await
        .expect("inboxes");
    let inbox = |p: &str| inboxes.iter().find(|i| i.email_prefix == p).expect(p).id;
    let (support, sales_inbox) = (inbox("support"), inbox("sales"));
    let agent = orgs::agent_by_email(&mut tx, api.acme, "agent@acme.test")
        .await
        .expect("agent")
        .expect("agent exists")
        .id;
    let quarantined = quarantine::add(
        &mut tx,
        Some(api.acme),
        "support@acme.test",
        "smtp",
        &mail(
            "Dora <dora@customer.test>",
            "support@acme.test",
            "Was stuck",
            "",
            "Hello again.",
        ),
        "a bug, since fixed",
    )
    .await
    .expect("quarantine");
    tx.commit().await.expect("commit");
    api.sql(
        "UPDATE tickets SET assignee_id = $1 WHERE id = $2",
        agent,
        fire,
    )
    .await;
    Seeded {
        fire,
        sales,
        spam,
        globex_ticket,
        ann,
        bob,
        support,
        sales_inbox,
        agent,
        quarantined,
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("object").keys().cloned().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn ids(page: &Value) -> Vec<i64> {
    page["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|t| t["id"].as_i64().expect("id"))
        .collect()
}

// --- happy paths, both backends ------------------------------------------------------------

async fn read_endpoints(db: Db) {
    let api = Api::new(db).await;
    let s = seed(&api).await;
    let acme = api.acme;

    // Organization: the fields of the seed, never the webhook secret.
    let org = api.get_ok(&format!("/organizations/{acme}/")).await;
    assert_eq!(
        keys(&org),
        set(&[
            "id",
            "public_id",
            "name",
            "domains",
            "cc_email_routing",
            "auto_tagging",
            "reopen_window_days"
        ])
    );
    assert_eq!(org["id"], acme);
    assert_eq!(org["name"], "Acme");
    assert_eq!(org["domains"], json!(["acme-mail.test", "acme.test"]));
    assert_eq!(org["reopen_window_days"], 30);
    // Served without the trailing slash too.
    assert_eq!(api.get_ok(&format!("/organizations/{acme}")).await, org);

    // Inboxes.
    let inboxes = api.get_ok(&format!("/organizations/{acme}/inboxes/")).await;
    assert_eq!(inboxes["count"], 2);
    assert_eq!(inboxes["next"], Value::Null);
    assert_eq!(inboxes["previous"], Value::Null);
    assert_eq!(
        inboxes["results"][0],
        json!({"id": s.support, "name": "Support", "email_prefix": "support", "auto_acknowledge": false})
    );

    // Customers: list, exact case-insensitive email filter, detail.
    let customers = api
        .get_ok(&format!("/organizations/{acme}/customers/"))
        .await;
    assert_eq!(customers["count"], 4, "{customers}"); // ann, carl, bob, the spammer
    let found = api
        .get_ok(&format!(
            "/organizations/{acme}/customers/?email=ANN%40customer.TEST"
        ))
        .await;
    assert_eq!(found["count"], 1);
    assert_eq!(
        found["results"][0],
        json!({"id": s.ann, "name": "Ann Customer", "email": "Ann@Customer.test", "is_spam": false})
    );
    let none = api
        .get_ok(&format!(
            "/organizations/{acme}/customers/?email=ann@customer"
        ))
        .await;
    assert_eq!(none["count"], 0);
    let bob = api
        .get_ok(&format!("/organizations/{acme}/customers/{}/", s.bob))
        .await;
    assert_eq!(bob["email"], "bob@buyer.test");
    assert_eq!(
        api.get_ok(&format!("/organizations/{acme}/customers/{}", s.bob))
            .await,
        bob
    );

    // Tickets: newest first, spam left out.
    let list = api.get_ok(&format!("/organizations/{acme}/tickets/")).await;
    assert_eq!(list["count"], 2);
    assert_eq!(ids(&list), vec![s.sales, s.fire]);

    // The ticket object, exactly the seed's fields.
    let t = api
        .get_ok(&format!("/organizations/{acme}/tickets/{}/", s.fire))
        .await;
    assert_eq!(
        keys(&t),
        set(&[
            "id",
            "inbox",
            "customer",
            "assignee",
            "public_id",
            "subject",
            "summary",
            "customer_visible_reply_count",
            "status",
            "classification",
            "waiting_on",
            "created_at",
            "updated_at",
            "csat_response",
            "attachments",
            "tags",
            "origin",
            "has_attachments",
            "created_by",
            "external_recipient_emails",
            "description",
            "description_html",
            "sentiment_analysis_class",
            "language",
            "is_spam"
        ])
    );
    assert_eq!(t["id"], s.fire);
    assert_eq!(t["public_id"], 1);
    assert_eq!(
        t["inbox"],
        json!({"id": s.support, "name": "Support", "email_prefix": "support"})
    );
    assert_eq!(t["customer"]["id"], s.ann);
    assert_eq!(
        t["assignee"],
        json!({"id": s.agent, "email": "agent@acme.test", "name": "Alice Agent"})
    );
    assert_eq!(t["subject"], "Printer on fire");
    assert_eq!(t["status"], "created");
    assert_eq!(t["classification"], "");
    assert_eq!(t["waiting_on"], "associate");
    assert_eq!(t["origin"], "email");
    assert_eq!(t["is_spam"], false);
    assert_eq!(t["has_attachments"], true);
    assert_eq!(t["csat_response"], Value::Null);
    assert_eq!(t["tags"], json!([]));
    assert_eq!(t["sentiment_analysis_class"], "pending");
    assert_eq!(t["created_by"], json!({"role": "customer", "user": null}));
    assert_eq!(
        t["description"].as_str().map(str::trim),
        Some("It is on fire.")
    );
    assert!(
        t["external_recipient_emails"]
            .as_array()
            .expect("list")
            .iter()
            .any(|a| a == "carl@partner.test"),
        "{t}"
    );
    let created_at = t["created_at"].as_str().expect("created_at");
    assert!(
        created_at.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(created_at).is_ok(),
        "{created_at}"
    );
    let attachment = &t["attachments"][0];
    assert_eq!(keys(attachment), set(&["id", "name", "download_url"]));
    assert_eq!(attachment["name"], "report.pdf");
    let attachment_id = attachment["id"].as_str().expect("id").to_string();
    assert_eq!(
        uuid::Uuid::parse_str(&attachment_id).map(|u| u.get_version_num()),
        Ok(7)
    );
    let url = format!("{PUBLIC_URL}/organizations/{acme}/attachments/{attachment_id}/download/");
    assert_eq!(attachment["download_url"], url.as_str());
    // The list shows the same objects as the detail.
    assert_eq!(list["results"][1], t);

    // Download the attachment at its download_url.
    let d = api.get(url.strip_prefix(PUBLIC_URL).expect("path")).await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(d.body, PDF);
    assert_eq!(d.header("content-type"), "application/pdf");
    assert!(
        d.header("content-disposition")
            .starts_with("attachment; filename=\"report.pdf\""),
        "{}",
        d.header("content-disposition")
    );
    assert_eq!(d.header("x-content-type-options"), "nosniff");

    // Messages: oldest first, sender shaped by role.
    let msgs = api
        .get_ok(&format!(
            "/organizations/{acme}/tickets/{}/messages/",
            s.fire
        ))
        .await;
    assert_eq!(msgs["count"], 3);
    let m = msgs["results"].as_array().expect("results");
    assert_eq!(
        keys(&m[0]),
        set(&[
            "id",
            "role",
            "author",
            "sender",
            "next_assignee",
            "created_at",
            "updated_at",
            "attachments",
            "content",
            "content_html",
            "is_visible_to_customer",
            "external_recipient_emails",
            "delivery_state"
        ])
    );
    assert!(m[0]["id"].as_i64() < m[1]["id"].as_i64() && m[1]["id"].as_i64() < m[2]["id"].as_i64());
    assert_eq!(m[0]["role"], "customer");
    assert_eq!(
        m[0]["sender"],
        json!({"email": "Ann@Customer.test", "name": "Ann Customer", "customer_id": s.ann})
    );
    assert_eq!(m[0]["author"], Value::Null);
    assert_eq!(m[0]["next_assignee"], Value::Null);
    assert_eq!(m[0]["is_visible_to_customer"], true);
    assert_eq!(m[0]["attachments"][0]["id"], attachment_id.as_str());
    assert_eq!(m[0]["delivery_state"], Value::Null);
    assert_eq!(m[1]["role"], "cc");
    assert_eq!(m[1]["sender"]["email"], "carl@partner.test");
    assert!(m[1]["sender"]["customer_id"].as_i64().is_some());
    assert_eq!(m[1]["attachments"], json!([]));
    assert_eq!(m[2]["role"], "associate");
    assert_eq!(
        m[2]["sender"],
        json!({"email": "agent@acme.test", "name": "Alice Agent", "user_id": s.agent})
    );
    assert_eq!(
        m[2]["author"],
        json!({"id": s.agent, "email": "agent@acme.test", "name": "Alice Agent"})
    );
    assert_eq!(m[2]["is_visible_to_customer"], false);
    assert_eq!(m[2]["external_recipient_emails"], json!([]));

    // Ticket statuses with labels.
    let statuses = api
        .get_ok(&format!("/organizations/{acme}/ticket-statuses/"))
        .await;
    assert_eq!(statuses["count"], 8);
    assert_eq!(
        statuses["results"][3],
        json!({"value": "pending_associate", "label": "Pending (associate)"})
    );

    // Quarantine: the open entry, without its raw bytes.
    let q = api
        .get_ok(&format!("/organizations/{acme}/quarantine/"))
        .await;
    assert_eq!(q["count"], 1);
    assert_eq!(q["results"][0]["id"], s.quarantined);
    assert_eq!(q["results"][0]["reason"], "a bug, since fixed");
    assert_eq!(q["results"][0]["recipient"], "support@acme.test");
    assert!(q["results"][0]["size"].as_i64() > Some(50));
    assert!(q["results"][0].get("raw").is_none());

    api.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_endpoints_sqlite() {
    read_endpoints(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_endpoints_postgres() {
    read_endpoints(Db::Postgres).await;
}

async fn write_endpoints(db: Db) {
    let api = Api::new(db).await;
    let s = seed(&api).await;
    let acme = api.acme;
    let token = api.acme_token.clone();

    // PATCH a customer.
    let r = api
        .patch(
            &format!("/organizations/{acme}/customers/{}/", s.bob),
            &token,
            r#"{"name": "Robert", "is_spam": true}"#,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        r.json(),
        json!({"id": s.bob, "name": "Robert", "email": "bob@buyer.test", "is_spam": true})
    );
    let again = api
        .get_ok(&format!("/organizations/{acme}/customers/{}/", s.bob))
        .await;
    assert_eq!(again["name"], "Robert");
    assert_eq!(again["is_spam"], true);
    // Without the trailing slash, echoing the read-only fields unchanged.
    let r = api
        .patch(
            &format!("/organizations/{acme}/customers/{}", s.bob),
            &token,
            &json!({"id": s.bob, "email": "bob@buyer.test", "is_spam": false}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["is_spam"], false);

    // Unassign: the assignee goes, nothing else changes.
    let before = api
        .get_ok(&format!("/organizations/{acme}/tickets/{}/", s.fire))
        .await;
    assert!(before["assignee"].is_object());
    let r = api
        .post(
            &format!("/organizations/{acme}/tickets/{}/unassign/", s.fire),
            &token,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let after = r.json();
    assert_eq!(after["assignee"], Value::Null);
    for field in [
        "status",
        "waiting_on",
        "classification",
        "subject",
        "is_spam",
        "customer",
        "inbox",
    ] {
        assert_eq!(after[field], before[field], "{field} changed");
    }
    assert_eq!(
        api.get_ok(&format!("/organizations/{acme}/tickets/{}/", s.fire))
            .await["assignee"],
        Value::Null
    );
    // Again: still fine, still unassigned.
    let r = api
        .post(
            &format!("/organizations/{acme}/tickets/{}/unassign", s.fire),
            &token,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // Upload, then download at the returned URL.
    let r = api
        .upload(acme, &token, "file", "../notes v1.txt", b"hello attachment")
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let up = r.json();
    assert_eq!(
        keys(&up),
        set(&["id", "name", "content_type", "size", "download_url"])
    );
    assert_eq!(up["name"], "notes v1.txt");
    assert_eq!(up["content_type"], "text/plain");
    assert_eq!(up["size"], 16);
    let id = up["id"].as_str().expect("id");
    assert_eq!(
        uuid::Uuid::parse_str(id).map(|u| u.get_version_num()),
        Ok(7)
    );
    let url = up["download_url"].as_str().expect("url");
    assert_eq!(
        url,
        format!("{PUBLIC_URL}/organizations/{acme}/attachments/{id}/download/")
    );
    let d = api.get(url.strip_prefix(PUBLIC_URL).expect("path")).await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(d.body, b"hello attachment");
    assert_eq!(d.header("content-type"), "text/plain");
    assert_eq!(
        d.header("content-disposition"),
        "attachment; filename=\"notes v1.txt\"; filename*=UTF-8''notes%20v1.txt"
    );

    // Quarantine: re-run the entry; it becomes a ticket and leaves the list.
    let r = api
        .post(
            &format!(
                "/organizations/{acme}/quarantine/{}/reprocess/",
                s.quarantined
            ),
            &token,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let out = r.json();
    assert_eq!(out["outcome"], "created");
    assert_eq!(out["resolved"], true);
    let new_ticket = out["ticket_id"].as_i64().expect("ticket id");
    let t = api
        .get_ok(&format!("/organizations/{acme}/tickets/{new_ticket}/"))
        .await;
    assert_eq!(t["subject"], "Was stuck");
    assert_eq!(
        api.get_ok(&format!("/organizations/{acme}/quarantine/"))
            .await["count"],
        0
    );
    // Resolved: no longer there to re-run.
    let r = api
        .post(
            &format!(
                "/organizations/{acme}/quarantine/{}/reprocess/",
                s.quarantined
            ),
            &token,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    api.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_endpoints_sqlite() {
    write_endpoints(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_endpoints_postgres() {
    write_endpoints(Db::Postgres).await;
}

// --- authentication and isolation ---------------------------------------------------------

/// An endpoint call: method, path, JSON body, and whether the path names an Acme object.
type Endpoint = (&'static str, String, Option<String>, bool);

/// Every endpoint of the read side, under organization `org`, on Acme's objects.
fn endpoints(org: i64, s: &Seeded, attachment: &str) -> Vec<Endpoint> {
    let patch = Some(r#"{"name": "Mallory"}"#.to_string());
    let base = format!("/organizations/{org}");
    vec![
        ("GET", format!("{base}/"), None, false),
        ("GET", format!("{base}/inboxes/"), None, false),
        ("GET", format!("{base}/customers/"), None, false),
        ("GET", format!("{base}/customers/{}/", s.ann), None, true),
        ("PATCH", format!("{base}/customers/{}/", s.ann), patch, true),
        ("GET", format!("{base}/tickets/"), None, false),
        ("GET", format!("{base}/tickets/{}/", s.fire), None, true),
        (
            "POST",
            format!("{base}/tickets/{}/unassign/", s.fire),
            None,
            true,
        ),
        ("GET", format!("{base}/ticket-statuses/"), None, false),
        (
            "POST",
            format!("{base}/tickets/"),
            Some(format!(
                r#"{{"inbox_id": {}, "customer_email": "x@customer.test", "subject": "s"}}"#,
                s.support
            )),
            false,
        ),
        (
            "POST",
            format!("{base}/tickets/{}/messages/", s.fire),
            Some(r#"{"content": "hello", "is_visible_to_customer": false}"#.to_string()),
            true,
        ),
        (
            "GET",
            format!("{base}/tickets/{}/messages/", s.fire),
            None,
            true,
        ),
        (
            "GET",
            format!("{base}/attachments/{attachment}/download/"),
            None,
            true,
        ),
        ("GET", format!("{base}/quarantine/"), None, false),
        (
            "POST",
            format!("{base}/quarantine/{}/reprocess/", s.quarantined),
            None,
            true,
        ),
    ]
}

async fn attachment_of(api: &Api, ticket: i64) -> String {
    api.get_ok(&format!("/organizations/{}/tickets/{ticket}/", api.acme))
        .await["attachments"][0]["id"]
        .as_str()
        .expect("attachment")
        .to_string()
}

async fn isolation(db: Db) {
    let api = Api::new(db).await;
    let s = seed(&api).await;
    let (acme, globex) = (api.acme, api.globex);
    let attachment = attachment_of(&api, s.fire).await;
    let globex_token = api.globex_token.clone();

    // Acme's token on Acme's objects works (the baseline of the matrix).
    for (method, path, body, _) in endpoints(acme, &s, &attachment) {
        if method != "GET" {
            continue; // the writes are checked unchanged below
        }
        let r = api
            .call(
                method,
                &path,
                Some(&api.acme_token),
                None,
                body.unwrap_or_default().into_bytes(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{method} {path}");
    }

    // Globex's token: on Acme's organization path, and on Acme's objects under its own.
    let upload_bytes = b"x".to_vec();
    for org in [acme, globex] {
        for (method, path, body, names_object) in endpoints(org, &s, &attachment) {
            if org == globex && !names_object {
                continue; // Globex's own lists: checked for leaks below
            }
            for p in [path.clone(), path.trim_end_matches('/').to_string()] {
                let ct = body.as_ref().map(|_| "application/json");
                let r = api
                    .call(
                        method,
                        &p,
                        Some(&globex_token),
                        ct,
                        body.clone().unwrap_or_default().into_bytes(),
                    )
                    .await;
                assert_eq!(
                    r.status,
                    StatusCode::NOT_FOUND,
                    "{method} {p} with Globex's token: {}",
                    String::from_utf8_lossy(&r.body)
                );
                assert_eq!(r.json(), json!({"detail": "Not found."}));
            }
        }
        // The upload on Acme's path.
        if org == acme {
            let r = api
                .upload(acme, &globex_token, "file", "a.txt", &upload_bytes)
                .await;
            assert_eq!(r.status, StatusCode::NOT_FOUND);
        }
    }

    // Globex's own lists show nothing of Acme's, filters on Acme's ids included.
    let g = |path: String| {
        let api = &api;
        let token = globex_token.clone();
        async move {
            let r = api.call("GET", &path, Some(&token), None, Vec::new()).await;
            assert_eq!(r.status, StatusCode::OK, "{path}");
            r.json()
        }
    };
    let tickets = g(format!("/organizations/{globex}/tickets/")).await;
    assert_eq!(ids(&tickets), vec![s.globex_ticket]);
    for filter in [
        format!("inbox={}", s.support),
        format!("customer={}", s.ann),
        "is_spam=true".to_string(),
    ] {
        let t = g(format!("/organizations/{globex}/tickets/?{filter}")).await;
        assert_eq!(t["count"], 0, "{filter}: {t}");
    }
    let customers = g(format!(
        "/organizations/{globex}/customers/?email=ann@customer.test"
    ))
    .await;
    assert_eq!(customers["count"], 0);
    let customers = g(format!("/organizations/{globex}/customers/")).await;
    assert_eq!(customers["count"], 1);
    let inboxes = g(format!("/organizations/{globex}/inboxes/")).await;
    assert_eq!(inboxes["count"], 1);
    let quarantine = g(format!("/organizations/{globex}/quarantine/")).await;
    assert_eq!(quarantine["count"], 0);
    let org = g(format!("/organizations/{globex}/")).await;
    assert_eq!(org["name"], "Globex");

    // Nothing the refused writes asked for happened.
    let ann = api
        .get_ok(&format!("/organizations/{acme}/customers/{}/", s.ann))
        .await;
    assert_eq!(ann["name"], "Ann Customer");
    let fire = api
        .get_ok(&format!("/organizations/{acme}/tickets/{}/", s.fire))
        .await;
    assert_eq!(fire["assignee"]["id"], s.agent);
    assert_eq!(
        api.get_ok(&format!("/organizations/{acme}/quarantine/"))
            .await["count"],
        1
    );
    // And an Acme token cannot reach Globex's ticket either.
    let r = api
        .get(&format!(
            "/organizations/{acme}/tickets/{}/",
            s.globex_ticket
        ))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api
        .get(&format!(
            "/organizations/{acme}/tickets/{}/messages/",
            s.globex_ticket
        ))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    api.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_matrix_sqlite() {
    isolation(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_matrix_postgres() {
    isolation(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_a_bad_one_is_401() {
    let api = Api::new(Db::Sqlite).await;
    let s = seed(&api).await;
    let attachment = attachment_of(&api, s.fire).await;
    let mut checked = 0;
    for (method, path, body, _) in endpoints(api.acme, &s, &attachment) {
        for token in [None, Some("idk_not-a-real-token"), Some(" ")] {
            let r = api
                .call(
                    method,
                    &path,
                    token,
                    body.as_ref().map(|_| "application/json"),
                    body.clone().unwrap_or_default().into_bytes(),
                )
                .await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert!(r.json()["detail"].is_string());
            checked += 1;
        }
    }
    for token in [None, Some("idk_bad")] {
        let r = api
            .upload(api.acme, token.unwrap_or(""), "file", "a.txt", b"x")
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(checked, endpoints(api.acme, &s, &attachment).len() * 3);
    // A bad token on an organization that does not exist is 401 too (nothing is revealed).
    let r = api
        .call(
            "GET",
            "/organizations/999999/",
            Some("idk_bad"),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Nothing changed.
    let ann = api
        .get_ok(&format!("/organizations/{}/customers/{}/", api.acme, s.ann))
        .await;
    assert_eq!(ann["name"], "Ann Customer");
    api.cleanup().await;
}

// --- pagination and filters ---------------------------------------------------------------

async fn pagination(db: Db) {
    let api = Api::new(db).await;
    let acme = api.acme;
    // Five tickets from five senders, in one batch.
    let batch: Vec<Delivery> = (1..=5)
        .map(|i| Delivery {
            raw: std::sync::Arc::from(mail(
                &format!("User {i} <user{i}@many.test>"),
                "support@acme.test",
                &format!("Ticket {i}"),
                "",
                "body",
            )),
            envelope: Envelope::to("support@acme.test", Source::Replay),
        })
        .collect();
    for r in api.gw.pipeline.ingest_batch(batch).await {
        assert_eq!(r.expect("ingest").kind(), "created");
    }
    let base = format!("/organizations/{acme}/tickets/");
    let p1 = api.get_ok(&format!("{base}?page_size=2")).await;
    assert_eq!(p1["count"], 5);
    assert_eq!(p1["results"].as_array().map(Vec::len), Some(2));
    assert_eq!(p1["previous"], Value::Null);
    assert_eq!(
        p1["next"],
        format!("{PUBLIC_URL}{base}?page=2&page_size=2").as_str()
    );
    let p2 = api.get_ok(&format!("{base}?page_size=2&page=2")).await;
    assert_eq!(
        p2["previous"],
        format!("{PUBLIC_URL}{base}?page_size=2").as_str()
    );
    assert_eq!(
        p2["next"],
        format!("{PUBLIC_URL}{base}?page=3&page_size=2").as_str()
    );
    let p3 = api.get_ok(&format!("{base}?page_size=2&page=3")).await;
    assert_eq!(p3["next"], Value::Null);
    assert_eq!(p3["results"].as_array().map(Vec::len), Some(1));
    // Newest first, no overlaps, nothing missing; `next` links are followable.
    let mut all: Vec<i64> = Vec::new();
    let mut next = Some(format!("{base}?page_size=2"));
    while let Some(url) = next {
        let page = api.get_ok(url.trim_start_matches(PUBLIC_URL)).await;
        all.extend(ids(&page));
        next = page["next"].as_str().map(str::to_string);
    }
    let mut sorted = all.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(all, sorted);
    assert_eq!(all.len(), 5);
    // `last`, and filters kept in the links.
    let last = api
        .get_ok(&format!("{base}?status=created&page_size=2&page=last"))
        .await;
    assert_eq!(last["results"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        last["previous"],
        format!("{PUBLIC_URL}{base}?page=2&page_size=2&status=created").as_str()
    );

    // Past the end: 404 like DRF. The first page of an empty list exists.
    let r = api.get(&format!("{base}?page=4&page_size=2")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json(), json!({"detail": "Invalid page."}));
    let empty = api.get_ok(&format!("{base}?status=closed")).await;
    assert_eq!(
        empty,
        json!({"count": 0, "next": null, "previous": null, "results": []})
    );

    // Bad values: 400 naming the parameter.
    for (query, field) in [
        ("page=abc", "page"),
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page_size=0", "page_size"),
        ("page_size=ten", "page_size"),
    ] {
        let r = api.get(&format!("{base}?{query}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(r.json()[field].is_array(), "{query}: {}", r.json());
    }
    let r = api
        .get(&format!("/organizations/{acme}/customers/?page=x"))
        .await;
    assert!(r.json()["page"].is_array());

    // page_size is capped at 100.
    let mut tx = api.gw.store.begin().await.expect("begin");
    for i in 0..105 {
        let email = format!("c{i}@bulk.test");
        tickets::find_or_create_customer(&mut tx, acme, &email, &email, "")
            .await
            .expect("customer");
    }
    tx.commit().await.expect("commit");
    let customers = api
        .get_ok(&format!("/organizations/{acme}/customers/?page_size=1000"))
        .await;
    assert_eq!(customers["count"], 110);
    assert_eq!(customers["results"].as_array().map(Vec::len), Some(100));
    assert_eq!(
        customers["next"],
        format!("{PUBLIC_URL}/organizations/{acme}/customers/?page=2&page_size=1000").as_str()
    );
    let default = api
        .get_ok(&format!("/organizations/{acme}/customers/"))
        .await;
    assert_eq!(default["results"].as_array().map(Vec::len), Some(25));
    // Customers by id, oldest first.
    let cids = ids(&default);
    assert!(cids.windows(2).all(|w| w[0] < w[1]));

    api.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_sqlite() {
    pagination(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_postgres() {
    pagination(Db::Postgres).await;
}

async fn filters(db: Db) {
    let api = Api::new(db).await;
    let s = seed(&api).await;
    let base = format!("/organizations/{}/tickets/", api.acme);
    // Every list's `count` (kept by triggers for most filters) agrees with its results.
    let list = |q: String| {
        let api = &api;
        let base = base.clone();
        async move {
            let page = api.get_ok(&format!("{base}?{q}")).await;
            let found = ids(&page);
            assert_eq!(page["count"], found.len(), "{q}: {page}");
            found
        }
    };
    // Spam is excluded by default; is_spam=true lists only spam.
    assert_eq!(list(String::new()).await, vec![s.sales, s.fire]);
    assert_eq!(list("is_spam=false".into()).await, vec![s.sales, s.fire]);
    assert_eq!(list("is_spam=true".into()).await, vec![s.spam]);
    assert_eq!(list("is_spam=True".into()).await, vec![s.spam]);
    // The spam ticket itself is still readable by id.
    let spam = api.get_ok(&format!("{base}{}/", s.spam)).await;
    assert_eq!(spam["is_spam"], true);

    assert_eq!(
        list(format!("inbox={}", s.sales_inbox)).await,
        vec![s.sales]
    );
    assert_eq!(list(format!("inbox={}", s.support)).await, vec![s.fire]);
    assert_eq!(
        list(format!("inbox={}&is_spam=true", s.support)).await,
        vec![s.spam]
    );
    assert_eq!(list(format!("customer={}", s.ann)).await, vec![s.fire]);
    assert_eq!(list(format!("customer={}", s.bob)).await, vec![s.sales]);
    assert_eq!(list("status=created".into()).await, vec![s.sales, s.fire]);
    assert_eq!(list("status=closed".into()).await, Vec::<i64>::new());
    // Empty values mean no filter.
    assert_eq!(list("status=&inbox=".into()).await, vec![s.sales, s.fire]);
    assert_eq!(list("inbox=999999".into()).await, Vec::<i64>::new());

    // State changes move tickets between lists, counts included.
    api.sql(
        "UPDATE tickets SET status = 'closed' WHERE organization_id = $1 AND id = $2",
        api.acme,
        s.fire,
    )
    .await;
    api.sql(
        "UPDATE tickets SET is_spam = TRUE WHERE organization_id = $1 AND id = $2",
        api.acme,
        s.sales,
    )
    .await;
    assert_eq!(list("status=closed".into()).await, vec![s.fire]);
    assert_eq!(list("status=created".into()).await, Vec::<i64>::new());
    assert_eq!(list(String::new()).await, vec![s.fire]);
    assert_eq!(list("is_spam=true".into()).await, vec![s.spam, s.sales]);
    assert_eq!(
        list(format!("is_spam=true&inbox={}", s.sales_inbox)).await,
        vec![s.sales]
    );
    assert_eq!(
        list(format!("is_spam=true&customer={}", s.bob)).await,
        vec![s.sales]
    );

    for (query, field) in [
        ("status=open", "status"),
        ("is_spam=maybe", "is_spam"),
        ("inbox=support", "inbox"),
        ("customer=1.5", "customer"),
    ] {
        let r = api.get(&format!("{base}?{query}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}");
        let body = r.json();
        assert!(body[field][0].is_string(), "{query}: {body}");
    }
    api.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_sqlite() {
    filters(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_postgres() {
    filters(Db::Postgres).await;
}

// --- bad input ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_customer_errors_name_the_field() {
    let api = Api::new(Db::Sqlite).await;
    let s = seed(&api).await;
    let path = format!("/organizations/{}/customers/{}/", api.acme, s.ann);
    let token = api.acme_token.clone();
    let long = format!(r#"{{"name": "{}"}}"#, "x".repeat(256));
    for (body, field) in [
        (r#"{"is_spam": "yes"}"#, "is_spam"),
        (r#"{"is_spam": null}"#, "is_spam"),
        (r#"{"is_spam": 1}"#, "is_spam"),
        (r#"{"name": 42}"#, "name"),
        (r#"{"name": null}"#, "name"),
        (long.as_str(), "name"),
        (r#"{"colour": "red"}"#, "colour"),
        (r#"{"email": "other@x.test"}"#, "email"),
        (r#"{"id": 12345}"#, "id"),
        (r#"["name"]"#, "non_field_errors"),
        (r#"{"name": "#, "non_field_errors"),
    ] {
        let r = api.patch(&path, &token, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let json = r.json();
        assert!(json[field][0].is_string(), "{body}: {json}");
    }
    // Nothing changed; 255 characters is fine; an empty body changes nothing.
    let ann = api.get_ok(&path).await;
    assert_eq!(ann["name"], "Ann Customer");
    assert_eq!(ann["is_spam"], false);
    let ok = format!(r#"{{"name": "{}"}}"#, "é".repeat(255));
    assert_eq!(api.patch(&path, &token, &ok).await.status, StatusCode::OK);
    let r = api.patch(&path, &token, "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["name"], "é".repeat(255));
    // Unknown paths and methods answer JSON too.
    let r = api.get("/nothing/here/").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json(), json!({"detail": "Not found."}));
    let r = api
        .call("DELETE", &path, Some(&token), None, Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        r.json(),
        json!({"detail": "Method \"DELETE\" not allowed."})
    );
    // A non-numeric or unknown id is 404.
    for p in [
        format!("/organizations/{}/customers/abc/", api.acme),
        format!("/organizations/{}/customers/999999/", api.acme),
        format!("/organizations/{}/tickets/abc/", api.acme),
        format!(
            "/organizations/{}/attachments/not-a-uuid/download/",
            api.acme
        ),
        "/organizations/abc/tickets/".to_string(),
    ] {
        assert_eq!(api.get(&p).await.status, StatusCode::NOT_FOUND, "{p}");
    }
    api.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_limits_and_bad_uploads() {
    let api = Api::with_upload_limit(Db::Sqlite, 1024).await;
    let (acme, token) = (api.acme, api.acme_token.clone());
    let r = api
        .upload(acme, &token, "file", "big.bin", &[b'a'; 1025])
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.json()["file"][0].is_string(), "{}", r.json());
    // Far over the limit: refused by the body limit, still naming the field.
    let r = api
        .upload(acme, &token, "file", "huge.bin", &vec![b'a'; 512 * 1024])
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.json()["file"][0].is_string(), "{}", r.json());
    // Exactly at the limit is fine.
    let r = api
        .upload(acme, &token, "file", "ok.bin", &[b'a'; 1024])
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // No `file` part, an empty file, not multipart at all.
    let r = api.upload(acme, &token, "document", "a.txt", b"x").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["file"][0].is_string());
    let r = api.upload(acme, &token, "file", "empty.txt", b"").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["file"][0].is_string());
    let r = api
        .call(
            "POST",
            &format!("/organizations/{acme}/attachments/"),
            Some(&token),
            Some("application/json"),
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["file"][0].is_string());
    // A name that is nothing but path gets a neutral one.
    let r = api.upload(acme, &token, "file", "../..", b"abc").await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["name"], "attachment");
    api.cleanup().await;
}

// --- the OpenAPI document -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_path() {
    let api = Api::new(Db::Sqlite).await;
    // No token needed.
    let r = api
        .call("GET", "/openapi.json", None, None, Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), "application/json");
    let doc = r.json();
    let version = doc["openapi"].as_str().expect("openapi");
    assert!(version.starts_with("3."), "{version}");
    let paths = doc["paths"].as_object().expect("paths");
    // Every path of SPEC 5.4 served so far, with its methods.
    for (path, methods) in [
        ("/organizations/{org_id}/", &["get"][..]),
        ("/organizations/{org_id}/inboxes/", &["get"]),
        ("/organizations/{org_id}/customers/", &["get"]),
        ("/organizations/{org_id}/customers/{id}/", &["get", "patch"]),
        ("/organizations/{org_id}/tickets/", &["get"]),
        ("/organizations/{org_id}/tickets/{pk}/", &["get"]),
        ("/organizations/{org_id}/tickets/{pk}/unassign/", &["post"]),
        ("/organizations/{org_id}/ticket-statuses/", &["get"]),
        (
            "/organizations/{org_id}/tickets/{ticket_id}/messages/",
            &["get"],
        ),
        ("/organizations/{org_id}/attachments/", &["post"]),
        (
            "/organizations/{org_id}/attachments/{id}/download/",
            &["get"],
        ),
        ("/organizations/{org_id}/quarantine/", &["get"]),
        (
            "/organizations/{org_id}/quarantine/{id}/reprocess/",
            &["post"],
        ),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
    ] {
        let item = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing from {:?}", paths.keys()));
        for m in methods {
            let op = &item[*m];
            assert!(op.is_object(), "{m} {path}");
            if path.starts_with("/organizations/") {
                assert_eq!(
                    op["security"],
                    json!([{"initdesk_token": []}]),
                    "{m} {path}"
                );
            }
        }
    }
    // A valid document: every response has its (required) description, every operation an id.
    for (path, item) in paths {
        for (m, op) in item.as_object().expect("item") {
            assert!(op["operationId"].is_string(), "{m} {path}: operationId");
            for (code, response) in op["responses"].as_object().expect("responses") {
                assert!(
                    response["description"].is_string(),
                    "{m} {path}: response {code} has no description"
                );
            }
        }
    }
    // Every documented path is served (the router and the document agree).
    for (path, item) in paths {
        let concrete = path
            .replace("{org_id}", &api.acme.to_string())
            .replace("{id}", "1")
            .replace("{pk}", "1")
            .replace("{ticket_id}", "1");
        for m in item.as_object().expect("item").keys() {
            // Without a token an organization route answers 401; an unknown one 404.
            let r = api
                .call(&m.to_uppercase(), &concrete, None, None, Vec::new())
                .await;
            if path.starts_with("/organizations/") {
                assert_eq!(
                    r.status,
                    StatusCode::UNAUTHORIZED,
                    "{m} {path} is not routed"
                );
            } else {
                assert!(
                    r.status != StatusCode::NOT_FOUND && r.status != StatusCode::METHOD_NOT_ALLOWED,
                    "{m} {path} is not routed"
                );
            }
        }
    }
    let scheme = &doc["components"]["securitySchemes"]["initdesk_token"];
    assert_eq!(scheme["type"], "apiKey");
    assert_eq!(scheme["in"], "header");
    assert_eq!(scheme["name"], "X-Initdesk-Token");
    let ticket = &doc["components"]["schemas"]["TicketOut"]["properties"];
    for field in [
        "inbox",
        "customer",
        "assignee",
        "csat_response",
        "created_by",
        "is_spam",
    ] {
        assert!(ticket.get(field).is_some(), "TicketOut.{field}");
    }
    api.cleanup().await;
}

async fn post_json(api: &Api, path: &str, body: Value) -> Resp {
    api.call(
        "POST",
        path,
        Some(&api.acme_token),
        Some("application/json"),
        body.to_string().into_bytes(),
    )
    .await
}

/// Agent replies and notes (SPEC 3, 4): workflow, CC snapshots, uploads, errors naming the
/// field, and tickets opened through the API.
async fn agent_writes(db: Db) {
    let api = Api::new(db).await;
    let s = seed(&api).await;
    let org = api.acme;
    let messages = format!("/organizations/{org}/tickets/{}/messages/", s.fire);
    let ticket = |id: i64| format!("/organizations/{org}/tickets/{id}/");

    // Errors name the field.
    for (body, field) in [
        (json!({"content": ""}), "content"),
        (json!({"content": "x", "colour": "red"}), "colour"),
        (
            json!({"content": "x", "is_visible_to_customer": "yes"}),
            "is_visible_to_customer",
        ),
        (
            json!({"content": "x", "external_recipient_emails": ["not an address"]}),
            "external_recipient_emails",
        ),
        (
            json!({"content": "x", "next_assignee_id": 999_999}),
            "next_assignee_id",
        ),
        (
            json!({"content": "x", "next_action": "explode"}),
            "next_action",
        ),
        (
            json!({"content": "x", "attachment_ids": ["0190b5a0-0000-7000-8000-000000000000"]}),
            "attachment_ids",
        ),
    ] {
        let r = post_json(&api, &messages, body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            r.json().get(field).is_some(),
            "{body} should name {field}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }

    // A reply with an explicit CC list: the requester is kept; the ticket waits on the customer.
    let r = post_json(
        &api,
        &messages,
        json!({"content": "On it.", "external_recipient_emails": ["boss@customer.test"], "next_assignee_id": s.agent}),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let m = r.json();
    assert_eq!(m["role"], "associate");
    assert_eq!(m["is_visible_to_customer"], true);
    let snapshot: Vec<String> =
        serde_json::from_value(m["external_recipient_emails"].clone()).expect("list");
    assert!(
        snapshot.contains(&"boss@customer.test".to_string()),
        "{snapshot:?}"
    );
    assert_eq!(snapshot.len(), 2, "requester kept: {snapshot:?}");
    assert_eq!(m["next_assignee"]["id"], s.agent);
    let t = api.get_ok(&ticket(s.fire)).await;
    assert_eq!(t["status"], "active");
    assert_eq!(t["waiting_on"], "customer");
    assert_eq!(t["assignee"]["id"], s.agent);
    let replies_before = t["customer_visible_reply_count"].as_i64().expect("count");

    // Omitted and null copy the last visible message's snapshot.
    for body in [
        json!({"content": "Again."}),
        json!({"content": "Once more.", "external_recipient_emails": null}),
    ] {
        let r = post_json(&api, &messages, body).await;
        assert_eq!(r.status, StatusCode::CREATED);
        let copied: Vec<String> =
            serde_json::from_value(r.json()["external_recipient_emails"].clone()).expect("list");
        assert_eq!(copied, snapshot);
    }
    // An internal note stores an empty list whatever is sent, and sends nothing.
    let r = post_json(
        &api,
        &messages,
        json!({"content": "note to self", "is_visible_to_customer": false, "external_recipient_emails": ["x@customer.test"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["external_recipient_emails"], json!([]));
    assert_eq!(r.json()["is_visible_to_customer"], false);
    let t = api.get_ok(&ticket(s.fire)).await;
    assert_eq!(
        t["customer_visible_reply_count"].as_i64(),
        Some(replies_before + 2)
    );

    // An upload joins the reply; the same upload cannot be used twice.
    let up = api
        .upload(
            org,
            &api.acme_token.clone(),
            "file",
            "notes.txt",
            b"some notes",
        )
        .await;
    assert_eq!(
        up.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&up.body)
    );
    let upload_id = up.json()["id"].as_str().expect("id").to_string();
    let r = post_json(
        &api,
        &messages,
        json!({"content": "See attached.", "attachment_ids": [upload_id]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["attachments"][0]["id"], upload_id.as_str());
    let r = post_json(
        &api,
        &messages,
        json!({"content": "Again attached.", "attachment_ids": [upload_id]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Workflow: close, reopen, spam.
    for (action, status, classification, waiting_on) in [
        ("close_and_mark_resolved", "closed", "resolved", ""),
        ("reopen_waiting_associate", "active", "", "associate"),
        (
            "close_and_mark_customer_inactivity",
            "closed",
            "customer_inactivity",
            "",
        ),
        ("reopen_waiting_customer", "active", "", "customer"),
    ] {
        let r = post_json(
            &api,
            &messages,
            json!({"content": action, "is_visible_to_customer": false, "next_action": action}),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{action}");
        let t = api.get_ok(&ticket(s.fire)).await;
        assert_eq!(
            (
                t["status"].as_str(),
                t["classification"].as_str(),
                t["waiting_on"].as_str()
            ),
            (Some(status), Some(classification), Some(waiting_on)),
            "{action}"
        );
    }
    let r = post_json(
        &api,
        &messages,
        json!({"content": "spam", "is_visible_to_customer": false, "next_action": "report_spam"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(api.get_ok(&ticket(s.fire)).await["is_spam"], true);
    let r = post_json(&api, &messages, json!({"content": "not spam", "is_visible_to_customer": false, "next_action": "remove_from_spam"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(api.get_ok(&ticket(s.fire)).await["is_spam"], false);

    // A ticket opened through the API.
    let tickets = format!("/organizations/{org}/tickets/");
    let r = post_json(
        &api,
        &tickets,
        json!({"inbox_id": s.support, "customer_email": "new@customer.test", "subject": ""}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json().get("subject").is_some());
    let r = post_json(
        &api,
        &tickets,
        json!({"inbox_id": 999_999, "customer_email": "new@customer.test", "subject": "x"}),
    )
    .await;
    assert!(
        r.json().get("inbox_id").is_some(),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let r = post_json(
        &api,
        &tickets,
        json!({"inbox_id": s.support, "customer_email": "New@Customer.test", "customer_name": "Nina New", "subject": "Order 66", "description": "Where is it?", "external_recipient_emails": ["cc@customer.test"], "tags": ["vip"], "assignee_id": s.agent}),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let t = r.json();
    assert_eq!(t["origin"], "api");
    assert_eq!(t["subject"], "Order 66");
    assert_eq!(t["customer"]["name"], "Nina New");
    assert_eq!(t["tags"], json!(["vip"]));
    assert_eq!(t["assignee"]["id"], s.agent);
    let ccs: Vec<String> =
        serde_json::from_value(t["external_recipient_emails"].clone()).expect("list");
    assert_eq!(ccs.len(), 2, "requester kept: {ccs:?}");
    api.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_writes_sqlite() {
    agent_writes(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_writes_postgres() {
    agent_writes(Db::Postgres).await;
}
