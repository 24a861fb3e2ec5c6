//! Planning and cancelling maintenance windows: decisions like the others,
//! written, shared by a fleet and audited the same way.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::info;

use super::{Control, ControlError, EventKind, Via};
use crate::state::persist::rfc3339;
use crate::state::schedule::PlannedWindow;
use crate::state::{Snapshot, Window};

impl Control {
    /// Plans `planned`, and starts it at once if its start has come.
    /// Answers the window (its id is `w` and the generation that planned
    /// it) and the snapshot in force with it.
    pub async fn plan_window(
        &self,
        planned: PlannedWindow,
        via: Via,
    ) -> Result<(Window, Arc<Snapshot>), ControlError> {
        let snapshot = self
            .decide(move |me| {
                let planned = planned.clone();
                async move { me.plan_window_now(planned, via).await }
            })
            .await?;
        let id = window_id(snapshot.decisions.generation);
        let window = snapshot
            .decisions
            .windows
            .iter()
            .find(|w| w.id == id)
            .cloned()
            .expect("the window just planned is in the decisions that planned it");
        Ok((window, snapshot))
    }

    async fn plan_window_now(
        &self,
        planned: PlannedWindow,
        via: Via,
    ) -> Result<Arc<Snapshot>, ControlError> {
        let _writer = self.writer.lock().await?;
        let current = self.state.load_full();
        let generation = current.decisions.generation;
        let next = generation
            .checked_add(1)
            .ok_or(ControlError::GenerationExhausted)?;
        let id = window_id(next);
        let decisions = current
            .decisions
            .with_window(id.clone(), planned, SystemTime::now())?;
        let watch = self.pending_watch();
        let committed = self
            .commit(&current, decisions, watch)
            .await?
            .expect("a new window is a change");
        let snapshot = &committed.snapshot;
        let window = snapshot
            .decisions
            .windows
            .iter()
            .find(|w| w.id == id)
            .expect("the window just planned is in its decisions");
        let message = window
            .message
            .as_deref()
            .unwrap_or(&snapshot.config.maintenance.message);
        self.record(
            EventKind::Maintenance,
            format!(
                "window {id} planned: {} to {}{}",
                rfc3339(window.starts_at),
                rfc3339(window.ends_at),
                if window.started {
                    ", started at once"
                } else {
                    ""
                }
            ),
        );
        info!(
            target: "audit",
            via = %via,
            change = "window",
            window = %id,
            starts_at = %rfc3339(window.starts_at),
            ends_at = %rfc3339(window.ends_at),
            mode = window.mode.as_str(),
            gate_message = ?message,
            started = window.started,
            generation = snapshot.decisions.generation,
            "window {id} planned"
        );
        committed.answer()
    }

    /// Cancels window `id`; cancelling the one that holds the gate turns
    /// the gate off.
    pub async fn cancel_window(&self, id: &str, via: Via) -> Result<Arc<Snapshot>, ControlError> {
        let id = id.to_owned();
        self.decide(move |me| {
            let id = id.clone();
            async move { me.cancel_window_now(&id, via).await }
        })
        .await
    }

    async fn cancel_window_now(&self, id: &str, via: Via) -> Result<Arc<Snapshot>, ControlError> {
        let _writer = self.writer.lock().await?;
        let current = self.state.load_full();
        let Some(decisions) = current.decisions.without_window(id) else {
            return Err(ControlError::UnknownWindow(id.to_owned()));
        };
        let gate_off = current.decisions.maintenance.enabled && !decisions.maintenance.enabled;
        let watch = self.pending_watch();
        let committed = self
            .commit(&current, decisions, watch)
            .await?
            .expect("a cancelled window is a change");
        self.record(
            EventKind::Maintenance,
            if gate_off {
                format!("window {id} cancelled while it ran: maintenance off")
            } else {
                format!("window {id} cancelled")
            },
        );
        info!(
            target: "audit",
            via = %via,
            change = "window",
            window = %id,
            cancelled = true,
            maintenance_off = gate_off,
            generation = committed.snapshot.decisions.generation,
            "window {id} cancelled"
        );
        committed.answer()
    }
}

/// The id of the window planned by the change that made `generation`:
/// unique for the life of the decisions, and the same on every instance.
fn window_id(generation: u64) -> String {
    format!("w{generation}")
}
