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

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Control;
use crate::config::SwitchWatch;
use crate::metrics::RequestCounters;
use crate::state::Snapshot;

/// How often a watch looks at its figures.
const TICK: Duration = Duration::from_millis(100);

/// A watch in progress.
#[derive(Debug)]
pub struct ActiveWatch {
    id: u64,
    pool: String,
    until: SystemTime,
    counters: RequestCounters,
    baseline: (u64, u64),
    task: JoinHandle<()>,
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
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pool = snapshot.live.name.clone();
        let counters = snapshot.live.requests.clone();
        let baseline = counters.totals();
        let left = until
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let task = tokio::spawn(run(
            control,
            id,
            pool.clone(),
            counters.clone(),
            baseline,
            rules,
            left,
        ));
        ActiveWatch {
            id,
            pool,
            until,
            counters,
            baseline,
            task,
        }
    }

    /// Which watch this is.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The pool watched.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// When it ends.
    pub fn until(&self) -> SystemTime {
        self.until
    }

    /// Its figures so far.
    pub fn status(&self) -> WatchStatus {
        let (requests, errors) = since(&self.counters, self.baseline);
        WatchStatus {
            pool: self.pool.clone(),
            until: self.until,
            requests,
            errors,
        }
    }

    /// Stops it without a verdict.
    pub(super) fn cancel(self) {
        self.task.abort();
    }
}

/// Requests and errors counted since `baseline`.
fn since(counters: &RequestCounters, baseline: (u64, u64)) -> (u64, u64) {
    let (requests, errors) = counters.totals();
    (
        requests.saturating_sub(baseline.0),
        errors.saturating_sub(baseline.1),
    )
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

async fn run(
    control: Weak<Control>,
    id: u64,
    pool: String,
    counters: RequestCounters,
    baseline: (u64, u64),
    rules: SwitchWatch,
    left: Duration,
) {
    let until = Instant::now() + left;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let (requests, errors) = since(&counters, baseline);
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
