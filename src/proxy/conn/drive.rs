//! Running one hyper connection to its end, within its bounds: the head
//! clock, the send stall, HTTP/2 reset abuse, parking when quiet, and the
//! server's drain.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::park::{Activity, HeadClock, PARK_AFTER};
use super::resets::Resets;
use super::stall::Stall;
use crate::shutdown::Phase;

/// How a connection's hyper instance ended.
pub(super) enum Driven {
    /// The connection is over.
    Ended(hyper::Result<()>),
    /// hyper stopped between two messages and left the stream open.
    Parked,
}

/// What bounds a connection while [`drive`] runs it.
#[derive(Clone, Copy, Default)]
pub(super) struct Bounds<'a> {
    /// The connection's requests, its header timeout, and when the next
    /// request must have started: closed when it is late (see [`HeadClock`]).
    pub(super) clock: Option<(&'a Activity, Duration, Instant)>,
    /// Whether it is stopped between two messages once it has been quiet
    /// for [`PARK_AFTER`] (HTTP/1).
    pub(super) parks: bool,
    /// Its HTTP/2 stream resets: sent GOAWAY and closed once they are
    /// abuse.
    pub(super) resets: Option<&'a Resets>,
    /// Its writes to the client, and `timeouts.send`: closed once its
    /// writes have waited that long (a client that does not read).
    pub(super) stall: Option<(&'a Stall, Duration)>,
}

/// Runs a connection until it ends, shutting it down gracefully when the
/// server drains and dropping it when the drain budget is spent; and as
/// `bounds` say, closes it when its next request is late, parks it when
/// it is quiet, and shuts it down when it abuses stream resets.
pub(super) async fn drive<C>(
    mut connection: Pin<&mut C>,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
    bounds: Bounds<'_>,
    phase: &mut watch::Receiver<Phase>,
) -> Driven
where
    C: Future<Output = hyper::Result<()>>,
{
    let activity = bounds.clock.map(|(activity, ..)| activity);
    // Not registered with the runtime until the clock first polls it.
    let deadline = tokio::time::sleep_until(bounds.clock.map_or_else(Instant::now, |(.., by)| by));
    tokio::pin!(deadline);
    let mut clock = bounds
        .clock
        .map(|(activity, timeout, _)| HeadClock::new(activity, timeout, deadline.as_mut()));
    let mut ticks = (bounds.parks || bounds.stall.is_some())
        .then(|| tokio::time::interval_at(Instant::now() + PARK_AFTER, PARK_AFTER));
    let mut last_quiet = None;
    let stop = loop {
        tokio::select! {
            // In this order: the head clock must see what each poll of the
            // connection answered.
            biased;
            result = connection.as_mut() => return Driven::Ended(result),
            // The connection future is kept and polled again below.
            _ = phase.wait_for(|p| *p >= Phase::Draining) => break Stop::Drain,
            // Not polled at all without resets to watch (HTTP/1).
            () = abused(bounds.resets), if bounds.resets.is_some() => {
                warn!(max = bounds.resets.map(Resets::max), "client reset most of its streams; sending GOAWAY");
                break Stop::Abuse;
            }
            now = tick(ticks.as_mut()) => {
                if let Some((stall, timeout)) = bounds.stall {
                    if stall.waited(now).is_some_and(|waited| waited >= timeout) {
                        debug!(timeout = ?timeout, "the client took no byte of its answer in time; closing");
                        return Driven::Ended(Ok(()));
                    }
                }
                if !bounds.parks {
                    continue;
                }
                let quiet = activity.and_then(Activity::quiet);
                if quiet.is_some() && quiet == last_quiet {
                    break activity.map_or(Stop::Drain, Stop::Park);
                }
                last_quiet = quiet;
            }
            () = overdue(clock.as_mut()) => {
                debug!("no request within the header timeout; closing");
                return Driven::Ended(Ok(()));
            }
        }
    };
    if let Stop::Park(activity) = stop {
        activity.set_parking(true);
    }
    // An idle hyper connection ends at once; a busy one after its answer.
    graceful_shutdown(connection.as_mut());
    // An abusive client gets a moment for the GOAWAY to go out, no more.
    let grace = async {
        match stop {
            Stop::Abuse => tokio::time::sleep(ABUSE_GRACE).await,
            Stop::Drain | Stop::Park(_) => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        // Dropping the connection closes its socket.
        _ = phase.wait_for(|p| *p == Phase::Closing) => Ok(()),
        () = grace => Ok(()),
    };
    match stop {
        Stop::Park(activity) => {
            activity.set_parking(false);
            match result {
                Ok(()) => Driven::Parked,
                Err(error) => Driven::Ended(Err(error)),
            }
        }
        Stop::Drain | Stop::Abuse => Driven::Ended(result),
    }
}

/// Why [`drive`] stopped serving new requests on a connection.
enum Stop<'a> {
    /// The server drains.
    Drain,
    /// The connection is quiet: park it.
    Park(&'a Activity),
    /// The client abused stream resets.
    Abuse,
}

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
