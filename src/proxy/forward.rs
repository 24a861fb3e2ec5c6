//! Sending a checked request to an upstream of a pool and vetting the answer.
//!
//! Plain upstreams are reached on the proxy's own kept-alive HTTP/1
//! connections ([`keepalive`]); TLS upstreams through hyper-util's
//! pooling client, which also speaks HTTP/2 to them. A request whose connection attempt
//! failed (no byte of it was sent) is retried once on another upstream of
//! the pool; anything else is not retried, since the upstream may have acted
//! on it. The whole exchange, up to the response head, is bounded by
//! `timeouts.upstream`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use tracing::{debug, warn};

use super::error::ProxyError;
use crate::body::{Body, BodyError, Progress, ReadAhead};
use crate::config::Timeouts;
use crate::upstream::keepalive;
use crate::upstream::{InFlight, Pool};

/// How long to wait for the first chunk of an upstream's response body
/// before passing the head on anyway. Within it, a malformed first chunk
/// becomes a clean 502; past it (a slow stream, server-sent events), the
/// head goes to the client and a later failure aborts the connection.
const RESPONSE_READ_AHEAD: Duration = Duration::from_millis(50);

/// How often an upload's turn is looked at, for the upstream's clock.
const TURN_CHECK: Duration = Duration::from_secs(1);

/// A request head as it goes to an upstream.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Request method.
    pub method: Method,
    /// Path and query of the target.
    pub path: PathAndQuery,
    /// Headers, already rewritten for the upstream.
    pub headers: HeaderMap,
}

impl Outgoing {
    /// The request for an upstream connection of our own, its target in
    /// origin form (`/path?query`).
    fn into_request(self, body: Body) -> Request<Body> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = Uri::from(self.path);
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = self.headers;
        request
    }

    /// The request for hyper-util's client, which picks a connection by
    /// the target's scheme and authority (and sends it in origin form).
    fn into_tls_request(self, upstream: &Authority, body: Body) -> Request<Body> {
        let mut request = self.into_request(body);
        let mut parts = http::uri::Parts::from(std::mem::take(request.uri_mut()));
        parts.scheme = Some(Scheme::HTTPS);
        parts.authority = Some(upstream.clone());
        *request.uri_mut() =
            Uri::from_parts(parts).expect("scheme, authority and path make a valid URI");
        request
    }
}

/// An upstream's answer, with the upstream still counted as busy.
pub struct Answer {
    /// The response as received.
    pub response: Response<Incoming>,
    /// The in-flight count of the upstream that answered.
    pub in_flight: InFlight,
}

/// Sends `head` and `body` to an upstream of `pool`.
///
/// Who a failure is blamed on decides what follows (see [`Origin`]): only
/// the upstream's own failures count against its health; a client's
/// broken body is the client's `400`; a kept-alive connection that the
/// upstream closed just as it was reused is nobody's fault, and a request
/// that can be sent again (an idempotent method without a body) is, on a
/// new connection (see [`keepalive::exchange`]).
pub async fn send(
    pool: &Pool,
    head: Outgoing,
    mut body: Body,
    timeouts: &Timeouts,
) -> Result<Answer, ProxyError> {
    let no_upstream = || ProxyError::NoHealthyUpstream {
        pool: pool.name.clone(),
    };
    let mut in_flight = pool.pick(None).ok_or_else(no_upstream)?;
    // An empty body needs no way back: a retry sends a new empty one.
    let empty = http_body::Body::is_end_stream(&body);
    // The upstream has `timeouts.upstream` to answer, counted only while
    // the upload (if any) is not waiting on its client: a client's slow
    // upload is not the upstream's slowness (the client's pauses have
    // `timeouts.client_body`), and an upstream that stops reading one is.
    let sent = (!empty).then(|| {
        let progress = Arc::new(Progress::default());
        body.report_to(progress.clone());
        progress
    });
    let overdue = async {
        let Some(progress) = &sent else {
            return tokio::time::sleep(timeouts.upstream).await;
        };
        loop {
            let now = Instant::now();
            let wake = match progress.upstream_turn_since() {
                Some(since) if now >= since + timeouts.upstream => return,
                Some(since) => (since + timeouts.upstream).min(now + TURN_CHECK),
                None => now + TURN_CHECK,
            };
            tokio::time::sleep_until(wake).await;
        }
    };
    tokio::pin!(overdue);
    // After a failed connect, once, on another upstream.
    let mut may_move = pool.has_alternative();
    // After a reused connection died under it, it may go again on a new one.
    let resendable = empty && is_idempotent(&head.method);
    let mut head = Some(head);
    loop {
        let upstream = in_flight.upstream().clone();
        let returned = (may_move && !empty).then(|| body.returnable());
        // The head is copied only while a second attempt may need it.
        let attempt = if may_move { head.clone() } else { head.take() };
        let attempt = attempt.expect("the head is kept while a retry is possible");
        let exchange = async {
            match pool.tls_client.as_deref() {
                // A TLS pool has a client of its own (its CA, its server
                // name), which retries a reused connection by itself.
                Some(client) => client
                    .request(attempt.into_tls_request(&upstream.authority, body))
                    .await
                    .map(|response| (response, None))
                    .map_err(Failed::from),
                None => keepalive::exchange(
                    &upstream,
                    attempt.into_request(body),
                    timeouts.connect,
                    resendable,
                )
                .await
                .map(|(response, connection)| (response, Some(connection)))
                .map_err(Failed::from),
            }
        };
        let exchanged = tokio::select! {
            // In order: no random draw per request.
            biased;
            exchanged = exchange => exchanged,
            () = overdue.as_mut() => {
                return Err(ProxyError::UpstreamTimeout {
                    upstream: upstream.authority.clone(),
                    timeout: timeouts.upstream,
                })
            }
        };
        let failed = match exchanged {
            Ok((response, connection)) => {
                if let Some(connection) = connection {
                    in_flight.hold(connection, sent.clone());
                }
                return Ok(Answer {
                    response,
                    in_flight,
                });
            }
            Err(failed) => failed,
        };
        match failed.origin {
            Origin::Client => return Err(client_failure(&*failed.error)),
            // Not the upstream's health: its keep-alive timeout met ours
            // (and the request could not be sent again).
            Origin::StaleConnection => return Err(classify(&upstream.authority, &*failed.error)),
            Origin::Connect | Origin::Upstream | Origin::Busy(_) => {}
        }
        let failure = match failed.origin {
            Origin::Busy(limit) => ProxyError::UpstreamBusy {
                upstream: upstream.authority.clone(),
                limit,
            },
            _ => classify(&upstream.authority, &*failed.error),
        };
        if let ProxyError::UpstreamUnreachable { reason, .. }
        | ProxyError::UpstreamTls { reason, .. } = &failure
        {
            // Passive health: a dead instance is out at once, not at the
            // next probe.
            if upstream.record_traffic_failure(reason.clone()) {
                warn!(pool = %pool.name, upstream = %upstream.authority, error = %reason, "upstream is unhealthy (failed on live traffic)");
            }
        }
        // Only a failed connect guarantees the upstream saw nothing; the
        // body comes back only if it was never polled.
        let nothing_sent = matches!(failed.origin, Origin::Connect | Origin::Busy(_));
        let body_back = match returned {
            _ if !may_move || !nothing_sent => None,
            Some(mut rx) => rx.try_recv().ok(),
            None => Some(Body::empty()),
        };
        let Some(returned_body) = body_back else {
            return Err(failure);
        };
        debug!(%failure, "retrying on another upstream");
        may_move = false;
        body = returned_body;
        in_flight = pool.pick(Some(&upstream)).ok_or(failure)?;
    }
}

/// Whether a request with `method` may be sent twice (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A failed attempt, from either kind of client.
struct Failed {
    error: Box<dyn std::error::Error + Send + Sync>,
    origin: Origin,
}

/// Whose failure an attempt was: the boundary where it arose says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// No connection could be opened (refused, timed out, TLS handshake):
    /// the upstream's, and it saw nothing of the request.
    Connect,
    /// A kept-alive connection closed under the request before any byte
    /// of an answer: the ordinary race of two keep-alive timeouts, nobody's
    /// fault.
    StaleConnection,
    /// The upstream reset, closed or broke its answer on a connection that
    /// was its own to keep.
    Upstream,
    /// The client's request body failed (cut off, reset, malformed).
    Client,
    /// Every connection the upstream may have (this many) is busy: it saw
    /// nothing of the request, and is not unhealthy for it.
    Busy(usize),
}

impl From<hyper_util::client::legacy::Error> for Failed {
    fn from(error: hyper_util::client::legacy::Error) -> Failed {
        let origin = if error.is_connect() {
            Origin::Connect
        } else if is_client_body_failure(&error) {
            Origin::Client
        } else {
            Origin::Upstream
        };
        Failed {
            error: Box::new(error),
            origin,
        }
    }
}

impl From<keepalive::Failure> for Failed {
    fn from(failure: keepalive::Failure) -> Failed {
        match failure {
            keepalive::Failure::Connect(error) => Failed {
                error: Box::new(error),
                origin: Origin::Connect,
            },
            keepalive::Failure::Busy { limit } => Failed {
                error: format!("all {limit} connections to the upstream are busy").into(),
                origin: Origin::Busy(limit),
            },
            keepalive::Failure::Exchange { error, reused } => {
                let origin = if is_client_body_failure(&error) {
                    Origin::Client
                } else if reused && keepalive::is_cut_short(&error) {
                    Origin::StaleConnection
                } else {
                    Origin::Upstream
                };
                Failed {
                    error: Box::new(error),
                    origin,
                }
            }
        }
    }
}

/// The request body the proxy was sending, if that is what failed: hyper
/// reports an error of the body it was given as a "user" error whose
/// source is that body's own error (the client's connection or stream
/// broke, or it paused too long).
fn client_body_failure<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
    std::iter::successors(Some(error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<hyper::Error>())
        .filter(|e| e.is_user())
        .find_map(|e| std::error::Error::source(e)?.downcast_ref::<BodyError>())
}

fn is_client_body_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    client_body_failure(error).is_some()
}

/// What the client is told when its own body failed.
fn client_failure(error: &(dyn std::error::Error + 'static)) -> ProxyError {
    match client_body_failure(error) {
        Some(BodyError::Stalled(limit)) => ProxyError::ClientBodyTimeout(*limit),
        _ => ProxyError::BadRequestBody(error_chain(error)),
    }
}

/// Sorts a client error into what the client is told.
fn classify(upstream: &Authority, error: &(dyn std::error::Error + 'static)) -> ProxyError {
    let hyper_error = std::iter::successors(Some(error), |e| e.source())
        .find_map(|e| e.downcast_ref::<hyper::Error>());
    if let Some(e) = hyper_error.filter(|e| e.is_parse() || e.is_parse_status()) {
        return ProxyError::BadUpstreamResponse {
            upstream: upstream.clone(),
            reason: e.to_string(),
        };
    }
    if is_tls_failure(error) {
        return ProxyError::UpstreamTls {
            upstream: upstream.clone(),
            reason: error_chain(error),
        };
    }
    ProxyError::UpstreamUnreachable {
        upstream: upstream.clone(),
        reason: error_chain(error),
    }
}

/// Whether a rustls error (a certificate that does not verify, a failed
/// handshake) is among `error`'s sources.
fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<rustls::Error>() {
            return true;
        }
        // An `io::Error` wrapping another reports the inner one's source,
        // not the inner one itself: step into it (connectors nest them).
        source = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

/// An error and its sources on one line.
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Checks an upstream's response and reads its first body chunk ahead, so
/// that a malformed response becomes a clean 502 rather than a truncated
/// answer passed off as complete.
pub async fn vet_response(
    upstream: &Authority,
    response: Response<Incoming>,
) -> Result<(http::response::Parts, Body), ProxyError> {
    let bad = |reason: String| ProxyError::BadUpstreamResponse {
        upstream: upstream.clone(),
        reason,
    };
    let (parts, incoming) = response.into_parts();
    if parts.headers.contains_key(CONTENT_LENGTH) && parts.headers.contains_key(TRANSFER_ENCODING) {
        return Err(bad(
            "both Content-Length and Transfer-Encoding (a smuggling vector)".to_owned(),
        ));
    }
    match Body::read_ahead(incoming, RESPONSE_READ_AHEAD).await {
        ReadAhead::Ready(body) | ReadAhead::TimedOut(body) => Ok((parts, body)),
        ReadAhead::Failed(error) => Err(bad(format!("body: {}", error_chain(&error)))),
    }
}
