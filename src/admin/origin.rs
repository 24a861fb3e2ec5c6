//! What a browser may not do to the admin API: call it from a page of
//! another origin (cross-site request forgery: an operator's browser, on
//! a hostile page, holds no token but can reach a port-forwarded admin
//! socket), or reach it under a name that a rebound DNS answer points at
//! loopback (DNS rebinding: the hostile page then counts as the same
//! origin).
//!
//! Browsers say who they are: they send `Origin` on every cross-origin
//! request and every `POST`, `PUT` and `DELETE`, and `Sec-Fetch-Site` on
//! every request. `ctl`, `curl` and pipelines send neither, and are not
//! affected.

use http::header::{HOST, ORIGIN};
use http::{HeaderMap, HeaderValue};

/// Why a browser's request is refused, if it is. `tokenless`: whether the
/// listener admits calls without a token (the unix socket), where the
/// name the browser used must be loopback's.
pub fn refusal(headers: &HeaderMap, tokenless: bool) -> Option<&'static str> {
    // Every copy counts, in any case: whatever relays the request may
    // merge or re-case fields, and the check must not hinge on which copy
    // the application would have read.
    let fetch_sites = headers.get_all("sec-fetch-site");
    let other_site = |v: &HeaderValue| {
        v.as_bytes().split(|&b| b == b',').any(|v| {
            let v = v.trim_ascii();
            v.eq_ignore_ascii_case(b"cross-site") || v.eq_ignore_ascii_case(b"same-site")
        })
    };
    if fetch_sites.iter().any(other_site) {
        return Some("a page of another site may not call the admin API");
    }
    let host = headers.get(HOST).map(|v| v.as_bytes()).unwrap_or_default();
    let same_origin = |origin: &HeaderValue| {
        let origin = origin.as_bytes();
        let scheme = origin.iter().position(|&b| b == b':');
        let authority = scheme
            .filter(|&at| {
                let scheme = &origin[..at];
                scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")
            })
            .and_then(|at| origin[at..].strip_prefix(b"://"));
        authority.is_some_and(|authority| authority.eq_ignore_ascii_case(host))
    };
    let origins = headers.get_all(ORIGIN);
    if !origins.iter().all(same_origin) {
        return Some("a page of another origin may not call the admin API");
    }
    let from_browser = fetch_sites.iter().next().is_some() || origins.iter().next().is_some();
    if tokenless && from_browser && !is_loopback_name(host) {
        return Some(
            "without a token, the admin API answers browsers only at a loopback address or localhost",
        );
    }
    None
}

/// Whether `host` (`name:port`, `[v6]:port`) names loopback: `localhost`,
/// `127.x.x.x` or `[::1]`.
fn is_loopback_name(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn only_browsers_on_another_origin_or_a_rebound_name_are_refused() {
        // ctl, curl: no browser headers.
        assert_eq!(refusal(&headers(&[("host", "switchyard")]), true), None);
        // The dashboard itself, through a port-forward.
        let own = [
            ("host", "127.0.0.1:9901"),
            ("origin", "http://127.0.0.1:9901"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert_eq!(refusal(&headers(&own), true), None);
        let own = [("host", "localhost:9901"), ("sec-fetch-site", "none")];
        assert_eq!(refusal(&headers(&own), true), None);
        let v6 = [("host", "[::1]:9901"), ("sec-fetch-site", "same-origin")];
        assert_eq!(refusal(&headers(&v6), true), None);
        // Another page.
        let forged = [
            ("host", "127.0.0.1:9901"),
            ("origin", "http://evil.example"),
        ];
        assert!(refusal(&headers(&forged), true).is_some());
        let forged = [("host", "127.0.0.1:9901"), ("sec-fetch-site", "cross-site")];
        assert!(refusal(&headers(&forged), false).is_some());
        // A rebound name: refused without a token, fine with one.
        let rebound = [
            ("host", "evil.example:9901"),
            ("origin", "http://evil.example:9901"),
        ];
        assert!(refusal(&headers(&rebound), true).is_some());
        assert_eq!(refusal(&headers(&rebound), false), None);
    }

    #[test]
    fn every_copy_is_read_in_any_case() {
        let mut second_copies = headers(&[
            ("host", "127.0.0.1:9901"),
            ("origin", "http://127.0.0.1:9901"),
            ("sec-fetch-site", "same-origin"),
        ]);
        second_copies.append("sec-fetch-site", "Cross-Site".parse().unwrap());
        assert!(refusal(&second_copies, false).is_some());
        let mut second_copies = headers(&[("host", "127.0.0.1:9901")]);
        second_copies.append("origin", "http://127.0.0.1:9901".parse().unwrap());
        second_copies.append("origin", "http://evil.example".parse().unwrap());
        assert!(refusal(&second_copies, false).is_some());
        let recased = [
            ("host", "LocalHost:9901"),
            ("origin", "HTTP://localhost:9901"),
        ];
        assert_eq!(refusal(&headers(&recased), true), None);
        let joined = [
            ("host", "127.0.0.1:9901"),
            ("sec-fetch-site", "same-origin, cross-site"),
        ];
        assert!(refusal(&headers(&joined), false).is_some());
        let null = [("host", "127.0.0.1:9901"), ("origin", "null")];
        assert!(refusal(&headers(&null), false).is_some());
    }
}
