//! Configuration: embedded defaults, an optional TOML file, then `INITDESK_*` environment overrides.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A configuration that could not be loaded; the message names the key and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
    #[error("bad configuration: {0}")]
    Invalid(String),
}

/// The whole configuration (SPEC 5.1.1).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub smtp: SmtpConfig,
    pub http: HttpConfig,
    pub outbound: OutboundConfig,
    pub limits: LimitsConfig,
    pub policy: PolicyConfig,
    pub imap: ImapGlobalConfig,
    pub organizations: Vec<OrganizationConfig>,
}

/// `[imap]`: settings shared by every IMAP fetcher.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapGlobalConfig {
    /// How long a mailbox lease lasts without renewal; another instance takes over after it.
    pub lease_secs: u64,
    /// The longest wait between reconnection attempts (backoff doubles up to this, with jitter).
    pub max_backoff_secs: u64,
    /// This instance's name in leases; empty: host name, process id and a random suffix.
    pub instance_id: String,
}

impl Default for ImapGlobalConfig {
    fn default() -> Self {
        Self {
            lease_secs: 60,
            max_backoff_secs: 300,
            instance_id: String::new(),
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path` or `postgres://user@host/db`.
    pub url: String,
    /// Connections in the pool (PostgreSQL; SQLite uses one writer and a few readers).
    pub max_connections: u32,
}

/// `[storage]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Attachments and raw mail live under this directory.
    pub data_dir: PathBuf,
}

/// `[smtp]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    pub listen: String,
    /// `address:port`, or `unix:/absolute/path` for a Unix socket; empty: no LMTP.
    pub lmtp_listen: String,
    /// Permission bits of the LMTP Unix socket, in octal as chmod takes them.
    #[serde(deserialize_with = "octal_mode", serialize_with = "octal_mode_text")]
    pub lmtp_socket_mode: u32,
    pub hostname: String,
    pub max_message_bytes: u64,
    pub tls_cert: String,
    pub tls_key: String,
    /// Recipients accepted per message (RFC 5321 asks for at least 100).
    pub max_recipients: usize,
    /// Sessions at once, all clients together.
    pub max_connections: usize,
    /// Sessions at once from one client address.
    pub max_connections_per_ip: usize,
    /// Seconds a client may stay silent (RFC 5321 suggests 5 minutes).
    pub idle_timeout_secs: u64,
    /// Seconds one session may last in all.
    pub session_timeout_secs: u64,
    /// Commands answered with an error before the session is closed.
    pub max_errors: usize,
    /// Seconds sessions in flight get to finish on shutdown before they are closed with 421.
    pub shutdown_grace_secs: u64,
    /// Messages over 1 MiB received and committed at once; more wait (bounds memory).
    pub max_large_messages: usize,
}

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: String,
    /// Base of every `download_url`.
    pub public_url: String,
    /// Seconds a connection may wait for the client to send or read before it is dropped.
    pub idle_timeout_secs: u64,
}

/// `[outbound]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    pub relay: String,
    /// HMAC key for reply tokens; created when missing.
    pub secret_file: PathBuf,
    /// Attempts before an outgoing message is given up on (marked failed, noted on its ticket).
    pub max_attempts: u32,
    /// Seconds before the first retry; each later one doubles, up to an hour.
    pub retry_base_secs: u64,
    /// Messages sent at once, and pooled relay connections.
    pub concurrency: usize,
    /// PEM file of extra CA certificates the relay's TLS certificate may chain to (a private
    /// CA); the public web roots are always trusted. Empty: none.
    pub ca_file: String,
}

/// `[limits]`: bounds on what one message may make the parser do (SPEC 2.8).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Bytes parsed at most; the rest of a larger message is kept raw but not parsed.
    pub max_parse_bytes: u64,
    /// MIME parts kept at most.
    pub max_parts: usize,
    /// MIME nesting depth followed at most.
    pub max_depth: usize,
    /// Header fields read at most.
    pub max_headers: usize,
    /// HTML bytes converted to text at most (html2text is costly on huge input).
    pub max_html_to_text_bytes: usize,
    /// HTML nested deeper than this is kept as plain text only: HTML parsers are quadratic
    /// on deep nesting.
    pub max_html_depth: usize,
}

/// `[policy]`: spam and rate limits (SPEC 2.9).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Tickets one sender may open in `rate_limit_window_secs` before the next ones are spam.
    pub rate_limit_tickets: i64,
    pub rate_limit_window_secs: i64,
    /// A sender gets at most one acknowledgement of a new ticket in this many seconds.
    pub acknowledge_window_secs: i64,
}

/// `[[organizations]]`: created or updated at start-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OrganizationConfig {
    pub name: String,
    pub domains: Vec<String>,
    #[serde(default = "default_true")]
    pub cc_email_routing: bool,
    #[serde(default)]
    pub auto_tagging: bool,
    #[serde(default = "default_reopen_window")]
    pub reopen_window_days: i64,
    /// Extra subject tag prefix, e.g. `ACME` for `[ACME #12]`.
    #[serde(default)]
    pub subject_tag_prefix: String,
    /// The authserv-id of the organization's own mail server in `Authentication-Results`.
    #[serde(default)]
    pub authserv_id: String,
    /// With this on, a subject tag threads only with a DKIM or DMARC pass.
    #[serde(default)]
    pub require_authenticated_sender: bool,
    #[serde(default)]
    pub webhook_url: String,
    #[serde(default)]
    pub webhook_secret: String,
    #[serde(default)]
    pub inboxes: Vec<InboxConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

/// `[[organizations.inboxes]]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InboxConfig {
    pub email_prefix: String,
    pub name: String,
    #[serde(default)]
    pub auto_acknowledge: bool,
    #[serde(default)]
    pub imap: Option<ImapConfig>,
}

/// `[organizations.inboxes.imap]`: kept here so configs validate; the fetcher reads it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    pub host: String,
    #[serde(default = "default_imap_port")]
    pub port: u16,
    #[serde(default = "default_imap_tls")]
    pub tls: String,
    pub user: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub password_file: String,
    #[serde(default)]
    pub password_command: String,
    #[serde(default)]
    pub oauth2_token_command: String,
    #[serde(default = "default_imap_folder")]
    pub folder: String,
    #[serde(default = "default_imap_after")]
    pub after: String,
    /// PEM file of extra CA certificates to trust (a private CA); the public roots always count.
    #[serde(default)]
    pub ca_file: String,
    /// Use IDLE when the server offers it; otherwise (or when false) poll.
    #[serde(default = "default_true")]
    pub idle: bool,
    /// Seconds between polls without IDLE.
    #[serde(default = "default_imap_poll_interval")]
    pub poll_interval_secs: u64,
    /// Seconds before IDLE is re-issued (RFC 2177: servers may drop it after 30 minutes).
    #[serde(default = "default_imap_idle_refresh")]
    pub idle_refresh_secs: u64,
    /// Messages fetched and committed together.
    #[serde(default = "default_imap_batch_size")]
    pub batch_size: usize,
    /// Seconds allowed for connecting, the TLS handshake and logging in, and for any one reply.
    #[serde(default = "default_imap_timeout")]
    pub timeout_secs: u64,
}

/// `[[organizations.users]]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub email: String,
    pub name: String,
}

fn default_true() -> bool {
    true
}
fn default_reopen_window() -> i64 {
    30
}
fn default_imap_port() -> u16 {
    993
}
fn default_imap_tls() -> String {
    "implicit".into()
}
fn default_imap_folder() -> String {
    "INBOX".into()
}
fn default_imap_after() -> String {
    "seen".into()
}
fn default_imap_poll_interval() -> u64 {
    60
}
fn default_imap_idle_refresh() -> u64 {
    25 * 60
}
fn default_imap_batch_size() -> usize {
    200
}
fn default_imap_timeout() -> u64 {
    60
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://data/gateway.db".into(),
            max_connections: 8,
        }
    }
}
impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
        }
    }
}
impl SmtpConfig {
    /// The LMTP listener's Unix socket path, when `lmtp_listen` is `unix:/path`.
    pub fn lmtp_socket(&self) -> Option<&Path> {
        self.lmtp_listen.strip_prefix("unix:").map(Path::new)
    }
}

/// A permission mode written in octal: `"0660"` in a file, or `0660` / `660` from the
/// environment, which arrives as a number whose decimal digits are the octal ones.
fn octal_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(u64),
    }
    let digits = match Raw::deserialize(d)? {
        Raw::Text(t) => t,
        Raw::Number(n) => n.to_string(),
    };
    let trimmed = digits.trim().trim_start_matches("0o");
    u32::from_str_radix(trimmed, 8).map_err(|_| {
        serde::de::Error::custom(format!("{digits:?} is not an octal mode such as \"0660\""))
    })
}

/// Writes a permission mode the way [`octal_mode`] reads it back.
fn octal_mode_text<S: serde::Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:04o}"))
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:2525".into(),
            lmtp_listen: String::new(),
            lmtp_socket_mode: 0o660,
            hostname: "localhost".into(),
            max_message_bytes: 26_214_400,
            tls_cert: String::new(),
            tls_key: String::new(),
            max_recipients: 100,
            max_connections: 500,
            max_connections_per_ip: 20,
            idle_timeout_secs: 300,
            session_timeout_secs: 1800,
            max_errors: 20,
            shutdown_grace_secs: 30,
            max_large_messages: 4,
        }
    }
}
impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_url: "http://127.0.0.1:8080".into(),
            idle_timeout_secs: 60,
        }
    }
}
impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            relay: "smtp://127.0.0.1:25".into(),
            secret_file: PathBuf::from("data/secret"),
            max_attempts: 8,
            retry_base_secs: 30,
            concurrency: 8,
            ca_file: String::new(),
        }
    }
}
impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_parse_bytes: 26_214_400,
            max_parts: 500,
            max_depth: 20,
            max_headers: 1000,
            max_html_to_text_bytes: 2 * 1024 * 1024,
            max_html_depth: 256,
        }
    }
}
impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            rate_limit_tickets: 20,
            rate_limit_window_secs: 600,
            acknowledge_window_secs: 3600,
        }
    }
}
impl Config {
    /// Loads defaults, then `file` (or `INITDESK_CONFIG`), then `INITDESK_<SECTION>_<KEY>` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let from_env = std::env::var_os("INITDESK_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let file = file.map(Path::to_path_buf).or(from_env);
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &file {
            if !path.exists() {
                return Err(ConfigError::Missing(path.clone()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment
            .merge(env_overrides())
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::Invalid(format!("{key}: {why}")));
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return bad("database.url", "must start with sqlite:// or postgres://");
        }
        if self.outbound.max_attempts == 0 {
            return bad("outbound.max_attempts", "must be at least 1");
        }
        if self.outbound.concurrency == 0 || self.outbound.concurrency > 256 {
            return bad("outbound.concurrency", "must be between 1 and 256");
        }
        if !["smtp://", "smtps://"]
            .iter()
            .any(|p| self.outbound.relay.starts_with(p))
        {
            return bad("outbound.relay", "must be an smtp:// or smtps:// URL");
        }
        if self.imap.lease_secs < 2 {
            return bad("imap.lease_secs", "must be at least 2");
        }
        if self.imap.max_backoff_secs == 0 {
            return bad("imap.max_backoff_secs", "must be at least 1");
        }
        for (key, addr) in [
            ("smtp.listen", &self.smtp.listen),
            ("http.listen", &self.http.listen),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return bad(key, &format!("{addr:?} is not an address:port"));
            }
        }
        match self.smtp.lmtp_socket() {
            Some(path) if !path.is_absolute() => {
                return bad("smtp.lmtp_listen", "a unix: socket path must be absolute");
            }
            Some(_) => {}
            None if !self.smtp.lmtp_listen.is_empty()
                && self
                    .smtp
                    .lmtp_listen
                    .parse::<std::net::SocketAddr>()
                    .is_err() =>
            {
                return bad(
                    "smtp.lmtp_listen",
                    "is neither an address:port nor unix:/path",
                );
            }
            None => {}
        }
        if self.smtp.lmtp_socket_mode > 0o777 {
            return bad(
                "smtp.lmtp_socket_mode",
                "is not a permission mode (0000-0777)",
            );
        }
        if self.smtp.tls_cert.is_empty() != self.smtp.tls_key.is_empty() {
            return bad("smtp.tls_cert", "tls_cert and tls_key must be set together");
        }
        for (key, value) in [
            (
                "smtp.max_message_bytes",
                self.smtp.max_message_bytes as usize,
            ),
            ("smtp.max_recipients", self.smtp.max_recipients),
            ("smtp.max_connections", self.smtp.max_connections),
            (
                "smtp.max_connections_per_ip",
                self.smtp.max_connections_per_ip,
            ),
            (
                "smtp.idle_timeout_secs",
                self.smtp.idle_timeout_secs as usize,
            ),
            (
                "smtp.session_timeout_secs",
                self.smtp.session_timeout_secs as usize,
            ),
            ("smtp.max_errors", self.smtp.max_errors),
            ("smtp.max_large_messages", self.smtp.max_large_messages),
            (
                "http.idle_timeout_secs",
                usize::try_from(self.http.idle_timeout_secs).unwrap_or(usize::MAX),
            ),
        ] {
            if value == 0 {
                return bad(key, "must be greater than 0");
            }
        }
        if !(self.http.public_url.starts_with("http://")
            || self.http.public_url.starts_with("https://"))
        {
            return bad("http.public_url", "must start with http:// or https://");
        }
        if self.policy.rate_limit_tickets < 1 || self.policy.rate_limit_window_secs < 1 {
            return bad(
                "policy.rate_limit_tickets",
                "the rate limit and its window must be positive",
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, org) in self.organizations.iter().enumerate() {
            let key = |k: &str| format!("organizations[{i}].{k}");
            if org.name.trim().is_empty() {
                return bad(&key("name"), "must not be empty");
            }
            if !names.insert(org.name.clone()) {
                return bad(&key("name"), "is declared twice");
            }
            if org.domains.is_empty() {
                return bad(&key("domains"), "needs at least one domain");
            }
            for d in &org.domains {
                if !crate::address::is_domain(d) {
                    return bad(&key("domains"), &format!("{d:?} is not a domain"));
                }
            }
            if org.reopen_window_days < 0 {
                return bad(&key("reopen_window_days"), "must not be negative");
            }
            for (j, inbox) in org.inboxes.iter().enumerate() {
                if !crate::address::is_local_part(&inbox.email_prefix)
                    || inbox.email_prefix.contains('+')
                {
                    return bad(
                        &key(&format!("inboxes[{j}].email_prefix")),
                        "is not a valid local part without '+'",
                    );
                }
                if let Some(imap) = &inbox.imap {
                    if !["implicit", "starttls", "none"].contains(&imap.tls.as_str()) {
                        return bad(
                            &key(&format!("inboxes[{j}].imap.tls")),
                            "must be implicit, starttls or none",
                        );
                    }
                    let after = imap.after.as_str();
                    if !(after == "seen"
                        || after == "delete"
                        || after.strip_prefix("move:").is_some_and(|f| !f.is_empty()))
                    {
                        return bad(
                            &key(&format!("inboxes[{j}].imap.after")),
                            "must be seen, delete or move:FOLDER",
                        );
                    }
                    let secrets = [
                        &imap.password,
                        &imap.password_file,
                        &imap.password_command,
                        &imap.oauth2_token_command,
                    ];
                    if secrets.iter().filter(|s| !s.is_empty()).count() > 1 {
                        return bad(
                            &key(&format!("inboxes[{j}].imap.password")),
                            "set only one of password, password_file, password_command and oauth2_token_command",
                        );
                    }
                    if imap.host.trim().is_empty() {
                        return bad(
                            &key(&format!("inboxes[{j}].imap.host")),
                            "must not be empty",
                        );
                    }
                    if imap.user.trim().is_empty() {
                        return bad(
                            &key(&format!("inboxes[{j}].imap.user")),
                            "must not be empty",
                        );
                    }
                    if imap.folder.trim().is_empty() {
                        return bad(
                            &key(&format!("inboxes[{j}].imap.folder")),
                            "must not be empty",
                        );
                    }
                    if imap.batch_size == 0 || imap.batch_size > 5000 {
                        return bad(
                            &key(&format!("inboxes[{j}].imap.batch_size")),
                            "must be between 1 and 5000",
                        );
                    }
                    if imap.poll_interval_secs == 0
                        || imap.idle_refresh_secs == 0
                        || imap.timeout_secs == 0
                    {
                        return bad(
                            &key(&format!("inboxes[{j}].imap.poll_interval_secs")),
                            "poll_interval_secs, idle_refresh_secs and timeout_secs must be at least 1",
                        );
                    }
                }
            }
            for (j, user) in org.users.iter().enumerate() {
                if crate::address::parse_addr_spec(&user.email).is_none() {
                    return bad(
                        &key(&format!("users[{j}].email")),
                        "is not an email address",
                    );
                }
            }
        }
        Ok(())
    }
}

/// `INITDESK_SMTP_MAX_MESSAGE_BYTES` -> `smtp.max_message_bytes`: the section is the first word.
/// The sections environment variables may override; other `INITDESK_*` variables (such as
/// `INITDESK_CONFIG` or a test suite's own) are not configuration.
const ENV_SECTIONS: &[&str] = &[
    "database", "storage", "smtp", "http", "outbound", "limits", "policy", "imap",
];

fn env_overrides() -> Env {
    Env::prefixed("INITDESK_")
        .filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            key.split_once('_')
                .is_some_and(|(section, rest)| !rest.is_empty() && ENV_SECTIONS.contains(&section))
        })
        .map(|key| {
            let key = key.as_str().to_ascii_lowercase();
            match key.split_once('_') {
                Some((section, rest)) => format!("{section}.{rest}").into(),
                None => key.into(),
            }
        })
        .lowercase(false)
}

fn describe_figment_error(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let src = e
                .metadata
                .as_ref()
                .and_then(|m| m.source.as_ref())
                .map(|s| format!(" (from {s})"))
                .unwrap_or_default();
            if path.is_empty() {
                format!("{}{src}", e.kind)
            } else {
                format!("{path}: {}{src}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().expect("defaults are valid");
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[smtp]\nlisten = \"127.0.0.1:25\"\nlisen = 1\n").expect("write");
        let err = Config::load(Some(&path))
            .expect_err("unknown key must fail")
            .to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[http]\nlisten = \"nowhere\"\n").expect("write");
        let err = Config::load(Some(&path))
            .expect_err("bad listen")
            .to_string();
        assert!(err.contains("http.listen"), "{err}");
    }

    #[test]
    fn shipped_config_files_load() {
        for file in ["config/default.toml", "config/example-acme.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let loaded = Config::load(Some(&path));
            assert!(loaded.is_ok(), "{file}: {:?}", loaded.err());
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let defaults = Config::load(Some(&path)).map(|c| c.smtp.lmtp_socket_mode);
        assert_eq!(defaults.ok(), Some(SmtpConfig::default().lmtp_socket_mode));
    }

    fn load_smtp(toml: &str) -> Result<SmtpConfig, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, format!("[smtp]\n{toml}\n")).expect("write");
        Config::load(Some(&path))
            .map(|c| c.smtp)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn lmtp_on_a_unix_socket() {
        let smtp =
            load_smtp("lmtp_listen = \"unix:/run/gw/lmtp.sock\"\nlmtp_socket_mode = \"0666\"")
                .expect("valid");
        assert_eq!(smtp.lmtp_socket(), Some(Path::new("/run/gw/lmtp.sock")));
        assert_eq!(smtp.lmtp_socket_mode, 0o666);
        assert_eq!(load_smtp("").expect("defaults").lmtp_socket_mode, 0o660);
        assert_eq!(
            load_smtp("lmtp_socket_mode = 600")
                .expect("a number")
                .lmtp_socket_mode,
            0o600
        );
        let relative = load_smtp("lmtp_listen = \"unix:lmtp.sock\"").expect_err("relative");
        assert!(relative.contains("smtp.lmtp_listen"), "{relative}");
        let not_octal = load_smtp("lmtp_socket_mode = \"0690\"").expect_err("not octal");
        assert!(not_octal.contains("lmtp_socket_mode"), "{not_octal}");
        let too_big = load_smtp("lmtp_socket_mode = \"7777\"").expect_err("setuid bits");
        assert!(too_big.contains("smtp.lmtp_socket_mode"), "{too_big}");
        let neither = load_smtp("lmtp_listen = \"lmtp.sock\"").expect_err("no port");
        assert!(neither.contains("unix:/path"), "{neither}");
    }
}
