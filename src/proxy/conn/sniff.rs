//! The first bytes of a connection: which protocol, and within what time.
//!
//! Telling HTTP/1 from HTTP/2 prior knowledge means reading first, and a
//! client that connects and sends nothing must not hold a connection
//! forever: [`sniff`] does that read under the header timeout, then hands
//! the bytes on (to the HTTP/1 engine as its first input, or to hyper's
//! HTTP/2 server through [`Prefixed`]).
//!
//! The read takes whatever the client has sent, up to [`FIRST_READ`]
//! bytes, not just the 24 that tell the protocols apart: a request head
//! usually arrives whole in the first read, and is then parsed without a
//! second system call, which matters when every request comes on a new
//! connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most bytes the first read takes: room for a browser's request head.
/// Allocated only once the client has sent something, and let go as soon
/// as hyper has taken it all.
const FIRST_READ: usize = 2048;

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// Why no protocol was found.
#[derive(Debug)]
pub enum SniffError {
    /// The client closed before sending anything.
    Closed,
    /// The client sent too little before the deadline.
    TimedOut,
    /// Reading failed.
    Io(io::Error),
}

/// Reads just enough of `stream` to tell HTTP/2's preface from HTTP/1, by
/// `deadline`. The bytes read come back inside the [`Prefixed`] stream.
pub async fn sniff(
    stream: TcpStream,
    deadline: Instant,
) -> Result<(Protocol, Prefixed<TcpStream>), SniffError> {
    let mut prefix = Vec::new();
    let protocol = loop {
        // Wait for bytes before taking memory for them: a connection that
        // sends nothing costs no buffer.
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Err(_) => return Err(SniffError::TimedOut),
            Ok(Err(e)) => return Err(SniffError::Io(e)),
            Ok(Ok(())) => {}
        }
        prefix.reserve(FIRST_READ - prefix.len());
        let (before, room) = (prefix.len(), prefix.capacity() - prefix.len());
        let read = stream.try_io(Interest::READABLE, || {
            let n = stream.try_read_buf(&mut prefix)?;
            // Fewer bytes than there was room for is all the socket had:
            // say so, as tokio's own reads do, so that hyper's first read
            // waits for more instead of finding nothing in a system call.
            if n > 0 && n < room {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let got = prefix.len() - before;
        match read {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(SniffError::Io(e)),
            Err(_) if got == 0 => continue,
            Ok(0) if prefix.is_empty() => return Err(SniffError::Closed),
            // A partial line then EOF: let hyper answer it as HTTP/1.
            Ok(0) => break Protocol::Http1,
            Err(_) | Ok(_) => {}
        }
        let seen = prefix.len().min(H2_PREFACE.len());
        if prefix[..seen] != H2_PREFACE[..seen] {
            break Protocol::Http1;
        }
        if seen == H2_PREFACE.len() {
            break Protocol::Http2;
        }
    };
    Ok((
        protocol,
        Prefixed {
            prefix,
            start: 0,
            inner: stream,
        },
    ))
}

/// A stream that first yields bytes already read from it.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    start: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Whether some of the bytes read ahead are still to be served.
    pub fn has_prefix(&self) -> bool {
        self.start < self.prefix.len()
    }

    /// The bytes read ahead and not served yet, and the stream below.
    pub fn into_parts(mut self) -> (Vec<u8>, S) {
        self.prefix.drain(..self.start);
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.has_prefix() {
            let n = (self.prefix.len() - self.start).min(buf.remaining());
            let start = self.start;
            buf.put_slice(&self.prefix[start..start + n]);
            self.start += n;
            if !self.has_prefix() {
                // All served: the buffer is not needed any more.
                self.prefix = Vec::new();
                self.start = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

delegate_async_write!(Prefixed);
