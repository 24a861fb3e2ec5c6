//! The command line: `serve`, `check`, `demo`, `ctl`, `completions` and
//! `man`, and what each exits with.
//!
//! Exit codes: 0 done; 1 refused or failed (a one-line reason on stderr);
//! 2 usage error (from clap, before anything runs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing::info;

use crate::config::{Config, LogFormat, DEFAULT_CONFIG_PATH};
use crate::ctl::CtlArgs;
use crate::server::Server;
use crate::upgrade::Successor;

/// switchyard: a reverse proxy that holds the maintenance and blue/green
/// decisions, so database migrations stop being outages.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve(ServeArgs),
    /// Validate a config file without serving; exit 1 listing every error.
    Check(ConfigArgs),
    /// Zero-setup tour: built-in blue and green apps behind the proxy.
    Demo(DemoArgs),
    /// Drive a running proxy through its admin API.
    Ctl(CtlArgs),
    /// Print the completion script for SHELL on stdout (e.g. `switchyard
    /// completions bash > /etc/bash_completion.d/switchyard`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout: `switchyard man | man -l -`.
    Man,
}

/// Where the config file is.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Config file path.
    #[arg(long, env = "SWITCHYARD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// Options of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the config file is.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Take over the listening sockets of the process that started this
    /// one (a binary upgrade, `switchyard ctl upgrade`); standard input is
    /// the line to it.
    #[arg(long, hide = true)]
    pub take_over: bool,
}

/// What `--version` says: the version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SWITCHYARD_COMMIT"),
    ")"
);

/// Options of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address of the demo proxy (use port 0 for any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

/// The format of the log lines: `serve`'s config says (`log.format`); a
/// config that does not load is reported in text, by `serve` itself.
pub fn log_format(cli: &Cli) -> LogFormat {
    match &cli.command {
        Command::Serve(args) => Config::load(&args.config.config)
            .map(|config| config.log.format)
            .unwrap_or_default(),
        _ => LogFormat::Text,
    }
}

/// Runs a parsed command line; `definition` is the command line's
/// definition as the binary completed it (its version), for the
/// completions and the man page.
pub fn run(cli: Cli, definition: clap::Command) -> ExitCode {
    match cli.command {
        Command::Check(args) => check(&args.config),
        Command::Serve(args) => with_runtime(serve(args.config.config, args.take_over)),
        Command::Demo(args) => with_runtime(crate::demo::run(args.listen)),
        Command::Ctl(args) => crate::ctl::run(args),
        Command::Completions { shell } => {
            let mut definition = definition;
            clap_complete::generate(shell, &mut definition, "switchyard", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => match clap_mangen::Man::new(definition).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard: cannot write the man page: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs `work` on a tokio runtime sized to the CPUs this process may use.
///
/// With a single CPU (a one-core container, or a process pinned to one
/// core) the work-stealing scheduler has nobody to steal for and only adds
/// cross-thread wake-ups, so the single-threaded scheduler is used.
/// `TOKIO_WORKER_THREADS` still sizes the multi-threaded one.
fn with_runtime(work: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    let one_cpu = std::env::var_os("TOKIO_WORKER_THREADS").is_none()
        && std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(work),
        Err(e) => {
            eprintln!("switchyard: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `check`: every problem on its own line, or a one-line summary.
fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            for line in config.warning_lines() {
                eprintln!("{line}");
            }
            println!("{}: ok: {}", path.display(), config.summary());
            for (listener, cert) in config.certificates() {
                println!(
                    "  {listener} certificate {}: {}; expires {}",
                    cert.cert.display(),
                    if cert.names.is_empty() {
                        "no DNS names".to_owned()
                    } else {
                        cert.names.join(", ")
                    },
                    humantime::format_rfc3339_seconds(cert.not_after)
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.lines() {
                eprintln!("{line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `serve`: run until SIGTERM or SIGINT (or until a new process has taken
/// over), then drain and exit 0. With `take_over`, first take the sockets
/// of the process that started this one.
async fn serve(path: PathBuf, take_over: bool) -> ExitCode {
    let successor = match take_over.then(Successor::connect).transpose() {
        Ok(successor) => successor,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Each reason to stop is told to the old process too, if there is one.
    let told = successor.as_ref();
    let fail = move |lines: Vec<String>| async move {
        for line in &lines {
            eprintln!("{line}");
        }
        if let Some(successor) = told {
            successor.fail(&lines.join("; ")).await;
        }
        ExitCode::FAILURE
    };
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => return fail(e.lines()).await,
    };
    info!(pid = std::process::id(), config = %path.display(), summary = %config.summary(), "starting");
    let inherited = match &successor {
        Some(successor) => match successor.take_over(VERSION, &config.state.file).await {
            Ok(inherited) => Some(inherited),
            Err(e) => return fail(vec![format!("switchyard: cannot take over: {e}")]).await,
        },
        None => None,
    };
    let server = match Server::bind_inheriting(config, inherited).await {
        Ok(server) => server,
        Err(e) => return fail(vec![format!("switchyard: {e}")]).await,
    };
    let server = match successor {
        Some(successor) => server.succeeding(successor),
        None => server,
    };
    // Registered before anything is served: a signal that arrived before
    // its handler would kill the process (the default action).
    let stop = crate::shutdown::StopSignals::listen();
    server
        .run(crate::shutdown::stop_requested(stop, "stop requested"))
        .await;
    ExitCode::SUCCESS
}
