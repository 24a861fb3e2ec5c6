//! The maintenance gate: who still gets through, and the 503 everyone else
//! gets.
//!
//! A [`Gate`] exists only while maintenance is on, and is built once per
//! change (not per request): the answer's bodies and header maps are ready
//! to send, so a gated request costs a path check, an address check and
//! copies of a small header map and a `Bytes`.

pub mod page;
pub mod path;

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Method, Response, StatusCode};
use ipnet::IpNet;

use super::{seconds_left, MaintenanceMode, MaintenanceState, Window};
use crate::body::Body;
use crate::bypass::BypassKey;
use crate::config::Maintenance;
use crate::http1;
use crate::http1::write::Persistence;
use path::contains_ignore_case;

/// The gate while maintenance is on.
#[derive(Debug)]
pub struct Gate {
    allow_paths: Vec<String>,
    bypass_cidrs: Vec<IpNet>,
    /// Whether reads pass (read-only maintenance).
    reads_pass: bool,
    /// When the gate turns itself off: `Retry-After` counts down to it.
    until: Option<SystemTime>,
    /// The key of bypass tokens, with `maintenance.bypass_secret_file`.
    bypass: Option<BypassKey>,
    json: Page,
    html: Page,
}

/// One form of the 503: its body and its headers, and the HTTP/1 answer's
/// status line and fields, prepared for a client that keeps its connection
/// (only the `Date` is added as it is sent).
#[derive(Debug)]
struct Page {
    body: Bytes,
    headers: HeaderMap,
    http1: Vec<u8>,
    /// For a configured HTML page that shows the time left, while the
    /// gate has an end: the body as the seconds go.
    countdown: Option<page::Countdown>,
}

impl Page {
    fn new(body: Bytes, content_type: &'static str, retry_after: &HeaderValue) -> Page {
        let mut headers = HeaderMap::with_capacity(3);
        headers.insert(RETRY_AFTER, retry_after.clone());
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        let mut http1 = Vec::new();
        http1::write::answer_fields(
            StatusCode::SERVICE_UNAVAILABLE,
            &headers,
            body.len(),
            Persistence::Keep,
            &mut http1,
        );
        Page {
            body,
            headers,
            http1,
            countdown: None,
        }
    }

    /// Its body with `left` until the gate's end, if it has one.
    fn body(&self, left: Option<Duration>) -> Bytes {
        match (&self.countdown, left) {
            (Some(countdown), Some(left)) => countdown.page(left),
            _ => self.body.clone(),
        }
    }
}

impl Gate {
    /// The gate for the decided `state`, with the exceptions and page of
    /// the config's `[maintenance]`.
    pub fn new(
        config: &Maintenance,
        state: &MaintenanceState,
        window: Option<&Window>,
        bypass: Option<&BypassKey>,
    ) -> Gate {
        let message = state.message(config);
        let json = serde_json::json!({ "message": message }).to_string();
        let retry_after_now = state.retry_after_now(config, SystemTime::now());
        let retry_after = HeaderValue::from(retry_after_now.as_secs());
        let values = page::Values {
            message,
            retry_after: retry_after_now,
            until: state.until,
            window: window.map(|w| (w.starts_at, w.ends_at)),
        };
        let template = config
            .html_page
            .as_ref()
            .map(|page| String::from_utf8_lossy(&page.body));
        let html_body = Bytes::from(match &template {
            Some(template) => page::render(template, &values),
            None => page::built_in(&values),
        });
        let mut html = Page::new(html_body, "text/html; charset=utf-8", &retry_after);
        html.countdown = template
            .as_ref()
            .and_then(|template| page::Countdown::of(template, &values, &html.body));
        Gate {
            allow_paths: config.allow_paths.clone(),
            bypass_cidrs: config.bypass_cidrs.clone(),
            reads_pass: state.mode == MaintenanceMode::ReadOnly,
            until: state.until,
            bypass: bypass.cloned(),
            json: Page::new(Bytes::from(json), "application/json", &retry_after),
            html,
        }
    }

    /// Whether `token` is a bypass token that lets its bearer through now
    /// (checked only for a request [`Gate::admits`] holds back).
    pub fn honours(&self, token: &str) -> bool {
        self.bypass
            .as_ref()
            .is_some_and(|key| key.admits(token, SystemTime::now()))
    }

    /// Whether a `method` request for `path` from `client` still reaches
    /// the live pool, by the gate's mode, paths and addresses.
    pub fn admits(&self, method: &Method, path: &str, client: IpAddr) -> bool {
        // In read-only maintenance, reads pass (a WebSocket upgrade is a GET).
        if self.reads_pass && matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return true;
        }
        let client = client.to_canonical();
        self.bypass_cidrs.iter().any(|net| net.contains(&client))
            || self
                .allow_paths
                .iter()
                .any(|prefix| path_is_under(path, prefix))
    }

    /// The 503 for a client that sent `accept`.
    pub fn response(&self, accept: Option<&HeaderValue>) -> Response<Body> {
        let page = self.page(accept.map(HeaderValue::as_bytes));
        let left = self.left();
        let mut response = Response::new(Body::full(page.body(left)));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        *response.headers_mut() = page.headers.clone();
        if let Some(left) = left {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(left.as_secs()));
        }
        response
    }
}

impl Gate {
    /// The whole seconds left until the gate's end, if it has one.
    fn left(&self) -> Option<Duration> {
        self.until
            .map(|until| seconds_left(until, SystemTime::now()))
    }

    /// The page for a client that sent `accept`.
    fn page(&self, accept: Option<&[u8]>) -> &Page {
        if accept.is_some_and(prefers_html) {
            &self.html
        } else {
            &self.json
        }
    }

    /// Writes the 503 for an HTTP/1 `request` (its method and id) whose
    /// `Accept` is `accept` into `out`, saying what `persistence` says of the
    /// connection. The usual case (a connection that stays open, a gate
    /// without an end) is the prepared answer.
    pub fn write_http1(
        &self,
        accept: Option<&[u8]>,
        request: (&Method, &[u8]),
        persistence: Persistence,
        out: &mut Vec<u8>,
    ) {
        let page = self.page(accept);
        if self.until.is_none() && persistence == Persistence::Keep {
            out.extend_from_slice(&page.http1);
            http1::write::end_answer(&page.body, request, out);
            return;
        }
        let mut headers = page.headers.clone();
        let left = self.left();
        if let Some(left) = left {
            headers.insert(RETRY_AFTER, HeaderValue::from(left.as_secs()));
        }
        http1::write::answer(
            StatusCode::SERVICE_UNAVAILABLE,
            &headers,
            &page.body(left),
            request,
            persistence,
            out,
        );
    }
}

/// Whether `path` is `prefix` or below it, by whole segments: `/health`
/// covers `/health`, `/health/` and `/health/db`, not `/healthz`.
///
/// `path` has been normalized (see [`path::normalize`]): no dot segments, no
/// encoded dots. One with an encoded slash never matches: some servers
/// decode it before routing (`/health/x%2F..%2F..%2Fadmin`), some do not.
/// Dot segments are checked once more all the same: this is the one place
/// a wrong answer lets a request through.
fn path_is_under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    let Some(rest) = path.strip_prefix(prefix) else {
        return false;
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return false;
    }
    !path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
        && !contains_ignore_case(path, "%2e")
        && !contains_ignore_case(path, "%2f")
}

/// Whether `accept` ranks `text/html` above `application/json`. A media
/// range (`text/*`, `*/*`) counts for what it covers, the most specific
/// match decides each q-value, and a tie means JSON.
fn prefers_html(accept: &[u8]) -> bool {
    let Ok(accept) = std::str::from_utf8(accept) else {
        return false;
    };
    quality(accept, "text", "html") > quality(accept, "application", "json")
}

/// The q-value (in thousandths) `accept` gives `kind/sub`: that of the most
/// specific range that matches it, 0 if none does.
fn quality(accept: &str, kind: &str, sub: &str) -> u16 {
    let mut best: Option<(u8, u16)> = None;
    for range in accept.split(',') {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim();
        let Some((r_kind, r_sub)) = media.split_once('/') else {
            continue;
        };
        let specificity = match (r_kind.trim(), r_sub.trim()) {
            (k, s) if k.eq_ignore_ascii_case(kind) && s.eq_ignore_ascii_case(sub) => 2,
            (k, "*") if k.eq_ignore_ascii_case(kind) => 1,
            ("*", "*") => 0,
            _ => continue,
        };
        let q = params
            .filter_map(|p| p.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .map_or(1000, |(_, value)| parse_q(value.trim()));
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, q));
        }
    }
    best.map_or(0, |(_, q)| q)
}

/// A q-value (`0`, `0.5`, `1.000`) in thousandths; malformed counts as 0.
fn parse_q(value: &str) -> u16 {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let whole = match whole {
        "0" => 0,
        "1" => 1000,
        _ => return 0,
    };
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    let digits: String = format!("{fraction:0<3}");
    (whole + digits.parse::<u16>().unwrap_or(0)).min(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn html(accept: &str) -> bool {
        prefers_html(accept.as_bytes())
    }

    #[test]
    fn browsers_get_html_and_curl_gets_json() {
        assert!(html(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(!html("*/*"));
        assert!(!html("application/json"));
        assert!(!html("text/html;q=0.5, application/json"));
        assert!(html("text/*, application/json;q=0.9"));
        assert!(!html("text/html, application/json"), "a tie means JSON");
        assert!(html("text/html"));
        assert!(!html("text/html;q=0"));
        assert!(!html("text/html;q=0.5, */*;q=0.5"));
    }

    #[test]
    fn q_values_parse_in_thousandths() {
        assert_eq!(parse_q("1"), 1000);
        assert_eq!(parse_q("0.8"), 800);
        assert_eq!(parse_q("0.125"), 125);
        assert_eq!(parse_q("1.000"), 1000);
        assert_eq!(parse_q("0.1234"), 0);
        assert_eq!(parse_q("abc"), 0);
    }

    #[test]
    fn allow_paths_match_whole_segments() {
        assert!(path_is_under("/health", "/health"));
        assert!(path_is_under("/health/", "/health"));
        assert!(path_is_under("/health/db", "/health"));
        assert!(path_is_under("/health/db", "/health/"));
        assert!(!path_is_under("/healthz", "/health"));
        assert!(!path_is_under("/", "/health"));
        assert!(!path_is_under("/health/../admin", "/health"));
        assert!(!path_is_under("/health/%2e%2e/admin", "/health"));
        assert!(!path_is_under("/health/x%2F..%2F..%2Fadmin", "/health"));
        assert!(!path_is_under("/health;v=1", "/health"));
    }
}
