//! An upstream's shared HTTP/2 connection: a `tls = true` pool's upstream
//! that offers h2 by ALPN carries every HTTP/2 client's request to it on
//! one connection, multiplexed, driven by hyper's client in a task of its
//! own. (HTTP/1 clients' requests go over HTTP/1.1, on the connections of
//! [`super::connection`].)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use super::connection::Stream;
use crate::body::Body;

/// The HTTP/2 connection to an upstream, while it is open.
#[derive(Debug, Default)]
pub struct Shared {
    sender: Mutex<Option<SendRequest<Body>>>,
    /// Set once the upstream chose HTTP/1.1 over h2: its kept-alive HTTP/1
    /// connections serve HTTP/2 clients' requests too from then on.
    declined: AtomicBool,
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

    /// A handle on the open connection, if there is one that still takes
    /// requests.
    pub fn get(&self) -> Option<SendRequest<Body>> {
        let mut sender = self.lock();
        match sender.as_ref() {
            Some(open) if !open.is_closed() => Some(open.clone()),
            Some(_) => {
                *sender = None;
                None
            }
            None => None,
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
        // Two requests that opened one each at once: the later one is kept,
        // the other closes once its requests are answered.
        *self.lock() = Some(sender.clone());
        Ok(sender)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SendRequest<Body>>> {
        self.sender.lock().expect("HTTP/2 connection lock poisoned")
    }
}
