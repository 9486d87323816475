//! One integration-test binary: shared helpers, one module per feature.

mod helpers;

mod cli;
mod corpus;
mod fixtures;
mod pipeline;
mod postfix;
mod robustness;
mod smtp;
