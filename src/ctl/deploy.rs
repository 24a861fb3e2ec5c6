//! `switchyard ctl deploy`: the migration playbook as one guarded command.
//!
//! check → gate → migrate → verify → switch → ungate → watch, each step
//! printed as it starts and ends, recorded in the proxy's audit log, and
//! undone on failure or on SIGINT/SIGTERM: the gate this deploy turned on
//! is turned off again; a switch already made stands (an automatic
//! rollback, if the watch saw one, has already undone it); a migration
//! that ran is never undone by switchyard. The live pool never changes
//! before the switch step. The proxy holds a lock for the whole deploy,
//! so a second one, through any `ctl`, is refused.

/// A line on stdout. A closed pipe (`ctl deploy ... | head`) must not
/// stop a deploy half-way, so write errors are ignored.
macro_rules! say_out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// A line on stderr, written as [`say_out`] writes.
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod command;
mod lock;
mod signals;
mod undo;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::{ArgGroup, Args};
use http::Method;
use serde::Serialize;
use tokio::sync::watch;

use super::client::{call, expect_ok, json_body, Endpoint, Failure};
use crate::admin::api::{MaintenanceRequest, ProbeDocument, StatusDocument, SwitchRequest};
use crate::state::persist::rfc3339;
use lock::HeldLock;
use signals::listen_for_signals;
pub use signals::StopSignal;
use undo::{GateMark, GateOff};

/// How long the undo keeps trying to reach the proxy (it may be restarting).
const UNDO_PATIENCE: Duration = Duration::from_secs(30);
/// How often the watch step looks at the status.
const WATCH_POLL: Duration = Duration::from_millis(500);

/// Options of `ctl deploy`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("gate").args(["maintenance", "read_only"])))]
pub struct DeployArgs {
    /// The pool to make live.
    pub pool: String,
    /// The migration, run as `sh -c CMD` (step 3).
    #[arg(long, value_name = "CMD")]
    pub migrate: Option<String>,
    /// The verification, run as `sh -c CMD` (step 4), typically smoke tests
    /// against $SWITCHYARD_PREVIEW_URL.
    #[arg(long, value_name = "CMD")]
    pub verify: Option<String>,
    /// Turn maintenance on (full) for the migration.
    #[arg(long)]
    pub maintenance: bool,
    /// Turn read-only maintenance on for the migration (reads pass).
    #[arg(long)]
    pub read_only: bool,
    /// The 503's message while the gate is on.
    #[arg(long, requires = "gate")]
    pub message: Option<String>,
    /// After the switch, wait this long and fail if it was rolled back
    /// automatically (needs a `[switch]` section).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub watch: Option<Duration>,
    /// Skip the health probes of POOL (at check and at the switch).
    #[arg(long)]
    pub force: bool,
    /// Stop --migrate or --verify after this long (SIGTERM, then SIGKILL
    /// 10 s later) and fail the step. Without it, only the caller's own
    /// timeout applies.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Print one JSON document at the end, and nothing else, on stdout.
    #[arg(long)]
    pub json: bool,
}

/// One step as the JSON document reports it.
#[derive(Debug, Serialize)]
struct StepRecord {
    name: &'static str,
    ok: bool,
    started_at: String,
    ended_at: String,
    detail: String,
}

/// The JSON document of `--json`.
#[derive(Debug, Serialize)]
struct Report<'a> {
    ok: bool,
    pool: &'a str,
    steps: &'a [StepRecord],
}

/// Why a step failed: the detail, and whether it was an interrupt.
struct StepFailure {
    detail: String,
    interrupt: Option<StopSignal>,
}

impl From<Failure> for StepFailure {
    fn from(failure: Failure) -> StepFailure {
        StepFailure {
            detail: failure.joined(),
            interrupt: None,
        }
    }
}

fn failed(detail: impl Into<String>) -> StepFailure {
    StepFailure {
        detail: detail.into(),
        interrupt: None,
    }
}

/// A deploy under way.
struct Deploy<'a> {
    endpoint: &'a Endpoint,
    args: &'a DeployArgs,
    steps: Vec<StepRecord>,
    lock: Option<HeldLock>,
    interrupt: watch::Receiver<Option<StopSignal>>,
    /// The pool live before the deploy.
    live_before: String,
    /// `http://HOST:PORT` of the preview listener, if there is one.
    preview_url: Option<String>,
    /// Whether the gate was on before the deploy (then it is left on).
    gate_was_on: bool,
    /// Whether this deploy turned the gate on and has not turned it off.
    gate_is_ours: bool,
    /// The gate as this deploy set it, to tell it from one set since.
    our_gate: Option<GateMark>,
    /// Whether the migration started (it is never undone by switchyard).
    migrated: bool,
}

/// Runs `ctl deploy` against `endpoint`.
pub async fn run(endpoint: &Endpoint, args: &DeployArgs) -> ExitCode {
    let (interrupt, interrupted) = watch::channel(None);
    let listening = match listen_for_signals(interrupt) {
        Ok(listening) => listening,
        Err(error) => {
            say_err!("switchyard ctl: cannot listen for signals: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut deploy = Deploy {
        endpoint,
        args,
        steps: Vec::new(),
        lock: None,
        interrupt: interrupted,
        live_before: String::new(),
        preview_url: None,
        gate_was_on: false,
        gate_is_ours: false,
        our_gate: None,
        migrated: false,
    };
    let started = Instant::now();
    let outcome = deploy.playbook().await;
    let code = match &outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err((step, failure)) => {
            deploy.undo(step, failure).await;
            match failure.interrupt {
                Some(why) => ExitCode::from(why.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    };
    if let Some(lock) = deploy.lock.take() {
        lock.release(endpoint).await;
    }
    listening.abort();
    if args.json {
        let report = Report {
            ok: outcome.is_ok(),
            pool: &args.pool,
            steps: &deploy.steps,
        };
        say_out!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serializes")
        );
    } else if outcome.is_ok() {
        say_out!(
            "deploy of {} done in {:.1}s",
            args.pool,
            started.elapsed().as_secs_f64()
        );
    }
    code
}

impl Deploy<'_> {
    /// Every step, in order; the first that fails names itself.
    async fn playbook(&mut self) -> Result<(), (&'static str, StepFailure)> {
        // The lock first, so that every step, the check's start included,
        // is written to the audit log under it.
        match HeldLock::take(self.endpoint, &self.args.pool, &holder()).await {
            Ok(lock) => self.lock = Some(lock),
            Err(refused) => return Err(self.refused("check", refused.into())),
        }
        self.step("check", |d| Box::pin(d.check())).await?;
        if self.args.maintenance || self.args.read_only {
            self.step("gate", |d| Box::pin(d.gate())).await?;
        }
        if let Some(script) = self.args.migrate.clone() {
            self.migrated = true;
            self.step("migrate", move |d| Box::pin(d.command(script.clone())))
                .await?;
        }
        if let Some(script) = self.args.verify.clone() {
            self.step("verify", move |d| Box::pin(d.command(script.clone())))
                .await?;
        }
        self.step("switch", |d| Box::pin(d.switch())).await?;
        if self.gate_is_ours {
            self.step("ungate", |d| Box::pin(d.ungate())).await?;
        }
        if let Some(watch) = self.args.watch {
            self.step("watch", move |d| Box::pin(d.watch(watch)))
                .await?;
        }
        Ok(())
    }

    /// Runs one step: printed and recorded as it starts and ends; it fails
    /// at once on a signal, or if the lock was lost before it began.
    async fn step<F>(
        &mut self,
        name: &'static str,
        run: F,
    ) -> Result<(), (&'static str, StepFailure)>
    where
        F: for<'d> FnOnce(&'d mut Self) -> StepFuture<'d>,
    {
        let started_at = SystemTime::now();
        let clock = Instant::now();
        self.say(&format!("{} {name:<8} started", time_of_day(started_at)));
        if let Some(lock) = &self.lock {
            lock.record(self.endpoint, name, "started", "").await;
        }
        // Admin calls are not raced against a signal: the proxy finishes a
        // change it began whatever the caller does, so a step that sent
        // one waits for its answer, and the undo knows what was done. The
        // commands and the watch stop early by themselves.
        let interrupted = *self.interrupt.borrow();
        let outcome = match (interrupted, self.lock.as_ref().and_then(HeldLock::lost)) {
            (Some(why), _) => Err(StepFailure {
                detail: format!("{why} before it began"),
                interrupt: Some(why),
            }),
            (None, Some(why)) => Err(failed(format!("the deploy lock was lost: {why}"))),
            (None, None) => run(self).await,
        };
        let ended_at = SystemTime::now();
        let took = clock.elapsed().as_secs_f64();
        let (ok, detail) = match &outcome {
            Ok(detail) => (true, detail.clone()),
            Err(failure) => (false, failure.detail.clone()),
        };
        self.say(&format!(
            "{} {name:<8} {} in {took:.1}s: {detail}",
            time_of_day(ended_at),
            if ok { "ok" } else { "FAILED" }
        ));
        if let Some(lock) = &self.lock {
            let outcome = if ok { "ok" } else { "failed" };
            lock.record(self.endpoint, name, outcome, &detail).await;
        }
        self.steps.push(StepRecord {
            name,
            ok,
            started_at: rfc3339(started_at),
            ended_at: rfc3339(ended_at),
            detail,
        });
        outcome.map(|_| ()).map_err(|failure| (name, failure))
    }

    /// Records `name` as failed before it could begin.
    fn refused(&mut self, name: &'static str, failure: StepFailure) -> (&'static str, StepFailure) {
        let now = SystemTime::now();
        self.say(&format!(
            "{} {name:<8} FAILED: {}",
            time_of_day(now),
            failure.detail
        ));
        self.steps.push(StepRecord {
            name,
            ok: false,
            started_at: rfc3339(now),
            ended_at: rfc3339(now),
            detail: failure.detail.clone(),
        });
        (name, failure)
    }

    /// Progress: on stdout, or on stderr with `--json`.
    fn say(&self, line: &str) {
        if self.args.json {
            say_err!("{line}");
        } else {
            say_out!("{line}");
        }
    }

    /// Step 1 (the lock taken): POOL exists and is not live; `--watch` has
    /// a `[switch]` to rely on; POOL passes a probe (unless `--force`).
    async fn check(&mut self) -> Result<String, StepFailure> {
        let pool = &self.args.pool;
        let status = status(self.endpoint).await?;
        if !status.pools.contains_key(pool) {
            let known: Vec<&str> = status.pools.keys().map(String::as_str).collect();
            return Err(failed(format!(
                "pool `{pool}` is not in the config (it has {})",
                known.join(", ")
            )));
        }
        if status.live_pool == *pool {
            return Err(failed(format!("pool `{pool}` is already live")));
        }
        if self.args.watch.is_some() && status.config.switch.is_none() {
            return Err(failed(
                "--watch needs automatic rollback: add a [switch] section to the config",
            ));
        }
        self.live_before = status.live_pool.clone();
        self.gate_was_on = status.maintenance.enabled;
        self.preview_url = status.listeners.preview.as_deref().map(loopback_url);
        let mut detail = format!("{pool} exists and is not live ({} is)", status.live_pool);
        if self.args.force {
            detail.push_str("; probes skipped (--force)");
        } else {
            let path = format!("/v1/pools/{pool}/probe");
            let (code, body) = call(self.endpoint, Method::POST, &path, None).await?;
            let probe: ProbeDocument = expect_ok(code, &body, "probing the pool")?;
            let failures: Vec<String> = probe
                .upstreams
                .iter()
                .filter_map(|u| u.error.as_ref().map(|e| format!("{}: {e}", u.addr)))
                .collect();
            if !probe.passed {
                return Err(failed(format!(
                    "no upstream of {pool} passed its probe ({}); fix it or use --force",
                    failures.join("; ")
                )));
            }
            let passed = probe.upstreams.len() - failures.len();
            let _ = write!(
                detail,
                "; {passed} of {} upstreams passed a probe",
                probe.upstreams.len()
            );
        }
        Ok(detail)
    }

    /// Step 2: maintenance on, in the mode asked for. A gate that is on
    /// already (an operator's, a window's) is left as it is, end and all.
    async fn gate(&mut self) -> Result<String, StepFailure> {
        if self.gate_was_on {
            return Ok(
                "maintenance was on already: left as it is, and on after the deploy".to_owned(),
            );
        }
        let request = MaintenanceRequest {
            enabled: true,
            message: self.args.message.clone(),
            retry_after: None,
            mode: self.args.read_only.then(|| "read_only".to_owned()),
            until: None,
        };
        // Marked before the call: if it fails half-way (the answer lost),
        // the undo still turns off what may be on.
        self.gate_is_ours = true;
        let document = maintenance(self.endpoint, &request).await?;
        self.our_gate = Some(GateMark::of(&document));
        let mode = if self.args.read_only {
            "read-only maintenance"
        } else {
            "maintenance"
        };
        Ok(format!("{mode} on: \"{}\"", document.maintenance.message))
    }

    /// Steps 3 and 4: a command, with the deploy's environment.
    async fn command(&mut self, script: String) -> Result<String, StepFailure> {
        let mut env = vec![
            ("SWITCHYARD_POOL", self.args.pool.clone()),
            ("SWITCHYARD_LIVE_POOL", self.live_before.clone()),
        ];
        if let Some(url) = &self.preview_url {
            env.push(("SWITCHYARD_PREVIEW_URL", url.clone()));
        }
        let ran = command::run(
            &script,
            &env,
            self.args.json,
            self.args.timeout,
            self.interrupt.clone(),
        )
        .await;
        match ran {
            Ok(()) => Ok(format!("`{script}` exited with 0")),
            Err(command::CommandFailure::Interrupted(why)) => Err(StepFailure {
                detail: format!("`{script}`: {why}"),
                interrupt: Some(why),
            }),
            Err(failure) => Err(failed(format!("`{script}`: {failure}"))),
        }
    }

    /// Step 5: the switch, probed unless `--force`.
    async fn switch(&mut self) -> Result<String, StepFailure> {
        let body = json_body(&SwitchRequest {
            to: self.args.pool.clone(),
            force: self.args.force,
        });
        let (code, body) = call(self.endpoint, Method::POST, "/v1/switch", Some(body)).await?;
        let document: StatusDocument = expect_ok(code, &body, "switch")?;
        Ok(format!(
            "live pool is now {} (previous {}), generation {}",
            document.live_pool,
            document.previous_pool.as_deref().unwrap_or("none"),
            document.generation
        ))
    }

    /// Step 6: maintenance off, if the gate is still the one this deploy
    /// turned on (a window or an operator may have taken it over since).
    async fn ungate(&mut self) -> Result<String, StepFailure> {
        match self.gate_off_if_ours(Instant::now()).await {
            Ok(GateOff::TurnedOff) => Ok("maintenance off".to_owned()),
            Ok(GateOff::NotOurs(why)) => Ok(format!("{why}: left as it is")),
            Err(why) => Err(failed(why)),
        }
    }

    /// Step 7: waits `how_long`, and fails if the switch was rolled back.
    async fn watch(&mut self, how_long: Duration) -> Result<String, StepFailure> {
        let until = Instant::now() + how_long;
        loop {
            // A proxy that cannot be reached for a moment is asked again.
            if let Ok(status) = status(self.endpoint).await {
                if status.live_pool != self.args.pool {
                    let why = match &status.last_event {
                        Some(event) if event.kind == "auto_rollback" => {
                            format!("the switch was rolled back automatically: {}", event.reason)
                        }
                        _ => format!(
                            "the live pool changed to {} during the watch",
                            status.live_pool
                        ),
                    };
                    return Err(failed(why));
                }
            }
            if Instant::now() >= until {
                return Ok(format!(
                    "{} stayed live for {}",
                    self.args.pool,
                    humantime::format_duration(how_long)
                ));
            }
            let mut interrupt = self.interrupt.clone();
            tokio::select! {
                () = tokio::time::sleep(WATCH_POLL.min(until - Instant::now())) => {}
                why = interrupt.wait_for(Option::is_some) => {
                    let why = why.map_or(StopSignal::Terminate, |w| w.expect("waited for Some"));
                    return Err(StepFailure {
                        detail: format!("{why} during the watch"),
                        interrupt: Some(why),
                    });
                }
            }
        }
    }
}

/// A step's work, borrowing the deploy.
type StepFuture<'d> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, StepFailure>> + 'd>>;

async fn status(endpoint: &Endpoint) -> Result<StatusDocument, Failure> {
    let (code, body) = call(endpoint, Method::GET, "/v1/status", None).await?;
    expect_ok(code, &body, "status")
}

async fn maintenance(
    endpoint: &Endpoint,
    request: &MaintenanceRequest,
) -> Result<StatusDocument, Failure> {
    let body = json_body(request);
    let (code, body) = call(endpoint, Method::PUT, "/v1/maintenance", Some(body)).await?;
    expect_ok(code, &body, "maintenance change")
}

/// `http://HOST:PORT` for a listener bound to `addr`, a wildcard address
/// replaced by loopback.
fn loopback_url(addr: &str) -> String {
    let addr = match addr.parse::<std::net::SocketAddr>() {
        Ok(mut parsed) if parsed.ip().is_unspecified() => {
            let loopback: std::net::IpAddr = if parsed.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            parsed.set_ip(loopback);
            parsed.to_string()
        }
        _ => addr.to_owned(),
    };
    format!("http://{addr}")
}

/// Who runs this deploy, for the lock: `user@host pid N`.
fn holder() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "someone".to_owned());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("{user}@{host} pid {}", std::process::id())
}

/// `HH:MM:SS` (UTC) of `time`, for progress lines.
fn time_of_day(time: SystemTime) -> String {
    let text = rfc3339(time);
    text.get(11..19).unwrap_or(&text).to_owned()
}
