//! `TCP_NODELAY` on PostgreSQL connections.
//!
//! sqlx 0.9 stopped setting it (transact-rs/sqlx#4335). Without it a statement larger than
//! one TCP segment sends its tail only after the server's delayed ACK, up to 40 ms later:
//! measured 23–29 ms per multi-row `INSERT` of the pipeline's batches. sqlx gives no access
//! to its socket, so a new connection asks the server which address it sees, and the
//! socket with that local and remote port is found among this process's descriptors.

use sqlx::PgConnection;

/// Sets `TCP_NODELAY` on the socket under `conn`; true when it was found (a Unix-domain
/// connection has no such socket and needs none).
pub async fn set(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let (client_port, server_port): (Option<i32>, Option<i32>) =
        sqlx::query_as("SELECT inet_client_port(), inet_server_port()")
            .fetch_one(conn)
            .await?;
    let (Some(local), Some(remote)) = (
        client_port.and_then(|p| u16::try_from(p).ok()),
        server_port.and_then(|p| u16::try_from(p).ok()),
    ) else {
        return Ok(false);
    };
    Ok(
        tokio::task::spawn_blocking(move || set_on_socket(local, remote))
            .await
            .unwrap_or(false),
    )
}

/// Whether the TCP socket from `local` to `remote` port has `TCP_NODELAY` set, if found.
pub fn is_set(local: u16, remote: u16) -> Option<bool> {
    with_socket(local, remote, |s| s.tcp_nodelay().ok()).flatten()
}

fn set_on_socket(local: u16, remote: u16) -> bool {
    with_socket(local, remote, |s| s.set_tcp_nodelay(true).is_ok()).unwrap_or(false)
}

/// Runs `f` on this process's TCP socket with these ports.
#[cfg(target_os = "linux")]
fn with_socket<T>(local: u16, remote: u16, f: impl FnOnce(socket2::SockRef<'_>) -> T) -> Option<T> {
    use std::os::fd::{BorrowedFd, RawFd};
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is borrowed for a few socket calls only. Were it closed
        // meanwhile they fail with EBADF; were its number reused, the address check below
        // would have to match the database connection's exactly for anything to change.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let port = |addr: std::io::Result<socket2::SockAddr>| {
            addr.ok().and_then(|a| a.as_socket()).map(|a| a.port())
        };
        if port(socket.local_addr()) == Some(local) && port(socket.peer_addr()) == Some(remote) {
            return Some(f(socket));
        }
    }
    None
}

#[cfg(not(target_os = "linux"))]
fn with_socket<T>(_: u16, _: u16, _: impl FnOnce(socket2::SockRef<'_>) -> T) -> Option<T> {
    None
}
