//! Connections to the SMTP relay: lettre's SMTP client over sockets opened here, with
//! `TCP_NODELAY`, kept open for the next message.
//!
//! lettre writes a message and its final `.` in two writes. On a socket with Nagle's
//! algorithm the `.` then waits for the relay to acknowledge the message, which a Linux peer
//! delays by 40 ms: every message took at least 40 ms, and a sender with 8 connections
//! topped out near 160 messages per second. lettre's own pool opens its sockets itself, so
//! the pool is here.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long a connection may sit idle before it is closed rather than reused (relays drop
/// idle clients after a while; Postfix after 300 s).
const IDLE_FOR: Duration = Duration::from_secs(60);

/// Why a message did not reach the relay.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The SMTP conversation failed (a refusal, a TLS or protocol error).
    #[error("{0}")]
    Smtp(#[from] SmtpError),
    /// The relay could not be reached, or took too long.
    #[error("{0}")]
    Network(String),
}

impl SendError {
    /// True when the relay refused the message for good (5xx): retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::Smtp(e) if e.is_permanent())
    }
}

/// How the connection is secured, as the relay URL says.
#[derive(Clone)]
enum Security {
    /// `smtp://host`: plain (loopback relays).
    Plain,
    /// `smtp://host?tls=opportunistic`: STARTTLS when offered.
    Opportunistic(TlsParameters),
    /// `smtp://host?tls=required`: STARTTLS or fail.
    Required(TlsParameters),
    /// `smtps://host`: TLS from the first byte.
    Implicit(Arc<tokio_rustls::rustls::ClientConfig>),
}

/// The relay of `outbound.relay` and this instance's idle connections to it.
pub struct Relay {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay from a lettre-style URL: `smtp://[user:pass@]host[:port][?tls=required|opportunistic]`
    /// or `smtps://...`; ports default to 25, 587 with `tls=`, and 465 for `smtps`.
    pub fn from_url(
        url: &str,
        ca_file: &str,
        hello: ClientId,
        timeout: Duration,
        max_idle: usize,
    ) -> Result<Relay, String> {
        let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("no host")?
            .trim_matches(['[', ']'])
            .to_string();
        let tls = parsed
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let params = || starttls_parameters(&host, ca_file);
        let (security, default_port) = match (parsed.scheme(), tls.as_deref()) {
            ("smtp", None) => (Security::Plain, 25),
            ("smtp", Some("opportunistic")) => (Security::Opportunistic(params()?), 587),
            ("smtp", Some("required")) => (Security::Required(params()?), 587),
            ("smtps", None) => (
                Security::Implicit(Arc::new(crate::ops::tls::client_config(ca_file)?)),
                465,
            ),
            (scheme, tls) => {
                return Err(format!(
                    "scheme {scheme:?} with tls={tls:?}: use smtp://, smtp://...?tls=required, smtp://...?tls=opportunistic or smtps://"
                ));
            }
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let credentials = parsed
            .password()
            .map(|p| Credentials::new(decode(parsed.username()), decode(p)));
        Ok(Relay {
            port: parsed.port().unwrap_or(default_port),
            host,
            security,
            credentials,
            hello,
            timeout,
            max_idle: max_idle.max(1),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends one message, on an idle connection when there is one; the connection is kept
    /// for the next message unless this one broke it.
    pub async fn send(&self, envelope: &Envelope, message: &[u8]) -> Result<Response, SendError> {
        let mut conn = match self.take_idle() {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        let result = match tokio::time::timeout(self.timeout, conn.send(envelope, message)).await {
            Ok(sent) => sent.map_err(SendError::from),
            Err(_) => Err(timed_out()),
        };
        if result.is_ok() && !conn.has_broken() {
            self.put_idle(conn);
        } else {
            conn.abort().await;
        }
        result
    }

    /// Says QUIT on every idle connection.
    pub async fn shutdown(&self) {
        let idle: Vec<_> = self
            .idle
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        for (mut conn, _) in idle {
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.quit()).await;
        }
    }

    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().ok()?;
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < IDLE_FOR && !conn.has_broken() {
                return Some(conn);
            }
            // Too old to trust: dropped (the relay has likely closed it already).
        }
        None
    }

    fn put_idle(&self, conn: AsyncSmtpConnection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push((conn, Instant::now()));
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        tokio::time::timeout(self.timeout, self.open())
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }

    async fn open(&self) -> Result<AsyncSmtpConnection, SendError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(smtp_io)?;
        tcp.set_nodelay(true).map_err(smtp_io)?;
        let mut conn = match &self.security {
            Security::Implicit(config) => {
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(smtp_io)?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(smtp_io)?;
                AsyncSmtpConnection::connect_with_transport(Box::new(TlsSocket(tls)), &self.hello)
                    .await?
            }
            _ => AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello).await?,
        };
        match &self.security {
            Security::Required(params) => conn.starttls(params.clone(), &self.hello).await?,
            Security::Opportunistic(params) if conn.can_starttls() => {
                conn.starttls(params.clone(), &self.hello).await?;
            }
            _ => {}
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(
                &[
                    lettre::transport::smtp::authentication::Mechanism::Plain,
                    lettre::transport::smtp::authentication::Mechanism::Login,
                ],
                credentials,
            )
            .await?;
        }
        Ok(conn)
    }
}

/// lettre's TLS settings for STARTTLS: the public web roots, plus the CAs in `ca_file`.
fn starttls_parameters(host: &str, ca_file: &str) -> Result<TlsParameters, String> {
    let mut builder = TlsParameters::builder(host.to_string());
    if !ca_file.is_empty() {
        let pem = std::fs::read(ca_file).map_err(|e| format!("ca_file {ca_file}: {e}"))?;
        let cert = Certificate::from_pem(&pem).map_err(|e| format!("ca_file {ca_file}: {e}"))?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build_rustls().map_err(|e| e.to_string())
}

fn smtp_io(e: impl std::fmt::Display) -> SendError {
    SendError::Network(e.to_string())
}

fn timed_out() -> SendError {
    smtp_io("the relay did not answer in time")
}

/// A TLS stream lettre can drive (implicit TLS, `smtps://`).
#[derive(Debug)]
struct TlsSocket(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncRead for TlsSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for TlsSocket {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(url: &str) -> Result<Relay, String> {
        Relay::from_url(
            url,
            "",
            ClientId::Domain("gw.test".into()),
            Duration::from_secs(5),
            4,
        )
    }

    #[test]
    fn urls_as_lettre_reads_them() {
        let r = relay("smtp://127.0.0.1:2525").expect("plain");
        assert_eq!((r.host.as_str(), r.port), ("127.0.0.1", 2525));
        assert!(matches!(r.security, Security::Plain) && r.credentials.is_none());
        let r = relay("smtp://user%40x:p%2Fw@mail.example.com?tls=required").expect("starttls");
        assert_eq!(r.port, 587);
        assert!(matches!(r.security, Security::Required(_)));
        assert!(r.credentials.is_some());
        assert!(matches!(
            relay("smtp://mail.example.com?tls=opportunistic").map(|r| r.security),
            Ok(Security::Opportunistic(_))
        ));
        let r = relay("smtps://mail.example.com").expect("implicit");
        assert_eq!(r.port, 465);
        assert!(matches!(r.security, Security::Implicit(_)));
        assert!(relay("http://mail.example.com").is_err());
        assert!(relay("smtp://mail.example.com?tls=sometimes").is_err());
        assert!(relay("not a url").is_err());
    }
}
