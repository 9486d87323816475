//! IMAP drain benchmark (issue 4): a backlog of generated mail in a real, private Dovecot,
//! drained into SQLite by the release `initdesk-gateway serve` running as a child process.
//!
//! `cargo bench --bench imap_drain -- [--messages N] [--batch B] [--after seen|delete|move:FOLDER]
//! [--seed S] [--fetch-only]`
//!
//! The backlog (10,000 messages by default) is appended to `support@acme.test`'s INBOX before
//! the gateway starts (not timed). The clock starts when the gateway's `/readyz` first answers
//! 200 and stops when `/readyz` reports the mailbox's first drain pass committed with all of
//! them. Reports messages/s, the daemon's peak RSS (`VmHWM`), the CPU time of the gateway
//! (per thread kind), of Dovecot and of the rest of the machine; then checks the mailbox (every
//! message flagged, deleted or moved) and the database (one ticket per new request, one
//! message row per message) and fails loudly when anything is missing.
//!
//! `--fetch-only` is a diagnostic: no gateway; this process fetches the backlog in batches with
//! the same IMAP crate and reports the client's and Dovecot's CPU time.
//!
//! Without `--bench` (`cargo test --all-targets`) it is a quick smoke run of 200 messages.

// The harness of the integration tests; its self-tests and unused helpers are not built here.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/dovecot.rs"]
mod dovecot;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use dovecot::Dovecot;

const USER: &str = "support@acme.test";
const PASSWORD: &str = "drain-secret";
const MAILBOX: &str = "acme.test/support";
const CUSTOMERS: usize = 3_000;
/// How long the drain may take before the run fails.
const LIMIT: Duration = Duration::from_secs(600);
/// `/readyz` poll interval.
const POLL: Duration = Duration::from_millis(50);
/// `/metrics` poll interval (progress within the pass; `/readyz` only counts whole passes).
const METRICS_POLL: Duration = Duration::from_millis(500);

struct Options {
    messages: usize,
    batch: usize,
    after: String,
    seed: u64,
    /// Diagnostic: fetch the backlog with async-imap in this process instead of running the
    /// gateway (what the fetcher's IMAP side costs on its own).
    fetch_only: bool,
}

fn options() -> Options {
    let mut o = Options {
        messages: 10_000,
        batch: 200,
        after: "seen".into(),
        seed: 4,
        fetch_only: false,
    };
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--messages" => o.messages = value().parse().expect("--messages N"),
            "--batch" => o.batch = value().parse().expect("--batch B"),
            "--after" => o.after = value(),
            "--seed" => o.seed = value().parse().expect("--seed S"),
            "--fetch-only" => o.fetch_only = true,
            _ => {}
        }
    }
    assert!(
        o.after == "seen" || o.after == "delete" || o.after.starts_with("move:"),
        "--after seen|delete|move:FOLDER, not {:?}",
        o.after
    );
    o
}

fn main() {
    // `cargo test --all-targets` runs benches once without --bench: keep that a quick smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let mut o = options();
    if smoke {
        o.messages = 200;
        o.batch = o.batch.min(50);
    }
    let command = format!(
        "cargo bench --bench imap_drain -- --messages {} --batch {} --after {}",
        o.messages, o.batch, o.after
    );
    println!(
        "imap_drain: {} messages from a private Dovecot into SQLite, batch_size {}, after = {}{}",
        o.messages,
        o.batch,
        o.after,
        if smoke { " (smoke run)" } else { "" }
    );
    println!(
        "machine: {} CPUs, load average {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        loadavg()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    // --- The backlog (not timed) -------------------------------------------------------------
    let dovecot = rt.block_on(Dovecot::start(&[(USER, PASSWORD)]));
    if let Some(folder) = o.after.strip_prefix("move:") {
        rt.block_on(dovecot.create_folder(USER, PASSWORD, folder));
    }
    let mut corpus = Corpus::new(o.seed, o.messages);
    let started = Instant::now();
    let uids = rt.block_on(dovecot.append_many(
        USER,
        PASSWORD,
        "INBOX",
        std::iter::from_fn(|| corpus.next_message()),
    ));
    assert_eq!(uids.len(), o.messages, "Dovecot did not take every message");
    let s = &corpus.stats;
    println!(
        "backlog: {} messages, {:.1} MB, appended in {:.1} s: {} new requests from {} customers, \
         {} replies (In-Reply-To), {} HTML-only, {} with a 50-500 KB attachment",
        o.messages,
        s.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        s.new_requests,
        s.customers.len(),
        s.replies,
        s.html_only,
        s.attachments
    );

    if o.fetch_only {
        rt.block_on(fetch_only(&dovecot, o.batch, o.messages));
        return;
    }

    // --- The drain (timed) -------------------------------------------------------------------
    let mut gw = Gateway::start(&o, dovecot.port);
    let ready = gw.wait_ready();
    let clock = Instant::now();
    let gw_cpu_ready = gw.cpu();
    let dovecot_cpu_before = dovecot_cpu(&dovecot);
    let machine_before = machine_cpu();
    let own_before = proc_cpu("self");
    println!(
        "gateway ready (/readyz 200) {:.2} s after its start; clock started",
        ready.as_secs_f64()
    );

    let mut next_metrics = clock;
    let mut samples: Vec<(f64, u64, f64)> = Vec::new(); // (seconds, committed so far, RSS MB)
    let mut first_fetching: Option<f64> = None;
    let mut states: Vec<(f64, String)> = Vec::new();
    let drained = loop {
        if let Some(status) = gw.try_exit() {
            panic!(
                "the gateway exited ({status}) during the drain; its log:\n{}\nDovecot log:\n{}",
                gw.log_tail(60),
                tail(&dovecot.log(), 30)
            );
        }
        let now = clock.elapsed();
        if now > LIMIT {
            panic!(
                "the drain did not finish within {LIMIT:?} ({} of {} committed by the metrics); \
                 /readyz: {}\ngateway log:\n{}\nDovecot log:\n{}",
                samples.last().map_or(0, |s| s.1),
                o.messages,
                gw.readyz().map(|v| v.to_string()).unwrap_or_default(),
                gw.log_tail(60),
                tail(&dovecot.log(), 30)
            );
        }
        if let Some(v) = gw.readyz() {
            let m = &v["imap"][MAILBOX];
            let state = m["state"].as_str().unwrap_or("?").to_string();
            if states.last().is_none_or(|(_, s)| *s != state) {
                states.push((now.as_secs_f64(), state.clone()));
            }
            if state == "fetching" && first_fetching.is_none() {
                first_fetching = Some(now.as_secs_f64());
            }
            let committed = m["committed"].as_u64().unwrap_or(0);
            if committed >= o.messages as u64 {
                break now;
            }
        }
        if Instant::now() >= next_metrics {
            next_metrics += METRICS_POLL;
            if let Some(done) = gw.metrics().map(|m| imap_committed(&m)) {
                samples.push((now.as_secs_f64(), done, gw.status_mb("VmRSS:")));
            }
        }
        std::thread::sleep(POLL);
    };
    let seconds = drained.as_secs_f64();
    // CPU before the gateway exits (its shutdown is not part of the drain).
    let gw_cpu = gw.cpu();
    let gw_threads = gw.thread_cpu();
    let dovecot_cpu_after = dovecot_cpu(&dovecot);
    let machine_after = machine_cpu();
    let own_after = proc_cpu("self");
    let peak = gw.status_mb("VmHWM:");
    let rss_end = gw.status_mb("VmRSS:");
    let metrics = gw.metrics().unwrap_or_default();
    let readyz = gw.readyz().unwrap_or_default();
    samples.push((seconds, imap_committed(&metrics), rss_end));
    // /metrics counts every message by mailbox and outcome, as /readyz does.
    assert_eq!(
        imap_committed(&metrics),
        o.messages as u64,
        "initdesk_imap_messages_total in /metrics:\n{metrics}"
    );
    assert!(
        readyz["imap"]["acme.test/support"]["state"].is_string(),
        "/readyz lists the mailbox: {readyz}"
    );

    // --- Figures -----------------------------------------------------------------------------
    let rate = o.messages as f64 / seconds;
    let gw_drain = gw_cpu - gw_cpu_ready;
    let dovecot_drain = dovecot_cpu_after - dovecot_cpu_before;
    let machine = machine_after.0 - machine_before.0;
    let rest = machine - gw_drain - dovecot_drain - (own_after - own_before);
    println!();
    println!(
        "| messages | batch | after | seconds | msg/s | daemon peak RSS MB | RSS at end MB | gateway CPU s | Dovecot CPU s | rest of machine CPU s |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {seconds:.2} | {rate:.0} | {peak:.0} | {rss_end:.0} | {gw_drain:.1} | {dovecot_drain:.1} | {rest:.1} |",
        o.messages, o.batch, o.after
    );
    println!();
    println!("command: {command}");
    println!(
        "CPU: gateway {gw_drain:.2} s during the drain ({:.0} µs per message; {gw_cpu:.2} s since \
         its start), Dovecot {dovecot_drain:.2} s ({:.0} µs per message), rest of the machine \
         {rest:.2} s, machine busy {:.0} % of 2 cores x {seconds:.1} s, iowait {:.2} s",
        gw_drain * 1e6 / o.messages as f64,
        dovecot_drain * 1e6 / o.messages as f64,
        machine / (seconds * cpus() as f64) * 100.0,
        machine_after.1 - machine_before.1
    );
    let threads: Vec<String> = gw_threads
        .iter()
        .map(|(name, (n, cpu))| format!("{name} x{n} {cpu:.2} s"))
        .collect();
    println!("gateway threads (CPU since start): {}", threads.join(", "));
    println!(
        "phases: first state `fetching` at {}, states {}",
        first_fetching.map_or("-".into(), |t| format!("{t:.2} s")),
        states
            .iter()
            .map(|(t, s)| format!("{s}@{t:.2}s"))
            .collect::<Vec<_>>()
            .join(" -> ")
    );
    println!("progress: {}", progress(&samples, o.messages));
    let (commit_sum, commit_count) = (
        metric_value(&metrics, "initdesk_commit_seconds_sum"),
        metric_value(&metrics, "initdesk_commit_seconds_count"),
    );
    println!(
        "commits: {commit_count:.0} batches, ingest_batch (prepare + commit) {commit_sum:.2} s in \
         all, {:.0} ms per batch, {:.0} % of the drain; {:.2} s of the drain outside it",
        commit_sum * 1000.0 / commit_count.max(1.0),
        commit_sum / seconds * 100.0,
        seconds - commit_sum
    );
    println!(
        "IMAP outcomes: {}; IMAP errors: {}",
        metric_lines(&metrics, "initdesk_imap_messages_total{"),
        metric_lines(&metrics, "initdesk_imap_errors_total{")
    );
    println!(
        "/readyz at the end: {}",
        serde_json::to_string(&readyz["imap"]).unwrap_or_default()
    );

    // --- Checks ------------------------------------------------------------------------------
    let log = gw.stop();
    let imap_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("IMAP") || l.contains("mailbox="))
        .collect();
    println!(
        "gateway log, IMAP fetcher ({} lines):\n  {}",
        imap_lines.len(),
        imap_lines
            .iter()
            .take(10)
            .copied()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    let noteworthy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    if noteworthy.is_empty() {
        println!("gateway log: no warnings or errors");
    } else {
        println!(
            "gateway log: {} warnings/errors, the first ones:\n{}",
            noteworthy.len(),
            noteworthy
                .iter()
                .take(20)
                .copied()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    rt.block_on(check_mailbox(&dovecot, &o));
    rt.block_on(check_database(&gw.db_url, &corpus.stats, o.messages));
    assert!(
        noteworthy.iter().all(|l| !l.contains("ERROR")),
        "the gateway logged errors"
    );
    println!("checks passed: mailbox and database hold what was generated");
}

/// `--fetch-only`: the IMAP half of a drain without the gateway. The sizes, then every body in
/// batches of `batch` (`UID FETCH n:m (UID BODY.PEEK[])`, as the fetcher sends it), with the
/// async-imap crate the gateway uses, on one connection; reports wall and CPU time of this
/// process and of Dovecot.
async fn fetch_only(dovecot: &Dovecot, batch: usize, messages: usize) {
    use futures_util::TryStreamExt as _;
    let mut imap = dovecot.login(USER, PASSWORD).await;
    imap.select("INBOX").await.expect("SELECT INBOX");
    let (own, dove, machine) = (proc_cpu("self"), dovecot_cpu(dovecot), machine_cpu().0);
    let started = Instant::now();
    let sizes: Vec<_> = imap
        .uid_fetch("1:*", "(UID RFC822.SIZE)")
        .await
        .expect("UID FETCH sizes")
        .try_collect()
        .await
        .expect("UID FETCH sizes");
    let listed = started.elapsed();
    let mut uids: Vec<u32> = sizes.iter().filter_map(|f| f.uid).collect();
    uids.sort_unstable();
    let (mut fetched, mut bytes) = (0usize, 0usize);
    for chunk in uids.chunks(batch.max(1)) {
        let set = format!("{}:{}", chunk[0], chunk[chunk.len() - 1]);
        let mut stream = imap
            .uid_fetch(&set, "(UID BODY.PEEK[])")
            .await
            .expect("UID FETCH bodies");
        while let Some(f) = stream.try_next().await.expect("UID FETCH bodies") {
            if let Some(body) = f.body() {
                let copy = body.to_vec();
                bytes += copy.len();
                fetched += 1;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let (own, dove, machine) = (
        proc_cpu("self") - own,
        dovecot_cpu(dovecot) - dove,
        machine_cpu().0 - machine,
    );
    imap.logout().await.expect("LOGOUT");
    assert_eq!(fetched, messages, "not every body was fetched");
    println!(
        "fetch only: {fetched} bodies ({:.1} MB) in {seconds:.2} s ({:.0} msg/s; sizes listed in \
         {:.2} s), client CPU {own:.2} s ({:.0} µs per message), Dovecot CPU {dove:.2} s ({:.0} µs \
         per message), rest of the machine {:.2} s",
        bytes as f64 / 1e6,
        fetched as f64 / seconds,
        listed.as_secs_f64(),
        own * 1e6 / fetched as f64,
        dove * 1e6 / fetched as f64,
        machine - own - dove
    );
}

/// The mailbox after the drain: every message flagged, or gone (to `move:` folder).
async fn check_mailbox(dovecot: &Dovecot, o: &Options) {
    let inbox = dovecot.messages(USER, PASSWORD, "INBOX").await;
    match o.after.as_str() {
        "seen" => {
            let unseen = inbox
                .iter()
                .filter(|(_, flags)| !flags.iter().any(|f| f == "\\Seen"))
                .count();
            assert_eq!(inbox.len(), o.messages, "INBOX lost messages");
            assert_eq!(unseen, 0, "{unseen} messages in INBOX are not \\Seen");
            println!("mailbox: all {} messages in INBOX are \\Seen", inbox.len());
        }
        "delete" => {
            assert!(
                inbox.is_empty(),
                "{} messages are still in INBOX after = delete",
                inbox.len()
            );
            println!("mailbox: INBOX is empty");
        }
        after => {
            let folder = after.strip_prefix("move:").unwrap_or(after);
            let moved = dovecot.messages(USER, PASSWORD, folder).await;
            assert!(
                inbox.is_empty(),
                "{} messages are still in INBOX after = {after}",
                inbox.len()
            );
            assert_eq!(
                moved.len(),
                o.messages,
                "{folder} does not hold every message"
            );
            println!("mailbox: INBOX empty, {} messages in {folder}", moved.len());
        }
    }
}

/// The database after the drain: one ticket per new request, one message row per message.
async fn check_database(url: &str, s: &Stats, messages: usize) {
    let store = initdesk_gateway::store::open(url, 1)
        .await
        .expect("open the gateway's database");
    let initdesk_gateway::store::Store::Sqlite(pool, _) = &store else {
        panic!("the bench runs on SQLite");
    };
    let mut counts = BTreeMap::new();
    for (name, sql) in [
        ("tickets", "SELECT COUNT(*) FROM tickets"),
        ("spam tickets", "SELECT COUNT(*) FROM tickets WHERE is_spam"),
        ("messages", "SELECT COUNT(*) FROM messages"),
        ("attachments", "SELECT COUNT(*) FROM attachments"),
        ("customers", "SELECT COUNT(*) FROM customers"),
        ("quarantine", "SELECT COUNT(*) FROM quarantine"),
    ] {
        let n: i64 = sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        counts.insert(name, n as usize);
    }
    store.close().await;
    println!(
        "database: {} tickets ({} spam), {} messages, {} attachments, {} customers, {} quarantined",
        counts["tickets"],
        counts["spam tickets"],
        counts["messages"],
        counts["attachments"],
        counts["customers"],
        counts["quarantine"]
    );
    let expected = [
        ("tickets", s.new_requests),
        ("messages", messages),
        ("attachments", s.attachments),
        ("customers", s.customers.len()),
        ("quarantine", 0),
    ];
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(name, n)| counts[name] != *n)
        .map(|(name, n)| format!("{name}: {} stored, {n} expected", counts[name]))
        .collect();
    assert!(
        wrong.is_empty(),
        "the database does not hold what was generated ({} new requests + {} replies = {messages}): {}",
        s.new_requests,
        s.replies,
        wrong.join("; ")
    );
}

/// When 25/50/75/100 % of the messages were committed (by the per-batch metrics), with RSS.
fn progress(samples: &[(f64, u64, f64)], total: usize) -> String {
    let mut out = Vec::new();
    for pct in [25u64, 50, 75, 100] {
        let want = (total as u64 * pct).div_ceil(100);
        if let Some((t, _, rss)) = samples.iter().find(|s| s.1 >= want) {
            out.push(format!("{pct} % at {t:.1} s (RSS {rss:.0} MB)"));
        }
    }
    if let Some((t, n, _)) = samples.iter().find(|s| s.1 > 0) {
        out.insert(
            0,
            format!("first batches committed by {t:.2} s ({n} messages)"),
        );
    }
    // The slowest 2 s after the first batch (progress moves a batch at a time), to spot a stall.
    let slowest = samples
        .iter()
        .enumerate()
        .filter(|(_, a)| a.1 > 0)
        .filter_map(|(i, a)| {
            let b = samples[i..].iter().find(|b| b.0 >= a.0 + 2.0)?;
            Some(((b.1 - a.1) as f64 / (b.0 - a.0), a.0))
        })
        .min_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((rate, t)) = slowest {
        out.push(format!("slowest 2 s: {rate:.0} msg/s from {t:.1} s"));
    }
    out.join(", ")
}

// --- The backlog ----------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    new_requests: usize,
    replies: usize,
    html_only: usize,
    attachments: usize,
    bytes: usize,
    customers: HashSet<usize>,
}

/// A seeded stream of customer mail: new requests and replies to a customer's earlier mail.
struct Corpus {
    rng: StdRng,
    i: usize,
    n: usize,
    /// Per customer: the Message-IDs and subjects of the mail they sent so far.
    history: Vec<Vec<(String, String)>>,
    /// Customers with at least one earlier message (candidates for a reply).
    writers: Vec<usize>,
    stats: Stats,
}

const DOMAINS: &[&str] = &[
    "example.com",
    "example.org",
    "example.net",
    "mail.example.com",
    "customer.example",
    "shop.example",
];

const TOPICS: &[&str] = &[
    "Order {n} has not arrived",
    "Invoice {n} shows the wrong amount",
    "Cannot log in to my account",
    "Refund for order {n}",
    "Question about the warranty of item {n}",
    "Delivery address change for order {n}",
    "Damaged package, order {n}",
    "How do I cancel my subscription?",
];

const ENGLISH: &[&str] = &[
    "Hello, the delivery did not arrive and the tracking page shows no update since Monday.",
    "Could you please check what happened and tell me when I can expect it?",
    "I have attached the receipt and a photo of the label so you can find the parcel.",
    "The amount on the invoice is higher than the price shown in the shop when I ordered.",
    "I tried to reset my password twice but the email with the link never came.",
    "My colleague ordered the same item last week and had no trouble at all.",
    "Please let me know whether I need to send the item back or whether you can refund it directly.",
    "We are a small company and rely on these deliveries for our weekly production.",
    "The box was crushed on one side and two of the glasses inside were broken.",
    "Thank you for your help, I look forward to hearing from you soon.",
];

const GERMAN: &[&str] = &[
    "Guten Tag, die Lieferung ist nicht angekommen und die Sendungsverfolgung zeigt seit Montag nichts Neues.",
    "Könnten Sie bitte prüfen, was passiert ist, und mir sagen, wann ich mit der Ware rechnen kann?",
    "Ich habe den Beleg und ein Foto des Etiketts angehängt, damit Sie das Paket finden.",
    "Der Betrag auf der Rechnung ist höher als der Preis, der beim Bestellen im Shop angezeigt wurde.",
    "Ich habe zweimal versucht, mein Passwort zurückzusetzen, aber die E-Mail mit dem Link kam nie an.",
    "Bitte teilen Sie mir mit, ob ich den Artikel zurückschicken muss oder ob Sie direkt erstatten können.",
    "Vielen Dank für Ihre Hilfe, ich freue mich auf Ihre Antwort.",
];

impl Corpus {
    fn new(seed: u64, n: usize) -> Corpus {
        Corpus {
            rng: StdRng::seed_from_u64(seed),
            i: 0,
            n,
            history: vec![Vec::new(); CUSTOMERS],
            writers: Vec::new(),
            stats: Stats::default(),
        }
    }

    fn next_message(&mut self) -> Option<Vec<u8>> {
        if self.i >= self.n {
            return None;
        }
        let i = self.i;
        self.i += 1;
        let rng = &mut self.rng;
        // A third are replies to an earlier message of the same customer.
        let reply_to = if !self.writers.is_empty() && rng.random_ratio(1, 3) {
            let c = self.writers[rng.random_range(0..self.writers.len())];
            let h = &self.history[c];
            Some((c, h[rng.random_range(0..h.len())].clone()))
        } else {
            None
        };
        let customer = reply_to
            .as_ref()
            .map_or_else(|| rng.random_range(0..CUSTOMERS), |(c, _)| *c);
        let german = customer % 5 == 0;
        let domain = DOMAINS[customer % DOMAINS.len()];
        let address = format!("customer{customer}@{domain}");
        let message_id = format!("drain-{i}-{:016x}@{domain}", rng.random::<u64>());
        let subject = match &reply_to {
            Some((_, (_, s))) => format!("Re: {}", s.trim_start_matches("Re: ")),
            None => TOPICS[rng.random_range(0..TOPICS.len())]
                .replace("{n}", &rng.random_range(10_000..99_999).to_string()),
        };
        let date = chrono::DateTime::from_timestamp(1_795_000_000 + i as i64 * 13, 0)
            .map(|d| d.to_rfc2822())
            .unwrap_or_default();
        let mut m = format!(
            "Return-Path: <{address}>\r\nFrom: Customer {customer} <{address}>\r\nTo: Acme Support <support@acme.test>\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: <{message_id}>\r\n"
        );
        if let Some((_, (id, _))) = &reply_to {
            let _ = write!(m, "In-Reply-To: <{id}>\r\nReferences: <{id}>\r\n");
        }
        m.push_str("MIME-Version: 1.0\r\n");

        // A few KB of text: sentences in the customer's language, wrapped into paragraphs.
        let pool = if german { GERMAN } else { ENGLISH };
        let target = rng.random_range(800..5_000);
        let mut text = String::new();
        while text.len() < target {
            for _ in 0..rng.random_range(2..5) {
                text.push_str(pool[rng.random_range(0..pool.len())]);
                text.push(' ');
            }
            text.push_str("\r\n\r\n");
        }
        if let Some((_, (_, s))) = &reply_to {
            let _ = write!(
                text,
                "On an earlier day, Customer {customer} wrote:\r\n> {s}\r\n> {}\r\n",
                pool[0]
            );
        }
        text.push_str(&format!("-- \r\nCustomer {customer}\r\n"));

        if rng.random_ratio(1, 25) {
            let size = rng.random_range(50_000..500_000);
            let mut blob = vec![0u8; size];
            rng.fill_bytes(&mut blob);
            let _ = write!(
                m,
                "Content-Type: multipart/mixed; boundary=\"part-{i}\"\r\n\r\n--part-{i}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n--part-{i}\r\nContent-Type: application/pdf; name=\"document-{i}.pdf\"\r\nContent-Disposition: attachment; filename=\"document-{i}.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}--part-{i}--\r\n",
                base64_lines(&blob)
            );
            self.stats.attachments += 1;
        } else if rng.random_ratio(3, 20) {
            let html = text
                .split("\r\n\r\n")
                .filter(|p| !p.trim().is_empty())
                .map(|p| format!("<p>{}</p>", p.replace('>', "&gt;")))
                .collect::<Vec<_>>()
                .join("\r\n");
            let _ = write!(
                m,
                "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n<html><head><style>p {{ font-family: Arial; }}</style></head><body>\r\n{html}\r\n</body></html>\r\n"
            );
            self.stats.html_only += 1;
        } else {
            let _ = write!(
                m,
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}"
            );
        }

        match reply_to {
            Some(_) => self.stats.replies += 1,
            None => self.stats.new_requests += 1,
        }
        if self.history[customer].is_empty() {
            self.writers.push(customer);
        }
        self.history[customer].push((message_id, subject));
        self.stats.customers.insert(customer);
        self.stats.bytes += m.len();
        Some(m.into_bytes())
    }
}

fn base64_lines(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + bytes.len() / 57 * 2 + 4);
    for line in bytes.chunks(57) {
        out.push_str(&base64::engine::general_purpose::STANDARD.encode(line));
        out.push_str("\r\n");
    }
    out
}

// --- The gateway ----------------------------------------------------------------------------

struct Gateway {
    child: Option<Child>,
    pid: u32,
    http: u16,
    db_url: String,
    log: PathBuf,
    started: Instant,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

impl Gateway {
    fn start(o: &Options, imap_port: u16) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("imap-drain-")
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join("gateway.toml");
        fs::write(
            &config,
            format!(
                r#"
[smtp]
hostname = "bench.test"

[[organizations]]
name = "Acme"
domains = ["acme.test"]
  [[organizations.inboxes]]
  email_prefix = "support"
  name = "Support"
    [organizations.inboxes.imap]
    host = "127.0.0.1"
    port = {imap_port}
    tls = "none"
    user = "{USER}"
    password = "{PASSWORD}"
    folder = "INBOX"
    after = "{}"
    idle = true
    batch_size = {}
"#,
                o.after, o.batch
            ),
        )
        .expect("config");
        let db_url = format!("sqlite://{}", dir.path().join("gateway.db").display());
        let log = dir.path().join("gateway.log");
        let (smtp, http) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_initdesk-gateway"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .env("INITDESK_DATABASE_URL", &db_url)
            .env("INITDESK_STORAGE_DATA_DIR", dir.path().join("data"))
            .env("INITDESK_OUTBOUND_SECRET_FILE", dir.path().join("secret"))
            .env("INITDESK_SMTP_LISTEN", format!("127.0.0.1:{smtp}"))
            .env("INITDESK_HTTP_LISTEN", format!("127.0.0.1:{http}"))
            .env(
                "RUST_LOG",
                "info,sqlx=warn,initdesk_gateway::listeners::imap=debug",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("gateway log"))
            .spawn()
            .expect("start the gateway");
        Gateway {
            pid: child.id(),
            child: Some(child),
            http,
            db_url,
            log,
            started: Instant::now(),
            _dir: dir,
        }
    }

    /// Waits until `/readyz` answers 200; returns the time since the process started.
    fn wait_ready(&mut self) -> Duration {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.try_exit() {
                panic!(
                    "the gateway exited ({status}) at start-up; its log:\n{}",
                    self.log_tail(40)
                );
            }
            if let Some((200, _)) = http_get(self.http, "/readyz") {
                return self.started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "the gateway's /readyz does not answer 200 after 60 s; its log:\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    fn readyz(&self) -> Option<serde_json::Value> {
        let (code, body) = http_get(self.http, "/readyz")?;
        if code != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    fn metrics(&self) -> Option<String> {
        http_get(self.http, "/metrics")
            .filter(|(code, _)| *code == 200)
            .map(|(_, body)| body)
    }

    fn status_mb(&self, field: &str) -> f64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }

    /// User + system CPU seconds of the gateway so far.
    fn cpu(&self) -> f64 {
        proc_cpu(&self.pid.to_string())
    }

    /// CPU seconds per thread name (tokio workers, blocking pool, SQLite connection threads).
    fn thread_cpu(&self) -> BTreeMap<String, (usize, f64)> {
        let mut out: BTreeMap<String, (usize, f64)> = BTreeMap::new();
        let Ok(dir) = fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return out;
        };
        for e in dir.flatten() {
            let Some((name, fields)) = stat_fields(&e.path().join("stat")) else {
                continue;
            };
            let entry = out.entry(name).or_default();
            entry.0 += 1;
            entry.1 += ticks(&fields, 11) + ticks(&fields, 12);
        }
        out
    }

    fn log_tail(&self, n: usize) -> String {
        tail(&fs::read_to_string(&self.log).unwrap_or_default(), n)
    }

    /// SIGTERM, wait (SIGKILL after 60 s); returns the whole log.
    fn stop(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        eprintln!("the gateway did not stop within 60 s of SIGTERM; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A plain HTTP/1.1 GET to 127.0.0.1:`port`; (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Messages the fetcher has finished (any outcome), summed over `initdesk_imap_messages_total`.
fn imap_committed(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("initdesk_imap_messages_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn metric_value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The series of a metric as `labels value`, comma-separated; `none` when there are none.
fn metric_lines(metrics: &str, prefix: &str) -> String {
    let lines: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l[prefix.len() - 1..].to_string())
        .collect();
    if lines.is_empty() {
        "none".into()
    } else {
        lines.join(", ")
    }
}

// --- CPU accounting -------------------------------------------------------------------------

/// The command name and the fields after it of a /proc stat file.
fn stat_fields(path: &std::path::Path) -> Option<(String, Vec<String>)> {
    let stat = fs::read_to_string(path).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    Some((name, rest.split_whitespace().map(str::to_string).collect()))
}

/// Field `i` (0 = state, 11 = utime, 12 = stime, 13 = cutime, 14 = cstime) in seconds.
fn ticks(fields: &[String], i: usize) -> f64 {
    fields
        .get(i)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 100.0
}

/// User + system CPU seconds of process `pid` (or `self`).
fn proc_cpu(pid: &str) -> f64 {
    stat_fields(&PathBuf::from(format!("/proc/{pid}/stat")))
        .map_or(0.0, |(_, f)| ticks(&f, 11) + ticks(&f, 12))
}

/// CPU seconds of the private Dovecot: every process in the master's process group, plus
/// what the master collected from children that already exited.
fn dovecot_cpu(dovecot: &Dovecot) -> f64 {
    let conf = dovecot.dir().join("dovecot.conf");
    let conf = conf.to_string_lossy();
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0.0;
    };
    let procs: Vec<(u32, Vec<String>)> = dir
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let (_, fields) = stat_fields(&e.path().join("stat"))?;
            Some((pid, fields))
        })
        .collect();
    let Some(master) = procs.iter().map(|(pid, _)| *pid).find(|pid| {
        fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .is_ok_and(|c| c.contains("dovecot") && c.contains(conf.as_ref()))
    }) else {
        return 0.0;
    };
    procs
        .iter()
        .filter(|(_, f)| f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(master))
        .map(|(pid, f)| {
            let own = ticks(f, 11) + ticks(f, 12);
            if *pid == master {
                own + ticks(f, 13) + ticks(f, 14)
            } else {
                own
            }
        })
        .sum()
}

/// Machine-wide busy and iowait CPU seconds since boot, summed over all cores (/proc/stat).
fn machine_cpu() -> (f64, f64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse::<f64>().unwrap_or(0.0) / 100.0)
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal
    (get(0) + get(1) + get(2) + get(5) + get(6) + get(7), get(4))
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The last `n` lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
