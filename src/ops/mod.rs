//! Operations: logging and, later, metrics and systemd integration.

pub mod telemetry;
