//! An upstream's shared HTTP/2 connection: a `tls = true` pool's upstream
//! that offers h2 by ALPN carries every HTTP/2 client's request to it on
//! one connection, multiplexed, driven by hyper's client in a task of its
//! own. (HTTP/1 clients' requests go over HTTP/1.1, on the connections of
//! [`super::connection`].)
//!
//! The connection is let go once no request has started on it for
//! [`IDLE_TIMEOUT`] (by the same sweep as the idle HTTP/1 connections):
//! the requests still on it finish, and hyper closes it after them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tracing::debug;

use super::connection::{Stream, IDLE_TIMEOUT};
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
}

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
    pub fn get(&self) -> Option<SendRequest<Body>> {
        let mut open = self.lock();
        match open.as_mut() {
            Some(shared) if !shared.sender.is_closed() => {
                shared.used = Instant::now();
                Some(shared.sender.clone())
            }
            Some(_) => {
                *open = None;
                None
            }
            None => None,
        }
    }

    /// Resolves once a connection has become shared, if created before it
    /// did: create it before looking with [`Shared::get`], so that none is
    /// missed in between.
    pub fn opened(&self) -> tokio::sync::futures::Notified<'_> {
        self.opened.notified()
    }

    /// Lets go of the connection if it has closed, or no request has
    /// started on it for [`IDLE_TIMEOUT`] as of `now`.
    pub fn reap(&self, now: Instant) {
        let mut open = self.lock();
        if open
            .as_ref()
            .is_some_and(|o| o.sender.is_closed() || now.duration_since(o.used) >= IDLE_TIMEOUT)
        {
            *open = None;
        }
    }

    /// Starts HTTP/2 on `stream` (whose ALPN said h2), as the connection
    /// later requests share; `slot` counts it against the upstream's
    /// `max_connections` while it is open.
    pub async fn start(
        &self,
        stream: Stream,
        slot: OwnedSemaphorePermit,
    ) -> Result<SendRequest<Body>, hyper::Error> {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(error) = connection.await {
                debug!(%error, "upstream HTTP/2 connection failed");
            }
        });
        self.declined.store(false, Ordering::Relaxed);
        // Two requests that opened one each at once: the later one is kept,
        // the other closes once its requests are answered.
        *self.lock() = Some(Open {
            sender: sender.clone(),
            used: Instant::now(),
        });
        self.opened.notify_waiters();
        Ok(sender)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Open>> {
        self.open.lock().expect("HTTP/2 connection lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Semaphore;

    use super::*;

    /// A shared connection to an HTTP/2 server on loopback, whose slot
    /// comes from `slots`; and a handle on the server's side, which ends
    /// when the connection closes.
    async fn shared_connection(slots: &Arc<Semaphore>) -> (Shared, tokio::task::JoinHandle<()>) {
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
        let shared = Shared::default();
        let stream = Stream::Plain(TcpStream::connect(addr).await.unwrap());
        let slot = slots.clone().try_acquire_owned().unwrap();
        shared.start(stream, slot).await.unwrap();
        (shared, server)
    }

    #[tokio::test]
    async fn a_connection_no_request_started_on_for_the_idle_timeout_closes_and_frees_its_slot() {
        let slots = Arc::new(Semaphore::new(1));
        let (shared, server) = shared_connection(&slots).await;
        assert!(shared.get().is_some());

        // Not yet idle long enough: kept.
        shared.reap(Instant::now() + IDLE_TIMEOUT / 2);
        assert!(shared.get().is_some());
        assert_eq!(slots.available_permits(), 0);

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
}
