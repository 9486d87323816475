//! SMTP load benchmark: the release `initdesk-gateway serve` as a child process, fed over N
//! concurrent SMTP connections the way an MTA would.
//!
//! `cargo bench --bench smtp_load -- [--backend sqlite|postgres|both] [--messages N]
//! [--connections C] [--rate R (0: no paced run)] [--big K]`
//!
//! The mail is issue 2's corpus, from the pipeline bench's generator with the same seed
//! (`common/corpus.rs`): a third replies, redeliveries, several charsets and languages, 1 in
//! 20 with a 50-500 KB attachment; every `250` must say what the generator meant (created,
//! appended, duplicate).
//!
//! Reports messages/s, the DATA-to-250 latency (p50, p99), and the daemon's peak RSS; a paced
//! run at `--rate` messages/s offered; and the peak RSS with K and 4K concurrent 50 MB
//! messages, which must not grow with K (large messages wait for a slot).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[path = "common/corpus.rs"]
mod corpus;

const CONFIG: &str = r#"
[smtp]
hostname = "bench.test"
max_message_bytes = 62914560
max_connections = 1000
max_connections_per_ip = 1000

[[organizations]]
name = "Acme"
domains = ["acme.test"]
  [[organizations.inboxes]]
  email_prefix = "support"
  name = "Support"
  [[organizations.inboxes]]
  email_prefix = "sales"
  name = "Sales"
"#;

struct Options {
    backends: Vec<&'static str>,
    messages: usize,
    connections: usize,
    rate: usize,
    big: usize,
}

fn options() -> Options {
    let mut o = Options {
        backends: vec!["sqlite", "postgres"],
        messages: 10_000,
        connections: 16,
        rate: 1000,
        big: 4,
    };
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--backend" => {
                o.backends = match value().as_str() {
                    "sqlite" => vec!["sqlite"],
                    "postgres" => vec!["postgres"],
                    _ => vec!["sqlite", "postgres"],
                }
            }
            "--messages" => o.messages = value().parse().unwrap_or(o.messages),
            "--connections" => o.connections = value().parse().unwrap_or(o.connections),
            "--rate" => o.rate = value().parse().unwrap_or(o.rate),
            "--big" => o.big = value().parse().unwrap_or(o.big),
            _ => {}
        }
    }
    o
}

fn main() {
    let o = options();
    // `cargo test --all-targets` runs benches once with no --bench: keep that a quick smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let o = if smoke {
        Options {
            messages: 200,
            connections: 4,
            rate: 200,
            big: 0,
            backends: vec!["sqlite"],
        }
    } else {
        o
    };
    println!(
        "smtp_load: {} messages over {} connections, paced run at {}/s, {} x 50 MB{}",
        o.messages,
        o.connections,
        o.rate,
        o.big,
        if smoke { " (smoke run)" } else { "" }
    );
    println!(
        "| backend | run | messages | seconds | msg/s | p50 ms | p99 ms | peak RSS MB | daemon CPU µs/msg | load generator CPU µs/msg |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut commit_notes = Vec::new();
    for backend in &o.backends {
        // `--rate 0` leaves out the paced run.
        let runs: &[&str] = if o.rate > 0 {
            &["max", "paced"]
        } else {
            &["max"]
        };
        for &run in runs {
            let gw = Gateway::start(backend);
            let rate = if run == "paced" { o.rate } else { 0 };
            let n = if run == "paced" {
                o.messages.min(o.rate * 10)
            } else {
                o.messages
            };
            let corpus = corpus(n, o.connections);
            let batches_before = gw.histogram("initdesk_commit_batch_messages");
            let commits_before = gw.histogram("initdesk_commit_seconds");
            let writes_before = gw.histogram("initdesk_commit_write_seconds");
            let cpu_before = gw.cpu_seconds();
            let client_before = own_cpu_seconds();
            let r = blast(gw.smtp, &corpus, o.connections, rate);
            let daemon_cpu = gw.cpu_seconds() - cpu_before;
            let client_cpu = own_cpu_seconds() - client_before;
            let batches = gw.histogram("initdesk_commit_batch_messages");
            let commits = gw.histogram("initdesk_commit_seconds");
            let writes = gw.histogram("initdesk_commit_write_seconds");
            let count = (batches.1 - batches_before.1).max(1.0);
            commit_notes.push(format!(
                "{backend}, {}: {:.0} commits, {:.1} messages per commit, {:.2} ms per commit \
                 ({:.2} ms of it writing, the serial part)",
                if rate > 0 {
                    format!("{rate}/s offered")
                } else {
                    "as fast as possible".into()
                },
                count,
                (batches.0 - batches_before.0) / count,
                (commits.0 - commits_before.0) * 1000.0 / (commits.1 - commits_before.1).max(1.0),
                (writes.0 - writes_before.0) * 1000.0 / (writes.1 - writes_before.1).max(1.0)
            ));
            let rss = gw.peak_rss_mb();
            println!(
                "| {backend} | {} | {} | {:.2} | {:.0} | {:.1} | {:.1} | {rss:.0} | {:.0} | {:.0} |",
                if rate > 0 {
                    format!("{rate}/s offered")
                } else {
                    "as fast as possible".into()
                },
                r.sent,
                r.seconds,
                r.sent as f64 / r.seconds,
                r.p50,
                r.p99,
                daemon_cpu * 1e6 / r.sent.max(1) as f64,
                client_cpu * 1e6 / r.sent.max(1) as f64
            );
            assert_eq!(r.failed, 0, "{} messages were not accepted", r.failed);
            assert_eq!(
                r.unexpected, 0,
                "{} messages were accepted as something else than the generator meant",
                r.unexpected
            );
            gw.stop();
        }
        if o.big > 0 {
            let mut peaks = Vec::new();
            for k in [o.big, o.big * 4] {
                let gw = Gateway::start(backend);
                let before = gw.rss_mb();
                let r = big_messages(gw.smtp, k);
                let peak = gw.peak_rss_mb();
                println!(
                    "| {backend} | {k} x 50 MB at once | {} | {:.2} | - | - | - | {peak:.0} (idle {before:.0}) | - | - |",
                    r.sent, r.seconds,
                );
                assert_eq!(r.failed, 0);
                peaks.push(peak);
                gw.stop();
            }
            // Four times as many large messages in flight must not cost much more memory:
            // they wait for a large-message slot instead (run to run, the peak varies ~10 %).
            if let [few, many] = peaks[..] {
                assert!(
                    many <= few * 1.25,
                    "peak RSS grew with the number of 50 MB messages in flight: {few:.0} MB -> {many:.0} MB"
                );
            }
        }
    }
    for note in commit_notes {
        println!("commits: {note}");
    }
}

struct Gateway {
    child: Child,
    smtp: SocketAddr,
    http: SocketAddr,
    _dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

impl Gateway {
    fn start(backend: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, CONFIG).expect("config");
        let (url, pg) = match backend {
            "postgres" => {
                let base = std::env::var("INITDESK_TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
                let name = format!("idk_load_{}", uuid::Uuid::new_v4().simple());
                psql(&base, &format!("CREATE DATABASE {name}"));
                (
                    initdesk_gateway::store::scratch::replace_db_name(&base, &name),
                    Some((base, name)),
                )
            }
            _ => (
                format!("sqlite://{}", dir.path().join("gateway.db").display()),
                None,
            ),
        };
        let (smtp, http) = (free_port(), free_port());
        // A/B comparisons: INITDESK_BENCH_BINARY runs another build of the daemon.
        let binary = std::env::var_os("INITDESK_BENCH_BINARY")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_initdesk-gateway").into());
        let child = Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .env("INITDESK_DATABASE_URL", &url)
            .env("INITDESK_STORAGE_DATA_DIR", dir.path().join("data"))
            .env("INITDESK_OUTBOUND_SECRET_FILE", dir.path().join("secret"))
            .env("INITDESK_SMTP_LISTEN", format!("127.0.0.1:{smtp}"))
            .env("INITDESK_HTTP_LISTEN", format!("127.0.0.1:{http}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the gateway");
        let smtp: SocketAddr = format!("127.0.0.1:{smtp}").parse().expect("addr");
        for _ in 0..200 {
            if TcpStream::connect(smtp).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Gateway {
            child,
            smtp,
            http: format!("127.0.0.1:{http}").parse().expect("addr"),
            _dir: dir,
            pg,
        }
    }

    /// Sum and count of a Prometheus histogram on the daemon's `/metrics`.
    fn histogram(&self, name: &str) -> (f64, f64) {
        let mut body = String::new();
        if let Ok(mut s) = TcpStream::connect(self.http) {
            let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n");
            let _ = s.read_to_string(&mut body);
        }
        let value = |suffix: &str| {
            body.lines()
                .find(|l| l.starts_with(&format!("{name}{suffix} ")))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        (value("_sum"), value("_count"))
    }

    fn status_kb(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// CPU seconds (user + system) the daemon has used so far.
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(&format!("/proc/{}/stat", self.child.id()))
    }

    fn peak_rss_mb(&self) -> f64 {
        self.status_kb("VmHWM:") / 1024.0
    }

    fn rss_mb(&self) -> f64 {
        self.status_kb("VmRSS:") / 1024.0
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        if let Some((base, name)) = self.pg.take() {
            psql(
                &base,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    }
}

impl Drop for Gateway {
    /// A bench that fails (or whose output pipe closes) must not leave its daemon running
    /// and taking CPU from the next measurement.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn psql(url: &str, sql: &str) {
    let ok = Command::new("psql")
        .arg(url)
        .arg("-qc")
        .arg(sql)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "psql {sql}");
}

/// One SMTP client connection, blocking I/O (the load generator is its own process).
struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).ok();
        let mut c = Conn {
            r: BufReader::new(s.try_clone().expect("clone")),
            w: s,
        };
        assert_eq!(c.reply(), 220);
        c.w.write_all(b"EHLO load.test\r\n").expect("ehlo");
        assert_eq!(c.reply(), 250);
        c
    }

    fn reply(&mut self) -> u16 {
        self.reply_line().0
    }

    /// The code and the last line of one reply.
    fn reply_line(&mut self) -> (u16, String) {
        let mut line = String::new();
        loop {
            line.clear();
            if self.r.read_line(&mut line).unwrap_or(0) == 0 {
                return (0, line);
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return (code, line);
            }
        }
    }

    /// Sends one message (pipelined MAIL/RCPT/DATA); returns the DATA-to-250 time and the
    /// `250` line when accepted.
    fn send(&mut self, data: &[u8], recipient: &str) -> Option<(Duration, String)> {
        self.w
            .write_all(
                format!("MAIL FROM:<load@example.com>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n")
                    .as_bytes(),
            )
            .ok()?;
        if self.reply() != 250 || self.reply() != 250 || self.reply() != 354 {
            return None;
        }
        self.w.write_all(data).ok()?;
        let start = Instant::now();
        self.w.write_all(b".\r\n").ok()?;
        let (code, line) = self.reply_line();
        (code == 250).then(|| (start.elapsed(), line))
    }
}

struct Result_ {
    sent: usize,
    failed: usize,
    /// Accepted, but not as the generator meant (a reply that opened a ticket, say).
    unexpected: usize,
    seconds: f64,
    p50: f64,
    p99: f64,
}

/// CPU seconds (user + system) this process, the load generator, has used so far.
fn own_cpu_seconds() -> f64 {
    cpu_seconds_of("/proc/self/stat")
}

/// User plus system CPU seconds of the process whose `/proc/<pid>/stat` is at `path`.
fn cpu_seconds_of(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: f64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// The messages to send, made before the clock starts so that the generator's CPU does not
/// compete with the daemon during the run (seeded: every run sends the same corpus).
/// One message of the corpus as the load generator sends it.
struct Mail {
    /// Dot-stuffed DATA, ending in CRLF (the generator's final `.` line is added on sending).
    data: Vec<u8>,
    recipient: &'static str,
    /// What the `250` must say: `created`, `appended` or `duplicate`.
    outcome: &'static str,
}

/// Issue 2's corpus (the pipeline bench's generator, same seed): new requests, replies that
/// thread by `In-Reply-To`/`References`, redeliveries, several charsets and languages.
/// Replies and redeliveries refer to mail at least `lag` messages earlier, far more than
/// the connections in flight, so their parents are committed when they arrive.
fn corpus(n: usize, connections: usize) -> Arc<Vec<Mail>> {
    let lag = (n / 10).min(1000).max(connections * 8);
    let mut g = corpus::Generator::new(SEED, n, lag, 0.05);
    Arc::new(
        (0..n)
            .map(|i| {
                let (expect, recipient, _, raw) = g.next_message(i);
                Mail {
                    data: dot_stuffed(&raw),
                    recipient: corpus::RECIPIENTS[usize::from(recipient)],
                    outcome: expect.outcome(),
                }
            })
            .collect(),
    )
}

/// The pipeline bench's seed: both benches send the same mail.
const SEED: u64 = 2;

/// `raw` as SMTP DATA: a `.` opening a line doubled, and a final CRLF.
fn dot_stuffed(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 64);
    let mut line_start = true;
    for &b in raw {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Sends `corpus` over `connections`; `rate` > 0 paces the offered load.
fn blast(addr: SocketAddr, corpus: &Arc<Vec<Mail>>, connections: usize, rate: usize) -> Result_ {
    let n = corpus.len();
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let failed = Arc::new(AtomicUsize::new(0));
    let unexpected = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (next, latencies, failed) = (next.clone(), latencies.clone(), failed.clone());
            let unexpected = unexpected.clone();
            let corpus = corpus.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    if rate > 0 {
                        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let mail = &corpus[i];
                    match conn.send(&mail.data, mail.recipient) {
                        Some((d, line)) => {
                            if !line.contains(mail.outcome) {
                                unexpected.fetch_add(1, Ordering::Relaxed);
                            }
                            latencies.lock().map(|mut l| l.push(d)).unwrap_or(());
                        }
                        None => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            conn = Conn::open(addr);
                        }
                    }
                }
                let _ = conn.w.write_all(b"QUIT\r\n");
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Result_ {
        sent: l.len(),
        failed: failed.load(Ordering::Relaxed),
        unexpected: unexpected.load(Ordering::Relaxed),
        seconds,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

/// `k` 50 MB messages at once, each on its own connection.
fn big_messages(addr: SocketAddr, k: usize) -> Result_ {
    let start = Instant::now();
    let body: Arc<Vec<u8>> = Arc::new({
        let mut rng = StdRng::seed_from_u64(7);
        let blob: Vec<u8> = (0..37 * 1024 * 1024).map(|_| rng.random()).collect();
        let mut m = b"From: big@example.com\r\nTo: support@acme.test\r\nSubject: fifty megabytes\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/octet-stream; name=big.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
        m.extend_from_slice(&corpus::base64_lines(&blob));
        m.extend_from_slice(b"--b--\r\n");
        m
    });
    let failed = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..k)
        .map(|i| {
            let (body, failed) = (body.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                let mut raw = format!("Message-ID: <big-{i}@example.com>\r\n").into_bytes();
                raw.extend_from_slice(&body);
                if conn.send(&raw, "support@acme.test").is_none() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Result_ {
        sent: k - failed.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        unexpected: 0,
        seconds: start.elapsed().as_secs_f64(),
        p50: 0.0,
        p99: 0.0,
    }
}
