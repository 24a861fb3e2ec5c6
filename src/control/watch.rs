//! The watch after a switch: count what the new live pool answers, and
//! roll back by itself if too many answers are errors.
//!
//! The figures come from the pool's request counters (the same ones the
//! metrics export), read against a baseline taken at the switch, so the
//! request path pays nothing for a watch. Errors are the pool's 5xx answers,
//! which include the proxy's own 502/503/504 for that pool; requests the
//! maintenance gate answered are not the pool's and are not counted.

use std::sync::Weak;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use tracing::{info, warn};

use super::{Control, ControlError, Event, EventKind, SwitchKind, Via};
use crate::config::SwitchWatch;
use crate::metrics::RequestCounters;
use crate::shutdown::StopOnDrop;
use crate::state::persist;
use crate::state::{PendingWatch, Snapshot};

/// How often a watch looks at its figures.
const TICK: Duration = Duration::from_millis(100);

/// A watch in progress; dropping it stops it without a verdict.
#[derive(Debug)]
pub struct ActiveWatch {
    watched: Watched,
    until: SystemTime,
    /// Stopped when the watch is dropped.
    _task: StopOnDrop,
}

/// What a watch counts: its pool's requests since the switch.
#[derive(Debug, Clone)]
struct Watched {
    /// Which watch this is.
    id: u64,
    pool: String,
    counters: RequestCounters,
    /// The counters' totals at the switch (or when the watch resumed).
    baseline: (u64, u64),
    /// Requests and errors counted before it resumed, by the process a
    /// binary upgrade took over from.
    carried: (u64, u64),
}

impl Watched {
    /// Requests and errors counted since the switch.
    fn since(&self) -> (u64, u64) {
        let (requests, errors) = self.counters.totals();
        (
            requests.saturating_sub(self.baseline.0) + self.carried.0,
            errors.saturating_sub(self.baseline.1) + self.carried.1,
        )
    }
}

/// A watch's figures, for the status document.
#[derive(Debug, Clone)]
pub struct WatchStatus {
    /// The pool watched (the new live pool).
    pub pool: String,
    /// When the watch ends.
    pub until: SystemTime,
    /// Requests it answered since the switch.
    pub requests: u64,
    /// How many of them were errors.
    pub errors: u64,
}

impl ActiveWatch {
    /// Starts watching the live pool of `snapshot` (just switched to) under
    /// `rules` until `until`; the task calls back into `control` with its
    /// verdict.
    pub(super) fn start(
        control: Weak<Control>,
        snapshot: &Snapshot,
        rules: SwitchWatch,
        until: SystemTime,
    ) -> ActiveWatch {
        ActiveWatch::resume(control, snapshot, rules, until, (0, 0))
    }

    /// [`ActiveWatch::start`], with `carried` requests and errors already
    /// counted.
    fn resume(
        control: Weak<Control>,
        snapshot: &Snapshot,
        rules: SwitchWatch,
        until: SystemTime,
        carried: (u64, u64),
    ) -> ActiveWatch {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let counters = snapshot.live.requests.clone();
        let watched = Watched {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            pool: snapshot.live.name.clone(),
            baseline: counters.totals(),
            carried,
            counters,
        };
        let left = until
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let task = StopOnDrop::spawn(run(control, watched.clone(), rules, left));
        ActiveWatch {
            watched,
            until,
            _task: task,
        }
    }

    /// Which watch this is.
    pub fn id(&self) -> u64 {
        self.watched.id
    }

    /// The pool watched.
    pub fn pool(&self) -> &str {
        &self.watched.pool
    }

    /// When it ends.
    pub fn until(&self) -> SystemTime {
        self.until
    }

    /// Its figures so far.
    pub fn status(&self) -> WatchStatus {
        let (requests, errors) = self.watched.since();
        WatchStatus {
            pool: self.watched.pool.clone(),
            until: self.until,
            requests,
            errors,
        }
    }
}

/// Whether `errors` of `requests` breach `rules`.
fn breached(requests: u64, errors: u64, rules: &SwitchWatch) -> bool {
    requests >= rules.min_requests && requests > 0 && {
        // Exact for any count a process will see.
        #[allow(clippy::cast_precision_loss)]
        let rate = errors as f64 / requests as f64;
        rate > rules.max_error_rate
    }
}

/// Watches until `left` has passed, then tells `control` the verdict.
async fn run(control: Weak<Control>, watched: Watched, rules: SwitchWatch, left: Duration) {
    let (id, pool) = (watched.id, &watched.pool);
    let until = Instant::now() + left;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let (requests, errors) = watched.since();
        if breached(requests, errors, &rules) {
            let reason = format!(
                "{errors} of {requests} requests to {pool} failed ({:.1}%), above max_error_rate {:.1}% within {} of the switch",
                percent(errors, requests),
                rules.max_error_rate * 100.0,
                humantime::format_duration(rules.watch),
            );
            if let Some(control) = control.upgrade() {
                control.auto_rollback(id, reason).await;
            }
            return;
        }
        if Instant::now() >= until {
            if let Some(control) = control.upgrade() {
                control.end_watch(id);
            }
            return;
        }
    }
}

#[allow(clippy::cast_precision_loss)]
fn percent(part: u64, whole: u64) -> f64 {
    part as f64 * 100.0 / whole as f64
}

/// The watch as the control plane runs it: recorded in the state file,
/// resumed after a restart, cancelled by the next change of the live pool,
/// and the automatic rollback it calls for.
impl Control {
    /// The watch in progress, as the state file records it.
    pub(super) fn pending_watch(&self) -> Option<PendingWatch> {
        self.journal().watch.as_ref().map(|watch| PendingWatch {
            pool: watch.pool().to_owned(),
            until: watch.until(),
        })
    }

    /// Resumes the watch the state file recorded, if its window is still
    /// open, its pool is still live and `[switch]` is still configured:
    /// a restart does not drop an automatic rollback. Its figures start
    /// from `carried` (zero after a restart; after a binary upgrade, those
    /// of the process taken over from).
    pub fn resume_watch(&self, pending: PendingWatch, carried: (u64, u64)) {
        let snapshot = self.state.load_full();
        let Some(rules) = snapshot.config.switch else {
            return;
        };
        if pending.pool != snapshot.decisions.live_pool || pending.until <= SystemTime::now() {
            return;
        }
        info!(pool = %pending.pool, until = %crate::state::persist::rfc3339(pending.until), "resuming the watch after the switch");
        let watch = ActiveWatch::resume(self.me.clone(), &snapshot, rules, pending.until, carried);
        self.journal().watch = Some(watch);
    }

    /// Stops the watch in progress, if any.
    pub(super) fn cancel_watch(&self) {
        // Dropped, its task stops without a verdict.
        drop(self.journal().watch.take());
    }

    /// Rolls back the switch that watch `id` followed: the previous pool is
    /// probed first, and if none of its upstreams passes, nothing changes
    /// and `auto_rollback_refused` is recorded. `reason` says why.
    pub(crate) async fn auto_rollback(&self, id: u64, reason: String) {
        self.run_to_end(move |me| async move { me.auto_rollback_now(id, reason).await })
            .await
    }

    async fn auto_rollback_now(&self, id: u64, reason: String) {
        // After an upgrade handed over, the new process's watch decides.
        let Ok(_writer) = self.writer.lock().await else {
            return;
        };
        // A manual switch may have cancelled this watch while it waited.
        let Some(watch) = self.journal().watch.take_if(|w| w.id() == id) else {
            return;
        };
        let current = self.state.load_full();
        let from = watch.pool().to_owned();
        let target = current
            .decisions
            .previous_pool
            .clone()
            .filter(|p| current.pools.contains_key(p) && current.decisions.live_pool == from);
        let Some(to) = target else {
            warn!(target: "audit", pool = %from, %reason, "automatic rollback impossible: no previous pool to return to");
            self.record(
                EventKind::AutoRollbackRefused,
                format!("{reason}; no previous pool to return to"),
            );
            self.forget_watch(&current).await;
            return;
        };
        if let Err(error) = self.require_healthy(&current, &to).await {
            warn!(target: "audit", pool = %from, previous = %to, %reason, %error, "automatic rollback refused: the previous pool failed its probe");
            self.record(
                EventKind::AutoRollbackRefused,
                format!("{reason}; stayed on {from}: {error}"),
            );
            self.forget_watch(&current).await;
            return;
        }
        // Probed just now; make_live need not probe again. In a fleet,
        // another instance's change may come first: it is applied, and the
        // rollback is tried again while the watched pool is still live.
        let mut current = current;
        let mut races = 0;
        let rolled_back = loop {
            let made = self
                .make_live(
                    &current,
                    &to,
                    true,
                    SwitchKind::AutoRollback,
                    Via::SwitchWatch,
                )
                .await;
            match made {
                Err(ControlError::Raced) if races < super::MAX_RACES => {
                    races += 1;
                    current = self.state.load_full();
                    if current.decisions.live_pool != from {
                        info!(target: "audit", pool = %from, %reason, "automatic rollback not needed: another change made another pool live first");
                        self.forget_watch(&current).await;
                        return;
                    }
                }
                made => break made,
            }
        };
        match rolled_back {
            Ok(_) => {
                warn!(target: "audit", from = %from, to = %to, %reason, "automatic rollback");
                self.record(
                    EventKind::AutoRollback,
                    format!("{reason}; rolled back from {from} to {to}"),
                );
            }
            Err(error) => {
                warn!(target: "audit", from = %from, to = %to, %reason, %error, "automatic rollback failed");
                self.record(
                    EventKind::AutoRollbackRefused,
                    format!("{reason}; rollback to {to} failed: {error}"),
                );
                self.forget_watch(&current).await;
            }
        }
    }

    /// A watch ended with its verdict refused: the state file stops
    /// recording it, or a restart within its window would resume it. (Best
    /// effort: the decisions in the file are those in force either way.)
    async fn forget_watch(&self, current: &Snapshot) {
        let path = self.state_file.clone();
        let decisions = current.decisions.clone();
        let saved = tokio::task::spawn_blocking(move || persist::save(&path, &decisions, None))
            .await
            .expect("saving the state file does not panic");
        if let Err(error) = saved {
            warn!(%error, "cannot clear the ended watch from the state file");
        }
    }

    /// Ends watch `id` without a verdict against its pool.
    pub(crate) fn end_watch(&self, id: u64) {
        let mut journal = self.journal();
        if let Some(watch) = journal.watch.take_if(|w| w.id() == id) {
            info!(pool = %watch.pool(), "switch watch ended: the new pool held up");
            let reason = format!("the watch of {} ended: it held up", watch.pool());
            drop(journal);
            self.announce(Event {
                kind: EventKind::WatchPassed,
                at: SystemTime::now(),
                reason,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_verdict_below_min_requests_and_a_breach_above_the_rate() {
        let rules = SwitchWatch {
            watch: Duration::from_secs(60),
            max_error_rate: 0.05,
            min_requests: 20,
        };
        assert!(!breached(19, 19, &rules), "too few requests to judge");
        assert!(!breached(20, 1, &rules), "5% is not above 5%");
        assert!(breached(20, 2, &rules));
        assert!(!breached(
            0,
            0,
            &SwitchWatch {
                min_requests: 0,
                ..rules
            }
        ));
    }
}
