//! Upstream pools and how a request picks an upstream.
//!
//! A [`Pool`] is immutable once built except for its counters, which are
//! atomics: picking an upstream takes no lock. An [`InFlight`] guard counts
//! a request against its upstream from the moment it is picked until its
//! response body is done (or dropped), which is what `least_in_flight`
//! balances on.
//!
//! Each upstream owns its connections: kept-alive HTTP/1 ones, plain or
//! TLS ([`connection`]), and for a TLS upstream that offers h2, one shared
//! HTTP/2 connection for HTTP/2 clients' requests ([`http2`]).

pub mod connection;
pub mod http2;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::time::SystemTime;
use tokio::sync::Semaphore;

use http::uri::Authority;

use crate::body::Completion;
use crate::config::tls::UpstreamTls;
use crate::config::{Balance, Health, PoolConfig};
use crate::metrics::RequestCounters;

/// One upstream instance.
#[derive(Debug)]
pub struct Upstream {
    /// `host:port` of the instance.
    pub authority: Authority,
    /// Requests picked for this upstream whose response is not finished.
    in_flight: AtomicUsize,
    /// Upgraded connections (WebSocket) open to this upstream.
    tunnels: AtomicUsize,
    /// The health verdict, read without a lock.
    healthy: AtomicBool,
    /// The probes' details. A std mutex: held only to copy or update the
    /// record, never across an await, and never on the request path.
    probes: Mutex<ProbeRecord>,
    /// Kept-alive HTTP/1 connections waiting for a request.
    pub connections: connection::Connections,
    /// The HTTP/2 connection HTTP/2 clients' requests share (a TLS
    /// upstream that offers h2).
    pub http2: http2::Shared,
    /// One permit per connection that may be open to it; each open
    /// connection holds one until it closes.
    pub slots: Arc<Semaphore>,
    /// How many permits `slots` was given: `max_connections`.
    max_connections: AtomicUsize,
}

impl Upstream {
    /// An upstream with nothing in flight, to which at most
    /// `max_connections` connections may be open at once.
    pub fn new(authority: Authority, max_connections: usize) -> Upstream {
        Upstream {
            authority,
            in_flight: AtomicUsize::new(0),
            tunnels: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            probes: Mutex::new(ProbeRecord::default()),
            connections: connection::Connections::default(),
            http2: http2::Shared::default(),
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections: AtomicUsize::new(max_connections),
        }
    }

    /// The most connections that may be open to it at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// Moves the cap to `max_connections` (an applied reload). A lower cap
    /// takes the permits that are free now, and the rest as connections
    /// close.
    pub fn set_max_connections(&self, max_connections: usize) {
        let old = self
            .max_connections
            .swap(max_connections, Ordering::Relaxed);
        if max_connections > old {
            self.slots.add_permits(max_connections - old);
        } else {
            let fewer = old - max_connections;
            let forgotten = self.slots.forget_permits(fewer);
            if forgotten < fewer {
                let slots = self.slots.clone();
                let owed = u32::try_from(fewer - forgotten).unwrap_or(u32::MAX);
                // Taken as connections close, then never given back.
                tokio::spawn(async move {
                    if let Ok(permits) = slots.acquire_many(owed).await {
                        permits.forget();
                    }
                });
            }
        }
    }

    /// Requests currently in flight on this upstream.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Upgraded connections currently open to this upstream.
    pub fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::Relaxed)
    }

    /// Whether the upstream counts as healthy: until its probes say
    /// otherwise, it does.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// What the probes found so far.
    pub fn probes(&self) -> ProbeRecord {
        self.probes
            .lock()
            .expect("probe record lock poisoned")
            .clone()
    }

    /// Records one probe's result: `unhealthy_threshold` failures in a row
    /// make the upstream unhealthy, `healthy_threshold` successes in a row
    /// make it healthy again. Returns the new verdict if it changed.
    pub fn record_probe(&self, result: Result<(), String>, thresholds: &Health) -> Option<bool> {
        let mut probes = self.probes.lock().expect("probe record lock poisoned");
        probes.last_check = Some(SystemTime::now());
        match result {
            Ok(()) => {
                probes.consecutive_failures = 0;
                probes.consecutive_successes = probes.consecutive_successes.saturating_add(1);
                probes.last_error = None;
                (probes.consecutive_successes >= thresholds.healthy_threshold)
                    .then(|| self.set_healthy(true))
                    .flatten()
            }
            Err(error) => {
                probes.consecutive_successes = 0;
                probes.consecutive_failures = probes.consecutive_failures.saturating_add(1);
                probes.last_error = Some(error);
                (probes.consecutive_failures >= thresholds.unhealthy_threshold)
                    .then(|| self.set_healthy(false))
                    .flatten()
            }
        }
    }

    /// Records a failure of real traffic (a refused or reset connection):
    /// the upstream is unhealthy at once, so no further request waits on
    /// it before the next probe; probes bring it back. Returns `true` if
    /// this made it unhealthy.
    pub fn record_traffic_failure(&self, error: String) -> bool {
        let mut probes = self.probes.lock().expect("probe record lock poisoned");
        probes.consecutive_successes = 0;
        probes.consecutive_failures = probes.consecutive_failures.saturating_add(1);
        probes.last_error = Some(error);
        self.set_healthy(false).is_some()
    }

    /// Takes over another process's verdict and record of this upstream
    /// (a binary upgrade), so the new process routes as the old one did.
    pub fn restore(&self, healthy: bool, record: ProbeRecord) {
        *self.probes.lock().expect("probe record lock poisoned") = record;
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Sets the verdict; `Some(new)` if it changed.
    fn set_healthy(&self, healthy: bool) -> Option<bool> {
        (self.healthy.swap(healthy, Ordering::Relaxed) != healthy).then_some(healthy)
    }
}

/// The health probes' findings about one upstream.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProbeRecord {
    /// When it was last probed.
    pub last_check: Option<SystemTime>,
    /// Why the last probe failed, if it did.
    pub last_error: Option<String>,
    /// Failed probes in a row.
    pub consecutive_failures: u32,
    /// Passed probes in a row.
    pub consecutive_successes: u32,
}

/// Counts one request against an upstream until dropped.
#[derive(Debug)]
pub struct InFlight {
    upstream: Arc<Upstream>,
}

impl InFlight {
    /// The upstream this request was sent to.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// The request became an upgraded connection: it counts as a tunnel
    /// from now on, not as a request in flight.
    pub fn into_tunnel(self) -> TunnelGuard {
        let upstream = self.upstream.clone();
        upstream.tunnels.fetch_add(1, Ordering::Relaxed);
        drop(self);
        TunnelGuard(upstream)
    }
}

/// An answer read to its end stops counting against its upstream then,
/// not when the client has taken it.
impl Completion for InFlight {
    fn complete(self: Box<Self>) {}
}

/// Counts one tunnel against an upstream until dropped.
#[derive(Debug)]
pub struct TunnelGuard(Arc<Upstream>);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.upstream.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A named set of upstreams, balanced by one policy.
#[derive(Debug)]
pub struct Pool {
    /// The pool's name (`blue`, `green`, ...).
    pub name: String,
    /// Its upstreams, in config order.
    pub upstreams: Vec<Arc<Upstream>>,
    /// How requests are spread.
    pub balance: Balance,
    /// Round-robin cursor.
    next: AtomicUsize,
    /// Answers counted by status class.
    pub requests: RequestCounters,
    /// The pool's TLS settings (`tls = true`), for health probes.
    pub tls: Option<UpstreamTls>,
    /// How HTTP/1 clients' requests reach its TLS upstreams.
    pub tls_connect: Option<connection::TlsConnect>,
    /// How HTTP/2 clients' requests reach them: h2 offered first.
    pub tls_connect_h2: Option<connection::TlsConnect>,
}

impl Pool {
    /// Builds a pool from its config, counting its answers in `requests`.
    pub fn new(name: &str, config: &PoolConfig, requests: RequestCounters) -> Pool {
        let tls_connect = config.tls.as_ref().map(connection::TlsConnect::new);
        Pool {
            name: name.to_owned(),
            upstreams: config
                .upstreams
                .iter()
                .map(|a| Arc::new(Upstream::new(a.clone(), config.max_connections)))
                .collect(),
            balance: config.balance,
            next: AtomicUsize::new(0),
            requests,
            tls: config.tls.clone(),
            tls_connect_h2: tls_connect
                .as_ref()
                .map(connection::TlsConnect::offering_h2),
            tls_connect,
        }
    }

    /// Rebuilds a pool from a reloaded config: an upstream that `old` also
    /// has is kept as it is (its in-flight count and health go on).
    pub fn rebuild(
        name: &str,
        config: &PoolConfig,
        old: Option<&Pool>,
        requests: RequestCounters,
    ) -> Pool {
        let mut pool = Pool::new(name, config, requests);
        if let Some(old) = old {
            for upstream in &mut pool.upstreams {
                if let Some(kept) = old
                    .upstreams
                    .iter()
                    .find(|u| u.authority == upstream.authority)
                {
                    // Its cap moves only once the reload is applied.
                    *upstream = kept.clone();
                }
            }
        }
        pool
    }

    /// Picks a healthy upstream for one request, never `except` (the
    /// upstream that just failed). Returns `None` when no healthy upstream
    /// is left to try.
    pub fn pick(&self, except: Option<&Upstream>) -> Option<InFlight> {
        let candidates = self
            .upstreams
            .iter()
            .filter(|u| u.is_healthy() && except.is_none_or(|e| !std::ptr::eq(Arc::as_ptr(u), e)));
        let count = candidates.clone().count();
        if count == 0 {
            return None;
        }
        // The cursor makes ties (and round robin) rotate.
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let chosen = match self.balance {
            Balance::RoundRobin => candidates.clone().nth(start),
            Balance::LeastInFlight => candidates
                .clone()
                .cycle()
                .skip(start)
                .take(count)
                .min_by_key(|u| u.in_flight()),
        }?;
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            upstream: chosen.clone(),
        })
    }

    /// Whether a failed attempt may be retried on another upstream.
    pub fn has_alternative(&self) -> bool {
        self.upstreams.len() > 1
    }

    /// Requests in flight on the pool's upstreams.
    pub fn in_flight(&self) -> usize {
        self.upstreams.iter().map(|u| u.in_flight()).sum()
    }

    /// Tunnels open to the pool's upstreams.
    pub fn tunnels(&self) -> usize {
        self.upstreams.iter().map(|u| u.tunnels()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(balance: Balance, n: usize) -> Pool {
        let upstreams = (0..n)
            .map(|i| format!("127.0.0.1:{}", 9000 + i).parse().unwrap())
            .collect();
        Pool::new(
            "blue",
            &PoolConfig {
                upstreams,
                balance,
                max_connections: crate::config::DEFAULT_MAX_CONNECTIONS,
                tls: None,
            },
            RequestCounters::default(),
        )
    }

    fn port(guard: &InFlight) -> u16 {
        guard.upstream().authority.port_u16().unwrap()
    }

    #[test]
    fn round_robin_visits_each_upstream_in_turn() {
        let pool = pool(Balance::RoundRobin, 3);
        let ports: Vec<u16> = (0..6).map(|_| port(&pool.pick(None).unwrap())).collect();
        assert_eq!(ports, [9000, 9001, 9002, 9000, 9001, 9002]);
    }

    #[test]
    fn least_in_flight_prefers_the_idle_upstream() {
        let pool = pool(Balance::LeastInFlight, 2);
        let busy = pool.pick(None).unwrap();
        let busy_port = port(&busy);
        for _ in 0..4 {
            assert_ne!(port(&pool.pick(None).unwrap()), busy_port);
        }
        drop(busy);
        assert_eq!(
            pool.upstreams.iter().map(|u| u.in_flight()).sum::<usize>(),
            0
        );
    }

    #[test]
    fn unhealthy_upstreams_are_skipped_until_none_is_left() {
        let pool = pool(Balance::RoundRobin, 2);
        assert!(pool.upstreams[0].record_traffic_failure("refused".to_owned()));
        for _ in 0..4 {
            assert_eq!(port(&pool.pick(None).unwrap()), 9001);
        }
        let thresholds = Health {
            path: "/health".to_owned(),
            interval: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        };
        assert_eq!(
            pool.upstreams[1].record_probe(Err("503".to_owned()), &thresholds),
            None
        );
        assert_eq!(
            pool.upstreams[1].record_probe(Err("503".to_owned()), &thresholds),
            Some(false)
        );
        assert!(pool.pick(None).is_none(), "no healthy upstream is left");
        assert_eq!(pool.upstreams[0].record_probe(Ok(()), &thresholds), None);
        assert_eq!(
            pool.upstreams[0].record_probe(Ok(()), &thresholds),
            Some(true)
        );
        assert_eq!(port(&pool.pick(None).unwrap()), 9000);
    }

    #[test]
    fn retry_avoids_the_failed_upstream() {
        let pool = pool(Balance::RoundRobin, 2);
        let first = pool.pick(None).unwrap();
        for _ in 0..4 {
            let second = pool.pick(Some(first.upstream())).unwrap();
            assert_ne!(port(&second), port(&first));
        }
        let single = self::pool(Balance::RoundRobin, 1);
        let only = single.pick(None).unwrap();
        assert!(single.pick(Some(only.upstream())).is_none());
    }
}
