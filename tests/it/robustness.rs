//! No input crashes the gateway: arbitrary bytes, truncated and mangled real mail, and
//! pathological structure all parse, and all either store a message or are refused cleanly.

use std::path::PathBuf;

use initdesk_gateway::config::LimitsConfig;
use initdesk_gateway::pipeline::parse;
use initdesk_gateway::pipeline::{Envelope, IngestError, Source};
use initdesk_gateway::store::StoreError;
use proptest::prelude::*;

use crate::helpers::{Db, TestGateway, corpus_dir};

fn corpus_files() -> Vec<PathBuf> {
    let dir = corpus_dir().join("zammad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "box"))
        .collect();
    files.sort();
    files
}

fn check_parsed(raw: &[u8]) {
    let m = parse::parse(raw, &LimitsConfig::default());
    // Strings are UTF-8 by construction; no control characters may reach one-line fields.
    assert!(
        !m.subject.contains(['\r', '\n']),
        "subject must be one line"
    );
    for a in &m.attachments {
        assert!(
            !a.name.contains(['/', '\\', '\r', '\n', '\0']),
            "unsafe attachment name {:?}",
            a.name
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_parse(raw in proptest::collection::vec(any::<u8>(), 0..4096)) {
        check_parsed(&raw);
    }

    #[test]
    fn mangled_real_mail_parses(index in 0usize..116, cut in 0.0f64..1.0, flips in proptest::collection::vec((0.0f64..1.0, any::<u8>()), 0..20)) {
        let files = corpus_files();
        let mut raw = std::fs::read(&files[index % files.len()]).expect("read");
        raw.truncate((raw.len() as f64 * cut) as usize + 1);
        let len = raw.len();
        for (at, byte) in flips {
            raw[((len - 1) as f64 * at) as usize] = byte;
        }
        check_parsed(&raw);
    }
}

#[test]
fn pathological_structure_parses_within_bounds() {
    let limits = LimitsConfig::default();
    // Deep nesting: 5,000 multiparts inside each other.
    let mut deep = String::from("From: a@example.com\r\nSubject: deep\r\n");
    for i in 0..5000 {
        deep.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"
        ));
    }
    deep.push_str("Content-Type: text/plain\r\n\r\nbottom\r\n");
    let m = parse::parse(deep.as_bytes(), &limits);
    assert!(
        m.notes.iter().any(|n| n.contains("nesting")),
        "{:?}",
        m.notes
    );
    // Many parts: 5,000 tiny attachments.
    let mut wide = String::from(
        "From: a@example.com\r\nSubject: wide\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n",
    );
    for i in 0..5000 {
        wide.push_str(&format!(
            "--x\r\nContent-Type: application/octet-stream; name=f{i}.bin\r\n\r\n{i}\r\n"
        ));
    }
    wide.push_str("--x--\r\n");
    let m = parse::parse(wide.as_bytes(), &limits);
    assert!(
        m.attachments.len() <= limits.max_parts,
        "{} attachments kept",
        m.attachments.len()
    );
    assert!(
        m.notes.iter().any(|n| n.contains("MIME parts")),
        "{:?}",
        m.notes
    );
    // Many headers.
    let mut headers = String::from("From: a@example.com\r\n");
    for i in 0..20_000 {
        headers.push_str(&format!("X-Filler-{i}: {i}\r\n"));
    }
    headers.push_str("Subject: many headers\r\n\r\nbody\r\n");
    let m = parse::parse(headers.as_bytes(), &limits);
    assert!(
        m.notes.iter().any(|n| n.contains("header fields")),
        "{:?}",
        m.notes
    );
    // One enormous line of HTML.
    let html = format!(
        "From: a@example.com\r\nSubject: html\r\nContent-Type: text/html\r\n\r\n{}",
        "<div>".repeat(200_000)
    );
    let _ = parse::parse(html.as_bytes(), &limits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_through_the_whole_pipeline_is_stored_or_refused() {
    let gw = TestGateway::new(Db::Sqlite).await;
    let inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0u8; 1000],
        (0..=255u8).cycle().take(10_000).collect(),
        b"From: a@example.com\r\n\r\n\xff\xfe\x00garbage".to_vec(),
        b"From: =?utf-8?b?!!!?= <b@example.com>\r\nSubject: =?x-unknown?q?abc?=\r\n\r\nbody"
            .to_vec(),
        b"From: c@example.com\r\nContent-Type: multipart/mixed\r\n\r\nno boundary at all".to_vec(),
        b"From: d@example.com\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!! not base64 !!!!"
            .to_vec(),
        // HTML-only and nested deeper than any renderer's recursion should go.
        format!(
            "From: e@example.com\r\nSubject: nested\r\nContent-Type: text/html\r\n\r\n{}deep{}",
            "<div>".repeat(100_000),
            "</div>".repeat(100_000)
        )
        .into_bytes(),
        format!(
            "From: f@example.com\r\nSubject: tables\r\nContent-Type: text/html\r\n\r\n{}",
            "<table><tr><td>".repeat(20_000)
        )
        .into_bytes(),
    ];
    for raw in inputs {
        match gw
            .pipeline
            .ingest(&raw, &Envelope::to("support@acme.test", Source::Replay))
            .await
        {
            Ok(outcome) => assert_ne!(outcome.kind(), "quarantined", "{raw:?}"),
            Err(IngestError::Unusable(_)) => {}
            Err(e) => panic!("unexpected error for {raw:?}: {e}"),
        }
    }
    gw.cleanup().await;
}

/// A PostgreSQL refusal that passes (here 53300, too many connections for the role) is
/// temporary, so the sender keeps the mail: its SQLSTATE is all digits, like SQLite's codes,
/// and must not be read as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_error_with_a_numeric_sqlstate_is_temporary() {
    use sqlx::Connection;

    let base = crate::helpers::postgres_url();
    let mut admin = sqlx::PgConnection::connect(&base).await.expect("connect");
    let role = format!("limited_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN CONNECTION LIMIT 0"
    )))
    .execute(&mut admin)
    .await
    .expect("role");
    let url = base.replacen("postgres@", &format!("{role}@"), 1);
    let refused = sqlx::PgConnection::connect(&url).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
        .execute(&mut admin)
        .await
        .expect("drop role");
    let Err(e) = refused else {
        panic!("a role limited to no connections connected")
    };
    let code = match &e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    };
    assert_eq!(code.as_deref(), Some("53300"), "{e}");
    assert!(StoreError::Db(e).is_transient());
}
