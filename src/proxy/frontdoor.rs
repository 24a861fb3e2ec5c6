//! Checks an HTTP/2 request must pass before any of it reaches an upstream
//! (the HTTP/1 engine checks its heads as it parses them, in
//! `http1::request`).
//!
//! hyper parses HTTP/2, but accepts some requests a proxy must not pass
//! on: a `Host` that disagrees with `:authority`, two `Host`s, a target
//! that is not a path, `*` on a method other than OPTIONS. Two servers that
//! read such a request differently are how request smuggling and cache
//! poisoning start, so the proxy refuses them with 400.
//!
//! Also here: the request target rewritten to the path's one meaning, and
//! the HTTPS redirect a plain listener answers with (both engines).

use http::header::HOST;
use http::uri::Authority;
use http::{HeaderMap, Method, Response, StatusCode, Uri};

use super::error::ProxyError;
use crate::body::Body;

/// What a checked request is routed by.
#[derive(Debug)]
pub struct Target {
    /// The authority the client addressed (`Host`, or HTTP/2 `:authority`).
    pub authority: Option<Authority>,
}

/// Checks method, target (`:path` and `:authority`) and `Host` of an
/// HTTP/2 request head.
pub fn check(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Target, ProxyError> {
    if method == Method::CONNECT {
        return Err(ProxyError::ConnectNotAllowed);
    }
    check_target(method, uri)?;
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    let host = match host {
        // `user@host` parses as an authority, but a Host has no userinfo
        // (RFC 9110 §7.2): a server that reads the part after `@` and one
        // that reads the whole disagree on where the request goes.
        Some(value) if value.as_bytes().contains(&b'@') => {
            return Err(ProxyError::BadRequest(
                "invalid Host header: userinfo is not allowed",
            ))
        }
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.parse::<Authority>().ok())
                .ok_or(ProxyError::BadRequest("invalid Host header"))?,
        ),
        None => None,
    };
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(ProxyError::BadRequest(
            "invalid request target: userinfo is not allowed",
        ));
    }
    let authority = match (host, uri.authority()) {
        (Some(host), Some(target)) => {
            // `:authority` names the host too; two different answers is
            // an attack.
            if !host.as_str().eq_ignore_ascii_case(target.as_str()) {
                return Err(ProxyError::BadRequest(
                    "Host header disagrees with the request target's authority",
                ));
            }
            Some(host)
        }
        (Some(host), None) => Some(host),
        (None, Some(target)) => Some(target.clone()),
        (None, None) => return Err(ProxyError::BadRequest("missing Host header")),
    };
    Ok(Target { authority })
}

/// The request target must be a path (origin form), an absolute `http(s)`
/// URI (absolute form), or `*` with OPTIONS.
fn check_target(method: &Method, uri: &Uri) -> Result<(), ProxyError> {
    // As an HTTP/1 request line must be (the engine refuses other bytes).
    if !uri.path_and_query().map_or("", |p| p.as_str()).is_ascii() {
        return Err(ProxyError::BadRequest(
            "invalid request target: bytes outside ASCII must be percent-encoded",
        ));
    }
    let path = uri.path();
    if path == "*" {
        return if method == Method::OPTIONS {
            Ok(())
        } else {
            Err(ProxyError::BadRequest(
                "request target `*` is only valid with OPTIONS",
            ))
        };
    }
    let absolute = uri.scheme().is_some() && uri.authority().is_some();
    let origin = uri.scheme().is_none() && uri.authority().is_none();
    let path_ok = path.starts_with('/');
    if !path_ok || !(origin || absolute) {
        return Err(ProxyError::BadRequest(
            "invalid request target: expected a path such as /index.html",
        ));
    }
    if let Some(scheme) = uri.scheme_str() {
        if scheme != "http" && scheme != "https" {
            return Err(ProxyError::BadRequest(
                "invalid request target: only http and https URIs are accepted",
            ));
        }
    }
    Ok(())
}

/// `uri` with its path replaced by `path` (its query kept).
pub fn with_path(uri: &http::Uri, path: &str) -> Result<http::Uri, ProxyError> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = http::uri::Parts::from(uri.clone());
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_| ProxyError::BadRequest("invalid request target"))?,
    );
    http::Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid request target"))
}

/// `308 Permanent Redirect` to the same host (default HTTPS port) and the
/// same path and query, over https: `host` is the request's `Host` (or
/// HTTP/2's `:authority`).
pub fn redirect_to_https(host: Option<&[u8]>, path_and_query: &str) -> Response<Body> {
    let host = host.and_then(|h| std::str::from_utf8(h).ok()).unwrap_or("");
    // Drop a port (the plain listener's); keep an IPv6 literal whole.
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    };
    let location = format!("https://{host}{path_and_query}");
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(location) = http::HeaderValue::from_str(&location) {
        response
            .headers_mut()
            .insert(http::header::LOCATION, location);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// `target` is `:path`, or `:authority` and `:path` as a URI.
    fn check_h2(method: &str, target: &str, hosts: &[&str]) -> Result<Target, ProxyError> {
        let mut headers = HeaderMap::new();
        for host in hosts {
            headers.append(HOST, HeaderValue::from_str(host).unwrap());
        }
        let uri: Uri = target.parse().unwrap();
        check(&method.parse().unwrap(), &uri, &headers)
    }

    #[test]
    fn ordinary_requests_pass() {
        assert!(check_h2("GET", "/", &["a.example"]).is_ok());
        assert!(check_h2("OPTIONS", "*", &["a.example"]).is_ok());
        assert!(check_h2("GET", "http://a.example/x", &["a.example"]).is_ok());
    }

    #[test]
    fn bad_targets_are_refused() {
        // `GET ok` parses as an authority-form URI.
        assert!(check_h2("GET", "ok", &["a.example"]).is_err());
        assert!(check_h2("GET", "*", &["a.example"]).is_err());
        assert!(check_h2("GET", "ftp://a.example/x", &["a.example"]).is_err());
        // HTTP/2 carries a target as bytes: one outside ASCII is refused,
        // as the HTTP/1 engine refuses it in a request line.
        let raw = Uri::from_maybe_shared(bytes::Bytes::from_static(b"/x\xc3\xbf")).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("a.example"));
        assert!(check(&Method::GET, &raw, &headers).is_err());
        assert!(matches!(
            check_h2("CONNECT", "a.example:443", &["a.example"]),
            Err(ProxyError::ConnectNotAllowed)
        ));
    }

    #[test]
    fn host_must_be_there_once_and_agree() {
        assert!(check_h2("GET", "/", &[]).is_err());
        assert!(check_h2("GET", "/", &["a.example", "b.example"]).is_err());
        assert!(check_h2("GET", "http://b.example/", &["a.example"]).is_err());
        assert!(check_h2("GET", "/", &["user@a.example"]).is_err());
        assert!(check_h2("GET", "http://user@a.example/", &["user@a.example"]).is_err());
    }

    #[test]
    fn http2_host_must_match_authority() {
        let uri: Uri = "http://a.example/x".parse().unwrap();
        let mut headers = HeaderMap::new();
        let get = Method::GET;
        assert_eq!(
            check(&get, &uri, &headers).unwrap().authority.unwrap(),
            "a.example"
        );
        headers.insert(HOST, HeaderValue::from_static("b.example"));
        assert!(check(&get, &uri, &headers).is_err());
    }
}
