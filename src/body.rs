//! The one body type the proxy moves in both directions.
//!
//! A [`Body`] is a stream read from a peer (`rest`) with at most one frame
//! already read ahead of it (`head`). Reading ahead lets the proxy see that
//! a body is malformed before it commits to a peer: a bad first chunk from a
//! client never reaches an upstream, and a bad first chunk from an upstream
//! becomes a clean 502 instead of a truncated answer. A synthetic answer is
//! a `head` with no `rest`.
//!
//! The stream is hyper's (an HTTP/2 client's request, an HTTP/2 upstream's
//! answer) or a [`Source`] of the proxy's own (an HTTP/1 upstream's answer
//! to an HTTP/2 client).
//!
//! A body can also carry a [`Completion`], told when the body has been read
//! to its end (an upstream's answer: its request stops counting against the
//! upstream) and otherwise dropped with it; a [`Release`], told when the
//! body is let go, whatever happened (a client connection counting its
//! answers); and, for an upload hyper sends to an HTTP/2 upstream, a limit
//! on its pauses and a record of whose turn it is ([`Progress`]). The body
//! knows none of their owners: it sits below all of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Told once a body has been read to its end; dropped unfinished
/// otherwise (see [`Body::on_completion`]).
pub trait Completion: Send + Sync + std::fmt::Debug {
    /// The body has been read to its end.
    fn complete(self: Box<Self>);
}

/// Told when a body is let go, read to its end or not (see
/// [`Body::on_release`]).
pub trait Release: Send + Sync + std::fmt::Debug {
    /// The body has been let go.
    fn release(&self);
}

/// A stream of frames read by the proxy itself (an HTTP/1 upstream's
/// answer, read by its own codec), for [`Body::from_source`].
pub trait Source:
    http_body::Body<Data = Bytes, Error = BodyError> + Send + Sync + Unpin + std::fmt::Debug
{
}

impl<S> Source for S where
    S: http_body::Body<Data = Bytes, Error = BodyError> + Send + Sync + Unpin + std::fmt::Debug
{
}

/// A streamed body with at most one frame read ahead.
#[derive(Debug)]
pub struct Body {
    head: Option<Frame<Bytes>>,
    rest: Option<Rest>,
    /// For an upstream's answer: its request's accounting.
    completion: Option<Box<dyn Completion>>,
    /// For an answer to a client: its request counts as answered once
    /// hyper drops it.
    release: Option<Arc<dyn Release>>,
    /// What only a client's upload needs, boxed so that every other body
    /// (and every response hyper moves) stays small.
    upload: Option<Box<Upload>>,
}

/// Where the frames after the head come from.
#[derive(Debug)]
enum Rest {
    /// hyper's: an HTTP/2 client's request body, or an HTTP/2 upstream's
    /// answer.
    Hyper(Incoming),
    /// The proxy's own reading.
    Own(Box<dyn Source>),
}

impl Rest {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self {
            Rest::Hyper(incoming) => http_body::Body::poll_frame(Pin::new(incoming), cx)
                .map(|frame| frame.map(|frame| frame.map_err(BodyError::Broken))),
            Rest::Own(source) => Pin::new(source.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Rest::Hyper(incoming) => http_body::Body::is_end_stream(incoming),
            Rest::Own(source) => source.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Rest::Hyper(incoming) => http_body::Body::size_hint(incoming),
            Rest::Own(source) => source.size_hint(),
        }
    }
}

/// What a client's upload carries besides its bytes.
#[derive(Debug, Default)]
struct Upload {
    /// How long it may pause.
    pause: Option<Pause>,
    /// Where it stands, for the upstream's clock and its connection's reuse.
    progress: Option<Arc<Progress>>,
}

/// Where an upload stands: whose turn it is, since when, and whether it is
/// over. The upstream's `timeouts.upstream` runs only while the turn is
/// not the client's: a slow client is not a slow upstream, and an upstream
/// that stops reading is not a slow client.
#[derive(Debug)]
pub struct Progress {
    epoch: Instant,
    /// Milliseconds from `epoch` to the last change.
    since: AtomicU64,
    /// One of the `TURN_*` values.
    turn: AtomicU8,
}

/// The proxy holds the body (hyper is writing it, or has not asked yet).
const TURN_UPSTREAM: u8 = 0;
/// The proxy asked for more and the client has not sent it.
const TURN_CLIENT: u8 = 1;
/// The body has gone through in full.
const TURN_DONE: u8 = 2;

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            epoch: Instant::now(),
            since: AtomicU64::new(0),
            turn: AtomicU8::new(TURN_UPSTREAM),
        }
    }
}

impl Progress {
    /// Since when the upload has waited on the upstream side (the
    /// upstream reading it, or answering it once done); `None` while it
    /// waits on the client.
    pub fn upstream_turn_since(&self) -> Option<Instant> {
        (self.turn.load(Ordering::Acquire) != TURN_CLIENT)
            .then(|| self.epoch + Duration::from_millis(self.since.load(Ordering::Acquire)))
    }

    fn mark(&self, turn: u8) {
        let since = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.since.store(since, Ordering::Release);
        self.turn.store(turn, Ordering::Release);
    }
}

/// The longest a body may pause, and the timer of the pause under way.
#[derive(Debug)]
struct Pause {
    limit: Duration,
    /// Allocated at the first pause, reset at the next ones.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` runs for the pause under way.
    running: bool,
}

impl Pause {
    /// Ready when the pause under way has lasted `limit`; a `pending`
    /// poll of the body starts a pause, a frame ends it.
    fn poll_over(&mut self, pending: bool, cx: &mut Context<'_>) -> Poll<()> {
        if !pending {
            self.running = false;
            return Poll::Pending;
        }
        if !self.running {
            // The clock is read when a pause begins, not at every poll.
            let deadline = Instant::now() + self.limit;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.running = true;
        }
        match &mut self.timer {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// Why reading a body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The peer's stream failed: cut off, reset, or malformed.
    #[error(transparent)]
    Broken(#[from] hyper::Error),
    /// The client sent no byte of its body for this long.
    #[error("the request body paused for longer than {0:?}")]
    Stalled(Duration),
    /// An upstream's answer was cut off or malformed.
    #[error("{0}")]
    Upstream(String),
}

/// What reading ahead found.
#[derive(Debug)]
pub enum ReadAhead {
    /// The body, with its first frame (if any) in hand.
    Ready(Body),
    /// The peer sent a malformed body (or reset) before its first frame.
    Failed(BodyError),
    /// Nothing arrived within the budget; the body is intact, unread.
    TimedOut(Body),
}

impl Body {
    fn new(head: Option<Frame<Bytes>>, rest: Option<Rest>) -> Body {
        Body {
            head,
            rest,
            completion: None,
            release: None,
            upload: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Body {
        Body::new(None, None)
    }

    /// A complete body held in memory.
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        Body::new(Some(Frame::data(bytes.into())), None)
    }

    /// The whole body, if it is held in memory (an answer of the proxy's
    /// own); `None` for a streamed one.
    pub fn in_memory(&self) -> Option<&[u8]> {
        if self.rest.is_some() {
            return None;
        }
        Some(
            self.head
                .as_ref()
                .and_then(Frame::data_ref)
                .map_or(&[][..], |data| &data[..]),
        )
    }

    /// A body streamed from `incoming`, nothing read ahead.
    pub fn streamed(incoming: Incoming) -> Body {
        let rest = (!http_body::Body::is_end_stream(&incoming)).then_some(Rest::Hyper(incoming));
        Body::new(None, rest)
    }

    /// A body streamed from `source`, nothing read ahead.
    pub fn from_source(source: Box<dyn Source>) -> Body {
        let rest = (!source.is_end_stream()).then_some(Rest::Own(source));
        Body::new(None, rest)
    }

    /// Reads the first frame, waiting at most `budget`.
    pub async fn read_ahead(mut self, budget: Duration) -> ReadAhead {
        if self.head.is_some() {
            return ReadAhead::Ready(self);
        }
        let Some(rest) = self.rest.as_mut() else {
            return ReadAhead::Ready(self);
        };
        // Dropping the poll on timeout loses nothing: a source keeps what
        // it had buffered.
        let first = std::future::poll_fn(|cx| rest.poll_frame(cx));
        match tokio::time::timeout(budget, first).await {
            Err(_elapsed) => ReadAhead::TimedOut(self),
            Ok(Some(Ok(frame))) => {
                self.head = Some(frame);
                ReadAhead::Ready(self)
            }
            Ok(Some(Err(error))) => ReadAhead::Failed(error),
            Ok(None) => {
                self.rest = None;
                ReadAhead::Ready(self)
            }
        }
    }

    /// Fails the body once it has sent nothing for `limit` (a client's
    /// request body: `timeouts.client_body`).
    pub fn limit_pauses(&mut self, limit: Duration) {
        if !http_body::Body::is_end_stream(self) {
            self.upload_mut().pause = Some(Pause {
                limit,
                timer: None,
                running: false,
            });
        }
    }

    fn upload_mut(&mut self) -> &mut Upload {
        self.upload.get_or_insert_with(Box::default)
    }

    /// Tells `completion` once this body has been read to its end; drops
    /// it with the body otherwise.
    pub fn on_completion(mut self, completion: Box<dyn Completion>) -> Body {
        self.completion = Some(completion);
        self
    }

    /// Tells `release` when this body is let go (hyper has sent it, or
    /// given up on it).
    pub fn on_release(mut self, release: Arc<dyn Release>) -> Body {
        debug_assert!(self.release.is_none(), "one release per body");
        self.release = Some(release);
        self
    }

    /// Keeps `progress` up to date as this body is read.
    pub fn report_to(&mut self, progress: Arc<Progress>) {
        self.upload_mut().progress = Some(progress);
    }

    /// The peer has sent all of this body: tell its completion.
    fn finished(&mut self) {
        self.rest = None;
        if let Some(progress) = self.upload.as_mut().and_then(|u| u.progress.take()) {
            progress.mark(TURN_DONE);
        }
        if let Some(completion) = self.completion.take() {
            completion.complete();
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // hyper lets go of a body once it has written as many bytes as
        // its length says, even if the end of the stream (an HTTP/2 client's
        // empty last frame) has not been read: it has gone through.
        if let Some(progress) = self.upload.as_mut().and_then(|u| u.progress.take()) {
            progress.mark(TURN_DONE);
        }
        // A body with nothing left to read from its upstream (a HEAD answer,
        // an empty one, one whose last frame was read ahead) is complete,
        // whether or not the client took the frames.
        if self.rest.as_ref().is_none_or(Rest::is_end_stream) {
            self.finished();
        }
        // Unfinished: the upstream's side goes first (its connection closed,
        // its count released), then the client connection's.
        self.rest = None;
        drop(self.completion.take());
        if let Some(release) = self.release.take() {
            release.release();
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(frame) = self.head.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let this = &mut *self;
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = rest.poll_frame(cx);
        if let Some(upload) = this.upload.as_mut() {
            if let Some(progress) = &upload.progress {
                progress.mark(if polled.is_pending() {
                    TURN_CLIENT
                } else {
                    TURN_UPSTREAM
                });
            }
            if let Some(pause) = upload.pause.as_mut() {
                if pause.poll_over(polled.is_pending(), cx).is_ready() {
                    return Poll::Ready(Some(Err(BodyError::Stalled(pause.limit))));
                }
            }
        }
        // Told as soon as the upstream has sent it all, rather than when
        // hyper drops the body.
        let done = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => rest.is_end_stream(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => false,
        };
        if done {
            self.finished();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.as_ref().is_none_or(Rest::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let head = match &self.head {
            Some(frame) => frame.data_ref().map_or(0, |d| d.len() as u64),
            None => 0,
        };
        let rest = match &self.rest {
            Some(rest) => rest.size_hint(),
            None => SizeHint::with_exact(0),
        };
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + head);
        }
        hint.set_lower(rest.lower() + head);
        hint
    }
}
