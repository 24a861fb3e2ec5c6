//! Spotting HTTP/1 request heads that carry both `Content-Length` and
//! `Transfer-Encoding`.
//!
//! Such a request is the classic smuggling shape: two servers that pick
//! different lengths disagree on where the next request starts. hyper
//! resolves it safely (chunked wins, the connection closes afterwards) but
//! drops the `Content-Length` header before the handler sees the request,
//! so the handler cannot refuse it as it should. [`Scanned`] therefore
//! watches the bytes hyper reads, follows the message framing (heads,
//! fixed-length and chunked bodies) and records which request on the
//! connection, counting from 0, had both headers. hyper serves HTTP/1
//! requests strictly in order, so the handler's own count of requests
//! matches the scanner's.
//!
//! The scanner is a lookout, not a second parser: anything it does not
//! understand (a head hyper will reject anyway, `CONNECT`, the bytes of an
//! accepted upgrade) makes it stop watching, and hyper's own handling stays
//! in charge.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Most headers a head may have (hyper's default limit).
const MAX_HEADERS: usize = 100;
/// Longest chunk-size or trailer line followed before giving up.
const MAX_LINE: usize = 4096;
/// No request flagged.
const NONE: u64 = u64::MAX;

/// What the scanner found, shared with the connection's service.
#[derive(Debug)]
pub struct Verdict {
    first_ambiguous: AtomicU64,
    /// Whether the bytes read so far end where a message ended.
    between_messages: AtomicBool,
}

impl Verdict {
    /// The verdict for a connection nobody scans (HTTP/2, whose framing
    /// is not ambiguous): never a flagged request, always between
    /// messages.
    pub fn unscanned() -> Arc<Verdict> {
        Arc::new(Verdict {
            first_ambiguous: AtomicU64::new(NONE),
            between_messages: AtomicBool::new(true),
        })
    }

    /// Whether the bytes read so far end exactly where a message ended: no
    /// head, body or chunk is partly read. False once not watching.
    pub fn between_messages(&self) -> bool {
        self.between_messages.load(Ordering::Acquire)
    }

    /// Whether request number `index` (from 0) on this connection had both
    /// `Content-Length` and `Transfer-Encoding`.
    pub fn is_ambiguous(&self, index: u64) -> bool {
        self.first_ambiguous.load(Ordering::Acquire) == index
    }
}

/// Where in the byte stream the scanner is.
#[derive(Debug)]
enum State {
    /// Reading a request head.
    Head,
    /// Skipping this many body bytes.
    Fixed(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data, then its CRLF (the `+ 2`).
    ChunkData(u64),
    /// Reading trailer lines until an empty one.
    Trailers,
    /// Not watching any more.
    Off,
}

/// A stream whose incoming bytes are scanned for ambiguous framing.
#[derive(Debug)]
pub struct Scanned<S> {
    inner: S,
    state: State,
    /// Bytes of an incomplete head or line.
    pending: Vec<u8>,
    /// Requests whose head has been scanned.
    heads: u64,
    /// Longest head followed (beyond it, hyper answers 431).
    max_head: usize,
    verdict: Arc<Verdict>,
}

impl<S> Scanned<S> {
    /// Wraps `inner`; `max_head` is the listener's header limit.
    pub fn new(inner: S, max_head: usize) -> Scanned<S> {
        Scanned {
            inner,
            state: State::Head,
            pending: Vec::new(),
            heads: 0,
            max_head,
            verdict: Arc::new(Verdict {
                first_ambiguous: AtomicU64::new(NONE),
                between_messages: AtomicBool::new(true),
            }),
        }
    }

    /// The verdict, for the connection's service.
    pub fn verdict(&self) -> Arc<Verdict> {
        self.verdict.clone()
    }

    /// The stream below.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Lets go of the memory kept for partial heads and lines.
    pub fn shrink(&mut self) {
        if self.pending.is_empty() {
            self.pending = Vec::new();
        }
    }

    /// Follows the framing through newly read bytes.
    fn scan(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            data = match self.state {
                State::Off => return,
                State::Head => self.scan_head(data),
                State::Fixed(left) => self.skip(data, left, State::Fixed, State::Head),
                State::ChunkData(left) => self.skip(data, left, State::ChunkData, State::ChunkSize),
                State::ChunkSize | State::Trailers => self.scan_line(data),
            };
        }
    }

    /// Skips up to `left` body bytes; `more` is the state while some are
    /// still to come, `done` the state after the last.
    fn skip<'d>(
        &mut self,
        data: &'d [u8],
        left: u64,
        more: fn(u64) -> State,
        done: State,
    ) -> &'d [u8] {
        let n = left.min(data.len() as u64);
        self.state = if n == left { done } else { more(left - n) };
        &data[n as usize..]
    }

    fn scan_head<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        // Parse in place when no earlier bytes are waiting (the usual case).
        let buffered = !self.pending.is_empty();
        if buffered {
            self.pending.extend_from_slice(data);
        }
        let bytes = if buffered { &self.pending[..] } else { data };
        // Left uninitialised: filling 100 empty headers would cost more
        // than parsing the usual head.
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let (len, next) = match request.parse_with_uninit_headers(bytes, &mut headers) {
            Ok(httparse::Status::Complete(len)) => (len, framing(&request)),
            Ok(httparse::Status::Partial) => {
                if bytes.len() > self.max_head {
                    self.state = State::Off;
                } else if !buffered {
                    self.pending.extend_from_slice(data);
                }
                return &[];
            }
            Err(_) => (0, Next::Stop),
        };
        if let Next::Body {
            ambiguous: true, ..
        } = next
        {
            let _ = self.verdict.first_ambiguous.compare_exchange(
                NONE,
                self.heads,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        self.heads += 1;
        self.state = match next {
            Next::Stop => State::Off,
            Next::Body { chunked: true, .. } => State::ChunkSize,
            Next::Body { length: 0, .. } => State::Head,
            Next::Body { length, .. } => State::Fixed(length),
        };
        // What followed the head in this read.
        let consumed_from_data = if buffered {
            let before = self.pending.len() - data.len();
            self.pending.clear();
            len.saturating_sub(before)
        } else {
            len
        };
        &data[consumed_from_data.min(data.len())..]
    }

    /// Chunk-size and trailer lines.
    fn scan_line<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        let Some(end) = data.iter().position(|b| *b == b'\n') else {
            self.pending.extend_from_slice(data);
            if self.pending.len() > MAX_LINE {
                self.state = State::Off;
            }
            return &[];
        };
        self.pending.extend_from_slice(&data[..=end]);
        let line = std::mem::take(&mut self.pending);
        self.state = match self.state {
            State::ChunkSize => match httparse::parse_chunk_size(&line) {
                Ok(httparse::Status::Complete((_, 0))) => State::Trailers,
                // The chunk's data, then the CRLF that closes it.
                Ok(httparse::Status::Complete((_, size))) => State::ChunkData(size + 2),
                _ => State::Off,
            },
            _ if line == b"\r\n" || line == b"\n" => State::Head,
            _ => State::Trailers,
        };
        self.pending = line;
        self.pending.clear();
        &data[end + 1..]
    }
}

/// How a head's body is framed.
enum Next {
    /// A body (possibly empty) follows.
    Body {
        chunked: bool,
        length: u64,
        ambiguous: bool,
    },
    /// Stop watching (CONNECT, unreadable length).
    Stop,
}

fn framing(request: &httparse::Request<'_, '_>) -> Next {
    let mut chunked = false;
    let mut length = None;
    // An `Upgrade` request goes on being watched: the upgrade may be
    // refused (by the gate, or the upstream), and then the next request on
    // the connection is HTTP again. Once it is accepted, the tunnel's bytes
    // are not a request head and end the watch at once.
    let connect = request.method == Some("CONNECT");
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            else {
                return Next::Stop;
            };
            length = Some(n);
        }
    }
    if connect {
        // After a tunnel is set up the bytes are another protocol's.
        return Next::Stop;
    }
    Next::Body {
        chunked,
        length: length.unwrap_or(0),
        ambiguous: chunked && length.is_some(),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Scanned<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if !matches!(self.state, State::Off) {
                self.scan(&buf.filled()[before..]);
                let between = matches!(self.state, State::Head) && self.pending.is_empty();
                self.verdict
                    .between_messages
                    .store(between, Ordering::Release);
            }
        }
        polled
    }
}

delegate_async_write!(Scanned);

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `stream` split into `piece`-byte reads; returns the verdict
    /// for request indexes 0..4 and how many heads were seen.
    fn scan(stream: &[u8], piece: usize) -> (Vec<bool>, u64) {
        let mut scanned = Scanned::new((), 32 * 1024);
        for chunk in stream.chunks(piece) {
            scanned.scan(chunk);
        }
        let verdict = scanned.verdict();
        (
            (0..4).map(|i| verdict.is_ambiguous(i)).collect(),
            scanned.heads,
        )
    }

    const PIPELINE: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: a\r\n\r\n\
POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n\
POST /d HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn flags_exactly_the_ambiguous_request_however_the_bytes_arrive() {
        for piece in [1, 2, 3, 7, 64, PIPELINE.len()] {
            assert_eq!(
                scan(PIPELINE, piece),
                (vec![false, false, false, true], 4),
                "piece {piece}"
            );
        }
    }

    #[test]
    fn body_bytes_that_look_like_headers_are_not_heads() {
        let stream = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 56\r\n\r\n\
GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n";
        assert_eq!(scan(stream, 5), (vec![false; 4], 1));
    }

    #[test]
    fn connect_and_garbage_stop_the_watch() {
        let connect = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\
POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(connect, 9), (vec![false; 4], 1));
        assert_eq!(scan(b"\x16\x03\x01 not http\r\n\r\n", 4).0, vec![false; 4]);
    }

    #[test]
    fn a_refused_upgrade_is_followed_by_more_requests() {
        let refused =
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\
POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(refused, 9), (vec![false, true, false, false], 2));
    }
}
