//! The clock's changes: a planned window starts, the gate's end comes, an
//! ended window leaves the list (see [`crate::state::schedule`]). Each is
//! made durably, as an operator's change would be, and once for a fleet:
//! the first instance's change wins the compare-and-swap, and the others,
//! deciding again on it, find nothing left to do.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::{Control, ControlError, EventKind, Via};
use crate::shutdown::StopOnDrop;
use crate::state::schedule::TimedChange;
use crate::state::Snapshot;

/// The pause before trying again to make a change the clock called for
/// (etcd away, say).
const RETRY: Duration = Duration::from_secs(1);

impl Control {
    /// Makes each timed change when it comes, and follows every change of
    /// the decisions (which may move the next one), until dropped.
    pub fn keep_schedule(self: &Arc<Self>) -> StopOnDrop {
        StopOnDrop::spawn(self.clone().follow_schedule())
    }

    async fn follow_schedule(self: Arc<Self>) {
        let mut changes = self.state.subscribe();
        // Warned once per run of failures, not every second of an outage.
        let mut warned = false;
        loop {
            let next = self.state.load().decisions.next_timed_change();
            let Some(next) = next else {
                if changes.changed().await.is_err() {
                    return;
                }
                continue;
            };
            let wait = next.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(wait) => match self.make_timed_changes().await {
                    // Made; some instances apply it late, and say so.
                    Ok(_) | Err(ControlError::NotAcknowledged(_)) => warned = false,
                    Err(error) => {
                        if !warned {
                            warn!(%error, "a planned maintenance change is due, but could not be made; trying again every second");
                            warned = true;
                        }
                        tokio::time::sleep(RETRY).await;
                    }
                },
                changed = changes.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Makes every change the clock calls for by now.
    async fn make_timed_changes(&self) -> Result<Arc<Snapshot>, ControlError> {
        self.decide(|me| async move { me.timed_changes_now().await })
            .await
    }

    async fn timed_changes_now(&self) -> Result<Arc<Snapshot>, ControlError> {
        let _writer = self.writer.lock().await?;
        let current = self.state.load_full();
        let Some((decisions, what)) = current.decisions.timed_changes(SystemTime::now()) else {
            return Ok(current);
        };
        let watch = self.pending_watch();
        let Some(committed) = self.commit(&current, decisions, watch).await? else {
            return Ok(current);
        };
        let snapshot = &committed.snapshot;
        let generation = snapshot.decisions.generation;
        let m = &snapshot.decisions.maintenance;
        let config = &snapshot.config.maintenance;
        match what {
            TimedChange::WindowStarted(id) => {
                self.record(
                    EventKind::Maintenance,
                    format!(
                        "maintenance on: window {id} started: \"{}\"",
                        m.message(config)
                    ),
                );
                info!(
                    target: "audit",
                    via = %Via::Schedule,
                    change = "maintenance",
                    window = %id,
                    to = "on",
                    mode = m.mode.as_str(),
                    gate_message = ?m.message(config),
                    until = %m.until.map(crate::state::persist::rfc3339).unwrap_or_default(),
                    generation,
                    "maintenance on: window {id} started"
                );
            }
            TimedChange::GateEnded => {
                self.record(
                    EventKind::Maintenance,
                    "maintenance off: its end came".to_owned(),
                );
                info!(
                    target: "audit",
                    via = %Via::Schedule,
                    change = "maintenance",
                    to = "off",
                    generation,
                    "maintenance off: its end came"
                );
            }
            TimedChange::WindowsEnded => {
                info!(target: "audit", via = %Via::Schedule, change = "windows", generation, "ended windows left the list");
            }
        }
        committed.answer()
    }
}
