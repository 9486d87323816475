//! initdesk-gateway: the inbound email gateway of the initdesk helpdesk.
//!
//! Mail flows one way: [`listeners`] -> [`intake`] -> [`pipeline`] (parse, route, customer, thread, policy)
//! -> [`store`]. The command line ([`cli`]) and the fixture runner ([`replay`]) drive the
//! same pipeline that the listeners do.

pub mod address;
pub mod agent;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod intake;
pub mod listeners;
pub mod ops;
pub mod outbox;
pub mod pipeline;
pub mod replay;
pub mod store;
