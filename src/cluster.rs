//! The fleet's one copy of the decisions, in etcd v3.
//!
//! Under `cluster.prefix`:
//!
//! - `decisions`: the decisions in the state file's format. Every change
//!   is a transaction that compares the key's revision with the one the
//!   change was decided on, so two changes through two instances are
//!   serialized and neither is lost.
//! - `instances/NAME`: each instance's registration, `{"generation": N}`,
//!   the generation it has applied, kept under its lease: an instance that
//!   stops renewing it (killed, frozen, cut off) stops counting once the
//!   lease expires.
//! - `deploy`: the running `ctl deploy`'s lock, as the control plane
//!   encodes it, under a lease of its own: created only if absent, so one
//!   deploy runs at a time for the whole fleet, and gone when its `ctl`
//!   stops renewing it.
//!
//! This module only speaks to etcd; applying what it reads is the control
//! plane's, through its one writer. Every call is bounded by the
//! connection's request timeout, so an etcd that stops answering costs a
//! caller that timeout, never more.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use serde::{Deserialize, Serialize};

use crate::config::Cluster as ClusterConfig;
use crate::state::persist::{self, DecodeError};
use crate::state::Decisions;

/// How often an idle connection to etcd is pinged.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// The least time a ping may take before the connection counts as dead.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why etcd could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd did not answer, or answered with an error.
    #[error("etcd is unreachable: {0}")]
    Unreachable(#[from] etcd_client::Error),
    /// etcd did not answer within the time given.
    #[error("etcd did not answer within {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    /// The decisions in etcd are not in a format this version reads.
    #[error("the decisions in etcd at {key} are unreadable: {reason}")]
    Unreadable {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The decisions in etcd, and the revision they were written at.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The decisions.
    pub decisions: Decisions,
    /// The `decisions` key's `mod_revision`: what a change compares.
    pub revision: i64,
}

/// How a compare-and-swap ended.
#[derive(Debug)]
pub enum Swap {
    /// The new decisions are stored, at this revision.
    Done(i64),
    /// Another change came first: these are the decisions now.
    Lost(Stored),
}

/// One instance's registration: the generation it has applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The generation of the decisions it applies.
    pub generation: u64,
}

/// An etcd connection for one service's keys.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    decisions_key: String,
    instances_prefix: String,
    instance_key: String,
    deploy_key: String,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("decisions_key", &self.decisions_key)
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// Connects to `config.endpoints`, each request bounded by `timeout`.
    /// The connection itself is made lazily: this fails only on a
    /// malformed endpoint; etcd being away shows at the first request.
    pub async fn connect(config: &ClusterConfig, timeout: Duration) -> Result<Etcd, ClusterError> {
        // Pings every 10 s (etcd refuses clients that ping more often than
        // every 5 s) find a dead connection under watches and lease
        // renewals; a member cut off from its cluster's leader answers
        // nothing rather than stale data.
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(KEEP_ALIVE, timeout.max(KEEP_ALIVE_TIMEOUT))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let client = Client::connect(&config.endpoints, Some(options)).await?;
        Ok(Etcd {
            client,
            decisions_key: format!("{}/decisions", config.prefix),
            instances_prefix: format!("{}/instances/", config.prefix),
            instance_key: format!("{}/instances/{}", config.prefix, config.instance),
            deploy_key: format!("{}/deploy", config.prefix),
        })
    }

    /// The decisions in etcd, if any were stored yet, and etcd's revision
    /// as of the read: a watch that starts after it misses nothing (and
    /// is not refused for starting before a compaction).
    pub async fn load(&self) -> Result<(Option<Stored>, i64), ClusterError> {
        let mut client = self.client.clone();
        let response = client.get(self.decisions_key.as_str(), None).await?;
        let read_at = response.header().map_or(0, |h| h.revision());
        let stored = response
            .kvs()
            .first()
            .map(|kv| self.decode(kv.value(), kv.mod_revision()))
            .transpose()?;
        Ok((stored, read_at))
    }

    /// Stores `decisions` unless some are stored already: the first
    /// instance of a fleet seeds it. `Swap::Lost` holds those there.
    pub async fn seed(&self, decisions: &Decisions) -> Result<Swap, ClusterError> {
        let compare = Compare::create_revision(self.decisions_key.as_str(), CompareOp::Equal, 0);
        self.swap(compare, decisions).await
    }

    /// Stores `decisions` if the stored ones are still those of
    /// `revision`; else `Swap::Lost` with the newer ones.
    pub async fn compare_and_swap(
        &self,
        revision: i64,
        decisions: &Decisions,
    ) -> Result<Swap, ClusterError> {
        let compare =
            Compare::mod_revision(self.decisions_key.as_str(), CompareOp::Equal, revision);
        self.swap(compare, decisions).await
    }

    async fn swap(&self, compare: Compare, decisions: &Decisions) -> Result<Swap, ClusterError> {
        // The cluster keeps the decisions, not a watch after a switch:
        // that is the switching instance's own.
        let value = persist::encode(decisions, None);
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(self.decisions_key.as_str(), value, None)])
            .or_else([TxnOp::get(self.decisions_key.as_str(), None)]);
        let mut client = self.client.clone();
        let response = client.txn(txn).await?;
        if response.succeeded() {
            let revision = response.header().map_or(0, |h| h.revision());
            return Ok(Swap::Done(revision));
        }
        for op in response.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                if let Some(kv) = get.kvs().first() {
                    return Ok(Swap::Lost(self.decode(kv.value(), kv.mod_revision())?));
                }
            }
        }
        // Compared against a key that is gone (deleted by hand): store anew.
        Box::pin(self.seed(decisions)).await
    }

    /// Watches the decisions from `revision` on (exclusive of it).
    pub async fn watch_decisions(&self, after: i64) -> Result<WatchStream, ClusterError> {
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_start_revision(after + 1);
        Ok(client
            .watch(self.decisions_key.as_str(), Some(options))
            .await?)
    }

    /// The decisions a watch response carries, the newest last; `None` for
    /// a deletion (someone removed the key by hand).
    pub fn decisions_in(
        &self,
        response: &etcd_client::WatchResponse,
    ) -> Vec<Result<Option<Stored>, ClusterError>> {
        response
            .events()
            .iter()
            .map(|event| match (event.event_type(), event.kv()) {
                (EventType::Put, Some(kv)) => self.decode(kv.value(), kv.mod_revision()).map(Some),
                _ => Ok(None),
            })
            .collect()
    }

    /// A lease of `ttl` for this instance's registration.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64, ClusterError> {
        let mut client = self.client.clone();
        let seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        Ok(client.lease_grant(seconds, None).await?.id())
    }

    /// A channel that renews `lease`: send with the keeper, read each
    /// answer from the stream (a TTL of 0 means the lease has expired).
    pub async fn keep_alive(
        &self,
        lease: i64,
    ) -> Result<(LeaseKeeper, LeaseKeepAliveStream), ClusterError> {
        let mut client = self.client.clone();
        Ok(client.lease_keep_alive(lease).await?)
    }

    /// Gives `lease` up: this instance's registration goes at once.
    pub async fn revoke(&self, lease: i64) -> Result<(), ClusterError> {
        let mut client = self.client.clone();
        client.lease_revoke(lease).await?;
        Ok(())
    }

    /// Registers this instance under `lease` as having applied `generation`.
    pub async fn register(&self, lease: i64, generation: u64) -> Result<(), ClusterError> {
        let mut client = self.client.clone();
        let value = serde_json::to_vec(&Registration { generation }).expect("serializes");
        let options = PutOptions::new().with_lease(lease);
        client
            .put(self.instance_key.as_str(), value, Some(options))
            .await?;
        Ok(())
    }

    /// Every instance with a live lease, by name, with the generation it
    /// has applied.
    pub async fn instances(&self) -> Result<Vec<(String, u64)>, ClusterError> {
        let mut client = self.client.clone();
        let options = GetOptions::new().with_prefix();
        let response = client
            .get(self.instances_prefix.as_str(), Some(options))
            .await?;
        let mut instances: Vec<(String, u64)> = response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let name = std::str::from_utf8(kv.key())
                    .ok()?
                    .strip_prefix(&self.instances_prefix)?
                    .to_owned();
                let registration: Registration = serde_json::from_slice(kv.value()).ok()?;
                Some((name, registration.generation))
            })
            .collect();
        instances.sort();
        Ok(instances)
    }

    /// Stores the deploy lock that `value_for` makes of a new lease of
    /// `ttl`, unless a lock is there: `Ok(Ok(lease))` when taken,
    /// `Ok(Err(held))` with the lock already there.
    pub async fn take_lock(
        &self,
        value_for: impl FnOnce(i64) -> Vec<u8>,
        ttl: Duration,
    ) -> Result<Result<i64, Vec<u8>>, ClusterError> {
        let lease = self.grant_lease(ttl).await?;
        let value = value_for(lease);
        let key = self.deploy_key.as_str();
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let mut client = self.client.clone();
        let response = client.txn(txn).await?;
        if response.succeeded() {
            return Ok(Ok(lease));
        }
        // Not ours to keep; it would expire by itself.
        let _ = self.revoke(lease).await;
        let held = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        Ok(Err(held.unwrap_or_default()))
    }

    /// The deploy lock stored now, if any.
    pub async fn read_lock(&self) -> Result<Option<Vec<u8>>, ClusterError> {
        let mut client = self.client.clone();
        let response = client.get(self.deploy_key.as_str(), None).await?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Renews `lease` once, within `timeout` (a stream's answer is not
    /// bounded by the connection's request timeout): whether it was still
    /// alive.
    pub async fn renew(&self, lease: i64, timeout: Duration) -> Result<bool, ClusterError> {
        let renewal = async {
            let (mut keeper, mut renewals) = self.keep_alive(lease).await?;
            keeper.keep_alive().await?;
            Ok(renewals.message().await?.is_some_and(|r| r.ttl() > 0))
        };
        tokio::time::timeout(timeout, renewal)
            .await
            .unwrap_or(Err(ClusterError::TimedOut(timeout)))
    }

    fn decode(&self, value: &[u8], revision: i64) -> Result<Stored, ClusterError> {
        let unreadable = |reason: String| ClusterError::Unreadable {
            key: self.decisions_key.clone(),
            reason,
        };
        let text = std::str::from_utf8(value).map_err(|e| unreadable(e.to_string()))?;
        match persist::decode(text) {
            Ok((decisions, _)) => Ok(Stored {
                decisions,
                revision,
            }),
            Err(DecodeError::Corrupt(reason)) => Err(unreadable(reason)),
            Err(DecodeError::Version(found)) => Err(unreadable(format!(
                "version {found}, written by a newer switchyard"
            ))),
        }
    }
}
