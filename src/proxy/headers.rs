//! Header rewriting between client and upstream.
//!
//! Hop-by-hop headers describe one connection, so they are removed in both
//! directions, along with every header a `Connection` header names. The
//! `X-Forwarded-*` headers tell the upstream who the client was; a client's
//! own `X-Forwarded-Proto`/`-Host` are overwritten, its `X-Forwarded-For` is
//! extended. `Host` is passed through unchanged.

use std::net::IpAddr;

use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, COOKIE, EXPECT, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::Authority;
use http::HeaderMap;

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The hop-by-hop headers of RFC 9110 §7.6.1, plus the legacy
/// `Keep-Alive`, `Proxy-Connection` and proxy authentication headers, and
/// h2c's `HTTP2-Settings` (never passed on: h2c upgrades are not).
static HOP_BY_HOP: [&HeaderName; 10] = [
    &CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &PROXY_AUTHENTICATE,
    &PROXY_AUTHORIZATION,
    &TE,
    &TRAILER,
    &TRANSFER_ENCODING,
    &UPGRADE,
    &HTTP2_SETTINGS,
];

/// Removes hop-by-hop headers and those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, false);
}

/// [`strip_hop_by_hop`]; for a client's `request`, also removes
/// [`REWRITES`] and makes `Content-Length` canonical.
fn strip(headers: &mut HeaderMap, request: bool) {
    // One pass over the names finds which are there: a message carries one
    // or two of them, or none, and removing is a hash lookup each.
    let mut present = [false; HOP_BY_HOP.len()];
    let (mut rewrites, mut length) = (false, false);
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
            present[i] = true;
        } else if request {
            if name == CONTENT_LENGTH {
                length = true;
            } else if REWRITES.iter().any(|r| r == name) {
                rewrites = true;
            }
        }
    }
    if rewrites {
        for name in &REWRITES {
            headers.remove(name);
        }
    }
    if length {
        canonical_content_length(headers);
    }
    if !present.contains(&true) {
        return;
    }
    if present[0] {
        remove_connection_named(headers);
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(*name);
        }
    }
}

/// Removes the headers a `Connection` header names. `Host` and
/// `Content-Length` are never removed this way: naming them is an attempt
/// to confuse the next hop, not a hop-by-hop declaration.
fn remove_connection_named(headers: &mut HeaderMap) {
    // Allocates only when a client names a non-standard header.
    let mut named = Vec::new();
    for value in headers.get_all(CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            // The usual tokens (`keep-alive`, `close`, `upgrade`) name no
            // header to remove: skip them before parsing a name, which
            // allocates for a non-standard one such as `keep-alive`.
            if token.eq_ignore_ascii_case("close")
                || HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str()))
            {
                continue;
            }
            let Ok(name) = HeaderName::from_bytes(token.as_bytes()) else {
                continue;
            };
            if name != HOST && name != CONTENT_LENGTH {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
}

/// Rewrites a client's request headers for the upstream.
///
/// `authority` is the request target's authority (HTTP/2's `:authority`),
/// used as `Host` when the client sent none; `client` is the client's
/// address as [`forwarded_for`] formats it.
pub fn prepare_request(
    headers: &mut HeaderMap,
    authority: Option<&Authority>,
    client: &HeaderValue,
    proto: &'static str,
) {
    strip(headers, true);
    // A pass through the gate is the proxy's, never the application's.
    crate::bypass::strip(headers);
    join_cookies(headers);
    // The proxy answers `100-continue` itself when it reads the body.
    headers.remove(EXPECT);
    if !headers.contains_key(HOST) {
        if let Some(value) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            headers.insert(HOST, value);
        }
    }
    append_forwarded_for(headers, client);
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match headers.get(HOST).cloned() {
        Some(host) => {
            headers.insert(&X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// Joins the `Cookie` fields of a request into one, with `; ` (RFC 9113
/// §8.2.3): HTTP/2 clients send each cookie as a field of its own, and an
/// HTTP/1.1 application may read only the first.
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let joined: Vec<u8> = headers
        .get_all(COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    let joined =
        HeaderValue::from_bytes(&joined).expect("valid values joined by a valid separator");
    headers.insert(COOKIE, joined);
}

/// Headers with which a client could make the application read another
/// URL or method than the one the gate judged: IIS's and Symfony's
/// `X-Original-URL` and `X-Rewrite-URL`, and the method overrides of
/// Rails, Symfony, Express and ASP.NET. Only a proxy in front may set
/// them, and switchyard sets none.
static REWRITES: [HeaderName; 5] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Rewrites `Content-Length: 0005` as `5`, so that the upstream reads the
/// length hyper read. (hyper has refused anything but digits, and two
/// different values.)
fn canonical_content_length(headers: &mut HeaderMap) {
    let Some(value) = headers.get(CONTENT_LENGTH) else {
        return;
    };
    let bytes = value.as_bytes();
    if (bytes.len() > 1 && bytes[0] == b'0') || bytes.iter().any(|b| !b.is_ascii_digit()) {
        let length = std::str::from_utf8(bytes)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok());
        match length {
            Some(length) => {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
            }
            None => {
                headers.remove(CONTENT_LENGTH);
            }
        }
    }
}

/// A client's address as `X-Forwarded-For` gives it (an IPv4 address
/// mapped into IPv6 is given as IPv4).
pub fn forwarded_for(client: IpAddr) -> HeaderValue {
    HeaderValue::try_from(client.to_canonical().to_string())
        .expect("an IP address is a valid header value")
}

/// Appends the client address to `X-Forwarded-For`, folding multiple
/// header lines into one.
fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    let mut value = Vec::new();
    for earlier in headers.get_all(&X_FORWARDED_FOR) {
        let earlier = earlier.as_bytes().trim_ascii();
        if !earlier.is_empty() {
            value.extend_from_slice(earlier);
            value.extend_from_slice(b", ");
        }
    }
    let value = if value.is_empty() {
        client.clone()
    } else {
        value.extend_from_slice(client.as_bytes());
        match HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
            Ok(value) => value,
            Err(_) => return,
        }
    };
    headers.insert(&X_FORWARDED_FOR, value);
}

/// Rewrites an upstream's response headers for the client.
pub fn prepare_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-secret, Host"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("host", "example.com"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["host", "x-kept"]);
    }

    #[test]
    fn forwarded_headers_are_appended_and_overwritten() {
        let mut headers = map(&[
            ("host", "app.example"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("expect", "100-continue"),
        ]);
        prepare_request(
            &mut headers,
            None,
            &forwarded_for("127.0.0.1".parse().unwrap()),
            "http",
        );
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "app.example");
        assert!(!headers.contains_key("expect"));
    }

    #[test]
    fn rewrite_headers_go_and_lengths_are_canonical() {
        let mut headers = map(&[
            ("x-original-url", "/admin"),
            ("X-Rewrite-URL", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-http-method", "DELETE"),
            ("X-Method-Override", "DELETE"),
            ("content-length", "0005"),
            ("x-kept", "yes"),
        ]);
        prepare_request(
            &mut headers,
            None,
            &forwarded_for("127.0.0.1".parse().unwrap()),
            "http",
        );
        assert!(!headers.contains_key("x-original-url"));
        assert!(!headers.contains_key("x-rewrite-url"));
        assert!(!headers.contains_key("x-http-method-override"));
        assert!(!headers.contains_key("x-http-method"));
        assert!(!headers.contains_key("x-method-override"));
        assert_eq!(headers["content-length"], "5");
        assert_eq!(headers["x-kept"], "yes");
    }

    #[test]
    fn http2_authority_becomes_host() {
        let mut headers = HeaderMap::new();
        let authority: Authority = "app.example:8080".parse().unwrap();
        prepare_request(
            &mut headers,
            Some(&authority),
            &forwarded_for("::ffff:127.0.0.1".parse().unwrap()),
            "http",
        );
        assert_eq!(headers["host"], "app.example:8080");
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    }
}
