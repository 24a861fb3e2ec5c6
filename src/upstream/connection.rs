//! The proxy's own HTTP/1 connections to an upstream, plain or TLS, and
//! the idle ones kept for the next request.
//!
//! A connection here is only a stream and the permit that counts it
//! against the upstream's `max_connections`: no task, no buffers, no
//! channel. The client connection whose request it carries drives it, and
//! reads its answers into that client connection's buffers; between two
//! requests it waits on its upstream's idle stack, costing its socket.
//!
//! A request takes the most recently used idle connection (the least
//! likely to have met the upstream's own idle timeout), or opens a new one
//! while the upstream has room. An idle connection the upstream closed is
//! noticed when it is taken, without a system call (the reactor has
//! already seen the close), and one idle for [`IDLE_TIMEOUT`] is closed by
//! a sweep ([`Connections::reap`], which the server runs every
//! [`REAP_EVERY`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::uri::Authority;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::tls::UpstreamTls;

/// How long an upstream connection may sit idle before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How often idle connections are checked against [`IDLE_TIMEOUT`].
pub const REAP_EVERY: Duration = Duration::from_secs(15);

/// The most idle connections kept per upstream; one more is closed.
const MAX_IDLE: usize = 1024;

/// The byte stream of a connection to an upstream.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: its state is large, and most pools are plain).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// One connection to an upstream.
#[derive(Debug)]
pub struct Connection {
    /// Its stream.
    pub stream: Stream,
    /// Held while the connection is open: it counts against the
    /// upstream's `max_connections`.
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    /// Whether the upstream chose HTTP/2 by ALPN (offered only to HTTP/2
    /// clients' requests, see [`TlsConnect::offering_h2`]).
    pub fn speaks_h2(&self) -> bool {
        match &self.stream {
            Stream::Plain(_) => false,
            Stream::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }

    /// Whether the connection is still usable between two requests: the
    /// upstream has neither closed it nor sent anything unasked. Costs no
    /// system call when nothing has arrived (the reactor's readiness says
    /// so); a TLS connection may take in a session ticket on the way.
    ///
    /// The look is taken outside tokio's cooperative budget: within it, a
    /// read may answer "not ready" without looking at the socket at all,
    /// once the task has polled enough, and a connection the upstream
    /// closed or wrote to would pass for a clean one.
    fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let stream = &mut self.stream;
        let look = tokio::task::unconstrained(std::future::poll_fn(|cx| {
            let mut probe = ReadBuf::new(&mut byte);
            match Pin::new(&mut *stream).poll_read(cx, &mut probe) {
                Poll::Pending => Poll::Ready(true),
                Poll::Ready(_) => Poll::Ready(false),
            }
        }));
        let mut look = std::pin::pin!(look);
        matches!(look.as_mut().poll(&mut cx), Poll::Ready(true))
    }
}

/// How to reach a pool's TLS upstreams: its verifier, and the name to send
/// as SNI and verify (the upstream's host when none is configured).
#[derive(Clone)]
pub struct TlsConnect {
    connector: tokio_rustls::TlsConnector,
    /// The same, offering h2 before HTTP/1.1.
    offering_h2: tokio_rustls::TlsConnector,
    name: Option<ServerName<'static>>,
    /// Whether connections are opened with `offering_h2`.
    h2: bool,
}

impl std::fmt::Debug for TlsConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnect")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsConnect {
    /// The TLS side of a pool configured with `tls`: HTTP/1.1 by ALPN, as
    /// an HTTP/1 client's requests go.
    pub fn new(tls: &UpstreamTls) -> TlsConnect {
        let with_alpn = |protocols: &[&[u8]]| {
            let mut client = (*tls.client).clone();
            client.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
            tokio_rustls::TlsConnector::from(Arc::new(client))
        };
        TlsConnect {
            connector: with_alpn(&[b"http/1.1"]),
            offering_h2: with_alpn(&[b"h2", b"http/1.1"]),
            // Validation checked the name parses.
            name: tls
                .server_name
                .as_ref()
                .and_then(|n| ServerName::try_from(n.clone()).ok()),
            h2: false,
        }
    }

    /// The same, offering h2 first, as an HTTP/2 client's requests go: a
    /// connection on which the upstream chose it becomes the upstream's
    /// shared HTTP/2 connection ([`super::http2`]).
    pub fn offering_h2(&self) -> TlsConnect {
        TlsConnect {
            h2: true,
            ..self.clone()
        }
    }
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Connecting failed or timed out: the upstream saw nothing.
    #[error("{0}")]
    Io(#[source] io::Error),
    /// The TLS handshake failed (a certificate that does not verify, an
    /// upstream that does not speak TLS).
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
    /// Every connection the upstream may have is open and busy, and none
    /// came free within the connect timeout.
    #[error("all {limit} connections to the upstream are busy")]
    Busy {
        /// Its `max_connections`.
        limit: usize,
    },
}

/// An upstream's idle connections, the most recently used on top.
///
/// A std mutex, held for one push or pop (never across an await).
#[derive(Debug, Default)]
pub struct Connections {
    stack: Mutex<Vec<Idle>>,
    /// Wakes a request waiting for a connection.
    returned: Notify,
}

#[derive(Debug)]
struct Idle {
    connection: Connection,
    since: Instant,
}

impl Connections {
    /// The most recently used idle connection that is still usable, and
    /// since when it has been idle.
    fn take(&self) -> Option<(Connection, Instant)> {
        loop {
            let mut idle = self.lock().pop()?;
            if idle.connection.is_reusable() {
                return Some((idle.connection, idle.since));
            }
        }
    }

    /// Keeps `connection` for the next request, if there is room.
    pub fn put(&self, connection: Connection) {
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

    /// Closes the connections idle for [`IDLE_TIMEOUT`] or more as of
    /// `now`, and those the upstream closed.
    pub fn reap(&self, now: Instant) {
        let closing: Vec<Idle> = {
            let mut stack = self.lock();
            let (keep, closing) = std::mem::take(&mut *stack)
                .into_iter()
                .map(|mut idle| {
                    let fresh = now.duration_since(idle.since) < IDLE_TIMEOUT
                        && idle.connection.is_reusable();
                    (idle, fresh)
                })
                .partition::<Vec<_>, _>(|(_, fresh)| *fresh);
            *stack = keep.into_iter().map(|(idle, _)| idle).collect();
            closing.into_iter().map(|(idle, _)| idle).collect()
        };
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

/// A connection to an upstream for one request: an idle one (with since
/// when it was idle), or a new one.
pub struct Checkout {
    /// The connection.
    pub connection: Connection,
    /// Since when it was idle, if it served an earlier request.
    pub idle_since: Option<Instant>,
}

/// A connection to the upstream at `authority`, whose idle connections
/// and slots are `idle` and `slots` (`limit` of them): an idle one unless
/// `fresh_only`, else a new one once there is room, waiting at most
/// `timeout` for either.
pub async fn checkout(
    authority: &Authority,
    idle: &Connections,
    slots: &Arc<Semaphore>,
    limit: usize,
    tls: Option<&TlsConnect>,
    timeout: Duration,
    fresh_only: bool,
) -> Result<Checkout, ConnectError> {
    if !fresh_only {
        if let Some((connection, since)) = idle.take() {
            return Ok(Checkout {
                connection,
                idle_since: Some(since),
            });
        }
    }
    let deadline = Instant::now() + timeout;
    let slot = match slots.clone().try_acquire_owned() {
        Ok(slot) => slot,
        Err(_) => {
            // Made once: a waiter keeps its place in the semaphore's queue
            // while it also looks at the connections that come back.
            let waiting = slots.clone().acquire_owned();
            tokio::pin!(waiting);
            loop {
                tokio::select! {
                    slot = waiting.as_mut() => break slot.expect("the slots are never closed"),
                    () = idle.returned.notified(), if !fresh_only => {
                        if let Some((connection, since)) = idle.take() {
                            return Ok(Checkout { connection, idle_since: Some(since) });
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        return Err(ConnectError::Busy { limit });
                    }
                }
            }
        }
    };
    let stream = tokio::time::timeout_at(deadline, connect(authority, tls))
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {timeout:?}"),
            )))
        })?;
    Ok(Checkout {
        connection: Connection {
            stream,
            _slot: slot,
        },
        idle_since: None,
    })
}

/// Opens a stream to `authority`, TLS on top with `tls`.
async fn connect(authority: &Authority, tls: Option<&TlsConnect>) -> Result<Stream, ConnectError> {
    // An IPv6 host comes bracketed, as in `[::1]:8080`.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(ConnectError::Io)?;
    // Requests and answers are small and latency-bound: no Nagle delay.
    tcp.set_nodelay(true).map_err(ConnectError::Io)?;
    let Some(tls) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    let name = match &tls.name {
        Some(name) => name.clone(),
        None => ServerName::try_from(host.to_owned())
            .map_err(|e| ConnectError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?,
    };
    let connector = if tls.h2 {
        &tls.offering_h2
    } else {
        &tls.connector
    };
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(ConnectError::Tls)?;
    Ok(Stream::Tls(Box::new(stream)))
}

/// A connection another protocol takes over (HTTP/2) is read and written
/// whole, so that its slot stays held for as long as its socket is open.
impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
