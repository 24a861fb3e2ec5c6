//! An upstream's shared HTTP/2 connection: a `tls = true` pool's upstream
//! that offers h2 by ALPN carries every HTTP/2 client's request to it on
//! one connection, multiplexed, driven by hyper's client in a task of its
//! own. (HTTP/1 clients' requests go over HTTP/1.1, on the connections of
//! [`super::connection`].)
//!
//! The connection is let go once no request has started on it for
//! [`IDLE_TIMEOUT`] and none is still on it (by the same sweep as the idle
//! HTTP/1 connections), or once it stops taking requests (the upstream's
//! `GOAWAY`); hyper closes it after its last stream. Its slot counts
//! against `max_connections` until its socket is closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

use super::connection::{Connection, IDLE_TIMEOUT};
use crate::body::Body;

/// The HTTP/2 connection to an upstream, while it is open.
#[derive(Debug, Default)]
pub struct Shared {
    open: Mutex<Option<Open>>,
    /// Set once the upstream chose HTTP/1.1 over h2: its kept-alive HTTP/1
    /// connections serve HTTP/2 clients' requests too from then on. (A new
    /// connection for an HTTP/2 client still offers h2, and one the
    /// upstream takes clears it.)
    declined: AtomicBool,
    /// Wakes the requests waiting for room for a connection of their own
    /// when one becomes shared: with `max_connections = 1`, that room
    /// never comes while the shared one is open.
    opened: Notify,
}

#[derive(Debug)]
struct Open {
    sender: SendRequest<Body>,
    /// When a request last started on it.
    used: Instant,
    /// One more than the requests on it: each holds a [`Hold`].
    held: Arc<()>,
}

/// A request's hold on the shared connection it was sent on, until its
/// answer has been read: a connection still held is not let go as idle.
#[derive(Debug, Clone)]
pub struct Hold(Arc<()>);

impl Shared {
    /// Whether the upstream may speak h2: it has not declined it yet.
    pub fn may_speak_h2(&self) -> bool {
        !self.declined.load(Ordering::Relaxed)
    }

    /// The upstream chose HTTP/1.1 when offered h2.
    pub fn declined(&self) {
        self.declined.store(true, Ordering::Relaxed);
    }

    /// A handle on the open connection, for a request that starts now, if
    /// there is one that still takes requests.
    pub fn get(&self) -> Option<(SendRequest<Body>, Hold)> {
        let mut open = self.lock();
        match open.as_mut() {
            Some(shared) if !shared.sender.is_closed() => {
                shared.used = Instant::now();
                Some((shared.sender.clone(), Hold(shared.held.clone())))
            }
            Some(_) => {
                *open = None;
                None
            }
            None => None,
        }
    }

    /// Lets go of the connection `hold` is on, if it is still the shared
    /// one: it takes no more requests (its upstream said `GOAWAY`).
    pub fn forget(&self, hold: &Hold) {
        let mut open = self.lock();
        if open.as_ref().is_some_and(|o| Arc::ptr_eq(&o.held, &hold.0)) {
            *open = None;
        }
    }

    /// Resolves once a connection has become shared, if created before it
    /// did: create it before looking with [`Shared::get`], so that none is
    /// missed in between.
    pub fn opened(&self) -> tokio::sync::futures::Notified<'_> {
        self.opened.notified()
    }

    /// Lets go of the connection if it has closed, or if no request is on
    /// it and none has started on it for [`IDLE_TIMEOUT`] as of `now`.
    pub fn reap(&self, now: Instant) {
        let mut open = self.lock();
        if open.as_ref().is_some_and(|o| {
            o.sender.is_closed()
                || (Arc::strong_count(&o.held) == 1 && now.duration_since(o.used) >= IDLE_TIMEOUT)
        }) {
            *open = None;
        }
    }

    /// Starts HTTP/2 on `connection` (whose ALPN said h2), as the one later
    /// requests share; a hold on it for the request that opened it.
    pub async fn start(
        &self,
        connection: Connection,
    ) -> Result<(SendRequest<Body>, Hold), hyper::Error> {
        let (sender, driver) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(connection))
            .await?;
        // Hyper drives the socket in a task of its own, which keeps the
        // connection (and its slot) until the last stream on it is done;
        // this one takes the requests, until the last handle is dropped.
        tokio::spawn(async move {
            if let Err(error) = driver.await {
                debug!(%error, "upstream HTTP/2 connection failed");
            }
        });
        self.declined.store(false, Ordering::Relaxed);
        let held = Arc::new(());
        // Two requests that opened one each at once: the later one is kept,
        // the other closes once its requests are answered.
        *self.lock() = Some(Open {
            sender: sender.clone(),
            used: Instant::now(),
            held: held.clone(),
        });
        self.opened.notify_waiters();
        Ok((sender, Hold(held)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Open>> {
        self.open.lock().expect("HTTP/2 connection lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::upstream::connection::{checkout, Connections};

    /// A shared connection to an HTTP/2 server on loopback, whose slot
    /// comes from `slots`, with the hold of the request that opened it;
    /// and the server's side, which ends when the connection closes.
    async fn shared_connection(
        slots: &Arc<Semaphore>,
    ) -> (Shared, Hold, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|_| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Body::empty()))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        let authority = addr.to_string().parse().unwrap();
        let idle = Connections::default();
        let timeout = Duration::from_secs(10);
        let opened = checkout(&authority, &idle, slots, 1, None, timeout, true)
            .await
            .unwrap();
        let shared = Shared::default();
        let (_, hold) = shared.start(opened.connection).await.unwrap();
        (shared, hold, server)
    }

    #[tokio::test]
    async fn a_connection_idle_for_the_idle_timeout_closes_and_frees_its_slot() {
        let slots = Arc::new(Semaphore::new(1));
        let (shared, hold, server) = shared_connection(&slots).await;
        assert!(shared.get().is_some());

        // Not idle long enough yet, or still held by a request: kept.
        shared.reap(Instant::now() + IDLE_TIMEOUT / 2);
        assert!(shared.get().is_some());
        shared.reap(Instant::now() + IDLE_TIMEOUT);
        assert!(shared.get().is_some());
        assert_eq!(slots.available_permits(), 0);

        drop(hold);
        shared.reap(Instant::now() + IDLE_TIMEOUT);
        assert!(shared.get().is_none());
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the connection closes once let go")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while slots.available_permits() == 0 {
            assert!(Instant::now() < deadline, "the slot was never freed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_connection_that_takes_no_more_requests_is_forgotten_by_its_holders_only() {
        let slots = Arc::new(Semaphore::new(2));
        let (shared, old_hold, _server) = shared_connection(&slots).await;
        let (newer, new_hold, _other) = shared_connection(&slots).await;
        // A hold on another connection lets go of nothing.
        shared.forget(&new_hold);
        assert!(shared.get().is_some());
        shared.forget(&old_hold);
        assert!(shared.get().is_none());
        assert!(newer.get().is_some());
    }
}
