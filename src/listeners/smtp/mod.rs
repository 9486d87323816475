//! The SMTP and LMTP listeners: an accept loop with connection limits, one task per session,
//! STARTTLS with rustls.

pub mod session;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::either::Either;
use tokio_util::task::TaskTracker;

use crate::config::SmtpConfig;
pub use session::{End, Peer, Services, Session, SessionConfig};

/// A certificate or key that could not be used; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    pub path: String,
    pub message: String,
}

/// Loads the PEM certificate chain and key for STARTTLS (rustls with the ring provider).
pub fn load_tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let fail = |path: &Path, message: String| TlsError {
        path: path.display().to_string(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| fail(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(fail(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| fail(key, e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail(cert, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)
    .map_err(|e| fail(key, e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A listener's settings.
#[derive(Clone)]
pub struct ListenerConfig {
    pub session: SessionConfig,
    pub tls: Option<TlsAcceptor>,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

impl std::fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("session", &self.session)
            .field("tls", &self.tls.is_some())
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .finish()
    }
}

impl ListenerConfig {
    /// The settings `[smtp]` describes, for SMTP (`lmtp` false) or LMTP.
    pub fn from_config(c: &SmtpConfig, lmtp: bool, tls: Option<TlsAcceptor>) -> Self {
        Self {
            session: SessionConfig {
                hostname: c.hostname.clone(),
                lmtp,
                max_message_bytes: usize::try_from(c.max_message_bytes).unwrap_or(usize::MAX),
                max_recipients: c.max_recipients,
                idle_timeout: Duration::from_secs(c.idle_timeout_secs),
                session_timeout: Duration::from_secs(c.session_timeout_secs),
                max_errors: c.max_errors,
            },
            tls,
            max_connections: c.max_connections,
            max_connections_per_ip: c.max_connections_per_ip,
        }
    }
}

/// Counts sessions per client address; a slot is given back when its guard drops.
#[derive(Default)]
struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut counts = self.counts.lock().ok()?;
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.table.counts.lock()
            && let Some(n) = counts.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Where a listener accepts its clients.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    /// A Unix socket (LMTP from an MTA on the same machine); its file is removed on drop.
    Unix(UnixListener, UnixSocketFile),
}

impl Listener {
    /// What the log names the listener by: `address:port` or the socket's path.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| format!("tcp ({e})"), |a| a.to_string()),
            Listener::Unix(_, file) => format!("unix:{}", file.0.display()),
        }
    }

    async fn accept(&self) -> std::io::Result<(Connection, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (tcp, addr) = l.accept().await?;
                let _ = tcp.set_nodelay(true);
                Ok((Either::Left(tcp), Peer::Tcp(addr)))
            }
            Listener::Unix(l, _) => Ok((Either::Right(l.accept().await?.0), Peer::Local)),
        }
    }
}

/// A client's byte stream, over TCP or a Unix socket.
type Connection = Either<TcpStream, UnixStream>;

/// The path of a bound Unix socket, unlinked when the listener goes away so the next start
/// can bind it again.
#[derive(Debug)]
pub struct UnixSocketFile(pub PathBuf);

impl Drop for UnixSocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds a Unix socket at `path` with permission bits `mode`. A socket file left by an
/// earlier run is replaced; any other file at `path` is an error, never deleted.
pub fn bind_unix(path: &Path, mode: u32) -> std::io::Result<Listener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    let file = UnixSocketFile(path.to_path_buf());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(Listener::Unix(listener, file))
}

/// Accepts connections until `services.stopping` is cancelled; sessions run on `tracker`.
pub async fn serve(
    listener: Listener,
    config: ListenerConfig,
    services: Services,
    tracker: TaskTracker,
) {
    let global = Arc::new(Semaphore::new(config.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let config = Arc::new(config);
    loop {
        let accepted = tokio::select! {
            () = services.stopping.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (mut conn, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = global.clone().try_acquire_owned() else {
            refuse(conn, "421 4.7.0 Too many connections, try again later").await;
            continue;
        };
        // Local clients share no address to limit by; the overall limit still holds.
        let slot = match peer {
            Peer::Tcp(addr) => match per_ip.take(addr.ip(), config.max_connections_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    refuse(
                        conn,
                        "421 4.7.0 Too many connections from your address, try again later",
                    )
                    .await;
                    continue;
                }
            },
            Peer::Local => None,
        };
        let config = config.clone();
        let services = services.clone();
        tracker.spawn(async move {
            handle(&mut conn, peer, &config, services).await;
            drop((permit, slot));
        });
    }
}

/// How long closing a connection may take before it is dropped as it is.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

async fn refuse(mut conn: Connection, line: &str) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let _ = conn.write_all(format!("{line}\r\n").as_bytes()).await;
        let _ = conn.shutdown().await;
    })
    .await;
}

async fn handle(conn: &mut Connection, peer: Peer, config: &ListenerConfig, services: Services) {
    metrics::counter!("initdesk_smtp_sessions_total").increment(1);
    metrics::gauge!("initdesk_smtp_sessions").increment(1.0);
    converse(conn, peer, config, services).await;
    metrics::gauge!("initdesk_smtp_sessions").decrement(1.0);
}

async fn converse(conn: &mut Connection, peer: Peer, config: &ListenerConfig, services: Services) {
    let mut session = Session::new(config.session.clone(), services, peer, config.tls.is_some());
    if session.run(conn).await != End::StartTls {
        let _ = tokio::time::timeout(CLOSE_GRACE, conn.shutdown()).await;
        return;
    }
    let Some(acceptor) = &config.tls else { return };
    match tokio::time::timeout(config.session.idle_timeout, acceptor.accept(&mut *conn)).await {
        Ok(Ok(mut tls)) => {
            session.tls_established();
            session.run(&mut tls).await;
            // TLS's close_notify is a write: a client that stopped reading must not hold it.
            let _ = tokio::time::timeout(CLOSE_GRACE, tls.shutdown()).await;
        }
        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
    }
}
