//! The runtime state every request reads: one immutable [`Snapshot`] behind
//! one `ArcSwap`.
//!
//! A request calls [`SharedState::load`] once and takes what it needs (an
//! `Arc<Pool>`, a few durations) from that one snapshot, so it never sees
//! half of a change. Changes build a whole new snapshot and store it; the
//! control plane that makes them serializes its writers.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::config::Config;
use crate::upstream::Pool;

/// Everything a request needs to be routed, as of one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// The pool that serves the public listener.
    pub live: Arc<Pool>,
    /// Every pool by name.
    pub pools: BTreeMap<String, Arc<Pool>>,
    /// The config this snapshot was built from.
    pub config: Arc<Config>,
}

impl Snapshot {
    /// The snapshot of a freshly loaded config: `live_pool` is live.
    ///
    /// # Panics
    /// If `live_pool` is not a pool of `config` (validation guarantees
    /// `initial_pool` is).
    pub fn new(config: Arc<Config>, live_pool: &str) -> Snapshot {
        let pools: BTreeMap<String, Arc<Pool>> = config
            .pools
            .iter()
            .map(|(name, pool)| (name.clone(), Arc::new(Pool::new(name, pool))))
            .collect();
        let live = pools
            .get(live_pool)
            .expect("validated config names the live pool")
            .clone();
        Snapshot {
            live,
            pools,
            config,
        }
    }

    /// The pool a preview listener routes to: the first pool by name that
    /// is not live, or the live pool when it is the only one.
    pub fn idle(&self) -> &Arc<Pool> {
        self.pools
            .values()
            .find(|p| !Arc::ptr_eq(p, &self.live))
            .unwrap_or(&self.live)
    }
}

/// The one place the current [`Snapshot`] lives.
#[derive(Debug)]
pub struct SharedState {
    current: ArcSwap<Snapshot>,
}

impl SharedState {
    /// Shared state starting at `snapshot`.
    pub fn new(snapshot: Snapshot) -> SharedState {
        SharedState {
            current: ArcSwap::from_pointee(snapshot),
        }
    }

    /// The current snapshot: one atomic load, no lock. Don't hold the guard
    /// across a long await; clone out what you need.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Replaces the snapshot whole.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}
