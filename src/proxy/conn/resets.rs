//! HTTP/2 streams that a client resets before their answer.
//!
//! hyper drops a stream's service future when the client resets it, which
//! cancels the forwarding: the upstream exchange is dropped, and with it
//! the upstream connection it was on. But a client that opens and resets
//! streams as fast as it can (the "rapid reset" attack) still has the
//! proxy start an upstream request for each, faster than any limit on
//! concurrent streams can stop. So each connection counts its resets, and
//! one that resets more than `listener.http2_max_resets` streams, and most
//! of those it opened, is sent GOAWAY and closed. (Browsers cancel a stream
//! now and then, a navigation away or a cancelled fetch; an attack resets
//! thousands.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::metrics::Metrics;

/// One HTTP/2 connection's count of streams and resets.
#[derive(Debug)]
pub struct Resets {
    /// Resets the connection may make before it is judged.
    max: u64,
    started: AtomicU64,
    reset: AtomicU64,
    flagged: AtomicBool,
    abused: Notify,
}

impl Resets {
    /// A connection that is judged once it has reset `max` streams.
    pub fn new(max: u64) -> Resets {
        Resets {
            max,
            started: AtomicU64::new(0),
            reset: AtomicU64::new(0),
            flagged: AtomicBool::new(false),
            abused: Notify::new(),
        }
    }

    /// Resets the connection may make before it is judged.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Counts a stream as started; see [`Unanswered`].
    pub fn start(self: &Arc<Self>, metrics: &Arc<Metrics>) -> Unanswered {
        self.started.fetch_add(1, Ordering::Relaxed);
        Unanswered {
            resets: Some(self.clone()),
            metrics: metrics.clone(),
        }
    }

    /// Whether the connection has reset too many of its streams.
    pub fn abusive(&self) -> bool {
        self.flagged.load(Ordering::Relaxed)
    }

    /// Resolves once the connection has reset too many of its streams.
    pub async fn abused(&self) {
        self.abused.notified().await;
    }

    fn count_reset(&self) {
        let reset = self.reset.fetch_add(1, Ordering::Relaxed) + 1;
        let started = self.started.load(Ordering::Relaxed);
        let abusive = reset >= self.max && reset * 2 > started;
        // Once: a stored permit wakes the connection's driver.
        if abusive && !self.flagged.swap(true, Ordering::Relaxed) {
            self.abused.notify_one();
        }
    }
}

/// A stream whose answer has not been given: dropped before
/// [`Unanswered::answered`], it counts as reset by the client (or lost
/// with its connection).
#[derive(Debug)]
pub struct Unanswered {
    resets: Option<Arc<Resets>>,
    metrics: Arc<Metrics>,
}

impl Unanswered {
    /// The answer is given.
    pub fn answered(mut self) {
        self.resets = None;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(resets) = self.resets.take() {
            self.metrics.count_client_reset();
            resets.count_reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_that_resets_most_of_its_streams_is_flagged_once() {
        let metrics = Arc::new(Metrics::new());
        let resets = Arc::new(Resets::new(100));
        // A browser's occasional cancel among many answers: never flagged.
        for i in 0..1000 {
            let stream = resets.start(&metrics);
            if i % 20 == 0 {
                drop(stream);
            } else {
                stream.answered();
            }
        }
        let flagged = tokio::time::timeout(std::time::Duration::from_millis(10), resets.abused());
        assert!(
            flagged.await.is_err(),
            "50 cancels in 1000 streams is not abuse"
        );

        let attacker = Arc::new(Resets::new(100));
        for _ in 0..150 {
            drop(attacker.start(&metrics));
        }
        let flagged = tokio::time::timeout(std::time::Duration::from_millis(10), attacker.abused());
        assert!(flagged.await.is_ok(), "150 resets of 150 streams is abuse");
    }
}
