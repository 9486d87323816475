//! IMAP ingestion against a real, private Dovecot (SPEC 5.3, issue 4).
//!
//! The fetchers run in-process over a [`TestGateway`] (SQLite or PostgreSQL), exactly as
//! `serve` starts them; Dovecot is a real server on 127.0.0.1 (see `dovecot.rs`).

use std::time::{Duration, Instant};

use initdesk_gateway::config::{ImapConfig, ImapGlobalConfig};
use initdesk_gateway::intake::Intake;
use initdesk_gateway::listeners::imap::{self, Fetchers, ImapStatus, Source};
use initdesk_gateway::pipeline::Pipeline;
use initdesk_gateway::store::{Store, orgs, tickets};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dovecot::Dovecot;
use crate::helpers::{Db, TestGateway};

const SUPPORT: (&str, &str) = ("support@acme.test", "support-secret");
const HELP: (&str, &str) = ("help@globex.test", "help-secret");

/// A small customer mail with a unique Message-ID.
fn mail(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Customer <{from}>\r\nTo: support@acme.test\r\nSubject: {subject}\r\nMessage-ID: <{}@customer.test>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\nHello, {subject}: please help.\r\n",
        uuid::Uuid::new_v4().simple()
    )
    .into_bytes()
}

/// The IMAP source of `domain`'s inbox `prefix`, reading `user`'s INBOX on `dovecot`.
async fn source(
    store: &Store,
    domain: &str,
    prefix: &str,
    dovecot: &Dovecot,
    (user, password): (&str, &str),
) -> Source {
    let mut tx = store.begin_read().await.expect("begin");
    let org = orgs::org_for_domain(&mut tx, domain)
        .await
        .expect("org")
        .expect("org exists");
    let inbox = orgs::inbox_by_prefix(&mut tx, org.id, prefix)
        .await
        .expect("inbox")
        .expect("inbox exists");
    tx.rollback().await.expect("rollback");
    Source {
        org_id: org.id,
        inbox_id: inbox.id,
        name: format!("{domain}/{prefix}"),
        config: ImapConfig {
            host: "127.0.0.1".into(),
            port: dovecot.port,
            tls: "none".into(),
            user: user.into(),
            password: password.into(),
            password_file: String::new(),
            password_command: String::new(),
            oauth2_token_command: String::new(),
            folder: "INBOX".into(),
            after: "seen".into(),
            ca_file: String::new(),
            idle: true,
            // Long enough that only IDLE can explain a quick arrival.
            poll_interval_secs: 3600,
            idle_refresh_secs: 1500,
            batch_size: 50,
            timeout_secs: 10,
        },
    }
}

fn global(lease_secs: u64) -> ImapGlobalConfig {
    ImapGlobalConfig {
        lease_secs,
        max_backoff_secs: 2,
        instance_id: String::new(),
    }
}

/// Fetchers running in-process, as `serve` runs them.
struct Running {
    stop: CancellationToken,
    tracker: TaskTracker,
    committer: tokio::task::JoinHandle<()>,
    status: ImapStatus,
}

fn start(gw: &TestGateway, sources: Vec<Source>, holder: &str, g: ImapGlobalConfig) -> Running {
    start_on(&gw.store, &gw.pipeline, sources, holder, g)
}

fn start_on(
    store: &Store,
    pipeline: &Pipeline,
    sources: Vec<Source>,
    holder: &str,
    g: ImapGlobalConfig,
) -> Running {
    let (intake, committer) = Intake::start(pipeline.clone());
    let status = ImapStatus::default();
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    imap::spawn(
        sources,
        Fetchers {
            store: store.clone(),
            intake,
            status: status.clone(),
            global: g,
            max_message_bytes: 25 * 1024 * 1024,
            holder: holder.into(),
        },
        stop.clone(),
        &tracker,
    );
    tracker.close();
    Running {
        stop,
        tracker,
        committer,
        status,
    }
}

impl Running {
    /// Stops cleanly: the batch in hand is finished and the leases are given back.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.tracker.wait())
            .await
            .expect("fetchers stop within 30 s");
        self.committer.await.expect("committer");
    }

    fn state(&self, mailbox: &str) -> Option<&'static str> {
        self.status.snapshot().get(mailbox).map(|s| s.state)
    }

    async fn wait_state(&self, mailbox: &str, wanted: &str, limit: Duration) {
        let start = Instant::now();
        while self.state(mailbox) != Some(wanted) {
            assert!(
                start.elapsed() < limit,
                "{mailbox} did not reach state {wanted} within {limit:?}: {:?}",
                self.status.snapshot().get(mailbox)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Subjects of every message stored for the organization of `domain`, sorted.
async fn stored_subjects(store: &Store, domain: &str) -> Vec<String> {
    let mut tx = store.begin_read().await.expect("begin");
    let org = orgs::org_for_domain(&mut tx, domain)
        .await
        .expect("org")
        .expect("org exists");
    let mut out = Vec::new();
    for t in tickets::list_tickets(&mut tx, org.id)
        .await
        .expect("tickets")
    {
        for _ in tickets::list_messages(&mut tx, org.id, t.id)
            .await
            .expect("messages")
        {
            out.push(t.subject.clone());
        }
    }
    tx.rollback().await.expect("rollback");
    out.sort();
    out
}

/// Waits until `domain` holds exactly `want` (sorted subjects), then a little longer to be
/// sure nothing more arrives.
async fn expect_subjects(store: &Store, domain: &str, want: &[&str], limit: Duration) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let start = Instant::now();
    loop {
        let got = stored_subjects(store, domain).await;
        if got == want {
            break;
        }
        assert!(
            start.elapsed() < limit,
            "{domain}: expected {want:?}, stored {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stored_subjects(store, domain).await,
        want,
        "{domain}: nothing more arrives"
    );
}

fn flags_of(list: &[(u32, Vec<String>)]) -> Vec<Vec<String>> {
    list.iter().map(|(_, f)| f.clone()).collect()
}

fn seen(flags: &[String]) -> bool {
    flags.iter().any(|f| f == "\\Seen")
}

async fn idle_delivery_and_restart(db: Db) {
    let dovecot = Dovecot::start(&[SUPPORT]).await;
    let gw = TestGateway::new(db).await;
    let src = source(&gw.store, "acme.test", "support", &dovecot, SUPPORT).await;

    // Mail waiting before the first start is taken; then the fetcher idles.
    dovecot
        .append(
            SUPPORT.0,
            SUPPORT.1,
            "INBOX",
            &mail("a@customer.test", "before start"),
        )
        .await;
    let run = start(&gw, vec![src.clone()], "one", global(30));
    expect_subjects(
        &gw.store,
        "acme.test",
        &["before start"],
        Duration::from_secs(20),
    )
    .await;
    run.wait_state("acme.test/support", "idle", Duration::from_secs(10))
        .await;

    // Under IDLE a new message arrives at once (polling is set to an hour). The latency is
    // printed for docs/benchmarks.md, not asserted: timing belongs to benchmarks.
    let appended = Instant::now();
    dovecot
        .append(
            SUPPORT.0,
            SUPPORT.1,
            "INBOX",
            &mail("b@customer.test", "under idle"),
        )
        .await;
    while stored_subjects(&gw.store, "acme.test").await.len() < 2
        && appended.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "IDLE latency: appended to stored in {} ms",
        appended.elapsed().as_millis()
    );
    expect_subjects(
        &gw.store,
        "acme.test",
        &["before start", "under idle"],
        Duration::from_secs(10),
    )
    .await;
    let list = dovecot.messages(SUPPORT.0, SUPPORT.1, "INBOX").await;
    assert_eq!(list.len(), 2, "after = seen keeps the messages");
    assert!(
        list.iter().all(|(_, f)| seen(f)),
        "committed messages are flagged \\Seen: {:?}",
        flags_of(&list)
    );
    run.stop().await;

    // While stopped: one more message. After a restart it arrives once, nothing twice.
    dovecot
        .append(
            SUPPORT.0,
            SUPPORT.1,
            "INBOX",
            &mail("c@customer.test", "while stopped"),
        )
        .await;
    let run = start(&gw, vec![src.clone()], "one", global(30));
    expect_subjects(
        &gw.store,
        "acme.test",
        &["before start", "under idle", "while stopped"],
        Duration::from_secs(20),
    )
    .await;
    run.stop().await;
    gw.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_idle_delivery_and_restart_sqlite() {
    idle_delivery_and_restart(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_idle_delivery_and_restart_postgres() {
    idle_delivery_and_restart(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_polling_mode() {
    let dovecot = Dovecot::start(&[SUPPORT]).await;
    let gw = TestGateway::new(Db::Sqlite).await;
    let mut src = source(&gw.store, "acme.test", "support", &dovecot, SUPPORT).await;
    src.config.idle = false;
    src.config.poll_interval_secs = 1;
    let run = start(&gw, vec![src], "one", global(30));
    run.wait_state("acme.test/support", "polling", Duration::from_secs(10))
        .await;
    for i in 0..3 {
        dovecot
            .append(
                SUPPORT.0,
                SUPPORT.1,
                "INBOX",
                &mail("p@customer.test", &format!("polled {i}")),
            )
            .await;
    }
    expect_subjects(
        &gw.store,
        "acme.test",
        &["polled 0", "polled 1", "polled 2"],
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        run.state("acme.test/support"),
        Some("polling"),
        "no IDLE when it is turned off"
    );
    run.stop().await;
    gw.cleanup().await;
}

/// A crash after the commit but before the position and the `\Seen` flag were written:
/// the messages are fetched again and recognised as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_crash_between_commit_and_flag_duplicates_nothing() {
    let dovecot = Dovecot::start(&[SUPPORT]).await;
    let gw = TestGateway::new(Db::Sqlite).await;
    let src = source(&gw.store, "acme.test", "support", &dovecot, SUPPORT).await;
    for i in 0..3 {
        dovecot
            .append(
                SUPPORT.0,
                SUPPORT.1,
                "INBOX",
                &mail("x@customer.test", &format!("crash {i}")),
            )
            .await;
    }
    let run = start(&gw, vec![src.clone()], "one", global(30));
    expect_subjects(
        &gw.store,
        "acme.test",
        &["crash 0", "crash 1", "crash 2"],
        Duration::from_secs(20),
    )
    .await;
    run.stop().await;

    // Undo what happens after the commit: the position and the flags.
    let mut tx = gw.store.begin().await.expect("begin");
    initdesk_gateway::with_tx!(&mut tx, |c| sqlx::query(
        "UPDATE imap_state SET last_uid = 0"
    )
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .expect("reset position");
    tx.commit().await.expect("commit");
    dovecot
        .remove_flag(SUPPORT.0, SUPPORT.1, "INBOX", "\\Seen")
        .await;

    let run = start(&gw, vec![src], "one", global(30));
    run.wait_state("acme.test/support", "idle", Duration::from_secs(20))
        .await;
    expect_subjects(
        &gw.store,
        "acme.test",
        &["crash 0", "crash 1", "crash 2"],
        Duration::from_secs(5),
    )
    .await;
    let list = dovecot.messages(SUPPORT.0, SUPPORT.1, "INBOX").await;
    assert!(
        list.iter().all(|(_, f)| seen(f)),
        "the flags are set again: {:?}",
        flags_of(&list)
    );
    run.stop().await;
    gw.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_uidvalidity_change_resyncs_without_duplicates() {
    let dovecot = Dovecot::start(&[SUPPORT]).await;
    let gw = TestGateway::new(Db::Sqlite).await;
    let mut src = source(&gw.store, "acme.test", "support", &dovecot, SUPPORT).await;
    // With after = delete the resync reads every message still there; keep them instead
    // (move) so the resync has something to re-read.
    src.config.after = "seen".into();
    for i in 0..2 {
        dovecot
            .append(
                SUPPORT.0,
                SUPPORT.1,
                "INBOX",
                &mail("u@customer.test", &format!("uv {i}")),
            )
            .await;
    }
    let run = start(&gw, vec![src.clone()], "one", global(30));
    expect_subjects(
        &gw.store,
        "acme.test",
        &["uv 0", "uv 1"],
        Duration::from_secs(20),
    )
    .await;
    run.stop().await;

    dovecot.change_uidvalidity(SUPPORT.0, "INBOX");
    // The old messages lose \Seen too, as after a mailbox restore.
    dovecot
        .remove_flag(SUPPORT.0, SUPPORT.1, "INBOX", "\\Seen")
        .await;
    dovecot
        .append(
            SUPPORT.0,
            SUPPORT.1,
            "INBOX",
            &mail("u@customer.test", "uv new"),
        )
        .await;
    let run = start(&gw, vec![src], "one", global(30));
    expect_subjects(
        &gw.store,
        "acme.test",
        &["uv 0", "uv 1", "uv new"],
        Duration::from_secs(20),
    )
    .await;
    let mut tx = gw.store.begin_read().await.expect("begin");
    let duplicates: i64 = initdesk_gateway::with_tx!(&mut tx, |c| sqlx::query_scalar(
        "SELECT COUNT(*) FROM inbound_log WHERE outcome = 'duplicate'"
    )
    .fetch_one(c)
    .await)
    .expect("count");
    tx.rollback().await.expect("rollback");
    assert_eq!(
        duplicates, 2,
        "the two old messages were re-read and recognised"
    );
    run.stop().await;
    gw.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_server_restart_mid_session() {
    let mut dovecot = Dovecot::start(&[SUPPORT]).await;
    let gw = TestGateway::new(Db::Sqlite).await;
    let src = source(&gw.store, "acme.test", "support", &dovecot, SUPPORT).await;
    let run = start(&gw, vec![src], "one", global(30));
    run.wait_state("acme.test/support", "idle", Duration::from_secs(10))
        .await;
    dovecot.stop();
    run.wait_state("acme.test/support", "failing", Duration::from_secs(20))
        .await;
    dovecot.restart().await;
    dovecot
        .append(
            SUPPORT.0,
            SUPPORT.1,
            "INBOX",
            &mail("r@customer.test", "after restart"),
        )
        .await;
    expect_subjects(
        &gw.store,
        "acme.test",
        &["after restart"],
        Duration::from_secs(30),
    )
    .await;
    let status = run.status.snapshot();
    let s = &status["acme.test/support"];
    assert!(s.last_error.is_none(), "recovered: {s:?}");
    run.stop().await;
    gw.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_move_to_folder_and_delete() {
    let dovecot = Dovecot::start(&[SUPPORT, HELP]).await;
    dovecot
        .create_folder(SUPPORT.0, SUPPORT.1, "Processed")
        .await;
    let gw = TestGateway::new(Db::Sqlite).await;
    let mut moving = source(&gw.store, "acme.test", "support", &dovecot, SUPPORT).await;
    moving.config.after = "move:Processed".into();
    let mut deleting = source(&gw.store, "globex.test", "help", &dovecot, HELP).await;
    deleting.config.after = "delete".into();
    dovecot
        .append(
            SUPPORT.0,
            SUPPORT.1,
            "INBOX",
            &mail("m@customer.test", "to move"),
        )
        .await;
    dovecot
        .append(
            HELP.0,
            HELP.1,
            "INBOX",
            &mail("d@customer.test", "to delete"),
        )
        .await;
    let run = start(&gw, vec![moving, deleting], "one", global(30));
    expect_subjects(
        &gw.store,
        "acme.test",
        &["to move"],
        Duration::from_secs(20),
    )
    .await;
    expect_subjects(
        &gw.store,
        "globex.test",
        &["to delete"],
        Duration::from_secs(20),
    )
    .await;
    run.wait_state("acme.test/support", "idle", Duration::from_secs(10))
        .await;
    run.wait_state("globex.test/help", "idle", Duration::from_secs(10))
        .await;
    assert!(
        dovecot
            .messages(SUPPORT.0, SUPPORT.1, "INBOX")
            .await
            .is_empty(),
        "moved out of INBOX"
    );
    assert_eq!(
        dovecot
            .messages(SUPPORT.0, SUPPORT.1, "Processed")
            .await
            .len(),
        1,
        "moved into Processed"
    );
    assert!(
        dovecot.messages(HELP.0, HELP.1, "INBOX").await.is_empty(),
        "deleted"
    );
    run.stop().await;
    gw.cleanup().await;
}

/// Two mailboxes of two organizations; one has a wrong password and must not stop the other.
/// Its secret comes from a file, and rewriting the file (rotation) heals it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_wrong_password_isolated_and_two_organizations() {
    let dovecot = Dovecot::start(&[SUPPORT, HELP]).await;
    let gw = TestGateway::new(Db::Sqlite).await;
    let good = source(&gw.store, "acme.test", "support", &dovecot, SUPPORT).await;
    let mut bad = source(&gw.store, "globex.test", "help", &dovecot, HELP).await;
    let secret = gw.dir.path().join("help.password");
    std::fs::write(&secret, "wrong-password\n").expect("write secret");
    bad.config.password = String::new();
    bad.config.password_file = secret.display().to_string();

    dovecot
        .append(
            SUPPORT.0,
            SUPPORT.1,
            "INBOX",
            &mail("a@customer.test", "for acme"),
        )
        .await;
    dovecot
        .append(
            HELP.0,
            HELP.1,
            "INBOX",
            &mail("g@customer.test", "for globex"),
        )
        .await;
    let run = start(&gw, vec![good, bad], "one", global(30));
    expect_subjects(
        &gw.store,
        "acme.test",
        &["for acme"],
        Duration::from_secs(20),
    )
    .await;
    run.wait_state("globex.test/help", "failing", Duration::from_secs(20))
        .await;
    let status = run.status.snapshot();
    let failing = &status["globex.test/help"];
    assert!(
        failing
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("login refused")),
        "the failure names the login: {failing:?}"
    );
    assert!(stored_subjects(&gw.store, "globex.test").await.is_empty());
    // The working mailbox keeps working while the other fails.
    dovecot
        .append(
            SUPPORT.0,
            SUPPORT.1,
            "INBOX",
            &mail("a@customer.test", "acme again"),
        )
        .await;
    expect_subjects(
        &gw.store,
        "acme.test",
        &["acme again", "for acme"],
        Duration::from_secs(10),
    )
    .await;

    std::fs::write(&secret, format!("{}\n", HELP.1)).expect("rotate secret");
    expect_subjects(
        &gw.store,
        "globex.test",
        &["for globex"],
        Duration::from_secs(30),
    )
    .await;
    run.stop().await;
    gw.cleanup().await;
}

/// Several instances on one PostgreSQL database: one fetches, the other stands by, and
/// takes over when the first dies without giving the lease back.
#[test]
fn imap_lease_with_two_instances_on_postgres() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (dovecot, gw, src) = rt.block_on(async {
        let dovecot = Dovecot::start(&[SUPPORT]).await;
        let gw = TestGateway::new(Db::Postgres).await;
        let src = source(&gw.store, "acme.test", "support", &dovecot, SUPPORT).await;
        (dovecot, gw, src)
    });
    // Instance A runs on a runtime and connection pool of its own, so that dropping the
    // runtime kills A mid-flight (no clean shutdown, no lease given back), as a crashed
    // process would.
    let rt_a = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime A");
    let run_a = rt_a.block_on(async {
        let store_a = initdesk_gateway::store::open(&gw.url, 2)
            .await
            .expect("open store A");
        let pipeline_a = crate::helpers::pipeline_over(
            &store_a,
            gw.dir.path(),
            initdesk_gateway::pipeline::Settings::default(),
        );
        let run = start_on(
            &store_a,
            &pipeline_a,
            vec![src.clone()],
            "instance-a",
            global(3),
        );
        run.wait_state("acme.test/support", "idle", Duration::from_secs(15))
            .await;
        run
    });
    let run_b = rt.block_on(async {
        let run_b = start(&gw, vec![src.clone()], "instance-b", global(3));
        run_b
            .wait_state("acme.test/support", "standby", Duration::from_secs(10))
            .await;
        dovecot
            .append(
                SUPPORT.0,
                SUPPORT.1,
                "INBOX",
                &mail("l@customer.test", "while A holds"),
            )
            .await;
        expect_subjects(
            &gw.store,
            "acme.test",
            &["while A holds"],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            run_b.state("acme.test/support"),
            Some("standby"),
            "B never fetches while A holds the lease"
        );
        run_b
    });
    assert_eq!(run_a.state("acme.test/support"), Some("idle"));

    // A dies; B takes over once A's lease has run out (3 s) and fetches what came meanwhile.
    rt_a.shutdown_background();
    drop(run_a);
    rt.block_on(async {
        dovecot
            .append(
                SUPPORT.0,
                SUPPORT.1,
                "INBOX",
                &mail("l@customer.test", "after A died"),
            )
            .await;
        run_b
            .wait_state("acme.test/support", "idle", Duration::from_secs(20))
            .await;
        expect_subjects(
            &gw.store,
            "acme.test",
            &["after A died", "while A holds"],
            Duration::from_secs(10),
        )
        .await;
        run_b.stop().await;
        gw.cleanup().await;
    });
}

/// STARTTLS and implicit TLS against a server whose certificate a private CA signed
/// (`ca_file`), and XOAUTH2 with the bearer token printed by `oauth2_token_command`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_tls_modes_and_xoauth2() {
    // Dovecot checks an XOAUTH2 bearer token against the user's passdb entry.
    const TOKEN: &str = "ya29.test-bearer-token";
    let dovecot = Dovecot::start_tls(&[SUPPORT, ("help@globex.test", TOKEN)]).await;
    let (tls_port, ca) = dovecot.tls.clone().expect("TLS instance");
    let gw = TestGateway::new(Db::Sqlite).await;
    let mut starttls = source(&gw.store, "acme.test", "support", &dovecot, SUPPORT).await;
    starttls.config.tls = "starttls".into();
    starttls.config.ca_file = ca.display().to_string();
    let mut implicit = source(&gw.store, "globex.test", "help", &dovecot, HELP).await;
    implicit.config.tls = "implicit".into();
    implicit.config.port = tls_port;
    implicit.config.host = "localhost".into();
    implicit.config.ca_file = ca.display().to_string();
    implicit.config.user = "help@globex.test".into();
    implicit.config.password = String::new();
    implicit.config.oauth2_token_command = format!("printf '%s\\n' '{TOKEN}'");

    dovecot
        .append(
            SUPPORT.0,
            SUPPORT.1,
            "INBOX",
            &mail("t@customer.test", "over starttls"),
        )
        .await;
    dovecot
        .append(
            "help@globex.test",
            TOKEN,
            "INBOX",
            &mail("o@customer.test", "over xoauth2"),
        )
        .await;
    let run = start(
        &gw,
        vec![starttls.clone(), implicit.clone()],
        "one",
        global(30),
    );
    expect_subjects(
        &gw.store,
        "acme.test",
        &["over starttls"],
        Duration::from_secs(20),
    )
    .await;
    expect_subjects(
        &gw.store,
        "globex.test",
        &["over xoauth2"],
        Duration::from_secs(20),
    )
    .await;
    run.stop().await;

    // Without the private CA the certificate is refused: no plaintext fallback.
    let mut untrusted = starttls;
    untrusted.config.ca_file = String::new();
    let run = start(&gw, vec![untrusted], "one", global(30));
    run.wait_state("acme.test/support", "failing", Duration::from_secs(20))
        .await;
    let status = run.status.snapshot();
    let err = status["acme.test/support"]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(err.contains("TLS"), "the failure names TLS: {err}");
    run.stop().await;

    // A token command that fails is reported as such.
    let mut broken = implicit;
    broken.config.oauth2_token_command = "echo 'token service down' >&2; exit 3".into();
    let run = start(&gw, vec![broken], "one", global(30));
    run.wait_state("globex.test/help", "failing", Duration::from_secs(20))
        .await;
    let status = run.status.snapshot();
    let err = status["globex.test/help"]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(
        err.contains("oauth2_token_command") && err.contains("token service down"),
        "the failure names the command and its message: {err}"
    );
    run.stop().await;
    gw.cleanup().await;
}

/// IDLE is ended and issued again every `idle_refresh_secs` (servers drop it after 30
/// minutes); mail keeps arriving across the refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_idle_is_reissued() {
    let dovecot = Dovecot::start(&[SUPPORT]).await;
    let gw = TestGateway::new(Db::Sqlite).await;
    let mut src = source(&gw.store, "acme.test", "support", &dovecot, SUPPORT).await;
    src.config.idle_refresh_secs = 1;
    let run = start(&gw, vec![src], "one", global(30));
    run.wait_state("acme.test/support", "idle", Duration::from_secs(10))
        .await;
    // Several refreshes go by.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let status = run.status.snapshot();
    assert!(
        status["acme.test/support"].last_error.is_none(),
        "no failure across refreshes: {status:?}"
    );
    dovecot
        .append(
            SUPPORT.0,
            SUPPORT.1,
            "INBOX",
            &mail("i@customer.test", "after refreshes"),
        )
        .await;
    expect_subjects(
        &gw.store,
        "acme.test",
        &["after refreshes"],
        Duration::from_secs(10),
    )
    .await;
    run.stop().await;
    gw.cleanup().await;
}

/// A message the gateway cannot take (no sender at all) stays in the mailbox, marked with
/// `$InitdeskRejected`, and does not block the ones behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_unusable_message_stays_and_does_not_block() {
    let dovecot = Dovecot::start(&[SUPPORT]).await;
    let gw = TestGateway::new(Db::Sqlite).await;
    let mut src = source(&gw.store, "acme.test", "support", &dovecot, SUPPORT).await;
    src.config.after = "delete".into();
    let bad = dovecot
        .append(
            SUPPORT.0,
            SUPPORT.1,
            "INBOX",
            b"To: support@acme.test\r\nSubject: no sender\r\n\r\nwho am I\r\n",
        )
        .await;
    dovecot
        .append(
            SUPPORT.0,
            SUPPORT.1,
            "INBOX",
            &mail("ok@customer.test", "behind it"),
        )
        .await;
    let run = start(&gw, vec![src], "one", global(30));
    expect_subjects(
        &gw.store,
        "acme.test",
        &["behind it"],
        Duration::from_secs(20),
    )
    .await;
    run.wait_state("acme.test/support", "idle", Duration::from_secs(10))
        .await;
    let left = dovecot.messages(SUPPORT.0, SUPPORT.1, "INBOX").await;
    assert_eq!(left.len(), 1, "only the unusable one stays: {left:?}");
    assert_eq!(left[0].0, bad);
    assert!(
        left[0].1.iter().any(|f| f == "$InitdeskRejected"),
        "marked: {left:?}"
    );
    run.stop().await;
    gw.cleanup().await;
}

/// With `after = "seen"` mail someone has already read is left alone, before and after the
/// first fetch, and is not taken later either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_seen_mode_leaves_read_mail_alone() {
    let dovecot = Dovecot::start(&[SUPPORT]).await;
    let gw = TestGateway::new(Db::Sqlite).await;
    let src = source(&gw.store, "acme.test", "support", &dovecot, SUPPORT).await;
    dovecot
        .append_with_flags(
            SUPPORT.0,
            SUPPORT.1,
            "INBOX",
            &["\\Seen"],
            &mail("old@customer.test", "read long ago"),
        )
        .await;
    dovecot
        .append(
            SUPPORT.0,
            SUPPORT.1,
            "INBOX",
            &mail("new@customer.test", "unread"),
        )
        .await;
    dovecot
        .append_with_flags(
            SUPPORT.0,
            SUPPORT.1,
            "INBOX",
            &["\\Seen"],
            &mail("old@customer.test", "read too"),
        )
        .await;
    let run = start(&gw, vec![src], "one", global(30));
    expect_subjects(&gw.store, "acme.test", &["unread"], Duration::from_secs(20)).await;
    run.wait_state("acme.test/support", "idle", Duration::from_secs(10))
        .await;
    // New mail after that is taken, the read mail still is not.
    dovecot
        .append(
            SUPPORT.0,
            SUPPORT.1,
            "INBOX",
            &mail("new@customer.test", "later"),
        )
        .await;
    expect_subjects(
        &gw.store,
        "acme.test",
        &["later", "unread"],
        Duration::from_secs(10),
    )
    .await;
    run.stop().await;
    gw.cleanup().await;
}
