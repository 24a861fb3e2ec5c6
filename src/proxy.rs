//! The data plane: check each request, forward it to the live pool, stream
//! the answer back. The connections requests arrive on are `conn`'s: HTTP/1
//! ones are served by the proxy's own engine there, which shares the
//! judgement (`Proxy::judge`) with this file; HTTP/2 ones are served by
//! hyper, whose every request comes to `Proxy::handle` here.
//!
//! ```text
//! handle ─► route: front-door checks, path, one state load (gate, pool, timeouts)
//!   ─► forward: rewrite headers ─► read body ahead ─► send (see `forward`)
//!         ─► stream the answer back
//! ```
//!
//! Every failure is answered once, in `Proxy::handle`, from a
//! [`ProxyError`]; the inner steps just use `?`.

mod conn;
mod error;
mod exchange;
mod forward;
mod frontdoor;
pub mod headers;
mod pass;
mod record;
pub mod request_id;
mod tunnel;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{HeaderValue, ACCEPT};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::{debug, warn};

pub use conn::accept_loop;
pub use error::{json_response, ProxyError};

use crate::access_log::AccessLog;
use crate::body::{Body, ReadAhead};
use crate::config::Timeouts;
use crate::metrics::Metrics;
use crate::shutdown::Lifecycle;
use crate::state::gate::{path, Gate};
use crate::state::{SharedState, Snapshot};
use crate::upstream::{Pool, Upstream};
use forward::Outgoing;
use record::{Asked, Pending, Served};
use request_id::{RequestId, X_REQUEST_ID};

/// Which pool a listener routes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The public listener: the live pool.
    Live,
    /// The preview listener: the pool that is not live.
    Preview,
}

/// Who a connection is with, and how it arrived.
#[derive(Debug, Clone)]
pub struct Client {
    /// The client's address.
    pub addr: SocketAddr,
    /// The client's address as `X-Forwarded-For` gives it, formatted once
    /// per connection rather than once per request.
    pub forwarded_for: http::HeaderValue,
    /// The listener it came through.
    pub route: Route,
    /// Whether it is TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
}

/// What every connection shares.
#[derive(Debug)]
pub struct Proxy {
    state: Arc<SharedState>,
    metrics: Arc<Metrics>,
    lifecycle: Lifecycle,
    /// Where each answered request is logged, if anywhere.
    access_log: Option<Arc<AccessLog>>,
}

impl Proxy {
    /// The data plane over `state`, tracking its work in `lifecycle`.
    pub fn new(state: Arc<SharedState>, metrics: Arc<Metrics>, lifecycle: Lifecycle) -> Proxy {
        Proxy {
            state,
            metrics,
            lifecycle,
            access_log: None,
        }
    }

    /// The same, logging every answered request to `log`.
    pub fn with_access_log(mut self, log: Option<Arc<AccessLog>>) -> Proxy {
        self.access_log = log;
        self
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

impl Proxy {
    /// Answers one request: the upstream's response, or the proxy's own
    /// answer to whatever went wrong (logged once, here).
    async fn handle(&self, mut request: Request<Incoming>, client: &Client) -> Response<Body> {
        let started = Instant::now();
        let version = request.version();
        let head = request.method() == Method::HEAD;
        let sent_id = request.headers().get(X_REQUEST_ID);
        let id = RequestId::keep_or_make(sent_id.map(HeaderValue::as_bytes));
        let id_field = id.header_value();
        // Every copy the client sent goes: the upstream reads one id.
        request.headers_mut().insert(X_REQUEST_ID, id_field.clone());
        let mut pending = Pending::start(self.access_log.as_ref(), || record::Line {
            asked: Asked::of(&request, started),
            served: Served::default(),
            client: client.addr,
            request_id: id,
        });
        let mut from_upstream = false;
        let mut response = match self.route(&mut request, client, &id) {
            // An unread body goes with its stream, which hyper resets.
            Ok(Routing::Answered(response)) => response,
            Ok(Routing::Gated(response)) => {
                pending.note(|served| served.gated = true);
                response
            }
            Ok(Routing::Forward(destination)) => {
                pending.note(|served| served.pool = Some(destination.pool.clone()));
                // Boxed: forwarding's state is kilobytes, and hyper moves
                // the future of every request it serves; this way only
                // forwarded requests pay for it, and once (see
                // `boxed_forward` for why boxing takes a function).
                let tried = pending.upstream_tried();
                let forwarded = self.boxed_forward(request, client, &destination, tried);
                let response = match forwarded.await {
                    Ok(response) => {
                        from_upstream = true;
                        response
                    }
                    Err(error) => self.failed(error, version, client, &id),
                };
                destination.pool.requests.count(response.status());
                response
            }
            Err(error) => self.failed(error, version, client, &id),
        };
        if head && !from_upstream {
            // The proxy's own answers are written with their body; an
            // HTTP/2 client reads one after HEAD as a protocol error.
            // (The upstream's answer to HEAD has none already.) Its
            // length is what a GET would have had, as over HTTP/1.
            if let Some(length) = http_body::Body::size_hint(response.body()).exact() {
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            *response.body_mut() = Body::empty();
        }
        response.headers_mut().insert(X_REQUEST_ID, id_field);
        self.metrics.observe_duration(started.elapsed());
        pending.answered(response)
    }

    /// [`Proxy::forward`]'s future, boxed. Boxing it in a plain function
    /// matters: written as `Box::pin(self.forward(..)).await` inside
    /// `handle`, the unboxed future is a temporary of `handle`'s own state
    /// machine, which then reserves its kilobytes anyway, and hyper moves
    /// the service future for every request.
    fn boxed_forward<'a>(
        &'a self,
        request: Request<Incoming>,
        client: &'a Client,
        destination: &'a Destination,
        tried: Option<&'a mut Option<Arc<Upstream>>>,
    ) -> Pin<Box<impl Future<Output = Result<Response<Body>, ProxyError>> + Send + 'a>> {
        Box::pin(self.forward(request, client, destination, tried))
    }

    /// The proxy's answer to `error`, logged.
    fn failed(
        &self,
        error: ProxyError,
        version: Version,
        client: &Client,
        id: &RequestId,
    ) -> Response<Body> {
        log_failure(&error, client);
        error.to_response(version, id)
    }

    /// Checks the request's head and decides, from the one state load of
    /// this request, whether the proxy answers it itself (redirect to
    /// HTTPS, a reserved path, maintenance gate; its errors name request
    /// `id`) or which pool it goes to.
    ///
    /// The path is normalized first (see [`path`]), and the request goes on
    /// with the path the gate read.
    fn route(
        &self,
        request: &mut Request<Incoming>,
        client: &Client,
        id: &RequestId,
    ) -> Result<Routing, ProxyError> {
        let target = frontdoor::check(request.method(), request.uri(), request.headers())?;
        if let Some(normalized) =
            path::normalize(request.uri().path()).map_err(ProxyError::BadRequest)?
        {
            *request.uri_mut() = frontdoor::with_path(request.uri(), &normalized)?;
        }
        // The gate, the pool and the timeouts all come from
        // this snapshot.
        let snapshot = self.state.load();
        let path = request.uri().path();
        let verdict = self.judge(&snapshot, client, request.method(), path, || {
            crate::bypass::token_in(request.headers())
        });
        let pool = match verdict {
            Verdict::RedirectHttps => {
                let host = request.headers().get(http::header::HOST);
                let host = host
                    .map(http::HeaderValue::as_bytes)
                    .or_else(|| target.authority.as_ref().map(|a| a.as_str().as_bytes()));
                let path = request
                    .uri()
                    .path_and_query()
                    .map_or("/", PathAndQuery::as_str);
                return Ok(Routing::Answered(frontdoor::redirect_to_https(host, path)));
            }
            Verdict::Reserved => {
                return Ok(Routing::Answered(pass::answer(
                    id,
                    request.method(),
                    request.uri().path(),
                    request.uri().query(),
                    snapshot.bypass.as_ref(),
                    client.https,
                )))
            }
            Verdict::Gated(gate) => {
                return Ok(Routing::Gated(gate.response(request.headers().get(ACCEPT))))
            }
            Verdict::Forward(pool) => pool.clone(),
        };
        Ok(Routing::Forward(Destination {
            target,
            pool,
            timeouts: snapshot.config.timeouts,
        }))
    }

    /// Decides, from `snapshot`, what becomes of a `method` request for
    /// `path` (normalized) from `client`: a redirect to HTTPS, a path the
    /// proxy keeps for itself, the gate's answer, or the pool it goes to.
    /// `token` finds the request's bypass token, looked for only in a
    /// request the gate holds back.
    fn judge<'s, 't>(
        &self,
        snapshot: &'s Snapshot,
        client: &Client,
        method: &Method,
        path: &str,
        token: impl FnOnce() -> Option<&'t str>,
    ) -> Verdict<'s> {
        let preview = snapshot.config.preview.as_ref();
        let redirect = match client.route {
            Route::Live => snapshot.config.listener.redirect_https,
            Route::Preview => preview.is_some_and(|p| p.redirect_https),
        };
        if redirect {
            return Verdict::RedirectHttps;
        }
        if pass::is_reserved(path) {
            return Verdict::Reserved;
        }
        if let Some(gate) = &snapshot.gate {
            let bypass =
                client.route == Route::Preview && preview.is_some_and(|p| p.bypass_maintenance);
            let admitted = bypass
                || gate.admits(method, path, client.addr.ip())
                || token().is_some_and(|t| gate.honours(t));
            if !admitted {
                self.metrics.count_gated();
                return Verdict::Gated(gate);
            }
        }
        Verdict::Forward(match client.route {
            Route::Live => &snapshot.live,
            Route::Preview => &snapshot.preview,
        })
    }

    /// Forwards `request` to `destination.pool` and passes on the answer,
    /// noting in `tried` (if given) each upstream it goes to.
    async fn forward(
        &self,
        request: Request<Incoming>,
        client: &Client,
        destination: &Destination,
        tried: Option<&mut Option<Arc<Upstream>>>,
    ) -> Result<Response<Body>, ProxyError> {
        let Client {
            forwarded_for,
            https,
            ..
        } = client;
        let Destination {
            target,
            pool,
            timeouts,
        } = destination;
        let (parts, incoming) = request.into_parts();
        let mut headers = parts.headers;
        headers::prepare_request(
            &mut headers,
            target.authority.as_ref(),
            forwarded_for,
            if *https { "https" } else { "http" },
        );
        let mut body = match Body::streamed(incoming).read_ahead(timeouts.header).await {
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
        forward::send(pool, head, body, timeouts, tried).await
    }
}

/// Logs why a request was answered by the proxy: the client's own fault
/// at debug, anything else as a warning.
fn log_failure(error: &ProxyError, client: &Client) {
    if error.is_client_error() {
        debug!(%error, "refused request");
    } else {
        warn!(%error, client.addr = %client.addr, "request failed");
    }
}

/// Where a request goes, decided by [`Proxy::route`].
enum Routing {
    /// The proxy answers it itself.
    Answered(Response<Body>),
    /// The gate answers it.
    Gated(Response<Body>),
    /// It goes to a pool.
    Forward(Destination),
}

/// What becomes of a request, decided by [`Proxy::judge`].
enum Verdict<'s> {
    /// Redirected to HTTPS.
    RedirectHttps,
    /// A path under `/.switchyard`, answered by [`pass`].
    Reserved,
    /// Held back by the gate, which answers it.
    Gated(&'s Arc<Gate>),
    /// Forwarded to this pool.
    Forward(&'s Arc<Pool>),
}

/// What forwarding a request needs, from the snapshot it was routed by.
struct Destination {
    target: frontdoor::Target,
    pool: Arc<Pool>,
    timeouts: Timeouts,
}
