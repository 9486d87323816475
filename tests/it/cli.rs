//! The command line as an MTA or an operator drives it: exit codes, config errors, admin commands.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::helpers::{binary, drop_postgres, fresh_postgres};

/// A command with a private database, data dir and secret, so tests never share state.
fn gateway(dir: &Path, db_url: &str) -> Command {
    let mut cmd = Command::new(binary());
    cmd.current_dir(dir)
        .env_remove("INITDESK_CONFIG")
        .env("INITDESK_DATABASE_URL", db_url)
        .env("INITDESK_STORAGE_DATA_DIR", dir.join("data"))
        .env("INITDESK_OUTBOUND_SECRET_FILE", dir.join("data/secret"))
        .env("RUST_LOG", "warn");
    cmd
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("data/gateway.db").display())
}

fn run(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    child.wait_with_output().expect("wait")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const MAIL: &[u8] = b"From: Alice <alice@example.com>\r\nTo: help@shop.test\r\nSubject: Where is my order?\r\nMessage-ID: <o1@example.com>\r\n\r\nIt has been a week.\r\n";

/// `org create`, `inbox create`, `user create`, `token create`, then a delivery into the new inbox.
fn admin_flow(dir: &Path, url: &str) {
    let mut c = gateway(dir, url);
    c.args([
        "org",
        "create",
        "--name",
        "Shop",
        "--domain",
        "shop.test",
        "--domain",
        "shop.example",
    ]);
    let out = run(c, b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let org = json(&out);
    let org_id = org["id"].as_i64().expect("id");
    assert!(org["token"].as_str().is_some_and(|t| t.len() > 30), "{org}");

    let mut c = gateway(dir, url);
    c.args([
        "inbox",
        "create",
        "--org",
        &org_id.to_string(),
        "--prefix",
        "help",
        "--name",
        "Help desk",
        "--auto-acknowledge",
    ]);
    let out = run(c, b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let inbox = json(&out);
    assert_eq!(inbox["email_prefix"], "help");
    assert_eq!(inbox["auto_acknowledge"], true);

    let mut c = gateway(dir, url);
    c.args([
        "user",
        "create",
        "--org",
        &org_id.to_string(),
        "--email",
        "sam@shop.test",
        "--name",
        "Sam",
    ]);
    let out = run(c, b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json(&out)["email"], "sam@shop.test");

    let mut c = gateway(dir, url);
    c.args(["token", "create", "--org", &org_id.to_string()]);
    let out = run(c, b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_ne!(json(&out)["token"], org["token"], "a new token each time");

    let mut c = gateway(dir, url);
    c.args(["token", "create", "--org", "999"]);
    let out = run(c, b"");
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("--org 999"), "{}", stderr(&out));

    // Deliver: stored (0), then again (duplicate, still 0), unknown recipient (67).
    let mut c = gateway(dir, url);
    c.args(["deliver", "--recipient", "help+orders@shop.test"]);
    let out = run(c, MAIL);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"], "created");
    assert_eq!(json(&out)["public_id"], 1);

    let mut c = gateway(dir, url);
    c.args(["deliver", "--recipient", "help@shop.example"]);
    let out = run(c, MAIL);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json(&out)["outcome"], "duplicate");

    let mut c = gateway(dir, url);
    c.args(["deliver", "--recipient", "nobody@shop.test"]);
    let out = run(c, MAIL);
    assert_eq!(code(&out), 67, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown recipient"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn admin_commands_and_deliver_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    admin_flow(dir.path(), &sqlite_url(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_and_deliver_postgres() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, db) = fresh_postgres().await;
    let path = dir.path().to_path_buf();
    let u = url.clone();
    tokio::task::spawn_blocking(move || admin_flow(&path, &u))
        .await
        .expect("join");
    drop_postgres(db).await;
}

#[test]
fn deliver_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = sqlite_url(dir.path());
    let mut c = gateway(dir.path(), &url);
    c.args(["org", "create", "--name", "Shop", "--domain", "shop.test"]);
    assert_eq!(code(&run(c, b"")), 0);
    let mut c = gateway(dir.path(), &url);
    c.args([
        "inbox", "create", "--org", "1", "--prefix", "help", "--name", "Help",
    ]);
    assert_eq!(code(&run(c, b"")), 0);

    // 65: empty input, and a message with no sender at all.
    let mut c = gateway(dir.path(), &url);
    c.args(["deliver", "--recipient", "help@shop.test"]);
    assert_eq!(code(&run(c, b"")), 65);
    let mut c = gateway(dir.path(), &url);
    c.args(["deliver", "--recipient", "help@shop.test"]);
    let out = run(c, b"Subject: nobody sent this\r\n\r\nbody\r\n");
    assert_eq!(code(&out), 65, "{}", stderr(&out));
    assert!(stderr(&out).contains("no sender"), "{}", stderr(&out));
    // ... but the envelope sender rescues it.
    let mut c = gateway(dir.path(), &url);
    c.args([
        "deliver",
        "--recipient",
        "help@shop.test",
        "--sender",
        "bob@example.com",
    ]);
    let out = run(c, b"Subject: nobody sent this\r\n\r\nbody\r\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // From a file instead of stdin.
    let file = dir.path().join("m.eml");
    std::fs::write(&file, MAIL).expect("write");
    let mut c = gateway(dir.path(), &url);
    c.args(["deliver", "--recipient", "help@shop.test"])
        .arg(&file);
    assert_eq!(code(&run(c, b"")), 0);

    // 75: the database cannot be reached; the MTA keeps the mail and retries.
    let mut c = gateway(dir.path(), "postgres://postgres@127.0.0.1:1/none");
    c.args(["deliver", "--recipient", "help@shop.test"]);
    let out = run(c, MAIL);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    let mut c = gateway(dir.path(), "sqlite:///dev/null/cannot/gateway.db");
    c.args(["deliver", "--recipient", "help@shop.test"]);
    assert_eq!(code(&run(c, MAIL)), 75);
}

#[test]
fn bad_configuration_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = sqlite_url(dir.path());
    let imap = |extra: &str| {
        format!(
            "[[organizations]]\nname = \"A\"\ndomains = [\"a.test\"]\n[[organizations.inboxes]]\nemail_prefix = \"support\"\nname = \"S\"\n[organizations.inboxes.imap]\nhost = \"127.0.0.1\"\nuser = \"u\"\n{extra}"
        )
    };
    let imap_cases = [
        (
            imap("tls = \"ssl\"\n"),
            "organizations[0].inboxes[0].imap.tls",
        ),
        (
            imap("after = \"archive\"\n"),
            "organizations[0].inboxes[0].imap.after",
        ),
        (
            imap("password = \"x\"\npassword_command = \"pass show x\"\n"),
            "organizations[0].inboxes[0].imap.password",
        ),
        (
            imap("batch_size = 0\n"),
            "organizations[0].inboxes[0].imap.batch_size",
        ),
        (imap("fodler = \"INBOX\"\n"), "fodler"),
        ("[imap]\nlease_secs = 1\n".to_string(), "imap.lease_secs"),
    ];
    let cases: [(&str, &str); 5] = [
        ("[smtp]\nlisen = \"127.0.0.1:25\"\n", "lisen"),
        ("[http]\nlisten = \"not an address\"\n", "http.listen"),
        ("[database]\nurl = \"mysql://x\"\n", "database.url"),
        (
            "[[organizations]]\nname = \"A\"\ndomains = []\n",
            "organizations[0].domains",
        ),
        (
            "[smtp]\nmax_message_bytes = \"lots\"\n",
            "max_message_bytes",
        ),
    ];
    let all = cases
        .iter()
        .map(|(t, k)| (t.to_string(), *k))
        .chain(imap_cases);
    for (toml, key) in all {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &toml).expect("write");
        let mut c = gateway(dir.path(), &url);
        // The environment would override database.url; here the file must speak.
        c.env_remove("INITDESK_DATABASE_URL")
            .arg("migrate")
            .arg("--config")
            .arg(&path);
        let out = run(c, b"");
        assert_eq!(code(&out), 78, "config {toml:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(key),
            "config {toml:?} should name {key}: {}",
            stderr(&out)
        );
    }
    // A missing file is an error too, also when named by INITDESK_CONFIG.
    let mut c = gateway(dir.path(), &url);
    c.env("INITDESK_CONFIG", dir.path().join("missing.toml"))
        .arg("migrate");
    let out = run(c, b"");
    assert_eq!(code(&out), 78);
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
    // Environment overrides are checked the same way.
    let mut c = gateway(dir.path(), &url);
    c.env("INITDESK_SMTP_MAX_MESSAGE_BYTES", "many")
        .arg("migrate");
    let out = run(c, b"");
    assert_eq!(code(&out), 78);
    assert!(
        stderr(&out).contains("max_message_bytes"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_file_declares_organizations_and_env_overrides_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[database]\nurl = \"sqlite://ignored.db\"\n\n[[organizations]]\nname = \"Acme\"\ndomains = [\"acme.test\"]\n\n  [[organizations.inboxes]]\n  email_prefix = \"support\"\n  name = \"Support\"\n\n  [[organizations.users]]\n  email = \"agent@acme.test\"\n  name = \"Agent\"\n",
    )
    .expect("write");
    let url = sqlite_url(dir.path());
    // INITDESK_DATABASE_URL (set by gateway()) wins over the file's database.url.
    let mut c = gateway(dir.path(), &url);
    c.args(["deliver", "--recipient", "support@acme.test", "--config"])
        .arg(&path);
    let out = run(c, b"From: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        dir.path().join("data/gateway.db").exists(),
        "the environment override chose the database"
    );
    assert!(!dir.path().join("ignored.db").exists());
    // Applying the same config again (every start-up does) changes nothing and fails nothing.
    let mut c = gateway(dir.path(), &url);
    c.arg("migrate").arg("--config").arg(&path);
    assert_eq!(code(&run(c, b"")), 0);
}

#[test]
fn replay_prints_a_diff_for_a_failing_case() {
    let dir = tempfile::tempdir().expect("tempdir");
    let case = dir.path().join("cases/wrong");
    std::fs::create_dir_all(&case).expect("mkdir");
    std::fs::write(case.join("01.eml"), MAIL).expect("eml");
    std::fs::write(
        case.join("expected.yaml"),
        "description: expects the wrong status\nexpect:\n  outcomes: [created]\n  tickets:\n    - status: closed\n      subject: Where is my order?\n",
    )
    .expect("yaml");
    let mut c = Command::new(binary());
    c.arg("replay")
        .arg(dir.path().join("cases"))
        .env("RUST_LOG", "warn");
    let out = run(c, b"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 1, "{stdout}");
    assert!(
        stdout.contains("tickets[0].status: expected closed, found created"),
        "{stdout}"
    );
    assert!(
        stdout.contains("-- status: closed") && stdout.contains("+- status: created"),
        "a unified diff: {stdout}"
    );
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");

    let mut c = Command::new(binary());
    c.arg("replay")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cases/thread-in-reply-to"))
        .env("RUST_LOG", "warn");
    let out = run(c, b"");
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));
}

/// Starts `n` `deliver` processes at once (as an MTA does) and returns the ticket numbers
/// they report, sorted.
fn deliver_in_parallel(
    dir: &Path,
    url: &str,
    n: usize,
    recipient: &str,
    config: Option<&Path>,
) -> Vec<i64> {
    let children: Vec<_> = (0..n)
        .map(|i| {
            let mut c = gateway(dir, url);
            c.args(["deliver", "--recipient", recipient]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            if let Some(config) = config {
                c.arg("--config").arg(config);
            }
            let mut child = c.spawn().expect("spawn");
            let body = format!("From: c{i}@example.com\r\nSubject: request {i}\r\nMessage-ID: <p{i}@example.com>\r\n\r\nhello {i}\r\n");
            if let Some(mut input) = child.stdin.take() {
                input.write_all(body.as_bytes()).expect("stdin");
            }
            child
        })
        .collect();
    let mut ids: Vec<i64> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("wait");
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            json(&out)["public_id"].as_i64().expect("public_id")
        })
        .collect();
    ids.sort();
    ids
}

/// Two processes at once (an MTA running several pipe deliveries): numbers stay 1..N.
fn parallel_delivers(dir: &Path, url: &str) {
    let mut c = gateway(dir, url);
    c.args(["org", "create", "--name", "Shop", "--domain", "shop.test"]);
    let out = run(c, b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut c = gateway(dir, url);
    c.args([
        "inbox", "create", "--org", "1", "--prefix", "help", "--name", "Help",
    ]);
    assert_eq!(code(&run(c, b"")), 0);
    let ids = deliver_in_parallel(dir, url, 12, "help@shop.test", None);
    assert_eq!(ids, (1..=12).collect::<Vec<i64>>());
}

#[test]
fn parallel_processes_number_without_gaps_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    parallel_delivers(dir.path(), &sqlite_url(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_processes_number_without_gaps_postgres() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, db) = fresh_postgres().await;
    let path = dir.path().to_path_buf();
    let u = url.clone();
    tokio::task::spawn_blocking(move || parallel_delivers(&path, &u))
        .await
        .expect("join");
    drop_postgres(db).await;
}

/// A free port on 127.0.0.1 (bound then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn serve_runs_on_embedded_defaults_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let smtp_port = free_port();
    // systemd's side of Type=notify and WatchdogSec=1: a datagram socket the service writes to.
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    // No config file and no database variables: the embedded defaults (SQLite under ./data/).
    let child = Command::new(binary())
        .current_dir(dir.path())
        .env_remove("INITDESK_CONFIG")
        .env_remove("INITDESK_DATABASE_URL")
        .env_remove("WATCHDOG_PID")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .env("INITDESK_HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("INITDESK_HTTP_IDLE_TIMEOUT_SECS", "1")
        .env("INITDESK_SMTP_LISTEN", format!("127.0.0.1:{smtp_port}"))
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut ready = None;
    for _ in 0..100 {
        if let Some(r) = http_get(port, "/readyz") {
            ready = Some(r);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ready = ready.expect("serve answers /readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    // READY=1 once listening, then the watchdog pinged at half its interval.
    let said = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                let mut buf = [0u8; 256];
                let len = notify.recv(&mut buf).expect("a notification in time");
                String::from_utf8_lossy(&buf[..len]).trim().to_string()
            })
            .collect()
    };
    // A client that sends half a request and waits is dropped after http.idle_timeout_secs.
    {
        use std::io::Read;
        let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
            .expect("half a request");
        slow.set_read_timeout(Some(std::time::Duration::from_secs(15)))
            .expect("timeout");
        let mut got = Vec::new();
        let ended = slow.read_to_end(&mut got);
        assert!(
            !matches!(&ended, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "a silent HTTP client still holds its connection after 15 s: {ended:?}"
        );
    }
    let first = said(3);
    assert_eq!(
        first.first().map(String::as_str),
        Some("READY=1"),
        "{first:?}"
    );
    assert!(first[1..].iter().all(|m| m == "WATCHDOG=1"), "{first:?}");
    assert!(http_get(port, "/healthz").is_some_and(|r| r.starts_with("HTTP/1.1 200")));
    assert!(
        dir.path().join("data/gateway.db").exists(),
        "SQLite under ./data/ by default"
    );
    // Mail over SMTP to the embedded defaults: no organization yet, so the recipient is unknown.
    {
        use std::io::{BufRead, BufReader};
        let stream = std::net::TcpStream::connect(("127.0.0.1", smtp_port)).expect("smtp");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut w = stream;
        let mut line = String::new();
        let mut expect = |w: &mut std::net::TcpStream, send: &str, code: &str| {
            if !send.is_empty() {
                w.write_all(send.as_bytes()).expect("write");
            }
            loop {
                line.clear();
                reader.read_line(&mut line).expect("read");
                if line.as_bytes().get(3) != Some(&b'-') {
                    break;
                }
            }
            assert!(line.starts_with(code), "{send:?} -> {line}");
        };
        expect(&mut w, "", "220");
        expect(&mut w, "EHLO test\r\n", "250");
        expect(&mut w, "MAIL FROM:<a@example.com>\r\n", "250");
        expect(&mut w, "RCPT TO:<support@nowhere.test>\r\n", "550");
        expect(&mut w, "QUIT\r\n", "221");
    }
    let metrics = http_get(port, "/metrics").expect("metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("initdesk_smtp_replies_total{code=\"550\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("initdesk_smtp_sessions_total"),
        "{metrics}"
    );
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "clean exit on SIGTERM: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("shutting down"), "{}", stderr(&out));
    let rest = said_after_exit(&notify);
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "{rest:?}");
}

/// The notifications still queued on `notify` once the service has exited.
fn said_after_exit(notify: &std::os::unix::net::UnixDatagram) -> Vec<String> {
    notify.set_nonblocking(true).expect("nonblocking");
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(len) = notify.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..len]).trim().to_string());
    }
    out
}

/// An MTA starts many `deliver`s at once, each applying the config's organizations (the
/// first ones creating them): none may fail, and numbering stays gap-free.
fn parallel_delivers_with_config(dir: &Path, url: &str) {
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        "[[organizations]]\nname = \"Acme\"\ndomains = [\"acme.test\", \"ACME-mail.test\"]\n\n  [[organizations.inboxes]]\n  email_prefix = \"support\"\n  name = \"Support\"\n\n  [[organizations.users]]\n  email = \"agent@acme.test\"\n  name = \"Agent\"\n",
    )
    .expect("config");
    let ids = deliver_in_parallel(dir, url, 8, "support@acme-mail.test", Some(&config));
    assert_eq!(ids, (1..=8).collect::<Vec<i64>>());
}

#[test]
fn parallel_delivers_apply_config_safely_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    parallel_delivers_with_config(dir.path(), &sqlite_url(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_delivers_apply_config_safely_postgres() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, db) = fresh_postgres().await;
    let path = dir.path().to_path_buf();
    let u = url.clone();
    tokio::task::spawn_blocking(move || parallel_delivers_with_config(&path, &u))
        .await
        .expect("join");
    drop_postgres(db).await;
}

#[test]
fn deliver_defers_on_a_bad_configuration_and_ignores_foreign_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[smtp]\nlisen = 1\n").expect("write");
    let mut c = gateway(dir.path(), &sqlite_url(dir.path()));
    c.args(["deliver", "--recipient", "support@acme.test", "--config"])
        .arg(&bad);
    let out = run(c, MAIL);
    assert_eq!(
        code(&out),
        75,
        "Postfix must keep the mail, not bounce it: {}",
        stderr(&out)
    );
    // INITDESK_* variables that name no section are not configuration.
    let mut c = gateway(dir.path(), &sqlite_url(dir.path()));
    c.env("INITDESK_TEST_POSTGRES_URL", "postgres://x/y")
        .env("INITDESK_FOO", "1")
        .arg("migrate");
    let out = run(c, b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}
