//! systemd integration: readiness, stopping, and the watchdog (all no-ops outside systemd).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Tells systemd the service is ready (Type=notify).
pub fn ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY failed");
    }
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// Pings the watchdog at half its interval while the runtime is alive, when systemd asks for it.
pub fn spawn_watchdog(stop: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(500));
    tokio::spawn(async move {
        loop {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
        }
    });
}
