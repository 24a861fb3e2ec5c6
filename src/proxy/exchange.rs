//! What both engines' exchanges with an upstream share: bounded writes,
//! growing reads, and who a failure is blamed on.
//!
//! Only the upstream's own failures count against its health: a refused
//! or failed connect, a fresh connection cut before an answer. A kept-alive
//! connection the upstream closed just as it was reused is nobody's fault
//! (the race of two keep-alive timeouts), and a request that can be sent
//! again (idempotent, no body) is, on a new connection.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

use super::ProxyError;
use crate::config::Timeouts;
use crate::upstream::connection::ConnectError;
use crate::upstream::{InFlight, Pool, Upstream};

/// What a read from an upstream takes at least room for.
const READ_AT_LEAST: usize = 4 * 1024;
/// The most a read from an upstream takes, once reads fill the buffer.
const READ_AT_MOST: usize = 64 * 1024;

/// Longest response head accepted from an upstream.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Writes `bytes` to `io` and flushes them, failing if the writes wait on
/// the peer for `timeout` (a peer that takes no byte).
pub async fn write_all<W: AsyncWrite + Unpin>(
    io: &mut W,
    bytes: &[u8],
    timeout: Duration,
) -> io::Result<()> {
    let written = async {
        io.write_all(bytes).await?;
        io.flush().await
    };
    match tokio::time::timeout(timeout, written).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer took no byte in {timeout:?}"),
        )),
    }
}

/// Reads more of an upstream's bytes after those in `buf`; a read that
/// fills all the room there was makes room for a larger one next time, up
/// to 64 KiB. `Ok(0)` at the stream's end.
pub async fn read_more<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_AT_LEAST / 4 {
        buf.reserve(buf.capacity().clamp(READ_AT_LEAST, READ_AT_MOST));
    }
    let room = buf.capacity() - buf.len();
    let n = stream.read_buf(buf).await?;
    if n == room && buf.capacity() < READ_AT_MOST {
        buf.reserve(buf.capacity());
    }
    Ok(n)
}

/// Whether the upstream's connection may carry another request once its
/// answer (`status`) has been read, as far as the request's body goes: it
/// was all sent (`upload_done`), and, if there was one (`had_body`), the
/// answer is not an error. An upstream that answers early (`413`, `401`)
/// ought to read the rest of the body or close (RFC 9112 §9.3); one that
/// does neither would read the body's bytes as a request of their own, and
/// its answer to them could reach the next request sent on the connection.
pub fn body_settled(upload_done: bool, had_body: bool, status: u16) -> bool {
    upload_done && !(had_body && status >= 400)
}

/// Whether a request with `method` may be sent twice (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The upstream of a pool a request goes to, and whether a failed connect
/// may still move it to another.
pub struct Picked<'p> {
    pool: &'p Pool,
    in_flight: InFlight,
    may_move: bool,
}

impl<'p> Picked<'p> {
    /// A healthy upstream of `pool`, or the client's `503` if none is.
    pub fn from(pool: &'p Pool) -> Result<Picked<'p>, ProxyError> {
        let in_flight = pool
            .pick(None)
            .ok_or_else(|| ProxyError::NoHealthyUpstream {
                pool: pool.name.clone(),
            })?;
        Ok(Picked {
            pool,
            in_flight,
            may_move: pool.has_alternative(),
        })
    }

    /// The upstream picked.
    pub fn upstream(&self) -> &Arc<Upstream> {
        self.in_flight.upstream()
    }

    /// After a failed connect to the upstream picked: the failure to
    /// answer with, or (once, and only when another healthy one is left)
    /// another upstream to try instead, since nothing of the request was
    /// sent.
    pub fn connect_failed(&mut self, error: ConnectError) -> Result<(), ProxyError> {
        let upstream = self.upstream().clone();
        let failure = connect_failure(&upstream, error, self.pool);
        if !self.may_move {
            return Err(failure);
        }
        self.may_move = false;
        debug!(%failure, "retrying on another upstream");
        self.in_flight = self.pool.pick(Some(&upstream)).ok_or(failure)?;
        Ok(())
    }

    /// The request's count on the upstream picked, for as long as it runs.
    pub fn into_in_flight(self) -> InFlight {
        self.in_flight
    }
}

/// What the client is told when no connection to `upstream` could be had;
/// a refused or failed connect counts against its health at once.
fn connect_failure(upstream: &Upstream, error: ConnectError, pool: &Pool) -> ProxyError {
    let failure = match error {
        ConnectError::Busy { limit } => {
            return ProxyError::UpstreamBusy {
                upstream: upstream.authority.clone(),
                limit,
            }
        }
        ConnectError::Io(error) => ProxyError::UpstreamUnreachable {
            upstream: upstream.authority.clone(),
            reason: error.to_string(),
        },
        ConnectError::Tls(error) => ProxyError::UpstreamTls {
            upstream: upstream.authority.clone(),
            reason: error.to_string(),
        },
    };
    if let ProxyError::UpstreamUnreachable { reason, .. } | ProxyError::UpstreamTls { reason, .. } =
        &failure
    {
        // Passive health: a dead instance is out at once, not at the next
        // probe.
        if upstream.record_traffic_failure(reason.clone()) {
            warn!(pool = %pool.name, upstream = %upstream.authority, error = %reason, "upstream is unhealthy (failed on live traffic)");
        }
    }
    failure
}

/// The upstream took `timeouts.upstream` to take the request or answer it.
pub fn timed_out(upstream: &Upstream, timeouts: &Timeouts) -> ProxyError {
    ProxyError::UpstreamTimeout {
        upstream: upstream.authority.clone(),
        timeout: timeouts.upstream,
    }
}

/// A connection lost before an answer: the upstream's failure, counted
/// against its health, on a connection of its own; on a `reused` one the
/// ordinary race of two keep-alive timeouts, nobody's fault.
pub fn lost(upstream: &Upstream, reused: bool, reason: &str) -> ProxyError {
    if !reused && upstream.record_traffic_failure(reason.to_owned()) {
        warn!(upstream = %upstream.authority, error = %reason, "upstream is unhealthy (failed on live traffic)");
    }
    ProxyError::UpstreamUnreachable {
        upstream: upstream.authority.clone(),
        reason: reason.to_owned(),
    }
}

/// The answer's head was malformed, or too large.
pub fn bad_answer(upstream: &Upstream, reason: impl Into<String>) -> ProxyError {
    ProxyError::BadUpstreamResponse {
        upstream: upstream.authority.clone(),
        reason: reason.into(),
    }
}
