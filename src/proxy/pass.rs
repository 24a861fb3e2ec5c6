//! The browser path of bypass tokens: a tester opens
//! `/.switchyard/bypass?token=TOKEN` on the public listener, and a valid
//! token comes back as the `switchyard_bypass` cookie with a redirect to
//! `/`. Every path under `/.switchyard` is answered here and never
//! forwarded, so neither the browser path nor a token in a query reaches
//! an upstream or its logs.

use std::time::SystemTime;

use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, LOCATION, SET_COOKIE};
use http::{Method, Response, StatusCode};

use super::error::json_response;
use super::request_id::RequestId;
use crate::body::Body;
use crate::bypass::{self, BypassKey};

/// Whether `path` (normalized) is under `/.switchyard`, which the proxy
/// keeps for itself: read with slashes merged and in any case, so that no
/// spelling an application might take for the browser path (`//.switchyard/
/// bypass`, `/.switchyard%2Fbypass`, `/.Switchyard/bypass;x`) is forwarded
/// with a token in its query.
pub fn is_reserved(path: &str) -> bool {
    // The first segment is what follows the leading slashes; the prefix
    // has no slash, so it matches only within that segment.
    let first = path.trim_start_matches('/').as_bytes();
    let prefix = b".switchyard";
    first.len() >= prefix.len() && first[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Whether `path` (normalized, reserved) is exactly the browser path, with
/// slashes merged.
fn is_browser_path(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    segments == [".switchyard", "bypass"]
}

/// The answer to request `id` for a reserved path: for the browser path,
/// under `key` (`None` without `maintenance.bypass_secret_file`; `https`
/// marks the cookie `Secure`); for any other, 404.
pub fn answer(
    id: &RequestId,
    method: &Method,
    path: &str,
    query: Option<&str>,
    key: Option<&BypassKey>,
    https: bool,
) -> Response<Body> {
    if !is_browser_path(path) {
        return json_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "paths under /.switchyard/ are the proxy's; the browser path is /.switchyard/bypass?token=TOKEN",
            id,
        );
    }
    if !matches!(*method, Method::GET | Method::HEAD) {
        let mut response = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the bypass path takes GET",
            id,
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
            id,
        );
    };
    let token = query.and_then(|query| {
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
            id,
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

#[cfg(test)]
mod tests {
    use super::is_reserved;

    #[test]
    fn every_spelling_of_the_reserved_prefix_is_the_proxys() {
        for path in [
            "/.switchyard",
            "/.switchyard/bypass",
            "//.switchyard/bypass",
            "/.Switchyard/bypass;x",
            "/.switchyard%2Fbypass",
            "///.SWITCHYARD",
        ] {
            assert!(is_reserved(path), "{path}");
        }
        for path in [
            "/",
            "/app/.switchyard",
            "/.switch/yard",
            "/.switchyar",
            "/x.switchyard",
        ] {
            assert!(!is_reserved(path), "{path}");
        }
    }
}
