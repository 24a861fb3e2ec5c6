//! Parking an idle HTTP/1 connection: waiting for its client's next
//! request without reading, and so without buffers.
//!
//! A connection that has answered every request and stayed quiet for
//! [`PARK_AFTER`] lets its buffers and its request state go (see the
//! engine in `h1`), and waits on its socket's readiness alone ([`Wait`]).
//! Parked, a connection costs its socket and a small task.

use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;

/// How long an HTTP/1 connection must have been idle, with every request
/// answered, before it is parked.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// A stream that can wait for its client without reading.
pub trait Wait {
    /// Ready when the client may have sent something (or closed).
    fn poll_client(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Wait for TcpStream {
    fn poll_client(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl Wait for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_client(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (tcp, tls) = self.get_ref();
        // rustls wants no more bytes when it holds plaintext not yet read.
        if !tls.wants_read() {
            return Poll::Ready(Ok(()));
        }
        tcp.poll_read_ready(cx)
    }
}
