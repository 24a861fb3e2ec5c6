//! Kept-alive HTTP/1 connections to plain (non-TLS) upstreams.
//!
//! Each [`Upstream`] keeps a stack of idle connections. A request takes the
//! most recently used one (the least likely to have been closed by the
//! upstream's own idle timeout) or opens a new one, and gives it back once
//! the response has been read to its end. A response that was not read to
//! its end (the client went away, the body broke) takes its connection with
//! it, and hyper closes it. A connection idle for [`IDLE_TIMEOUT`] is
//! closed by a sweep every [`REAP_EVERY`] (the server runs it); one the
//! upstream closed is dropped when it is next seen.
//!
//! This is the request path's own pool, in place of hyper-util's general
//! one: no hashed pool key, no extra task per request to wait for the
//! connection to become idle, no boxed request future. Pools of TLS
//! upstreams (which may speak HTTP/2) still use hyper-util's client.

use std::sync::Mutex;
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tracing::debug;

use super::Upstream;
use crate::body::Body;

/// How long an upstream connection may sit idle before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How often idle connections are checked against [`IDLE_TIMEOUT`].
pub const REAP_EVERY: Duration = Duration::from_secs(15);

/// The most idle connections kept per upstream; one more is closed.
const MAX_IDLE: usize = 1024;

/// The sending half of an HTTP/1 connection to an upstream; its other half
/// runs as a task of its own.
pub type Connection = http1::SendRequest<Body>;

/// An upstream's idle connections, the most recently used on top.
///
/// A std mutex, held for one push or pop (never across an await), so a
/// request that reuses a connection pays one uncontended lock and unlock.
#[derive(Debug, Default)]
pub struct IdleConnections {
    stack: Mutex<Vec<Idle>>,
    /// Wakes a request waiting for a connection (see [`exchange`]).
    returned: Notify,
}

#[derive(Debug)]
struct Idle {
    connection: Connection,
    since: Instant,
}

impl IdleConnections {
    /// The most recently used idle connection that is still open, and
    /// since when it has been idle.
    fn take(&self) -> Option<(Connection, Instant)> {
        loop {
            let idle = self.lock().pop()?;
            if !idle.connection.is_closed() {
                return Some((idle.connection, idle.since));
            }
        }
    }

    /// Keeps `connection` for the next request, if it is still open and
    /// there is room.
    pub fn put(&self, connection: Connection) {
        if connection.is_closed() {
            return;
        }
        let idle = Idle {
            connection,
            since: Instant::now(),
        };
        {
            let mut stack = self.lock();
            if stack.len() >= MAX_IDLE {
                return;
            }
            stack.push(idle);
        }
        self.returned.notify_one();
    }

    /// Closes the connections idle for `IDLE_TIMEOUT` or more as of `now`,
    /// and forgets those the upstream closed.
    pub fn reap(&self, now: Instant) {
        let closing: Vec<Idle> = {
            let mut stack = self.lock();
            let (keep, closing) = std::mem::take(&mut *stack).into_iter().partition(|idle| {
                now.duration_since(idle.since) < IDLE_TIMEOUT && !idle.connection.is_closed()
            });
            *stack = keep;
            closing
        };
        // Dropped outside the lock: each wakes its connection's task.
        drop(closing);
    }

    /// How many connections are idle now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.stack
            .lock()
            .expect("idle connection stack lock poisoned")
    }
}

/// Why an exchange with an upstream failed.
#[derive(Debug)]
pub enum Failure {
    /// No connection could be opened: the upstream saw nothing of the
    /// request, so it may go to another upstream.
    Connect(std::io::Error),
    /// Every connection the upstream may have is open and busy, and none
    /// came free within the connect timeout. Not a fault of the upstream's
    /// health; it saw nothing of the request.
    Busy {
        /// Its `max_connections`.
        limit: usize,
    },
    /// The connection failed once the request was handed to it.
    Exchange {
        /// What hyper said.
        error: hyper::Error,
        /// Whether the connection had served an earlier request: one the
        /// upstream closed just as it was reused fails this way too, and
        /// that says nothing about the upstream's health.
        reused: bool,
    },
}

/// A connection idle for this long may have met the upstream's own
/// keep-alive timeout by the time it is reused: a request that can be sent
/// twice keeps a copy while it goes out on one. (Under load connections are
/// reused within milliseconds, and no copy is made.)
const STALE_AFTER: Duration = Duration::from_millis(100);

/// Sends `request` to `upstream` on an idle connection, or on a new one,
/// and returns the response head with the connection it came on.
///
/// An idle connection that turns out closed before the request was written
/// (the upstream closed it while it was idle) costs nothing but a try on
/// the next one. One the upstream closes just as the request is written on
/// it (the race of two keep-alive timeouts) costs nothing either when the
/// request is `resendable` (an idempotent method without a body): it is
/// sent once more, on a new connection.
pub async fn exchange(
    upstream: &Upstream,
    mut request: Request<Body>,
    connect_timeout: Duration,
    resendable: bool,
) -> Result<(Response<Incoming>, Connection), Failure> {
    let mut resent = false;
    loop {
        let idle = if resent { None } else { upstream.idle.take() };
        let (mut connection, idle_since) = match idle {
            Some((connection, since)) => (connection, Some(since)),
            None => match open_or_wait(upstream, connect_timeout, resent).await? {
                Opening::Idle(connection, since) => (connection, Some(since)),
                Opening::Slot(slot) => (
                    connect(&upstream.authority, connect_timeout, slot).await?,
                    None,
                ),
            },
        };
        let reused = idle_since.is_some();
        // A new connection is ready once its task has started; a reused
        // one once its task has finished with the previous response.
        if let Err(error) = connection.ready().await {
            if reused {
                continue;
            }
            return Err(Failure::Connect(std::io::Error::other(error)));
        }
        let copy = match idle_since {
            Some(since) if resendable && !resent && since.elapsed() >= STALE_AFTER => {
                Some(copy_of(&request))
            }
            _ => None,
        };
        match connection.try_send_request(request).await {
            Ok(response) => return Ok((response, connection)),
            Err(mut error) => match error.take_message() {
                Some(unsent) if reused => request = unsent,
                Some(_) => return Err(Failure::Connect(std::io::Error::other(error.into_error()))),
                None => {
                    let error = error.into_error();
                    match copy {
                        Some(copy) if is_cut_short(&error) => {
                            debug!(upstream = %upstream.authority, %error, "reused connection closed under the request; sending it again on a new one");
                            request = copy;
                            resent = true;
                        }
                        _ => return Err(Failure::Exchange { error, reused }),
                    }
                }
            },
        }
    }
}

/// A bodiless request again, for a second try.
fn copy_of(request: &Request<Body>) -> Request<Body> {
    let mut copy = Request::new(Body::empty());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Whether the connection ended before an answer began: closed (hyper's
/// "incomplete message"), or reset or broken while the request was written.
pub fn is_cut_short(error: &hyper::Error) -> bool {
    use std::io::ErrorKind;
    if error.is_incomplete_message() {
        return true;
    }
    let source: &(dyn std::error::Error + 'static) = error;
    std::iter::successors(Some(source), |e| e.source())
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| {
            matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
            )
        })
}

/// What a request gets when no idle connection was there.
enum Opening {
    /// One came back meanwhile.
    Idle(Connection, Instant),
    /// Room for a new one.
    Slot(OwnedSemaphorePermit),
}

/// Room for a new connection to `upstream`, or, while every one it may
/// have is open, the first to come back idle; waits at most `timeout`.
/// With `fresh_only`, only room for a new one will do.
async fn open_or_wait(
    upstream: &Upstream,
    timeout: Duration,
    fresh_only: bool,
) -> Result<Opening, Failure> {
    if let Ok(slot) = upstream.slots.clone().try_acquire_owned() {
        return Ok(Opening::Slot(slot));
    }
    let deadline = Instant::now() + timeout;
    // Made once: a waiter keeps its place in the semaphore's queue while
    // it also looks at the connections that come back.
    let slot = upstream.slots.clone().acquire_owned();
    tokio::pin!(slot);
    loop {
        tokio::select! {
            slot = slot.as_mut() => {
                return Ok(Opening::Slot(slot.expect("the slots are never closed")));
            }
            () = upstream.idle.returned.notified(), if !fresh_only => {
                if let Some((connection, since)) = upstream.idle.take() {
                    return Ok(Opening::Idle(connection, since));
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err(Failure::Busy { limit: upstream.max_connections() });
            }
        }
    }
}

/// Opens a connection to `authority` and starts its task, which holds
/// `slot` for as long as the connection is open.
async fn connect(
    authority: &Authority,
    timeout: Duration,
    slot: OwnedSemaphorePermit,
) -> Result<Connection, Failure> {
    // An IPv6 host comes bracketed, as in `[::1]:8080`.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let stream = match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(Failure::Connect(error)),
        Err(_elapsed) => {
            return Err(Failure::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect timed out after {timeout:?}"),
            )))
        }
    };
    // Requests and answers are small and latency-bound: no Nagle delay.
    stream.set_nodelay(true).map_err(Failure::Connect)?;
    let (connection, task) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|error| Failure::Connect(std::io::Error::other(error)))?;
    tokio::spawn(async move {
        let _slot = slot;
        // Upgrades (WebSocket) take the connection over from hyper (and
        // count as tunnels, not against the cap).
        if let Err(error) = task.with_upgrades().await {
            debug!(%error, "upstream connection failed");
        }
    });
    Ok(connection)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection over an in-memory pipe, its task running; the other
    /// end is returned so it stays open.
    async fn connection() -> (Connection, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (connection, task) = http1::handshake(TokioIo::new(ours)).await.unwrap();
        tokio::spawn(task);
        (connection, theirs)
    }

    #[tokio::test]
    async fn the_most_recently_used_connection_is_taken_first() {
        use tokio::io::AsyncReadExt;
        let idle = IdleConnections::default();
        let (first, _first_end) = connection().await;
        let (second, mut second_end) = connection().await;
        idle.put(first);
        idle.put(second);
        assert_eq!(idle.len(), 2);
        let (mut taken, _) = idle.take().unwrap();
        assert_eq!(idle.len(), 1);
        taken.ready().await.unwrap();
        let sent = taken.send_request(Request::new(Body::empty()));
        tokio::spawn(sent);
        // The request comes out of the connection put last.
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), second_end.read(&mut buf))
            .await
            .expect("the request went out on the other connection")
            .unwrap();
        assert!(buf[..n].starts_with(b"GET / HTTP/1.1"));
    }

    #[tokio::test]
    async fn connections_idle_too_long_or_closed_are_let_go() {
        let idle = IdleConnections::default();
        let (old, _a) = connection().await;
        idle.put(old);
        let later = Instant::now() + IDLE_TIMEOUT / 2;
        idle.reap(later);
        assert_eq!(idle.len(), 1, "not idle long enough yet");
        idle.reap(Instant::now() + IDLE_TIMEOUT);
        assert!(idle.is_empty(), "idle past the timeout");

        let (closing, other_end) = connection().await;
        idle.put(closing);
        drop(other_end);
        // The connection's task sees the end of its stream and finishes.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !idle.lock()[0].connection.is_closed() {
            assert!(Instant::now() < deadline, "the connection never closed");
            tokio::task::yield_now().await;
        }
        assert!(idle.take().is_none(), "a closed connection is never taken");
        assert!(idle.is_empty());
    }
}
