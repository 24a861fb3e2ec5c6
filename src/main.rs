//! The `switchyard` binary: parse the command line, set up logging, run.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use switchyard::cli::{Cli, VERSION};
use switchyard::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// mimalloc hands memory freed by parked connections back to the system,
/// where glibc's allocator keeps it; see benches/compare/README.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Usage errors exit with 2 from here, before anything starts.
    let command = Cli::command().version(VERSION);
    let matches = command.clone().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match switchyard::cli::log_format(&cli) {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // One object per line, the event's fields flattened beside its
        // message, for log pipelines.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    switchyard::cli::run(cli, command)
}
