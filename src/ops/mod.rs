//! Operations: logging, metrics, memory and systemd integration.

pub mod memory;
pub mod metrics;
pub mod systemd;
pub mod telemetry;
pub mod tls;
