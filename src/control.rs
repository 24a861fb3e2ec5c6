//! The control plane's one writer: every change of the decisions, and every
//! reload, goes through [`Control`].
//!
//! Each change runs under one async mutex: load the current snapshot, work
//! out the new decisions, probe if it is a switch, write the state file,
//! store the new snapshot, log it to the `audit` target. Two admin calls can
//! therefore never interleave or lose an update, and the state file always
//! holds what the data plane applies. A call that changes nothing answers
//! without a new generation and without touching the file.
//!
//! Besides the decisions, `Control` keeps what the status document reports
//! of its own activity: the last event, and the watch that follows a switch
//! when `[switch]` is configured (see [`watch`]).

mod commit;
pub mod deploy;
mod error;
mod events;
pub mod fleet;
mod schedule;
pub mod watch;
mod windows;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::config::Config;
use crate::health;
use crate::state::schedule::whole_second;
use crate::state::{
    Decisions, MaintenanceMode, MaintenanceState, PendingWatch, SharedState, Snapshot,
};
use commit::Committed;
pub use error::{ControlError, ReloadRefusal};
pub use events::{Event, EventKind, Via};
use fleet::Fleet;
pub use writer::{Frozen, Held};

/// How many times in a row a change may lose its compare-and-swap to
/// another instance's change before it is given up.
const MAX_RACES: u32 = 10;
/// The pause after a lost race, times the number of races so far.
const RACE_PAUSE: Duration = Duration::from_millis(5);

/// A requested change of the maintenance gate.
#[derive(Debug, Clone, Default)]
pub struct MaintenanceChange {
    /// On or off.
    pub enabled: bool,
    /// The 503's message; without one, the config's `maintenance.message`.
    pub message: Option<String>,
    /// The 503's `Retry-After`; without one, the config's.
    pub retry_after: Option<Duration>,
    /// Which requests the gate holds back (read-only lets reads through).
    pub mode: MaintenanceMode,
    /// When the gate turns itself off; `None` stays on until turned off.
    pub until: Option<SystemTime>,
}

/// What `Control` did last and is doing now, besides the decisions.
#[derive(Debug, Default)]
struct Journal {
    last_event: Option<Event>,
    watch: Option<watch::ActiveWatch>,
}

/// The one writer of the shared state.
#[derive(Debug)]
pub struct Control {
    state: Arc<SharedState>,
    /// The fleet this instance is one of, with `[cluster]`.
    fleet: Option<Fleet>,
    /// The state file, fixed at startup (a reload that moves it takes
    /// effect at the next restart, so decisions never split across files).
    state_file: PathBuf,
    /// Held for the whole of each change; refuses once a new process took over.
    writer: writer::Writer,
    /// Last event and running watch. A std mutex: held only to read or
    /// replace a field, never across an await.
    journal: std::sync::Mutex<Journal>,
    /// The running deploy's lock, without a fleet (a fleet's is in etcd).
    /// Held only to read or replace it.
    deploy: std::sync::Mutex<Option<deploy::HeldHere>>,
    /// Every event as it happens, for the admin API's events stream.
    events: broadcast::Sender<Event>,
    /// Itself, for the watch task to call back.
    me: Weak<Control>,
}

/// How many events a slow listener may fall behind before it misses some
/// (and is told so).
const EVENTS_BACKLOG: usize = 256;

impl Control {
    /// The writer of `state`, persisting to the state file of its config.
    /// With `fleet`, the decisions are those of a fleet of instances, held
    /// in etcd (see [`fleet`]).
    pub fn new(state: Arc<SharedState>, fleet: Option<Fleet>) -> Arc<Control> {
        let state_file = state.load().config.state.file.clone();
        Arc::new_cyclic(|me| Control {
            state,
            fleet,
            state_file,
            writer: writer::Writer::default(),
            journal: std::sync::Mutex::new(Journal::default()),
            deploy: std::sync::Mutex::new(None),
            events: broadcast::Sender::new(EVENTS_BACKLOG),
            me: me.clone(),
        })
    }

    /// The fleet's part of the status, with `[cluster]`.
    pub fn fleet_status(&self) -> Option<fleet::FleetStatus> {
        self.fleet.as_ref().map(Fleet::status)
    }

    /// The last event, if any.
    pub fn last_event(&self) -> Option<Event> {
        self.journal().last_event.clone()
    }

    /// The watch in progress, if any, with its figures so far.
    pub fn watch_status(&self) -> Option<watch::WatchStatus> {
        self.journal()
            .watch
            .as_ref()
            .map(watch::ActiveWatch::status)
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().expect("journal lock poisoned")
    }

    fn record(&self, kind: EventKind, reason: String) {
        let event = Event {
            kind,
            at: SystemTime::now(),
            reason,
        };
        self.journal().last_event = Some(event.clone());
        self.announce(event);
    }

    /// Tells the events stream's listeners, if any.
    fn announce(&self, event: Event) {
        // No listener is not an error.
        let _ = self.events.send(event);
    }

    /// Every event from now on, as it happens.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The shared state this writes.
    pub fn state(&self) -> &Arc<SharedState> {
        &self.state
    }

    /// Runs `change` on a task of its own and waits for its outcome.
    ///
    /// # Cancel safety
    ///
    /// The caller's future may be dropped at any await (an admin client
    /// that hangs up, a `ctl` killed by its timeout); the change is not.
    /// Once begun, it is written, applied and audited to the end, so the
    /// state file and the running state never part.
    async fn run_to_end<F, T>(&self, change: impl FnOnce(Arc<Control>) -> F) -> T
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let me = self
            .me
            .upgrade()
            .expect("a Control is only reached through its Arc");
        // In a fleet, every line a change logs (the audit log's above all)
        // names the instance that made it.
        let span = match &me.fleet {
            Some(fleet) => tracing::info_span!("fleet", instance = %fleet.instance()),
            None => tracing::Span::none(),
        };
        match tokio::spawn(tracing::Instrument::instrument(change(me), span)).await {
            Ok(outcome) => outcome,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }

    /// Runs a change of the decisions to its end (see [`Control::run_to_end`]):
    /// decided again whenever another instance's change came first, then,
    /// in a fleet, waited on until every instance has applied it.
    async fn decide<F, Fut>(&self, change: F) -> Result<Arc<Snapshot>, ControlError>
    where
        F: Fn(Arc<Control>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Arc<Snapshot>, ControlError>> + Send,
    {
        self.run_to_end(move |me| async move {
            let mut races = 0;
            let snapshot = loop {
                match change(me.clone()).await {
                    // Each lost race applied the newer decisions; a few in
                    // a row mean changes pour in faster than this one can
                    // be decided, and a pause lets them settle.
                    Err(ControlError::Raced) if races < MAX_RACES => {
                        races += 1;
                        tokio::time::sleep(RACE_PAUSE * races).await;
                    }
                    Err(ControlError::Raced) => {
                        return Err(ControlError::ClusterUnavailable(format!(
                            "{MAX_RACES} other changes came first in a row; nothing changed, try again"
                        )))
                    }
                    decided => break decided?,
                }
            };
            if let Some(fleet) = &me.fleet {
                me.await_acks(fleet, snapshot.decisions.generation).await?;
            }
            Ok(snapshot)
        })
        .await
    }

    /// Turns the gate on or off.
    pub async fn set_maintenance(
        &self,
        change: MaintenanceChange,
        via: Via,
    ) -> Result<Arc<Snapshot>, ControlError> {
        self.decide(move |me| {
            let change = change.clone();
            async move { me.change_maintenance(change, via).await }
        })
        .await
    }

    async fn change_maintenance(
        &self,
        change: MaintenanceChange,
        via: Via,
    ) -> Result<Arc<Snapshot>, ControlError> {
        let _writer = self.writer.lock().await?;
        let current = self.state.load_full();
        let old = &current.decisions.maintenance;
        let since = match (change.enabled, old.since) {
            (false, _) => None,
            (true, Some(since)) if old.enabled => Some(since),
            (true, _) => Some(whole_second(SystemTime::now())),
        };
        // Texts not given follow the config, on or off.
        let maintenance = MaintenanceState {
            enabled: change.enabled,
            message: change.message,
            retry_after: change.retry_after,
            since,
            // Off, nothing is held back: the next time on says again how.
            mode: if change.enabled {
                change.mode
            } else {
                MaintenanceMode::Full
            },
            // Off clears the end too.
            until: change.until.filter(|_| change.enabled),
        };
        let decisions = Decisions {
            maintenance,
            ..current.decisions.clone()
        };
        // The watch after a switch, if one runs, goes on.
        let watch = self.pending_watch();
        let Some(committed) = self.commit(&current, decisions, watch).await? else {
            return Ok(current);
        };
        let m = &committed.snapshot.decisions.maintenance;
        let config = &committed.snapshot.config.maintenance;
        self.record(
            EventKind::Maintenance,
            if m.enabled {
                format!("maintenance on: \"{}\"", m.message(config))
            } else {
                "maintenance off".to_owned()
            },
        );
        info!(
            target: "audit",
            via = %via,
            change = "maintenance",
            from = on_off(old.enabled),
            to = on_off(m.enabled),
            // Debug-quoted: a newline in a message must not forge a line.
            gate_message = ?m.message(config),
            retry_after_s = m.retry_after(config).as_secs(),
            generation = committed.snapshot.decisions.generation,
            "maintenance {}", on_off(m.enabled)
        );
        committed.answer()
    }

    /// Makes `to` live, probing it first unless `force`.
    pub async fn switch(
        &self,
        to: &str,
        force: bool,
        via: Via,
    ) -> Result<Arc<Snapshot>, ControlError> {
        let to = to.to_owned();
        self.decide(move |me| {
            let to = to.clone();
            async move { me.switch_now(&to, force, via).await }
        })
        .await
    }

    async fn switch_now(
        &self,
        to: &str,
        force: bool,
        via: Via,
    ) -> Result<Arc<Snapshot>, ControlError> {
        let _writer = self.writer.lock().await?;
        let current = self.state.load_full();
        if !current.pools.contains_key(to) {
            return Err(ControlError::UnknownPool(to.to_owned()));
        }
        if current.decisions.live_pool == to {
            return Ok(current);
        }
        self.make_live(&current, to, force, SwitchKind::Switch, via)
            .await?
            .answer()
    }

    /// Makes the previous pool live again (and the live one previous),
    /// probing it first unless `force`.
    pub async fn rollback(&self, force: bool, via: Via) -> Result<Arc<Snapshot>, ControlError> {
        self.decide(move |me| async move { me.rollback_now(force, via).await })
            .await
    }

    async fn rollback_now(&self, force: bool, via: Via) -> Result<Arc<Snapshot>, ControlError> {
        let _writer = self.writer.lock().await?;
        let current = self.state.load_full();
        let Some(to) = current.decisions.previous_pool.clone() else {
            return Err(ControlError::NoPreviousPool);
        };
        if !current.pools.contains_key(&to) {
            return Err(ControlError::PreviousPoolGone(to));
        }
        self.make_live(&current, &to, force, SwitchKind::Rollback, via)
            .await?
            .answer()
    }

    /// Makes `to` live and the live pool previous, probing `to` first
    /// unless `force`. The caller holds the writer and has checked that `to`
    /// is a pool other than the live one.
    async fn make_live(
        &self,
        current: &Snapshot,
        to: &str,
        force: bool,
        kind: SwitchKind,
        via: Via,
    ) -> Result<Committed, ControlError> {
        if !force {
            self.require_healthy(current, to).await?;
        }
        let from = current.decisions.live_pool.clone();
        let decisions = Decisions {
            live_pool: to.to_owned(),
            previous_pool: Some(from.clone()),
            ..current.decisions.clone()
        };
        // A switch starts a watch (with `[switch]`), recorded with it; a
        // rollback ends the one running.
        let watch = match (kind, current.config.switch) {
            (SwitchKind::Switch, Some(rules)) => Some(PendingWatch {
                pool: to.to_owned(),
                until: SystemTime::now() + rules.watch,
            }),
            _ => None,
        };
        let committed = self
            .commit(current, decisions, watch.clone())
            .await?
            .expect("a new live pool is a change");
        current.metrics.count_switch(kind.as_str());
        info!(
            target: "audit",
            via = %via,
            change = kind.as_str(),
            from = %from,
            to = %to,
            // An automatic rollback probes before it gets here.
            forced = force && !matches!(kind, SwitchKind::AutoRollback),
            generation = committed.snapshot.decisions.generation,
            "live pool is now {to}"
        );
        let forced = if force { " (forced)" } else { "" };
        match kind {
            SwitchKind::Switch => {
                self.record(
                    EventKind::Switch,
                    format!("switched from {from} to {to}{forced}"),
                );
                self.cancel_watch();
                if let (Some(rules), Some(pending)) = (committed.snapshot.config.switch, watch) {
                    let watch = watch::ActiveWatch::start(
                        self.me.clone(),
                        &committed.snapshot,
                        rules,
                        pending.until,
                    );
                    self.journal().watch = Some(watch);
                }
            }
            SwitchKind::Rollback => {
                self.record(
                    EventKind::Rollback,
                    format!("rolled back from {from} to {to}{forced}"),
                );
                self.cancel_watch();
            }
            // The watch that called for it has already left its slot, and
            // recorded the event with its figures.
            SwitchKind::AutoRollback => {}
        }
        Ok(committed)
    }

    /// Re-reads the config file and applies it if it is valid; otherwise
    /// keeps the old one and records the error for the status document.
    pub async fn reload(&self, via: Via) -> Result<Arc<Snapshot>, ControlError> {
        self.run_to_end(move |me| async move { me.reload_now(via).await })
            .await
    }

    async fn reload_now(&self, via: Via) -> Result<Arc<Snapshot>, ControlError> {
        let _writer = self.writer.lock().await?;
        let current = self.state.load_full();
        let path = current.config.path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .expect("config loading does not panic");
        let candidate = loaded.map_err(ReloadRefusal::Invalid).and_then(|config| {
            let config = Arc::new(config);
            current
                .with_config(config.clone())
                .map(|snapshot| (config, snapshot))
                .map_err(|missing| ReloadRefusal::RemovesLivePool {
                    path: current.config.path.clone(),
                    missing,
                })
        });
        match candidate {
            Ok((config, snapshot)) => {
                let restart = restart_only_changes(&current.config, &config);
                if !restart.is_empty() {
                    warn!(
                        keys = %restart.join(", "),
                        "config changes that take effect only after a restart"
                    );
                }
                self.state.store(snapshot);
                // Upstreams the reload kept take their new caps now that it
                // is applied (a refused one changes nothing).
                for (name, pool) in &self.state.load().pools {
                    if let Some(pool_config) = config.pools.get(name) {
                        for upstream in &pool.upstreams {
                            upstream.set_max_connections(pool_config.max_connections);
                        }
                    }
                }
                current.metrics.count_reload(true);
                self.record(
                    EventKind::Reload,
                    format!("config {} reloaded", config.path.display()),
                );
                info!(
                    target: "audit",
                    via = %via,
                    change = "reload",
                    config = %config.path.display(),
                    summary = %config.summary(),
                    generation = current.decisions.generation,
                    "config reloaded"
                );
                Ok(self.state.load_full())
            }
            Err(refusal) => {
                let lines = refusal.lines();
                warn!(
                    via = %via,
                    config = %current.config.path.display(),
                    errors = %lines.join("; "),
                    "config reload refused; the old config keeps serving"
                );
                self.state.store(current.with_reload_error(lines.clone()));
                current.metrics.count_reload(false);
                self.record(
                    EventKind::Reload,
                    format!("config reload refused: {}", lines.join("; ")),
                );
                Err(ControlError::InvalidConfig(refusal))
            }
        }
    }

    /// Probes every upstream of `pool` now (the results count as health
    /// checks), without changing anything else.
    pub async fn probe(&self, pool: &str) -> Result<Vec<health::ProbeResult>, ControlError> {
        let current = self.state.load_full();
        let target = current
            .pools
            .get(pool)
            .ok_or_else(|| ControlError::UnknownPool(pool.to_owned()))?;
        Ok(health::probe_pool(target, &current.config.health).await)
    }

    /// Probes `pool`; fails unless at least one upstream passes.
    async fn require_healthy(&self, current: &Snapshot, pool: &str) -> Result<(), ControlError> {
        let target = &current.pools[pool];
        let results = health::probe_pool(target, &current.config.health).await;
        if results.iter().any(|r| r.outcome.is_ok()) {
            Ok(())
        } else {
            Err(ControlError::PoolUnhealthy {
                pool: pool.to_owned(),
                failures: results,
            })
        }
    }
}

/// What kind of change of the live pool is made: the audit log's
/// `change` and the switch counter's `kind`.
#[derive(Debug, Clone, Copy)]
enum SwitchKind {
    /// `POST /v1/switch`.
    Switch,
    /// `POST /v1/rollback`.
    Rollback,
    /// The watch after a switch rolled it back.
    AutoRollback,
}

impl SwitchKind {
    /// The label value, and the audit log's `change`.
    fn as_str(self) -> &'static str {
        match self {
            SwitchKind::Switch => "switch",
            SwitchKind::Rollback => "rollback",
            SwitchKind::AutoRollback => "auto_rollback",
        }
    }
}

/// Keys whose new value needs a restart: the bound sockets, the state
/// file's location, and the logs.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.listener.bind != new.listener.bind {
        keys.push("listener.bind");
    }
    if old.preview.as_ref().map(|p| p.bind) != new.preview.as_ref().map(|p| p.bind) {
        keys.push("preview.bind");
    }
    if old.admin.socket != new.admin.socket {
        keys.push("admin.socket");
    }
    if old.admin.bind != new.admin.bind {
        keys.push("admin.bind");
    }
    if old.state.file != new.state.file {
        keys.push("state.file");
    }
    if old.cluster != new.cluster {
        keys.push("cluster");
    }
    if old.log.format != new.log.format {
        keys.push("log.format");
    }
    if old.log.access != new.log.access {
        keys.push("log.access");
    }
    keys
}

fn on_off(enabled: bool) -> &'static str {
    if enabled {
        "on"
    } else {
        "off"
    }
}
