//! The dashboard: three static files embedded in the binary and served at
//! `/` by every admin listener. They hold no data: the page asks for the
//! token (on TCP), reads `GET /v1/status` once and then follows
//! `GET /v1/events`, and acts through the same calls `ctl` makes.
//!
//! The page may run only its own script and style, may not be framed (its
//! buttons could be clicked through another site's page), and sends no
//! referrer.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::Response;
use http_body_util::{Either, Full};

use super::routes::AdminResponse;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The file at `path` (`/`, `/dashboard.js` or `/dashboard.css`), for a
/// `GET` or `HEAD`.
pub fn asset(path: &str) -> AdminResponse {
    let (body, content_type) = match path {
        "/dashboard.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/dashboard.css" => (STYLE, "text/css; charset=utf-8"),
        _ => (INDEX, "text/html; charset=utf-8"),
    };
    // For HEAD, hyper sends the length and leaves the body out.
    let body = Bytes::from_static(body.as_bytes());
    let mut response = Response::new(Either::Left(Full::new(body)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // A new binary may bring a new page: never a stale script.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("content-security-policy", HeaderValue::from_static(POLICY));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}
