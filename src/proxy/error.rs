//! Why the data plane answers a request itself, and what that answer is.
//!
//! Every failure maps to its status and SPEC code in one exhaustive place
//! ([`ProxyError::status`], [`ProxyError::code`]). The client gets a short,
//! fixed message; the details (which upstream, which error) go to the log.

use std::time::Duration;

use http::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use http::uri::Authority;
use http::{Response, StatusCode, Version};

use super::request_id::{RequestId, X_REQUEST_ID};
use crate::body::Body;
use crate::envelope::ErrorDocument;

/// A request the proxy answers itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request is malformed; the reason is safe to show the client.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request body was malformed, cut off or reset by the client:
    /// the client's fault, never counted against an upstream.
    #[error("malformed or incomplete request body: {0}")]
    BadRequestBody(String),
    /// The request head is larger than `listener.max_header_bytes`, or has
    /// more fields than a head may.
    #[error("request head too large")]
    HeadTooLarge,
    /// The request line alone is longer than a head may be.
    #[error("request line too long")]
    TargetTooLong,
    /// Not HTTP/1.0 or HTTP/1.1 (and not HTTP/2's preface).
    #[error("HTTP version not supported")]
    VersionNotSupported,
    /// `CONNECT`: forward proxying is not what switchyard does.
    #[error("CONNECT is not supported")]
    ConnectNotAllowed,
    /// A request body in a transfer coding other than `chunked` alone
    /// (`gzip, chunked`): hyper would undo the chunking only, and the
    /// upstream would get the other coding's bytes without knowing.
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// The client announced a body but sent none in time.
    #[error("request body did not start within {0:?}")]
    ClientBodyTimeout(Duration),
    /// The pool has no upstream to try.
    #[error("pool `{pool}` has no upstream available")]
    NoHealthyUpstream {
        /// The pool's name.
        pool: String,
    },
    /// Connecting failed, or the connection died before a response.
    #[error("upstream {upstream} unreachable: {reason}")]
    UpstreamUnreachable {
        /// The upstream tried last.
        upstream: Authority,
        /// What went wrong.
        reason: String,
    },
    /// The TLS handshake with the upstream failed (its certificate does
    /// not verify, or it does not speak TLS).
    #[error("TLS to upstream {upstream} failed: {reason}")]
    UpstreamTls {
        /// The upstream tried last.
        upstream: Authority,
        /// What went wrong.
        reason: String,
    },
    /// Every connection the upstream may have is open and busy
    /// (`max_connections`), and none came free in time.
    #[error("all {limit} connections to upstream {upstream} are busy")]
    UpstreamBusy {
        /// The upstream.
        upstream: Authority,
        /// Its `max_connections`.
        limit: usize,
    },
    /// No response head within `timeouts.upstream`.
    #[error("upstream {upstream} sent no response head within {timeout:?}")]
    UpstreamTimeout {
        /// The upstream that was waited for.
        upstream: Authority,
        /// The budget that ran out.
        timeout: Duration,
    },
    /// The upstream's response is not valid HTTP.
    #[error("upstream {upstream} sent a malformed response: {reason}")]
    BadUpstreamResponse {
        /// The upstream at fault.
        upstream: Authority,
        /// What was wrong with it.
        reason: String,
    },
}

impl ProxyError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadRequestBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::ConnectNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::TargetTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::VersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            ProxyError::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::ClientBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoHealthyUpstream { .. } | ProxyError::UpstreamBusy { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::BadUpstreamResponse { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The machine-readable `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadRequestBody(_) => "bad_request",
            ProxyError::ConnectNotAllowed => "method_not_allowed",
            ProxyError::HeadTooLarge => "header_too_large",
            ProxyError::TargetTooLong => "uri_too_long",
            ProxyError::VersionNotSupported => "http_version_not_supported",
            ProxyError::UnsupportedTransferCoding => "not_implemented",
            ProxyError::ClientBodyTimeout(_) => "request_timeout",
            ProxyError::NoHealthyUpstream { .. } => "no_healthy_upstream",
            ProxyError::UpstreamBusy { .. } => "upstream_busy",
            ProxyError::UpstreamUnreachable { .. } => "upstream_unreachable",
            ProxyError::UpstreamTls { .. } => "upstream_tls_failed",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::BadUpstreamResponse { .. } => "bad_upstream_response",
        }
    }

    /// The client-facing `error.message`: no addresses, no internals.
    fn public_message(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(reason) => reason,
            ProxyError::BadRequestBody(_) => "malformed request body",
            ProxyError::ConnectNotAllowed => "CONNECT is not supported by this server",
            ProxyError::HeadTooLarge => "the request's header fields are too large",
            ProxyError::TargetTooLong => "the request line is too long",
            ProxyError::VersionNotSupported => "only HTTP/1.0, HTTP/1.1 and HTTP/2 are supported",
            ProxyError::UnsupportedTransferCoding => {
                "only the chunked transfer coding is supported"
            }
            ProxyError::ClientBodyTimeout(_) => "the request body did not arrive in time",
            ProxyError::NoHealthyUpstream { .. } => "no healthy upstream is available",
            ProxyError::UpstreamBusy { .. } => "the upstream server is too busy; try again",
            ProxyError::UpstreamUnreachable { .. } => "the upstream server could not be reached",
            ProxyError::UpstreamTls { .. } => {
                "the upstream server's TLS certificate could not be verified"
            }
            ProxyError::UpstreamTimeout { .. } => "the upstream server did not answer in time",
            ProxyError::BadUpstreamResponse { .. } => {
                "the upstream server sent an invalid response"
            }
        }
    }

    /// Whether the client's connection must be closed after the answer:
    /// after a malformed request the byte stream can't be trusted.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::BadRequestBody(_)
                | ProxyError::HeadTooLarge
                | ProxyError::TargetTooLong
                | ProxyError::VersionNotSupported
                | ProxyError::ConnectNotAllowed
                | ProxyError::UnsupportedTransferCoding
                | ProxyError::ClientBodyTimeout(_)
        )
    }

    /// Whether this is the client's fault (logged at debug, not warn).
    pub fn is_client_error(&self) -> bool {
        self.status().is_client_error() || matches!(self, ProxyError::UnsupportedTransferCoding)
    }

    /// The answer to request `id`, shaped for a client speaking `version`.
    pub fn to_response(&self, version: Version, id: &RequestId) -> Response<Body> {
        let body = ErrorDocument::new(self.code(), self.public_message())
            .with_request_id(id.as_str())
            .to_json();
        let mut response = json_body(self.status(), body);
        response
            .headers_mut()
            .insert(X_REQUEST_ID, id.header_value());
        if self.closes_connection() && version < Version::HTTP_2 {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl ProxyError {
    /// The answer to an HTTP/1 `method` request with `id`, written into
    /// `out`, saying what `persistence` says of the connection (`close` if
    /// this error closes it).
    pub fn write_http1(
        &self,
        method: &http::Method,
        id: &RequestId,
        persistence: crate::http1::write::Persistence,
        out: &mut Vec<u8>,
    ) {
        use crate::http1::write::Persistence;
        let body = ErrorDocument::new(self.code(), self.public_message())
            .with_request_id(id.as_str())
            .to_json();
        let mut headers = http::HeaderMap::with_capacity(2);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        crate::http1::write::answer(
            self.status(),
            &headers,
            &body,
            (method, id.as_bytes()),
            if self.closes_connection() {
                Persistence::Close
            } else {
                persistence
            },
            out,
        );
    }
}

impl From<crate::http1::HeadError> for ProxyError {
    fn from(error: crate::http1::HeadError) -> ProxyError {
        use crate::http1::HeadError;
        match error {
            HeadError::TooLarge => ProxyError::HeadTooLarge,
            HeadError::LineTooLong => ProxyError::TargetTooLong,
            HeadError::Version => ProxyError::VersionNotSupported,
            HeadError::TransferCoding => ProxyError::UnsupportedTransferCoding,
            HeadError::Connect => ProxyError::ConnectNotAllowed,
            HeadError::Bad(reason) => ProxyError::BadRequest(reason),
        }
    }
}

/// A `{"error": {"code", "message", "request_id"}}` answer to request `id`.
pub fn json_response(
    status: StatusCode,
    code: &str,
    message: &str,
    id: &RequestId,
) -> Response<Body> {
    let document = ErrorDocument::new(code, message).with_request_id(id.as_str());
    json_body(status, document.to_json())
}

/// An answer with a JSON `body`, not to be stored.
fn json_body(status: StatusCode, body: bytes::Bytes) -> Response<Body> {
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
