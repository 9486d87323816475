//! Corpus sweep: every message of `../shared/corpus` delivered through the pipeline on SQLite.
//!
//! Each file goes to `support@acme.test` in a fresh gateway (so near-identical corpus mails
//! cannot dedupe or thread into each other). Every file must end up stored as a ticket, or
//! be in [`NOT_STORED`] with the outcome it gets and why a person would accept that. Stored
//! text is read back from the database and checked for U+FFFD and mojibake; for the Zammad
//! `.box` files the subject, sender and attachment names are compared with Zammad's parse
//! result (`.yml`). Accepted differences are listed, per file, in [`TEXT_EXCEPTIONS`] and
//! [`ORACLE_EXCEPTIONS`]; everything else is a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use initdesk_gateway::pipeline::{Envelope, IngestError, Outcome, Source};
use initdesk_gateway::store::{orgs, tickets};
use serde_yaml_ng::Value;

use crate::helpers::{Db, TestGateway, corpus_dir};

const RECIPIENT: &str = "support@acme.test";
const PER_FILE_TIMEOUT: Duration = Duration::from_secs(20);
const MIN_FILES: usize = 100;

/// A corpus file that does not become a ticket: the outcome it gets and why that is right.
struct NotStored {
    file: &'static str,
    /// `bounce`, `duplicate`, `loop`, `quarantined` or `rejected`.
    outcome: &'static str,
    why: &'static str,
}

/// Every corpus file that is not stored as a ticket. The sweep fails when the actual set differs.
const NOT_STORED: &[NotStored] = &[];

/// Text checks waived for one stored field of one file: (file, field, why).
/// Fields: `subject`, `content`, `content_html`, `sender_name`, `attachment_name`.
const TEXT_EXCEPTIONS: &[(&str, &str, &str)] = &[];

/// Where we differ from Zammad's result on purpose: (file, check, why).
/// Checks: `subject`, `from_email`, `from_display_name`, `attachments`.
const ORACLE_EXCEPTIONS: &[(&str, &str, &str)] = &[];

/// Character sequences that show UTF-8 read as Latin-1 / Windows-1252 (or read twice).
const MOJIBAKE: &[&str] = &[
    "Ã¤", "Ã¶", "Ã¼", "Ã„", "Ã–", "Ãœ", "ÃŸ", "Ã©", "Ã¨", "Ã¡", "Ã³", "Ãº", "Ã±", "Ã§", "Ã¢", "Ãª", "Ã®", "Ã´", "Ã»", "â€™", "â€˜",
    "â€œ", "â€\u{9d}", "â€“", "â€”", "â€¦", "â‚¬", "Â§", "Â°", "Â«", "Â»", "Â\u{a0}", "Ã\u{a0}", "ï»¿", "Ã\u{83}",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_sweep() {
    let root = corpus_dir();
    let files = corpus_files(&root);
    assert!(
        files.len() >= MIN_FILES,
        "expected at least {MIN_FILES} .box/.eml files under {}, found {}",
        root.display(),
        files.len()
    );

    let mut failures: Vec<String> = Vec::new();
    let mut not_stored: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut used_text_exceptions: BTreeSet<(String, String)> = BTreeSet::new();
    let mut used_oracle_exceptions: BTreeSet<(String, String)> = BTreeSet::new();
    let (mut stored, mut bounces, mut rejected) = (0usize, 0usize, 0usize);
    let started = Instant::now();

    for path in &files {
        let rel = rel_name(&root, path);
        let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{rel}: cannot read: {e}"));
        let gw = TestGateway::new(Db::Sqlite).await;
        let pipeline = gw.pipeline.clone();
        let task = tokio::spawn(async move { pipeline.ingest(&raw, &Envelope::to(RECIPIENT, Source::Replay)).await });
        let abort = task.abort_handle();
        let result = match tokio::time::timeout(PER_FILE_TIMEOUT, task).await {
            Err(_) => {
                abort.abort();
                failures.push(format!("{rel}: ingest did not finish within {PER_FILE_TIMEOUT:?}"));
                gw.cleanup().await;
                continue;
            }
            Ok(Err(join)) => {
                failures.push(format!("{rel}: ingest panicked: {join}"));
                gw.cleanup().await;
                continue;
            }
            Ok(Ok(result)) => result,
        };
        let yml = yml_for(path).map(|p| load_oracle(&p));
        let mut ctx = Check {
            rel: &rel,
            failures: &mut failures,
            used_text: &mut used_text_exceptions,
            used_oracle: &mut used_oracle_exceptions,
        };
        match result {
            Ok(Outcome::Created { ticket_id, message_id, .. }) | Ok(Outcome::Appended { ticket_id, message_id, .. }) => {
                stored += 1;
                check_stored(&gw, ticket_id, message_id, yml.as_ref(), &mut ctx).await;
            }
            Ok(Outcome::Bounce { .. }) => {
                bounces += 1;
                let detail = last_log_detail(&gw).await;
                assert_no_ticket(&gw, &mut ctx).await;
                not_stored.insert(rel.clone(), ("bounce".into(), detail));
            }
            Ok(outcome @ (Outcome::Duplicate { .. } | Outcome::Loop)) => {
                let detail = last_log_detail(&gw).await;
                not_stored.insert(rel.clone(), (outcome.kind().into(), detail));
            }
            Ok(Outcome::Quarantined { reason, .. }) => {
                not_stored.insert(rel.clone(), ("quarantined".into(), reason));
            }
            Err(IngestError::Unusable(reason)) => {
                rejected += 1;
                assert_no_ticket(&gw, &mut ctx).await;
                not_stored.insert(rel.clone(), ("rejected".into(), reason));
            }
            Err(e) => failures.push(format!("{rel}: ingest failed: {e}")),
        }
        gw.cleanup().await;
    }
    let elapsed = started.elapsed();

    // The non-stored set must be exactly the table.
    let expected: BTreeMap<&str, &NotStored> = NOT_STORED.iter().map(|n| (n.file, n)).collect();
    assert_eq!(expected.len(), NOT_STORED.len(), "NOT_STORED lists a file twice");
    for (file, (outcome, detail)) in &not_stored {
        match expected.get(file.as_str()) {
            None => failures.push(format!("{file}: not stored ({outcome}: {detail}) but not listed in NOT_STORED")),
            Some(n) if n.outcome != outcome => {
                failures.push(format!("{file}: outcome is {outcome} ({detail}), NOT_STORED says {} ({})", n.outcome, n.why))
            }
            Some(_) => {}
        }
    }
    for n in NOT_STORED {
        if !not_stored.contains_key(n.file) {
            failures.push(format!("{}: listed in NOT_STORED as {} but it was stored (or failed otherwise)", n.file, n.outcome));
        }
    }
    // Stale exceptions hide nothing but mislead the reader: they must go when the cause goes.
    for (file, field, _) in TEXT_EXCEPTIONS {
        if !used_text_exceptions.contains(&(file.to_string(), field.to_string())) {
            failures.push(format!("{file}: TEXT_EXCEPTIONS entry for {field} is no longer needed"));
        }
    }
    for (file, check, _) in ORACLE_EXCEPTIONS {
        if !used_oracle_exceptions.contains(&(file.to_string(), check.to_string())) {
            failures.push(format!("{file}: ORACLE_EXCEPTIONS entry for {check} is no longer needed"));
        }
    }

    eprintln!(
        "corpus sweep: {} files, {stored} stored, {bounces} bounces, {rejected} rejected, {} other not stored, {} text exceptions, {} oracle exceptions, {} failures, {:.1}s",
        files.len(),
        not_stored.len() - bounces - rejected,
        TEXT_EXCEPTIONS.len(),
        ORACLE_EXCEPTIONS.len(),
        failures.len(),
        elapsed.as_secs_f64()
    );
    for (file, (outcome, detail)) in &not_stored {
        eprintln!("  not stored: {file}: {outcome}: {detail}");
    }
    assert!(failures.is_empty(), "{} corpus failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// Where one file's findings go.
struct Check<'a> {
    rel: &'a str,
    failures: &'a mut Vec<String>,
    used_text: &'a mut BTreeSet<(String, String)>,
    used_oracle: &'a mut BTreeSet<(String, String)>,
}

impl Check<'_> {
    /// Records a text-check failure unless an exception covers it.
    fn text_fail(&mut self, field: &str, message: String) {
        if TEXT_EXCEPTIONS.iter().any(|(f, fld, _)| *f == self.rel && *fld == field) {
            self.used_text.insert((self.rel.to_string(), field.to_string()));
        } else {
            self.failures.push(format!("{}: {field}: {message}", self.rel));
        }
    }

    /// Records an oracle mismatch unless an exception covers it.
    fn oracle_fail(&mut self, check: &str, message: String) {
        if ORACLE_EXCEPTIONS.iter().any(|(f, c, _)| *f == self.rel && *c == check) {
            self.used_oracle.insert((self.rel.to_string(), check.to_string()));
        } else {
            self.failures.push(format!("{}: differs from Zammad in {check}: {message}", self.rel));
        }
    }
}

/// Zammad's expected result, the parts this test compares.
#[derive(Debug, Default)]
struct Oracle {
    subject: String,
    from_email: String,
    from_display_name: String,
    body: String,
    attachments: Vec<OracleAttachment>,
}

#[derive(Debug)]
struct OracleAttachment {
    filename: String,
    mime_type: String,
    /// Zammad keeps the HTML body (`content-alternative`/`original-format`) as an attachment.
    is_body: bool,
}

async fn check_stored(gw: &TestGateway, ticket_id: i64, message_id: i64, oracle: Option<&Oracle>, c: &mut Check<'_>) {
    let mut tx = gw.store.begin_read().await.expect("begin read");
    let org = acme(&mut tx).await;
    let all = tickets::list_tickets(&mut tx, org).await.expect("list tickets");
    if all.len() != 1 {
        c.failures.push(format!("{}: {} tickets in a fresh gateway after one delivery", c.rel, all.len()));
    }
    let Some(ticket) = all.into_iter().find(|t| t.id == ticket_id) else {
        c.failures.push(format!("{}: ticket {ticket_id} of the outcome is not in the database", c.rel));
        return;
    };
    let messages = tickets::list_messages(&mut tx, org, ticket_id).await.expect("list messages");
    let Some(msg) = messages.iter().find(|m| m.id == message_id) else {
        c.failures.push(format!("{}: message {message_id} of the outcome is not in the database", c.rel));
        return;
    };
    let atts = tickets::list_attachments(&mut tx, org, message_id).await.expect("list attachments");
    tx.rollback().await.expect("rollback");

    // The ticket subject is the message subject, trimmed, capped, never empty.
    let want: String = msg.subject.trim().chars().take(255).collect();
    let want = if want.is_empty() { "(no subject)".to_string() } else { want };
    if ticket.subject != want {
        c.failures.push(format!("{}: ticket subject {:?} is not the capped message subject {:?}", c.rel, ticket.subject, want));
    }
    for (field, value) in [("subject", &msg.subject), ("subject", &ticket.subject), ("sender_name", &msg.sender_name)] {
        if value.chars().any(char::is_control) {
            c.failures.push(format!("{}: {field} {value:?} has control characters", c.rel));
        }
    }
    if ticket.description != msg.content || ticket.description_html != msg.content_html {
        c.failures.push(format!("{}: ticket description differs from its first message's content", c.rel));
    }

    // U+FFFD where Zammad decoded cleanly, and mojibake anywhere.
    let attachment_names = atts.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(" | ");
    let oracle_names = oracle.map(|o| o.attachments.iter().map(|a| a.filename.as_str()).collect::<Vec<_>>().join(" | "));
    let fields: [(&str, &str, Option<&str>); 5] = [
        ("subject", &msg.subject, oracle.map(|o| o.subject.as_str())),
        ("content", &msg.content, oracle.map(|o| o.body.as_str())),
        ("content_html", &msg.content_html, oracle.map(|o| o.body.as_str())),
        ("sender_name", &msg.sender_name, oracle.map(|o| o.from_display_name.as_str())),
        ("attachment_name", &attachment_names, oracle_names.as_deref()),
    ];
    for (field, ours, theirs) in fields {
        if ours.contains('\u{FFFD}') && !theirs.is_some_and(|t| t.contains('\u{FFFD}')) {
            c.text_fail(field, format!("has U+FFFD{}: {}", if theirs.is_some() { " (Zammad has none)" } else { "" }, excerpt(ours, '\u{FFFD}')));
        }
        if let Some(seq) = mojibake(ours) {
            c.text_fail(field, format!("looks like mojibake ({seq:?}): {}", excerpt_str(ours, seq)));
        }
    }

    if let Some(o) = oracle {
        compare_oracle(o, msg, &atts, c);
    }
}

fn compare_oracle(o: &Oracle, msg: &tickets::Message, atts: &[tickets::Attachment], c: &mut Check<'_>) {
    let (ours, theirs) = (collapse(&msg.subject), collapse(&o.subject));
    if ours != theirs {
        c.oracle_fail("subject", format!("we store {ours:?}, Zammad has {theirs:?}"));
    }
    if !o.from_email.is_empty() && !msg.sender_email.eq_ignore_ascii_case(o.from_email.trim()) {
        c.oracle_fail("from_email", format!("we store {:?}, Zammad has {:?}", msg.sender_email, o.from_email));
    }
    let (ours, theirs) = (collapse(&msg.sender_name), collapse(&o.from_display_name));
    if !theirs.is_empty() && ours != theirs {
        c.oracle_fail("from_display_name", format!("we store {ours:?}, Zammad has {theirs:?}"));
    }
    let names: BTreeSet<&str> = atts.iter().map(|a| a.name.as_str()).collect();
    let missing: Vec<&str> = o
        .attachments
        .iter()
        .filter(|a| !a.is_body && !a.filename.is_empty())
        .map(|a| a.filename.as_str())
        .filter(|name| {
            let clean = initdesk_gateway::pipeline::parse::sanitize_filename(name);
            !names.contains(clean.as_str()) && !(clean.is_empty())
        })
        .collect();
    if !missing.is_empty() {
        let theirs: Vec<String> = o.attachments.iter().map(|a| format!("{} ({})", a.filename, a.mime_type)).collect();
        let ours: Vec<String> = atts.iter().map(|a| format!("{} ({}{})", a.name, a.content_type, if a.is_inline { ", inline" } else { "" })).collect();
        c.oracle_fail("attachments", format!("missing {missing:?}; we store {ours:?}, Zammad has {theirs:?}"));
    }
}

async fn assert_no_ticket(gw: &TestGateway, c: &mut Check<'_>) {
    let mut tx = gw.store.begin_read().await.expect("begin read");
    let org = acme(&mut tx).await;
    let n = tickets::list_tickets(&mut tx, org).await.expect("list tickets").len();
    tx.rollback().await.expect("rollback");
    if n != 0 {
        c.failures.push(format!("{}: not stored by its outcome, yet {n} ticket(s) exist", c.rel));
    }
}

async fn last_log_detail(gw: &TestGateway) -> String {
    let mut tx = gw.store.begin_read().await.expect("begin read");
    let org = acme(&mut tx).await;
    let log = tickets::list_inbound_log(&mut tx, org).await.expect("inbound log");
    tx.rollback().await.expect("rollback");
    log.last().map(|l| l.detail.clone()).unwrap_or_default()
}

async fn acme(tx: &mut initdesk_gateway::store::Tx) -> i64 {
    orgs::list_orgs(tx).await.expect("list orgs").into_iter().find(|o| o.name == "Acme").expect("the Acme organization").id
}

/// Every `.box` and `.eml` below `root`, sorted.
fn corpus_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "box" || e == "eml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out.sort();
    out
}

fn rel_name(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().replace('\\', "/")
}

/// Zammad's `.yml` beside a `.box`, when there is one.
fn yml_for(path: &Path) -> Option<PathBuf> {
    let yml = path.with_extension("yml");
    (path.extension().is_some_and(|e| e == "box") && yml.is_file()).then_some(yml)
}

/// Reads a Zammad `.yml`: Ruby's hash tag is removed, other tags (`!binary`) are looked through.
fn load_oracle(path: &Path) -> Oracle {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = text.replace("!ruby/hash:ActiveSupport::HashWithIndifferentAccess", "");
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
    let s = |v: &Value, key: &str| -> String {
        match untag(v).get(key).map(untag) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            _ => String::new(),
        }
    };
    let truthy = |v: &Value, key: &str| matches!(untag(v).get(key).map(untag), Some(Value::Bool(true)));
    let attachments = match untag(&doc).get("attachments").map(untag) {
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|a| {
                let prefs = untag(a).get("preferences").cloned().unwrap_or(Value::Null);
                OracleAttachment {
                    filename: s(a, "filename"),
                    mime_type: s(&prefs, "Mime-Type"),
                    is_body: truthy(&prefs, "content-alternative") || truthy(&prefs, "original-format"),
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    Oracle {
        subject: s(&doc, "subject"),
        from_email: s(&doc, "from_email"),
        from_display_name: s(&doc, "from_display_name"),
        body: s(&doc, "body"),
        attachments,
    }
}

fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => untag(&t.value),
        other => other,
    }
}

/// White space runs to one space, trimmed.
fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The first telltale mojibake sequence in `s`, if any.
fn mojibake(s: &str) -> Option<&'static str> {
    MOJIBAKE.iter().copied().find(|seq| s.contains(seq))
}

fn excerpt(s: &str, c: char) -> String {
    excerpt_str(s, c.encode_utf8(&mut [0; 4]))
}

/// Up to 40 characters either side of the first `needle`.
fn excerpt_str(s: &str, needle: &str) -> String {
    let Some(at) = s.find(needle) else { return String::new() };
    let before: String = s[..at].chars().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
    let after: String = s[at..].chars().take(40 + needle.chars().count()).collect();
    format!("{:?}", format!("{before}{after}"))
}

#[test]
fn zz_probe() {
    use mail_parser::{MessageParser, MimeHeaders, PartType};
    let root = corpus_dir();
    for f in std::env::var("PROBE").unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
        let raw = std::fs::read(root.join(f)).unwrap();
        let m = MessageParser::default().parse(&raw[..]).unwrap();
        eprintln!("=== {f}: from={:?} sender={:?} subject={:?}", m.from(), m.sender(), m.subject());
        for (i, p) in m.parts.iter().enumerate() {
            let ct = p.content_type().map(|c| format!("{}/{:?} {:?}", c.ctype(), c.subtype(), c.attributes()));
            let kind = match &p.body { PartType::Text(_) => "text", PartType::Html(_) => "html", PartType::Binary(_) => "bin", PartType::InlineBinary(_) => "ibin", PartType::Message(_) => "msg", PartType::Multipart(_) => "multi" };
            eprintln!("  part {i}: {kind} ct={ct:?} name={:?} contents[..80]={:?}", p.attachment_name(), String::from_utf8_lossy(&p.contents()[..p.contents().len().min(80)]));
        }
        let parsed = initdesk_gateway::pipeline::parse::parse(&raw, &Default::default());
        eprintln!("  parsed from={:?} bounce={:?} subject={:?}", parsed.from, parsed.bounce, parsed.subject);
    }
}
