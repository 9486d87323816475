//! Decisions about a message that are not about its ticket: spam, CC snapshots,
//! loops, auto-replies and bounces (SPEC 2.5, 2.6, 2.9).

pub mod acknowledge;
pub mod autoreply;
pub mod bounce;
pub mod cc;
pub mod loops;
pub mod spam;
