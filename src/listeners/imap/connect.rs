//! Opening an IMAP session: TCP, TLS (implicit or STARTTLS), then LOGIN or XOAUTH2 with a
//! secret read fresh on every connection, so rotated passwords and tokens are picked up.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

use super::ImapError;
use crate::config::ImapConfig;

/// The transport under a session: plain TCP on loopback, TLS otherwise.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Debug> Io for T {}

/// A logged-in session.
pub type Session = async_imap::Session<Box<dyn Io>>;

/// Connects, secures and logs in, each step bounded by `timeout`.
pub async fn open(cfg: &ImapConfig, timeout: Duration) -> Result<Session, ImapError> {
    let tcp = within(timeout, "connecting", async {
        TcpStream::connect((cfg.host.as_str(), cfg.port))
            .await
            .map_err(ImapError::Connect)
    })
    .await?;
    let _ = tcp.set_nodelay(true);
    let client = match cfg.tls.as_str() {
        "implicit" => {
            let tls = handshake(cfg, tcp, timeout).await?;
            let mut client = async_imap::Client::new(Box::new(tls) as Box<dyn Io>);
            greeting(&mut client, timeout).await?;
            client
        }
        "starttls" => {
            let mut plain = async_imap::Client::new(tcp);
            greeting(&mut plain, timeout).await?;
            within(timeout, "STARTTLS", async {
                plain
                    .run_command_and_check_ok("STARTTLS", None)
                    .await
                    .map_err(ImapError::Protocol)
            })
            .await?;
            // Anything the server pipelined before the handshake is discarded with the
            // plain client, so nothing unauthenticated carries over into the TLS session.
            let tls = handshake(cfg, plain.into_inner(), timeout).await?;
            async_imap::Client::new(Box::new(tls) as Box<dyn Io>)
        }
        _ => {
            let mut client = async_imap::Client::new(Box::new(tcp) as Box<dyn Io>);
            greeting(&mut client, timeout).await?;
            client
        }
    };
    login(cfg, client, timeout).await
}

async fn greeting<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Debug>(
    client: &mut async_imap::Client<T>,
    timeout: Duration,
) -> Result<(), ImapError> {
    match within(timeout, "reading the greeting", async {
        client.read_response().await.map_err(ImapError::Connect)
    })
    .await?
    {
        Some(_) => Ok(()),
        None => Err(ImapError::Connect(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection before its greeting",
        ))),
    }
}

async fn handshake(
    cfg: &ImapConfig,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ImapError> {
    let connector = TlsConnector::from(Arc::new(tls_config(cfg)?));
    let name = ServerName::try_from(cfg.host.clone())
        .map_err(|e| ImapError::Tls(format!("{}: {e}", cfg.host)))?;
    within(timeout, "the TLS handshake", async {
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| ImapError::Tls(e.to_string()))
    })
    .await
}

fn tls_config(cfg: &ImapConfig) -> Result<ClientConfig, ImapError> {
    crate::ops::tls::client_config(&cfg.ca_file).map_err(ImapError::Tls)
}

/// XOAUTH2 (RFC 7628's predecessor, as Gmail and Microsoft 365 speak it).
struct XOAuth2 {
    response: Vec<u8>,
}

impl async_imap::Authenticator for XOAuth2 {
    type Response = Vec<u8>;
    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        // The first call sends the credentials; a second means the server refused them and
        // sent its error as a challenge, which is answered with an empty line.
        std::mem::take(&mut self.response)
    }
}

async fn login(
    cfg: &ImapConfig,
    client: async_imap::Client<Box<dyn Io>>,
    timeout: Duration,
) -> Result<Session, ImapError> {
    if !cfg.oauth2_token_command.is_empty() {
        let token =
            run_secret_command(&cfg.oauth2_token_command, timeout, "oauth2_token_command").await?;
        let auth = XOAuth2 {
            response: format!("user={}\x01auth=Bearer {token}\x01\x01", cfg.user).into_bytes(),
        };
        return within(timeout, "XOAUTH2", async {
            client
                .authenticate("XOAUTH2", auth)
                .await
                .map_err(|(e, _)| ImapError::Auth(e.to_string()))
        })
        .await;
    }
    let password = password(cfg, timeout).await?;
    // A line break would end the LOGIN command early and start another.
    if password.contains(['\r', '\n', '\0']) || cfg.user.contains(['\r', '\n', '\0']) {
        return Err(ImapError::Secret(
            "the user name or password contains a line break or NUL".into(),
        ));
    }
    within(timeout, "LOGIN", async {
        client
            .login(&cfg.user, &password)
            .await
            .map_err(|(e, _)| ImapError::Auth(e.to_string()))
    })
    .await
}

/// The password from the config, its file, or its command (read at every connection).
async fn password(cfg: &ImapConfig, timeout: Duration) -> Result<String, ImapError> {
    if !cfg.password_file.is_empty() {
        let text = tokio::fs::read_to_string(&cfg.password_file)
            .await
            .map_err(|e| ImapError::Secret(format!("password_file {}: {e}", cfg.password_file)))?;
        return Ok(text.trim_end_matches(['\r', '\n']).to_string());
    }
    if !cfg.password_command.is_empty() {
        return run_secret_command(&cfg.password_command, timeout, "password_command").await;
    }
    Ok(cfg.password.clone())
}

/// Runs `command` with `sh -c` and returns its first line of output.
async fn run_secret_command(
    command: &str,
    timeout: Duration,
    key: &str,
) -> Result<String, ImapError> {
    let output = within(timeout, "a secret command", async {
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| ImapError::Secret(format!("{key}: {e}")))
    })
    .await?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(ImapError::Secret(format!(
            "{key} exited with {}: {}",
            output.status,
            stderr.trim()
        )));
    }
    let stdout = String::from_utf8(output.stdout)
        .map_err(|_| ImapError::Secret(format!("{key} printed something that is not UTF-8")))?;
    let secret = stdout.lines().next().unwrap_or_default().trim().to_string();
    if secret.is_empty() {
        return Err(ImapError::Secret(format!("{key} printed nothing")));
    }
    Ok(secret)
}

/// Bounds one step; a server that stops answering must not hold a fetcher forever.
pub async fn within<T>(
    timeout: Duration,
    what: &'static str,
    step: impl Future<Output = Result<T, ImapError>>,
) -> Result<T, ImapError> {
    tokio::time::timeout(timeout, step)
        .await
        .unwrap_or(Err(ImapError::Timeout(what)))
}
