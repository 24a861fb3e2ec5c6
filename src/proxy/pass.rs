//! The browser path of bypass tokens: a tester opens
//! `/.switchyard/bypass?token=TOKEN` on the public listener, and a valid
//! token comes back as the `switchyard_bypass` cookie with a redirect to
//! `/`. The path is answered here and never forwarded, so neither it nor
//! the token in its query reaches an upstream or its logs.

use std::time::SystemTime;

use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, LOCATION, SET_COOKIE};
use http::{Method, Request, Response, StatusCode};

use super::error::json_response;
use crate::body::Body;
use crate::bypass::{self, BypassKey};

/// Whether `path` (normalized) is the browser path, answered by the proxy.
pub fn is_browser_path(path: &str) -> bool {
    path.strip_prefix(bypass::BROWSER_PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The answer to a request for the browser path, under `key` (`None`
/// without `maintenance.bypass_secret_file`); `https` marks the cookie
/// `Secure`.
pub fn answer<B>(request: &Request<B>, key: Option<&BypassKey>, https: bool) -> Response<Body> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the bypass path takes GET",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let Some(key) = key else {
        return json_response(
            StatusCode::NOT_FOUND,
            "bypass_not_configured",
            "bypass tokens are not configured on this proxy",
        );
    };
    let token = request.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
    });
    let now = SystemTime::now();
    let expires_at = token.and_then(|token| key.expiry(token).filter(|at| *at > now));
    let (Some(token), Some(expires_at)) = (token, expires_at) else {
        return json_response(
            StatusCode::FORBIDDEN,
            "invalid_bypass_token",
            "the bypass token is missing, invalid or expired; ask for a new one",
        );
    };
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.insert(LOCATION, HeaderValue::from_static("/"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(SET_COOKIE, bypass::set_cookie(token, expires_at, https));
    response
}
