//! Fixture cases (SPEC 5.6): numbered `.eml` files delivered in order, then the stored
//! outcome compared with `expected.yaml`. `initdesk-gateway replay` and `cargo test`
//! both run cases through this module. The format is documented in `docs/fixtures.md`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use crate::config::{LimitsConfig, OrganizationConfig, PolicyConfig};
use crate::pipeline::{Envelope, IngestError, Pipeline, ReplyTokens, Settings, Source};
use crate::store::blobs::FsBlobStore;
use crate::store::scratch::ScratchPostgres;
use crate::store::tickets::{self, NewMessage, TicketState};
use crate::store::{self, Store, StoreError, orgs, quarantine};

/// A case that could not be run at all (as opposed to one whose outcome differs).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Case { path: PathBuf, message: String },
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

/// `expected.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// What the case proves, in a sentence.
    pub description: String,
    /// The world; the default world (docs/fixtures.md) when absent.
    #[serde(default)]
    pub organizations: Option<Vec<OrganizationConfig>>,
    /// Default recipient of deliveries.
    #[serde(default)]
    pub recipient: Option<String>,
    #[serde(default)]
    pub policy: Option<PolicyConfig>,
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
    /// What happens, in order; when absent every `.eml` is delivered in name order.
    #[serde(default)]
    pub steps: Option<Vec<Step>>,
    /// The outcome, compared as a subset of the actual outcome.
    pub expect: Value,
}

/// One step of a case. Exactly one action field is set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Deliver this `.eml` file of the case folder.
    pub deliver: Option<String>,
    /// Envelope recipient of `deliver` (default: the case's `recipient`).
    pub to: Option<String>,
    /// Envelope sender of `deliver`; `""` is the null sender.
    pub mail_from: Option<String>,
    /// Close this ticket (public_id), `days_ago` days ago.
    pub close: Option<i64>,
    pub days_ago: Option<i64>,
    /// Mark this customer address as spam.
    pub mark_spam: Option<String>,
    /// Record an agent reply sent from ticket `ticket` with this Message-ID (what the outbox stores).
    pub agent_reply: Option<String>,
    pub ticket: Option<i64>,
    /// The organization `close`, `mark_spam` and `agent_reply` act in (default: the first).
    pub org: Option<String>,
}

/// The result of one case.
#[derive(Debug)]
pub struct CaseReport {
    pub name: String,
    pub passed: bool,
    /// A readable diff of expected against actual, empty when passed.
    pub diff: String,
    pub actual: Value,
}

/// Where a case's database lives.
#[derive(Debug, Clone)]
pub enum CaseDatabase {
    /// A fresh SQLite file in a temporary folder.
    Sqlite,
    /// A fresh database created on this PostgreSQL server (URL of any database there) and dropped after.
    Postgres(String),
}

/// The world every case runs in unless it declares its own.
pub fn default_world() -> Vec<OrganizationConfig> {
    let yaml = r#"
- name: Acme
  domains: [acme.test, acme-mail.test]
  subject_tag_prefix: ACME
  authserv_id: mx.acme.test
  inboxes:
    - {email_prefix: support, name: Support}
    - {email_prefix: sales, name: Sales}
  users:
    - {email: agent@acme.test, name: Alice Agent}
- name: Globex
  domains: [globex.test]
  inboxes:
    - {email_prefix: help, name: Help}
  users:
    - {email: staff@globex.test, name: Gary Globex}
"#;
    serde_yaml_ng::from_str(yaml).unwrap_or_default()
}

/// Runs every case below `dir` (or `dir` itself when it is a case), in name order.
pub async fn run_dir(dir: &Path, db: &CaseDatabase) -> Result<Vec<CaseReport>, ReplayError> {
    if dir.join("expected.yaml").exists() {
        return Ok(vec![run_case(dir, db).await?]);
    }
    let mut cases: Vec<PathBuf> = read_dir(dir)?
        .into_iter()
        .filter(|p| p.join("expected.yaml").exists())
        .collect();
    cases.sort();
    if cases.is_empty() {
        return Err(ReplayError::Case {
            path: dir.to_path_buf(),
            message: "no cases here (a case is a folder with expected.yaml)".into(),
        });
    }
    let mut out = Vec::with_capacity(cases.len());
    for case in cases {
        out.push(run_case(&case, db).await?);
    }
    Ok(out)
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, ReplayError> {
    let io = |source| ReplayError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()).map_err(io))
        .collect()
}

/// Runs one case folder against a fresh database.
pub async fn run_case(dir: &Path, db: &CaseDatabase) -> Result<CaseReport, ReplayError> {
    let case_path = dir.join("expected.yaml");
    let text = std::fs::read_to_string(&case_path).map_err(|source| ReplayError::Io {
        path: case_path.clone(),
        source,
    })?;
    let case: CaseFile = serde_yaml_ng::from_str(&text).map_err(|e| ReplayError::Case {
        path: case_path.clone(),
        message: e.to_string(),
    })?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tempfile::tempdir().map_err(|source| ReplayError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let (url, pg_guard) = match db {
        CaseDatabase::Sqlite => (
            format!("sqlite://{}", tmp.path().join("gateway.db").display()),
            None,
        ),
        CaseDatabase::Postgres(base) => {
            let guard = ScratchPostgres::create(base).await?;
            (guard.url.clone(), Some(guard))
        }
    };
    let result = run_in(dir, &case, &url, tmp.path()).await;
    if let Some(guard) = pg_guard {
        guard.drop_database().await;
    }
    let actual = result?;
    let (passed, diff) = compare(&case.expect, &actual);
    Ok(CaseReport {
        name,
        passed,
        diff,
        actual,
    })
}

async fn run_in(
    dir: &Path,
    case: &CaseFile,
    url: &str,
    data_dir: &Path,
) -> Result<Value, ReplayError> {
    let store = store::open(url, 4).await?;
    let world = case.organizations.clone().unwrap_or_else(default_world);
    {
        let mut tx = store.begin().await?;
        for org in &world {
            orgs::apply_config(&mut tx, org).await?;
        }
        tx.commit().await?;
    }
    let settings = Settings {
        limits: case.limits.clone().unwrap_or_default(),
        policy: case.policy.clone().unwrap_or_default(),
        public_url: "http://gateway.test".into(),
    };
    let pipeline = Pipeline::new(
        store.clone(),
        Arc::new(FsBlobStore::new(data_dir.join("blobs"))),
        settings,
        ReplyTokens::new(b"fixture-secret".to_vec()),
    );
    let default_recipient = case
        .recipient
        .clone()
        .unwrap_or_else(|| "support@acme.test".into());
    let steps = match &case.steps {
        Some(steps) => steps.iter().map(StepRef::Given).collect::<Vec<_>>(),
        None => {
            let mut emls: Vec<PathBuf> = read_dir(dir)?
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "eml"))
                .collect();
            emls.sort();
            emls.into_iter().map(StepRef::File).collect()
        }
    };
    let mut outcomes = Vec::new();
    let first_org = world.first().map(|o| o.name.clone()).unwrap_or_default();
    for step in steps {
        match step {
            StepRef::File(path) => {
                outcomes.push(deliver(&pipeline, &path, &default_recipient, None).await?)
            }
            StepRef::Given(step) => {
                let org_name = step.org.clone().unwrap_or_else(|| first_org.clone());
                if let Some(file) = &step.deliver {
                    let to = step.to.clone().unwrap_or_else(|| default_recipient.clone());
                    outcomes.push(
                        deliver(&pipeline, &dir.join(file), &to, step.mail_from.clone()).await?,
                    );
                } else if let Some(public_id) = step.close {
                    close_ticket(&store, &org_name, public_id, step.days_ago.unwrap_or(0)).await?;
                } else if let Some(email) = &step.mark_spam {
                    mark_spam(&store, &org_name, email).await?;
                } else if let Some(message_id) = &step.agent_reply {
                    let ticket = step
                        .ticket
                        .ok_or_else(|| case_error(dir, "agent_reply needs ticket"))?;
                    agent_reply(&store, &org_name, ticket, message_id).await?;
                } else {
                    return Err(case_error(
                        dir,
                        "a step needs one of deliver, close, mark_spam, agent_reply",
                    ));
                }
            }
        }
    }
    let actual = snapshot(&store, outcomes).await?;
    store.close().await;
    Ok(actual)
}

enum StepRef<'a> {
    File(PathBuf),
    Given(&'a Step),
}

fn case_error(dir: &Path, message: &str) -> ReplayError {
    ReplayError::Case {
        path: dir.to_path_buf(),
        message: message.to_string(),
    }
}

async fn deliver(
    pipeline: &Pipeline,
    path: &Path,
    to: &str,
    mail_from: Option<String>,
) -> Result<String, ReplayError> {
    let raw = std::fs::read(path).map_err(|source| ReplayError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut envelope = Envelope::to(to, Source::Replay);
    envelope.mail_from = mail_from;
    Ok(match pipeline.ingest(&raw, &envelope).await {
        Ok(outcome) => outcome.kind().to_string(),
        Err(IngestError::UnknownRecipient(_)) => "unknown_recipient".into(),
        Err(IngestError::Unusable(_)) => "rejected".into(),
        Err(e @ (IngestError::Temporary(_) | IngestError::Failed(_))) => format!("error: {e}"),
    })
}

async fn org_id(store: &Store, name: &str) -> Result<i64, ReplayError> {
    let mut tx = store.begin_read().await?;
    let orgs = orgs::list_orgs(&mut tx).await?;
    tx.rollback().await?;
    orgs.into_iter()
        .find(|o| o.name == name)
        .map(|o| o.id)
        .ok_or_else(|| ReplayError::Store(StoreError::NotFound(format!("organization {name}"))))
}

async fn close_ticket(
    store: &Store,
    org: &str,
    public_id: i64,
    days_ago: i64,
) -> Result<(), ReplayError> {
    let org_id = org_id(store, org).await?;
    let mut tx = store.begin().await?;
    let ticket = tickets::ticket_by_public_id(&mut tx, org_id, public_id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("ticket #{public_id}")))?;
    let state = TicketState {
        status: "closed".into(),
        waiting_on: String::new(),
        classification: "resolved".into(),
        closed_at: Some(store::now() - chrono::Duration::days(days_ago)),
    };
    tickets::update_ticket_state(&mut tx, org_id, ticket.id, &state).await?;
    tx.commit().await?;
    Ok(())
}

async fn mark_spam(store: &Store, org: &str, email: &str) -> Result<(), ReplayError> {
    let org_id = org_id(store, org).await?;
    let norm = crate::address::normalize(email)
        .ok_or_else(|| StoreError::NotFound(format!("address {email}")))?;
    let mut tx = store.begin().await?;
    let customer = tickets::find_or_create_customer(&mut tx, org_id, email, &norm, "").await?;
    tickets::set_customer_spam(&mut tx, org_id, customer.id, true).await?;
    tx.commit().await?;
    Ok(())
}

async fn agent_reply(
    store: &Store,
    org: &str,
    public_id: i64,
    message_id: &str,
) -> Result<(), ReplayError> {
    let org_id = org_id(store, org).await?;
    let mut tx = store.begin().await?;
    let ticket = tickets::ticket_by_public_id(&mut tx, org_id, public_id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("ticket #{public_id}")))?;
    let id = crate::pipeline::parse::clean_id(message_id);
    tickets::insert_message(
        &mut tx,
        &NewMessage {
            organization_id: org_id,
            ticket_id: ticket.id,
            role: "associate",
            direction: "outbound",
            content: "agent reply",
            is_visible_to_customer: true,
            message_id_header: Some(&id),
            delivery_state: Some("sent"),
            ..NewMessage::default()
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The stored state of every organization, in the shape `expected.yaml` describes.
async fn snapshot(store: &Store, outcomes: Vec<String>) -> Result<Value, ReplayError> {
    let mut tx = store.begin_read().await?;
    let mut tickets_out = Vec::new();
    let mut customers_out = Vec::new();
    let mut log_out = Vec::new();
    for org in orgs::list_orgs(&mut tx).await? {
        let inboxes = orgs::list_inboxes(&mut tx, org.id).await?;
        let customers = tickets::list_customers(&mut tx, org.id).await?;
        for c in &customers {
            customers_out.push(map([
                ("org", Value::from(org.name.clone())),
                ("email", c.email.clone().into()),
                ("name", c.name.clone().into()),
                ("is_spam", c.is_spam.into()),
            ]));
        }
        for t in tickets::list_tickets(&mut tx, org.id).await? {
            let mut messages = Vec::new();
            for m in tickets::list_messages(&mut tx, org.id, t.id).await? {
                let mut attachments = Vec::new();
                for a in tickets::list_attachments(&mut tx, org.id, m.id).await? {
                    attachments.push(map([
                        ("name", a.name.into()),
                        ("content_type", a.content_type.into()),
                        ("size", a.size.into()),
                        ("inline", a.is_inline.into()),
                        ("content_id", a.content_id.into()),
                    ]));
                }
                messages.push(map([
                    ("role", m.role.into()),
                    ("direction", m.direction.into()),
                    ("sender", m.sender_email.into()),
                    ("sender_name", m.sender_name.into()),
                    ("visible", m.is_visible_to_customer.into()),
                    ("threaded_by", m.threaded_by.into()),
                    ("thread_note", m.thread_note.into()),
                    ("subject", m.subject.into()),
                    ("content", m.content.into()),
                    ("content_html", m.content_html.into()),
                    ("language", m.language.into()),
                    (
                        "external_recipient_emails",
                        list(store::parse_json_list(&m.external_recipient_emails)),
                    ),
                    ("is_auto_reply", m.is_auto_reply.into()),
                    ("spam_reason", m.spam_reason.into()),
                    ("notes", m.processing_notes.into()),
                    ("auth_results", m.auth_results.into()),
                    (
                        "delivery_state",
                        m.delivery_state.map_or(Value::Null, Value::from),
                    ),
                    ("attachments", Value::Sequence(attachments)),
                ]));
            }
            let customer = customers.iter().find(|c| c.id == t.customer_id);
            tickets_out.push(map([
                ("org", org.name.clone().into()),
                ("public_id", t.public_id.into()),
                (
                    "inbox",
                    inboxes
                        .iter()
                        .find(|i| i.id == t.inbox_id)
                        .map(|i| i.email_prefix.clone())
                        .unwrap_or_default()
                        .into(),
                ),
                (
                    "customer",
                    customer.map(|c| c.email.clone()).unwrap_or_default().into(),
                ),
                (
                    "customer_name",
                    customer.map(|c| c.name.clone()).unwrap_or_default().into(),
                ),
                ("subject", t.subject.into()),
                ("status", t.status.into()),
                ("waiting_on", t.waiting_on.into()),
                ("classification", t.classification.into()),
                ("is_spam", t.is_spam.into()),
                ("origin", t.origin.into()),
                ("language", t.language.into()),
                ("has_attachments", t.has_attachments.into()),
                (
                    "external_recipient_emails",
                    list(store::parse_json_list(&t.external_recipient_emails)),
                ),
                ("description", t.description.into()),
                ("description_html", t.description_html.into()),
                ("messages", Value::Sequence(messages)),
            ]));
        }
        for l in tickets::list_inbound_log(&mut tx, org.id).await? {
            log_out.push(map([
                ("org", org.name.clone().into()),
                ("outcome", l.outcome.into()),
                ("detail", l.detail.into()),
            ]));
        }
    }
    let quarantined = quarantine::list_open(&mut tx, None).await?;
    tx.rollback().await?;
    Ok(map([
        ("outcomes", list(outcomes)),
        ("tickets", Value::Sequence(tickets_out)),
        ("customers", Value::Sequence(customers_out)),
        ("log", Value::Sequence(log_out)),
        (
            "quarantine",
            Value::Sequence(
                quarantined
                    .into_iter()
                    .map(|q| {
                        map([
                            ("recipient", q.recipient.into()),
                            ("reason", q.reason.into()),
                        ])
                    })
                    .collect(),
            ),
        ),
    ]))
}

fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(Value::from(k), v);
    }
    Value::Mapping(m)
}

fn list(items: Vec<String>) -> Value {
    Value::Sequence(items.into_iter().map(Value::from).collect())
}

/// Compares `expected` as a subset of `actual`; returns whether it matched and a diff.
///
/// Keys may carry a suffix: `x_contains: s` (x contains s; a list of strings means each),
/// `x_not_contains: s`, and `x_count: n` (the list x has n items).
pub fn compare(expected: &Value, actual: &Value) -> (bool, String) {
    let mut problems = Vec::new();
    let projected = project(expected, actual, "", &mut problems);
    if problems.is_empty() {
        return (true, String::new());
    }
    let want = serde_yaml_ng::to_string(expected).unwrap_or_default();
    let got = serde_yaml_ng::to_string(&projected).unwrap_or_default();
    let diff = similar::TextDiff::from_lines(&want, &got)
        .unified_diff()
        .context_radius(3)
        .header("expected", "actual")
        .to_string();
    (false, format!("{}\n{diff}", problems.join("\n")))
}

/// The part of `actual` that `expected` speaks of, shaped like `expected`.
fn project(expected: &Value, actual: &Value, path: &str, problems: &mut Vec<String>) -> Value {
    match (expected, actual) {
        (Value::Mapping(e), Value::Mapping(a)) => {
            let mut out = Mapping::new();
            for (k, ev) in e {
                let key = k.as_str().unwrap_or_default();
                let here = if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                };
                let value = project_key(key, ev, a, &here, problems);
                out.insert(k.clone(), value);
            }
            Value::Mapping(out)
        }
        (Value::Sequence(e), Value::Sequence(a)) => {
            if e.len() != a.len() {
                problems.push(format!(
                    "{path}: expected {} items, found {}",
                    e.len(),
                    a.len()
                ));
            }
            let mut out: Vec<Value> = e
                .iter()
                .zip(a)
                .enumerate()
                .map(|(i, (ev, av))| project(ev, av, &format!("{path}[{i}]"), problems))
                .collect();
            // Show the extra actual items in the diff.
            out.extend(a.iter().skip(e.len()).cloned());
            Value::Sequence(out)
        }
        _ => {
            if !scalar_eq(expected, actual) {
                problems.push(format!(
                    "{path}: expected {}, found {}",
                    short(expected),
                    short(actual)
                ));
            }
            actual.clone()
        }
    }
}

fn project_key(
    key: &str,
    ev: &Value,
    a: &Mapping,
    here: &str,
    problems: &mut Vec<String>,
) -> Value {
    let get = |k: &str| a.get(Value::from(k));
    if let Some(base) = key
        .strip_suffix("_not_contains")
        .filter(|b| get(b).is_some())
    {
        let hay = get(base).map(as_text).unwrap_or_default();
        for needle in needles(ev) {
            if hay.contains(&needle) {
                problems.push(format!("{here}: {base} must not contain {needle:?}"));
                return Value::from(hay);
            }
        }
        return ev.clone();
    }
    if let Some(base) = key.strip_suffix("_contains").filter(|b| get(b).is_some()) {
        let hay = get(base).map(as_text).unwrap_or_default();
        for needle in needles(ev) {
            if !hay.contains(&needle) {
                problems.push(format!("{here}: {base} does not contain {needle:?}"));
                return Value::from(truncate(&hay, 2000));
            }
        }
        return ev.clone();
    }
    if let Some(base) = key
        .strip_suffix("_count")
        .filter(|b| get(b).is_some_and(Value::is_sequence))
    {
        let n = get(base).and_then(Value::as_sequence).map_or(0, Vec::len);
        if ev.as_u64() != Some(n as u64) {
            problems.push(format!(
                "{here}: expected {} items in {base}, found {n}",
                short(ev)
            ));
            return Value::from(n as u64);
        }
        return ev.clone();
    }
    match get(key) {
        Some(av) => project(ev, av, here, problems),
        None => {
            problems.push(format!("{here}: no such field in the outcome"));
            Value::Null
        }
    }
}

fn needles(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(s) => s.iter().map(as_text).collect(),
        other => vec![as_text(other)],
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Sequence(s) => s.iter().map(as_text).collect::<Vec<_>>().join("\n"),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn scalar_eq(e: &Value, a: &Value) -> bool {
    match (e, a) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Null, Value::String(s)) | (Value::String(s), Value::Null) => s.is_empty(),
        _ => e == a,
    }
}

fn short(v: &Value) -> String {
    truncate(
        &serde_yaml_ng::to_string(v)
            .unwrap_or_default()
            .trim()
            .replace('\n', " "),
        200,
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_comparison() {
        let actual: Value =
            serde_yaml_ng::from_str("a: 1\nb: hello world\nl: [x, y]\nm: [{k: 1, z: 2}]")
                .expect("yaml");
        let ok: Value = serde_yaml_ng::from_str("a: 1\nb_contains: world\nl_count: 2\nm: [{k: 1}]")
            .expect("yaml");
        assert!(compare(&ok, &actual).0);
        let bad: Value =
            serde_yaml_ng::from_str("a: 2\nb_not_contains: hello\nm: [{k: 1}, {k: 2}]")
                .expect("yaml");
        let (passed, diff) = compare(&bad, &actual);
        assert!(!passed);
        assert!(diff.contains("a: expected 2, found 1"), "{diff}");
        assert!(diff.contains("must not contain"), "{diff}");
        assert!(diff.contains("expected 2 items, found 1"), "{diff}");
    }
}
