//! Thin entry point: command line -> configuration -> telemetry -> the command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    initdesk_gateway::ops::memory::return_large_blocks();
    let cli = initdesk_gateway::cli::Cli::parse();
    initdesk_gateway::ops::telemetry::init();
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
