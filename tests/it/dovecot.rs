//! A private, real Dovecot IMAP server per test (the IMAP listener's counterpart of the
//! private Postfix instances in `postfix.rs`).
//!
//! [`Dovecot::start`] writes a temp dir with its own `dovecot.conf`, `base_dir`, `state_dir`,
//! log file, passwd-file of users and one Maildir home per user, and runs
//! `dovecot -F -c <dir>/dovecot.conf` as a child process (in its own process group) that
//! listens for plain IMAP on a free port on 127.0.0.1 only. Dropping the [`Dovecot`] stops it.
//! The test command (scripts/test.sh) installs Dovecot; a test that finds it missing fails,
//! it never skips.
//!
//! Users are virtual (any string such as `support@acme.test`); their mail is stored as
//! `nobody:nogroup` when the tests run as root (Dovecot refuses to run mail processes as
//! root; its own processes run as the Debian users `dovecot` and `dovenull`), and as the
//! current user otherwise. The folder hierarchy separator is `/`.
//!
//! The helpers that put mail in or read it out speak IMAP to the server (they never touch
//! the Maildir files), so Dovecot assigns every UID itself and IDLE sessions are notified
//! as they would be by any other client.

use std::fs;
use std::future::Future;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use async_imap::imap_proto::rfc4315::UidSetMember;
use async_imap::imap_proto::{self, Response, ResponseCode};
use async_imap::types::{Capability, Flag};
use async_imap::{Client, Session};
use futures_util::TryStreamExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// How long `start`/`restart` wait for the IMAP greeting.
const START_WAIT: Duration = Duration::from_secs(10);

/// How long `stop` waits for Dovecot to shut down after SIGTERM before it uses SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Limit for each exchange with the server (connect, login, one command).
const IO_WAIT: Duration = Duration::from_secs(60);

/// Messages per MULTIAPPEND command in `append_many`.
const APPEND_BATCH: usize = 500;

const INSTALL_HINT: &str =
    "the test command (scripts/test.sh) installs it: apt-get install dovecot-core dovecot-imapd";

/// An IMAP session of the helpers.
type Imap = Session<TcpStream>;

/// A private Dovecot instance: plain IMAP on `127.0.0.1:port`, everything else in a temp
/// dir that lives as long as this value. Dropping it stops the server.
pub struct Dovecot {
    /// The IMAP port on 127.0.0.1 (LOGIN and AUTHENTICATE PLAIN/LOGIN/XOAUTH2 work; the
    /// XOAUTH2 bearer token is checked as the user's password; STARTTLS with `start_tls`).
    pub port: u16,
    /// With `start_tls`: the implicit-TLS (imaps) port, and the CA that signed the server's
    /// certificate (for 127.0.0.1 and localhost).
    pub tls: Option<(u16, PathBuf)>,
    /// Dovecot's LMTP port on 127.0.0.1: mail for a user handed here lands in their INBOX
    /// (what a mail server in front of the customers' mailboxes does).
    pub lmtp_port: u16,
    dir: tempfile::TempDir,
    /// The `dovecot -F` master process while the server runs.
    child: Option<Child>,
}

impl Dovecot {
    /// Starts a private Dovecot serving `users` (address, password) on a free port of
    /// 127.0.0.1 and waits until it greets; panics with its log when it does not.
    pub async fn start(users: &[(&str, &str)]) -> Dovecot {
        Self::start_with(users, false).await
    }

    /// Like `start`, with TLS: STARTTLS on `port` and implicit TLS on a second port, under a
    /// certificate from a private CA made with `openssl` for this instance.
    pub async fn start_tls(users: &[(&str, &str)]) -> Dovecot {
        Self::start_with(users, true).await
    }

    async fn start_with(users: &[(&str, &str)], tls: bool) -> Dovecot {
        let dir = tempfile::Builder::new()
            .prefix("dovecot-test-")
            .tempdir()
            .expect("create a temp dir for Dovecot");
        // The temp dir is 0700; Dovecot's unprivileged processes (auth as `dovecot`, mail
        // processes as `nobody`) must get through it to the passwd-file and the homes.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod 0755 the Dovecot temp dir");
        let owner = Owners::detect(dir.path());
        for sub in ["run", "state", "home"] {
            fs::create_dir(dir.path().join(sub)).expect("create a Dovecot dir");
        }
        let mut lines = String::new();
        for &(user, password) in users {
            lines.push_str(&passwd_line(user, password));
            let home = dir.path().join("home").join(user);
            fs::create_dir(&home).unwrap_or_else(|e| panic!("create home {home:?}: {e}"));
            fs::set_permissions(&home, fs::Permissions::from_mode(0o700))
                .expect("chmod the mail home");
            std::os::unix::fs::chown(&home, Some(owner.mail_uid), Some(owner.mail_gid))
                .unwrap_or_else(|e| panic!("chown the mail home {home:?}: {e}"));
        }
        write_readable(&dir.path().join("users"), lines.as_bytes());
        let port = free_port();
        let tls = tls.then(|| (free_port(), make_certificates(dir.path())));
        let mut config = config(dir.path(), port, &owner);
        let lmtp_port = free_port();
        config = config.replace("protocols = imap\n", "protocols = imap lmtp\n");
        config.push_str(&format!(
            "service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {lmtp_port}\n  }}\n}}\n"
        ));
        if let Some((tls_port, _)) = &tls {
            let d = dir.path().display();
            config = config
                .replace("ssl = no\n", &format!("ssl = yes\nssl_cert = <{d}/server.pem\nssl_key = <{d}/server.key\n"))
                .replace(
                    "  inet_listener imaps {\n    port = 0\n  }",
                    &format!("  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {tls_port}\n    ssl = yes\n  }}"),
                );
        }
        write_readable(&dir.path().join("dovecot.conf"), config.as_bytes());
        let mut dovecot = Dovecot {
            port,
            tls,
            lmtp_port,
            dir,
            child: None,
        };
        dovecot.restart().await;
        dovecot
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn conf(&self) -> PathBuf {
        self.path("dovecot.conf")
    }

    /// The temp dir holding config, users, homes, state and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Dovecot's log file (plus anything the master wrote to stderr before it had one).
    pub fn log(&self) -> String {
        let mut out = fs::read_to_string(self.path("dovecot.log")).unwrap_or_default();
        let stderr = fs::read_to_string(self.path("stderr.log")).unwrap_or_default();
        if !stderr.trim().is_empty() {
            out.push_str("--- stderr of dovecot -F ---\n");
            out.push_str(&stderr);
        }
        out
    }

    /// Stops the server the way an administrator does (SIGTERM to every Dovecot process, so
    /// IMAP sessions get `* BYE Server shutting down.` and are closed), SIGKILL after 10 s;
    /// returns once the port refuses connections. Config, users and mail stay.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The master runs in its own process group (see `restart`), which its children
        // share: signalling the group reaches the IMAP processes serving open sessions
        // too. (SIGTERM to the master alone leaves those running until their client quits.)
        signal_group(child.id(), "TERM");
        let deadline = Instant::now() + STOP_WAIT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    signal_group(child.id(), "KILL");
                    let _ = child.wait();
                    break;
                }
            }
        }
        // Stragglers of the group (a login process, say) still hold the listening socket.
        signal_group(child.id(), "KILL");
        let deadline = Instant::now() + STOP_WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            if Instant::now() > deadline {
                // No second panic while a failing test drops its Dovecot.
                assert!(
                    std::thread::panicking(),
                    "Dovecot still accepts connections on port {} after it was stopped",
                    self.port
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port with the same config, users and mail (after
    /// `stop`; a running server is stopped first) and waits until it greets.
    pub async fn restart(&mut self) {
        self.stop();
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("stderr.log"))
            .expect("open stderr.log of Dovecot");
        let child = Command::new(program("dovecot"))
            .arg("-F")
            .arg("-c")
            .arg(self.conf())
            .current_dir(self.dir.path())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("dup stderr.log"))
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run dovecot -F ({INSTALL_HINT}): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "dovecot exited ({status}) instead of serving port {}; its log:\n{}",
                    self.port,
                    self.log()
                );
            }
            if greets(self.port).await {
                return;
            }
            if Instant::now() > deadline {
                let log = self.log();
                self.stop();
                panic!(
                    "Dovecot does not greet on 127.0.0.1:{} after {START_WAIT:?}; its log:\n{log}",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A logged-in IMAP session of `user`; panics with the server log when that fails.
    pub async fn login(&self, user: &str, password: &str) -> Imap {
        let port = self.port;
        self.io(&format!("log in as {user}"), async move {
            let stream = TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| format!("connect to 127.0.0.1:{port}: {e}"))?;
            let mut client = Client::new(stream);
            client
                .read_response()
                .await
                .map_err(|e| format!("read the greeting: {e}"))?
                .ok_or("the server closed the connection before its greeting")?;
            client
                .login(user, password)
                .await
                .map_err(|(e, _)| format!("LOGIN: {e}"))
        })
        .await
    }

    /// Whether `user` can log in with `password` (a refusal takes Dovecot's 2 s auth delay).
    pub async fn login_ok(&self, user: &str, password: &str) -> bool {
        let port = self.port;
        let attempt = async move {
            let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            let mut client = Client::new(stream);
            client.read_response().await.ok()??;
            let mut session = client.login(user, password).await.ok()?;
            session.logout().await.ok()
        };
        tokio::time::timeout(IO_WAIT, attempt)
            .await
            .expect("LOGIN neither succeeded nor failed within 60 s")
            .is_some()
    }

    /// The capabilities Dovecot announces to `user` after login (`IMAP4rev1`, `IDLE`,
    /// `MOVE`, `UIDPLUS`, ...; `AUTH=` ones come only before login), sorted.
    pub async fn capabilities(&self, user: &str, password: &str) -> Vec<String> {
        let mut imap = self.login(user, password).await;
        let caps = self
            .io("CAPABILITY", async {
                imap.capabilities().await.map_err(|e| e.to_string())
            })
            .await;
        let mut out: Vec<String> = caps
            .iter()
            .map(|c| match c {
                Capability::Imap4rev1 => "IMAP4rev1".to_string(),
                Capability::Auth(m) => format!("AUTH={m}"),
                Capability::Atom(a) => a.clone(),
            })
            .collect();
        out.sort();
        self.logout(imap).await;
        out
    }

    /// Appends one message to `folder` of `user` and returns the UID Dovecot gave it.
    pub async fn append(&self, user: &str, password: &str, folder: &str, raw: &[u8]) -> u32 {
        self.append_with_flags(user, password, folder, &[], raw)
            .await
    }

    /// Appends one message with `flags` (such as `"\\Seen"`) and returns its UID.
    pub async fn append_with_flags(
        &self,
        user: &str,
        password: &str,
        folder: &str,
        flags: &[&str],
        raw: &[u8],
    ) -> u32 {
        let mut imap = self.login(user, password).await;
        let uids = self
            .append_batch(&mut imap, "H1", folder, flags, &[raw])
            .await;
        self.logout(imap).await;
        uids[0]
    }

    /// Appends `messages` to `folder` over one connection, 500 per MULTIAPPEND command with
    /// LITERAL+ (no round trip per message), and returns their UIDs in order. Dovecot stores
    /// them as it stores any APPEND, so UIDs, `dovecot-uidlist` and indexes are its own.
    pub async fn append_many(
        &self,
        user: &str,
        password: &str,
        folder: &str,
        messages: impl Iterator<Item = Vec<u8>>,
    ) -> Vec<u32> {
        let mut imap = self.login(user, password).await;
        let mut uids = Vec::new();
        let mut batch: Vec<Vec<u8>> = Vec::with_capacity(APPEND_BATCH);
        let mut messages = messages.peekable();
        let mut n = 0;
        while messages.peek().is_some() {
            batch.clear();
            batch.extend(messages.by_ref().take(APPEND_BATCH));
            n += 1;
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            let got = self
                .append_batch(&mut imap, &format!("H{n}"), folder, &[], &refs)
                .await;
            uids.extend(got);
        }
        self.logout(imap).await;
        uids
    }

    /// One APPEND (MULTIAPPEND when `messages` has more than one) under `tag`; every message
    /// gets `flags`. Returns the UIDs of the APPENDUID response code (RFC 4315).
    async fn append_batch(
        &self,
        imap: &mut Imap,
        tag: &str,
        folder: &str,
        flags: &[&str],
        messages: &[&[u8]],
    ) -> Vec<u32> {
        // Written to the socket directly: async-imap's `append` sends one message per command
        // and waits for the continuation; LITERAL+ ({n+}) needs neither.
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!(" ({})", flags.join(" "))
        };
        let mut command = format!("{tag} APPEND {}", quote(folder)).into_bytes();
        for raw in messages {
            command.extend_from_slice(format!("{flags} {{{}+}}\r\n", raw.len()).as_bytes());
            command.extend_from_slice(raw);
        }
        command.extend_from_slice(b"\r\n");
        let what = format!("APPEND of {} message(s) to {folder}", messages.len());
        let uids = self
            .io(&what, async {
                let stream = imap.get_mut();
                stream
                    .write_all(&command)
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                stream.flush().await.map_err(|e| format!("send: {e}"))?;
                loop {
                    let response = imap
                        .read_response()
                        .await
                        .map_err(|e| format!("read: {e}"))?
                        .ok_or("the server closed the connection")?;
                    if let Response::Done {
                        tag: done,
                        status,
                        outcome,
                    } = response.parsed()
                    {
                        if done.0 != tag {
                            continue;
                        }
                        if *status != imap_proto::Status::Ok {
                            return Err(format!("{status:?} {outcome:?}"));
                        }
                        let Some(ResponseCode::AppendUid(_, set)) = &outcome.code else {
                            return Err(format!("OK without APPENDUID: {outcome:?}"));
                        };
                        return Ok(uid_set(set));
                    }
                }
            })
            .await;
        assert_eq!(
            uids.len(),
            messages.len(),
            "APPENDUID of {what} names {} UIDs",
            uids.len()
        );
        uids
    }

    /// The UIDs in `folder` with their flags (`"\\Seen"`, `"\\Flagged"`, keywords as they
    /// are; sorted), in UID order. `\Recent` is left out: it depends on which session saw a message
    /// first. The folder is opened read-only (EXAMINE), so nothing changes.
    pub async fn messages(
        &self,
        user: &str,
        password: &str,
        folder: &str,
    ) -> Vec<(u32, Vec<String>)> {
        let mut imap = self.login(user, password).await;
        let mut out: Vec<(u32, Vec<String>)> = self
            .io(&format!("list the messages of {folder}"), async {
                let mailbox = imap
                    .examine(folder)
                    .await
                    .map_err(|e| format!("EXAMINE: {e}"))?;
                if mailbox.exists == 0 {
                    return Ok(Vec::new());
                }
                let fetches: Vec<_> = imap
                    .uid_fetch("1:*", "FLAGS")
                    .await
                    .map_err(|e| format!("UID FETCH: {e}"))?
                    .try_collect()
                    .await
                    .map_err(|e| format!("UID FETCH: {e}"))?;
                fetches
                    .iter()
                    .map(|f| {
                        let uid = f.uid.ok_or("a FETCH response without UID")?;
                        let mut flags: Vec<String> =
                            f.flags().filter_map(|f| flag_name(&f)).collect();
                        flags.sort();
                        Ok((uid, flags))
                    })
                    .collect::<Result<Vec<_>, String>>()
            })
            .await;
        out.sort_by_key(|(uid, _)| *uid);
        self.logout(imap).await;
        out
    }

    /// UIDVALIDITY of `folder` as SELECT/EXAMINE reports it.
    pub async fn uid_validity(&self, user: &str, password: &str, folder: &str) -> u32 {
        let mut imap = self.login(user, password).await;
        let mailbox = self
            .io(&format!("EXAMINE {folder}"), async {
                imap.examine(folder).await.map_err(|e| e.to_string())
            })
            .await;
        self.logout(imap).await;
        mailbox
            .uid_validity
            .unwrap_or_else(|| panic!("EXAMINE {folder} reported no UIDVALIDITY"))
    }

    /// Creates `folder` (`/` separates levels: `Support/Done`).
    pub async fn create_folder(&self, user: &str, password: &str, folder: &str) {
        let mut imap = self.login(user, password).await;
        self.io(&format!("CREATE {folder}"), async {
            imap.create(folder).await.map_err(|e| e.to_string())
        })
        .await;
        self.logout(imap).await;
    }

    /// Takes `flag` off every message in `folder` (as a person marking mail unread would).
    pub async fn remove_flag(&self, user: &str, password: &str, folder: &str, flag: &str) {
        use futures_util::TryStreamExt as _;
        let mut imap = self.login(user, password).await;
        self.io(&format!("SELECT {folder}"), async {
            imap.select(folder)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await;
        let command = format!("-FLAGS.SILENT ({flag})");
        self.io(&format!("UID STORE 1:* {command}"), async {
            let stream = imap
                .uid_store("1:*", &command)
                .await
                .map_err(|e| e.to_string())?;
            stream
                .try_collect::<Vec<_>>()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await;
        self.logout(imap).await;
    }

    /// Gives `folder` a new UIDVALIDITY (the old one + 1) with `doveadm mailbox update
    /// --uid-validity`; its messages keep their UIDs (and flags), UIDNEXT stays. The server
    /// must be running (doveadm asks its auth service for the user). A session that has the
    /// folder selected is thrown out at its next command: `* BYE IMAP session state is
    /// inconsistent, please relogin.` (Dovecot 2.3.19; a session in IDLE hears nothing, and
    /// its DONE still gets OK; the BYE comes with the command after that). New sessions
    /// see the new UIDVALIDITY.
    pub fn change_uidvalidity(&self, user: &str, folder: &str) {
        let old = self.doveadm_uid_validity(user, folder);
        let new = old.checked_add(1).unwrap_or(1);
        self.doveadm(&[
            "mailbox",
            "update",
            "--uid-validity",
            &new.to_string(),
            "-u",
            user,
            folder,
        ]);
        assert_eq!(
            self.doveadm_uid_validity(user, folder),
            new,
            "doveadm mailbox update --uid-validity did not take"
        );
    }

    /// Like a server whose mail was restored from elsewhere: `folder` gets a new UIDVALIDITY
    /// and every message in it a new, higher UID (they move out to a scratch folder and back,
    /// keeping content and flags). The server must be running.
    pub fn renumber(&self, user: &str, folder: &str) {
        let scratch = "initdesk-renumber-scratch";
        self.doveadm(&["mailbox", "create", "-u", user, scratch]);
        self.doveadm(&["move", "-u", user, scratch, "mailbox", folder, "all"]);
        self.change_uidvalidity(user, folder);
        self.doveadm(&["move", "-u", user, folder, "mailbox", scratch, "all"]);
        self.doveadm(&["mailbox", "delete", "-u", user, scratch]);
    }

    fn doveadm_uid_validity(&self, user: &str, folder: &str) -> u32 {
        let out = self.doveadm(&[
            "-f",
            "flow",
            "mailbox",
            "status",
            "-u",
            user,
            "uidvalidity",
            folder,
        ]);
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix("uidvalidity="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no uidvalidity in doveadm mailbox status output: {out:?}"))
    }

    /// Runs `doveadm -c <our config> args...` and returns its stdout; panics when it fails.
    fn doveadm(&self, args: &[&str]) -> String {
        assert!(
            self.is_running(),
            "doveadm {} needs the Dovecot running (it asks its auth service for the user); \
             restart() it first",
            args.join(" ")
        );
        let mut cmd = Command::new(program("doveadm"));
        cmd.arg("-c")
            .arg(self.conf())
            .args(args)
            .stdin(Stdio::null());
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run doveadm ({INSTALL_HINT}): {e}"));
        assert!(
            out.status.success(),
            "doveadm {} failed ({}):\nstdout: {}\nstderr: {}\nDovecot log:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sets the password of `user` (which `start` created) in the passwd-file. Dovecot
    /// rereads the file when its mtime or size changes, but checks at most once a second;
    /// so this waits until a second has passed since the change, after which the next
    /// LOGIN is checked against the new password.
    pub fn set_password(&self, user: &str, new_password: &str) {
        let users = self.path("users");
        let old = fs::read_to_string(&users).expect("read the passwd-file");
        let prefix = format!("{user}:");
        assert!(
            old.lines().any(|l| l.starts_with(&prefix)),
            "set_password: {user} is not a user of this Dovecot"
        );
        let new: String = old
            .lines()
            .map(|l| {
                if l.starts_with(&prefix) {
                    passwd_line(user, new_password)
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let old_mtime = fs::metadata(&users)
            .and_then(|m| m.modified())
            .expect("mtime of the passwd-file");
        let tmp = self.path("users.new");
        write_readable(&tmp, new.as_bytes());
        // A different mtime even when the size is the same and the clock has not ticked.
        let mtime = SystemTime::now().max(old_mtime + Duration::from_secs(1));
        fs::File::options()
            .write(true)
            .open(&tmp)
            .and_then(|f| f.set_modified(mtime))
            .expect("set the mtime of the passwd-file");
        fs::rename(&tmp, &users).expect("replace the passwd-file");
        std::thread::sleep(Duration::from_millis(1100));
    }

    async fn logout(&self, mut imap: Imap) {
        self.io("LOGOUT", async {
            imap.logout().await.map_err(|e| e.to_string())
        })
        .await;
    }

    /// Runs one exchange with the server, bounded by `IO_WAIT`; panics with `what`, the
    /// error and the server's log when it fails.
    async fn io<T>(&self, what: &str, fut: impl Future<Output = Result<T, String>>) -> T {
        match tokio::time::timeout(IO_WAIT, fut).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!(
                "IMAP {what} on 127.0.0.1:{} failed: {e}\nDovecot log:\n{}",
                self.port,
                tail(&self.log(), 40)
            ),
            Err(_) => panic!(
                "IMAP {what} on 127.0.0.1:{} took over {IO_WAIT:?}\nDovecot log:\n{}",
                self.port,
                tail(&self.log(), 40)
            ),
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

// --- helpers ---------------------------------------------------------------------------

/// Who the Dovecot processes and the mail files belong to.
struct Owners {
    internal_user: String,
    internal_group: String,
    login_user: String,
    mail_uid: u32,
    mail_gid: u32,
    root: bool,
}

impl Owners {
    /// Root: Debian's `dovecot`/`dovenull` users run Dovecot's processes and mail belongs to
    /// `nobody:nogroup` (Dovecot refuses mail processes as root). Anyone else: the current
    /// user for all of them (a "rootless" Dovecot).
    fn detect(dir: &Path) -> Owners {
        // The owner of a dir we just made is our effective uid/gid.
        let meta = fs::metadata(dir).expect("stat the temp dir");
        if meta.uid() == 0 {
            let mail_uid =
                id_of("/etc/passwd", "nobody", 2).expect("user nobody is missing from /etc/passwd");
            let mail_gid = id_of("/etc/group", "nogroup", 2)
                .or_else(|| id_of("/etc/passwd", "nobody", 3))
                .expect("group of nobody");
            for user in ["dovecot", "dovenull"] {
                assert!(
                    id_of("/etc/passwd", user, 2).is_some(),
                    "user {user} is missing ({INSTALL_HINT})"
                );
            }
            Owners {
                internal_user: "dovecot".into(),
                internal_group: "dovecot".into(),
                login_user: "dovenull".into(),
                mail_uid,
                mail_gid,
                root: true,
            }
        } else {
            let name = |flag: &str| {
                let out = Command::new("id").arg(flag).output().expect("run id");
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            };
            let (user, group) = (name("-un"), name("-gn"));
            Owners {
                internal_user: user.clone(),
                internal_group: group,
                login_user: user,
                mail_uid: meta.uid(),
                mail_gid: meta.gid(),
                root: false,
            }
        }
    }
}

/// Field `field` (0-based) of the line of `name` in a passwd/group style file.
fn id_of(file: &str, name: &str, field: usize) -> Option<u32> {
    fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(':').collect();
        (fields.first() == Some(&name))
            .then(|| fields.get(field)?.parse().ok())
            .flatten()
    })
}

/// The dovecot.conf of a private instance (Dovecot 2.3 syntax).
fn config(dir: &Path, port: u16, owner: &Owners) -> String {
    let dir = dir.display();
    let Owners {
        internal_user,
        internal_group,
        login_user,
        mail_uid,
        mail_gid,
        ..
    } = owner;
    // Rootless: nobody may chroot, so the services that do by default must not.
    let no_chroot = if owner.root {
        ""
    } else {
        "service anvil {\n  chroot =\n}\nservice ipc {\n  chroot =\n}\n\
         service imap-urlauth-login {\n  chroot =\n}\n"
    };
    let login_chroot = if owner.root { "" } else { "  chroot =\n" };
    format!(
        r#"# A private Dovecot for one test, written by tests/it/dovecot.rs.
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
listen = 127.0.0.1
protocols = imap
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2
auth_verbose = yes
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
mail_plugins =
# Test data: no fsync, which makes big backlogs quick to append.
mail_fsync = never

namespace inbox {{
  inbox = yes
  separator = /
}}

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/users
}}

userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid} home={dir}/home/%u
}}

protocol imap {{
  # The gateway, the test's helpers and its IDLE sessions all connect from 127.0.0.1.
  mail_max_userip_connections = 100
}}

service imap-login {{
{login_chroot}  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
{no_chroot}"#
    )
}

/// A private CA and a server certificate it signed for 127.0.0.1 and localhost, in `dir`
/// (`ca.pem`, `server.pem`, `server.key`); returns the CA's path.
pub(crate) fn make_certificates(dir: &Path) -> PathBuf {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install openssl): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    // Dovecot reads the key as root before dropping privileges; keep it private anyway.
    fs::set_permissions(dir.join("server.key"), fs::Permissions::from_mode(0o600))
        .expect("chmod server.key");
    dir.join("ca.pem")
}

/// The passwd-file line of a user.
fn passwd_line(user: &str, password: &str) -> String {
    for (what, s) in [("user", user), ("password", password)] {
        let bad = if what == "user" { "/:\r\n" } else { ":\r\n" };
        assert!(
            !s.is_empty() && !s.contains(|c| bad.contains(c)),
            "a Dovecot test {what} must be non-empty, without any of {bad:?}: {s:?}"
        );
    }
    format!("{user}:{{PLAIN}}{password}::::::\n")
}

/// Writes `path` with mode 0644 (Dovecot's auth process, user `dovecot`, reads the users).
fn write_readable(path: &Path, contents: &[u8]) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("chmod {path:?}: {e}"));
}

/// A free port on 127.0.0.1 (bound then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A program from PATH or the sbin directories (`dovecot` lives in /usr/sbin).
fn program(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: {INSTALL_HINT}"))
}

/// Sends SIG`signal` to the process group `pgid` (no error if it is gone).
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("bash")
        .args([
            "-c",
            "kill -s \"$1\" -- \"-$2\" 2>/dev/null",
            "kill",
            signal,
        ])
        .arg(pgid.to_string())
        .stdin(Stdio::null())
        .status();
}

/// Whether 127.0.0.1:`port` answers with an IMAP greeting within a second.
async fn greets(port: u16) -> bool {
    let attempt = async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await.ok()?;
        Some(line.starts_with("* OK"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

/// An IMAP quoted string.
fn quote(s: &str) -> String {
    assert!(
        s.is_ascii() && !s.contains(['\r', '\n']),
        "folder names of the Dovecot helpers are ASCII on one line: {s:?}"
    );
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn uid_set(set: &[UidSetMember]) -> Vec<u32> {
    set.iter()
        .flat_map(|m| match m {
            UidSetMember::Uid(u) => *u..=*u,
            UidSetMember::UidRange(r) => r.clone(),
        })
        .collect()
}

fn flag_name(flag: &Flag<'_>) -> Option<String> {
    Some(
        match flag {
            Flag::Seen => "\\Seen",
            Flag::Answered => "\\Answered",
            Flag::Flagged => "\\Flagged",
            Flag::Deleted => "\\Deleted",
            Flag::Draft => "\\Draft",
            Flag::Recent => return None,
            Flag::MayCreate => "\\*",
            Flag::Custom(s) => s,
        }
        .to_string(),
    )
}

/// The last `n` lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// --- self-tests of the harness -----------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "support@acme.test";
    const PASS: &str = "s3cret";

    fn message(n: usize) -> Vec<u8> {
        format!(
            "From: Customer {n} <customer{n}@example.test>\r\n\
             To: support@acme.test\r\n\
             Subject: Help request {n}\r\n\
             Message-ID: <m{n}@example.test>\r\n\
             Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n\
             \r\n\
             Please help, number {n}.\r\n"
        )
        .into_bytes()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_and_lists_messages_with_uids_and_flags() {
        let dovecot = Dovecot::start(&[(USER, PASS), ("sales@acme.test", "other")]).await;
        let first = dovecot.append(USER, PASS, "INBOX", &message(1)).await;
        let second = dovecot
            .append_with_flags(USER, PASS, "INBOX", &["\\Seen", "\\Flagged"], &message(2))
            .await;
        assert_eq!((first, second), (1, 2));
        // Dovecot keeps the mail in the user's Maildir in the temp dir.
        let maildir = dovecot.dir().join("home").join(USER).join("Maildir");
        assert!(maildir.join("cur").is_dir(), "no Maildir at {maildir:?}");
        assert_eq!(
            dovecot.messages(USER, PASS, "INBOX").await,
            vec![
                (1, vec![]),
                (2, vec!["\\Flagged".to_string(), "\\Seen".to_string()])
            ]
        );
        // Listing is read-only and repeatable; the other user's INBOX is separate.
        assert_eq!(dovecot.messages(USER, PASS, "INBOX").await.len(), 2);
        assert!(
            dovecot
                .messages("sales@acme.test", "other", "INBOX")
                .await
                .is_empty()
        );

        dovecot.create_folder(USER, PASS, "Support/Done").await;
        let uid = dovecot
            .append(USER, PASS, "Support/Done", &message(3))
            .await;
        assert_eq!(uid, 1);
        assert_eq!(
            dovecot.messages(USER, PASS, "Support/Done").await,
            vec![(1, vec![])]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn advertises_idle_move_and_uidplus() {
        let dovecot = Dovecot::start(&[(USER, PASS)]).await;
        let caps = dovecot.capabilities(USER, PASS).await;
        for cap in [
            "IMAP4rev1",
            "IDLE",
            "MOVE",
            "UIDPLUS",
            "LITERAL+",
            "MULTIAPPEND",
        ] {
            assert!(caps.iter().any(|c| c == cap), "{cap} missing from {caps:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_session_hears_of_an_append() {
        use async_imap::extensions::idle::IdleResponse;

        let dovecot = Dovecot::start(&[(USER, PASS)]).await;
        let mut session = dovecot.login(USER, PASS).await;
        session.select("INBOX").await.expect("SELECT INBOX");
        let mut idle = session.idle();
        idle.init().await.expect("IDLE");
        let (wait, _stop) = idle.wait_with_timeout(Duration::from_secs(20));
        let started = Instant::now();
        let raw = message(1);
        let (heard, _) = tokio::join!(wait, dovecot.append(USER, PASS, "INBOX", &raw));
        assert!(
            matches!(heard, Ok(IdleResponse::NewData(_))),
            "IDLE ended with {heard:?}"
        );
        println!("IDLE heard of the append after {:?}", started.elapsed());
        let mut session = idle.done().await.expect("DONE");
        session.logout().await.expect("LOGOUT");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_and_restart_keep_the_mail_and_drop_sessions() {
        let mut dovecot = Dovecot::start(&[(USER, PASS)]).await;
        let port = dovecot.port;
        dovecot.append(USER, PASS, "INBOX", &message(1)).await;
        dovecot.append(USER, PASS, "INBOX", &message(2)).await;
        let mut session = dovecot.login(USER, PASS).await;
        session.select("INBOX").await.expect("SELECT INBOX");

        let started = Instant::now();
        dovecot.stop();
        println!("stop took {:?}", started.elapsed());
        assert!(!dovecot.is_running());
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        // The open session learns that the server is gone.
        assert!(
            session.noop().await.is_err(),
            "NOOP succeeded on a stopped server"
        );

        let started = Instant::now();
        dovecot.restart().await;
        println!("restart took {:?}", started.elapsed());
        assert_eq!(dovecot.port, port);
        assert_eq!(
            dovecot.messages(USER, PASS, "INBOX").await,
            vec![(1, vec![]), (2, vec![])]
        );
        assert_eq!(dovecot.append(USER, PASS, "INBOX", &message(3)).await, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn change_uidvalidity_keeps_uids_and_renumber_changes_them() {
        let dovecot = Dovecot::start(&[(USER, PASS)]).await;
        dovecot.append(USER, PASS, "INBOX", &message(1)).await;
        dovecot
            .append_with_flags(USER, PASS, "INBOX", &["\\Seen"], &message(2))
            .await;
        let before = dovecot.uid_validity(USER, PASS, "INBOX").await;

        dovecot.change_uidvalidity(USER, "INBOX");
        let after = dovecot.uid_validity(USER, PASS, "INBOX").await;
        assert_ne!(before, after);
        let listed = dovecot.messages(USER, PASS, "INBOX").await;
        assert_eq!(listed, vec![(1, vec![]), (2, vec!["\\Seen".to_string()])]);

        dovecot.renumber(USER, "INBOX");
        let renumbered = dovecot.uid_validity(USER, PASS, "INBOX").await;
        assert_ne!(renumbered, after);
        assert_eq!(
            dovecot.messages(USER, PASS, "INBOX").await,
            vec![(3, vec![]), (4, vec!["\\Seen".to_string()])]
        );
        println!("UIDVALIDITY {before} -> {after} (UIDs kept) -> {renumbered} (UIDs 3, 4)");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn set_password_takes_effect_at_the_next_login() {
        let dovecot = Dovecot::start(&[(USER, PASS), ("sales@acme.test", "other")]).await;
        assert!(dovecot.login_ok(USER, PASS).await);
        dovecot.set_password(USER, "n3w");
        assert!(dovecot.login_ok(USER, "n3w").await);
        assert!(!dovecot.login_ok(USER, PASS).await);
        assert!(dovecot.login_ok("sales@acme.test", "other").await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn append_many_stores_a_backlog() {
        const N: usize = 2_000;
        let dovecot = Dovecot::start(&[(USER, PASS)]).await;
        let started = Instant::now();
        let uids = dovecot
            .append_many(USER, PASS, "INBOX", (1..=N).map(message))
            .await;
        let took = started.elapsed();
        println!("append_many of {N} messages took {took:?}");
        assert_eq!(uids, (1..=N as u32).collect::<Vec<_>>());
        let listed = dovecot.messages(USER, PASS, "INBOX").await;
        assert_eq!(listed.len(), N);
        assert!(
            listed
                .iter()
                .zip(1..)
                .all(|((uid, flags), n)| *uid == n && flags.is_empty())
        );
    }
}
