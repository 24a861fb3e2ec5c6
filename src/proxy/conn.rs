//! The connection engine: accepting clients, telling HTTP/1 from h2c (or
//! completing TLS), and serving each connection until it ends, within the
//! bounds that keep one client from costing another.
//!
//! ```text
//! accept ─► sniff (plain: HTTP/1 or h2c) or TLS handshake (ALPN)
//!   ─► h1: the proxy's own engine, parked whenever quiet
//!   ─► http2: hyper until the connection ends, every request to
//!        `Proxy::handle`; run by `drive`: the head clock, the send stall,
//!        reset abuse, the drain
//! ```

/// Implements `AsyncWrite` for a wrapper stream by passing every call to
/// its `inner` field, for a wrapper that only looks at what is read.
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

mod activity;
mod drive;
mod h1;
mod http2;
mod park;
mod resets;
mod sniff;
mod stall;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use super::{headers, Client, Proxy, Route};
use crate::config::Config;
use crate::metrics::Counted;
use crate::shutdown::{Phase, Tracked};
use sniff::{Protocol, SniffError};
use stall::Sending;

/// The answer to plain HTTP sent to a TLS listener.
const PLAIN_HTTP_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nConnection: close\r\nContent-Length: 96\r\n\r\n{\"error\": {\"code\": \"bad_request\", \"message\": \"plain HTTP was sent to a port that speaks HTTPS\"}}";

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
            Err(error) => crate::accept::recover(&error, "public").await,
        }
    }
}

/// What serving one client connection needs, whichever protocol it speaks
/// and whichever task serves it (a parked HTTP/1 connection moves to a
/// task of its own and takes this along). While it lives, the connection
/// counts as open and a drain waits for it.
#[derive(Debug)]
struct Serving {
    proxy: Arc<Proxy>,
    /// Who the connection is with.
    client: Client,
    limits: Limits,
    /// The server's lifecycle: serving, draining, closing.
    phase: watch::Receiver<Phase>,
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

impl Limits {
    /// The limits `config` sets.
    fn of(config: &Config) -> Limits {
        Limits {
            header_timeout: config.timeouts.header,
            max_header_bytes: config.listener.max_header_bytes,
            send_timeout: config.timeouts.send,
            http2_max_streams: config.listener.http2_max_streams,
            http2_max_resets: config.listener.http2_max_resets,
        }
    }
}

async fn serve_connection(
    proxy: Arc<Proxy>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    route: Route,
    tracked: Tracked,
) {
    let _ = stream.set_nodelay(true);
    let open = proxy.metrics.count_connection();
    // The listener's settings as of this connection: a reload changes them
    // for the next one (new certificates for the next handshake).
    let (limits, tls) = {
        let snapshot = proxy.state.load();
        let config = &snapshot.config;
        let tls = match route {
            Route::Live => config.listener.tls.as_ref(),
            Route::Preview => config.preview.as_ref().and_then(|p| p.tls.as_ref()),
        };
        (Limits::of(config), tls.map(|t| t.server.clone()))
    };
    let phase = proxy.lifecycle.watch();
    let client = Client {
        addr: peer,
        forwarded_for: headers::forwarded_for(peer.ip()),
        route,
        https: tls.is_some(),
    };
    let mut serving = Serving {
        proxy,
        client,
        limits,
        phase,
        _open: open,
        _tracked: tracked,
    };
    let Some(server) = tls else {
        let header_timeout = limits.header_timeout;
        let deadline = Instant::now() + header_timeout;
        let sniffed = tokio::select! {
            sniffed = sniff::sniff(stream, deadline) => sniffed,
            _ = quiet_in_drain(&mut serving.phase) => return,
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
        return match protocol {
            Protocol::Http1 => {
                let (input, stream) = io.into_parts();
                Box::pin(h1::serve(serving, stream, input, deadline)).await
            }
            Protocol::Http2 => serve_http2(serving, io, deadline).await,
        };
    };
    // Boxed: a TLS connection's state is several KiB, and every plain
    // connection's task would otherwise be as large as the TLS one.
    Box::pin(serve_tls(serving, stream, server)).await;
}

/// Resolves [`park::PARK_AFTER`] into a drain. A connection accepted just
/// before it is most likely sending its first request now: closing it at
/// once would fail that request, and answering it (with `Connection:
/// close`) costs a moment. One whose client says nothing in that time is
/// closed.
async fn quiet_in_drain(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p != Phase::Serving).await;
    tokio::select! {
        () = tokio::time::sleep(park::PARK_AFTER) => {}
        _ = phase.wait_for(|p| *p == Phase::Closing) => {}
    }
}

/// Handshakes TLS within the header timeout, then serves HTTP/1 or HTTP/2
/// as ALPN chose.
async fn serve_tls(
    mut serving: Serving,
    stream: tokio::net::TcpStream,
    server: Arc<rustls::ServerConfig>,
) {
    let header_timeout = serving.limits.header_timeout;
    let deadline = Instant::now() + header_timeout;
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)) => peeked,
        _ = quiet_in_drain(&mut serving.phase) => return,
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
        _ = quiet_in_drain(&mut serving.phase) => return,
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
    match io.get_ref().1.alpn_protocol() {
        Some(b"h2") => serve_http2(serving, io, deadline).await,
        _ => h1::serve(serving, io, Vec::new(), deadline).await,
    }
}

/// Serves HTTP/2 on `io` (plain or TLS) until it closes. The first stream
/// must open by `stream_by`: the header timeout counts from the
/// connection's start, sniffing or handshake included.
async fn serve_http2<I>(serving: Serving, io: I, stream_by: Instant)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Boxed: an HTTP/2 connection's state is large, and every HTTP/1
    // connection's task would otherwise be as large.
    Box::pin(http2::serve(serving, Sending::new(io), stream_by)).await;
}
