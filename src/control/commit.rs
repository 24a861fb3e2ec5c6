//! Committing a change: the state file first, then the snapshot, so that a
//! decision is applied if and only if it is durable.

use std::sync::Arc;

use tracing::warn;

use super::{Control, ControlError};
use crate::state::persist::{self, PersistError, Replaced};
use crate::state::{Decisions, PendingWatch, Snapshot};

impl Control {
    /// Persists and applies `decisions` if they differ from the current
    /// ones, with the next generation. `None` when nothing changed.
    /// `watch` is the watch after a switch the file records with them.
    /// On `Err`, neither the file nor the running state changed.
    pub(super) async fn commit(
        &self,
        current: &Snapshot,
        mut decisions: Decisions,
        watch: Option<PendingWatch>,
    ) -> Result<Option<Committed>, ControlError> {
        decisions.generation = current.decisions.generation;
        if decisions == current.decisions {
            return Ok(None);
        }
        decisions.generation = decisions
            .generation
            .checked_add(1)
            .ok_or(ControlError::GenerationExhausted)?;
        let snapshot = current
            .with_decisions(decisions.clone())
            .expect("changes only name pools of the config");
        // A fleet's decisions are committed in etcd first: there, a change
        // through another instance may have come first.
        if let Some(fleet) = &self.fleet {
            self.commit_to_fleet(fleet, &decisions).await?;
        }
        let path = self.state_file.clone();
        let old = current.decisions.clone();
        let old_watch = self.pending_watch();
        let replaced = tokio::task::spawn_blocking(move || {
            persist::replace(
                &path,
                (&decisions, watch.as_ref()),
                (&old, old_watch.as_ref()),
            )
        })
        .await
        .expect("saving the state file does not panic");
        let replaced = match (replaced, &self.fleet) {
            (Ok(replaced), _) => replaced,
            (Err(error), None) => return Err(error.into()),
            // The fleet has the change: this instance applies it too, and
            // says its own copy is not saved.
            (Err(error), Some(_)) => {
                warn!(%error, "the fleet has the change, but this instance's state file could not be written; applying it");
                return Ok(Some(self.apply_unsaved(snapshot, error)));
            }
        };
        let doubt = match replaced {
            Replaced::Durably => None,
            Replaced::Unconfirmed { error, restore } => {
                // The new decisions are what the file holds and what a
                // restart would apply: apply them now too, and say so.
                warn!(%error, restore_error = %restore, "the state file holds the new decisions but may not be durable; applying them");
                Some(error)
            }
        };
        self.state.store(snapshot);
        Ok(Some(Committed {
            snapshot: self.state.load_full(),
            doubt,
        }))
    }
}

impl Control {
    /// Applies `snapshot`, whose decisions the state file could not take.
    fn apply_unsaved(&self, snapshot: Snapshot, error: PersistError) -> Committed {
        self.state.store(snapshot);
        Committed {
            snapshot: self.state.load_full(),
            doubt: Some(error),
        }
    }
}

/// A change written and applied.
pub(super) struct Committed {
    /// The snapshot in force with it.
    pub(super) snapshot: Arc<Snapshot>,
    /// Set when the state file holds the change but the disk did not
    /// confirm it is durable (see [`Replaced::Unconfirmed`]).
    doubt: Option<PersistError>,
}

impl Committed {
    /// The answer to the caller: the snapshot, or the error that says the
    /// change is applied but perhaps not durable.
    pub(super) fn answer(self) -> Result<Arc<Snapshot>, ControlError> {
        match self.doubt {
            None => Ok(self.snapshot),
            Some(error) => Err(ControlError::NotDurable(error)),
        }
    }
}
