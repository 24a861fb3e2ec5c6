//! `switchyard ctl`: the admin API's client for operators and pipelines.
//!
//! It finds the admin API from `--admin` (a socket path or
//! `http://HOST:PORT`), else `$SWITCHYARD_ADMIN`, else the `admin.socket` of
//! the config file. Output goes to stdout; a refusal or failure is one line
//! on stderr (plus one line per detail, such as each config problem) and
//! exit code 1.

mod client;
mod deploy;
mod render;
mod wait;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use http::Method;

use crate::admin::api::{
    BypassTokenDocument, BypassTokenRequest, MaintenanceRequest, RollbackRequest, StatusDocument,
    SwitchRequest, WindowDocument, WindowList, WindowRequest,
};
use crate::config::DEFAULT_CONFIG_PATH;
use crate::state::persist::rfc3339;
use crate::upgrade::Upgraded;
use client::{call, endpoint, expect_done, expect_ok, json_body, Failure};
use render::{pools_line, render_status, window_line};

/// Options of `ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Admin socket path, or `http://HOST:PORT` for the TCP admin listener
    /// (with `$SWITCHYARD_TOKEN` as bearer token). Default: the
    /// `admin.socket` of the config.
    #[arg(long, env = "SWITCHYARD_ADMIN", global = true)]
    pub admin: Option<String>,
    /// Config file whose `admin.socket` to use when `--admin` is not given.
    #[arg(long, env = "SWITCHYARD_CONFIG", default_value = DEFAULT_CONFIG_PATH, global = true)]
    pub config: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub action: CtlAction,
}

/// What `ctl` does.
#[derive(Debug, Subcommand)]
pub enum CtlAction {
    /// Show the live pool, maintenance, upstream health and config state.
    Status {
        /// Print the status document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Turn the maintenance gate on or off, or plan windows for it.
    #[command(subcommand)]
    Maintenance(MaintenanceAction),
    /// Make POOL live (after probing it, unless --force).
    Switch {
        /// The pool to make live.
        pool: String,
        /// Switch even if no upstream of POOL passes a health probe.
        #[arg(long)]
        force: bool,
    },
    /// Make the previous pool live again.
    Rollback {
        /// Roll back even if no upstream of the previous pool passes a probe.
        #[arg(long)]
        force: bool,
    },
    /// Re-read the config file now.
    Reload,
    /// Replace the running process with a new one of its binary (as
    /// installed now), failing no request: the new process takes over the
    /// listening sockets, the decisions and the health records; the old
    /// one drains and exits.
    Upgrade,
    /// Wait until something has happened (exit 1 if it has not in time).
    #[command(subcommand)]
    Wait(wait::WaitAction),
    /// Run a migration as one guarded command: check, gate, migrate,
    /// verify, switch, ungate, watch; undone on failure or Ctrl-C.
    Deploy(deploy::DeployArgs),
    /// Issue a bypass token (printed alone on stdout) that lets its bearer
    /// through the maintenance gate.
    BypassToken {
        /// How long it holds, e.g. `1h` (at most 30 days).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Who or what it is for, signed into it and logged.
        #[arg(long)]
        label: Option<String>,
    },
}

/// What `ctl maintenance` does.
#[derive(Debug, Subcommand)]
pub enum MaintenanceAction {
    /// Turn the gate on now.
    On {
        /// The 503's message (default: the config's `maintenance.message`).
        #[arg(long)]
        message: Option<String>,
        /// The 503's Retry-After, e.g. `10m` (default: the config's).
        #[arg(long, value_parser = humantime::parse_duration)]
        retry_after: Option<Duration>,
        /// Hold back writes only: GET, HEAD, OPTIONS and WebSocket
        /// upgrades still reach the live pool.
        #[arg(long)]
        read_only: bool,
        /// When the gate turns itself off: an RFC 3339 time
        /// (`2026-12-01T10:30:00Z`), or a duration from now (`45m`).
        #[arg(long, value_parser = parse_time)]
        until: Option<SystemTime>,
    },
    /// Turn the gate off now.
    Off,
    /// Plan a window: the gate goes on at --from and off at --until.
    Schedule {
        /// When the gate goes on: an RFC 3339 time, or a duration from now.
        #[arg(long, value_parser = parse_time)]
        from: SystemTime,
        /// When it goes off: an RFC 3339 time, or a duration from now.
        #[arg(long, value_parser = parse_time)]
        until: SystemTime,
        /// The 503's message (default: the config's `maintenance.message`).
        #[arg(long)]
        message: Option<String>,
        /// Hold back writes only while the window runs.
        #[arg(long)]
        read_only: bool,
    },
    /// List the windows not yet ended, soonest first.
    Windows {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel window ID (if it is running, the gate goes off).
    Cancel {
        /// The window's id, as `maintenance windows` lists it.
        id: String,
    },
}

/// A time on the command line: RFC 3339, or a duration from now.
fn parse_time(text: &str) -> Result<SystemTime, String> {
    if let Ok(duration) = humantime::parse_duration(text) {
        return Ok(SystemTime::now() + duration);
    }
    crate::state::persist::parse_rfc3339(text).map_err(|_| {
        format!("`{text}` is neither a time like 2026-12-01T10:30:00Z nor a duration like 45m")
    })
}

/// Runs one `ctl` command.
pub fn run(args: CtlArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("switchyard ctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let CtlAction::Deploy(deploy) = &args.action {
        return match endpoint(&args) {
            Ok(endpoint) => runtime.block_on(deploy::run(&endpoint, deploy)),
            Err(failure) => report(&failure),
        };
    }
    match runtime.block_on(execute(args)) {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(failure) => report(&failure),
    }
}

/// Prints `failure` on stderr; its exit code.
fn report(failure: &Failure) -> ExitCode {
    for line in &failure.lines {
        eprintln!("switchyard ctl: {line}");
    }
    if failure.usage {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

async fn execute(args: CtlArgs) -> Result<String, Failure> {
    let endpoint = endpoint(&args)?;
    match args.action {
        CtlAction::Status { json } => {
            let (status, body) = call(&endpoint, Method::GET, "/v1/status", None).await?;
            let document: StatusDocument = expect_ok(status, &body, "status")?;
            Ok(if json {
                String::from_utf8_lossy(&body).into_owned()
            } else {
                render_status(&document)
            })
        }
        CtlAction::Maintenance(action) => maintenance(&endpoint, action).await,
        CtlAction::Wait(action) => wait::run(&endpoint, action).await,
        CtlAction::Switch { pool, force } => {
            let body = json_body(&SwitchRequest {
                to: pool.clone(),
                force,
            });
            let (status, body) = call(&endpoint, Method::POST, "/v1/switch", Some(body)).await?;
            let document: StatusDocument =
                expect_ok(status, &body, &format!("switch to `{pool}`"))?;
            Ok(pools_line("live pool", &document))
        }
        CtlAction::Rollback { force } => {
            let body = json_body(&RollbackRequest { force });
            let (status, body) = call(&endpoint, Method::POST, "/v1/rollback", Some(body)).await?;
            let document: StatusDocument = expect_ok(status, &body, "rollback")?;
            Ok(pools_line("rolled back: live pool", &document))
        }
        CtlAction::BypassToken { ttl, label } => {
            let body = json_body(&BypassTokenRequest {
                ttl: humantime::format_duration(ttl).to_string(),
                label,
            });
            let path = "/v1/bypass-tokens";
            let (status, body) = call(&endpoint, Method::POST, path, Some(body)).await?;
            let issued: BypassTokenDocument = expect_ok(status, &body, "bypass token")?;
            eprintln!(
                "switchyard ctl: bypass token valid until {}; send it as `X-Switchyard-Bypass: TOKEN`, or open {}?token=TOKEN in a browser",
                issued.expires_at,
                crate::bypass::BROWSER_PATH
            );
            Ok(format!("{}\n", issued.token))
        }
        CtlAction::Deploy(_) => unreachable!("deploy runs on its own"),
        CtlAction::Upgrade => {
            let (status, body) = call(&endpoint, Method::POST, "/v1/upgrade", None).await?;
            let upgraded: Upgraded = expect_ok(status, &body, "upgrade")?;
            Ok(format!(
                "upgraded: pid {} (switchyard {}) took over from pid {}, which drains and exits\n",
                upgraded.pid, upgraded.version, upgraded.previous_pid
            ))
        }
        CtlAction::Reload => {
            let (status, body) = call(&endpoint, Method::POST, "/v1/reload", None).await?;
            let document: StatusDocument = expect_ok(status, &body, "reload")?;
            Ok(format!(
                "config reloaded: {} (loaded at {})\n",
                document.config.path, document.config.loaded_at
            ))
        }
    }
}

async fn maintenance(
    endpoint: &client::Endpoint,
    action: MaintenanceAction,
) -> Result<String, Failure> {
    let request = match action {
        MaintenanceAction::On {
            message,
            retry_after,
            read_only,
            until,
        } => MaintenanceRequest {
            enabled: true,
            message,
            retry_after: retry_after.map(|d| humantime::format_duration(d).to_string()),
            mode: read_only.then(|| "read_only".to_owned()),
            until: until.map(rfc3339),
        },
        MaintenanceAction::Off => MaintenanceRequest::off(),
        MaintenanceAction::Schedule {
            from,
            until,
            message,
            read_only,
        } => {
            let body = json_body(&WindowRequest {
                starts_at: rfc3339(from),
                ends_at: rfc3339(until),
                message,
                mode: read_only.then(|| "read_only".to_owned()),
            });
            let path = "/v1/maintenance/windows";
            let (status, body) = call(endpoint, Method::POST, path, Some(body)).await?;
            let window: WindowDocument = expect_ok(status, &body, "planning the window")?;
            return Ok(format!("planned {}", window_line(&window)));
        }
        MaintenanceAction::Windows { json } => {
            let path = "/v1/maintenance/windows";
            let (status, body) = call(endpoint, Method::GET, path, None).await?;
            let list: WindowList = expect_ok(status, &body, "listing the windows")?;
            if json {
                return Ok(String::from_utf8_lossy(&body).into_owned());
            }
            if list.windows.is_empty() {
                return Ok("no maintenance window planned\n".to_owned());
            }
            let mut out = String::new();
            for window in &list.windows {
                let _ = write!(out, "{}", window_line(window));
            }
            return Ok(out);
        }
        MaintenanceAction::Cancel { id } => {
            let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
            if id.is_empty() || !id.chars().all(valid) {
                return Err(Failure {
                    lines: vec![format!(
                        "`{id}` is not a window id; `maintenance windows` lists them"
                    )],
                    usage: true,
                });
            }
            let path = format!("/v1/maintenance/windows/{id}");
            let (status, body) = call(endpoint, Method::DELETE, &path, None).await?;
            expect_done(status, &body, &format!("cancelling window {id}"))?;
            return Ok(format!("window {id} cancelled\n"));
        }
    };
    let body = json_body(&request);
    let (status, body) = call(endpoint, Method::PUT, "/v1/maintenance", Some(body)).await?;
    let document: StatusDocument = expect_ok(status, &body, "maintenance change")?;
    let m = &document.maintenance;
    Ok(if m.enabled {
        let reads = if m.mode == "read_only" {
            ", read-only: reads still pass"
        } else {
            ""
        };
        let ends = match &m.until {
            Some(until) => format!(", until {until}"),
            None => String::new(),
        };
        format!(
            "maintenance on: \"{}\" (Retry-After {}s{reads}{ends}), generation {}\n",
            m.message, m.retry_after_s, document.generation
        )
    } else {
        format!("maintenance off, generation {}\n", document.generation)
    })
}
