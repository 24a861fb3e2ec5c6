//! Serving a client connection that speaks HTTP/1, parking it whenever it
//! goes quiet (see [`super::park`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, Instrument};

use super::drive::{drive, Bounds, Driven};
use super::framing::Scanned;
use super::park::{Activity, Resumable, Wait, PARK_AFTER};
use super::stall::Sending;
use super::Serving;
use crate::proxy::ProxyError;
use crate::shutdown::Phase;

/// Why a request with both `Content-Length` and `Transfer-Encoding` is refused.
const AMBIGUOUS_LENGTH: &str =
    "both Content-Length and Transfer-Encoding: the body length is ambiguous";

/// Serves HTTP/1 on `io` until it closes, parking the connection whenever
/// it has been idle for a while (see [`super::park`]).
///
/// The first time it parks, the connection moves to a task of its own,
/// allocated then, and this one ends. A task spawned at accept was
/// allocated among the buffers and requests of busy connections; kept for
/// hours by an idle one, it pins their freed memory around it. Allocated at
/// parking time, next to other parked connections' tasks, it does not (the
/// measurement is in the benchmark notes).
pub(super) async fn serve<I>(serving: Serving, io: Sending<I>, head_by: Instant)
where
    I: Wait + AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    let stall = io.stall().clone();
    let scanned = Scanned::new(io, serving.limits.max_header_bytes);
    let activity = Arc::new(Activity::new(scanned.verdict(), stall));
    let stream = Resumable::new(scanned, activity.clone());
    let mut connection = Http1 { serving, activity };
    let Some(stream) = connection.serve_until_parked(stream, head_by).await else {
        return;
    };
    tokio::spawn(connection.serve_parked(stream).in_current_span());
}

/// An HTTP/1 connection between two hyper instances: what it keeps while
/// it is parked.
struct Http1 {
    serving: Serving,
    /// Its requests, started and answered.
    activity: Arc<Activity>,
}

impl Http1 {
    /// Waits, parked, for the client's next request, serves it and those
    /// that follow with a new hyper instance, and parks again, until the
    /// connection ends.
    async fn serve_parked<I>(mut self, mut stream: Resumable<Scanned<I>>)
    where
        I: Wait + AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
    {
        let header_timeout = self.serving.limits.header_timeout;
        loop {
            stream.get_mut().shrink();
            debug!("idle connection parked");
            let parked = self.serving.proxy.metrics.count_parked();
            // hyper would have closed it `timeouts.header` after it went
            // idle, which was at least `PARK_AFTER` ago.
            let deadline = Instant::now() + header_timeout.saturating_sub(PARK_AFTER);
            let woken = tokio::select! {
                ready = std::future::poll_fn(|cx| Wait::poll_client(&stream, cx)) => ready.map_err(Some),
                () = tokio::time::sleep_until(deadline) => {
                    debug!(timeout = ?header_timeout, "idle connection closed");
                    Err(None)
                }
                _ = self.serving.phase.wait_for(|p| *p >= Phase::Draining) => Err(None),
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
            let served = Box::pin(self.serve_until_parked(stream, Instant::now() + header_timeout));
            stream = match served.await {
                Some(stream) => stream,
                None => return,
            };
        }
    }

    /// Serves `stream` with one hyper instance until the connection ends
    /// (`None`) or is parked: then the stream comes back, open, between two
    /// messages. The next request head must be in by `head_by`.
    async fn serve_until_parked<I>(
        &mut self,
        stream: Resumable<Scanned<I>>,
        head_by: Instant,
    ) -> Option<Resumable<Scanned<I>>>
    where
        I: Wait + AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Http1 { serving, activity } = self;
        let limits = serving.limits;
        let service = {
            let (proxy, activity) = (serving.proxy.clone(), activity.clone());
            let client = serving.client.clone();
            service_fn(move |request| {
                let (answering, ambiguous) = activity.start();
                let (proxy, client) = (proxy.clone(), client.clone());
                async move {
                    let response = if ambiguous {
                        proxy.refuse(ProxyError::BadRequest(AMBIGUOUS_LENGTH), &request)
                    } else {
                        proxy.handle(request, &client).await
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
        let bounds = Bounds {
            clock: Some((activity, limits.header_timeout, head_by)),
            parks: true,
            resets: None,
            stall: Some((activity.stall(), limits.send_timeout)),
        };
        let driven = drive(
            Pin::new(&mut connection),
            |c| c.graceful_shutdown(),
            bounds,
            &mut serving.phase,
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
}
