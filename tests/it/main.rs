//! One integration-test binary: shared helpers, one module per feature.

mod helpers;

mod api;
mod cli;
mod corpus;
mod dovecot;
mod fixtures;
mod imap;
mod outbound;
mod pipeline;
mod postfix;
mod robustness;
mod roundtrip;
mod smtp;
