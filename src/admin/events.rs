//! `GET /v1/events`: what happens, as Server-Sent Events, for the
//! dashboard and for anyone who would otherwise poll `GET /v1/status`.
//!
//! | event | data |
//! |---|---|
//! | `hello` | `{"rights": "full" \| "read"}`, first |
//! | `status` | the status document: after `hello`, and after every change of the state (a decision, a reload, an upstream's health) |
//! | `decision` | `{"at", "kind", "reason", "generation"}`: a switch, rollback or maintenance change (`kind` as `last_event`'s) |
//! | `reload` | `{"at", "ok", "reason", "generation"}` |
//! | `watch` | `{"at", "kind", "reason", "generation"}`: the watch after a switch rolled it back (`auto_rollback`), could not (`auto_rollback_refused`), or ended (`watch_passed`) |
//! | `health` | `{"at", "pool", "upstream", "healthy", "reason"}`: an upstream's verdict turned |
//! | `rates` | `{"at", "pools": {NAME: {"requests", "errors", "in_flight", "tunnels"}}}`, every second: answers and errors in that second, and what is open now |
//!
//! Each stream is a task of its own that looks at the state once a second
//! (health and rates) and when the control plane announces or stores
//! something; requests never look at it. A stream that cannot keep up
//! (its client reads too slowly) misses events and gets a fresh `status`
//! once it has room; one that takes nothing for `timeouts.send` is cut
//! off. Streams are bounded where they are opened ([`OpenStreams`]), and
//! past the bound get `503 too_many_streams`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::Response;
use http_body::Frame;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use super::auth::Rights;
use super::routes::{AdminBody, AdminResponse, Router};
use crate::control::{Event, EventKind};
use crate::state::persist::rfc3339;
use crate::state::Snapshot;

/// How many events may wait for a slow client before new ones are
/// dropped (and a fresh `status` follows once there is room).
const QUEUE_EVENTS: usize = 16;

/// Events streams open now, counted where their bounds apply. With `L`
/// half of `admin.max_connections` (at least 1): at most `L` on the unix
/// socket, and at most `L` on the TCP listener, so that the other half of
/// its slots stay for calls that change things; of those, at most half
/// (at least 1) opened with the read-only token, so that a monitor holding
/// that token cannot take every stream from the operators.
#[derive(Debug, Default)]
pub struct OpenStreams {
    socket: AtomicUsize,
    tcp: AtomicUsize,
    tcp_read: AtomicUsize,
}

/// Where a stream counts.
#[derive(Debug, Clone, Copy)]
enum Place {
    Socket,
    Tcp,
    TcpRead,
}

/// One open stream's places in [`OpenStreams`], given back on drop.
struct StreamSlot {
    open: Arc<OpenStreams>,
    places: &'static [Place],
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        for &place in self.places {
            self.open.count(place).fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl OpenStreams {
    fn count(&self, place: Place) -> &AtomicUsize {
        match place {
            Place::Socket => &self.socket,
            Place::Tcp => &self.tcp,
            Place::TcpRead => &self.tcp_read,
        }
    }

    /// A place for one more stream with `rights`, on TCP or not; `None`
    /// past a bound (see [`OpenStreams`]) under `max_connections`.
    fn take(
        self: &Arc<Self>,
        tcp: bool,
        rights: Rights,
        max_connections: usize,
    ) -> Option<StreamSlot> {
        let limit = (max_connections / 2).max(1);
        let places: &'static [Place] = match (tcp, rights) {
            (false, _) => &[Place::Socket],
            (true, Rights::Full) => &[Place::Tcp],
            (true, Rights::Read) => &[Place::Tcp, Place::TcpRead],
        };
        for (taken, &place) in places.iter().enumerate() {
            let bound = match place {
                Place::TcpRead => (limit / 2).max(1),
                Place::Socket | Place::Tcp => limit,
            };
            if self.count(place).fetch_add(1, Ordering::Relaxed) >= bound {
                for &took in &places[..=taken] {
                    self.count(took).fetch_sub(1, Ordering::Relaxed);
                }
                return None;
            }
        }
        Some(StreamSlot {
            open: self.clone(),
            places,
        })
    }
}

/// The answer to `GET /v1/events` for a caller with `rights` (on TCP,
/// from the token in `credential`, checked again at every change, so a
/// rotated token ends its streams), or `None` past the bounds of
/// [`OpenStreams`].
pub fn stream(
    router: Router,
    rights: Rights,
    credential: Option<http::HeaderMap>,
) -> Option<AdminResponse> {
    let max_connections = router.config().admin.max_connections;
    let slot = router
        .event_streams()
        .take(credential.is_some(), rights, max_connections)?;
    let (tx, rx) = mpsc::channel(QUEUE_EVENTS);
    tokio::spawn(async move {
        follow(router, rights, credential, tx).await;
        drop(slot);
    });
    let mut response = Response::new(AdminBody::Right(EventBody(rx)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(response)
}

/// Feeds one client's stream until it goes away.
async fn follow(
    router: Router,
    rights: Rights,
    credential: Option<http::HeaderMap>,
    tx: mpsc::Sender<Bytes>,
) {
    let control = router.control().clone();
    let state = control.state().clone();
    let mut events = control.events();
    let mut stores = state.subscribe();
    let granted = rights;
    let rights = match rights {
        Rights::Full => "full",
        Rights::Read => "read",
    };
    let mut out = Outbox { tx, dropped: false };
    out.send("hello", &json!({ "rights": rights }));
    out.send("status", &router.status_value().await);
    let mut watcher = Watcher::new(&state.load());
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = out.tx.closed() => return,
            event = events.recv() => match event {
                Ok(event) => out.send(name_of(event.kind), &event_value(&event, &state.load())),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    out.send("status", &router.status_value().await);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            changed = stores.changed() => {
                if changed.is_err() {
                    return;
                }
                // A reload may have rotated the token this stream was
                // opened with.
                if let Some(credential) = &credential {
                    if router.rights(credential) != Some(granted) {
                        return;
                    }
                }
                out.send("status", &router.status_value().await);
            }
            _ = every.tick() => {
                let snapshot = state.load_full();
                let turns = watcher.health(&snapshot);
                let mut turned = !turns.is_empty();
                for turn in &turns {
                    out.send("health", turn);
                }
                // Events were dropped while the client lagged: once there
                // is room, the whole state again.
                turned |= std::mem::take(&mut out.dropped);
                out.send("rates", &watcher.rates(&snapshot));
                if turned {
                    out.send("status", &router.status_value().await);
                }
            }
        }
        if out.tx.is_closed() {
            return;
        }
    }
}

/// The SSE name of an event of `kind`.
fn name_of(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Switch | EventKind::Rollback | EventKind::Maintenance => "decision",
        EventKind::Reload => "reload",
        EventKind::AutoRollback | EventKind::AutoRollbackRefused | EventKind::WatchPassed => {
            "watch"
        }
    }
}

/// `event` as its data says it, with the generation and reload outcome of
/// `snapshot` (stored before the event is announced).
fn event_value(event: &Event, snapshot: &Snapshot) -> serde_json::Value {
    let mut value = json!({
        "at": rfc3339(event.at),
        "kind": event.kind.as_str(),
        "reason": event.reason,
        "generation": snapshot.decisions.generation,
    });
    if event.kind == EventKind::Reload {
        value["ok"] = json!(snapshot.config_info.last_reload_error.is_none());
    }
    value
}

/// The sending end of one stream.
struct Outbox {
    tx: mpsc::Sender<Bytes>,
    /// Whether an event was dropped since the last `status`.
    dropped: bool,
}

impl Outbox {
    /// Queues one event; dropped if the client is [`QUEUE_EVENTS`] behind.
    /// (A client that takes nothing for `timeouts.send` is cut off by its
    /// connection's deadline.)
    fn send(&mut self, name: &str, data: &serde_json::Value) {
        // Compact JSON has no newline, so one `data:` line holds it.
        let frame = format!("event: {name}\ndata: {data}\n\n");
        if self.tx.try_send(Bytes::from(frame)).is_err() {
            self.dropped = true;
        }
    }
}

/// What the last look at the state saw: each upstream's verdict, and each
/// pool's answer counts.
struct Watcher {
    healthy: HashMap<(String, String), bool>,
    totals: HashMap<String, (u64, u64)>,
}

impl Watcher {
    fn new(snapshot: &Snapshot) -> Watcher {
        let mut watcher = Watcher {
            healthy: HashMap::new(),
            totals: HashMap::new(),
        };
        watcher.health(snapshot);
        watcher.rates(snapshot);
        watcher
    }

    /// A `health` event's data for each upstream whose verdict turned
    /// since the last look.
    fn health(&mut self, snapshot: &Snapshot) -> Vec<serde_json::Value> {
        let mut turns = Vec::new();
        for (pool, upstreams) in &snapshot.pools {
            for upstream in &upstreams.upstreams {
                let healthy = upstream.is_healthy();
                let key = (pool.clone(), upstream.authority.to_string());
                let before = self.healthy.insert(key.clone(), healthy);
                if before.is_some_and(|was| was != healthy) {
                    turns.push(json!({
                        "at": rfc3339(SystemTime::now()),
                        "pool": key.0,
                        "upstream": key.1,
                        "healthy": healthy,
                        "reason": upstream.probes().last_error,
                    }));
                }
            }
        }
        turns
    }

    /// Each pool's answers and errors since the last look, and what it has
    /// open now.
    fn rates(&mut self, snapshot: &Snapshot) -> serde_json::Value {
        let mut pools = serde_json::Map::new();
        for (name, pool) in &snapshot.pools {
            let (all, errors) = pool.requests.totals();
            let (all_before, errors_before) = self
                .totals
                .insert(name.clone(), (all, errors))
                .unwrap_or((all, errors));
            pools.insert(
                name.clone(),
                json!({
                    "requests": all.saturating_sub(all_before),
                    "errors": errors.saturating_sub(errors_before),
                    "in_flight": pool.in_flight(),
                    "tunnels": pool.tunnels(),
                }),
            );
        }
        json!({ "at": rfc3339(SystemTime::now()), "pools": pools })
    }
}

/// The stream's body: the frames its task queues, as they come.
#[derive(Debug)]
pub struct EventBody(mpsc::Receiver<Bytes>);

impl http_body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|frame| frame.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_bounded_per_listener_and_read_only_tokens_take_half() {
        let open = Arc::new(OpenStreams::default());
        // max_connections = 4: two streams per listener, one of them with
        // the read-only token.
        let socket: Vec<_> = (0..2).map(|_| open.take(false, Rights::Full, 4)).collect();
        assert!(socket.iter().all(Option::is_some));
        assert!(open.take(false, Rights::Full, 4).is_none());
        let read = open.take(true, Rights::Read, 4);
        assert!(read.is_some());
        assert!(open.take(true, Rights::Read, 4).is_none(), "half for read");
        let full = open.take(true, Rights::Full, 4);
        assert!(full.is_some(), "the operator still gets one");
        assert!(open.take(true, Rights::Full, 4).is_none());
        drop(read);
        assert!(open.take(true, Rights::Full, 4).is_some());
        assert_eq!(open.tcp_read.load(Ordering::Relaxed), 0);
    }
}
