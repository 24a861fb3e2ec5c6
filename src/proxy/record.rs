//! The access log's line for a request that hyper serves (HTTP/2): what
//! was asked, taken before routing rewrites it, and the answer's body
//! counted as it goes, logged once the body is let go.
//!
//! HTTP/2 compresses heads per connection, so a request's own share of the
//! bytes on the wire is not known: here `bytes_in` is the request body's
//! declared length and `bytes_out` the answer body's bytes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

use super::request_id::RequestId;
use crate::access_log::{AccessLog, Entry};
use crate::body::{Body, BodyError};
use crate::upstream::{Pool, Upstream};

/// A request as it arrived.
#[derive(Debug)]
pub(super) struct Asked {
    method: Method,
    target: String,
    version: Version,
    declared: u64,
    at: Instant,
}

impl Asked {
    pub(super) fn of<B>(request: &Request<B>, at: Instant) -> Asked {
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        Asked {
            method: request.method().clone(),
            target: crate::access_log::target(request.uri().path(), request.uri().query()),
            version: request.version(),
            declared,
            at,
        }
    }
}

/// What became of a request, on either engine: what the access log says
/// of it besides what was asked.
#[derive(Debug, Default)]
pub(super) struct Served {
    /// The answer's status; 0 before there is one.
    pub(super) status: u16,
    /// Whether the gate answered.
    pub(super) gated: bool,
    /// Where it was forwarded, once it was (only while the log is on).
    pub(super) pool: Option<Arc<Pool>>,
    /// Who answered it (only while the log is on).
    pub(super) upstream: Option<Arc<Upstream>>,
}

impl Served {
    /// Answered by the proxy itself with `status`.
    pub(super) fn answered(status: http::StatusCode, gated: bool) -> Served {
        Served {
            status: status.as_u16(),
            gated,
            ..Served::default()
        }
    }

    /// The pool's name, for the line.
    pub(super) fn pool_name(&self) -> Option<&str> {
        self.pool.as_ref().map(|p| p.name.as_str())
    }

    /// The upstream's address, for the line.
    pub(super) fn upstream_name(&self) -> Option<&str> {
        self.upstream.as_ref().map(|u| u.authority.as_str())
    }
}

/// A request's line while its answer is being made, if the access log is
/// on. A client that goes first (its stream reset, its connection closed)
/// drops the request's future, and with it this: the line is then written
/// with status 0, as the upstream may well have had the request.
#[derive(Debug)]
pub(super) struct Pending(Option<(Arc<AccessLog>, Line)>);

impl Pending {
    /// The line `line` makes, if there is a `log` to write it to.
    pub(super) fn start(log: Option<&Arc<AccessLog>>, line: impl FnOnce() -> Line) -> Pending {
        Pending(log.map(|log| (log.clone(), line())))
    }

    /// Records what became of the request so far, if it is logged.
    pub(super) fn note(&mut self, what: impl FnOnce(&mut Served)) {
        if let Some((_, line)) = &mut self.0 {
            what(&mut line.served);
        }
    }

    /// Where the upstreams the request goes to are noted, if it is logged.
    pub(super) fn upstream_tried(&mut self) -> Option<&mut Option<Arc<Upstream>>> {
        self.0.as_mut().map(|(_, line)| &mut line.served.upstream)
    }

    /// `response`, logged once its body is let go.
    pub(super) fn answered(mut self, response: Response<Body>) -> Response<Body> {
        let Some((log, mut line)) = self.0.take() else {
            return response;
        };
        line.served.status = response.status().as_u16();
        response.map(|body| {
            Body::from_source(Box::new(Logged {
                body,
                log,
                line,
                sent: 0,
            }))
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some((log, line)) = &self.0 {
            line.write(log, 0);
        }
    }
}

/// Everything the line says but the bytes sent.
#[derive(Debug)]
pub(super) struct Line {
    pub(super) asked: Asked,
    pub(super) served: Served,
    pub(super) client: std::net::SocketAddr,
    pub(super) request_id: RequestId,
}

/// An answer body that counts its bytes and logs its request when dropped.
#[derive(Debug)]
struct Logged {
    body: Body,
    log: Arc<AccessLog>,
    line: Line,
    sent: u64,
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            self.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.line.write(&self.log, self.sent);
    }
}

impl Line {
    /// Writes the line to `log`, `sent` answer body bytes having gone out.
    fn write(&self, log: &AccessLog, sent: u64) {
        let Line {
            asked,
            served,
            client,
            request_id,
        } = self;
        log.log(&Entry {
            time: SystemTime::now(),
            client: *client,
            method: asked.method.as_str(),
            target: &asked.target,
            protocol: match asked.version {
                Version::HTTP_2 => "HTTP/2.0",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            status: served.status,
            bytes_in: asked.declared,
            bytes_out: sent,
            duration: asked.at.elapsed(),
            pool: served.pool_name(),
            upstream: served.upstream_name(),
            gate: served.gated,
            request_id: request_id.as_str(),
        });
    }
}
