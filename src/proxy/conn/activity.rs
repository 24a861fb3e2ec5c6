//! What an HTTP/2 connection's requests tell the task that drives it: how
//! many were started and answered, which runs the head clock.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::stall::Stall;
use crate::body::{Body, Release};

/// What a connection's service shares with the task driving it.
#[derive(Debug)]
pub struct Activity {
    started: AtomicU64,
    answered: AtomicU64,
    /// Whether writes to the client are waiting, and since when.
    stall: Arc<Stall>,
}

impl Activity {
    /// Activity on a connection whose writes `stall` records.
    pub fn new(stall: Arc<Stall>) -> Activity {
        Activity {
            started: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            stall,
        }
    }

    /// The record of the connection's waiting writes.
    pub fn stall(&self) -> &Stall {
        &self.stall
    }

    /// Counts a request as started; it is answered when the returned guard
    /// is dropped (with the response body, once hyper is done with it).
    pub fn start(self: &Arc<Self>) -> Answering {
        self.started.fetch_add(1, Ordering::Relaxed);
        Answering(Some(self.clone()))
    }

    /// If every request started so far has been answered: how many.
    fn answered_if_idle(&self) -> Option<u64> {
        let answered = self.answered.load(Ordering::Acquire);
        let started = self.started.load(Ordering::Acquire);
        (answered == started).then_some(answered)
    }
}

/// The clock on a connection's next request head: it runs from the moment
/// the connection owes no answer (it opened, or answered its last request)
/// until the next request starts, and a connection whose clock runs out is
/// closed. It bounds a client that sends nothing, one that trickles a head
/// byte by byte, and an idle keep-alive connection.
///
/// hyper has a header timer of its own, but it allocates and registers a
/// new timer for every request, and reads the socket once more after each
/// answer to start it. This is one timer per connection, moved later as
/// requests are answered, which the runtime does without touching its
/// timer wheel.
pub struct HeadClock<'a> {
    activity: &'a Activity,
    timeout: Duration,
    /// How many requests had been answered when the clock last started.
    since: Option<u64>,
    deadline: Pin<&'a mut Sleep>,
}

impl<'a> HeadClock<'a> {
    /// A clock giving each head of `activity`'s connection `timeout`,
    /// kept by `deadline` (a timer of the caller's, so that it costs no
    /// allocation), which is already set for the next head.
    pub fn new(
        activity: &'a Activity,
        timeout: Duration,
        deadline: Pin<&'a mut Sleep>,
    ) -> HeadClock<'a> {
        HeadClock {
            since: activity.answered_if_idle(),
            activity,
            timeout,
            deadline,
        }
    }

    /// Ready once the connection has owed no answer for `timeout` without
    /// starting a new request. Polled after each poll of the connection,
    /// so that it sees every answer as it is given.
    pub fn poll_overdue(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(answered) = self.activity.answered_if_idle() else {
            // A request is being answered: its body and its upstream have
            // clocks of their own.
            self.since = None;
            return Poll::Pending;
        };
        if self.since != Some(answered) {
            self.since = Some(answered);
            self.deadline.as_mut().reset(Instant::now() + self.timeout);
        }
        self.deadline.as_mut().poll(cx)
    }
}

/// A request not answered yet; see [`Activity::start`].
#[derive(Debug)]
pub struct Answering(Option<Arc<Activity>>);

impl Answering {
    /// The request counts as answered when `body` is let go instead.
    pub fn until_sent(mut self, body: Body) -> Body {
        match self.0.take() {
            Some(activity) => body.on_release(activity),
            None => body,
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if let Some(activity) = self.0.take() {
            activity.release();
        }
    }
}

impl Release for Activity {
    fn release(&self) {
        self.answered.fetch_add(1, Ordering::Release);
    }
}
