//! The pipeline against real databases: durability, quarantine, gap-free numbering, blobs.

use std::collections::HashSet;

use initdesk_gateway::pipeline::{Delivery, Envelope, IngestError, Outcome, Source};
use initdesk_gateway::store::blobs::{BlobStore, FsBlobStore};
use initdesk_gateway::store::{Store, quarantine, tickets};
use initdesk_gateway::with_tx;

use crate::helpers::{Db, TestGateway};

fn mail(from: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Customer <{from}>\r\nTo: support@acme.test\r\nSubject: {subject}\r\nMessage-ID: <{}@example.com>\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n",
        uuid::Uuid::new_v4().simple()
    )
    .into_bytes()
}

fn to_support() -> Envelope {
    Envelope::to("support@acme.test", Source::Replay)
}

/// Makes the database refuse any message whose subject is `poison` (a non-transient failure).
async fn poison(store: &Store) {
    let mut tx = store.begin().await.expect("begin");
    match store {
        Store::Sqlite(..) => {
            with_tx!(&mut tx, |c| sqlx::query(
                "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.subject = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned message'); END"
            )
            .execute(c)
            .await
            .map(|_| ()))
            .expect("trigger");
        }
        Store::Postgres(_) => {
            for sql in [
                "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN IF NEW.subject = 'poison' THEN RAISE EXCEPTION 'poisoned message'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER poison BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION poison()",
            ] {
                with_tx!(&mut tx, |c| sqlx::query(sql).execute(c).await.map(|_| ()))
                    .expect("trigger");
            }
        }
    }
    tx.commit().await.expect("commit");
}

async fn cure(store: &Store) {
    let mut tx = store.begin().await.expect("begin");
    with_tx!(&mut tx, |c| sqlx::query("DROP TRIGGER poison ON messages")
        .execute(c)
        .await
        .map(|_| ()))
    .or_else(|_| Ok::<(), sqlx::Error>(()))
    .expect("drop");
    tx.commit().await.expect("commit");
    if let Store::Sqlite(..) = store {
        let mut tx = store.begin().await.expect("begin");
        with_tx!(&mut tx, |c| sqlx::query("DROP TRIGGER IF EXISTS poison")
            .execute(c)
            .await
            .map(|_| ()))
        .expect("drop");
        tx.commit().await.expect("commit");
    }
}

async fn public_ids(store: &Store) -> Vec<i64> {
    let mut tx = store.begin_read().await.expect("begin");
    let ids = tickets::list_tickets(&mut tx, 1)
        .await
        .expect("tickets")
        .into_iter()
        .map(|t| t.public_id)
        .collect();
    tx.rollback().await.expect("rollback");
    ids
}

async fn quarantine_then_reprocess(db: Db) {
    let gw = TestGateway::new(db).await;
    poison(&gw.store).await;
    let batch = vec![
        Delivery {
            raw: std::sync::Arc::from(mail("a@example.com", "first", "one")),
            envelope: to_support(),
        },
        Delivery {
            raw: std::sync::Arc::from(mail("b@example.com", "poison", "two")),
            envelope: to_support(),
        },
        Delivery {
            raw: std::sync::Arc::from(mail("c@example.com", "third", "three")),
            envelope: to_support(),
        },
    ];
    let results = gw.pipeline.ingest_batch(batch).await;
    let kinds: Vec<&str> = results
        .iter()
        .map(|r| r.as_ref().map(Outcome::kind).unwrap_or("error"))
        .collect();
    assert_eq!(
        kinds,
        ["created", "quarantined", "created"],
        "one bad message never blocks the others: {results:?}"
    );
    // The quarantined message gave its ticket number back: numbering stays gap-free.
    assert_eq!(public_ids(&gw.store).await, vec![1, 2]);

    let mut tx = gw.store.begin_read().await.expect("begin");
    let open = quarantine::list_open(&mut tx, Some(1)).await.expect("list");
    tx.rollback().await.expect("rollback");
    assert_eq!(open.len(), 1);
    assert!(
        open[0].reason.contains("poisoned message"),
        "{}",
        open[0].reason
    );
    assert!(
        String::from_utf8_lossy(&open[0].raw).contains("Subject: poison"),
        "the raw message is kept"
    );

    // Still broken: stays in quarantine, attempts counted.
    let again = gw.pipeline.reprocess(open[0].id).await.expect("reprocess");
    assert_eq!(again.kind(), "quarantined");
    cure(&gw.store).await;
    let fixed = gw.pipeline.reprocess(open[0].id).await.expect("reprocess");
    assert!(
        matches!(fixed, Outcome::Created { public_id: 3, .. }),
        "{fixed:?}"
    );
    let mut tx = gw.store.begin_read().await.expect("begin");
    assert!(
        quarantine::list_open(&mut tx, None)
            .await
            .expect("list")
            .is_empty()
    );
    let entry = quarantine::get(&mut tx, open[0].id)
        .await
        .expect("get")
        .expect("entry");
    tx.rollback().await.expect("rollback");
    assert_eq!(entry.attempts, 2);
    assert_eq!(entry.resolution, "created");
    gw.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_and_reprocess_sqlite() {
    quarantine_then_reprocess(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_and_reprocess_postgres() {
    quarantine_then_reprocess(Db::Postgres).await;
}

async fn database_down_is_temporary(db: Db) {
    let gw = TestGateway::new(db).await;
    gw.store.close().await;
    let err = gw
        .pipeline
        .ingest(&mail("a@example.com", "hi", "x"), &to_support())
        .await
        .expect_err("database is closed");
    assert!(
        err.is_transient(),
        "a database failure is temporary, not a drop: {err:?}"
    );
    gw.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_is_temporary_sqlite() {
    database_down_is_temporary(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_is_temporary_postgres() {
    database_down_is_temporary(Db::Postgres).await;
}

async fn concurrent_numbering(db: Db) {
    let gw = TestGateway::new(db).await;
    poison(&gw.store).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let p = gw.pipeline.clone();
        tasks.push(tokio::spawn(async move {
            let subject = if i % 7 == 3 {
                "poison".to_string()
            } else {
                format!("request {i}")
            };
            p.ingest(
                &mail(&format!("c{i}@example.com"), &subject, "hello"),
                &to_support(),
            )
            .await
        }));
    }
    let mut created = 0;
    for t in tasks {
        if let Ok(Outcome::Created { .. }) = t.await.expect("join") {
            created += 1;
        }
    }
    let mut ids = public_ids(&gw.store).await;
    ids.sort();
    assert_eq!(
        ids,
        (1..=created).collect::<Vec<i64>>(),
        "public_id is gap-free under concurrency"
    );
    gw.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_numbering_sqlite() {
    concurrent_numbering(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_numbering_postgres() {
    concurrent_numbering(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mail_and_attachments_are_kept_once() {
    let gw = TestGateway::new(Db::Sqlite).await;
    let attachment = "JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K";
    let with_attachment = |from: &str| {
        format!(
            "From: {from}\r\nTo: support@acme.test\r\nSubject: invoice\r\nMessage-ID: <{}@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/pdf; name=invoice.pdf\r\nContent-Disposition: attachment; filename=invoice.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{attachment}\r\n--b--\r\n",
            uuid::Uuid::new_v4().simple()
        )
        .into_bytes()
    };
    let first = with_attachment("a@example.com");
    gw.pipeline
        .ingest(&first, &to_support())
        .await
        .expect("first");
    gw.pipeline
        .ingest(&with_attachment("b@example.com"), &to_support())
        .await
        .expect("second");

    let mut tx = gw.store.begin_read().await.expect("begin");
    let mut shas = HashSet::new();
    let mut raw_shas = Vec::new();
    for t in tickets::list_tickets(&mut tx, 1).await.expect("tickets") {
        assert!(t.has_attachments);
        for m in tickets::list_messages(&mut tx, 1, t.id)
            .await
            .expect("messages")
        {
            raw_shas.push(m.raw_sha256.clone().expect("raw kept"));
            for a in tickets::list_attachments(&mut tx, 1, m.id)
                .await
                .expect("attachments")
            {
                assert_eq!(a.name, "invoice.pdf");
                assert_eq!(a.content_type, "application/pdf");
                assert!(
                    uuid::Uuid::parse_str(&a.id).is_ok(),
                    "attachment ids are UUIDs"
                );
                shas.insert(a.sha256);
            }
        }
    }
    let blobs = FsBlobStore::new(gw.dir.path().join("blobs"));
    let raw = initdesk_gateway::store::raw::get(&mut tx, &blobs, 1, &raw_shas[0])
        .await
        .expect("raw");
    tx.rollback().await.expect("rollback");
    assert_eq!(
        raw.as_deref(),
        Some(first.as_slice()),
        "raw bytes come back exactly"
    );
    assert_eq!(shas.len(), 1, "the same attachment is stored once");
    let sha = shas.into_iter().next().expect("sha");
    assert!(blobs.get(&sha).expect("blob").starts_with(b"%PDF-1.4"));
    gw.cleanup().await;
}

/// Large raw mail lives in the blob store, not in the row, and comes back byte for byte.
async fn large_raw_mail_goes_to_the_blob_store(db: Db) {
    use base64::Engine as _;
    use rand::RngCore;
    let gw = TestGateway::new(db).await;
    // Random bytes do not compress, so the raw copy is far above the inline limit.
    let mut payload = vec![0u8; 200 * 1024];
    rand::rng().fill_bytes(&mut payload);
    let mut b64 = String::new();
    for chunk in payload.chunks(57) {
        b64.push_str(&base64::engine::general_purpose::STANDARD.encode(chunk));
        b64.push_str("\r\n");
    }
    let raw = format!(
        "From: a@example.com\r\nTo: support@acme.test\r\nSubject: big\r\nMessage-ID: <big@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/octet-stream; name=x.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}--b--\r\n"
    )
    .into_bytes();
    gw.pipeline
        .ingest(&raw, &to_support())
        .await
        .expect("ingest");
    let sha = initdesk_gateway::store::blobs::sha256_hex(&raw);
    let mut tx = gw.store.begin_read().await.expect("begin");
    let (data_len, blob): (i64, Option<String>) = with_tx!(&mut tx, |c| sqlx::query_as(
        "SELECT CAST(length(data) AS BIGINT), blob_sha256 FROM raw_messages WHERE sha256 = $1"
    )
    .bind(&sha)
    .fetch_one(c)
    .await)
    .expect("row");
    assert_eq!(data_len, 0, "the row holds no bytes");
    let blobs = FsBlobStore::new(gw.dir.path().join("blobs"));
    let blob = blob.expect("the row names its blob");
    assert_eq!(
        blob,
        initdesk_gateway::store::blobs::raw_name(&sha),
        "named by the raw mail's hash, apart from attachments"
    );
    assert!(blobs.get(&blob).is_ok(), "the blob exists");
    let back = initdesk_gateway::store::raw::get(&mut tx, &blobs, 1, &sha)
        .await
        .expect("get");
    tx.rollback().await.expect("rollback");
    assert_eq!(back.as_deref(), Some(raw.as_slice()), "byte for byte");
    gw.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_raw_mail_goes_to_the_blob_store_sqlite() {
    large_raw_mail_goes_to_the_blob_store(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_raw_mail_goes_to_the_blob_store_postgres() {
    large_raw_mail_goes_to_the_blob_store(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_recipient_stores_nothing() {
    let gw = TestGateway::new(Db::Sqlite).await;
    let err = gw
        .pipeline
        .ingest(
            &mail("a@example.com", "x", "y"),
            &Envelope::to("nobody@acme.test", Source::Replay),
        )
        .await
        .expect_err("unknown");
    assert!(matches!(err, IngestError::UnknownRecipient(_)), "{err:?}");
    let err = gw
        .pipeline
        .ingest(
            &mail("a@example.com", "x", "y"),
            &Envelope::to("support@elsewhere.test", Source::Replay),
        )
        .await
        .expect_err("unknown");
    assert!(matches!(err, IngestError::UnknownRecipient(_)), "{err:?}");
    assert!(public_ids(&gw.store).await.is_empty());
    gw.cleanup().await;
}

/// A batch reads duplicates, customers and recent tickets once; later messages of the same
/// batch must still see what earlier ones wrote.
async fn a_batch_sees_its_own_writes(db: Db) {
    let mut settings = initdesk_gateway::pipeline::Settings {
        public_url: "http://gateway.test".into(),
        ..Default::default()
    };
    settings.policy.rate_limit_tickets = 3;
    let gw = TestGateway::with_settings(db, settings).await;
    let ingest = |raws: Vec<Vec<u8>>| {
        let batch = raws
            .into_iter()
            .map(|raw| Delivery {
                raw: std::sync::Arc::from(raw),
                envelope: to_support(),
            })
            .collect();
        gw.pipeline.ingest_batch(batch)
    };
    // One ticket stored before the batch counts towards the limit, too.
    let nameless = |subject: &str, body: &str| {
        String::from_utf8_lossy(&mail("x@example.com", subject, body))
            .replace("From: Customer <x@example.com>", "From: x@example.com")
            .into_bytes()
    };
    let before = ingest(vec![nameless("before", "zero")]).await;
    assert_eq!(before[0].as_ref().map(Outcome::kind).ok(), Some("created"));

    let first = nameless("first", "one");
    let first_id = String::from_utf8_lossy(&first)
        .split("Message-ID: ")
        .nth(1)
        .and_then(|s| s.split("\r\n").next())
        .map(str::to_string)
        .expect("message id");
    let reply = format!(
        "From: Xavier <x@example.com>\r\nTo: support@acme.test\r\nSubject: Re: first\r\nIn-Reply-To: {first_id}\r\nMessage-ID: <reply-{}@example.com>\r\n\r\nthanks\r\n",
        uuid::Uuid::new_v4().simple()
    );
    let results = ingest(vec![
        first.clone(),
        first.clone(),
        reply.into_bytes(),
        nameless("second", "two"),
        nameless("third", "three"),
        mail("y@example.com", "other", "four"),
    ])
    .await;
    let kinds: Vec<&str> = results
        .iter()
        .map(|r| r.as_ref().map(Outcome::kind).unwrap_or("error"))
        .collect();
    assert_eq!(
        kinds,
        [
            "created",
            "duplicate",
            "appended",
            "created",
            "created",
            "created"
        ],
        "{results:?}"
    );
    let Ok(Outcome::Created { ticket_id, .. }) = &results[0] else {
        panic!("{results:?}");
    };
    let Ok(Outcome::Appended {
        ticket_id: replied, ..
    }) = &results[2]
    else {
        panic!("{results:?}");
    };
    assert_eq!(
        ticket_id, replied,
        "the reply finds a ticket of its own batch"
    );

    let mut tx = gw.store.begin_read().await.expect("begin");
    let all = tickets::list_tickets(&mut tx, 1).await.expect("tickets");
    let spam: Vec<&str> = all
        .iter()
        .filter(|t| t.is_spam)
        .map(|t| t.subject.as_str())
        .collect();
    // before, first, second: three in the window; the fourth from the same sender is over.
    assert_eq!(
        spam,
        ["third"],
        "rate limit across stored and batch tickets"
    );
    let customer = tickets::customer_by_email(&mut tx, 1, "x@example.com")
        .await
        .expect("customer")
        .expect("exists");
    assert_eq!(
        customer.name, "Xavier",
        "a reply in the batch names the customer"
    );
    tx.rollback().await.expect("rollback");
    // The batch took six numbers for six messages and gave back the two it did not use.
    assert_eq!(public_ids(&gw.store).await, vec![1, 2, 3, 4, 5]);
    let next = ingest(vec![mail("z@example.com", "after", "five")]).await;
    assert!(
        matches!(next[0], Ok(Outcome::Created { public_id: 6, .. })),
        "{next:?}"
    );
    gw.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sees_its_own_writes_sqlite() {
    a_batch_sees_its_own_writes(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sees_its_own_writes_postgres() {
    a_batch_sees_its_own_writes(Db::Postgres).await;
}

/// Rows held back for a bulk write: seen by every later statement of the transaction, ids
/// that never collide with a row written meanwhile, and a failed bulk write reported as such.
async fn held_back_rows(db: Db) {
    use initdesk_gateway::store::tickets::{NewMessage, NewTicket};
    let gw = TestGateway::new(db).await;
    let mut tx = gw.store.begin().await.expect("begin");
    tx.hold_back_inserts(4);
    let customer =
        tickets::create_customer(&mut tx, 1, "held@example.com", "held@example.com", "Held")
            .await
            .expect("customer");
    let ticket = |subject: &'static str| NewTicket {
        organization_id: 1,
        inbox_id: 1,
        customer_id: customer.id,
        subject,
        status: "created",
        waiting_on: "associate",
        is_spam: false,
        origin: "email",
        description: "",
        description_html: "",
        external_recipient_emails: &[],
        language: "",
        has_attachments: false,
        created_by_role: "customer",
        created_by_user_id: None,
        reply_domain: "",
    };
    let first = tickets::insert_numbered_ticket(&mut tx, &ticket("one"), 1)
        .await
        .expect("ticket");
    let message = |ticket_id: i64, header: &'static str| NewMessage {
        organization_id: 1,
        ticket_id,
        role: "customer",
        direction: "inbound",
        sender_email: "held@example.com",
        is_visible_to_customer: true,
        message_id_header: Some(header),
        ..NewMessage::default()
    };
    let m1 = tickets::insert_message(&mut tx, &message(first, "<one@example.com>"))
        .await
        .expect("message");
    let m2 = tickets::insert_message(&mut tx, &message(first, "<two@example.com>"))
        .await
        .expect("message");
    assert_eq!(m2, m1 + 1, "ids in the order rows are held back");

    // A lookup by a held-back Message-ID finds it (the rows are written first).
    let found = tickets::tickets_by_message_ids(&mut tx, 1, &["<two@example.com>".to_string()])
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(found.1.iter().map(|t| t.id).collect::<Vec<_>>(), [first]);
    assert_eq!(
        tickets::customer_by_email(&mut tx, 1, "held@example.com")
            .await
            .expect("read")
            .map(|c| c.id),
        Some(customer.id)
    );

    // A row written in between takes the next id; later held-back rows come after it.
    with_tx!(&mut tx, |c| sqlx::query(
        "INSERT INTO messages (organization_id, ticket_id, role, direction, is_visible_to_customer, created_at, updated_at)
         VALUES (1, $1, 'system', 'outbound', TRUE, $2, $2)"
    )
    .bind(first)
    .bind(chrono::Utc::now())
    .execute(c)
    .await
    .map(|_| ()))
    .expect("plain insert");
    let m3 = tickets::insert_message(&mut tx, &message(first, "<three@example.com>"))
        .await
        .expect("message");
    tx.commit().await.expect("commit writes what is held back");

    let mut tx = gw.store.begin_read().await.expect("begin");
    let stored = tickets::list_messages(&mut tx, 1, first)
        .await
        .expect("messages");
    tx.rollback().await.expect("rollback");
    let ids: Vec<i64> = stored.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(
        ids.contains(&m1) && ids.contains(&m2) && ids.contains(&m3),
        "{ids:?}"
    );
    assert!(m1 < m2 && m2 < m3, "{ids:?}");
    if db == Db::Sqlite {
        // SQLite reads its counter again after a bulk write: the plain row sorts between.
        assert!(ids[2] > m2 && ids[2] < m3, "{ids:?}");
    }

    // A held-back customer that exists after all fails the bulk write, and says so.
    let mut tx = gw.store.begin().await.expect("begin");
    tx.hold_back_inserts(1);
    tickets::create_customer(&mut tx, 1, "held@example.com", "held@example.com", "")
        .await
        .expect("held");
    assert!(!tx.bulk_write_failed());
    let written = tx.write_pending().await;
    assert!(written.is_err());
    assert!(tx.bulk_write_failed());
    tx.discard().await;
    gw.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_back_rows_sqlite() {
    held_back_rows(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_back_rows_postgres() {
    held_back_rows(Db::Postgres).await;
}

/// The store's PostgreSQL connections send without Nagle's delay (sqlx 0.9 no longer asks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_have_tcp_nodelay() {
    let gw = TestGateway::new(Db::Postgres).await;
    let mut tx = gw.store.begin().await.expect("begin");
    let (local, remote): (i32, i32) = with_tx!(&mut tx, |c| sqlx::query_as(
        "SELECT inet_client_port(), inet_server_port()"
    )
    .fetch_one(c)
    .await)
    .expect("ports");
    let set = initdesk_gateway::store::nodelay::is_set(
        u16::try_from(local).expect("port"),
        u16::try_from(remote).expect("port"),
    );
    tx.rollback().await.expect("rollback");
    assert_eq!(
        set,
        Some(true),
        "the connection's socket is found and has TCP_NODELAY"
    );
    gw.cleanup().await;
}
