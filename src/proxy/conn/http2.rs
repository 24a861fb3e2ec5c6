//! Serving a client connection that speaks HTTP/2.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::debug;

use super::activity::Activity;
use super::drive::{drive, Bounds};
use super::resets::Resets;
use super::stall::Sending;
use super::Serving;

/// Serves HTTP/2 on `io` until it closes.
pub(super) async fn serve<I>(mut serving: Serving, io: Sending<I>, stream_by: Instant)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The same clock as HTTP/1's: a connection with no stream open must
    // start one within the header timeout (a client that sends the preface,
    // or half a header block, and then nothing is closed).
    let activity = Arc::new(Activity::new(io.stall().clone()));
    let limits = serving.limits;
    let resets = Arc::new(Resets::new(limits.http2_max_resets));
    let metrics = serving.proxy.metrics.clone();
    let service = {
        let (activity, resets, metrics) = (activity.clone(), resets.clone(), metrics.clone());
        let (proxy, client) = (serving.proxy.clone(), serving.client.clone());
        service_fn(move |request| {
            let answering = activity.start();
            let unanswered = resets.start(&metrics);
            let (proxy, client) = (proxy.clone(), client.clone());
            // Dropped by hyper when the client resets the stream: the
            // forwarding is cancelled with it, and the reset counted.
            async move {
                let response = proxy.handle(request, &client).await;
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
    let bounds = Bounds {
        clock: Some((&activity, limits.header_timeout, stream_by)),
        resets: Some(&resets),
        stall: Some((activity.stall(), limits.send_timeout)),
    };
    let driven = drive(
        connection,
        |c| c.graceful_shutdown(),
        bounds,
        &mut serving.phase,
    )
    .await;
    if resets.abusive() {
        metrics.count_abusive_connection();
    }
    if let Err(error) = driven {
        debug!(%error, "connection ended with an error");
    }
}
