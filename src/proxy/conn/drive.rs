//! Running one HTTP/2 connection (hyper's) to its end, within its bounds:
//! the head clock, the send stall, reset abuse, and the server's drain.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::activity::{Activity, HeadClock};
use super::resets::Resets;
use super::stall::Stall;
use crate::shutdown::Phase;

/// What bounds a connection while [`drive`] runs it.
#[derive(Clone, Copy, Default)]
pub(super) struct Bounds<'a> {
    /// The connection's requests, its header timeout, and when the next
    /// request must have started: closed when it is late (see [`HeadClock`]).
    pub(super) clock: Option<(&'a Activity, Duration, Instant)>,
    /// Its stream resets: sent GOAWAY and closed once they are abuse.
    pub(super) resets: Option<&'a Resets>,
    /// Its writes to the client, and `timeouts.send`: closed once its
    /// writes have waited that long (a client that does not read).
    pub(super) stall: Option<(&'a Stall, Duration)>,
}

/// Runs a connection until it ends, shutting it down gracefully when the
/// server drains and dropping it when the drain budget is spent; and as
/// `bounds` say, closes it when its next request is late or its client
/// takes no byte of its answers, and shuts it down when it abuses stream
/// resets.
pub(super) async fn drive<C>(
    mut connection: Pin<&mut C>,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
    bounds: Bounds<'_>,
    phase: &mut watch::Receiver<Phase>,
) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>>,
{
    // Not registered with the runtime until the clock first polls it.
    let deadline = tokio::time::sleep_until(bounds.clock.map_or_else(Instant::now, |(.., by)| by));
    tokio::pin!(deadline);
    let mut clock = bounds
        .clock
        .map(|(activity, timeout, _)| HeadClock::new(activity, timeout, deadline.as_mut()));
    let mut ticks = bounds
        .stall
        .map(|_| tokio::time::interval_at(Instant::now() + STALL_CHECK, STALL_CHECK));
    let stop = loop {
        tokio::select! {
            // In this order: the head clock must see what each poll of the
            // connection answered.
            biased;
            result = connection.as_mut() => return result,
            // The connection future is kept and polled again below.
            _ = phase.wait_for(|p| *p >= Phase::Draining) => break Stop::Drain,
            () = abused(bounds.resets), if bounds.resets.is_some() => {
                warn!(max = bounds.resets.map(Resets::max), "client reset most of its streams; sending GOAWAY");
                break Stop::Abuse;
            }
            now = tick(ticks.as_mut()) => {
                if let Some((stall, timeout)) = bounds.stall {
                    if stall.waited(now).is_some_and(|waited| waited >= timeout) {
                        debug!(timeout = ?timeout, "the client took no byte of its answer in time; closing");
                        return Ok(());
                    }
                }
            }
            () = overdue(clock.as_mut()) => {
                debug!("no request within the header timeout; closing");
                return Ok(());
            }
        }
    };
    // An idle connection ends at once; a busy one after its answers.
    graceful_shutdown(connection.as_mut());
    // An abusive client gets a moment for the GOAWAY to go out, no more.
    let grace = async {
        match stop {
            Stop::Abuse => tokio::time::sleep(ABUSE_GRACE).await,
            Stop::Drain => std::future::pending().await,
        }
    };
    tokio::select! {
        result = connection.as_mut() => result,
        // Dropping the connection closes its socket.
        _ = phase.wait_for(|p| *p == Phase::Closing) => Ok(()),
        () = grace => Ok(()),
    }
}

/// Why [`drive`] stopped serving new requests on a connection.
#[derive(Clone, Copy)]
enum Stop {
    /// The server drains.
    Drain,
    /// The client abused stream resets.
    Abuse,
}

/// How often a connection's waiting writes are looked at.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// How long an abusive HTTP/2 connection has, after its GOAWAY, before it
/// is closed.
const ABUSE_GRACE: Duration = Duration::from_secs(1);

/// Ready once `resets` are abuse; never without them.
async fn abused(resets: Option<&Resets>) {
    match resets {
        Some(resets) => resets.abused().await,
        None => std::future::pending().await,
    }
}

/// Ready when `clock` runs out; never without one.
async fn overdue(clock: Option<&mut HeadClock<'_>>) {
    match clock {
        Some(clock) => std::future::poll_fn(|cx| clock.poll_overdue(cx)).await,
        None => std::future::pending().await,
    }
}

/// The next tick, or never without an interval.
async fn tick(ticks: Option<&mut tokio::time::Interval>) -> Instant {
    match ticks {
        Some(ticks) => ticks.tick().await,
        None => std::future::pending().await,
    }
}
