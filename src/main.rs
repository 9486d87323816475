//! Thin entry point: command line -> configuration -> telemetry -> the command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let large_blocks_returned = initdesk_gateway::ops::memory::return_large_blocks();
    let cli = initdesk_gateway::cli::Cli::parse();
    initdesk_gateway::ops::telemetry::init();
    if !large_blocks_returned {
        tracing::warn!(
            "could not set the allocator's mmap threshold; memory after large messages may stay high"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("initdesk-gateway: cannot start the async runtime: {e}");
            return ExitCode::from(initdesk_gateway::cli::exit::TEMPFAIL);
        }
    };
    runtime.block_on(initdesk_gateway::cli::run(cli))
}
