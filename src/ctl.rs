//! `switchyard ctl`: the admin API's client for operators and pipelines.
//!
//! It finds the admin API from `--admin` (a socket path or
//! `http://HOST:PORT`), else `$SWITCHYARD_ADMIN`, else the `admin.socket` of
//! the config file. Output goes to stdout; a refusal or failure is one line
//! on stderr (plus one line per detail, such as each config problem) and
//! exit code 1.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::admin::api::{MaintenanceRequest, RollbackRequest, StatusDocument, SwitchRequest};
use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::envelope::ErrorDocument;

/// How long `ctl` waits for the admin API (a switch probes, so allow some).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Turn the maintenance gate on or off.
    Maintenance {
        /// `on` or `off`.
        state: OnOff,
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
        #[arg(long, value_parser = parse_until)]
        until: Option<SystemTime>,
    },
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
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Gate on.
    On,
    /// Gate off.
    Off,
}

/// `--until`: an RFC 3339 time, or a duration from now.
fn parse_until(text: &str) -> Result<SystemTime, String> {
    if let Ok(duration) = humantime::parse_duration(text) {
        return Ok(SystemTime::now() + duration);
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        format!("`{text}` is neither a time like 2026-12-01T10:30:00Z nor a duration like 45m")
    })
}

/// Where the admin API is.
#[derive(Debug, Clone)]
enum Endpoint {
    Socket(PathBuf),
    Tcp {
        authority: String,
        token: Option<String>,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Socket(path) => write!(f, "admin socket {}", path.display()),
            Endpoint::Tcp { authority, .. } => write!(f, "admin API http://{authority}"),
        }
    }
}

/// A failed `ctl` call: what to print, and the exit code.
struct Failure {
    lines: Vec<String>,
    usage: bool,
}

impl Failure {
    fn one(line: impl Into<String>) -> Failure {
        Failure {
            lines: vec![line.into()],
            usage: false,
        }
    }
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
    match runtime.block_on(execute(args)) {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            for line in &failure.lines {
                eprintln!("switchyard ctl: {line}");
            }
            if failure.usage {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
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
        CtlAction::Maintenance {
            state,
            message,
            retry_after,
            read_only,
            until,
        } => {
            let extras = message.is_some() || retry_after.is_some() || read_only || until.is_some();
            if state == OnOff::Off && extras {
                return Err(Failure {
                    lines: vec![
                        "--message, --retry-after, --read-only and --until apply only to `maintenance on`"
                            .to_owned(),
                    ],
                    usage: true,
                });
            }
            let request = MaintenanceRequest {
                enabled: state == OnOff::On,
                message,
                retry_after: retry_after.map(|d| humantime::format_duration(d).to_string()),
                mode: read_only.then(|| "read_only".to_owned()),
                until: until.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            };
            let body = json_body(&request);
            let (status, body) =
                call(&endpoint, Method::PUT, "/v1/maintenance", Some(body)).await?;
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

fn pools_line(what: &str, document: &StatusDocument) -> String {
    format!(
        "{what} {} (previous {}), generation {}\n",
        document.live_pool,
        document.previous_pool.as_deref().unwrap_or("none"),
        document.generation
    )
}

/// Works out where the admin API is.
fn endpoint(args: &CtlArgs) -> Result<Endpoint, Failure> {
    if let Some(admin) = &args.admin {
        if let Some(rest) = admin.strip_prefix("http://") {
            let authority = rest.trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') {
                return Err(Failure {
                    lines: vec![format!(
                        "--admin {admin}: expected a socket path or http://HOST:PORT"
                    )],
                    usage: true,
                });
            }
            return Ok(Endpoint::Tcp {
                authority: authority.to_owned(),
                token: std::env::var("SWITCHYARD_TOKEN").ok(),
            });
        }
        if admin.starts_with("https://") {
            return Err(Failure {
                lines: vec!["--admin: the admin API speaks plain HTTP; use http://HOST:PORT or a socket path".to_owned()],
                usage: true,
            });
        }
        return Ok(Endpoint::Socket(PathBuf::from(admin)));
    }
    match Config::load(&args.config) {
        Ok(config) => Ok(Endpoint::Socket(config.admin.socket)),
        Err(error) => {
            let first = error.lines().into_iter().next().unwrap_or_default();
            Err(Failure::one(format!(
                "cannot find the admin socket from the config ({first}); pass --admin SOCKET or set SWITCHYARD_ADMIN"
            )))
        }
    }
}

/// One admin call: the status and the body of the answer.
async fn call(
    endpoint: &Endpoint,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes), Failure> {
    let exchange = async {
        match endpoint {
            Endpoint::Socket(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(|e| unreachable(endpoint, &e))?;
                exchange(stream, endpoint, method, path, body).await
            }
            Endpoint::Tcp { authority, .. } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(|e| unreachable(endpoint, &e))?;
                exchange(stream, endpoint, method, path, body).await
            }
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(Failure::one(format!(
                "{endpoint} did not answer within {}",
                humantime::format_duration(CALL_TIMEOUT)
            )))
        })
}

fn unreachable(endpoint: &Endpoint, error: &std::io::Error) -> Failure {
    Failure::one(format!(
        "cannot reach the {endpoint}: {error} (is `switchyard serve` running with this config?)"
    ))
}

async fn exchange<S>(
    stream: S,
    endpoint: &Endpoint,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes), Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let broken = |e: hyper::Error| Failure::one(format!("the {endpoint} broke off: {e}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(broken)?;
    tokio::spawn(connection);
    let mut request = Request::new(Full::new(body.clone().unwrap_or_default()));
    *request.method_mut() = method;
    *request.uri_mut() = path.parse().expect("admin paths are valid URIs");
    let headers = request.headers_mut();
    let host = match endpoint {
        Endpoint::Socket(_) => HeaderValue::from_static("switchyard"),
        Endpoint::Tcp { authority, .. } => HeaderValue::from_str(authority)
            .map_err(|_| Failure::one(format!("--admin: bad address {authority}")))?,
    };
    headers.insert(HOST, host);
    if body.is_some() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Endpoint::Tcp {
        token: Some(token), ..
    } = endpoint
    {
        let value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| Failure::one("SWITCHYARD_TOKEN holds characters a header cannot"))?;
        headers.insert(AUTHORIZATION, value);
    }
    let response = sender.send_request(request).await.map_err(broken)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(broken)?
        .to_bytes();
    Ok((status, body))
}

/// The document of a 200, or the refusal as lines to print.
fn expect_ok<T: serde::de::DeserializeOwned>(
    status: StatusCode,
    body: &Bytes,
    what: &str,
) -> Result<T, Failure> {
    if status == StatusCode::OK {
        return serde_json::from_slice(body).map_err(|e| {
            Failure::one(format!("{what}: unexpected answer from the admin API: {e}"))
        });
    }
    let Ok(ErrorDocument { error }) = serde_json::from_slice::<ErrorDocument>(body) else {
        return Err(Failure::one(format!(
            "{what} failed: the admin API answered {status}"
        )));
    };
    let mut first = format!("{what} refused ({}): {}", error.code, error.message);
    if error.code == "unauthorized" {
        first.push_str("; set SWITCHYARD_TOKEN to the admin token");
    }
    // Config problems get a line each, as `check` prints them; other
    // details (each upstream's probe error) fit on the one line.
    let mut lines = Vec::new();
    if error.code == "invalid_config" {
        lines.push(first);
        lines.extend(error.details.iter().map(|d| format!("  {d}")));
    } else {
        if !error.details.is_empty() {
            first.push_str(&format!(" ({})", error.details.join("; ")));
        }
        lines.push(first);
    }
    Err(Failure {
        lines,
        usage: false,
    })
}

fn json_body(value: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("admin requests serialize"))
}

/// The compact human view of a status document.
fn render_status(document: &StatusDocument) -> String {
    let mut out = String::new();
    let m = &document.maintenance;
    let _ = writeln!(
        out,
        "live pool     {} (previous: {})",
        document.live_pool,
        document.previous_pool.as_deref().unwrap_or("none")
    );
    if m.enabled {
        let _ = writeln!(
            out,
            "maintenance   ON{} since {}{}: \"{}\" (Retry-After {}s)",
            if m.mode == "read_only" {
                " (read-only: reads pass)"
            } else {
                ""
            },
            m.since.as_deref().unwrap_or("?"),
            m.until
                .as_ref()
                .map(|until| format!(", ends {until}"))
                .unwrap_or_default(),
            m.message,
            m.retry_after_s
        );
    } else {
        let _ = writeln!(out, "maintenance   off");
    }
    let _ = writeln!(out, "generation    {}", document.generation);
    for (name, pool) in &document.pools {
        let role = if *name == document.live_pool {
            " (live)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "pool {name}{role}: {} in flight, {} tunnels",
            pool.in_flight, pool.tunnels
        );
        for upstream in &pool.upstreams {
            let health = if upstream.healthy {
                "healthy"
            } else {
                "UNHEALTHY"
            };
            let _ = write!(out, "  {:<22} {health}", upstream.addr);
            if let Some(checked) = &upstream.last_check {
                let _ = write!(out, ", checked {checked}");
            }
            if let Some(error) = &upstream.last_error {
                let _ = write!(
                    out,
                    ", {} failures in a row, last: {error}",
                    upstream.consecutive_failures
                );
            }
            out.push('\n');
        }
    }
    if let Some(watch) = &document.watch {
        let _ = writeln!(
            out,
            "watch         {} until {}: {} errors in {} requests",
            watch.pool, watch.until, watch.errors, watch.requests
        );
    }
    if let Some(event) = &document.last_event {
        let _ = writeln!(
            out,
            "last event    {} at {}: {}",
            event.kind, event.at, event.reason
        );
    }
    if let Some(cluster) = &document.cluster {
        let _ = writeln!(
            out,
            "cluster       {} as {}, {}",
            cluster.prefix,
            cluster.instance,
            if cluster.connected {
                "connected to etcd"
            } else {
                "etcd UNREACHABLE: serving the decisions last applied"
            }
        );
        for instance in &cluster.instances {
            let behind = if instance.generation < document.generation {
                "  (behind)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {:<20} generation {}{behind}",
                instance.name, instance.generation
            );
        }
    }
    let _ = writeln!(
        out,
        "config        {} (version {}, loaded {})",
        document.config.path, document.config.version, document.config.loaded_at
    );
    match &document.config.last_reload_error {
        None => {
            let _ = writeln!(out, "last reload   ok");
        }
        Some(error) => {
            let _ = writeln!(out, "last reload   FAILED, old config still serving:");
            for line in error.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    out
}
