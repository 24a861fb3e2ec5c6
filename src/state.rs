//! The runtime state every request reads: one immutable [`Snapshot`] behind
//! one `ArcSwap`.
//!
//! A request calls [`SharedState::load`] once and takes what it needs (an
//! `Arc<Pool>`, the gate, a few durations) from that one snapshot, so it
//! never sees half of a change. Changes build a whole new snapshot and store
//! it; [`crate::control`] is the one writer that makes them.

pub mod gate;
pub mod persist;
pub mod schedule;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

use crate::bypass::BypassKey;
use crate::config::{Config, Maintenance, MAX_RETRY_AFTER};
use crate::metrics::Metrics;
use crate::upstream::Pool;
pub use gate::Gate;
pub use schedule::Window;

/// The decisions operators make and switchyard persists: which pool is
/// live and whether the service is in maintenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decisions {
    /// The pool the public listener routes to.
    pub live_pool: String,
    /// The pool that was live before the last switch; rollback returns to it.
    pub previous_pool: Option<String>,
    /// The maintenance gate.
    pub maintenance: MaintenanceState,
    /// Maintenance windows planned ahead, soonest first, none overlapping.
    pub windows: Vec<Window>,
    /// Increases by one with every change of the fields above.
    pub generation: u64,
}

/// A watch after a switch, as the state file keeps it, so that a restart
/// within its window resumes it instead of dropping the automatic rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWatch {
    /// The pool switched to, which the watch follows.
    pub pool: String,
    /// When the watch ends.
    pub until: std::time::SystemTime,
}

/// The maintenance gate as decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceState {
    /// Whether users get the 503.
    pub enabled: bool,
    /// The message of the 503, when the operator gave one; `None` follows
    /// the config's `maintenance.message` (through reloads, too).
    pub message: Option<String>,
    /// The `Retry-After` of the 503 (whole seconds are sent), when the
    /// operator gave one; `None` follows `maintenance.retry_after`.
    pub retry_after: Option<Duration>,
    /// When the gate was turned on; `None` while off.
    pub since: Option<SystemTime>,
    /// Which requests it holds back.
    pub mode: MaintenanceMode,
    /// When the gate turns itself off; `None` while it stays on until
    /// turned off.
    pub until: Option<SystemTime>,
}

/// Which requests the gate holds back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MaintenanceMode {
    /// Every request (but the allowed paths and addresses).
    #[default]
    Full,
    /// Every request but reads (`GET`, `HEAD`, `OPTIONS`, WebSocket
    /// upgrades): the site stays readable while writes are paused.
    ReadOnly,
}

impl MaintenanceMode {
    /// The contract's spelling: `full` or `read_only`.
    pub fn as_str(self) -> &'static str {
        match self {
            MaintenanceMode::Full => "full",
            MaintenanceMode::ReadOnly => "read_only",
        }
    }

    /// The mode spelled `text`, if it is one.
    pub fn parse(text: &str) -> Option<MaintenanceMode> {
        match text {
            "full" => Some(MaintenanceMode::Full),
            "read_only" => Some(MaintenanceMode::ReadOnly),
            _ => None,
        }
    }
}

impl MaintenanceState {
    /// The message users get, under `config`.
    pub fn message<'a>(&'a self, config: &'a Maintenance) -> &'a str {
        self.message.as_deref().unwrap_or(&config.message)
    }

    /// The `Retry-After` users get, under `config`.
    pub fn retry_after(&self, config: &Maintenance) -> Duration {
        self.retry_after.unwrap_or(config.retry_after)
    }

    /// The `Retry-After` users get at `now`: with an end, the whole seconds
    /// left until it (at least 1); else [`MaintenanceState::retry_after`].
    pub fn retry_after_now(&self, config: &Maintenance, now: SystemTime) -> Duration {
        match self.until {
            Some(until) => seconds_left(until, now),
            None => self.retry_after(config),
        }
    }
}

impl Decisions {
    /// The decisions of a first start: `initial_pool` live, gate off, with
    /// the config's maintenance texts.
    pub fn initial(config: &Config) -> Decisions {
        Decisions {
            live_pool: config.state.initial_pool.clone(),
            previous_pool: None,
            maintenance: MaintenanceState::off(),
            windows: Vec::new(),
            generation: 0,
        }
    }
}

/// How the current config came to be loaded, for the status document.
#[derive(Debug, Clone)]
pub struct ConfigInfo {
    /// When the serving config was loaded.
    pub loaded_at: SystemTime,
    /// Every problem of the last reload, if it failed; cleared by a valid one.
    pub last_reload_error: Option<Arc<[String]>>,
}

/// Everything a request needs to be routed, as of one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// The persisted decisions this snapshot applies.
    pub decisions: Decisions,
    /// The pool that serves the public listener.
    pub live: Arc<Pool>,
    /// The pool the preview listener serves: the previous pool when there is
    /// one, else the first other pool by name (the live pool if it is alone).
    pub preview: Arc<Pool>,
    /// Every pool by name.
    pub pools: BTreeMap<String, Arc<Pool>>,
    /// The maintenance answer, ready to send; `None` while the gate is off.
    pub gate: Option<Arc<Gate>>,
    /// The key of bypass tokens, with `maintenance.bypass_secret_file`.
    pub bypass: Option<BypassKey>,
    /// The config this snapshot was built from.
    pub config: Arc<Config>,
    /// When the config was loaded and how the last reload went.
    pub config_info: ConfigInfo,
    /// The process's metrics (the same for every snapshot).
    pub metrics: Arc<Metrics>,
}

/// A pool the decisions name that the config does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the live pool `{0}` is not in the config")]
pub struct MissingLivePool(pub String);

impl Snapshot {
    /// The first snapshot of a process: fresh pools.
    pub fn start(
        config: Arc<Config>,
        decisions: Decisions,
        metrics: Arc<Metrics>,
    ) -> Result<Snapshot, MissingLivePool> {
        let info = ConfigInfo {
            loaded_at: SystemTime::now(),
            last_reload_error: None,
        };
        let pools = build_pools(&config, None, &metrics);
        Snapshot::assemble(config, decisions, pools, info, metrics)
    }

    /// This snapshot with other decisions: same pools and config.
    pub fn with_decisions(&self, decisions: Decisions) -> Result<Snapshot, MissingLivePool> {
        Snapshot::assemble(
            self.config.clone(),
            decisions,
            self.pools.clone(),
            self.config_info.clone(),
            self.metrics.clone(),
        )
    }

    /// This snapshot under a newly loaded config: pools are rebuilt, but an
    /// upstream that stays keeps its counters and its idle connections.
    pub fn with_config(&self, config: Arc<Config>) -> Result<Snapshot, MissingLivePool> {
        let info = ConfigInfo {
            loaded_at: SystemTime::now(),
            last_reload_error: None,
        };
        let pools = build_pools(&config, Some(&self.pools), &self.metrics);
        Snapshot::assemble(
            config,
            self.decisions.clone(),
            pools,
            info,
            self.metrics.clone(),
        )
    }

    /// This snapshot with a failed reload recorded.
    pub fn with_reload_error(&self, lines: Vec<String>) -> Snapshot {
        Snapshot {
            decisions: self.decisions.clone(),
            live: self.live.clone(),
            preview: self.preview.clone(),
            pools: self.pools.clone(),
            gate: self.gate.clone(),
            bypass: self.bypass.clone(),
            config: self.config.clone(),
            config_info: ConfigInfo {
                loaded_at: self.config_info.loaded_at,
                last_reload_error: Some(lines.into()),
            },
            metrics: self.metrics.clone(),
        }
    }

    fn assemble(
        config: Arc<Config>,
        decisions: Decisions,
        pools: BTreeMap<String, Arc<Pool>>,
        config_info: ConfigInfo,
        metrics: Arc<Metrics>,
    ) -> Result<Snapshot, MissingLivePool> {
        let live = pools
            .get(&decisions.live_pool)
            .ok_or_else(|| MissingLivePool(decisions.live_pool.clone()))?
            .clone();
        let preview = decisions
            .previous_pool
            .as_ref()
            .and_then(|name| pools.get(name))
            .filter(|p| !Arc::ptr_eq(p, &live))
            .or_else(|| pools.values().find(|p| !Arc::ptr_eq(p, &live)))
            .unwrap_or(&live)
            .clone();
        let bypass = config
            .maintenance
            .bypass_secret
            .as_ref()
            .map(|secret| BypassKey::new(secret.as_bytes()));
        let gate = decisions.maintenance.enabled.then(|| {
            let running = decisions.windows.iter().find(|w| w.started);
            Arc::new(Gate::new(
                &config.maintenance,
                &decisions.maintenance,
                running,
                bypass.as_ref(),
            ))
        });
        Ok(Snapshot {
            decisions,
            live,
            preview,
            pools,
            gate,
            bypass,
            config,
            config_info,
            metrics,
        })
    }
}

/// The pools of `config`, keeping the upstreams that `old` pools already have.
fn build_pools(
    config: &Config,
    old: Option<&BTreeMap<String, Arc<Pool>>>,
    metrics: &Metrics,
) -> BTreeMap<String, Arc<Pool>> {
    config
        .pools
        .iter()
        .map(|(name, pool)| {
            let old = old.and_then(|pools| pools.get(name)).map(|p| p.as_ref());
            let pool = Pool::rebuild(name, pool, old, metrics.requests(name));
            (name.clone(), Arc::new(pool))
        })
        .collect()
}

/// The one place the current [`Snapshot`] lives.
#[derive(Debug)]
pub struct SharedState {
    current: ArcSwap<Snapshot>,
    /// Wakes background tasks (tunnels waiting to drain) after each store;
    /// requests never look at it.
    changes: watch::Sender<()>,
}

impl SharedState {
    /// Shared state starting at `snapshot`.
    pub fn new(snapshot: Snapshot) -> SharedState {
        SharedState {
            current: ArcSwap::from_pointee(snapshot),
            changes: watch::Sender::new(()),
        }
    }

    /// A receiver that is marked changed after every store.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changes.subscribe()
    }

    /// The current snapshot: one atomic load, no lock. Don't hold the guard
    /// across a long await; clone out what you need.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`, for work that awaits.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot whole. Only [`crate::control::Control`] (the
    /// one writer) and startup call this.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
        self.changes.send_replace(());
    }
}

/// The whole seconds from `now` until `until`, rounded up, at least 1 and
/// at most [`MAX_RETRY_AFTER`]: an end months away is still a `Retry-After`
/// no client should take literally.
pub fn seconds_left(until: SystemTime, now: SystemTime) -> Duration {
    let left = until.duration_since(now).unwrap_or_default();
    let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    Duration::from_secs(seconds.clamp(1, MAX_RETRY_AFTER.as_secs()))
}
