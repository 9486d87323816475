//! The outbox and its sender (SPEC 3): acknowledgements, retries and the final failure,
//! and several senders on one PostgreSQL outbox sending each message exactly once, into a
//! real Postfix and a real Dovecot mailbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use initdesk_gateway::agent::{self, NewReply};
use initdesk_gateway::outbox::{Sender, SenderSettings};
use initdesk_gateway::pipeline::{Envelope, Outcome, Source};
use initdesk_gateway::store::blobs::FsBlobStore;
use initdesk_gateway::store::{Store, orgs, outbox, tickets};
use tokio_util::sync::CancellationToken;

use crate::dovecot::Dovecot;
use crate::helpers::{Db, TestGateway};
use crate::postfix::{Postfix, free_port};

fn mail(from: &str, to: &str, subject: &str, extra: &str) -> Vec<u8> {
    format!(
        "From: Customer <{from}>\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{}@customer.test>\r\n{extra}Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\nPlease help with {subject}.\r\n",
        uuid::Uuid::new_v4().simple()
    )
    .into_bytes()
}

fn settings(relay: String, max_attempts: u32, holder: &str) -> SenderSettings {
    SenderSettings {
        relay,
        hello_name: "gateway.test".into(),
        max_attempts,
        retry_base: Duration::from_secs(1),
        concurrency: 4,
        ca_file: String::new(),
        holder: holder.into(),
        public_url: "http://gateway.test".into(),
    }
}

fn sender(gw: &TestGateway, store: &Store, s: SenderSettings) -> Sender {
    Sender::new(
        store.clone(),
        Arc::new(FsBlobStore::new(gw.dir.path().join("blobs"))),
        gw.pipeline.tokens().clone(),
        s,
    )
    .expect("sender")
}

async fn acme(store: &Store) -> i64 {
    let mut tx = store.begin_read().await.expect("begin");
    let org = orgs::org_for_domain(&mut tx, "acme.test")
        .await
        .expect("org")
        .expect("acme");
    tx.rollback().await.expect("rollback");
    org.id
}

/// States of the organization's outbox rows, in order.
/// One outbox row as the tests look at it: `(kind, state, attempts, last_error)`.
type OutboxRow = (String, String, i64, String);

async fn outbox_states(store: &Store, org: i64) -> Vec<OutboxRow> {
    let mut tx = store.begin_read().await.expect("begin");
    let rows = outbox::list(&mut tx, org).await.expect("outbox");
    tx.rollback().await.expect("rollback");
    rows.into_iter()
        .map(|(_, k, s, a, e)| (k, s, a, e))
        .collect()
}

/// Polls `org`'s outbox rows until `done` holds for them and returns them; fails after
/// `limit` with `what()` and the rows.
async fn wait_outbox(
    store: &Store,
    org: i64,
    limit: Duration,
    done: impl Fn(&[OutboxRow]) -> bool,
    what: impl Fn() -> String,
) -> Vec<OutboxRow> {
    let start = Instant::now();
    loop {
        let rows = outbox_states(store, org).await;
        if done(&rows) {
            return rows;
        }
        assert!(start.elapsed() < limit, "{}: {rows:?}", what());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a ticket at Acme's support inbox with a mail from `from`; its id.
async fn open_ticket(gw: &TestGateway, from: &str, subject: &str) -> i64 {
    let created = gw
        .pipeline
        .ingest(
            &mail(from, "support@acme.test", subject, ""),
            &Envelope::to("support@acme.test", Source::Replay),
        )
        .await
        .expect("ingest");
    let Outcome::Created { ticket_id, .. } = created else {
        panic!("{created:?}")
    };
    ticket_id
}

async fn reply_on(store: &Store, org: i64, ticket_id: i64, text: &str) -> i64 {
    let mut tx = store.begin().await.expect("begin");
    let created = agent::reply(
        &mut tx,
        org,
        ticket_id,
        &NewReply {
            content: text.into(),
            ..NewReply::default()
        },
    )
    .await
    .expect("reply");
    tx.commit().await.expect("commit");
    created.message_id
}

/// The messages of a ticket, read in a transaction of their own.
async fn messages_of(store: &Store, org: i64, ticket_id: i64) -> Vec<tickets::Message> {
    let mut tx = store.begin_read().await.expect("begin");
    let messages = tickets::list_messages(&mut tx, org, ticket_id)
        .await
        .expect("messages");
    tx.rollback().await.expect("rollback");
    messages
}

/// Waits until a [`holding_relay`] has read `n` mails; fails after 20 s.
async fn wait_received(received: &std::sync::atomic::AtomicUsize, n: usize) {
    let start = Instant::now();
    while received.load(std::sync::atomic::Ordering::SeqCst) < n {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the relay got no mail"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgement_once_per_sender_never_to_auto_replies_or_spam() {
    let gw = TestGateway::new(Db::Sqlite).await;
    let org = acme(&gw.store).await;
    let mut tx = gw.store.begin().await.expect("begin");
    orgs::create_inbox(&mut tx, org, "ack", "Acknowledged", true)
        .await
        .expect("inbox");
    tx.commit().await.expect("commit");
    gw.pipeline.refresh_routes();
    let to = Envelope::to("ack@acme.test", Source::Replay);
    let ingest = |raw: Vec<u8>| {
        let to = to.clone();
        let p = gw.pipeline.clone();
        async move { p.ingest(&raw, &to).await.expect("ingest") }
    };
    assert!(matches!(
        ingest(mail("a@customer.test", "ack@acme.test", "first", "")).await,
        Outcome::Created { .. }
    ));
    // A second new ticket from the same sender within the window: no second acknowledgement.
    ingest(mail("a@customer.test", "ack@acme.test", "second", "")).await;
    // An auto-reply opens a ticket but gets none.
    ingest(mail(
        "b@customer.test",
        "ack@acme.test",
        "Out of office",
        "Auto-Submitted: auto-replied\r\n",
    ))
    .await;
    // A customer marked as spam gets none.
    let mut tx = gw.store.begin().await.expect("begin");
    let spammer = tickets::find_or_create_customer(&mut tx, org, "s@spam.test", "s@spam.test", "")
        .await
        .expect("customer");
    tickets::set_customer_spam(&mut tx, org, spammer.id, true)
        .await
        .expect("spam");
    tx.commit().await.expect("commit");
    ingest(mail("s@spam.test", "ack@acme.test", "buy now", "")).await;
    // Mail to an inbox without acknowledgements gets none.
    gw.pipeline
        .ingest(
            &mail("c@customer.test", "support@acme.test", "plain", ""),
            &Envelope::to("support@acme.test", Source::Replay),
        )
        .await
        .expect("ingest");

    let states = outbox_states(&gw.store, org).await;
    assert_eq!(states.len(), 1, "one acknowledgement in all: {states:?}");
    let mut tx = gw.store.begin_read().await.expect("begin");
    let mut acks = Vec::new();
    for t in tickets::list_tickets(&mut tx, org).await.expect("tickets") {
        for m in tickets::list_messages(&mut tx, org, t.id)
            .await
            .expect("messages")
        {
            if m.role == "system" {
                acks.push((t.subject.clone(), m));
            }
        }
    }
    assert_eq!(acks.len(), 1);
    let (subject, ack) = &acks[0];
    assert_eq!(subject, "first");
    assert!(ack.is_auto_reply && ack.is_visible_to_customer);
    assert_eq!(ack.direction, "outbound");
    // The mail it becomes says it is automatic.
    let out = initdesk_gateway::outbox::compose::compose(
        &mut tx,
        &FsBlobStore::new(gw.dir.path().join("blobs")),
        gw.pipeline.tokens(),
        &initdesk_gateway::outbox::compose::Directory::default(),
        org,
        ack.id,
    )
    .await
    .expect("compose");
    tx.rollback().await.expect("rollback");
    let text = String::from_utf8_lossy(&out.message.formatted()).into_owned();
    assert!(text.contains("Auto-Submitted: auto-replied"), "{text}");
    // The fixture world's Acme tags subjects with its prefix.
    assert!(text.contains("Subject: Re: first [ACME #1]"), "{text}");
    assert!(
        text.contains("From: Acknowledged <ack@acme.test>"),
        "from the domain the customer wrote to: {text}"
    );
    assert!(
        !text.contains("\r\nCc:"),
        "acknowledgements go to the requester only"
    );
    gw.cleanup().await;
}

/// What the test reads of a composed mail: Message-ID, In-Reply-To, References, To, Cc and
/// the attachments' names.
type Composed = (String, String, String, String, String, Vec<String>);

/// The sender reads a whole claim's replies in one go; each mail must still be built from
/// its own message, ticket, thread and attachments, as when composed alone.
async fn a_claim_read_together_composes_each_reply_as_alone(db: Db) {
    use initdesk_gateway::outbox::compose::{self, Directory, Inputs};
    use initdesk_gateway::store::blobs::BlobStore;

    let gw = TestGateway::new(db).await;
    let org = acme(&gw.store).await;
    let first = open_ticket(&gw, "a@customer.test", "first").await;
    let second = open_ticket(&gw, "b@customer.test", "second").await;
    let blobs = FsBlobStore::new(gw.dir.path().join("blobs"));
    let sha = blobs.put(b"the report").expect("blob");
    let mut tx = gw.store.begin().await.expect("begin");
    tickets::insert_uploaded_attachment(
        &mut tx,
        org,
        "upload-1",
        "report.txt",
        "text/plain",
        10,
        &sha,
    )
    .await
    .expect("upload");
    tx.commit().await.expect("commit");
    let one = reply_on(&gw.store, org, first, "One.").await;
    let mut tx = gw.store.begin().await.expect("begin");
    let two = agent::reply(
        &mut tx,
        org,
        first,
        &NewReply {
            content: "Two, with the report.".into(),
            attachment_ids: vec!["upload-1".into()],
            ..NewReply::default()
        },
    )
    .await
    .expect("reply")
    .message_id;
    let three = agent::reply(
        &mut tx,
        org,
        second,
        &NewReply {
            content: "Three.".into(),
            external_recipient_emails: Some(vec!["c@other.test".into()]),
            ..NewReply::default()
        },
    )
    .await
    .expect("reply")
    .message_id;
    tx.commit().await.expect("commit");

    let directory = Directory::default();
    let tokens = gw.pipeline.tokens();
    let mut tx = gw.store.begin_read().await.expect("begin");
    let together = Inputs::load(&mut tx, &directory, org, &[three, one, two])
        .await
        .expect("read together");
    let mut mails = Vec::new();
    for id in [one, two, three] {
        let built = compose::build(&together, &blobs, tokens, org, id).expect("build");
        let alone = compose::compose(&mut tx, &blobs, tokens, &directory, org, id)
            .await
            .expect("compose alone");
        let (built_text, alone_text) = (built.message.formatted(), alone.message.formatted());
        let (b, a) = (
            mail_parser::MessageParser::default()
                .parse(&built_text)
                .expect("parse"),
            mail_parser::MessageParser::default()
                .parse(&alone_text)
                .expect("parse"),
        );
        for header in [
            "To",
            "Cc",
            "From",
            "Reply-To",
            "Subject",
            "Message-ID",
            "In-Reply-To",
            "References",
        ] {
            assert_eq!(
                b.header_raw(header).map(str::trim),
                a.header_raw(header).map(str::trim),
                "{header} of message {id}"
            );
        }
        assert_eq!(built.envelope, alone.envelope, "envelope of message {id}");
        let names: Vec<String> = b
            .attachments()
            .filter_map(|p| mail_parser::MimeHeaders::attachment_name(p).map(str::to_string))
            .collect();
        mails.push((
            b.header_raw("Message-ID")
                .unwrap_or_default()
                .trim()
                .to_string(),
            b.header_raw("In-Reply-To")
                .unwrap_or_default()
                .trim()
                .to_string(),
            b.header_raw("References").unwrap_or_default().to_string(),
            b.header_raw("To").unwrap_or_default().to_string(),
            b.header_raw("Cc").unwrap_or_default().to_string(),
            names,
        ));
    }
    tx.rollback().await.expect("rollback");
    let [
        (id_one, _, _, to_one, _, files_one),
        (_, reply_two, refs_two, _, _, files_two),
        (id_three, _, refs_three, to_three, cc_three, files_three),
    ]: [Composed; 3] = mails.try_into().expect("three mails");
    assert_eq!(reply_two, id_one, "the second reply answers the first");
    assert!(
        !refs_three.contains(&id_one) && !refs_two.contains(&id_three),
        "threads stay apart"
    );
    assert!(to_one.contains("a@customer.test") && to_three.contains("b@customer.test"));
    assert!(cc_three.contains("c@other.test"));
    assert_eq!(files_two, vec!["report.txt".to_string()]);
    assert!(
        files_one.is_empty() && files_three.is_empty(),
        "only the second carries the report"
    );
    gw.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_read_together_composes_each_reply_as_alone_sqlite() {
    a_claim_read_together_composes_each_reply_as_alone(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_read_together_composes_each_reply_as_alone_postgres() {
    a_claim_read_together_composes_each_reply_as_alone(Db::Postgres).await;
}

/// A relay that never answers: retries with backoff, then the message is marked failed and
/// a system note on its ticket says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_retries_then_gives_up_with_a_note() {
    let gw = TestGateway::new(Db::Sqlite).await;
    let org = acme(&gw.store).await;
    let ticket_id = open_ticket(&gw, "a@customer.test", "help").await;
    let message_id = reply_on(&gw.store, org, ticket_id, "We are on it.").await;
    // Nothing listens on this port: every attempt fails at connect.
    let dead = format!("smtp://127.0.0.1:{}", free_port());
    let s = sender(&gw, &gw.store, settings(dead, 2, "one"));
    let stop = CancellationToken::new();
    let task = tokio::spawn(s.run(stop.clone()));
    let states = wait_outbox(
        &gw.store,
        org,
        Duration::from_secs(30),
        |s| s.first().is_some_and(|s| s.1 == "failed"),
        || "not given up".into(),
    )
    .await;
    let (_, _, attempts, error) = &states[0];
    assert_eq!(*attempts, 2, "two attempts, as configured");
    assert!(!error.is_empty());
    stop.cancel();
    task.await.expect("sender");
    let messages = messages_of(&gw.store, org, ticket_id).await;
    let reply = messages.iter().find(|m| m.id == message_id).expect("reply");
    assert_eq!(reply.delivery_state.as_deref(), Some("failed"));
    let note = messages
        .iter()
        .find(|m| m.role == "system")
        .expect("a system note");
    assert!(!note.is_visible_to_customer);
    assert!(
        note.content.contains("failed") && note.content.contains(&message_id.to_string()),
        "{}",
        note.content
    );
    gw.cleanup().await;
}

/// A sender stopped while it sends finishes what it holds and records it: no row stays
/// claimed, and every reply the relay took is marked sent, row and message alike, though the
/// sends are recorded many at a time. Rows it never claimed wait for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_sender_records_every_handed_over_reply() {
    const N: usize = 60;
    let postfix = Postfix::start_routes(&[("customer.test".into(), "discard:".into())]);
    let gw = TestGateway::new(Db::Sqlite).await;
    let org = acme(&gw.store).await;
    let ticket_id = open_ticket(&gw, "c@customer.test", "stop midway").await;
    let mut replies = Vec::new();
    for i in 0..N {
        replies.push(reply_on(&gw.store, org, ticket_id, &format!("answer {i}")).await);
    }
    let relay = format!("smtp://127.0.0.1:{}", postfix.port);
    let stop = CancellationToken::new();
    let task = tokio::spawn(sender(&gw, &gw.store, settings(relay, 5, "one")).run(stop.clone()));
    let start = Instant::now();
    while !outbox_states(&gw.store, org)
        .await
        .iter()
        .any(|s| s.1 == "sent")
    {
        assert!(start.elapsed() < Duration::from_secs(30), "nothing sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    task.await.expect("sender");
    let states = outbox_states(&gw.store, org).await;
    assert!(
        states.iter().all(|s| s.1 == "sent" || s.1 == "pending"),
        "a row left claimed: {states:?}"
    );
    let sent = states.iter().filter(|s| s.1 == "sent").count();
    assert!(sent > 0, "{states:?}");
    let messages = messages_of(&gw.store, org, ticket_id).await;
    let marked = messages
        .iter()
        .filter(|m| replies.contains(&m.id) && m.delivery_state.as_deref() == Some("sent"))
        .count();
    assert_eq!(marked, sent, "each sent row's message is marked sent");
    // The rest go out after a restart.
    let stop = CancellationToken::new();
    let relay = format!("smtp://127.0.0.1:{}", postfix.port);
    let task = tokio::spawn(sender(&gw, &gw.store, settings(relay, 5, "one")).run(stop.clone()));
    wait_all_sent(&gw.store, org, &postfix).await;
    stop.cancel();
    task.await.expect("sender");
    gw.cleanup().await;
}

/// A relay that takes every mail but answers the end of its DATA only once `release` says
/// so; `received` counts the mails whose data it has read.
async fn holding_relay() -> (
    u16,
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::sync::watch::Sender<bool>,
) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (counter, mut released) = (counter.clone(), released.clone());
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = tokio::io::BufReader::new(read).lines();
                write.write_all(b"220 relay.test ESMTP\r\n").await?;
                while let Some(line) = lines.next_line().await? {
                    let verb = line.to_ascii_uppercase();
                    let reply: &[u8] = if verb.starts_with("EHLO") {
                        b"250-relay.test\r\n250 8BITMIME\r\n"
                    } else if verb.starts_with("DATA") {
                        write.write_all(b"354 go ahead\r\n").await?;
                        while let Some(l) = lines.next_line().await? {
                            if l == "." {
                                break;
                            }
                        }
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = released.wait_for(|go| *go).await;
                        b"250 2.0.0 queued\r\n"
                    } else if verb.starts_with("QUIT") {
                        write.write_all(b"221 2.0.0 bye\r\n").await?;
                        break;
                    } else {
                        b"250 2.0.0 ok\r\n"
                    };
                    write.write_all(reply).await?;
                }
                Ok::<(), std::io::Error>(())
            });
        }
    });
    (port, received, release)
}

/// The relay takes three replies while the database is down: marking them sent fails, is
/// tried again, and succeeds once the database is back, so each reply goes out once, with
/// one attempt, and no claim runs out and sends it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_handed_over_during_a_database_outage_are_marked_sent_once_it_is_back() {
    use crate::postfix::{ImmutableFiles, Outage as _};
    const N: usize = 3;
    let gw = TestGateway::new(Db::Sqlite).await;
    let org = acme(&gw.store).await;
    let ticket_id = open_ticket(&gw, "c@customer.test", "outage").await;
    for i in 0..N {
        reply_on(&gw.store, org, ticket_id, &format!("answer {i}")).await;
    }
    let (port, received, release) = holding_relay().await;
    let stop = CancellationToken::new();
    let relay = format!("smtp://127.0.0.1:{port}");
    let task = tokio::spawn(sender(&gw, &gw.store, settings(relay, 5, "one")).run(stop.clone()));
    wait_received(&received, N).await;
    let mut outage = ImmutableFiles::of_database(&gw.dir.path().join("gateway.db"));
    outage.break_db();
    release.send(true).expect("release");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = outbox_states(&gw.store, org).await;
    outage.restore_db();
    assert!(
        during.iter().all(|s| s.1 == "sending"),
        "nothing can be marked while the database is down: {during:?}"
    );
    let states = wait_outbox(
        &gw.store,
        org,
        Duration::from_secs(20),
        |s| s.iter().all(|s| s.1 == "sent"),
        || "not marked sent after the outage".into(),
    )
    .await;
    assert!(
        states.iter().all(|s| s.2 == 1),
        "one attempt each: {states:?}"
    );
    stop.cancel();
    task.await.expect("sender");
    assert_eq!(
        received.load(std::sync::atomic::Ordering::SeqCst),
        N,
        "each reply handed over once"
    );
    gw.cleanup().await;
}

/// A DSN read while the sender has yet to record the relay's `250` (a local relay bounces
/// within milliseconds) leaves the reply failed: the later `sent` mark does not undo it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_read_before_the_sent_mark_keeps_the_reply_failed() {
    let gw = TestGateway::new(Db::Sqlite).await;
    let org = acme(&gw.store).await;
    let ticket_id = open_ticket(&gw, "ghost@customer.test", "bounce race").await;
    let reply = reply_on(&gw.store, org, ticket_id, "Hello?").await;
    let (port, received, release) = holding_relay().await;
    let stop = CancellationToken::new();
    let relay = format!("smtp://127.0.0.1:{port}");
    let task = tokio::spawn(sender(&gw, &gw.store, settings(relay, 5, "one")).run(stop.clone()));
    wait_received(&received, 1).await;
    let verp = format!(
        "support+{}@acme.test",
        gw.pipeline.tokens().bounce_detail(org, reply)
    );
    let dsn = format!(
        "From: Mail Delivery System <MAILER-DAEMON@customer.test>\r\nTo: {verp}\r\n\
         Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n\
         --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; customer.test\r\n\r\n\
         Final-Recipient: rfc822; ghost@customer.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n--b--\r\n"
    );
    let outcome = gw
        .pipeline
        .ingest(dsn.as_bytes(), &Envelope::to(&verp, Source::Replay))
        .await
        .expect("ingest the DSN");
    assert!(
        matches!(outcome, Outcome::Bounce { linked_message_id: Some(id) } if id == reply),
        "{outcome:?}"
    );
    release.send(true).expect("release");
    wait_outbox(
        &gw.store,
        org,
        Duration::from_secs(20),
        |s| s.iter().all(|s| s.1 == "sent"),
        || "the relay's 250 not recorded".into(),
    )
    .await;
    stop.cancel();
    task.await.expect("sender");
    let messages = messages_of(&gw.store, org, ticket_id).await;
    let state = messages
        .iter()
        .find(|m| m.id == reply)
        .and_then(|m| m.delivery_state.clone());
    assert_eq!(state.as_deref(), Some("failed"), "{messages:#?}");
    assert!(
        messages.iter().any(|m| m.role == "system"),
        "the bounce is noted on the ticket"
    );
    gw.cleanup().await;
}

/// Two instances' senders share one PostgreSQL outbox: 40 replies reach the customer's real
/// mailbox exactly once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_on_postgres_send_each_message_once() {
    const N: usize = 40;
    let customer = ("customer@customer.test", "pw");
    let dovecot = Dovecot::start(&[customer]).await;
    let postfix = Postfix::start_routes(&[(
        "customer.test".into(),
        format!("lmtp:inet:127.0.0.1:{}", dovecot.lmtp_port),
    )]);
    let gw = TestGateway::new(Db::Postgres).await;
    let org = acme(&gw.store).await;
    let ticket_id = open_ticket(&gw, customer.0, "many answers").await;
    for i in 0..N {
        reply_on(&gw.store, org, ticket_id, &format!("answer {i}")).await;
    }
    let relay = format!("smtp://127.0.0.1:{}", postfix.port);
    let store_b = initdesk_gateway::store::open(&gw.url, 4)
        .await
        .expect("second pool");
    let stop = CancellationToken::new();
    let a = tokio::spawn(
        sender(&gw, &gw.store, settings(relay.clone(), 5, "instance-a")).run(stop.clone()),
    );
    let b = tokio::spawn(sender(&gw, &store_b, settings(relay, 5, "instance-b")).run(stop.clone()));
    wait_all_sent(&gw.store, org, &postfix).await;
    stop.cancel();
    a.await.expect("a");
    b.await.expect("b");
    let start = Instant::now();
    loop {
        let n = dovecot
            .messages(customer.0, customer.1, "INBOX")
            .await
            .len();
        if n >= N {
            // Give a duplicate time to show up.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let n = dovecot
                .messages(customer.0, customer.1, "INBOX")
                .await
                .len();
            assert_eq!(n, N, "each reply delivered exactly once");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{n} of {N} delivered\n{}",
            postfix.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let states = outbox_states(&gw.store, org).await;
    assert!(
        states.iter().all(|s| s.2 == 1),
        "one attempt each: {states:?}"
    );
    store_b.close().await;
    gw.cleanup().await;
}

/// What the test's webhook receiver got: (event, body, signature header).
type Received = Arc<std::sync::Mutex<Vec<(String, serde_json::Value, String, String)>>>;

/// A real HTTP receiver on 127.0.0.1 that fails its first request with 500.
async fn receiver() -> (u16, Received) {
    use axum::http::{HeaderMap, StatusCode};
    let got: Received = Arc::default();
    let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let state = (got.clone(), failed_once);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            |axum::extract::State((got, failed_once)): axum::extract::State<(
                Received,
                Arc<std::sync::atomic::AtomicBool>,
            )>,
             headers: HeaderMap,
             body: String| async move {
                if !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                got.lock().expect("lock").push((
                    h("x-initdesk-event"),
                    json,
                    h("x-initdesk-signature"),
                    body,
                ));
                StatusCode::NO_CONTENT
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.with_state(state)).await;
    });
    (port, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_and_never_for_spam() {
    let (port, got) = receiver().await;
    let gw = TestGateway::new(Db::Sqlite).await;
    let org = acme(&gw.store).await;
    let mut tx = gw.store.begin().await.expect("begin");
    initdesk_gateway::with_tx!(&mut tx, |c| sqlx::query(
        "UPDATE organizations SET webhook_url = $1, webhook_secret = 'hook-secret' WHERE id = $2"
    )
    .bind(format!("http://127.0.0.1:{port}/hook"))
    .bind(org)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .expect("configure the webhook");
    tx.commit().await.expect("commit");
    gw.pipeline.refresh_routes();

    let ticket_id = open_ticket(&gw, "a@customer.test", "hooked").await;
    // Spam opens a ticket but sends no webhook.
    gw.pipeline
        .ingest(
            &mail(
                "s@spam.test",
                "support@acme.test",
                "cheap pills",
                "X-Spam-Flag: YES\r\n",
            ),
            &Envelope::to("support@acme.test", Source::Replay),
        )
        .await
        .expect("ingest spam");
    reply_on(&gw.store, org, ticket_id, "Answer.").await;

    let dead = format!("smtp://127.0.0.1:{}", free_port());
    let s = sender(&gw, &gw.store, settings(dead, 3, "one"));
    let stop = CancellationToken::new();
    let task = tokio::spawn(s.run(stop.clone()));
    let start = Instant::now();
    loop {
        if got.lock().expect("lock").len() >= 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "webhooks: {:?}",
            got.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    task.await.expect("sender");
    let got = got.lock().expect("lock").clone();
    let mut events: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    events.sort_unstable();
    assert_eq!(
        events,
        vec!["message.created", "ticket.created", "ticket.updated"],
        "one of each, none for the spam ticket"
    );
    for (event, json, signature, body) in &got {
        assert_eq!(json["event"], event.as_str());
        assert_eq!(json["data"]["ticket"]["id"], ticket_id);
        let (t, v1) = signature
            .split_once(',')
            .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
            .unwrap_or_else(|| panic!("signature header {signature:?}"));
        let t: i64 = t.parse().expect("timestamp");
        assert_eq!(
            initdesk_gateway::outbox::webhook::sign("hook-secret", t, body),
            v1,
            "the signature verifies"
        );
    }
    let created = got
        .iter()
        .find(|g| g.0 == "ticket.created")
        .expect("created");
    assert_eq!(created.1["data"]["ticket"]["subject"], "hooked");
    assert_eq!(created.1["data"]["message"]["role"], "customer");
    let states = outbox_states(&gw.store, org).await;
    let hooks: Vec<_> = states.iter().filter(|s| s.0 == "webhook").collect();
    assert!(hooks.iter().all(|s| s.1 == "sent"), "{hooks:?}");
    assert!(
        hooks.iter().any(|s| s.2 == 2),
        "the first delivery failed with 500 and was retried: {hooks:?}"
    );
    gw.cleanup().await;
}

/// Waits until every outbox row of `org` is `sent`.
async fn wait_all_sent(store: &Store, org: i64, postfix: &Postfix) {
    wait_outbox(
        store,
        org,
        Duration::from_secs(60),
        |s| !s.is_empty() && s.iter().all(|s| s.1 == "sent"),
        || format!("not all sent\n{}", postfix.log()),
    )
    .await;
}

/// The relay connection's TLS modes against a real Postfix with a private CA's certificate:
/// STARTTLS (`?tls=required`) and implicit TLS (`smtps://`) deliver, each mail arrives
/// encrypted; without the CA, the certificate is refused and nothing is sent in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_over_starttls_and_implicit_tls() {
    let customer = ("tls@customer.test", "pw");
    let dovecot = Dovecot::start(&[customer]).await;
    let certs = tempfile::tempdir().expect("tempdir");
    std::process::Command::new("chmod")
        .arg("755")
        .arg(certs.path())
        .status()
        .expect("chmod");
    let ca = crate::dovecot::make_certificates(certs.path());
    let postfix = Postfix::start_tls(
        &[(
            "customer.test".into(),
            format!("lmtp:inet:127.0.0.1:{}", dovecot.lmtp_port),
        )],
        certs.path(),
    );
    let smtps = postfix.smtps_port.expect("smtps port");
    let gw = TestGateway::new(Db::Sqlite).await;
    let org = acme(&gw.store).await;
    let ticket_id = open_ticket(&gw, customer.0, "secure").await;
    let with_ca = |relay: String| {
        let mut s = settings(relay, 3, "tls");
        s.ca_file = ca.display().to_string();
        s
    };

    // Without the private CA the certificate is not trusted: the reply waits for a retry.
    reply_on(&gw.store, org, ticket_id, "untrusted").await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(
        sender(
            &gw,
            &gw.store,
            settings(
                format!("smtp://localhost:{}?tls=required", postfix.port),
                3,
                "tls",
            ),
        )
        .run(stop.clone()),
    );
    // Claimed ("sending", attempts already counted) is not yet failed: wait for the attempt
    // to end with its error.
    let states = wait_outbox(
        &gw.store,
        org,
        Duration::from_secs(30),
        |s| {
            s.iter()
                .any(|s| s.2 >= 1 && s.1 != "sent" && s.1 != "sending")
        },
        || "no failed attempt".into(),
    )
    .await;
    assert!(
        states.iter().all(|s| s.1 != "sent"),
        "sent without a trusted certificate: {states:?}"
    );
    let error = &states[0].3;
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    stop.cancel();
    task.await.expect("sender");
    // Retried later by a sender that trusts the CA, through STARTTLS, with another reply.
    {
        let mut tx = gw.store.begin().await.expect("begin");
        initdesk_gateway::with_tx!(&mut tx, |c| sqlx::query(
            "UPDATE outbox SET next_attempt_ms = 0, claimed_by = NULL, claimed_until_ms = NULL"
        )
        .execute(c)
        .await
        .map(|_| ()))
        .expect("due now");
        tx.commit().await.expect("commit");
    }
    reply_on(&gw.store, org, ticket_id, "over starttls").await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(
        sender(
            &gw,
            &gw.store,
            with_ca(format!("smtp://localhost:{}?tls=required", postfix.port)),
        )
        .run(stop.clone()),
    );
    wait_all_sent(&gw.store, org, &postfix).await;
    stop.cancel();
    task.await.expect("sender");

    reply_on(&gw.store, org, ticket_id, "over implicit tls").await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(
        sender(
            &gw,
            &gw.store,
            with_ca(format!("smtps://localhost:{smtps}")),
        )
        .run(stop.clone()),
    );
    wait_all_sent(&gw.store, org, &postfix).await;
    stop.cancel();
    task.await.expect("sender");

    let start = Instant::now();
    loop {
        let got = dovecot
            .messages(customer.0, customer.1, "INBOX")
            .await
            .len();
        if got >= 3 {
            assert_eq!(got, 3, "each reply once");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{got} of 3 delivered\n{}",
            postfix.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Postfix logs each encrypted session; the refused one never got that far.
    let log = postfix.log();
    assert!(
        log.matches("TLS connection established from").count() >= 2,
        "both senders talked TLS:\n{log}"
    );
    gw.cleanup().await;
}
