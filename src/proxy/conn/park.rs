//! Letting an idle HTTP/1 connection's buffers go.
//!
//! hyper keeps an HTTP/1 connection's read and write buffers (8 KiB each)
//! and its header cache for as long as the connection lives, so ten
//! thousand idle keep-alive clients would hold some 200 MiB. A connection
//! that has answered every request and stayed quiet for [`PARK_AFTER`] is
//! therefore *parked*: hyper is stopped between two messages (it closes an
//! idle connection at once when asked to shut down gracefully), the socket
//! is kept, and a fresh hyper connection takes over when the client next
//! sends. Parked, a connection costs its socket and a small task.
//!
//! Two pieces make that safe. [`Activity`] counts the requests a
//! connection's service has started and answered, and knows from the
//! framing scanner whether the bytes read so far end between two messages,
//! so the driver only parks a connection that owes nothing and has nothing
//! half read. [`Resumable`] is the stream hyper is given: it keeps the
//! socket open when hyper shuts it down while parking.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::framing::{Scanned, Verdict};
use super::sniff::Prefixed;
use super::stall::Stall;
use crate::body::{Body, Release};

/// How long an HTTP/1 connection must have been idle, with every request
/// answered, before it is parked. It is parked within twice this.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// What a connection's service shares with the task driving it.
#[derive(Debug)]
pub struct Activity {
    started: AtomicU64,
    answered: AtomicU64,
    /// While set, shutting the stream down leaves the socket open.
    parking: AtomicBool,
    /// Where the scanner is in the byte stream.
    verdict: Arc<Verdict>,
    /// Whether writes to the client are waiting, and since when.
    stall: Arc<Stall>,
}

impl Activity {
    /// Activity on a connection whose bytes `verdict`'s scanner follows
    /// and whose writes `stall` records.
    pub fn new(verdict: Arc<Verdict>, stall: Arc<Stall>) -> Activity {
        Activity {
            started: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            parking: AtomicBool::new(false),
            verdict,
            stall,
        }
    }

    /// The record of the connection's waiting writes.
    pub fn stall(&self) -> &Stall {
        &self.stall
    }

    /// Counts a request as started; it is answered when the returned guard
    /// is dropped (with the response body, once hyper is done with it).
    /// Also tells whether the scanner found this request's length
    /// ambiguous (hyper serves requests in order, so the count of started
    /// requests is the scanner's count of heads).
    pub fn start(self: &Arc<Self>) -> (Answering, bool) {
        let index = self.started.fetch_add(1, Ordering::Relaxed);
        (
            Answering(Some(self.clone())),
            self.verdict.is_ambiguous(index),
        )
    }

    /// If every request read so far has been answered and nothing of the
    /// next one has arrived: how many there were. The same answer twice,
    /// some time apart, means the connection was idle in between.
    pub fn quiet(&self) -> Option<u64> {
        self.answered_if_idle()
            .filter(|_| self.verdict.between_messages())
    }

    /// If every request started so far has been answered: how many.
    fn answered_if_idle(&self) -> Option<u64> {
        let answered = self.answered.load(Ordering::Acquire);
        let started = self.started.load(Ordering::Acquire);
        (answered == started).then_some(answered)
    }

    /// Marks the start or end of parking.
    pub fn set_parking(&self, parking: bool) {
        self.parking.store(parking, Ordering::Release);
    }
}

/// The clock on a connection's next request head: it runs from the moment
/// the connection owes no answer (it opened, or answered its last request)
/// until the next request starts, and a connection whose clock runs out is
/// closed. It bounds a client that sends nothing, one that trickles a head
/// byte by byte, and an idle keep-alive connection.
///
/// hyper has a header timer of its own, but it allocates and registers a
/// new timer for every request, and reads the socket once more after each
/// answer to start it. This is one timer per connection, moved later as
/// requests are answered, which the runtime does without touching its
/// timer wheel.
pub struct HeadClock<'a> {
    activity: &'a Activity,
    timeout: Duration,
    /// How many requests had been answered when the clock last started.
    since: Option<u64>,
    deadline: Pin<&'a mut Sleep>,
}

impl<'a> HeadClock<'a> {
    /// A clock giving each head of `activity`'s connection `timeout`,
    /// kept by `deadline` (a timer of the caller's, so that it costs no
    /// allocation), which is already set for the next head.
    pub fn new(
        activity: &'a Activity,
        timeout: Duration,
        deadline: Pin<&'a mut Sleep>,
    ) -> HeadClock<'a> {
        HeadClock {
            since: activity.answered_if_idle(),
            activity,
            timeout,
            deadline,
        }
    }

    /// Ready once the connection has owed no answer for `timeout` without
    /// starting a new request. Polled after each poll of the connection,
    /// so that it sees every answer as it is given.
    pub fn poll_overdue(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(answered) = self.activity.answered_if_idle() else {
            // A request is being answered: its body and its upstream have
            // clocks of their own.
            self.since = None;
            return Poll::Pending;
        };
        if self.since != Some(answered) {
            self.since = Some(answered);
            self.deadline.as_mut().reset(Instant::now() + self.timeout);
        }
        self.deadline.as_mut().poll(cx)
    }
}

/// A request not answered yet; see [`Activity::start`].
#[derive(Debug)]
pub struct Answering(Option<Arc<Activity>>);

impl Answering {
    /// The request counts as answered when `body` is let go instead.
    pub fn until_sent(mut self, body: Body) -> Body {
        match self.0.take() {
            Some(activity) => body.on_release(activity),
            None => body,
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if let Some(activity) = self.0.take() {
            activity.release();
        }
    }
}

impl Release for Activity {
    fn release(&self) {
        self.answered.fetch_add(1, Ordering::Release);
    }
}

/// A stream that can wait for its client without reading.
pub trait Wait {
    /// Ready when the client may have sent something (or closed).
    fn poll_client(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Wait for Prefixed<TcpStream> {
    fn poll_client(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.has_prefix() {
            return Poll::Ready(Ok(()));
        }
        self.get_ref().poll_read_ready(cx)
    }
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

impl<S: Wait> Wait for Scanned<S> {
    fn poll_client(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().poll_client(cx)
    }
}

/// The stream a connection's hyper instances are given, one after another:
/// while parking, shutting it down leaves it open.
#[derive(Debug)]
pub struct Resumable<S> {
    activity: Arc<Activity>,
    inner: S,
}

impl<S> Resumable<S> {
    /// Wraps `inner`, whose service counts its requests in `activity`.
    pub fn new(inner: S, activity: Arc<Activity>) -> Resumable<S> {
        Resumable { activity, inner }
    }

    /// The stream below.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

delegate_read_side!(Resumable);

impl<S: AsyncWrite + Unpin> AsyncWrite for Resumable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.activity.parking.load(Ordering::Acquire) {
            // Flushed, and left open for the next hyper instance.
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
