//! The proxy's own HTTP/1 engine, serving one client connection from its
//! first request head to its close.
//!
//! Each head is parsed once, in place, in the connection's one input
//! buffer ([`crate::http1`]), judged, and either answered by the proxy or
//! forwarded ([`forward`]) on one of the upstream's own connections, the
//! exchange driven from this task. The buffers are the connection's, reused
//! from one request to the next and let go when it has been quiet for
//! [`PARK_AFTER`]: a parked connection costs its socket and its task.
//!
//! ```text
//! wait for bytes (park when quiet) ─► parse head ─► judge (gate, pool)
//!   ─► answered: read and drop a small body, or close; write the answer
//!   ─► forwarded: see `forward`
//!   ─► next head (already buffered when pipelined), or close
//! ```

mod answer;
mod forward;
mod record;
mod relay;

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tracing::{debug, Instrument};

use super::park::{Wait, PARK_AFTER};
use super::Serving;
use crate::http1::write::Persistence;
use crate::http1::{self, RequestHead, ResponseHead};
use crate::metrics::Counted;
use crate::proxy::record::Served;
use crate::proxy::request_id::RequestId;
use crate::proxy::{frontdoor, pass, ProxyError, Verdict};
use crate::shutdown::Phase;
use crate::state::gate::path;
use answer::Answer;

/// How much the input buffer reads at a time: a browser's request head,
/// or a good piece of a body.
const READ_SIZE: usize = 8 * 1024;

/// The client streams this engine serves.
pub(super) trait ClientIo:
    Wait + AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static
{
}

impl<T: Wait + AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> ClientIo for T {}

/// Serves HTTP/1 on `io` until the connection ends. `input` holds what was
/// already read from it (the protocol sniff's bytes), and the first head
/// must be in by `head_by`.
///
/// The first time it parks, the connection moves to a task of its own,
/// allocated then, and this one ends. A task spawned at accept was
/// allocated among the buffers of busy connections; kept for hours by an
/// idle one, it pins their freed memory around it. Allocated at parking
/// time, next to other parked connections' tasks, it does not (the
/// measurement is in the benchmark notes).
pub(super) async fn serve<I: ClientIo>(serving: Serving, io: I, input: Vec<u8>, head_by: Instant) {
    let phase = serving.phase.clone();
    let mut engine = Engine {
        serving,
        io,
        input: Input {
            bytes: input,
            start: 0,
            used: 0,
        },
        relay: Vec::new(),
        out: Vec::new(),
        head: RequestHead::default(),
        answer: ResponseHead::default(),
        clock: Box::pin(tokio::time::sleep_until(head_by)),
        phase,
        head_by,
        parked: None,
        request_id: RequestId::default(),
        sent: 0,
        served: Served::default(),
    };
    // Boxed, as at each wake from parking (see `serve_parked`): what
    // serving requests takes is let go at parking, and the task that stays
    // until then is small.
    if let Ended::Parked = Box::pin(engine.run()).await {
        tokio::spawn(
            async move {
                // The connection's timer, allocated again here too.
                engine.clock = Box::pin(tokio::time::sleep_until(engine.head_by));
                engine.serve_parked().await;
            }
            .in_current_span(),
        );
    }
}

/// Why [`Engine::run`] returned.
enum Ended {
    /// The connection is over.
    Over,
    /// It parked: it waits for its client outside `run`.
    Parked,
}

/// One client connection and everything it keeps between requests.
pub(super) struct Engine<I> {
    serving: Serving,
    io: I,
    /// What the client sent and the proxy has not used yet.
    input: Input,
    /// What the upstream sent and the proxy has not passed on yet.
    relay: Vec<u8>,
    /// Heads (and the first bytes of bodies) on their way out.
    out: Vec<u8>,
    /// The request being served, parsed in place in `input`.
    head: RequestHead,
    /// Its answer, parsed in place in `relay`.
    answer: ResponseHead,
    /// The connection's one timer: the next head's deadline, parking.
    clock: Pin<Box<Sleep>>,
    /// The server's lifecycle.
    phase: watch::Receiver<Phase>,
    /// When the next request head must be in.
    head_by: Instant,
    /// Counts the connection as parked while it is.
    parked: Option<Counted>,
    /// The request's `X-Request-Id`.
    request_id: RequestId,
    /// Bytes written to the client so far.
    sent: u64,
    /// What became of the request, for the access log.
    served: Served,
}

/// Bytes read from the client: `bytes[start..]` are not used yet.
struct Input {
    bytes: Vec<u8>,
    start: usize,
    /// Bytes used so far, on the connection's whole life.
    used: u64,
}

impl Input {
    fn unread(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    fn is_empty(&self) -> bool {
        self.start == self.bytes.len()
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.used += n as u64;
        debug_assert!(self.start <= self.bytes.len());
    }

    /// Takes up to `n` unread bytes.
    fn take(&mut self, n: u64) -> &[u8] {
        let n = usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len() - self.start);
        let start = self.start;
        self.start += n;
        self.used += n as u64;
        &self.bytes[start..start + n]
    }

    /// Reads more from `io` after the unread bytes; `Ok(0)` at its end.
    async fn read_from<I: AsyncRead + Unpin>(&mut self, io: &mut I) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        if self.start == self.bytes.len() {
            self.bytes.clear();
            self.start = 0;
        } else if self.start > 0 && self.bytes.capacity() - self.bytes.len() < READ_SIZE / 4 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        if self.bytes.capacity() - self.bytes.len() < READ_SIZE / 4 {
            self.bytes.reserve(READ_SIZE);
        }
        io.read_buf(&mut self.bytes).await
    }

    /// Lets the memory go (nothing is unread).
    fn release(&mut self) {
        debug_assert!(self.is_empty());
        self.bytes = Vec::new();
        self.start = 0;
    }
}

/// How waiting for the next request head ended.
enum Next {
    /// A head is parsed in `Engine::head`.
    Head,
    /// The connection parked.
    Parked,
    /// The connection is over (closed, timed out, drained).
    Over,
    /// The bytes are not a request the proxy will serve.
    Refused(ProxyError),
}

/// What ended a wait for the next request.
enum Woke {
    /// The client sent something, or closed (or its socket failed).
    Client(io::Result<()>),
    /// The server drains.
    Drain,
    /// The connection's clock: time to park, or to close.
    Clock,
}

/// What a request's routing decided, owned so that the connection's
/// buffers are free again.
enum Decision {
    /// The proxy answers it with this (redirect, its own path).
    Answer(Box<http::Response<crate::body::Body>>),
    /// The gate answers it.
    Gate(Arc<crate::state::gate::Gate>),
    /// It goes to the pool.
    Forward(forward::Destination),
}

impl<I: ClientIo> Engine<I> {
    /// Waits, parked, for the client's next request, serves it and those
    /// that follow, and parks again, until the connection ends. While it
    /// waits, the task holds the connection and this small wait, nothing
    /// of [`Engine::run`]'s state: that is boxed, and let go at each
    /// parking.
    async fn serve_parked(mut self) {
        while self.wait_parked().await {
            if let Ended::Over = Box::pin(self.run()).await {
                return;
            }
        }
    }

    /// Waits for the parked connection's client; `false` once the
    /// connection is over (closed, failed, idle past `head_by`, drained).
    async fn wait_parked(&mut self) -> bool {
        self.clock.as_mut().reset(self.head_by);
        let io = &self.io;
        tokio::select! {
            biased;
            ready = std::future::poll_fn(|cx| io.poll_client(cx)) => match ready {
                Ok(()) => true,
                Err(error) => {
                    debug!(%error, "parked connection failed");
                    false
                }
            },
            _ = self.phase.wait_for(|p| *p >= Phase::Draining) => false,
            () = self.clock.as_mut() => {
                debug!(timeout = ?self.serving.limits.header_timeout, "no request in time; closing");
                false
            }
        }
    }

    /// Serves requests until the connection parks or ends.
    async fn run(&mut self) -> Ended {
        loop {
            match self.next_head().await {
                Next::Head => {}
                Next::Parked => return Ended::Parked,
                Next::Over => return Ended::Over,
                Next::Refused(error) => {
                    crate::proxy::log_failure(&error, &self.serving.client);
                    let started_as = self.started_unparsed();
                    self.request_id = RequestId::make();
                    self.served = Served::answered(error.status(), false);
                    self.out.clear();
                    error.write_http1(
                        &self.head.method,
                        &self.request_id,
                        Persistence::Close,
                        &mut self.out,
                    );
                    let _ = self.write_out().await;
                    // What was read of it is all it sent.
                    self.input.consume(self.input.unread().len());
                    self.log_access(started_as, Instant::now());
                    self.close().await;
                    return Ended::Over;
                }
            }
            let mut phase = self.phase.clone();
            // Serving a request takes kilobytes of state (the exchange with
            // an upstream), held here, in `run`'s: a parked connection lets
            // it go with `run`, and an active one allocates it once a wake
            // rather than once a request.
            let keep = tokio::select! {
                biased;
                keep = self.serve_request() => keep,
                // Dropping the exchange drops its connections.
                _ = phase.wait_for(|p| *p == Phase::Closing) => false,
            };
            if !keep {
                self.close().await;
                return Ended::Over;
            }
        }
    }

    /// Waits for the next request head and parses it, by `head_by`;
    /// parks the connection once it has been quiet for [`PARK_AFTER`].
    async fn next_head(&mut self) -> Next {
        let max_head = self.serving.limits.max_header_bytes;
        let head_by = self.head_by;
        let next = self.wait_for_head(head_by, max_head).await;
        if !matches!(next, Next::Parked) {
            self.parked = None;
        }
        next
    }

    async fn wait_for_head(&mut self, head_by: Instant, max_head: usize) -> Next {
        loop {
            if !self.input.is_empty() {
                match http1::parse_request(self.input.unread(), max_head, &mut self.head) {
                    Ok(true) => return Next::Head,
                    Ok(false) => {}
                    Err(error) => return Next::Refused(error.into()),
                }
            }
            // A drain does not close a connection that has just been
            // accepted or answered: its client may be sending a request
            // now, which closing would fail. It gets until the clock below
            // (`PARK_AFTER` from then) to send one, which is answered with
            // `Connection: close`; a connection woken from parking has its
            // request's bytes waiting.
            // Between requests, wait for bytes before taking memory for
            // them, and let the buffers go once the client is quiet.
            if self.input.is_empty() {
                // Counted from the last answer (or the connection's start),
                // which set `head_by`: no clock read per request.
                let park_at = head_by - self.serving.limits.header_timeout + PARK_AFTER;
                loop {
                    let wake = if self.parked.is_some() {
                        head_by
                    } else {
                        park_at.min(head_by)
                    };
                    self.clock.as_mut().reset(wake);
                    // A drain is noticed when the clock fires, within
                    // `PARK_AFTER`, rather than watched for: watching costs
                    // every request a subscription taken and dropped. (A
                    // parked connection, and one woken from parking, has
                    // no such clock, and watches.)
                    let watch_drain = self.parked.is_some();
                    let io = &self.io;
                    let woke = tokio::select! {
                        biased;
                        ready = std::future::poll_fn(|cx| io.poll_client(cx)) => Woke::Client(ready),
                        _ = self.phase.wait_for(|p| *p >= Phase::Draining), if watch_drain => Woke::Drain,
                        () = self.clock.as_mut() => Woke::Clock,
                    };
                    match woke {
                        Woke::Client(Ok(())) => break,
                        Woke::Client(Err(error)) => {
                            debug!(%error, "connection failed");
                            return Next::Over;
                        }
                        Woke::Drain => return Next::Over,
                        Woke::Clock if *self.phase.borrow() >= Phase::Draining => {
                            return Next::Over
                        }
                        Woke::Clock if Instant::now() >= head_by => {
                            debug!(timeout = ?self.serving.limits.header_timeout, "no request in time; closing");
                            return Next::Over;
                        }
                        Woke::Clock => {
                            if self.parked.is_none() {
                                debug!("idle connection parked");
                                self.park();
                                self.parked = Some(self.serving.proxy.metrics.count_parked());
                                return Next::Parked;
                            }
                        }
                    }
                }
            }
            let read = tokio::select! {
                biased;
                read = tokio::time::timeout_at(head_by, self.input.read_from(&mut self.io)) => read,
                _ = self.phase.wait_for(|p| *p == Phase::Closing) => return Next::Over,
            };
            match read {
                Ok(Ok(0)) => return Next::Over,
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    debug!(%error, "read failed");
                    return Next::Over;
                }
                Err(_) => {
                    debug!(timeout = ?self.serving.limits.header_timeout, "request head not complete in time; closing");
                    return Next::Over;
                }
            }
        }
    }

    /// Lets every buffer go: the connection is quiet.
    fn park(&mut self) {
        self.input.release();
        self.relay = Vec::new();
        self.out = Vec::new();
        self.head = RequestHead::default();
        self.answer = ResponseHead::default();
    }

    /// Serves the parsed request; whether the connection goes on. The
    /// next head is due `timeouts.header` after it is answered.
    async fn serve_request(&mut self) -> bool {
        let started = Instant::now();
        let sent_id = self.head.first(self.input.unread(), http1::Kind::RequestId);
        self.request_id = RequestId::keep_or_make(sent_id);
        let started_as = self.started();
        self.served = Served::default();
        let keep = match self.decide() {
            Ok(Decision::Forward(destination)) => self.forward(destination).await,
            Ok(Decision::Answer(response)) => self.answer_with(Answer::Response(response)).await,
            Ok(Decision::Gate(gate)) => self.answer_with(Answer::Gate(gate)).await,
            Err(error) => {
                crate::proxy::log_failure(&error, &self.serving.client);
                self.answer_with(Answer::Error(error)).await
            }
        };
        let now = Instant::now();
        self.serving
            .proxy
            .metrics
            .observe_duration(now.saturating_duration_since(started));
        self.head_by = now + self.serving.limits.header_timeout;
        self.log_access(started_as, now);
        keep
    }

    /// Routes the parsed request: the path's one meaning, then one state
    /// load for the redirect, the reserved paths, the gate and the pool.
    fn decide(&mut self) -> Result<Decision, ProxyError> {
        let buf = self.input.unread();
        let head = &self.head;
        // The parser let only visible ASCII through.
        let raw_path = std::str::from_utf8(head.path.of(buf))
            .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
        let normalized = path::normalize(raw_path).map_err(ProxyError::BadRequest)?;
        let path = normalized.as_deref().unwrap_or(raw_path);
        let proxy = &self.serving.proxy;
        let client = &self.serving.client;
        let snapshot = proxy.state.load();
        let verdict = proxy.judge(&snapshot, client, &head.method, path, || {
            token_in(head, buf)
        });
        let query = head
            .query
            .map(|q| std::str::from_utf8(q.of(buf)).unwrap_or(""));
        Ok(match verdict {
            Verdict::Forward(pool) => Decision::Forward(forward::Destination {
                pool: pool.clone(),
                timeouts: snapshot.config.timeouts,
                path: normalized.clone(),
                tunnel: head.websocket.then(|| forward::TunnelAsk {
                    path: path.to_owned(),
                    token: token_in(head, buf).map(str::to_owned),
                }),
            }),
            Verdict::Gated(gate) => Decision::Gate(gate.clone()),
            Verdict::RedirectHttps => {
                let mut target = path.to_owned();
                if let Some(query) = query {
                    target.push('?');
                    target.push_str(query);
                }
                Decision::Answer(Box::new(frontdoor::redirect_to_https(
                    head.authority(buf),
                    &target,
                )))
            }
            Verdict::Reserved => Decision::Answer(Box::new(pass::answer(
                &self.request_id,
                &head.method,
                path,
                query,
                snapshot.bypass.as_ref(),
                self.serving.client.https,
            ))),
        })
    }

    /// Writes `out` to the client within `timeouts.send`.
    async fn write_out(&mut self) -> io::Result<()> {
        crate::proxy::exchange::write_all(
            &mut self.io,
            &self.out,
            self.serving.limits.send_timeout,
        )
        .await?;
        self.sent += self.out.len() as u64;
        Ok(())
    }

    /// Closes the connection: what was written goes out first.
    async fn close(&mut self) {
        let _ = tokio::time::timeout(self.serving.limits.send_timeout, self.io.shutdown()).await;
    }
}

/// The bypass token a request carries: its `X-Switchyard-Bypass` field,
/// or its cookie.
fn token_in<'b>(head: &RequestHead, buf: &'b [u8]) -> Option<&'b str> {
    if let Some(value) = head.first(buf, http1::Kind::Bypass) {
        return std::str::from_utf8(value).ok();
    }
    head.fields
        .iter()
        .filter(|f| f.kind == http1::Kind::Cookie)
        .find_map(|f| crate::bypass::token_in_cookie(f.value.of(buf)))
}
