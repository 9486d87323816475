//! The gateway behind a real Postfix (SPEC 5.2): Postfix relays acme.test and globex.test to
//! the gateway's SMTP or LMTP listener, mail submitted to Postfix with Python's smtplib and
//! with swaks arrives as tickets, and mail the gateway answered with 451 stays in Postfix's
//! queue and arrives, once, after the database is back.
//!
//! Every test runs its own `initdesk-gateway serve` (the built binary, as a child process)
//! and its own private Postfix instance: config, queue and data directories in a temp dir,
//! listening on a free port on 127.0.0.1 only. The test command (scripts/test.sh) installs
//! Postfix and swaks; a test that finds them missing fails, it never skips.

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use initdesk_gateway::store::{self, Store, orgs, tickets};
use serde_json::Value;

use crate::helpers::binary;

/// How long a test waits for mail to cross Postfix and the gateway.
const DELIVERY_WAIT: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str = "the test command (scripts/test.sh) installs it";

/// The organizations the gateway's config file declares.
const GATEWAY_CONFIG: &str = r#"[smtp]
hostname = "gateway.initdesk.test"
shutdown_grace_secs = 2

[[organizations]]
name = "Acme"
domains = ["acme.test"]

  [[organizations.inboxes]]
  email_prefix = "support"
  name = "Support"

  [[organizations.inboxes]]
  email_prefix = "sales"
  name = "Sales"

[[organizations]]
name = "Globex"
domains = ["globex.test"]

  [[organizations.inboxes]]
  email_prefix = "help"
  name = "Help"
"#;

// --- small helpers ---------------------------------------------------------------------

/// A free port on 127.0.0.1 (bound then released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A program from PATH or the sbin directories (root's PATH is not always complete).
fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(
        [
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/usr/local/sbin",
            "/usr/local/bin",
        ]
        .map(PathBuf::from),
    );
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: {INSTALL_HINT}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `cmd` and returns its output; panics with everything it said when it fails.
fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Private Postfix instances and `chattr` need root; so does a second PostgreSQL cluster.
fn require_root() {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    assert_eq!(
        text(&out.stdout).trim(),
        "0",
        "the Postfix tests run private Postfix instances and need root (the test command runs as root)"
    );
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `limit`.
pub(crate) fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The last `n` lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// --- the gateway -----------------------------------------------------------------------

/// `initdesk-gateway serve` as a child process with its own data dir, config and ports.
pub(crate) struct Gateway {
    dir: tempfile::TempDir,
    child: Option<Child>,
    db_url: String,
    pub(crate) smtp_port: u16,
    lmtp_port: u16,
    pub(crate) http_port: u16,
    log: PathBuf,
}

impl Gateway {
    /// Starts the gateway on SQLite in its temp dir, or on `postgres_url`, and waits until
    /// it answers /readyz.
    fn start(postgres_url: Option<&str>) -> Gateway {
        Self::start_with(postgres_url, &[])
    }

    /// Like `start`, with more environment settings (`INITDESK_OUTBOUND_RELAY`, ...).
    pub(crate) fn start_with(postgres_url: Option<&str>, env: &[(&str, String)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let db_url = match postgres_url {
            Some(url) => url.to_string(),
            None => format!("sqlite://{}", dir.path().join("data/gateway.db").display()),
        };
        let config = dir.path().join("gateway.toml");
        fs::write(&config, GATEWAY_CONFIG).expect("write gateway.toml");
        let log = dir.path().join("gateway.log");
        let (smtp_port, lmtp_port, http_port) = (free_port(), free_port(), free_port());
        let child = Command::new(binary())
            .current_dir(dir.path())
            .env_remove("INITDESK_CONFIG")
            .env("INITDESK_DATABASE_URL", &db_url)
            .env("INITDESK_STORAGE_DATA_DIR", dir.path().join("data"))
            .env(
                "INITDESK_OUTBOUND_SECRET_FILE",
                dir.path().join("data/secret"),
            )
            .env("INITDESK_SMTP_LISTEN", format!("127.0.0.1:{smtp_port}"))
            .env(
                "INITDESK_SMTP_LMTP_LISTEN",
                format!("127.0.0.1:{lmtp_port}"),
            )
            .env("INITDESK_HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("gateway.log"))
            .spawn()
            .expect("spawn initdesk-gateway serve");
        let mut gw = Gateway {
            dir,
            child: Some(child),
            db_url,
            smtp_port,
            lmtp_port,
            http_port,
            log,
        };
        let ready = wait_for(Duration::from_secs(30), || {
            if let Some(Ok(Some(status))) = gw.child.as_mut().map(Child::try_wait) {
                panic!("initdesk-gateway serve exited ({status}):\n{}", gw.log());
            }
            http_get(http_port, "/readyz").filter(|r| r.starts_with("HTTP/1.1 200"))
        });
        assert!(
            ready.is_some(),
            "initdesk-gateway serve did not answer /readyz within 30 s:\n{}",
            gw.log()
        );
        assert!(gw.log().contains("SMTP listening"), "{}", gw.log());
        gw
    }

    /// The id of the organization owning `domain`, and a new API token for it.
    pub(crate) async fn org_token(&self, domain: &str) -> (i64, String) {
        let store = store::open(&self.db_url, 1)
            .await
            .unwrap_or_else(|e| panic!("opening the gateway's database: {e}"));
        let mut tx = store.begin().await.expect("begin");
        let org = orgs::org_for_domain(&mut tx, domain)
            .await
            .expect("org")
            .unwrap_or_else(|| panic!("no organization for {domain}"));
        let token = orgs::create_token(&mut tx, org.id).await.expect("token");
        tx.commit().await.expect("commit");
        store.close().await;
        (org.id, token)
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The SQLite database and its WAL and shared-memory files, those that exist.
    fn sqlite_files(&self) -> ImmutableFiles {
        ImmutableFiles::of_database(&self.dir.path().join("data/gateway.db"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let stopped = wait_for(Duration::from_secs(10), || {
            child.try_wait().ok().flatten().map(|_| ())
        });
        if stopped.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// --- a private Postfix -----------------------------------------------------------------

/// Where Postfix hands mail for the test domains.
#[derive(Clone, Copy, Debug)]
enum Next {
    Smtp(u16),
    Lmtp(u16),
}

/// A private Postfix instance: its own config, queue and data directories in a temp dir,
/// one smtpd on 127.0.0.1:`port`, relaying acme.test and globex.test to the gateway.
pub(crate) struct Postfix {
    dir: tempfile::TempDir,
    config_dir: PathBuf,
    pub(crate) port: u16,
    /// With TLS: the implicit-TLS (`smtps`) port; `port` then offers STARTTLS.
    pub(crate) smtps_port: Option<u16>,
    running: bool,
}

const RELAY_DOMAINS: [&str; 2] = ["acme.test", "globex.test"];

impl Postfix {
    fn start(next: Next) -> Postfix {
        let nexthop = match next {
            Next::Smtp(p) => format!("smtp:[127.0.0.1]:{p}"),
            Next::Lmtp(p) => format!("lmtp:inet:127.0.0.1:{p}"),
        };
        Self::start_routes(
            &RELAY_DOMAINS
                .iter()
                .map(|d| (d.to_string(), nexthop.clone()))
                .collect::<Vec<_>>(),
        )
    }

    /// A private Postfix relaying each `(domain, nexthop)`; `nexthop` as in a transport map
    /// (`smtp:[127.0.0.1]:2525`, `lmtp:inet:127.0.0.1:24`). It listens on `self.port`.
    pub(crate) fn start_routes(routes: &[(String, String)]) -> Postfix {
        Self::start_with(routes, None)
    }

    /// As [`Postfix::start_routes`], with STARTTLS on `port` and implicit TLS on
    /// `smtps_port`, both with the certificate `certs` holds (`server.pem`, `server.key`,
    /// made by [`crate::dovecot::make_certificates`]).
    pub(crate) fn start_tls(routes: &[(String, String)], certs: &Path) -> Postfix {
        Self::start_with(routes, Some(certs))
    }

    fn start_with(routes: &[(String, String)], certs: Option<&Path>) -> Postfix {
        require_root();
        let postfix = tool("postfix");
        let dir = tempfile::tempdir().expect("tempdir");
        // The daemons drop root: they must reach the queue and data directories.
        run_ok(
            Command::new("chmod").arg("755").arg(dir.path()),
            "chmod the Postfix temp dir",
        );
        let root = dir.path();
        let config_dir = root.join("etc");
        fs::create_dir_all(&config_dir).expect("mkdir etc");
        // `postfix check` chdirs into the queue directory: it must exist (root-owned); `postfix
        // start` then creates its subdirectories, and data_directory, with the right owners.
        fs::create_dir_all(root.join("queue")).expect("mkdir queue");
        let port = free_port();
        let transport = routes
            .iter()
            .map(|(d, nexthop)| format!("{d}={nexthop}"))
            .collect::<Vec<_>>()
            .join(", ");
        let relay_domains = routes
            .iter()
            .map(|(d, _)| d.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let main_cf = format!(
            "compatibility_level = 3.6
config_directory = {config}
queue_directory = {root}/queue
data_directory = {root}/data
myhostname = postfix.initdesk.test
mydomain = initdesk.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
relay_domains = {relay}
mynetworks = 127.0.0.0/8
transport_maps = inline:{{ {transport} }}
alias_maps =
alias_database =
local_recipient_maps =
smtp_dns_support_level = disabled
smtp_tls_security_level = none
{smtpd_tls}
lmtp_tls_security_level = none
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 4s
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
biff = no
",
            config = config_dir.display(),
            root = root.display(),
            relay = relay_domains,
            smtpd_tls = match certs {
                Some(c) => format!(
                    "smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\nsmtpd_tls_received_header = yes\nsmtpd_tls_loglevel = 1",
                    c.join("server.pem").display(),
                    c.join("server.key").display()
                ),
                None => "smtpd_tls_security_level = none".into(),
            },
        );
        let smtps_port = certs.map(|_| free_port());
        let smtps_line = smtps_port.map_or(String::new(), |p| {
            format!(
                "127.0.0.1:{p} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt\n"
            )
        });
        // No chroot anywhere: the temp dir has no copies of /etc files.
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd
{smtps_line}pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
lmtp       unix  - - n -  - lmtp
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"
        );
        fs::write(config_dir.join("main.cf"), main_cf).expect("main.cf");
        fs::write(config_dir.join("master.cf"), master_cf).expect("master.cf");
        let mut pf = Postfix {
            dir,
            config_dir,
            port,
            smtps_port,
            running: false,
        };
        let check = Command::new(&postfix)
            .arg("-c")
            .arg(&pf.config_dir)
            .arg("check")
            .stdin(Stdio::null())
            .output()
            .expect("run postfix check");
        assert!(
            check.status.success(),
            "postfix check failed: {}{}\n{}",
            text(&check.stdout),
            text(&check.stderr),
            pf.log()
        );
        let out = Command::new(&postfix)
            .arg("-c")
            .arg(&pf.config_dir)
            .arg("start")
            .stdin(Stdio::null())
            .output()
            .expect("run postfix start");
        pf.running = true;
        assert!(
            out.status.success(),
            "postfix start failed: {}{}\n{}",
            text(&out.stdout),
            text(&out.stderr),
            pf.log()
        );
        let listening = wait_for(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(
            listening.is_some(),
            "the private Postfix does not listen on 127.0.0.1:{port}:\n{}",
            pf.log()
        );
        pf
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// The queue as `postqueue -j` lists it: one JSON object per message.
    fn queue(&self) -> Vec<Value> {
        let out = run_ok(
            Command::new(tool("postqueue"))
                .arg("-c")
                .arg(&self.config_dir)
                .arg("-j"),
            "postqueue -j",
        );
        text(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("postqueue -j: {e}: {l}")))
            .collect()
    }

    /// Asks Postfix to retry every deferred message now.
    fn flush(&self) {
        run_ok(
            Command::new(tool("postqueue"))
                .arg("-c")
                .arg(&self.config_dir)
                .arg("-f"),
            "postqueue -f",
        );
    }

    fn master_pid(&self) -> Option<u32> {
        fs::read_to_string(self.dir.path().join("queue/pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let pid = self.master_pid();
        let _ = Command::new(tool("postfix"))
            .arg("-c")
            .arg(&self.config_dir)
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // `postfix stop` only signals the master; wait (bounded) until it and its children
        // are gone before the temp dir is removed under them.
        if let Some(pid) = pid {
            let proc_dir = PathBuf::from(format!("/proc/{pid}"));
            let _ = wait_for(Duration::from_secs(10), || {
                (!proc_dir.exists()).then_some(())
            });
        }
    }
}

// --- clients ---------------------------------------------------------------------------

/// Submits one message to 127.0.0.1:`port` with Python's smtplib.
fn submit_with_smtplib(port: u16, from: &str, to: &[&str], subject: &str, body: &str) {
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
port, sender, rcpts, subject, body = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(","), sys.argv[4], sys.argv[5]
msg = EmailMessage()
msg["From"] = sender
msg["To"] = ", ".join(rcpts)
msg["Subject"] = subject
msg["Date"] = formatdate()
msg["Message-ID"] = make_msgid(domain="client.test")
msg.set_content(body)
with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as s:
    refused = s.send_message(msg, from_addr=sender, to_addrs=rcpts)
    if refused:
        sys.exit("refused: %r" % (refused,))
print("submitted")
"#;
    let out = run_ok(
        Command::new(tool("python3")).args([
            "-c",
            script,
            &port.to_string(),
            from,
            &to.join(","),
            subject,
            body,
        ]),
        "submitting with Python smtplib",
    );
    assert!(text(&out.stdout).contains("submitted"), "{out:?}");
}

/// Submits one message to 127.0.0.1:`port` with swaks.
fn submit_with_swaks(port: u16, from: &str, to: &[&str], subject: &str, body: &str) {
    let out = run_ok(
        Command::new(tool("swaks")).args([
            "--server",
            &format!("127.0.0.1:{port}"),
            "--helo",
            "client.test",
            "--from",
            from,
            "--to",
            &to.join(","),
            "--header",
            &format!("Subject: {subject}"),
            "--body",
            body,
            "--timeout",
            "30",
        ]),
        "submitting with swaks",
    );
    let transcript = text(&out.stdout);
    assert!(
        transcript.contains("<-  250 2.0.0 Ok: queued"),
        "Postfix did not queue the swaks message:\n{transcript}"
    );
}

/// One SMTP transaction straight to the gateway with smtplib; returns the replies to RCPT
/// and DATA as "RCPT <code> <text>" / "DATA <code> <text>" lines.
fn direct_attempt(port: u16, from: &str, to: &str, subject: &str) -> String {
    let script = r#"
import smtplib, sys
port, sender, rcpt, subject = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
msg = ("From: %s\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <direct-%d@client.test>\r\n\r\nstraight to the gateway\r\n" % (sender, rcpt, subject, port)).encode()
with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=120) as s:
    s.ehlo("client.test")
    code, text = s.mail(sender)
    print("MAIL", code, text.decode())
    code, text = s.rcpt(rcpt)
    print("RCPT", code, text.decode())
    if code == 250:
        try:
            code, text = s.data(msg)
        except smtplib.SMTPDataError as e:
            code, text = e.smtp_code, e.smtp_error
        print("DATA", code, text.decode())
"#;
    let out = run_ok(
        Command::new(tool("python3")).args(["-c", script, &port.to_string(), from, to, subject]),
        "an SMTP attempt straight to the gateway",
    );
    text(&out.stdout)
}

// --- the database ----------------------------------------------------------------------

/// A ticket as the tests look at it.
#[derive(Debug, Clone)]
struct Seen {
    subject: String,
    customer: String,
    inbox: String,
    messages: usize,
}

/// The gateway's database, opened by the test (a second client beside the gateway).
struct Db {
    rt: tokio::runtime::Runtime,
    store: Store,
}

impl Db {
    fn open(url: &str) -> Db {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let store = rt
            .block_on(store::open(url, 1))
            .unwrap_or_else(|e| panic!("opening the gateway's database {url}: {e}"));
        Db { rt, store }
    }

    /// Every ticket of the organization that owns `domain`.
    fn tickets(&self, domain: &str) -> Vec<Seen> {
        self.rt.block_on(async {
            let mut tx = self.store.begin_read().await.expect("begin");
            let org = orgs::org_for_domain(&mut tx, domain)
                .await
                .expect("org_for_domain")
                .unwrap_or_else(|| panic!("no organization for {domain}: the config declares it"));
            let inboxes = orgs::list_inboxes(&mut tx, org.id).await.expect("inboxes");
            let mut seen = Vec::new();
            for t in tickets::list_tickets(&mut tx, org.id)
                .await
                .expect("list_tickets")
            {
                let customer = tickets::customer_by_id(&mut tx, org.id, t.customer_id)
                    .await
                    .expect("customer")
                    .map(|c| c.email)
                    .unwrap_or_default();
                let messages = tickets::list_messages(&mut tx, org.id, t.id)
                    .await
                    .expect("messages")
                    .len();
                let inbox = inboxes
                    .iter()
                    .find(|i| i.id == t.inbox_id)
                    .map(|i| i.email_prefix.clone())
                    .unwrap_or_default();
                seen.push(Seen {
                    subject: t.subject,
                    customer,
                    inbox,
                    messages,
                });
            }
            tx.rollback().await.expect("rollback");
            seen
        })
    }

    /// Waits until every subject in `subjects` has a ticket at `domain`; returns them all.
    fn wait_for_subjects(
        &self,
        domain: &str,
        subjects: &[&str],
        gw: &Gateway,
        pf: &Postfix,
    ) -> Vec<Seen> {
        wait_for(DELIVERY_WAIT, || {
            let all = self.tickets(domain);
            subjects
                .iter()
                .all(|s| all.iter().any(|t| t.subject == *s))
                .then_some(all)
        })
        .unwrap_or_else(|| {
            panic!(
                "tickets {subjects:?} did not arrive at {domain} within {DELIVERY_WAIT:?}\n\
                 tickets: {:?}\nPostfix queue: {:?}\nPostfix log:\n{}\ngateway log:\n{}",
                self.tickets(domain),
                pf.queue(),
                tail(&pf.log(), 30),
                tail(&gw.log(), 30)
            )
        })
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.rt.block_on(self.store.close());
    }
}

/// Waits until Postfix's queue is empty.
fn wait_for_empty_queue(pf: &Postfix, gw: &Gateway) {
    let empty = wait_for(DELIVERY_WAIT, || pf.queue().is_empty().then_some(()));
    assert!(
        empty.is_some(),
        "Postfix still holds mail after {DELIVERY_WAIT:?}: {:?}\nPostfix log:\n{}\ngateway log:\n{}",
        pf.queue(),
        tail(&pf.log(), 30),
        tail(&gw.log(), 30)
    );
}

fn only<'a>(tickets: &'a [Seen], subject: &str) -> &'a Seen {
    let found: Vec<&Seen> = tickets.iter().filter(|t| t.subject == subject).collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one ticket {subject:?}: {tickets:?}"
    );
    found[0]
}

// --- tests -----------------------------------------------------------------------------

#[test]
fn postfix_delivers_over_smtp() {
    let gw = Gateway::start(None);
    let pf = Postfix::start(Next::Smtp(gw.smtp_port));
    submit_with_smtplib(
        pf.port,
        "alice@example.com",
        &["support@acme.test"],
        "Order 1001 never came",
        "Hello, my order has not arrived.",
    );
    submit_with_swaks(
        pf.port,
        "bob@example.org",
        &["sales@acme.test"],
        "Quote for 40 seats",
        "Please send a quote.",
    );
    let db = Db::open(&gw.db_url);
    let tickets = db.wait_for_subjects(
        "acme.test",
        &["Order 1001 never came", "Quote for 40 seats"],
        &gw,
        &pf,
    );
    let order = only(&tickets, "Order 1001 never came");
    assert_eq!(order.customer, "alice@example.com");
    assert_eq!(order.inbox, "support");
    assert_eq!(order.messages, 1);
    let quote = only(&tickets, "Quote for 40 seats");
    assert_eq!(quote.customer, "bob@example.org");
    assert_eq!(quote.inbox, "sales");
    assert_eq!(quote.messages, 1);
    assert_eq!(tickets.len(), 2, "{tickets:?}");
    wait_for_empty_queue(&pf, &gw);
    let log = pf.log();
    assert!(
        log.contains(&format!("relay=127.0.0.1[127.0.0.1]:{}", gw.smtp_port))
            && log.contains("status=sent (250 2.0.0 OK: created)"),
        "Postfix handed both messages to the gateway over SMTP:\n{log}"
    );
    // What an operator graphs: messages by outcome, replies by code, sessions, commit latency.
    let metrics = http_get(gw.http_port, "/metrics").expect("/metrics");
    for series in [
        "initdesk_messages_total{outcome=\"created\"} 2",
        "initdesk_smtp_replies_total{code=\"250\"}",
        "initdesk_smtp_sessions_total",
        "initdesk_smtp_sessions ",
        "initdesk_commit_seconds_count",
        "initdesk_commit_batch_messages_sum",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
}

#[test]
fn postfix_delivers_over_lmtp() {
    let gw = Gateway::start(None);
    let pf = Postfix::start(Next::Lmtp(gw.lmtp_port));
    // One message to two inboxes of Acme and one of Globex: one LMTP transaction, a reply per
    // recipient. The two Acme copies are the same mail reaching two inboxes of one
    // organization, stored once (SPEC 2.9); Globex gets its own ticket.
    let rcpts = ["support@acme.test", "sales@acme.test", "help@globex.test"];
    submit_with_smtplib(
        pf.port,
        "carol@example.net",
        &rcpts,
        "Invoice 77 is wrong",
        "The invoice lists the wrong address.",
    );
    submit_with_swaks(
        pf.port,
        "dave@example.net",
        &["sales@acme.test", "support@acme.test"],
        "Trial extension",
        "Could you extend our trial?",
    );
    let db = Db::open(&gw.db_url);
    let acme = db.wait_for_subjects(
        "acme.test",
        &["Invoice 77 is wrong", "Trial extension"],
        &gw,
        &pf,
    );
    let globex = db.wait_for_subjects("globex.test", &["Invoice 77 is wrong"], &gw, &pf);
    wait_for_empty_queue(&pf, &gw);

    let invoice = only(&acme, "Invoice 77 is wrong");
    assert_eq!(invoice.customer, "carol@example.net");
    assert!(
        ["support", "sales"].contains(&invoice.inbox.as_str()),
        "{invoice:?}"
    );
    assert_eq!(invoice.messages, 1, "stored once: {invoice:?}");
    let trial = only(&acme, "Trial extension");
    assert_eq!(trial.customer, "dave@example.net");
    assert_eq!(trial.messages, 1, "stored once: {trial:?}");
    assert_eq!(acme.len(), 2, "{acme:?}");
    let g = only(&globex, "Invoice 77 is wrong");
    assert_eq!(g.customer, "carol@example.net");
    assert_eq!(g.inbox, "help");
    assert_eq!(globex.len(), 1, "{globex:?}");

    // Each recipient got its own LMTP reply, and Postfix counts every one as delivered.
    let log = pf.log();
    let relay = format!("relay=127.0.0.1[127.0.0.1]:{}", gw.lmtp_port);
    for rcpt in rcpts {
        assert!(
            log.lines().any(|l| l.contains(&format!("to=<{rcpt}>"))
                && l.contains(&relay)
                && l.contains(&format!("status=sent (250 2.0.0 <{rcpt}> OK:"))),
            "no LMTP delivery line for {rcpt}:\n{log}"
        );
    }
}

/// LMTP on a Unix socket, the way an MTA on the same machine usually hands mail over
/// (`lmtp:unix:/path`): Postfix delivers through it, the socket gets the configured mode,
/// and a stopped gateway leaves no socket file behind.
#[test]
fn postfix_delivers_over_lmtp_on_a_unix_socket() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let sock_dir = tempfile::tempdir().expect("tempdir");
    // Postfix's lmtp client runs as the postfix user: it must reach the socket.
    run_ok(
        Command::new("chmod").arg("755").arg(sock_dir.path()),
        "chmod the socket directory",
    );
    let socket = sock_dir.path().join("lmtp.sock");
    // A socket file left by a killed gateway is replaced, not an error.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    let gw = Gateway::start_with(
        None,
        &[
            (
                "INITDESK_SMTP_LMTP_LISTEN",
                format!("unix:{}", socket.display()),
            ),
            // From the environment the mode arrives as a number; its digits are octal ones.
            ("INITDESK_SMTP_LMTP_SOCKET_MODE", "0666".into()),
        ],
    );
    let meta = fs::symlink_metadata(&socket).expect("the LMTP socket");
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    let nexthop = format!("lmtp:unix:{}", socket.display());
    let pf = Postfix::start_routes(
        &RELAY_DOMAINS
            .iter()
            .map(|d| (d.to_string(), nexthop.clone()))
            .collect::<Vec<_>>(),
    );
    let rcpts = ["support@acme.test", "help@globex.test"];
    submit_with_smtplib(
        pf.port,
        "erin@example.net",
        &rcpts,
        "Over the socket",
        "Handed over through a Unix socket.",
    );
    let db = Db::open(&gw.db_url);
    let acme = db.wait_for_subjects("acme.test", &["Over the socket"], &gw, &pf);
    db.wait_for_subjects("globex.test", &["Over the socket"], &gw, &pf);
    wait_for_empty_queue(&pf, &gw);
    assert_eq!(only(&acme, "Over the socket").customer, "erin@example.net");
    let log = pf.log();
    for rcpt in rcpts {
        assert!(
            log.lines().any(|l| l.contains(&format!("to=<{rcpt}>"))
                && l.contains(&format!("status=sent (250 2.0.0 <{rcpt}> OK:"))),
            "no LMTP delivery line for {rcpt}:\n{log}"
        );
    }
    assert!(
        gw.log().contains(&format!("unix:{}", socket.display())),
        "{}",
        gw.log()
    );
    drop(gw);
    assert!(!socket.exists(), "the socket file is removed on shutdown");
}

/// What makes the gateway's database fail, and undoes it.
pub(crate) trait Outage {
    fn break_db(&mut self);
    fn restore_db(&mut self);
    /// Whether the test can still read the database during the outage.
    fn readable(&self) -> bool;
}

/// SQLite: the database and WAL files made immutable (`chattr +i`), which
/// stops even root from writing them, including through descriptors already open.
pub(crate) struct ImmutableFiles {
    files: Vec<PathBuf>,
    set: bool,
}

impl ImmutableFiles {
    /// An outage of the SQLite database at `db`: the file and its log.
    pub(crate) fn of_database(db: &Path) -> ImmutableFiles {
        // Not the `-shm` index: SQLite maps it into memory and never syncs it, and a write to
        // a mapped page of an immutable file raises SIGBUS in the kernel's page fault (the
        // writer updates the index header whenever the log restarts after a checkpoint). A
        // disk that fails, fills or refuses writes stops the database and the log; those two
        // immutable make every commit fail as a real outage does.
        let files = ["", "-wal"]
            .iter()
            .map(|suffix| PathBuf::from(format!("{}{suffix}", db.display())))
            .filter(|p| p.exists())
            .collect();
        ImmutableFiles { files, set: false }
    }

    fn chattr(&self, flag: &str) -> Output {
        Command::new(tool("chattr"))
            .arg(flag)
            .args(&self.files)
            .stdin(Stdio::null())
            .output()
            .expect("run chattr")
    }
}

impl Outage for ImmutableFiles {
    fn break_db(&mut self) {
        assert!(!self.files.is_empty(), "no SQLite files to make unwritable");
        self.set = true;
        let out = self.chattr("+i");
        assert!(
            out.status.success(),
            "chattr +i {:?} failed (the test needs a file system with immutable files, such as ext4): {}",
            self.files,
            text(&out.stderr)
        );
    }

    fn restore_db(&mut self) {
        let out = self.chattr("-i");
        assert!(out.status.success(), "chattr -i: {}", text(&out.stderr));
        self.set = false;
    }

    fn readable(&self) -> bool {
        // The test's connection was opened before: reading needs no write to the files.
        true
    }
}

impl Drop for ImmutableFiles {
    fn drop(&mut self) {
        // Never leave immutable files behind: the temp dir could not be removed.
        if self.set {
            let _ = self.chattr("-i");
        }
    }
}

/// A throw-away PostgreSQL cluster of our own (never the shared server on 5432), stopped
/// and started by the test.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    running: bool,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        require_root();
        let bin = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
            .max_by_key(|b| {
                b.parent()
                    .and_then(|v| v.file_name())
                    .and_then(|v| v.to_str())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .unwrap_or_else(|| {
                panic!("no PostgreSQL server under /usr/lib/postgresql/*/bin: {INSTALL_HINT}")
            });
        let dir = tempfile::tempdir().expect("tempdir");
        run_ok(
            Command::new("chown").arg("postgres").arg(dir.path()),
            "chown the PostgreSQL temp dir to postgres",
        );
        let mut pg = PrivatePostgres {
            dir,
            bin,
            port: free_port(),
            running: false,
        };
        run_ok(
            pg.as_postgres("initdb").args([
                "-D",
                &pg.data().display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ]),
            "initdb of a private PostgreSQL cluster",
        );
        pg.up();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn as_postgres(&self, program: &str) -> Command {
        let mut c = Command::new(tool("runuser"));
        c.args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .current_dir(self.dir.path());
        c
    }

    fn up(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        self.running = true;
        run_ok(
            self.as_postgres("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.path().join("postgres.log"))
                .args(["-o", &options, "-w", "-t", "30", "start"]),
            "starting the private PostgreSQL",
        );
    }

    fn down(&mut self) {
        run_ok(
            self.as_postgres("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w", "-t", "30", "stop"]),
            "stopping the private PostgreSQL",
        );
        self.running = false;
    }
}

impl Outage for PrivatePostgres {
    fn break_db(&mut self) {
        self.down();
    }

    fn restore_db(&mut self) {
        self.up();
    }

    fn readable(&self) -> bool {
        // The server is down: there is nothing to read, and nothing can have been stored.
        false
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .as_postgres("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "-t", "10", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// How long after the database is back the held mail must have arrived. Postfix retries
/// every 2 to 4 s here and is flushed at once; a healthy gateway stores within a second.
const RECOVERY_WAIT: Duration = Duration::from_secs(15);

/// True when Postfix logged a deferral of mail to `rcpt` with the gateway's 451 4.3.0.
fn deferred_with_451(log: &str, rcpt: &str) -> bool {
    log.lines().any(|l| {
        l.contains(&format!("to=<{rcpt}>"))
            && l.contains("status=deferred")
            && l.contains("said: 451 4.3.0")
    })
}

/// Mail before, during and after a database outage: during it the gateway says
/// `451 4.3.0`, Postfix keeps the mail, and after recovery it all arrives, once.
fn keeps_mail_through_an_outage(gw: &Gateway, outage: &mut dyn Outage, db: &Db) {
    let pf = Postfix::start(Next::Smtp(gw.smtp_port));

    // Before: delivered at once.
    submit_with_smtplib(
        pf.port,
        "erin@example.com",
        &["support@acme.test"],
        "Before the outage",
        "first",
    );
    db.wait_for_subjects("acme.test", &["Before the outage"], gw, &pf);
    wait_for_empty_queue(&pf, gw);

    // During: the gateway must say 451 and Postfix must keep the mail.
    outage.break_db();
    let direct = std::thread::scope(|s| {
        // A client talking to the gateway directly, at the same time, sees the same
        // temporary failure.
        let direct = s.spawn(|| {
            direct_attempt(
                gw.smtp_port,
                "heidi@example.com",
                "support@acme.test",
                "Direct during the outage",
            )
        });
        submit_with_smtplib(
            pf.port,
            "frank@example.com",
            &["support@acme.test"],
            "During the outage (smtplib)",
            "second",
        );
        submit_with_swaks(
            pf.port,
            "grace@example.com",
            &["sales@acme.test"],
            "During the outage (swaks)",
            "third",
        );
        let deferred = wait_for(DELIVERY_WAIT, || {
            let log = pf.log();
            (deferred_with_451(&log, "support@acme.test")
                && deferred_with_451(&log, "sales@acme.test"))
            .then_some(())
        });
        assert!(
            deferred.is_some(),
            "Postfix should have deferred both messages with the gateway's 451 4.3.0: {:?}\n\
             Postfix log:\n{}\ngateway log:\n{}",
            pf.queue(),
            tail(&pf.log(), 30),
            tail(&gw.log(), 30)
        );
        direct.join().expect("direct attempt")
    });
    assert!(
        direct
            .lines()
            .any(|l| l.starts_with("RCPT 451 4.3.0") || l.starts_with("DATA 451 4.3.0")),
        "the gateway answers 451 4.3.0 while its database is down:\n{direct}"
    );
    assert!(
        !direct.lines().any(|l| l
            .split_whitespace()
            .nth(1)
            .is_some_and(|c| c.starts_with('5'))),
        "never a 5xx for a transient fault:\n{direct}"
    );
    let queue = pf.queue();
    assert_eq!(queue.len(), 2, "Postfix keeps both messages: {queue:?}");
    for rcpt in ["support@acme.test", "sales@acme.test"] {
        assert!(
            queue.iter().any(|m| m["recipients"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["address"] == rcpt))),
            "no queued message for {rcpt}: {queue:?}"
        );
    }
    if outage.readable() {
        let during = db.tickets("acme.test");
        assert_eq!(
            during.len(),
            1,
            "no ticket arrives during the outage: {during:?}"
        );
    }

    // After: the database is back; Postfix retries and everything arrives once.
    outage.restore_db();
    pf.flush();
    let subjects = [
        "Before the outage",
        "During the outage (smtplib)",
        "During the outage (swaks)",
    ];
    let arrived = wait_for(RECOVERY_WAIT, || {
        let all = db.tickets("acme.test");
        subjects
            .iter()
            .all(|s| all.iter().any(|t| t.subject == *s))
            .then_some(())
    });
    assert!(
        arrived.is_some(),
        "the held mail did not arrive within {RECOVERY_WAIT:?} after the database came back \
         (Postfix retries every 2-4 s and was flushed): the gateway does not recover\n\
         tickets: {:?}\nPostfix queue: {:?}\nPostfix log:\n{}\ngateway log:\n{}",
        db.tickets("acme.test"),
        pf.queue(),
        tail(&pf.log(), 12),
        tail(&gw.log(), 12)
    );
    wait_for_empty_queue(&pf, gw);
    let tickets = db.tickets("acme.test");
    for (subject, customer, inbox) in [
        ("Before the outage", "erin@example.com", "support"),
        (
            "During the outage (smtplib)",
            "frank@example.com",
            "support",
        ),
        ("During the outage (swaks)", "grace@example.com", "sales"),
    ] {
        let t = only(&tickets, subject);
        assert_eq!(t.customer, customer, "{t:?}");
        assert_eq!(t.inbox, inbox, "{t:?}");
        assert_eq!(t.messages, 1, "stored exactly once: {t:?}");
    }
    assert_eq!(
        tickets.len(),
        3,
        "nothing else (the direct attempt got 451): {tickets:?}"
    );
    let log = pf.log();
    for rcpt in ["support@acme.test", "sales@acme.test"] {
        assert!(
            log.lines().any(|l| l.contains(&format!("to=<{rcpt}>"))
                && l.contains("status=sent (250 2.0.0 OK: created)")),
            "Postfix delivered the mail to {rcpt} after recovery:\n{log}"
        );
    }
}

#[test]
fn postfix_keeps_mail_while_the_gateway_says_451_and_delivers_after_recovery_sqlite() {
    let gw = Gateway::start(None);
    // Opened before the files turn immutable: its connection keeps reading them.
    let db = Db::open(&gw.db_url);
    let mut outage = gw.sqlite_files();
    keeps_mail_through_an_outage(&gw, &mut outage, &db);
}

#[test]
fn postfix_keeps_mail_while_the_gateway_says_451_and_delivers_after_recovery_postgres() {
    let mut pg = PrivatePostgres::start();
    let gw = Gateway::start(Some(&pg.url()));
    let db = Db::open(&gw.db_url);
    keeps_mail_through_an_outage(&gw, &mut pg, &db);
}
