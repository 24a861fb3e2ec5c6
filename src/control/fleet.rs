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
/// The most a status call waits for etcd to list the instances.
const REFRESH_BUDGET: Duration = Duration::from_millis(500);
/// The most a graceful stop waits to revoke this instance's lease.
const LEAVE_BUDGET: Duration = Duration::from_secs(1);

/// Whether the caller of [`Control::apply_stored`] holds the writer.
enum Held {
    Writer,
    Nothing,
}

/// Where decisions read from etcd come from.
enum Freshness {
    /// A watch: applied only if newer (by revision) than those applied.
    Watched,
    /// A read, which may have been overtaken by a local change while it
    /// waited for the writer: applied unless older (by generation) than
    /// those applied.
    Read,
    /// The losing side of a compare-and-swap: the decisions now, read by
    /// the same transaction, always applied (etcd restored without its
    /// data counts revisions again from 1).
    Swapped,
}

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
    /// The lease this instance is registered under; 0 while none.
    lease: AtomicI64,
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
            lease: AtomicI64::new(0),
        };
        let deadline = Instant::now() + config.lease_ttl;
        let mut backoff = FIRST_BACKOFF;
        let stored = loop {
            let attempt = match fleet.etcd.load().await {
                Ok((Some(stored), _)) => Ok(stored),
                Ok((None, _)) => match fleet.etcd.seed(&local).await {
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
                    // With a state file, start from it at once: following the
                    // fleet catches up as soon as etcd answers.
                    if restored {
                        warn!(%error, "etcd is unreachable; serving the decisions of the state file until it answers");
                        return Ok((fleet, local));
                    }
                    if Instant::now() + backoff >= deadline {
                        return Err(JoinError::Unreachable {
                            endpoints: config.endpoints.join(", "),
                            ttl: humantime::format_duration(config.lease_ttl).to_string(),
                        });
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

    /// Keeps `instances` as the last read of the fleet's registrations.
    fn remember(&self, instances: Vec<(String, u64)>) {
        *self.instances.lock().expect("instances lock") = instances;
    }

    /// The fleet's etcd, for the deploy lock.
    pub(super) fn etcd(&self) -> &Etcd {
        &self.etcd
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
            ControlError::ClusterUnavailable(format!(
                "{error}; the change was not applied (if etcd received it before it stopped answering, it lands when etcd is back, and status then shows it)"
            ))
        };
        if fleet.revision() == 0 {
            // Started while etcd was away, and not caught up yet: read the
            // fleet's decisions now, and decide the change again on them.
            let (stored, _) = fleet.etcd.load().await.map_err(unavailable)?;
            if let Some(stored) = stored {
                fleet.set_connected(true);
                self.apply_stored(fleet, stored, Held::Writer, Freshness::Swapped)
                    .await?;
                return Err(ControlError::Raced);
            }
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
                // The same transaction read them: they are the decisions
                // now, whatever revision this instance thought it had.
                fleet.set_connected(true);
                self.apply_stored(fleet, stored, Held::Writer, Freshness::Swapped)
                    .await?;
                Err(ControlError::Raced)
            }
        }
    }

    /// Applies decisions read from etcd: the state file first, then the
    /// snapshot, as for a local change. A watch's are applied only if
    /// newer than those applied; a read's are the decisions now, even at a
    /// lower revision (etcd restored without its data starts counting
    /// again).
    async fn apply_stored(
        &self,
        fleet: &Fleet,
        stored: Stored,
        held: Held,
        freshness: Freshness,
    ) -> Result<(), ControlError> {
        let _writer = match held {
            Held::Writer => None,
            Held::Nothing => Some(self.writer.lock().await?),
        };
        let current = self.state.load_full();
        let stale = match freshness {
            Freshness::Watched => stored.revision <= fleet.revision(),
            Freshness::Read => stored.decisions.generation < current.decisions.generation,
            Freshness::Swapped => false,
        };
        if stale {
            return Ok(());
        }
        if stored.decisions == current.decisions {
            fleet.revision.store(stored.revision, Ordering::Relaxed);
            return Ok(());
        }
        let snapshot = current
            .with_decisions(stored.decisions.clone())
            .map_err(|missing| {
                warn!(%missing, "cannot apply the fleet's decisions: this instance's config lacks the pool; fix its config");
                ControlError::ClusterUnavailable(format!(
                    "this instance cannot apply the fleet's decisions ({missing}): add the pool to its config; nothing changed"
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
            let left = deadline.saturating_duration_since(Instant::now());
            let read = tokio::time::timeout(left.max(ACK_POLL), fleet.etcd.instances()).await;
            let late = match read {
                Ok(Ok(instances)) => {
                    fleet.set_connected(true);
                    let late: Vec<String> = instances
                        .iter()
                        .filter(|(name, applied)| {
                            *applied < generation && *name != fleet.config.instance
                        })
                        .map(|(name, _)| name.clone())
                        .collect();
                    fleet.remember(instances);
                    late
                }
                Ok(Err(error)) if Instant::now() < deadline => {
                    tracing::debug!(%error, "cannot read the acknowledgements yet");
                    tokio::time::sleep(ACK_POLL).await;
                    continue;
                }
                Ok(Err(_)) | Err(_) => {
                    fleet.set_connected(false);
                    return Err(ControlError::ClusterUnavailable(
                        "the change is committed and applied here, but etcd stopped answering before every instance was confirmed; status shows where each one stands".to_owned(),
                    ));
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

    /// Reads every instance's registration again, within a short budget
    /// (the status document shows the last read if etcd does not answer).
    pub async fn refresh_fleet(&self) {
        let Some(fleet) = &self.fleet else { return };
        match tokio::time::timeout(REFRESH_BUDGET, fleet.etcd.instances()).await {
            Ok(Ok(instances)) => {
                fleet.set_connected(true);
                fleet.remember(instances);
            }
            Ok(Err(_)) | Err(_) => fleet.set_connected(false),
        }
    }

    /// Leaves the fleet at a graceful stop: the registration goes at once,
    /// so that no change waits for this instance to acknowledge it.
    pub async fn leave_fleet(&self) {
        let Some(fleet) = &self.fleet else { return };
        let lease = fleet.lease.swap(0, Ordering::Relaxed);
        if lease != 0 {
            let revoked = tokio::time::timeout(LEAVE_BUDGET, fleet.etcd.revoke(lease)).await;
            if !matches!(revoked, Ok(Ok(()))) {
                tracing::debug!("could not revoke the fleet lease; it expires by itself");
            }
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
        let (stored, read_at) = fleet.etcd.load().await?;
        match stored {
            Some(stored) => {
                let applied = self
                    .apply_stored(fleet, stored, Held::Nothing, Freshness::Read)
                    .await;
                if let Err(error) = applied {
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
        let mut stream = fleet.etcd.watch_decisions(read_at).await?;
        while let Some(response) = stream.message().await? {
            if response.canceled() {
                // Compacted past what it watched from: read again.
                return Ok(());
            }
            for stored in fleet.etcd.decisions_in(&response) {
                match stored {
                    Ok(Some(stored)) => {
                        let applied = self
                            .apply_stored(fleet, stored, Held::Nothing, Freshness::Watched)
                            .await;
                        if let Err(error) = applied {
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
        fleet.lease.store(lease, Ordering::Relaxed);
        let (mut keeper, mut renewals) = fleet.etcd.keep_alive(lease).await?;
        let mut registered = None;
        let mut renew = tokio::time::interval(fleet.config.lease_ttl / 3);
        loop {
            let generation = self.state.load().decisions.generation;
            if registered != Some(generation) {
                fleet.etcd.register(lease, generation).await?;
                registered = Some(generation);
                if let Ok(instances) = fleet.etcd.instances().await {
                    fleet.remember(instances);
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
                    // Written again each time: a registration deleted by
                    // hand (or by an older process of the same name whose
                    // lease lapsed) comes back within a renewal.
                    registered = None;
                }
                () = fleet.applied.notified() => {}
            }
        }
    }
}
