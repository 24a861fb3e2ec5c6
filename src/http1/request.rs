//! A client's request head, parsed once and judged by the rules that keep
//! the proxy and the application reading the same request.

use std::mem::MaybeUninit;

use http::{Method, Version};

use super::{content_length, is_authority, ConnectionOptions, Field, Framing, Kind, Span};

/// Why a request head is refused, with the status it is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head is larger than the listener allows, or has too many
    /// fields: `431`.
    #[error("request header fields too large")]
    TooLarge,
    /// The request line alone is larger than the head may be: `414`.
    #[error("request line too long")]
    LineTooLong,
    /// Not HTTP/1.0 or HTTP/1.1: `505`.
    #[error("HTTP version not supported")]
    Version,
    /// A transfer coding other than `chunked` alone: `501`.
    #[error("only the chunked transfer coding is supported")]
    TransferCoding,
    /// `CONNECT`: forward proxying is not what switchyard does (`405`).
    #[error("CONNECT is not supported")]
    Connect,
    /// Malformed, or framed in a way two servers could read differently:
    /// `400`, with a reason safe to show the client.
    #[error("bad request: {0}")]
    Bad(&'static str),
}

/// Why a request whose length two servers could read differently is refused.
pub const AMBIGUOUS_LENGTH: &str =
    "both Content-Length and Transfer-Encoding: the body length is ambiguous";

/// A parsed request head: offsets into the buffer it was read into, and
/// what the proxy needs to know of it.
///
/// Reused from one request to the next on a connection: parsing into it
/// allocates nothing once its field list has grown to the connection's
/// usual head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// Bytes of the head, its final empty line included.
    pub len: usize,
    /// The method.
    pub method: Method,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The path of the target (`*` for `OPTIONS *`), without its query.
    pub path: Span,
    /// The query, without its `?`; `None` without one.
    pub query: Option<Span>,
    /// The authority of an absolute-form target (`http://host/path`).
    pub target_authority: Option<Span>,
    /// The `Host` value.
    pub host: Option<Span>,
    /// The header fields, in order.
    pub fields: Vec<Field>,
    /// How its body is delimited.
    pub framing: Framing,
    /// Whether the client asks to switch to WebSocket, the one upgrade that
    /// is tunnelled: `Connection: upgrade` and `Upgrade: websocket` alone,
    /// in HTTP/1.1. Any other `Upgrade` (h2c above all: an upstream that
    /// accepted it would carry every later request inside a tunnel the gate
    /// never sees) is dropped with the hop-by-hop fields.
    pub websocket: bool,
    /// Whether the client waits for `100 Continue` before its body.
    pub expects_continue: bool,
    /// Whether the client's connection ends after this exchange (HTTP/1.0
    /// without keep-alive, or `Connection: close`).
    pub close: bool,
    connection: ConnectionOptions,
}

impl Default for RequestHead {
    fn default() -> RequestHead {
        RequestHead {
            len: 0,
            method: Method::GET,
            version: Version::HTTP_11,
            path: Span::default(),
            query: None,
            target_authority: None,
            host: None,
            fields: Vec::new(),
            framing: Framing::Empty,
            websocket: false,
            expects_continue: false,
            close: false,
            connection: ConnectionOptions::default(),
        }
    }
}

impl RequestHead {
    /// Whether the `Connection` field named `name` as this hop's alone.
    pub fn connection_names(&self, buf: &[u8], name: &[u8]) -> bool {
        self.connection.names(buf, name)
    }

    /// Whether the `Connection` field named any other field.
    pub fn names_fields(&self) -> bool {
        !self.connection.named.is_empty()
    }

    /// The value of the first field of `kind`.
    pub fn first<'b>(&self, buf: &'b [u8], kind: Kind) -> Option<&'b [u8]> {
        self.fields
            .iter()
            .find(|f| f.kind == kind)
            .map(|f| f.value.of(buf))
    }

    /// The value of the first field named `name` (any case).
    pub fn get<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        self.fields
            .iter()
            .find(|f| f.name.of(buf).eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| f.value.of(buf))
    }

    /// The authority the client addressed: `Host`, or the target's.
    pub fn authority<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.host.or(self.target_authority).map(|s| s.of(buf))
    }

    fn reset(&mut self) {
        self.len = 0;
        self.path = Span::default();
        self.query = None;
        self.target_authority = None;
        self.host = None;
        self.fields.clear();
        self.framing = Framing::Empty;
        self.websocket = false;
        self.expects_continue = false;
        self.close = false;
        self.connection.clear();
    }
}

/// Parses the request head at the start of `buf` into `head`.
///
/// `Ok(false)`: the head is not complete yet (read more). `Ok(true)`: it
/// is, and `head.len` bytes of `buf` are its. A head longer than
/// `max_head` bytes is refused whether or not it is complete.
pub fn parse_request(
    buf: &[u8],
    max_head: usize,
    head: &mut RequestHead,
) -> Result<bool, HeadError> {
    head.reset();
    // Left uninitialised: filling 100 empty fields would cost more than
    // parsing the usual head.
    let mut raw = [const { MaybeUninit::uninit() }; super::MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    // Too large a head: its request line alone, if no line ends within
    // the bound (`414`), else the whole (`431`).
    let too_large = || {
        if buf[..max_head.min(buf.len())].contains(&b'\n') {
            HeadError::TooLarge
        } else {
            HeadError::LineTooLong
        }
    };
    let len = match request.parse_with_uninit_headers(buf, &mut raw) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Ok(false),
        Ok(httparse::Status::Complete(_) | httparse::Status::Partial) => return Err(too_large()),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(HeadError::Version),
        Err(httparse::Error::HeaderName) => return Err(HeadError::Bad("invalid header name")),
        Err(httparse::Error::HeaderValue) => return Err(HeadError::Bad("invalid header value")),
        Err(httparse::Error::NewLine) => return Err(HeadError::Bad("malformed line end")),
        Err(_) => return Err(HeadError::Bad("malformed request line")),
    };
    head.len = len;
    let method = request.method.unwrap_or_default();
    head.method =
        Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Bad("invalid method"))?;
    if head.method == Method::CONNECT {
        return Err(HeadError::Connect);
    }
    head.version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    read_target(buf, request.path.unwrap_or_default().as_bytes(), head)?;

    let (mut lengths, mut codings, mut hosts, mut upgrades) = (None, 0u32, 0u32, 0u32);
    let mut websocket_offered = false;
    for raw in request.headers.iter() {
        let kind = Kind::of(raw.name.as_bytes());
        let value = raw.value.trim_ascii();
        let field = Field {
            name: Span::within(buf, raw.name.as_bytes()),
            value: Span::within(buf, value),
            kind,
        };
        match kind {
            Kind::Host => {
                hosts += 1;
                head.host = Some(field.value);
            }
            Kind::ContentLength => {
                let length =
                    content_length(value).ok_or(HeadError::Bad("invalid Content-Length header"))?;
                if lengths.is_some_and(|earlier| earlier != length) {
                    return Err(HeadError::Bad("conflicting Content-Length headers"));
                }
                lengths = Some(length);
            }
            Kind::TransferEncoding => codings += read_codings(value)?,
            Kind::Connection => head.connection.read(buf, value),
            Kind::Upgrade => {
                upgrades += 1;
                websocket_offered = value.trim_ascii().eq_ignore_ascii_case(b"websocket");
            }
            Kind::Expect => {
                head.expects_continue |= value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
        head.fields.push(field);
    }

    head.framing = match (lengths, codings) {
        (Some(_), 1..) => return Err(HeadError::Bad(AMBIGUOUS_LENGTH)),
        (_, 1..) if head.version == Version::HTTP_10 => {
            return Err(HeadError::Bad("Transfer-Encoding in an HTTP/1.0 request"))
        }
        (_, 2..) => return Err(HeadError::Bad("the chunked transfer coding applied twice")),
        (None, 1) => Framing::Chunked,
        (Some(0) | None, _) => Framing::Empty,
        (Some(length), _) => Framing::Length(length),
    };

    check_host(buf, head, hosts)?;
    head.websocket = head.version == Version::HTTP_11
        && head.connection.upgrade
        && upgrades == 1
        && websocket_offered;
    head.close = match head.version {
        Version::HTTP_10 => !head.connection.keep_alive,
        _ => head.connection.close,
    };
    Ok(true)
}

/// Counts the codings of one `Transfer-Encoding` value: each must be
/// `chunked` (the proxy undoes and redoes that one, and would pass any
/// other on to a peer that does not expect it).
fn read_codings(value: &[u8]) -> Result<u32, HeadError> {
    let mut count = 0;
    for coding in value.split(|b| *b == b',') {
        let coding = coding.trim_ascii();
        if coding.is_empty() {
            continue;
        }
        if !coding.eq_ignore_ascii_case(b"chunked") {
            return Err(HeadError::TransferCoding);
        }
        count += 1;
    }
    if count == 0 {
        return Err(HeadError::Bad("empty Transfer-Encoding header"));
    }
    Ok(count)
}

/// Splits the request target into path, query and authority: a path
/// (origin form), an absolute `http(s)` URI (absolute form), or `*` with
/// `OPTIONS`. Only visible ASCII is accepted, and no fragment.
fn read_target(buf: &[u8], target: &[u8], head: &mut RequestHead) -> Result<(), HeadError> {
    const EXPECTED: HeadError =
        HeadError::Bad("invalid request target: expected a path such as /index.html");
    if !target.iter().all(|b| b.is_ascii_graphic()) || target.contains(&b'#') {
        return Err(HeadError::Bad(
            "invalid request target: only visible ASCII, and no fragment",
        ));
    }
    if target == b"*" {
        if head.method != Method::OPTIONS {
            return Err(HeadError::Bad(
                "request target `*` is only valid with OPTIONS",
            ));
        }
        head.path = Span::within(buf, target);
        return Ok(());
    }
    let origin = match target.first() {
        Some(b'/') => target,
        _ => {
            let rest = strip_prefix_ignore_case(target, b"http://")
                .or_else(|| strip_prefix_ignore_case(target, b"https://"))
                .ok_or(EXPECTED)?;
            let end = rest
                .iter()
                .position(|b| matches!(b, b'/' | b'?'))
                .unwrap_or(rest.len());
            let authority = &rest[..end];
            if authority.contains(&b'@') {
                return Err(HeadError::Bad(
                    "invalid request target: userinfo is not allowed",
                ));
            }
            if !is_authority(authority) {
                return Err(HeadError::Bad("invalid request target: bad authority"));
            }
            head.target_authority = Some(Span::within(buf, authority));
            &rest[end..]
        }
    };
    let (path, query) = match origin.iter().position(|b| *b == b'?') {
        Some(at) => (&origin[..at], Some(&origin[at + 1..])),
        None => (origin, None),
    };
    // `http://host` and `http://host?q` have an empty path: it is `/`,
    // which the writer puts back.
    if !path.is_empty() && path[0] != b'/' {
        return Err(EXPECTED);
    }
    head.path = Span::within(buf, path);
    head.query = query.map(|q| Span::within(buf, q));
    Ok(())
}

fn strip_prefix_ignore_case<'a>(bytes: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &bytes[prefix.len()..])
}

/// `Host` must be there once in HTTP/1.1, be an authority without
/// userinfo (a server that reads the part after `@` and one that reads the
/// whole disagree on where the request goes), and agree with an
/// absolute-form target.
fn check_host(buf: &[u8], head: &RequestHead, hosts: u32) -> Result<(), HeadError> {
    if hosts > 1 {
        return Err(HeadError::Bad("more than one Host header"));
    }
    let Some(host) = head.host.map(|h| h.of(buf)) else {
        return match head.version {
            Version::HTTP_10 => Ok(()),
            _ => Err(HeadError::Bad("missing Host header")),
        };
    };
    if host.contains(&b'@') {
        return Err(HeadError::Bad(
            "invalid Host header: userinfo is not allowed",
        ));
    }
    if !is_authority(host) {
        return Err(HeadError::Bad("invalid Host header"));
    }
    if let Some(target) = head.target_authority {
        if !target.of(buf).eq_ignore_ascii_case(host) {
            return Err(HeadError::Bad(
                "Host header disagrees with the request target's authority",
            ));
        }
    }
    Ok(())
}
