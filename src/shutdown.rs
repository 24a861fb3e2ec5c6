//! Stopping gracefully: the signals that ask for it, and the drain.
//!
//! A server's life has three [`Phase`]s. `Serving` until asked to stop;
//! then `Draining`: listeners are closed, each connection finishes the
//! request it is on and closes, and tunnels carry on; then, when the drain
//! budget is spent, `Closing`: whatever is left is dropped. [`Tracker`]
//! counts connections and tunnels (each holds a [`Tracked`] guard) so the
//! drain knows when it is done and how much it cut off.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

/// A background task (health checks, the config watcher, the reaper of
/// idle upstream connections) that stops when this is dropped.
#[derive(Debug)]
pub struct StopOnDrop(tokio::task::JoinHandle<()>);

impl StopOnDrop {
    /// Spawns `task` on the current runtime.
    pub fn spawn(task: impl Future<Output = ()> + Send + 'static) -> StopOnDrop {
        StopOnDrop(tokio::spawn(task))
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// SIGTERM and SIGINT, caught from the moment [`StopSignals::listen`]
/// returns: one that arrived before its handler would kill the process
/// (the default action) instead of draining it.
///
/// SIGTERM is how service managers and orchestrators stop a process;
/// SIGINT is Ctrl-C in a terminal (`switchyard demo`, a foreground `serve`).
pub struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    /// Only for a program run from a terminal (the demo): its terminal
    /// closing stops it. A daemon reloads on SIGHUP instead.
    hangup: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Installs the handlers of SIGTERM and SIGINT.
    pub fn listen() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: None,
        })
    }

    /// Installs the handlers of SIGTERM, SIGINT and SIGHUP, for a program
    /// that should end with its terminal.
    pub fn listen_with_hangup() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut signals = StopSignals::listen()?;
        signals.hangup = Some(signal(SignalKind::hangup())?);
        Ok(signals)
    }

    /// Waits for any of them and says which arrived. A second signal is
    /// not needed (the drain has its own deadline).
    pub async fn recv(mut self) -> &'static str {
        let hangup = async {
            match self.hangup.as_mut() {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
            _ = hangup => "SIGHUP",
        }
    }
}

/// Waits for a stop signal, or at once if none can be listened for, and
/// logs which; `what` says what stops.
pub async fn stop_requested(signals: std::io::Result<StopSignals>, what: &str) {
    match signals {
        Ok(signals) => {
            let signal = signals.recv().await;
            tracing::info!(signal, "{what}");
        }
        Err(e) => tracing::error!(%e, "cannot listen for stop signals; stopping"),
    }
}

/// Where a server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Accepting and serving.
    Serving,
    /// Listeners closed; connections finish their current request.
    Draining,
    /// Drain budget spent; everything left is dropped.
    Closing,
}

/// Tells every connection and tunnel which phase the server is in.
#[derive(Debug)]
pub struct Lifecycle {
    phase: watch::Sender<Phase>,
    tracker: Tracker,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            phase: watch::Sender::new(Phase::Serving),
            tracker: Tracker::default(),
        }
    }
}

impl Lifecycle {
    /// A receiver that sees phase changes.
    pub fn watch(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Counts one connection or tunnel until the guard is dropped.
    pub fn track(&self) -> Tracked {
        self.tracker.track()
    }

    /// Moves to `phase` (never backwards).
    pub fn enter(&self, phase: Phase) {
        self.phase.send_if_modified(|current| {
            let advance = phase > *current;
            if advance {
                *current = phase;
            }
            advance
        });
    }

    /// Drains: waits up to `budget` for every tracked connection and tunnel
    /// to end, then closes the rest. Returns how many were cut off.
    pub async fn drain(&self, budget: std::time::Duration) -> usize {
        self.enter(Phase::Draining);
        let cut = match tokio::time::timeout(budget, self.tracker.emptied()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.active(),
        };
        self.enter(Phase::Closing);
        cut
    }

    /// Connections and tunnels alive now.
    pub fn active(&self) -> usize {
        self.tracker.active()
    }

    /// Waits until no connection or tunnel is left.
    pub async fn emptied(&self) {
        self.tracker.emptied().await;
    }
}

/// Counts live connections and tunnels.
#[derive(Debug, Clone, Default)]
pub struct Tracker(Arc<TrackerInner>);

#[derive(Debug, Default)]
struct TrackerInner {
    active: AtomicUsize,
    /// Told when `active` drops to zero.
    emptied: Notify,
}

/// One tracked connection or tunnel; uncounted on drop.
#[derive(Debug)]
pub struct Tracked(Tracker);

impl Tracker {
    /// Counts one more until the guard is dropped.
    pub fn track(&self) -> Tracked {
        self.0.active.fetch_add(1, Ordering::AcqRel);
        Tracked(self.clone())
    }

    fn active(&self) -> usize {
        self.0.active.load(Ordering::Acquire)
    }

    /// Resolves once nothing is tracked.
    pub async fn emptied(&self) {
        loop {
            let notified = self.0.emptied.notified();
            tokio::pin!(notified);
            // Register before checking, so a drop in between is not missed.
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0 .0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0 .0.emptied.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tracked_work_then_reports_what_is_left() {
        let lifecycle = Lifecycle::default();
        let quick = lifecycle.track();
        let stuck = lifecycle.track();
        let mut phase = lifecycle.watch();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(quick);
        });
        let cut = lifecycle.drain(Duration::from_secs(5)).await;
        assert_eq!(cut, 1);
        assert_eq!(*phase.borrow_and_update(), Phase::Closing);
        drop(stuck);
        assert_eq!(lifecycle.active(), 0);
        assert_eq!(lifecycle.drain(Duration::from_secs(5)).await, 0);
    }
}
