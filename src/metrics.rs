//! Prometheus metrics, served by the admin API at `GET /metrics`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `switchyard_requests_total` | counter | `pool`, `class` (`1xx` .. `5xx`) |
//! | `switchyard_gated_requests_total` | counter | |
//! | `switchyard_client_resets_total` | counter | |
//! | `switchyard_abusive_connections_total` | counter | |
//! | `switchyard_request_duration_seconds` | histogram (to the response head) | |
//! | `switchyard_maintenance` | gauge, 1 while the gate is on | |
//! | `switchyard_live_pool` | gauge, 1 for the live pool, 0 for the others | `pool` |
//! | `switchyard_generation` | gauge, of the decisions this instance applies | |
//! | `switchyard_cluster_connected` | gauge, 1 while etcd answers (with `[cluster]` only) | `instance` |
//! | `switchyard_cluster_instances` | gauge, instances with a live lease (with `[cluster]` only) | `instance` |
//! | `switchyard_upstream_healthy` | gauge | `pool`, `upstream` |
//! | `switchyard_upstream_idle_connections` | gauge, kept-alive connections waiting for a request | `pool`, `upstream` |
//! | `switchyard_switches_total` | counter | `kind` (`switch`, `rollback`, `auto_rollback`) |
//! | `switchyard_reloads_total` | counter | `result` (`ok`, `error`) |
//! | `switchyard_certificate_expiry_timestamp_seconds` | gauge | `listener`, `cert` |
//! | `switchyard_client_connections` | gauge, open client connections | |
//! | `switchyard_parked_connections` | gauge, of which idle and parked (HTTP/1) | |
//!
//! The request path touches only atomics: each pool holds its own
//! [`RequestCounters`] (handles taken from the registry when the pool is
//! built), and the duration histogram is a fixed array of atomic buckets
//! rather than prometheus-client's, whose `observe` takes a lock. The
//! gauges that mirror the snapshot are set when the metrics are scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Upper bounds of the duration buckets, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    pool: String,
    class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    pool: String,
    upstream: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CertLabels {
    listener: &'static str,
    cert: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Every metric, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    gated: Counter,
    client_resets: Counter,
    abusive: Counter,
    duration: DurationHistogram,
    maintenance: Gauge,
    live_pool: Family<PoolLabel, Gauge>,
    generation: Gauge,
    upstream_healthy: Family<UpstreamLabels, Gauge>,
    upstream_idle: Family<UpstreamLabels, Gauge>,
    switches: Family<KindLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    cert_expiry: Family<CertLabels, Gauge>,
    connections: Gauge,
    parked: Gauge,
    /// Each pool's 501 and 505 answers (not exported; kept here so that
    /// every copy of a pool's counters shares them, across reloads).
    refusals: Family<PoolLabel, Counter>,
    cluster_connected: Family<InstanceLabel, Gauge>,
    cluster_instances: Family<InstanceLabel, Gauge>,
}

/// One pool's request counters by status class, ready to increment
/// without a lookup.
#[derive(Debug, Clone, Default)]
pub struct RequestCounters {
    by_class: [Counter; 5],
    /// Of the 5xx, the `501 Not Implemented` and `505 HTTP Version Not
    /// Supported`: answers about the client's method or version (not
    /// exported; see [`RequestCounters::totals`]).
    refusals: Counter,
}

impl RequestCounters {
    /// Answers so far, and how many of them were errors: 5xx, except 501
    /// and 505, which a stranger gets by sending a method or version the
    /// application does not know, and which say nothing of its health.
    pub fn totals(&self) -> (u64, u64) {
        let all = self.by_class.iter().map(Counter::get).sum();
        let errors = self.by_class[4].get().saturating_sub(self.refusals.get());
        (all, errors)
    }

    /// Counts one answer with `status`.
    pub fn count(&self, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        if matches!(
            status,
            StatusCode::NOT_IMPLEMENTED | StatusCode::HTTP_VERSION_NOT_SUPPORTED
        ) {
            self.refusals.inc();
        }
    }
}

/// Holds a gauge one higher for as long as it lives.
#[derive(Debug)]
pub struct Counted(Gauge);

impl Counted {
    fn new(gauge: &Gauge) -> Counted {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let gated = Counter::default();
        let client_resets = Counter::default();
        let abusive = Counter::default();
        let duration = DurationHistogram::default();
        let maintenance = Gauge::default();
        let live_pool = Family::<PoolLabel, Gauge>::default();
        let generation = Gauge::default();
        let upstream_healthy = Family::<UpstreamLabels, Gauge>::default();
        let upstream_idle = Family::<UpstreamLabels, Gauge>::default();
        let switches = Family::<KindLabel, Counter>::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let cert_expiry = Family::<CertLabels, Gauge>::default();
        let connections = Gauge::default();
        let parked = Gauge::default();
        registry.register(
            "switchyard_client_connections",
            "Open client connections",
            connections.clone(),
        );
        registry.register(
            "switchyard_parked_connections",
            "Idle HTTP/1 client connections whose buffers have been let go",
            parked.clone(),
        );
        registry.register(
            "switchyard_certificate_expiry_timestamp_seconds",
            "When each served TLS certificate expires (Unix time)",
            cert_expiry.clone(),
        );
        registry.register(
            "switchyard_requests",
            "Requests answered, by pool and status class",
            requests.clone(),
        );
        registry.register(
            "switchyard_gated_requests",
            "Requests answered 503 by the maintenance gate",
            gated.clone(),
        );
        registry.register(
            "switchyard_client_resets",
            "HTTP/2 streams the client reset before their answer (their upstream work is cancelled)",
            client_resets.clone(),
        );
        registry.register(
            "switchyard_abusive_connections",
            "HTTP/2 connections sent GOAWAY for resetting too many streams",
            abusive.clone(),
        );
        registry.register(
            "switchyard_request_duration_seconds",
            "Time from a request's arrival to its response head",
            duration.clone(),
        );
        registry.register(
            "switchyard_maintenance",
            "1 while the maintenance gate is on",
            maintenance.clone(),
        );
        registry.register(
            "switchyard_live_pool",
            "1 for the live pool, 0 for the others",
            live_pool.clone(),
        );
        registry.register(
            "switchyard_generation",
            "Generation of the persisted decisions",
            generation.clone(),
        );
        registry.register(
            "switchyard_upstream_healthy",
            "1 while an upstream counts as healthy",
            upstream_healthy.clone(),
        );
        registry.register(
            "switchyard_upstream_idle_connections",
            "Kept-alive connections to an upstream waiting for a request (plain HTTP/1 pools)",
            upstream_idle.clone(),
        );
        registry.register(
            "switchyard_switches",
            "Changes of the live pool, by kind",
            switches.clone(),
        );
        registry.register(
            "switchyard_reloads",
            "Config reloads, by result",
            reloads.clone(),
        );
        let cluster_connected = Family::<InstanceLabel, Gauge>::default();
        registry.register(
            "switchyard_cluster_connected",
            "1 while this instance's last exchange with etcd succeeded",
            cluster_connected.clone(),
        );
        let cluster_instances = Family::<InstanceLabel, Gauge>::default();
        registry.register(
            "switchyard_cluster_instances",
            "Instances of the fleet with a live lease, as this one last read",
            cluster_instances.clone(),
        );
        Metrics {
            registry,
            cluster_connected,
            cluster_instances,
            requests,
            gated,
            client_resets,
            abusive,
            duration,
            maintenance,
            live_pool,
            generation,
            upstream_healthy,
            upstream_idle,
            switches,
            reloads,
            cert_expiry,
            connections,
            parked,
            refusals: Family::default(),
        }
    }

    /// Counts a client connection open until the guard is dropped.
    pub fn count_connection(&self) -> Counted {
        Counted::new(&self.connections)
    }

    /// Counts a client connection parked until the guard is dropped.
    pub fn count_parked(&self) -> Counted {
        Counted::new(&self.parked)
    }

    /// The counters a pool named `pool` increments.
    pub fn requests(&self, pool: &str) -> RequestCounters {
        let class = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        RequestCounters {
            by_class: class.map(|class| {
                self.requests
                    .get_or_create(&RequestLabels {
                        pool: pool.to_owned(),
                        class,
                    })
                    .clone()
            }),
            refusals: self
                .refusals
                .get_or_create(&PoolLabel {
                    pool: pool.to_owned(),
                })
                .clone(),
        }
    }

    /// Counts a request the gate answered.
    pub fn count_gated(&self) {
        self.gated.inc();
    }

    /// Counts an HTTP/2 stream the client reset before its answer.
    pub fn count_client_reset(&self) {
        self.client_resets.inc();
    }

    /// Counts an HTTP/2 connection closed for abusing resets.
    pub fn count_abusive_connection(&self) {
        self.abusive.inc();
    }

    /// Records how long a request took to its response head.
    pub fn observe_duration(&self, elapsed: Duration) {
        self.duration.observe(elapsed);
    }

    /// Counts a change of the live pool, by its kind (`switch`,
    /// `rollback`, `auto_rollback`).
    pub fn count_switch(&self, kind: &'static str) {
        self.switches.get_or_create(&KindLabel { kind }).inc();
    }

    /// Counts a reload by its result.
    pub fn count_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// The Prometheus text exposition, with the gauges set from `gauges`
    /// first.
    pub fn render(&self, gauges: &Gauges) -> String {
        self.maintenance.set(i64::from(gauges.maintenance));
        self.generation
            .set(i64::try_from(gauges.generation).unwrap_or(i64::MAX));
        // Pools and upstreams removed by a reload should not linger.
        self.live_pool.clear();
        self.upstream_healthy.clear();
        self.upstream_idle.clear();
        for pool in &gauges.pools {
            self.live_pool
                .get_or_create(&PoolLabel {
                    pool: pool.name.clone(),
                })
                .set(i64::from(pool.live));
            for upstream in &pool.upstreams {
                let labels = UpstreamLabels {
                    pool: pool.name.clone(),
                    upstream: upstream.authority.clone(),
                };
                self.upstream_healthy
                    .get_or_create(&labels)
                    .set(i64::from(upstream.healthy));
                let idle = i64::try_from(upstream.idle_connections).unwrap_or(i64::MAX);
                self.upstream_idle.get_or_create(&labels).set(idle);
            }
        }
        self.cluster_connected.clear();
        self.cluster_instances.clear();
        if let Some(cluster) = &gauges.cluster {
            let label = InstanceLabel {
                instance: cluster.instance.clone(),
            };
            self.cluster_connected
                .get_or_create(&label)
                .set(i64::from(cluster.connected));
            let instances = i64::try_from(cluster.instances).unwrap_or(i64::MAX);
            self.cluster_instances.get_or_create(&label).set(instances);
        }
        self.cert_expiry.clear();
        for cert in &gauges.certificates {
            let at = cert
                .not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            self.cert_expiry
                .get_or_create(&CertLabels {
                    listener: cert.listener,
                    cert: cert.path.clone(),
                })
                .set(at);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// What the decisions, pools and certificates in force say, for the
/// gauges: the caller reads them from its snapshot when `/metrics` is
/// asked for, so the counters below never need to know what one is.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Whether the gate is on.
    pub maintenance: bool,
    /// The decisions' generation.
    pub generation: u64,
    /// Every pool of the config.
    pub pools: Vec<PoolGauges>,
    /// Every certificate of the listeners.
    pub certificates: Vec<CertGauges>,
    /// The fleet, with `[cluster]`.
    pub cluster: Option<ClusterGauges>,
}

/// The fleet's gauges.
#[derive(Debug)]
pub struct ClusterGauges {
    /// This instance's name.
    pub instance: String,
    /// Whether its last exchange with etcd succeeded.
    pub connected: bool,
    /// Instances with a live lease.
    pub instances: usize,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabel {
    instance: String,
}

/// One pool's gauges.
#[derive(Debug)]
pub struct PoolGauges {
    /// Its name.
    pub name: String,
    /// Whether it is the live pool.
    pub live: bool,
    /// Its upstreams.
    pub upstreams: Vec<UpstreamGauges>,
}

/// One upstream's gauges.
#[derive(Debug)]
pub struct UpstreamGauges {
    /// `host:port`.
    pub authority: String,
    /// Whether its probes (and traffic) say it is healthy.
    pub healthy: bool,
    /// Kept-alive connections to it, idle now.
    pub idle_connections: usize,
}

/// One certificate's gauge.
#[derive(Debug)]
pub struct CertGauges {
    /// `listener` or `preview`.
    pub listener: &'static str,
    /// The certificate file.
    pub path: String,
    /// When it expires.
    pub not_after: std::time::SystemTime,
}

/// A latency histogram of atomics: `observe` never locks. Clones share
/// the cells (one is registered, one records).
#[derive(Debug, Default, Clone)]
struct DurationHistogram {
    cells: Arc<HistogramCells>,
}

#[derive(Debug, Default)]
struct HistogramCells {
    /// Per-bucket counts (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    fn observe(&self, elapsed: Duration) {
        let cells = &*self.cells;
        let seconds = elapsed.as_secs_f64();
        let index = DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        cells.buckets[index].fetch_add(1, Ordering::Relaxed);
        cells.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        cells.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let cells = &*self.cells;
        let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(&cells.buckets)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let sum = Duration::from_nanos(cells.sum_nanos.load(Ordering::Relaxed)).as_secs_f64();
        let count = cells.count.load(Ordering::Relaxed);
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_renders_cumulative_buckets() {
        let histogram = DurationHistogram::default();
        histogram.observe(Duration::from_micros(300));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(60));
        let mut registry = Registry::default();
        registry.register("d", "test", histogram);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("d_bucket{le=\"0.0005\"} 1"), "{out}");
        assert!(out.contains("d_bucket{le=\"0.005\"} 2"), "{out}");
        assert!(out.contains("d_count 3"), "{out}");
    }
}
