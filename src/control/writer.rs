//! The one writer's lock, and how a binary upgrade holds it: every change
//! waits while a new process takes over, and once it has, this process
//! changes nothing more (the new one owns the state file). Nor does one
//! that could not take its state file back after a failed upgrade.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::{Mutex, MutexGuard, OwnedMutexGuard};

use super::{Control, ControlError};

/// Held for the whole of each change, probes and fsync included.
#[derive(Debug, Default)]
pub(super) struct Writer {
    lock: Arc<Mutex<()>>,
    /// [`OPEN`], or why no change is made any more: never set back.
    refusal: AtomicU8,
}

/// Changes are made.
const OPEN: u8 = 0;
/// A new process has taken over.
const HANDED_OVER: u8 = 1;
/// The state file's lock is lost.
const UNLOCKED: u8 = 2;

impl Writer {
    /// Waits for the changes before this one; refuses once this process
    /// has handed over to a new one.
    pub(super) async fn lock(&self) -> Result<MutexGuard<'_, ()>, ControlError> {
        let guard = self.lock.lock().await;
        self.check()?;
        Ok(guard)
    }

    /// Refuses once this process has handed over, for what changes state
    /// outside the decisions (the deploy lock's file).
    pub(super) fn check(&self) -> Result<(), ControlError> {
        match self.refusal.load(Ordering::Acquire) {
            OPEN => Ok(()),
            HANDED_OVER => Err(ControlError::HandedOver),
            _ => Err(ControlError::StateFileUnlocked),
        }
    }
}

/// Every change held back while a new process takes over (see
/// `crate::upgrade`); dropped, they go on here.
#[derive(Debug)]
pub struct Frozen<'a> {
    _guard: MutexGuard<'a, ()>,
    refusal: &'a AtomicU8,
}

impl Frozen<'_> {
    /// The new process has taken over: the changes that waited, and every
    /// later one, are refused here (`handed_over`), and made there.
    pub fn hand_over(self) {
        self.refusal.store(HANDED_OVER, Ordering::Release);
    }

    /// The state file's lock could not be taken back: another process may
    /// write the file now, so this one must not.
    pub fn lose_state_file(self) {
        self.refusal.store(UNLOCKED, Ordering::Release);
    }
}

/// Every change held back, until dropped.
#[derive(Debug)]
pub struct Held {
    _guard: OwnedMutexGuard<()>,
}

impl Control {
    /// Holds every change back until the guard is dropped: a new process
    /// does, while the one it took over from may still decide requests on
    /// the decisions it had.
    pub async fn hold_changes(&self) -> Held {
        Held {
            _guard: self.writer.lock.clone().lock_owned().await,
        }
    }

    /// Holds every change back (once the one running now is done) until
    /// the guard is dropped or hands over.
    pub async fn freeze(&self) -> Result<Frozen<'_>, ControlError> {
        let guard = self.writer.lock().await?;
        Ok(Frozen {
            _guard: guard,
            refusal: &self.writer.refusal,
        })
    }
}
