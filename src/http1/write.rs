//! Heads as they leave the proxy: written from the parsed pieces of the
//! head that came in, with a hop's edits, in one buffer.
//!
//! Hop-by-hop fields describe one connection, so they go in both
//! directions, with every field a `Connection` field names. The body's
//! framing fields are the proxy's own (it re-frames what it relays). A
//! request's `X-Forwarded-*` fields tell the upstream who the client was:
//! the client's own `X-Forwarded-Proto` and `-Host` are replaced, its
//! `X-Forwarded-For` extended; `Host` is passed on unchanged.

use http::{Method, StatusCode};

use super::request::RequestHead;
use super::response::ResponseHead;
use super::{Field, Framing, Kind};

/// What the proxy changes in a request it forwards.
#[derive(Debug, Clone, Copy)]
pub struct RequestEdits<'a> {
    /// The path to send instead of the one received (its one meaning, when
    /// the client spelled it another way).
    pub path: Option<&'a str>,
    /// The client's address as `X-Forwarded-For` gives it.
    pub forwarded_for: &'a [u8],
    /// `http` or `https`: how the client reached the proxy.
    pub proto: &'static [u8],
    /// Whether a `Cookie` pair (`name=value`) is the proxy's own, never
    /// passed on.
    pub drops_cookie: fn(&[u8]) -> bool,
    /// The request's `X-Request-Id`, instead of any the client sent.
    pub request_id: &'a [u8],
}

/// Writes the head of `head` (parsed from `buf`) as it goes to an
/// upstream, with `edits`, into `out`: origin-form target, HTTP/1.1, and
/// the body framed as `head.framing` says (chunked bodies are re-encoded).
pub fn request_head(buf: &[u8], head: &RequestHead, edits: &RequestEdits<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    match edits.path {
        Some(path) => out.extend_from_slice(path.as_bytes()),
        None if head.path.is_empty() => out.push(b'/'),
        None => out.extend_from_slice(head.path.of(buf)),
    }
    if let Some(query) = head.query {
        out.push(b'?');
        out.extend_from_slice(query.of(buf));
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let named = head.names_fields();
    let (mut had_length, mut forwarded_for, mut cookies) = (false, false, false);
    for field in &head.fields {
        match field.kind {
            Kind::Host => line(out, buf, field),
            Kind::Other | Kind::Date if named && head.connection_names(buf, field.name.of(buf)) => {
            }
            Kind::Other | Kind::Date => line(out, buf, field),
            Kind::ContentLength => had_length = true,
            Kind::ForwardedFor => forwarded_for = true,
            Kind::Cookie => cookies = true,
            Kind::TransferEncoding
            | Kind::Connection
            | Kind::Upgrade
            | Kind::Expect
            | Kind::ForwardedSet
            | Kind::Bypass
            | Kind::RequestId
            | Kind::HopByHop
            | Kind::Rewrite => {}
        }
    }
    let authority = head.authority(buf);
    if head.host.is_none() {
        if let Some(authority) = authority {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(authority);
            out.extend_from_slice(b"\r\n");
        }
    }
    match head.framing {
        Framing::Length(length) => length_line(out, length),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty if had_length => out.extend_from_slice(b"content-length: 0\r\n"),
        Framing::Empty | Framing::UntilClose => {}
    }
    if cookies {
        cookie_line(buf, &head.fields, edits.drops_cookie, out);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if forwarded_for {
        for field in head.fields.iter().filter(|f| f.kind == Kind::ForwardedFor) {
            let earlier = field.value.of(buf);
            if !earlier.is_empty() {
                out.extend_from_slice(earlier);
                out.extend_from_slice(b", ");
            }
        }
    }
    out.extend_from_slice(edits.forwarded_for);
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(edits.proto);
    out.extend_from_slice(b"\r\n");
    if let Some(host) = head.host.map(|h| h.of(buf)).or(authority) {
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\n");
    }
    request_id_line(out, edits.request_id);
    if head.websocket {
        out.extend_from_slice(b"upgrade: websocket\r\nconnection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// One `Cookie` field for all of the request's (RFC 9113 §8.2.3 for
/// HTTP/2's; an HTTP/1.1 application may read only the first), without
/// the pairs that `drops` says are the proxy's. Every other pair is kept
/// byte for byte, its separators too.
fn cookie_line(buf: &[u8], fields: &[Field], drops: fn(&[u8]) -> bool, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(b"cookie: ");
    let empty = out.len();
    for field in fields.iter().filter(|f| f.kind == Kind::Cookie) {
        let value = field.value.of(buf);
        let before = out.len();
        if out.len() > empty {
            out.extend_from_slice(b"; ");
        }
        let kept_from = out.len();
        if value.split(|b| *b == b';').any(drops) {
            let mut first = true;
            for pair in value.split(|b| *b == b';').filter(|pair| !drops(pair)) {
                if !first {
                    out.push(b';');
                }
                out.extend_from_slice(pair);
                first = false;
            }
            trim_from(out, kept_from);
        } else {
            out.extend_from_slice(value);
        }
        if out.len() == kept_from {
            out.truncate(before);
        }
    }
    if out.len() == empty {
        out.truncate(start);
    } else {
        out.extend_from_slice(b"\r\n");
    }
}

/// Trims the whitespace around what `out` holds from `from` on.
fn trim_from(out: &mut Vec<u8>, from: usize) {
    let kept = out[from..].trim_ascii();
    let (offset, len) = (
        kept.as_ptr() as usize - out[from..].as_ptr() as usize,
        kept.len(),
    );
    out.copy_within(from + offset..from + offset + len, from);
    out.truncate(from + len);
}

/// What an answer says of its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing: an HTTP/1.1 connection stays open.
    Keep,
    /// `Connection: keep-alive`: an HTTP/1.0 client's connection stays open.
    KeepAlive,
    /// `Connection: close`: the connection ends after the answer.
    Close,
}

impl Persistence {
    /// For a connection that stays open if `keep`, with a client that
    /// speaks HTTP/1.0 if `http10`.
    pub fn of(keep: bool, http10: bool) -> Persistence {
        match (keep, http10) {
            (false, _) => Persistence::Close,
            (true, true) => Persistence::KeepAlive,
            (true, false) => Persistence::Keep,
        }
    }

    fn write(self, out: &mut Vec<u8>) {
        match self {
            Persistence::Keep => {}
            Persistence::KeepAlive => out.extend_from_slice(b"connection: keep-alive\r\n"),
            Persistence::Close => out.extend_from_slice(b"connection: close\r\n"),
        }
    }
}

/// What the proxy changes in a response it passes on.
#[derive(Debug, Clone, Copy)]
pub struct ResponseEdits<'a> {
    /// How the body goes to the client (a 1.1 client gets a body the
    /// upstream delimited by closing as chunks, a 1.0 client gets a chunked
    /// body delimited by the close).
    pub framing: Framing,
    /// What the answer says of the client's connection.
    pub persistence: Persistence,
    /// The request's `X-Request-Id`, instead of any the upstream sent.
    pub request_id: &'a [u8],
}

/// Writes the head of `head` (parsed from `buf`) as it goes to the client,
/// with `edits`, into `out`. A `Date` is added if the upstream gave none
/// (RFC 9110 §6.6.1).
pub fn response_head(
    buf: &[u8],
    head: &ResponseHead,
    edits: &ResponseEdits<'_>,
    out: &mut Vec<u8>,
) {
    status_line(out, head.status, head.reason.of(buf));
    let named = head.names_fields();
    let upgrade = head.status == 101;
    let (mut length, mut dated) = (None, false);
    for field in &head.fields {
        match field.kind {
            Kind::Connection | Kind::HopByHop | Kind::TransferEncoding | Kind::RequestId => {}
            Kind::Upgrade if !upgrade => {}
            Kind::ContentLength => length = super::content_length(field.value.of(buf)),
            _ if named && head.connection_names(buf, field.name.of(buf)) => {}
            kind => {
                dated |= kind == Kind::Date;
                line(out, buf, field);
            }
        }
    }
    if !dated {
        date_line(out);
    }
    request_id_line(out, edits.request_id);
    match edits.framing {
        Framing::Length(length) => length_line(out, length),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // A HEAD's or a 304's length describes what a GET would get.
        Framing::Empty => {
            if let Some(length) = length.filter(|_| head.status >= 200 && head.status != 204) {
                length_line(out, length);
            }
        }
        Framing::UntilClose => {}
    }
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else {
        edits.persistence.write(out);
    }
    out.extend_from_slice(b"\r\n");
}

/// The status line `HTTP/1.1 {status} {reason}`.
pub fn status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let digits = [
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ];
    out.extend_from_slice(&digits);
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

/// A whole answer of the proxy's own: status, `headers`, a `Date`, the
/// request's id, and `body` with its length (none for a `HEAD`'s answer,
/// whose length is still given).
pub fn answer(
    status: StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
    request: (&Method, &[u8]),
    persistence: Persistence,
    out: &mut Vec<u8>,
) {
    answer_fields(status, headers, body.len(), persistence, out);
    end_answer(body, request, out);
}

/// The part of an answer that can be prepared ahead: its status line and
/// fields, all but the `Date`. [`end_answer`] completes it.
pub fn answer_fields(
    status: StatusCode,
    headers: &http::HeaderMap,
    body_len: usize,
    persistence: Persistence,
    out: &mut Vec<u8>,
) {
    status_line(
        out,
        status.as_u16(),
        status.canonical_reason().unwrap_or("").as_bytes(),
    );
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    length_line(out, body_len as u64);
    persistence.write(out);
}

/// Completes an answer begun by [`answer_fields`] to a `request` (its
/// method and id): the `Date`, the id, the end of the head, and `body`
/// (none for a `HEAD`).
pub fn end_answer(body: &[u8], request: (&Method, &[u8]), out: &mut Vec<u8>) {
    let (method, request_id) = request;
    date_line(out);
    request_id_line(out, request_id);
    out.extend_from_slice(b"\r\n");
    if *method != Method::HEAD {
        out.extend_from_slice(body);
    }
}

/// `date: ...` with the current time, formatted once a second.
fn date_line(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                date.1.copy_from_slice(text.as_bytes());
                date.0 = second;
            }
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&date.1);
        out.extend_from_slice(b"\r\n");
    });
}

/// `x-request-id: ...`, unless there is no id.
fn request_id_line(out: &mut Vec<u8>, id: &[u8]) {
    if !id.is_empty() {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(id);
        out.extend_from_slice(b"\r\n");
    }
}

fn line(out: &mut Vec<u8>, buf: &[u8], field: &Field) {
    out.extend_from_slice(field.name.of(buf));
    out.extend_from_slice(b": ");
    out.extend_from_slice(field.value.of(buf));
    out.extend_from_slice(b"\r\n");
}

fn length_line(out: &mut Vec<u8>, length: u64) {
    out.extend_from_slice(b"content-length: ");
    decimal(length, out);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, without `core::fmt`'s machinery (heads and log lines
/// are written for every request).
pub fn decimal(n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}
