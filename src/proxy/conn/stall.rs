//! Noticing a client that takes no byte of its answer.
//!
//! An HTTP/2 client that stops reading leaves hyper's writes pending, and
//! with them the answer's buffers and its upstream connection: no other
//! timeout applies to an answer that is under way. [`Sending`] records when
//! writes to the client began to wait, and the connection's driver closes a
//! connection whose writes have waited for `timeouts.send`. (The HTTP/1
//! engine bounds each of its writes by itself.)

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When a connection's writes began to wait, if they are waiting.
#[derive(Debug)]
pub struct Stall {
    /// The connection's start, which `since` counts from.
    epoch: Instant,
    /// Milliseconds from `epoch` to the first write that could not go
    /// out, plus one; 0 while writes go out.
    since: AtomicU64,
}

impl Stall {
    fn new() -> Stall {
        Stall {
            epoch: Instant::now(),
            since: AtomicU64::new(0),
        }
    }

    /// How long writes have waited as of `now`; `None` if they are not
    /// waiting.
    pub fn waited(&self, now: Instant) -> Option<Duration> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            since => {
                let began = self.epoch + Duration::from_millis(since - 1);
                Some(now.saturating_duration_since(began))
            }
        }
    }

    fn waiting(&self) {
        if self.since.load(Ordering::Relaxed) == 0 {
            let since = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.since.store(since + 1, Ordering::Relaxed);
        }
    }

    fn moving(&self) {
        // Read first: the usual case writes nothing.
        if self.since.load(Ordering::Relaxed) != 0 {
            self.since.store(0, Ordering::Relaxed);
        }
    }

    fn note<T>(&self, polled: &Poll<io::Result<T>>) {
        match polled {
            Poll::Pending => self.waiting(),
            Poll::Ready(_) => self.moving(),
        }
    }
}

/// A client stream whose writes are watched for stalls.
#[derive(Debug)]
pub struct Sending<S> {
    inner: S,
    stall: Arc<Stall>,
}

impl<S> Sending<S> {
    /// Wraps a new connection's stream.
    pub fn new(inner: S) -> Sending<S> {
        Sending {
            inner,
            stall: Arc::new(Stall::new()),
        }
    }

    /// The record of its stalls.
    pub fn stall(&self) -> &Arc<Stall> {
        &self.stall
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sending<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sending<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.stall.note(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.stall.note(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.stall.note(&polled);
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_is_timed_from_its_first_pending_write_until_one_goes_out() {
        let stall = Stall::new();
        assert_eq!(stall.waited(Instant::now()), None);
        tokio::time::advance(Duration::from_secs(3)).await;
        stall.note::<()>(&Poll::Pending);
        tokio::time::advance(Duration::from_secs(2)).await;
        stall.note::<()>(&Poll::Pending);
        assert_eq!(stall.waited(Instant::now()), Some(Duration::from_secs(2)));
        stall.note(&Poll::Ready(Ok(())));
        assert_eq!(stall.waited(Instant::now()), None);
    }
}
