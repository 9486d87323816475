//! Operations: logging, metrics and systemd integration.

pub mod metrics;
pub mod systemd;
pub mod telemetry;
pub mod tls;
