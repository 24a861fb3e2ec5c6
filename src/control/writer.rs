//! The one writer's lock, and how a binary upgrade holds it: every change
//! waits while a new process takes over, and once it has, this process
//! changes nothing more (the new one owns the state file).

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Mutex, MutexGuard};

use super::{Control, ControlError};

/// Held for the whole of each change, probes and fsync included.
#[derive(Debug, Default)]
pub(super) struct Writer {
    lock: Mutex<()>,
    /// Set once a new process has taken over: never unset.
    handed_over: AtomicBool,
}

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
        match self.handed_over.load(Ordering::Acquire) {
            true => Err(ControlError::HandedOver),
            false => Ok(()),
        }
    }
}

/// Every change held back while a new process takes over (see
/// `crate::upgrade`); dropped, they go on here.
#[derive(Debug)]
pub struct Frozen<'a> {
    _guard: MutexGuard<'a, ()>,
    handed_over: &'a AtomicBool,
}

impl Frozen<'_> {
    /// The new process has taken over: the changes that waited, and every
    /// later one, are refused here (`handed_over`), and made there.
    pub fn hand_over(self) {
        self.handed_over.store(true, Ordering::Release);
    }
}

impl Control {
    /// Holds every change back (once the one running now is done) until
    /// the guard is dropped or hands over.
    pub async fn freeze(&self) -> Result<Frozen<'_>, ControlError> {
        let guard = self.writer.lock().await?;
        Ok(Frozen {
            _guard: guard,
            handed_over: &self.writer.handed_over,
        })
    }
}
