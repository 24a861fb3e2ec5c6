//! An upstream's response head, parsed once and held to the same framing
//! rules as a client's request: a response whose end the proxy cannot be
//! sure of is refused (a 502 to the client, and the upstream connection
//! closed), so no byte of it can leak into the next response.

use std::mem::MaybeUninit;

use http::Version;

use super::{content_length, ConnectionOptions, Field, Framing, Kind, Span};

/// Why an upstream's response is refused (the client gets a 502).
pub type Refusal = &'static str;

/// A parsed response head: offsets into the buffer it was read into.
/// Reused from one response to the next, like a request head.
#[derive(Debug, Clone, Default)]
pub struct ResponseHead {
    /// Bytes of the head, its final empty line included.
    pub len: usize,
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: Span,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Option<Version>,
    /// The header fields, in order.
    pub fields: Vec<Field>,
    /// How its body is delimited.
    pub framing: Framing,
    /// Whether the upstream closes the connection after it (or must be
    /// closed: a body delimited by the close).
    pub close: bool,
    connection: ConnectionOptions,
}

impl ResponseHead {
    /// Whether it is an interim answer (`1xx` but `101`), which another
    /// response follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// Whether the `Connection` field named `name` as this hop's alone.
    pub fn connection_names(&self, buf: &[u8], name: &[u8]) -> bool {
        self.connection.names(buf, name)
    }

    /// Whether the `Connection` field named any other field.
    pub fn names_fields(&self) -> bool {
        !self.connection.named.is_empty()
    }

    /// The value of the first field named `name` (any case).
    pub fn get<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        self.fields
            .iter()
            .find(|f| f.name.of(buf).eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| f.value.of(buf))
    }
}

/// Parses the response head at the start of `buf` into `head`, for a
/// request whose method was `HEAD` if `to_head`.
///
/// `Ok(false)`: not complete yet. `Ok(true)`: `head.len` bytes of `buf`
/// are its.
pub fn parse_response(
    buf: &[u8],
    max_head: usize,
    to_head: bool,
    head: &mut ResponseHead,
) -> Result<bool, Refusal> {
    head.fields.clear();
    head.connection.clear();
    let mut raw = [const { MaybeUninit::uninit() }; super::MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut raw,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Ok(false),
        Ok(_) => return Err("response head too large"),
        Err(httparse::Error::TooManyHeaders) => return Err("too many header fields"),
        Err(httparse::Error::Version) => return Err("not an HTTP/1 response"),
        Err(httparse::Error::Status) => return Err("malformed status line"),
        Err(_) => return Err("malformed header field"),
    };
    head.len = len;
    head.status = response.code.unwrap_or_default();
    if !(100..1000).contains(&head.status) {
        return Err("invalid status code");
    }
    head.reason = Span::within(buf, response.reason.unwrap_or_default().as_bytes());
    head.version = Some(match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    });
    let (mut lengths, mut codings) = (None, 0u32);
    for raw in response.headers.iter() {
        let kind = Kind::of(raw.name.as_bytes());
        let value = raw.value.trim_ascii();
        match kind {
            Kind::ContentLength => {
                let length = content_length(value).ok_or("invalid Content-Length")?;
                if lengths.is_some_and(|earlier| earlier != length) {
                    return Err("conflicting Content-Length headers");
                }
                lengths = Some(length);
            }
            Kind::TransferEncoding => {
                for coding in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if coding.is_empty() {
                        continue;
                    }
                    if !coding.eq_ignore_ascii_case(b"chunked") || codings > 0 {
                        // The client would get another coding's bytes
                        // without knowing.
                        return Err("a transfer coding other than chunked alone");
                    }
                    codings += 1;
                }
            }
            Kind::Connection => head.connection.read(buf, value),
            _ => {}
        }
        head.fields.push(Field {
            name: Span::within(buf, raw.name.as_bytes()),
            value: Span::within(buf, value),
            kind,
        });
    }
    if codings > 0 && head.version == Some(Version::HTTP_10) {
        // RFC 9112 §6.1: faulty framing.
        return Err("Transfer-Encoding in an HTTP/1.0 response");
    }
    let bodiless = to_head || head.status < 200 || head.status == 204 || head.status == 304;
    head.framing = match (lengths, codings) {
        (Some(_), 1..) => return Err("both Content-Length and Transfer-Encoding"),
        _ if bodiless => Framing::Empty,
        (None, 1..) => Framing::Chunked,
        (Some(0), _) => Framing::Empty,
        (Some(length), _) => Framing::Length(length),
        (None, _) => Framing::UntilClose,
    };
    head.close = match head.version {
        Some(Version::HTTP_10) => !head.connection.keep_alive,
        _ => head.connection.close,
    } || head.framing == Framing::UntilClose;
    Ok(true)
}
