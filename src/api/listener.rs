//! The HTTP listener: a connection that makes no progress for `http.idle_timeout_secs` is
//! dropped. `axum::serve` gives hyper no timer, so on its own a client that connects and
//! says nothing, trickles its headers, or stops reading a response would hold its
//! connection (and a file descriptor) for good.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_io_timeout::TimeoutStream;

/// A TCP listener whose connections fail a read or write that waits longer than `idle`.
#[derive(Debug)]
pub struct IdleLimited {
    inner: TcpListener,
    idle: Duration,
}

impl IdleLimited {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener, idle: Duration) -> Self {
        Self { inner, idle }
    }
}

impl axum::serve::Listener for IdleLimited {
    type Io = Pin<Box<TimeoutStream<TcpStream>>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((tcp, addr)) => {
                    let _ = tcp.set_nodelay(true);
                    let mut io = TimeoutStream::new(tcp);
                    io.set_read_timeout(Some(self.idle));
                    io.set_write_timeout(Some(self.idle));
                    return (Box::pin(io), addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}
