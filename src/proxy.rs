//! The data plane: accept connections, check each request, forward it to
//! the live pool, stream the answer back.
//!
//! ```text
//! accept ─► sniff (HTTP/1 or h2c, header timeout) ─► hyper connection
//!   └─► handle: front-door checks ─► one state load (pool, timeouts)
//!         ─► rewrite headers ─► read body ahead ─► send (retry on connect failure)
//!         ─► vet response (read ahead) ─► stream back   or   101 ─► tunnel
//! ```
//!
//! Every failure is answered once, in [`Proxy::handle`], from a
//! [`ProxyError`]; the inner steps just use `?`.

/// Implements `AsyncRead` and `park::Wait` for a wrapper stream by passing
/// every call to its `inner` field: for the wrappers that only look at
/// what is written, or at how it is shut down.
macro_rules! delegate_read_side {
    ($wrapper:ident) => {
        impl<S: $crate::proxy::park::Wait> $crate::proxy::park::Wait for $wrapper<S> {
            fn poll_client(
                &self,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.inner.poll_client(cx)
            }
        }

        impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for $wrapper<S> {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
            }
        }
    };
}

/// Implements `AsyncWrite` for a wrapper stream by passing every call to
/// its `inner` field: the wrappers here only look at what is read.
macro_rules! delegate_async_write {
    ($wrapper:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}

mod error;
mod forward;
mod framing;
mod frontdoor;
pub mod headers;
mod park;
mod resets;
mod sniff;
mod stall;
mod unread;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::ACCEPT;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

pub use error::{json_response, ProxyError};

use crate::body::{Body, ReadAhead};
use crate::config::Timeouts;
use crate::metrics::{Counted, Metrics};
use crate::shutdown::{Lifecycle, Phase, Tracked};
use crate::state::gate::path;
use crate::state::SharedState;
use crate::upstream::Pool;
use forward::{Answer, Outgoing};
use framing::{Scanned, Verdict};
use park::{Activity, HeadClock, Resumable, Wait, PARK_AFTER};
use resets::Resets;
use sniff::{Protocol, SniffError};
use stall::{Sending, Stall};

/// How long to pause accepting when the process is out of file
/// descriptors (or memory), so that finishing connections can free some.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The answer to plain HTTP sent to a TLS listener.
const PLAIN_HTTP_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nConnection: close\r\nContent-Length: 96\r\n\r\n{\"error\": {\"code\": \"bad_request\", \"message\": \"plain HTTP was sent to a port that speaks HTTPS\"}}";

/// Why a request with both `Content-Length` and `Transfer-Encoding` is refused.
const AMBIGUOUS_LENGTH: &str =
    "both Content-Length and Transfer-Encoding: the body length is ambiguous";

/// Which pool a listener routes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The public listener: the live pool.
    Live,
    /// The preview listener: the pool that is not live.
    Preview,
}

/// What every connection shares.
#[derive(Debug)]
pub struct Proxy {
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    lifecycle: Lifecycle,
}

impl Proxy {
    /// The data plane over `state`, tracking its work in `lifecycle`.
    pub fn new(state: Arc<SharedState>, metrics: Arc<Metrics>, lifecycle: Lifecycle) -> Proxy {
        Proxy {
            state,
            metrics,
            lifecycle,
        }
    }

    /// The connections and tunnels this proxy tracks.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// The shared state it reads.
    pub fn state(&self) -> &Arc<SharedState> {
        &self.state
    }
}

/// Accepts until the server starts draining; dropping the listener then
/// makes new connections fail.
pub async fn accept_loop(proxy: Arc<Proxy>, listener: TcpListener, route: Route) {
    let mut phase = proxy.lifecycle.watch();
    loop {
        // When draining wins, the pending `accept` is dropped: a connection
        // not yet accepted stays in the backlog and is refused on close.
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = phase.wait_for(|p| *p != Phase::Serving) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Tracked before spawning, so a drain that starts now waits for it.
                let tracked = proxy.lifecycle.track();
                let span = tracing::debug_span!("conn", client.addr = %peer);
                tokio::spawn(
                    serve_connection(proxy.clone(), stream, peer, route, tracked).instrument(span),
                );
            }
            Err(error) if is_resource_exhaustion(&error) => {
                warn!(%error, "cannot accept connections; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
            // A connection reset before it was accepted is that client's problem.
            Err(error) => debug!(%error, "accept failed"),
        }
    }
}

fn is_resource_exhaustion(error: &std::io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM.
    matches!(error.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// What a connection holds for its whole life, whichever task it is on:
/// while it lives it counts as open, and a drain waits for it.
#[derive(Debug)]
struct Held {
    _open: Counted,
    _tracked: Tracked,
}

/// A listener's limits on one connection, as of when it was accepted.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// `timeouts.header`.
    header_timeout: Duration,
    /// `listener.max_header_bytes`.
    max_header_bytes: usize,
    /// `timeouts.send`.
    send_timeout: Duration,
    /// `listener.http2_max_streams`: more are refused (`REFUSED_STREAM`)
    /// until some finish.
    http2_max_streams: u32,
    /// `listener.http2_max_resets`.
    http2_max_resets: u64,
}

/// Who a connection is with, and how it arrived.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's address as `X-Forwarded-For` gives it, formatted once
    /// per connection rather than once per request.
    pub forwarded_for: http::HeaderValue,
    /// The listener it came through.
    pub route: Route,
    /// Whether it is TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
}

async fn serve_connection(
    proxy: Arc<Proxy>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    route: Route,
    tracked: Tracked,
) {
    let _ = stream.set_nodelay(true);
    let held = Held {
        _open: proxy.metrics.count_connection(),
        _tracked: tracked,
    };
    // The listener's settings as of this connection: a reload changes them
    // for the next one (new certificates for the next handshake).
    let (limits, tls) = {
        let snapshot = proxy.state.load();
        let config = &snapshot.config;
        let tls = match route {
            Route::Live => config.listener.tls.as_ref(),
            Route::Preview => config.preview.as_ref().and_then(|p| p.tls.as_ref()),
        };
        let limits = Limits {
            header_timeout: config.timeouts.header,
            max_header_bytes: config.listener.max_header_bytes,
            send_timeout: config.timeouts.send,
            http2_max_streams: config.listener.http2_max_streams,
            http2_max_resets: config.listener.http2_max_resets,
        };
        (limits, tls.map(|t| t.server.clone()))
    };
    let header_timeout = limits.header_timeout;
    let mut phase = proxy.lifecycle.watch();
    let conn = Conn {
        peer,
        forwarded_for: headers::forwarded_for(peer.ip()),
        route,
        https: tls.is_some(),
    };
    let Some(server) = tls else {
        let deadline = Instant::now() + header_timeout;
        let sniffed = tokio::select! {
            sniffed = sniff::sniff(stream, deadline) => sniffed,
            // Nothing was asked yet, so nothing is lost by closing now.
            _ = phase.wait_for(|p| *p != Phase::Serving) => return,
        };
        let (protocol, io) = match sniffed {
            Ok(sniffed) => sniffed,
            Err(SniffError::Closed) => return,
            Err(SniffError::TimedOut) => {
                debug!(timeout = ?header_timeout, "no request head in time; closing");
                return;
            }
            Err(SniffError::Io(error)) => {
                debug!(%error, "read failed");
                return;
            }
        };
        return serve_http(proxy, io, protocol, conn, limits, deadline, phase, held).await;
    };
    // Boxed: a TLS connection's state is several KiB, and every plain
    // connection's task would otherwise be as large as the TLS one.
    Box::pin(serve_tls(proxy, stream, server, conn, limits, phase, held)).await;
}

/// Handshakes TLS within the header timeout, then serves HTTP/1 or HTTP/2
/// as ALPN chose.
async fn serve_tls(
    proxy: Arc<Proxy>,
    stream: tokio::net::TcpStream,
    server: Arc<rustls::ServerConfig>,
    conn: Conn,
    limits: Limits,
    mut phase: watch::Receiver<Phase>,
    held: Held,
) {
    let header_timeout = limits.header_timeout;
    let deadline = Instant::now() + header_timeout;
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)) => peeked,
        _ = phase.wait_for(|p| *p != Phase::Serving) => return,
    };
    match peeked {
        Ok(Ok(1..)) if first[0].is_ascii_uppercase() => {
            // A request line where a TLS handshake was due: say so in
            // HTTP, as nginx does, rather than close without a word.
            debug!("plain HTTP on a TLS listener; answering 400");
            let mut stream = stream;
            let _ = stream.write_all(PLAIN_HTTP_ON_TLS).await;
            let _ = stream.shutdown().await;
            return;
        }
        Ok(Ok(1..)) => {}
        Ok(Ok(_)) | Ok(Err(_)) => return,
        Err(_) => {
            debug!(timeout = ?header_timeout, "no TLS handshake in time; closing");
            return;
        }
    }
    let accept = tokio_rustls::TlsAcceptor::from(server).accept(stream);
    let accepted = tokio::select! {
        accepted = tokio::time::timeout_at(deadline, accept) => accepted,
        _ = phase.wait_for(|p| *p != Phase::Serving) => return,
    };
    let io = match accepted {
        Ok(Ok(io)) => io,
        Ok(Err(error)) => {
            debug!(%error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(timeout = ?header_timeout, "no TLS handshake in time; closing");
            return;
        }
    };
    let protocol = match io.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    };
    serve_http(proxy, io, protocol, conn, limits, deadline, phase, held).await;
}

/// Serves HTTP/1 or HTTP/2 on `io` (plain or TLS) until it closes. The
/// first HTTP/1 request head must be in by `head_by`: the header timeout
/// counts from the connection's start, sniffing or handshake included.
#[allow(clippy::too_many_arguments)]
async fn serve_http<I>(
    proxy: Arc<Proxy>,
    io: I,
    protocol: Protocol,
    conn: Conn,
    limits: Limits,
    head_by: Instant,
    phase: watch::Receiver<Phase>,
    held: Held,
) where
    I: Wait + AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    let io = Sending::new(io);
    match protocol {
        Protocol::Http1 => serve_http1(proxy, io, conn, limits, head_by, phase, held).await,
        // Boxed: an HTTP/2 connection's state is large, and every HTTP/1
        // connection's task would otherwise be as large.
        Protocol::Http2 => Box::pin(serve_http2(proxy, io, conn, limits, head_by, phase)).await,
    }
}

/// Serves HTTP/2 on `io` until it closes.
async fn serve_http2<I>(
    proxy: Arc<Proxy>,
    io: Sending<I>,
    conn: Conn,
    limits: Limits,
    stream_by: Instant,
    mut phase: watch::Receiver<Phase>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The same clock as HTTP/1's: a connection with no stream open must
    // start one within the header timeout (a client that sends the preface,
    // or half a header block, and then nothing is closed).
    let activity = Arc::new(Activity::new(Verdict::unscanned(), io.stall().clone()));
    let resets = Arc::new(Resets::new(limits.http2_max_resets));
    let metrics = proxy.metrics.clone();
    let service = {
        let (activity, resets, metrics) = (activity.clone(), resets.clone(), metrics.clone());
        service_fn(move |request| {
            let (answering, _) = activity.start();
            let unanswered = resets.start(&metrics);
            let (proxy, conn) = (proxy.clone(), conn.clone());
            // Dropped by hyper when the client resets the stream: the
            // forwarding is cancelled with it, and the reset counted.
            async move {
                let response = proxy.handle(request, &conn).await;
                unanswered.answered();
                Ok::<_, Infallible>(response.map(|body| answering.until_sent(body)))
            }
        })
    };
    let connection = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.http2_max_streams)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let watch = Watch {
        clock: Some((&activity, limits.header_timeout, stream_by)),
        parks: false,
        resets: Some(&resets),
        stall: Some((activity.stall(), limits.send_timeout)),
    };
    let driven = drive(connection, |c| c.graceful_shutdown(), watch, &mut phase).await;
    if resets.abusive() {
        metrics.count_abusive_connection();
    }
    if let Driven::Ended(Err(error)) = driven {
        debug!(%error, "connection ended with an error");
    }
}

/// Serves HTTP/1 on `io` until it closes, parking the connection whenever
/// it has been idle for a while (see [`park`]).
///
/// The first time it parks, the connection moves to a task of its own,
/// allocated then, and this one ends. A task spawned at accept was
/// allocated among the buffers and requests of busy connections; kept for
/// hours by an idle one, it pins their freed memory around it. Allocated at
/// parking time, next to other parked connections' tasks, it does not: this
/// cut the resident memory of ten thousand idle connections by a quarter.
async fn serve_http1<I>(
    proxy: Arc<Proxy>,
    io: Sending<I>,
    conn: Conn,
    limits: Limits,
    head_by: Instant,
    mut phase: watch::Receiver<Phase>,
    held: Held,
) where
    I: Wait + AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    let stall = io.stall().clone();
    let scanned = Scanned::new(io, limits.max_header_bytes);
    let activity = Arc::new(Activity::new(scanned.verdict(), stall));
    let stream = Resumable::new(scanned, activity.clone());
    let served = serve_until_parked(
        &proxy,
        stream,
        conn.clone(),
        limits,
        head_by,
        &activity,
        &mut phase,
    );
    let Some(stream) = served.await else {
        return;
    };
    let idle = Idle {
        proxy,
        conn,
        limits,
        activity,
        phase,
        _held: held,
    };
    tokio::spawn(idle.serve(stream).in_current_span());
}

/// A parked HTTP/1 connection's task: everything it keeps between two
/// hyper instances.
struct Idle {
    proxy: Arc<Proxy>,
    conn: Conn,
    limits: Limits,
    activity: Arc<Activity>,
    phase: watch::Receiver<Phase>,
    _held: Held,
}

impl Idle {
    /// Waits, parked, for the client's next request, serves it and those
    /// that follow with a new hyper instance, and parks again, until the
    /// connection ends.
    async fn serve<I>(mut self, mut stream: Resumable<Scanned<I>>)
    where
        I: Wait + AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
    {
        let header_timeout = self.limits.header_timeout;
        loop {
            stream.get_mut().shrink();
            debug!("idle connection parked");
            let parked = self.proxy.metrics.count_parked();
            // hyper would have closed it `timeouts.header` after it went
            // idle, which was at least `PARK_AFTER` ago.
            let deadline = Instant::now() + header_timeout.saturating_sub(PARK_AFTER);
            let woken = tokio::select! {
                ready = std::future::poll_fn(|cx| Wait::poll_client(&stream, cx)) => ready.map_err(Some),
                () = tokio::time::sleep_until(deadline) => {
                    debug!(timeout = ?header_timeout, "idle connection closed");
                    Err(None)
                }
                _ = self.phase.wait_for(|p| *p >= Phase::Draining) => Err(None),
            };
            drop(parked);
            match woken {
                Ok(()) => {}
                Err(Some(error)) => {
                    debug!(%error, "parked connection failed");
                    return;
                }
                Err(None) => {
                    let _ = stream.shutdown().await;
                    return;
                }
            }
            // Boxed, so that the parked task keeps none of the serving state.
            // The head that woke it gets the whole header timeout.
            let served = Box::pin(serve_until_parked(
                &self.proxy,
                stream,
                self.conn.clone(),
                self.limits,
                Instant::now() + header_timeout,
                &self.activity,
                &mut self.phase,
            ));
            stream = match served.await {
                Some(stream) => stream,
                None => return,
            };
        }
    }
}

/// Serves `stream` with one hyper instance until the connection ends
/// (`None`) or is parked: then the stream comes back, open, between two
/// messages. The next request head must be in by `head_by`.
async fn serve_until_parked<I>(
    proxy: &Arc<Proxy>,
    stream: Resumable<Scanned<I>>,
    conn: Conn,
    limits: Limits,
    head_by: Instant,
    activity: &Arc<Activity>,
    phase: &mut watch::Receiver<Phase>,
) -> Option<Resumable<Scanned<I>>>
where
    I: Wait + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let (proxy, activity) = (proxy.clone(), activity.clone());
        service_fn(move |request| {
            let (answering, ambiguous) = activity.start();
            let (proxy, conn) = (proxy.clone(), conn.clone());
            async move {
                let response = if ambiguous {
                    proxy.refuse(ProxyError::BadRequest(AMBIGUOUS_LENGTH), &request)
                } else {
                    proxy.handle(request, &conn).await
                };
                Ok::<_, Infallible>(response.map(|body| answering.until_sent(body)))
            }
        })
    };
    // hyper's own header timer is off: the driver's clock does that job
    // for less (see `HeadClock`).
    let mut connection = http1::Builder::new()
        .header_read_timeout(None)
        .max_header_size(limits.max_header_bytes)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let watch = Watch {
        clock: Some((activity, limits.header_timeout, head_by)),
        parks: true,
        resets: None,
        stall: Some((activity.stall(), limits.send_timeout)),
    };
    let driven = drive(
        Pin::new(&mut connection),
        |c| c.graceful_shutdown(),
        watch,
        phase,
    )
    .await;
    match driven {
        Driven::Parked => {}
        Driven::Ended(Ok(())) => return None,
        Driven::Ended(Err(error)) => {
            // Resets, header timeouts and malformed requests end up here;
            // they are the client's business and hyper has answered what it
            // could.
            debug!(%error, "connection ended with an error");
            return None;
        }
    }
    // hyper finished without an upgrade, so the parts are there.
    let parts = connection.into_parts()?;
    let mut stream = parts.io.into_inner();
    // A request that arrived while hyper was being stopped: hyper may have
    // read part of it, so the connection cannot go on.
    if activity.quiet().is_none() || !parts.read_buf.is_empty() {
        debug!("a request arrived as the connection was parked; closing");
        let _ = stream.shutdown().await;
        return None;
    }
    Some(stream)
}

/// How a connection's hyper instance ended.
enum Driven {
    /// The connection is over.
    Ended(hyper::Result<()>),
    /// hyper stopped between two messages and left the stream open.
    Parked,
}

/// How a connection is watched while [`drive`] runs it.
#[derive(Clone, Copy, Default)]
struct Watch<'a> {
    /// The connection's requests, its header timeout, and when the next
    /// request must have started: closed when it is late (see [`HeadClock`]).
    clock: Option<(&'a Activity, Duration, Instant)>,
    /// Whether it is stopped between two messages once it has been quiet
    /// for [`PARK_AFTER`] (HTTP/1).
    parks: bool,
    /// Its HTTP/2 stream resets: sent GOAWAY and closed once they are
    /// abuse.
    resets: Option<&'a Resets>,
    /// Its writes to the client, and `timeouts.send`: closed once its
    /// writes have waited that long (a client that does not read).
    stall: Option<(&'a Stall, Duration)>,
}

/// Runs a connection until it ends, shutting it down gracefully when the
/// server drains and dropping it when the drain budget is spent; and as
/// `watch` says, closes it when its next request is late, parks it when
/// it is quiet, and shuts it down when it abuses stream resets.
async fn drive<C>(
    mut connection: Pin<&mut C>,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
    watch: Watch<'_>,
    phase: &mut watch::Receiver<Phase>,
) -> Driven
where
    C: Future<Output = hyper::Result<()>>,
{
    let activity = watch.clock.map(|(activity, ..)| activity);
    // Not registered with the runtime until the clock first polls it.
    let deadline = tokio::time::sleep_until(watch.clock.map_or_else(Instant::now, |(.., by)| by));
    tokio::pin!(deadline);
    let mut clock = watch
        .clock
        .map(|(activity, timeout, _)| HeadClock::new(activity, timeout, deadline.as_mut()));
    let mut ticks = (watch.parks || watch.stall.is_some())
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
            () = abused(watch.resets), if watch.resets.is_some() => {
                warn!(max = watch.resets.map(Resets::max), "client reset most of its streams; sending GOAWAY");
                break Stop::Abuse;
            }
            now = tick(ticks.as_mut()) => {
                if let Some((stall, timeout)) = watch.stall {
                    if stall.waited(now).is_some_and(|waited| waited >= timeout) {
                        debug!(timeout = ?timeout, "the client took no byte of its answer in time; closing");
                        return Driven::Ended(Ok(()));
                    }
                }
                if !watch.parks {
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

impl Proxy {
    /// Answers one request: the upstream's response, or the proxy's own
    /// answer to whatever went wrong (logged once, here).
    async fn handle(&self, mut request: Request<Incoming>, conn: &Conn) -> Response<Body> {
        let started = Instant::now();
        let version = request.version();
        let response = match self.route(&mut request, conn) {
            Ok(Routing::Answered(response)) if http_body::Body::is_end_stream(request.body()) => {
                response
            }
            Ok(Routing::Answered(response)) => {
                // Boxed: only requests with a body pay for its state.
                let (budget, limit) = {
                    let snapshot = self.state.load();
                    let config = &snapshot.config;
                    (config.timeouts.header, config.listener.max_discard_bytes)
                };
                Box::pin(unread::answer(request, response, budget, limit)).await
            }
            Ok(Routing::Forward(forward)) => {
                let has_body = !http_body::Body::is_end_stream(request.body());
                // Boxed: forwarding's state is kilobytes, and hyper moves
                // the future of every request it serves; this way only
                // forwarded requests pay for it, and once (see
                // `boxed_forward` for why boxing takes a function).
                let response = match self.boxed_forward(request, conn, &forward).await {
                    Ok(response) => response,
                    Err(error) => {
                        let mut response = self.failed(error, version, conn);
                        // Part of the body may be unread: the client must
                        // not send its next request on this connection.
                        if has_body && version < Version::HTTP_2 {
                            response.headers_mut().insert(
                                http::header::CONNECTION,
                                http::HeaderValue::from_static("close"),
                            );
                        }
                        response
                    }
                };
                forward.pool.requests.count(response.status());
                response
            }
            Err(error) => self.failed(error, version, conn),
        };
        self.metrics.observe_duration(started.elapsed());
        response
    }

    /// [`Proxy::forward`]'s future, boxed. Boxing it in a plain function
    /// matters: written as `Box::pin(self.forward(..)).await` inside
    /// `handle`, the unboxed future is a temporary of `handle`'s own state
    /// machine, which then reserves its 3.6 KiB anyway, and hyper moves
    /// that 5 KiB service future for every request instead of 1.4 KiB.
    fn boxed_forward<'a>(
        &'a self,
        request: Request<Incoming>,
        conn: &'a Conn,
        forward: &'a Forward,
    ) -> Pin<Box<impl Future<Output = Result<Response<Body>, ProxyError>> + Send + 'a>> {
        Box::pin(self.forward(request, conn, forward))
    }

    /// The proxy's answer to `error`, logged.
    fn failed(&self, error: ProxyError, version: Version, conn: &Conn) -> Response<Body> {
        if error.is_client_error() {
            debug!(%error, "refused request");
        } else {
            warn!(%error, client.addr = %conn.peer, "request failed");
        }
        error.to_response(version)
    }

    /// Answers `request` with `error` without looking any further at it.
    fn refuse(&self, error: ProxyError, request: &Request<Incoming>) -> Response<Body> {
        debug!(%error, "refused request");
        error.to_response(request.version())
    }

    /// Checks the request's head and decides, from the one state load of
    /// this request, whether the proxy answers it itself (redirect to
    /// HTTPS, maintenance gate) or which pool it goes to.
    ///
    /// The path is normalized first (see [`path`]), and the request goes on
    /// with the path the gate read.
    fn route(&self, request: &mut Request<Incoming>, conn: &Conn) -> Result<Routing, ProxyError> {
        let target = frontdoor::check(
            request.method(),
            request.uri(),
            request.version(),
            request.headers(),
        )?;
        // Only a request with a body can have a transfer coding.
        if !http_body::Body::is_end_stream(request.body()) {
            frontdoor::check_transfer_coding(request.headers())?;
        }
        if let Some(normalized) =
            path::normalize(request.uri().path()).map_err(ProxyError::BadRequest)?
        {
            *request.uri_mut() = with_path(request.uri(), &normalized)?;
        }
        // The gate, the pool and the timeouts all come from
        // this snapshot.
        let snapshot = self.state.load();
        let preview = snapshot.config.preview.as_ref();
        let redirect = match conn.route {
            Route::Live => snapshot.config.listener.redirect_https,
            Route::Preview => preview.is_some_and(|p| p.redirect_https),
        };
        if redirect {
            return Ok(Routing::Answered(redirect_to_https(
                request,
                target.authority.as_ref(),
            )));
        }
        if let Some(gate) = &snapshot.gate {
            let bypass =
                conn.route == Route::Preview && preview.is_some_and(|p| p.bypass_maintenance);
            if !bypass && !gate.admits(request.uri().path(), conn.peer.ip()) {
                self.metrics.count_gated();
                return Ok(Routing::Answered(
                    gate.response(request.headers().get(ACCEPT)),
                ));
            }
        }
        let pool = match conn.route {
            Route::Live => snapshot.live.clone(),
            Route::Preview => snapshot.idle.clone(),
        };
        Ok(Routing::Forward(Forward {
            target,
            pool,
            timeouts: snapshot.config.timeouts,
        }))
    }

    /// Forwards `request` to `forward.pool` and passes on the answer.
    async fn forward(
        &self,
        mut request: Request<Incoming>,
        conn: &Conn,
        forward: &Forward,
    ) -> Result<Response<Body>, ProxyError> {
        let Conn {
            forwarded_for,
            route,
            https,
            ..
        } = conn;
        let Forward {
            target,
            pool,
            timeouts,
        } = forward;
        let client_upgrade = target.upgrade.then(|| hyper::upgrade::on(&mut request));
        let (parts, incoming) = request.into_parts();
        // Kept for a tunnel, which the gate keeps judging by it.
        let upgrade_path = target.upgrade.then(|| parts.uri.path().to_owned());
        let mut headers = parts.headers;
        headers::prepare_request(
            &mut headers,
            target.authority.as_ref(),
            forwarded_for,
            if *https { "https" } else { "http" },
            target.upgrade,
        );
        let mut body = match Body::read_ahead(incoming, timeouts.header).await {
            ReadAhead::Ready(body) => body,
            ReadAhead::Failed(error) => {
                return Err(ProxyError::BadRequestBody(forward::error_chain(&error)))
            }
            ReadAhead::TimedOut(_) => return Err(ProxyError::ClientBodyTimeout(timeouts.header)),
        };
        body.limit_pauses(timeouts.client_body);
        let head = Outgoing {
            method: parts.method,
            path: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            headers,
        };
        let answer = forward::send(pool, head, body, timeouts).await?;
        if answer.response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return match client_upgrade {
                Some(client_upgrade) => {
                    let origin = TunnelOrigin {
                        pool: pool.name.clone(),
                        route: *route,
                        path: upgrade_path.unwrap_or_default(),
                        client: conn.peer.ip(),
                    };
                    Ok(self.tunnel(answer, client_upgrade, origin))
                }
                None => Err(ProxyError::BadUpstreamResponse {
                    upstream: answer.in_flight.upstream().authority.clone(),
                    reason: "101 Switching Protocols to a request that asked for no upgrade"
                        .to_owned(),
                }),
            };
        }
        let Answer {
            response,
            in_flight,
        } = answer;
        let (mut parts, body) =
            forward::vet_response(&in_flight.upstream().authority, response).await?;
        headers::prepare_response(&mut parts.headers, false);
        Ok(Response::from_parts(
            parts,
            body.on_completion(Box::new(in_flight)),
        ))
    }

    /// Passes the upstream's `101` to the client and, once both sides have
    /// switched, copies bytes both ways until either closes, the server
    /// stops, or `timeouts.drain` has passed since the tunnel stopped being
    /// wanted: its pool is no longer the one its listener routes to, or the
    /// gate is on and would not let its request through.
    fn tunnel(
        &self,
        answer: Answer,
        client_upgrade: OnUpgrade,
        origin: TunnelOrigin,
    ) -> Response<Body> {
        let Answer {
            mut response,
            in_flight,
        } = answer;
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let tracked = self.lifecycle.track();
        let mut phase = self.lifecycle.watch();
        let retired = retired(self.state.clone(), origin);
        tokio::spawn(
            async move {
                // Both guards live as long as the tunnel.
                let _tracked = tracked;
                let _tunnel = in_flight.into_tunnel();
                let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok(pair) => pair,
                    Err(error) => {
                        debug!(%error, "upgrade did not complete");
                        return;
                    }
                };
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                tokio::select! {
                    copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
                        Ok((up, down)) => debug!(bytes.up = up, bytes.down = down, "tunnel closed"),
                        Err(error) => debug!(%error, "tunnel broken"),
                    },
                    // Dropping both ends closes them.
                    _ = phase.wait_for(|p| *p == Phase::Closing) => debug!("tunnel closed at shutdown"),
                    () = retired => info!("tunnel closed: its pool is no longer live, or maintenance is on, and the drain budget is spent"),
                }
            }
            .in_current_span(),
        );
        let (mut parts, _) = response.into_parts();
        headers::prepare_response(&mut parts.headers, true);
        Response::from_parts(parts, Body::empty())
    }
}

/// `uri` with its path replaced by `path` (its query kept).
fn with_path(uri: &http::Uri, path: &str) -> Result<http::Uri, ProxyError> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = http::uri::Parts::from(uri.clone());
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_| ProxyError::BadRequest("invalid request target"))?,
    );
    http::Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid request target"))
}

/// Where a request goes, decided by [`Proxy::route`].
enum Routing {
    /// The proxy answers it itself.
    Answered(Response<Body>),
    /// It goes to a pool.
    Forward(Forward),
}

/// What forwarding a request needs, from the snapshot it was routed by.
struct Forward {
    target: frontdoor::Target,
    pool: Arc<Pool>,
    timeouts: Timeouts,
}

/// What a tunnel was opened for: enough to tell, at every later change,
/// whether it would still be let through.
struct TunnelOrigin {
    pool: String,
    route: Route,
    path: String,
    client: std::net::IpAddr,
}

impl TunnelOrigin {
    /// Whether `state` would still send this tunnel's request where it
    /// went: its pool is still the one its listener routes to, and the
    /// gate (if on) still admits it. Preview tunnels go to the pool that
    /// is not live by design.
    fn still_wanted(&self, state: &SharedState) -> bool {
        let snapshot = state.load();
        let preview = snapshot.config.preview.as_ref();
        let routed_here = match self.route {
            Route::Live => snapshot.decisions.live_pool == self.pool,
            Route::Preview => true,
        };
        let bypass = self.route == Route::Preview && preview.is_some_and(|p| p.bypass_maintenance);
        let gated = !bypass
            && snapshot
                .gate
                .as_ref()
                .is_some_and(|gate| !gate.admits(&self.path, self.client));
        routed_here && !gated
    }
}

/// Resolves once the tunnel of `origin` has not been wanted (see
/// [`TunnelOrigin::still_wanted`]) for `timeouts.drain` in a row: after a
/// switch away from its pool, or once the gate is on. A change back within
/// the budget lets the tunnel live on.
async fn retired(state: Arc<SharedState>, origin: TunnelOrigin) {
    let mut changes = state.subscribe();
    loop {
        while origin.still_wanted(&state) {
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
        let deadline = Instant::now() + state.load().config.timeouts.drain;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                    if origin.still_wanted(&state) {
                        break;
                    }
                }
            }
        }
    }
}

/// `308 Permanent Redirect` to the same host (default HTTPS port) and the
/// same path and query, over https.
fn redirect_to_https(
    request: &Request<Incoming>,
    authority: Option<&http::uri::Authority>,
) -> Response<Body> {
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| authority.map(|a| a.as_str().to_owned()))
        .unwrap_or_default();
    // Drop a port (the plain listener's); keep an IPv6 literal whole.
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name.to_owned()
        }
        _ => host,
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let location = format!("https://{host}{path}");
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(location) = http::HeaderValue::from_str(&location) {
        response
            .headers_mut()
            .insert(http::header::LOCATION, location);
    }
    response
}
