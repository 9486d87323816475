//! The SMTP and LMTP listeners: an accept loop with connection limits, one task per session,
//! STARTTLS with rustls.

pub mod session;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::task::TaskTracker;

use crate::config::SmtpConfig;
pub use session::{End, Services, Session, SessionConfig};

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

/// Accepts connections until `services.stopping` is cancelled; sessions run on `tracker`.
pub async fn serve(
    listener: TcpListener,
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
        let (mut tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = global.clone().try_acquire_owned() else {
            refuse(tcp, "421 4.7.0 Too many connections, try again later").await;
            continue;
        };
        let Some(slot) = per_ip.take(peer.ip(), config.max_connections_per_ip) else {
            refuse(
                tcp,
                "421 4.7.0 Too many connections from your address, try again later",
            )
            .await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let config = config.clone();
        let services = services.clone();
        tracker.spawn(async move {
            handle(&mut tcp, peer, &config, services).await;
            drop((permit, slot));
        });
    }
}

async fn refuse(mut tcp: TcpStream, line: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = tcp.write_all(format!("{line}\r\n").as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

async fn handle(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    config: &ListenerConfig,
    services: Services,
) {
    metrics::counter!("initdesk_smtp_sessions_total").increment(1);
    metrics::gauge!("initdesk_smtp_sessions").increment(1.0);
    converse(tcp, peer, config, services).await;
    metrics::gauge!("initdesk_smtp_sessions").decrement(1.0);
}

async fn converse(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    config: &ListenerConfig,
    services: Services,
) {
    let mut session = Session::new(config.session.clone(), services, peer, config.tls.is_some());
    if session.run(tcp).await != End::StartTls {
        let _ = tcp.shutdown().await;
        return;
    }
    let Some(acceptor) = &config.tls else { return };
    match tokio::time::timeout(config.session.idle_timeout, acceptor.accept(&mut *tcp)).await {
        Ok(Ok(mut tls)) => {
            session.tls_established();
            session.run(&mut tls).await;
            let _ = tls.shutdown().await;
        }
        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
    }
}
