//! Forwarding an HTTP/2 client's request to an upstream of a pool, and
//! passing the answer back as a [`Body`] hyper streams to the client. (An
//! HTTP/1 client's requests never come here: the engine in `conn::h1`
//! forwards them itself.)
//!
//! ```text
//! pick an upstream ─► its shared HTTP/2 connection, if it has one (a TLS
//!   upstream that offered h2) ─► hyper's client (a request the connection
//!   did not take goes once more, on a new one)
//! else an idle HTTP/1 connection or a new one (a failed connect is retried
//!   once on another upstream; a new TLS one offers h2 and, if the upstream
//!   takes it, becomes the shared one)
//!   ─► the exchange (see `http1`) ─► the answer's body read from the
//!   connection as hyper asks for it (see `answer`)
//! ```

mod answer;
mod http1;

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use tokio::time::Instant;
use tracing::debug;

use super::exchange::{bad_answer, body_settled, is_idempotent, lost, timed_out, Picked};
use super::{headers, ProxyError};
use crate::body::{Body, Completion, Progress, ReadAhead};
use crate::config::Timeouts;
use crate::http1::{Kind, ResponseHead};
use crate::upstream::connection::{self, Connection};
use crate::upstream::http2::Hold;
use crate::upstream::{InFlight, Pool, Upstream};
use answer::AnswerBody;
use http1::Attempt;

/// How long to wait for the first chunk of an upstream's response body
/// before passing the head on anyway. Within it, a malformed first chunk
/// becomes a clean 502; past it (a slow stream, server-sent events), the
/// head goes to the client and a later failure resets the stream.
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

/// Sends `head` and `body` to an upstream of `pool` and returns its answer,
/// ready for the client. Each upstream tried is noted in `tried`, if given:
/// the last one had the request, whatever becomes of it.
pub async fn send(
    pool: &Pool,
    mut head: Outgoing,
    mut body: Body,
    timeouts: &Timeouts,
    mut tried: Option<&mut Option<Arc<Upstream>>>,
) -> Result<Response<Body>, ProxyError> {
    let mut picked = Picked::from(pool)?;
    let framing = http1::framing(&body);
    let mut written = Vec::with_capacity(512);
    http1::request_head(&head, framing, &mut written);
    let request = http1::Request {
        head: &written,
        framing,
        to_head: head.method == Method::HEAD,
        resendable: !framing.has_body() && is_idempotent(&head.method),
    };
    let offers_h2 = pool.tls_connect_h2.is_some();
    // After a reused HTTP/1 connection closed under a request that may go
    // again: a new connection only.
    let mut fresh_only = false;
    // After the shared HTTP/2 connection stopped taking requests: not that
    // one (a new one opened since is welcome).
    let mut skip_shared = false;
    // The request goes again at most once after the shared connection did
    // not take it, and wakes at most once for a connection shared meanwhile.
    let (mut h2_retried, mut woken) = (false, false);
    loop {
        let upstream = picked.upstream().clone();
        if let Some(tried) = tried.as_deref_mut() {
            *tried = Some(upstream.clone());
        }
        // Made before looking, so that a connection shared meanwhile wakes
        // a request waiting for room of its own.
        let opened = upstream.http2.opened();
        let shared = (offers_h2 && !skip_shared)
            .then(|| upstream.http2.get())
            .flatten();
        let (sender, hold) = match shared {
            Some(shared) => shared,
            None => {
                // Until a TLS upstream has said whether it speaks h2, a
                // request opens a connection that offers it rather than
                // take an idle HTTP/1 one (an HTTP/1 client's), while there
                // is room for one: without room, an idle one will do.
                let h2_unknown = offers_h2
                    && upstream.http2.may_speak_h2()
                    && upstream.slots.available_permits() > 0;
                let checkout = connection::checkout(
                    &upstream.authority,
                    &upstream.connections,
                    &upstream.slots,
                    upstream.max_connections(),
                    pool.tls_connect_h2.as_ref(),
                    timeouts.connect,
                    fresh_only || h2_unknown,
                );
                let checkout = tokio::select! {
                    biased;
                    checkout = checkout => checkout,
                    // A connection became shared (a new one): it takes the
                    // request instead.
                    () = opened, if offers_h2 && !woken => {
                        (woken, skip_shared) = (true, false);
                        continue;
                    }
                };
                let checkout = match checkout {
                    Ok(checkout) => checkout,
                    Err(error) => {
                        picked.connect_failed(error)?;
                        (fresh_only, skip_shared) = (false, false);
                        continue;
                    }
                };
                let reused = checkout.idle_since.is_some();
                let mut connection = checkout.connection;
                if !connection.speaks_h2() {
                    if h2_unknown {
                        upstream.http2.declined();
                    }
                    let mut buf = Vec::new();
                    let mut answer = ResponseHead::default();
                    let exchanged = http1::exchange(
                        &mut connection,
                        &request,
                        &mut body,
                        reused,
                        &upstream,
                        timeouts,
                        &mut buf,
                        &mut answer,
                    )
                    .await;
                    match exchanged {
                        Ok(upload_done) => {
                            let in_flight = picked.into_in_flight();
                            let settled =
                                body_settled(upload_done, framing.has_body(), answer.status);
                            let response =
                                answered(connection, buf, &answer, settled, in_flight).await?;
                            return Ok(response);
                        }
                        Err(Attempt::Resend) => {
                            debug!(upstream = %upstream.authority, "reused connection closed under the request; sending it again on a new one");
                            fresh_only = true;
                            continue;
                        }
                        Err(Attempt::Failed(error)) => return Err(error),
                    }
                }
                upstream
                    .http2
                    .start(connection)
                    .await
                    .map_err(|error| lost(&upstream, false, &error.to_string()))?
            }
        };
        match over_http2(sender, head, body, &upstream, timeouts).await? {
            OverHttp2::Answered(response) => {
                let completion = Box::new(OnShared {
                    _in_flight: picked.into_in_flight(),
                    _hold: hold,
                });
                return Ok(response.map(|body| body.on_completion(completion)));
            }
            OverHttp2::Unsent(unsent_head, unsent_body, retry) if !h2_retried => {
                h2_retried = true;
                (head, body) = (unsent_head, unsent_body);
                match retry {
                    // The connection goes on: the stream was one too many
                    // for the upstream just then.
                    Retry::Refused => {
                        debug!(upstream = %upstream.authority, "the upstream refused the stream unprocessed; sending the request again");
                    }
                    Retry::Elsewhere => {
                        debug!(upstream = %upstream.authority, "the HTTP/2 connection takes no more requests; sending the request on a new one");
                        upstream.http2.forget(&hold);
                        skip_shared = true;
                    }
                }
            }
            OverHttp2::Unsent(..) => {
                return Err(lost(
                    &upstream,
                    true,
                    "the upstream did not take the request, sent twice",
                ))
            }
        }
    }
}

/// What an answer over a shared HTTP/2 connection holds until it has been
/// read: its count on the upstream, and its hold on the connection (not
/// let go as idle while held).
#[derive(Debug)]
struct OnShared {
    _in_flight: InFlight,
    _hold: Hold,
}

impl Completion for OnShared {
    fn complete(self: Box<Self>) {}
}

/// The client's answer from an HTTP/1 upstream's `answer`, whose head is
/// at the start of `buf`; `settled`: whether the request's body leaves the
/// connection fit for another request (see [`body_settled`]).
async fn answered(
    connection: Connection,
    buf: Vec<u8>,
    answer: &ResponseHead,
    settled: bool,
    in_flight: InFlight,
) -> Result<Response<Body>, ProxyError> {
    let upstream = in_flight.upstream().clone();
    if answer.status == 101 {
        return Err(bad_answer(
            &upstream,
            "101 Switching Protocols to a request that asked for no upgrade",
        ));
    }
    let mut response = Response::new(Body::empty());
    *response.status_mut() =
        StatusCode::from_u16(answer.status).map_err(|_| bad_answer(&upstream, "invalid status"))?;
    let fields = response.headers_mut();
    let mut length = None;
    for field in &answer.fields {
        // One canonical length, however the upstream repeated it (`5, 5`,
        // or two fields): HTTP/2 clients refuse anything else. The parser
        // has checked they all agree.
        if field.kind == Kind::ContentLength {
            length = length.or_else(|| crate::http1::content_length(field.value.of(&buf)));
            continue;
        }
        let name = HeaderName::from_bytes(field.name.of(&buf));
        let value = HeaderValue::from_bytes(field.value.of(&buf));
        let (Ok(name), Ok(value)) = (name, value) else {
            return Err(bad_answer(&upstream, "malformed header field"));
        };
        fields.append(name, value);
    }
    headers::prepare_response(fields);
    // A 204 has no body and may not say it has (RFC 9110, section 8.6):
    // an HTTP/2 client refuses one whose length is not 0.
    let length = length.filter(|_| answer.status != 204);
    if let Some(length) = length {
        fields.insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    let reusable = settled && !answer.close;
    if !answer.framing.has_body() {
        if reusable && buf.len() == answer.len {
            upstream.connections.put(connection);
        }
        return Ok(response);
    }
    let source = AnswerBody::new(
        connection,
        buf,
        answer.len,
        answer.framing,
        reusable,
        in_flight,
    );
    *response.body_mut() = read_ahead(Body::from_source(Box::new(source)), &upstream).await?;
    Ok(response)
}

/// How a request on a shared HTTP/2 connection went.
enum OverHttp2 {
    /// The upstream answered.
    Answered(Response<Body>),
    /// The upstream did not take the request: here it is back, untouched,
    /// with where it may go again.
    Unsent(Outgoing, Body, Retry),
}

/// Where a request the upstream did not take may go again.
#[derive(Debug, Clone, Copy)]
enum Retry {
    /// On the same connection: the upstream refused the stream
    /// (`REFUSED_STREAM`) and goes on.
    Refused,
    /// On a new connection: this one closed before the request went out,
    /// or takes no more (past the last stream its `GOAWAY` kept).
    Elsewhere,
}

/// Sends the request on an upstream's shared HTTP/2 connection.
///
/// The upstream has `timeouts.upstream` to answer, counted only while the
/// upload (if any) is not waiting on its client: a client's slow upload is
/// not the upstream's slowness (the client's pauses have
/// `timeouts.client_body`), and an upstream that stops reading one is.
async fn over_http2(
    mut sender: hyper::client::conn::http2::SendRequest<Body>,
    head: Outgoing,
    mut body: Body,
    upstream: &Upstream,
    timeouts: &Timeouts,
) -> Result<OverHttp2, ProxyError> {
    let sent = (!http_body::Body::is_end_stream(&body)).then(|| {
        let progress = Arc::new(Progress::default());
        body.report_to(progress.clone());
        progress
    });
    // A bodiless request the upstream did not take can go again: its head
    // is all there is to keep.
    let resendable = sent.is_none().then(|| head.clone());
    let idempotent = is_idempotent(&head.method);
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
    let mut request = Request::new(body);
    *request.method_mut() = head.method;
    *request.uri_mut() = Uri::from_parts({
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTPS);
        parts.authority = Some(upstream.authority.clone());
        parts.path_and_query = Some(head.path);
        parts
    })
    .expect("scheme, authority and path make a valid URI");
    *request.version_mut() = Version::HTTP_2;
    *request.headers_mut() = head.headers;
    let exchange = async {
        if sender.ready().await.is_err() {
            return Ok(Err((Some(request), Retry::Elsewhere)));
        }
        match sender.try_send_request(request).await {
            Ok(response) => Ok(Ok(response)),
            Err(mut error) => match (error.take_message(), unanswered(error.error(), idempotent)) {
                (Some(request), _) => Ok(Err((Some(request), Retry::Elsewhere))),
                (None, Some(retry)) if resendable.is_some() => Ok(Err((None, retry))),
                (None, _) => Err(match body_failure(error.error()) {
                    Some(failure) => http1::client_failure(failure),
                    None => lost(upstream, true, &error_chain(error.error())),
                }),
            },
        }
    };
    let response = tokio::select! {
        biased;
        response = exchange => response?,
        () = overdue => return Err(timed_out(upstream, timeouts)),
    };
    let response = match response {
        Ok(response) => response,
        Err((None, retry)) => {
            let head = resendable.expect("only a bodiless request is resent unreturned");
            return Ok(OverHttp2::Unsent(head, Body::empty(), retry));
        }
        Err((Some(request), retry)) => {
            let (parts, body) = request.into_parts();
            let head = Outgoing {
                method: parts.method,
                path: parts
                    .uri
                    .into_parts()
                    .path_and_query
                    .expect("the request was given a path"),
                headers: parts.headers,
            };
            return Ok(OverHttp2::Unsent(head, body, retry));
        }
    };
    let (mut parts, incoming) = response.into_parts();
    let body = read_ahead(Body::streamed(incoming), upstream).await?;
    headers::prepare_response(&mut parts.headers);
    Ok(OverHttp2::Answered(Response::from_parts(parts, body)))
}

/// An upstream's answer `body` with its first frame read ahead, within
/// [`RESPONSE_READ_AHEAD`]: a malformed first chunk is a clean 502 rather
/// than an answer cut once under way.
async fn read_ahead(body: Body, upstream: &Upstream) -> Result<Body, ProxyError> {
    match body.read_ahead(RESPONSE_READ_AHEAD).await {
        ReadAhead::Ready(body) | ReadAhead::TimedOut(body) => Ok(body),
        ReadAhead::Failed(error) => Err(bad_answer(
            upstream,
            format!("body: {}", error_chain(&error)),
        )),
    }
}

/// Whether, and where, a bodiless request may go again after its stream
/// failed with `error` before an answer: when the upstream did not process
/// it (RFC 9113, section 8.7: reset with `REFUSED_STREAM`, or past the last
/// stream a graceful `GOAWAY` kept), or, `idempotent`, when the connection
/// was lost under it (as over HTTP/1, where a kept-alive connection closed
/// under a request that may go twice costs no request).
fn unanswered(error: &hyper::Error, idempotent: bool) -> Option<Retry> {
    let chain: &(dyn std::error::Error + 'static) = error;
    let mut chain = std::iter::successors(Some(chain), |e| e.source());
    let Some(h2) = chain.clone().find_map(|e| e.downcast_ref::<h2::Error>()) else {
        // hyper passes the connection's I/O failure on as its own.
        let lost =
            error.is_closed() || error.is_canceled() || chain.any(|e| e.is::<std::io::Error>());
        return (idempotent && lost).then_some(Retry::Elsewhere);
    };
    let reason = h2.reason();
    if h2.is_remote() && h2.is_reset() && reason == Some(h2::Reason::REFUSED_STREAM) {
        return Some(Retry::Refused);
    }
    let unprocessed = h2.is_remote() && h2.is_go_away() && reason == Some(h2::Reason::NO_ERROR);
    let lost = h2.is_io() || (h2.is_go_away() && h2.is_remote());
    (unprocessed || (idempotent && lost)).then_some(Retry::Elsewhere)
}

/// The request body the proxy was sending, if that is what failed: hyper
/// reports an error of the body it was given as a "user" error whose
/// source is that body's own error.
fn body_failure(error: &hyper::Error) -> Option<&crate::body::BodyError> {
    let error: &(dyn std::error::Error + 'static) = error;
    std::iter::successors(Some(error), |e| e.source())
        .find_map(|e| e.downcast_ref::<crate::body::BodyError>())
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
