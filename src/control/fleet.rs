//! One decision across many instances: the control plane's side of
//! `[cluster]`.
//!
//! The decisions live in etcd ([`crate::cluster`]); each instance applies
//! them through its one writer, as it applies its own changes:
//!
//! - At startup an instance joins: it adopts the decisions stored in etcd,
//!   or, the first of its fleet, stores its own (from `state.file`, else
//!   `initial_pool`). With etcd away, it starts from `state.file`, and
//!   without one it does not start.
//! - A change through any instance is a compare-and-swap on the revision
//!   it was decided on. Lost to another change, the newer decisions are
//!   applied and the change is decided again on them. Then the call waits
//!   for every instance with a live lease to report the new generation, at
//!   most `cluster.ack_timeout`.
//! - A task follows the decisions: it reads them, watches from their
//!   revision, applies each change, and after any break (etcd restarted,
//!   the network cut) reads them again before watching: a watch can miss
//!   events across a reconnect, a read cannot.
//! - Another keeps this instance registered under its lease with the
//!   generation it has applied, and renews the lease.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Control, ControlError, EventKind};
use crate::cluster::{ClusterError, Etcd, Stored, Swap};
use crate::config::Cluster as ClusterConfig;
use crate::shutdown::StopOnDrop;
use crate::state::persist;
use crate::state::Decisions;

/// The longest pause between two attempts to reach etcd again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The first pause after etcd was lost.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How often a change's acknowledgements are looked for.
const ACK_POLL: Duration = Duration::from_millis(10);

/// This instance's link to its fleet.
#[derive(Debug)]
pub struct Fleet {
    etcd: Etcd,
    config: ClusterConfig,
    /// The revision of the stored decisions this instance has applied; 0
    /// while it has not read them (it started with etcd away).
    revision: AtomicI64,
    /// Whether the last exchange with etcd succeeded.
    connected: AtomicBool,
    /// Every instance with a live lease, with the generation it reported,
    /// as last read.
    instances: Mutex<Vec<(String, u64)>>,
    /// Told when the generation this instance has applied changes.
    applied: Notify,
}

/// What the status document shows of the fleet.
#[derive(Debug, Clone)]
pub struct FleetStatus {
    /// `cluster.prefix`.
    pub prefix: String,
    /// This instance's name.
    pub instance: String,
    /// Whether the last exchange with etcd succeeded.
    pub connected: bool,
    /// Every instance with a live lease, with its applied generation.
    pub instances: Vec<(String, u64)>,
}

/// Why an instance could not join its fleet at startup.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// etcd did not answer within `cluster.lease_ttl`, and there is no
    /// state file to start from.
    #[error("etcd at {endpoints} did not answer within {ttl} and there is no state file to start from; start etcd, or start once without [cluster]")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// `cluster.lease_ttl`.
        ttl: String,
    },
    /// The decisions in etcd cannot be read.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl Fleet {
    /// Joins the fleet of `config`: the decisions to start from, adopted
    /// from etcd or seeded there with `local`. `restored` says whether
    /// `local` came from the state file: only then may the instance start
    /// while etcd is away.
    pub async fn join(
        config: &ClusterConfig,
        local: Decisions,
        restored: bool,
    ) -> Result<(Fleet, Decisions), JoinError> {
        let etcd = Etcd::connect(config, config.ack_timeout).await?;
        let fleet = Fleet {
            etcd,
            config: config.clone(),
            revision: AtomicI64::new(0),
            connected: AtomicBool::new(false),
            instances: Mutex::new(Vec::new()),
            applied: Notify::new(),
        };
        let deadline = Instant::now() + config.lease_ttl;
        let mut backoff = FIRST_BACKOFF;
        let stored = loop {
            let attempt = match fleet.etcd.load().await {
                Ok(Some(stored)) => Ok(stored),
                Ok(None) => match fleet.etcd.seed(&local).await {
                    Ok(Swap::Done(revision)) => {
                        info!(prefix = %config.prefix, generation = local.generation, "first of the fleet: the decisions are stored in etcd");
                        Ok(Stored {
                            decisions: local.clone(),
                            revision,
                        })
                    }
                    Ok(Swap::Lost(stored)) => Ok(stored),
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            };
            match attempt {
                Ok(stored) => break stored,
                Err(ClusterError::Unreachable(error)) => {
                    if Instant::now() + backoff >= deadline {
                        if !restored {
                            return Err(JoinError::Unreachable {
                                endpoints: config.endpoints.join(", "),
                                ttl: humantime::format_duration(config.lease_ttl).to_string(),
                            });
                        }
                        warn!(%error, "etcd is unreachable; serving the decisions of the state file until it answers");
                        return Ok((fleet, local));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(error) => return Err(error.into()),
            }
        };
        fleet.connected.store(true, Ordering::Relaxed);
        fleet.revision.store(stored.revision, Ordering::Relaxed);
        if stored.decisions != local {
            info!(
                live_pool = %stored.decisions.live_pool,
                maintenance = stored.decisions.maintenance.enabled,
                generation = stored.decisions.generation,
                "adopted the fleet's decisions"
            );
        }
        Ok((fleet, stored.decisions))
    }

    /// What the status document shows.
    pub fn status(&self) -> FleetStatus {
        FleetStatus {
            prefix: self.config.prefix.clone(),
            instance: self.config.instance.clone(),
            connected: self.connected.load(Ordering::Relaxed),
            instances: self.instances.lock().expect("instances lock").clone(),
        }
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.config.instance
    }

    fn revision(&self) -> i64 {
        self.revision.load(Ordering::Relaxed)
    }

    fn set_connected(&self, connected: bool) {
        let was = self.connected.swap(connected, Ordering::Relaxed);
        if was && !connected {
            warn!("lost etcd; serving the decisions last applied until it answers");
        } else if !was && connected {
            info!("reached etcd");
        }
    }
}

impl Control {
    /// Stores `decisions` in etcd if the stored ones are still those this
    /// instance applied. `Err(Raced)` once the newer ones are applied
    /// here: the change is to be decided again on them.
    pub(super) async fn commit_to_fleet(
        &self,
        fleet: &Fleet,
        decisions: &Decisions,
    ) -> Result<(), ControlError> {
        let unavailable = |error: ClusterError| {
            fleet.set_connected(false);
            ControlError::ClusterUnavailable(error.to_string())
        };
        if fleet.revision() == 0 {
            return Err(ControlError::ClusterUnavailable(
                "the fleet's decisions have not been read since startup".to_owned(),
            ));
        }
        match fleet
            .etcd
            .compare_and_swap(fleet.revision(), decisions)
            .await
            .map_err(unavailable)?
        {
            Swap::Done(revision) => {
                fleet.set_connected(true);
                fleet.revision.store(revision, Ordering::Relaxed);
                Ok(())
            }
            Swap::Lost(stored) => {
                fleet.set_connected(true);
                self.apply_stored(fleet, stored, true).await?;
                Err(ControlError::Raced)
            }
        }
    }

    /// Applies decisions read from etcd, if newer than those applied: the
    /// state file first, then the snapshot, as for a local change. The
    /// caller holds the writer when `locked`.
    async fn apply_stored(
        &self,
        fleet: &Fleet,
        stored: Stored,
        locked: bool,
    ) -> Result<(), ControlError> {
        let _writer = if locked {
            None
        } else {
            Some(self.writer.lock().await)
        };
        if stored.revision <= fleet.revision() {
            return Ok(());
        }
        let current = self.state.load_full();
        if stored.decisions == current.decisions {
            fleet.revision.store(stored.revision, Ordering::Relaxed);
            return Ok(());
        }
        let snapshot = current
            .with_decisions(stored.decisions.clone())
            .map_err(|missing| {
                warn!(%missing, "cannot apply the fleet's decisions: this instance's config lacks the pool; fix its config");
                ControlError::ClusterUnavailable(format!(
                    "this instance cannot apply the fleet's decisions: {missing}"
                ))
            })?;
        let path = self.state_file.clone();
        let decisions = stored.decisions.clone();
        let watch = self.pending_watch();
        let saved =
            tokio::task::spawn_blocking(move || persist::save(&path, &decisions, watch.as_ref()))
                .await
                .expect("saving the state file does not panic");
        if let Err(error) = saved {
            // Serving what the fleet decided matters more than this
            // instance's copy of it: a restart reads etcd first.
            warn!(%error, "cannot write the fleet's decisions to the state file; applying them");
        }
        self.state.store(snapshot);
        fleet.revision.store(stored.revision, Ordering::Relaxed);
        fleet.applied.notify_one();
        let d = &stored.decisions;
        info!(
            target: "audit",
            via = "cluster",
            live_pool = %d.live_pool,
            maintenance = d.maintenance.enabled,
            generation = d.generation,
            "applied the fleet's decisions"
        );
        let kind = if d.live_pool == current.decisions.live_pool {
            EventKind::Maintenance
        } else {
            EventKind::Switch
        };
        self.record(
            kind,
            format!(
                "applied the fleet's decisions: live pool {}, maintenance {}",
                d.live_pool,
                if d.maintenance.enabled { "on" } else { "off" }
            ),
        );
        Ok(())
    }

    /// Waits until every instance with a live lease reports `generation`
    /// or a later one, at most `cluster.ack_timeout`.
    pub(super) async fn await_acks(
        &self,
        fleet: &Fleet,
        generation: u64,
    ) -> Result<(), ControlError> {
        let deadline = Instant::now() + fleet.config.ack_timeout;
        // This instance reports at once, rather than when its registration
        // task next runs.
        fleet.applied.notify_one();
        loop {
            let late = match fleet.etcd.instances().await {
                Ok(instances) => {
                    fleet.set_connected(true);
                    let late: Vec<String> = instances
                        .iter()
                        .filter(|(name, applied)| {
                            *applied < generation && *name != fleet.config.instance
                        })
                        .map(|(name, _)| name.clone())
                        .collect();
                    *fleet.instances.lock().expect("instances lock") = instances;
                    late
                }
                Err(error) => {
                    fleet.set_connected(false);
                    return Err(ControlError::ClusterUnavailable(error.to_string()));
                }
            };
            if late.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                warn!(target: "audit", generation, late = %late.join(", "), "change not acknowledged by every instance in time");
                return Err(ControlError::NotAcknowledged(late));
            }
            tokio::time::sleep(ACK_POLL).await;
        }
    }

    /// Starts following the fleet's decisions and keeping this instance
    /// registered, until dropped.
    pub fn follow_fleet(self: &Arc<Self>) -> Option<(StopOnDrop, StopOnDrop)> {
        self.fleet.as_ref()?;
        let follow = StopOnDrop::spawn(self.clone().follow_decisions());
        let register = StopOnDrop::spawn(self.clone().keep_registered());
        Some((follow, register))
    }

    async fn follow_decisions(self: Arc<Self>) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.follow_once(fleet).await {
                Ok(()) => backoff = FIRST_BACKOFF,
                Err(error) => {
                    fleet.set_connected(false);
                    tracing::debug!(%error, "following the fleet's decisions broke off");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Reads the decisions, then watches them until the watch breaks.
    async fn follow_once(&self, fleet: &Fleet) -> Result<(), ClusterError> {
        match fleet.etcd.load().await? {
            Some(stored) => {
                if let Err(error) = self.apply_stored(fleet, stored, false).await {
                    warn!(%error, "cannot apply the fleet's decisions");
                }
            }
            None => {
                // Removed by hand: this instance's decisions stand in.
                let current = self.state.load_full();
                if let Swap::Done(revision) = fleet.etcd.seed(&current.decisions).await? {
                    fleet.revision.store(revision, Ordering::Relaxed);
                }
            }
        }
        fleet.set_connected(true);
        let mut stream = fleet.etcd.watch_decisions(fleet.revision()).await?;
        while let Some(response) = stream.message().await? {
            if response.canceled() {
                // Compacted past what it watched from: read again.
                return Ok(());
            }
            for stored in fleet.etcd.decisions_in(&response) {
                match stored {
                    Ok(Some(stored)) => {
                        if let Err(error) = self.apply_stored(fleet, stored, false).await {
                            warn!(%error, "cannot apply the fleet's decisions");
                        }
                    }
                    // Deleted: read again (and seed).
                    Ok(None) => return Ok(()),
                    Err(error) => warn!(%error, "unreadable decisions in etcd; ignored"),
                }
            }
        }
        Ok(())
    }

    /// Keeps this instance registered with the generation it has applied,
    /// renewing its lease every third of its time to live.
    async fn keep_registered(self: Arc<Self>) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            if let Err(error) = self.register_once(fleet).await {
                fleet.set_connected(false);
                tracing::debug!(%error, "the fleet registration broke off");
            } else {
                backoff = FIRST_BACKOFF;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn register_once(&self, fleet: &Fleet) -> Result<(), ClusterError> {
        let lease = fleet.etcd.grant_lease(fleet.config.lease_ttl).await?;
        let (mut keeper, mut renewals) = fleet.etcd.keep_alive(lease).await?;
        let mut registered = None;
        let mut renew = tokio::time::interval(fleet.config.lease_ttl / 3);
        loop {
            let generation = self.state.load().decisions.generation;
            if registered != Some(generation) {
                fleet.etcd.register(lease, generation).await?;
                registered = Some(generation);
                if let Ok(instances) = fleet.etcd.instances().await {
                    *fleet.instances.lock().expect("instances lock") = instances;
                }
            }
            tokio::select! {
                _ = renew.tick() => {
                    keeper.keep_alive().await?;
                    match renewals.message().await? {
                        Some(renewal) if renewal.ttl() > 0 => {}
                        // Expired while away: register under a new one.
                        _ => return Ok(()),
                    }
                    fleet.set_connected(true);
                    if let Ok(instances) = fleet.etcd.instances().await {
                        *fleet.instances.lock().expect("instances lock") = instances;
                    }
                }
                () = fleet.applied.notified() => {}
            }
        }
    }
}
