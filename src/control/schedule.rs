//! The gate's end: at `until`, the gate turns itself off, durably, as if
//! `maintenance off` had been called (once for a fleet: the first
//! instance's change wins the compare-and-swap, and the others find the
//! gate already off).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::warn;

use super::{Control, MaintenanceChange, Via};
use crate::shutdown::StopOnDrop;

/// The pause before trying again to end the gate (etcd away, say).
const RETRY: Duration = Duration::from_secs(1);

impl Control {
    /// Ends the gate when its `until` comes, and follows every change of
    /// it, until dropped.
    pub fn keep_schedule(self: &Arc<Self>) -> StopOnDrop {
        StopOnDrop::spawn(self.clone().follow_schedule())
    }

    async fn follow_schedule(self: Arc<Self>) {
        let mut changes = self.state.subscribe();
        loop {
            let until = {
                let snapshot = self.state.load();
                let m = &snapshot.decisions.maintenance;
                m.until.filter(|_| m.enabled)
            };
            let Some(until) = until else {
                if changes.changed().await.is_err() {
                    return;
                }
                continue;
            };
            let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(wait) => self.end_maintenance(until).await,
                changed = changes.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Turns the gate off if it is still on with the end `until`.
    async fn end_maintenance(&self, until: SystemTime) {
        let change = MaintenanceChange {
            enabled: false,
            ending: Some(until),
            ..MaintenanceChange::default()
        };
        if let Err(error) = self.set_maintenance(change, Via::Schedule).await {
            warn!(%error, "the gate's end came, but it could not be turned off; trying again");
            tokio::time::sleep(RETRY).await;
        }
    }
}
