//! Answers the proxy gives before it has read a request's body: the
//! maintenance gate's 503, the redirect to HTTPS, an error before
//! forwarding.
//!
//! Most client libraries send a POST's head and body in two writes and do
//! not wait for an answer in between. If the proxy answered and went on to
//! read the next request, the unread body would be read as one; if it
//! closed without saying so, the client's next request on the connection
//! would fail with a broken pipe. So the proxy either reads and discards
//! the rest of the body, when it is small and arrives promptly, and keeps
//! the connection; or it says `Connection: close` and closes it after the
//! answer (HTTP/1; an HTTP/2 stream is reset on its own).

use std::time::Duration;

use http::header::{HeaderValue, CONNECTION, EXPECT};
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::debug;

use crate::body::Body;

/// Answers `request` with `response` without passing the request on,
/// reading and discarding up to `limit` bytes of its body for at most
/// `budget` first (`listener.max_discard_bytes`, `timeouts.header`); a body that is larger, slower, broken, or waits for
/// `100 Continue` gets `Connection: close` instead.
pub async fn answer(
    request: Request<Incoming>,
    mut response: Response<Body>,
    budget: Duration,
    limit: u64,
) -> Response<Body> {
    use http_body::Body as _;
    let version = request.version();
    if request.body().is_end_stream() || version >= Version::HTTP_2 {
        return response;
    }
    // A client that waits for `100 Continue` sends nothing unless asked:
    // asking only to discard what it sends would waste its upload.
    let waits_for_continue = request.headers().contains_key(EXPECT);
    // A `Content-Length` over the limit is known at once; a chunked body
    // is counted as it comes.
    let too_large = request.body().size_hint().lower() > limit;
    let discarded = !waits_for_continue
        && !too_large
        && discard(request.into_body(), limit, Instant::now() + budget).await;
    if !discarded {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads `body` to its end and drops it, unless it is larger than
/// `limit`, breaks, or is not done by `deadline`.
async fn discard(mut body: Incoming, limit: u64, deadline: Instant) -> bool {
    let mut read = 0u64;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_elapsed) => {
                debug!("unwanted request body too slow to discard; closing after the answer");
                return false;
            }
            Ok(None) => return true,
            Ok(Some(Err(error))) => {
                debug!(%error, "unwanted request body broke");
                return false;
            }
            Ok(Some(Ok(frame))) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > limit {
                    debug!("unwanted request body too large to discard; closing after the answer");
                    return false;
                }
            }
        }
    }
}
