//! The first bytes of a connection: which protocol, and within what time.
//!
//! hyper's HTTP/1 server bounds the time to read a request head, but only
//! once it owns the connection; telling HTTP/1 from HTTP/2 prior knowledge
//! means reading first, and hyper-util's auto builder does that read with no
//! deadline (hyper issue #3962), so a client that connects and sends nothing
//! would hold a connection forever. [`sniff`] does that read itself under
//! the header timeout, then hands the bytes back through [`Prefixed`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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
    mut stream: TcpStream,
    deadline: Instant,
) -> Result<(Protocol, Prefixed<TcpStream>), SniffError> {
    let mut prefix = [0u8; 24];
    let mut len = 0;
    let protocol = loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut prefix[len..])).await;
        match read {
            Err(_) => return Err(SniffError::TimedOut),
            Ok(Err(e)) => return Err(SniffError::Io(e)),
            Ok(Ok(0)) if len == 0 => return Err(SniffError::Closed),
            // A partial line then EOF: let hyper answer it as HTTP/1.
            Ok(Ok(0)) => break Protocol::Http1,
            Ok(Ok(n)) => len += n,
        }
        if prefix[..len] != H2_PREFACE[..len] {
            break Protocol::Http1;
        }
        if len == H2_PREFACE.len() {
            break Protocol::Http2;
        }
    };
    Ok((
        protocol,
        Prefixed {
            prefix,
            start: 0,
            end: len,
            inner: stream,
        },
    ))
}

/// A stream that first yields bytes already read from it.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: [u8; 24],
    start: usize,
    end: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Whether some of the bytes read ahead are still to be served.
    pub fn has_prefix(&self) -> bool {
        self.start < self.end
    }

    /// The stream below.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.start < self.end {
            let n = (self.end - self.start).min(buf.remaining());
            let start = self.start;
            buf.put_slice(&self.prefix[start..start + n]);
            self.start += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

delegate_async_write!(Prefixed);
