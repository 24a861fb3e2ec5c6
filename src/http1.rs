//! HTTP/1.1 messages as a proxy handles them: heads parsed once, in place,
//! kept as bytes, judged strictly, and written out again with the edits a
//! hop makes; bodies framed and re-framed. Nothing here does I/O: the
//! connection engines on both sides of the proxy feed it bytes.
//!
//! A proxy's parser is its attack surface. Two servers that read one
//! message differently (where its body ends, which host it is for) are how
//! request smuggling starts, so every head is held to RFC 9112 and what it
//! leaves open is refused rather than guessed:
//!
//! - Heads are parsed by `httparse`: invalid bytes in names or values, a
//!   bare CR, obs-fold and extra spaces in the request line are errors.
//! - A request with both `Content-Length` and `Transfer-Encoding`, a
//!   `Content-Length` that is not digits or disagrees with another, a
//!   transfer coding other than `chunked` alone, or `Transfer-Encoding` in
//!   HTTP/1.0 is refused ([`request`]); a response framed that way closes
//!   its upstream connection ([`response`]).
//! - Chunked bodies are decoded strictly (CRLF line ends, bounded lines,
//!   valid trailers) and re-encoded canonically ([`chunked`]), so the next
//!   hop reads exactly the chunks the proxy read.
//! - What goes out is written from the parsed pieces with CRLF line ends
//!   ([`mod@write`]): the next hop never sees a byte the proxy did not judge.

pub mod chunked;
pub mod percent;
pub mod request;
pub mod response;
pub mod write;

pub use request::{parse_request, HeadError, RequestHead};
pub use response::{parse_response, ResponseHead};

/// Most header fields a head may have (hyper's limit too).
pub const MAX_HEADERS: usize = 100;

/// Where a piece of a head lies in the buffer it was parsed from: heads
/// keep offsets, not copies, so one buffer serves a whole connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// The span of `part`, a slice of `base`.
    fn within(base: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - base.as_ptr() as usize;
        debug_assert!(start + part.len() <= base.len(), "part lies within base");
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    /// The bytes it covers in `buf`, the buffer it was found in.
    pub fn of(self, buf: &[u8]) -> &[u8] {
        &buf[self.start as usize..self.end as usize]
    }

    /// Whether it covers no byte.
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// One header field of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The name as sent (its case kept).
    pub name: Span,
    /// The value, without the surrounding whitespace.
    pub value: Span,
    /// What the proxy makes of the name.
    pub kind: Kind,
}

/// The header names a hop treats specially; every other is [`Kind::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `Host`.
    Host,
    /// `Date`.
    Date,
    /// `Content-Length`.
    ContentLength,
    /// `Transfer-Encoding`.
    TransferEncoding,
    /// `Connection`.
    Connection,
    /// `Upgrade`.
    Upgrade,
    /// `Expect`.
    Expect,
    /// `Cookie`.
    Cookie,
    /// `X-Forwarded-For`.
    ForwardedFor,
    /// `X-Forwarded-Proto` and `X-Forwarded-Host`, which the proxy sets.
    ForwardedSet,
    /// `X-Switchyard-Bypass`: a pass through the gate, the proxy's alone.
    Bypass,
    /// `X-Request-Id`, which the proxy sets in both directions (keeping a
    /// client's sane one).
    RequestId,
    /// The other hop-by-hop fields (RFC 9110 §7.6.1), the legacy
    /// `Keep-Alive` and `Proxy-Connection`, and h2c's `HTTP2-Settings`.
    HopByHop,
    /// Fields with which a client could make the application read another
    /// URL or method than the one the gate judged: IIS's and Symfony's
    /// `X-Original-URL` and `X-Rewrite-URL`, and the method overrides of
    /// Rails, Symfony, Express and ASP.NET. Only a proxy in front may set
    /// them, and switchyard sets none.
    Rewrite,
    /// Anything else.
    Other,
}

impl Kind {
    /// The kind of the field named `name` (any case).
    pub fn of(name: &[u8]) -> Kind {
        // `known` is lower case: only `name`'s letters need folding.
        let is = |known: &str| {
            name.len() == known.len()
                && name
                    .iter()
                    .zip(known.as_bytes())
                    .all(|(n, k)| n.to_ascii_lowercase() == *k)
        };
        // By length and first letter: most names are compared with nothing.
        let first = name.first().map_or(0, u8::to_ascii_lowercase);
        match (name.len(), first) {
            (2, b't') if is("te") => Kind::HopByHop,
            (4, b'h') if is("host") => Kind::Host,
            (4, b'd') if is("date") => Kind::Date,
            (6, b'c') if is("cookie") => Kind::Cookie,
            (6, b'e') if is("expect") => Kind::Expect,
            (7, b'u') if is("upgrade") => Kind::Upgrade,
            (7, b't') if is("trailer") => Kind::HopByHop,
            (10, b'c') if is("connection") => Kind::Connection,
            (10, b'k') if is("keep-alive") => Kind::HopByHop,
            (12, b'x') if is("x-request-id") => Kind::RequestId,
            (13, b'x') if is("x-rewrite-url") || is("x-http-method") => Kind::Rewrite,
            (14, b'c') if is("content-length") => Kind::ContentLength,
            (14, b'x') if is("x-original-url") => Kind::Rewrite,
            (14, b'h') if is("http2-settings") => Kind::HopByHop,
            (15, b'x') if is("x-forwarded-for") => Kind::ForwardedFor,
            (16, b'x') if is("x-forwarded-host") => Kind::ForwardedSet,
            (16, b'p') if is("proxy-connection") => Kind::HopByHop,
            (17, b't') if is("transfer-encoding") => Kind::TransferEncoding,
            (17, b'x') if is("x-forwarded-proto") => Kind::ForwardedSet,
            (17, b'x') if is("x-method-override") => Kind::Rewrite,
            (18, b'p') if is("proxy-authenticate") => Kind::HopByHop,
            (19, b'p') if is("proxy-authorization") => Kind::HopByHop,
            (19, b'x') if is("x-switchyard-bypass") => Kind::Bypass,
            (22, b'x') if is("x-http-method-override") => Kind::Rewrite,
            _ => Kind::Other,
        }
    }
}

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    #[default]
    Empty,
    /// Exactly this many bytes (more than zero).
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

impl Framing {
    /// Whether a body follows the head.
    pub fn has_body(self) -> bool {
        self != Framing::Empty
    }
}

/// What a `Connection` field says: the options the proxy acts on, and
/// the other fields it names, which are this hop's alone.
#[derive(Debug, Clone, Default)]
struct ConnectionOptions {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    /// Names of other fields, as spans of the head's buffer.
    named: Vec<Span>,
}

impl ConnectionOptions {
    /// Reads the tokens of one `Connection` value.
    fn read(&mut self, buf: &[u8], value: &[u8]) {
        for token in value.split(|b| *b == b',') {
            let token = token.trim_ascii();
            if token.is_empty() {
                continue;
            }
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if Kind::of(token) == Kind::Other {
                // A hop-by-hop name goes anyway; `Host`, `Content-Length`
                // and the rest are never removed this way: naming them is an
                // attempt to confuse the next hop, not a declaration.
                self.named.push(Span::within(buf, token));
            }
        }
    }

    /// Whether `name` is one of the fields the `Connection` field named.
    fn names(&self, buf: &[u8], name: &[u8]) -> bool {
        self.named
            .iter()
            .any(|named| named.of(buf).eq_ignore_ascii_case(name))
    }

    fn clear(&mut self) {
        self.close = false;
        self.keep_alive = false;
        self.upgrade = false;
        self.named.clear();
    }
}

/// The length a `Content-Length` value gives: one or more digits, or a
/// list of the same digits (`42, 42`, which RFC 9110 §8.6 lets a recipient
/// accept). `None` for anything else: a sign, a space inside, a length that
/// does not fit in 64 bits, two different lengths.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for item in value.split(|b| *b == b',') {
        let item = item.trim_ascii();
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut n: u64 = 0;
        for digit in item {
            n = n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
        }
        match length {
            Some(earlier) if earlier != n => return None,
            _ => length = Some(n),
        }
    }
    length
}

/// Whether `value` is a valid authority (`host[:port]`, no userinfo): a
/// registered name or IPv4 address of unreserved, percent and sub-delim
/// characters, or a bracketed IPv6 literal, and digits after the colon.
fn is_authority(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        Some(b'[') => match value.iter().position(|b| *b == b']') {
            Some(close) => {
                let literal = &value[1..close];
                if literal.is_empty()
                    || !literal
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
                {
                    return false;
                }
                match &value[close + 1..] {
                    [] => (&value[..0], None),
                    [b':', port @ ..] => (&value[..0], Some(port)),
                    _ => return false,
                }
            }
            None => return false,
        },
        Some(_) => match value.iter().rposition(|b| *b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        },
        None => return false,
    };
    let host_ok = host.iter().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    host_ok && port_ok && !(value[0] != b'[' && host.is_empty())
}

#[cfg(test)]
mod tests;
