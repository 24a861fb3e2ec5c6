//! Health probes: `GET health.path` on an upstream within `health.timeout`.
//!
//! [`spawn_checks`] probes every upstream of every pool, live or not, each
//! `health.interval`, off the request path: the data plane only reads the
//! verdict (an atomic flag). It takes the pools from the current snapshot
//! at each round, so a reload that adds upstreams gets them probed from the
//! next round on, and one that keeps an upstream keeps its record (the
//! snapshot carries the same `Upstream` over).
//!
//! A switch or rollback also probes every upstream of its target right then
//! ([`probe_pool`]), so stale health never lets a switch through; those
//! results count as health checks too.

use std::sync::Arc;

use http::uri::Authority;
use tokio::net::TcpStream;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::tls::UpstreamTls;
use crate::config::Health;
use crate::http1;
use crate::shutdown::StopOnDrop;
use crate::state::SharedState;
use crate::upstream::{Pool, Upstream};

/// The `User-Agent` of health probes, so upstream logs can tell them apart.
pub const PROBE_USER_AGENT: &str = "switchyard-health";

/// Why a probe did not pass; rendered (as the status document's
/// `last_error`, a refusal's details) only at the edge.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProbeError {
    /// `health.path` is not a request target.
    #[error("bad probe path: {0}")]
    BadPath(String),
    /// The TCP connection was refused, reset or unreachable.
    #[error("connect: {0}")]
    Connect(Arc<std::io::Error>),
    /// The name to verify the upstream's certificate against is invalid.
    #[error("bad TLS server name: {0}")]
    ServerName(String),
    /// The TLS handshake failed (a certificate that does not verify).
    #[error("TLS: {0}")]
    Tls(Arc<std::io::Error>),
    /// The request or its answer failed.
    #[error("GET {path}: {reason}")]
    Exchange {
        /// The probe path.
        path: String,
        /// What failed.
        reason: String,
    },
    /// It answered, but not with 2xx or 3xx.
    #[error("GET {path} answered {status}")]
    Status {
        /// The probe path.
        path: String,
        /// The answer's status.
        status: http::StatusCode,
    },
    /// No answer within `health.timeout`.
    #[error("no answer to GET {path} within {}", humantime::format_duration(*.timeout))]
    TimedOut {
        /// The probe path.
        path: String,
        /// `health.timeout`.
        timeout: std::time::Duration,
    },
    /// The probe's task failed (it panicked or was cancelled).
    #[error("probe task failed: {0}")]
    Task(String),
}

/// One upstream's probe result.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// The upstream probed.
    pub upstream: Authority,
    /// `Err` with the reason if it did not pass.
    pub outcome: Result<(), ProbeError>,
}

/// Probes every upstream of `pool` at once and records each result, in
/// the pool's order.
pub async fn probe_pool(pool: &Pool, health: &Health) -> Vec<ProbeResult> {
    // A set, so that dropping this future stops the probes too.
    let mut probes = JoinSet::new();
    for (index, upstream) in pool.upstreams.iter().enumerate() {
        let (upstream, health, tls) = (upstream.clone(), health.clone(), pool.tls.clone());
        let pool = pool.name.clone();
        probes.spawn(async move {
            let outcome = probe_and_record(&pool, &upstream, tls.as_ref(), &health).await;
            (index, outcome)
        });
    }
    let mut outcomes: Vec<Option<Result<(), ProbeError>>> = vec![None; pool.upstreams.len()];
    while let Some(joined) = probes.join_next().await {
        match joined {
            Ok((index, outcome)) => outcomes[index] = Some(outcome),
            Err(error) => warn!(%error, "a probe task failed"),
        }
    }
    pool.upstreams
        .iter()
        .zip(outcomes)
        .map(|(upstream, outcome)| ProbeResult {
            upstream: upstream.authority.clone(),
            outcome: outcome
                .unwrap_or_else(|| Err(ProbeError::Task("it did not finish".to_owned()))),
        })
        .collect()
}

/// The running health checks; dropping this stops them.
pub type HealthChecks = StopOnDrop;

/// Starts probing every upstream of every pool of `state`, each
/// `health.interval` (as of each round's snapshot).
pub fn spawn_checks(state: Arc<SharedState>) -> HealthChecks {
    StopOnDrop::spawn(async move {
        loop {
            let started = Instant::now();
            let snapshot = state.load_full();
            let health = snapshot.config.health.clone();
            let mut round = JoinSet::new();
            for pool in snapshot.pools.values() {
                let (pool, health) = (pool.clone(), health.clone());
                round.spawn(async move {
                    probe_pool(&pool, &health).await;
                });
            }
            // The round does not hold on to the snapshot while it waits.
            drop(snapshot);
            while round.join_next().await.is_some() {}
            tokio::time::sleep_until(started + health.interval).await;
        }
    })
}

/// Probes `upstream` of `pool`, records the result and logs a change of
/// verdict.
async fn probe_and_record(
    pool: &str,
    upstream: &Upstream,
    tls: Option<&UpstreamTls>,
    health: &Health,
) -> Result<(), ProbeError> {
    let outcome = probe(upstream, tls, health).await;
    let rendered = outcome.clone().map_err(|error| error.to_string());
    match upstream.record_probe(rendered.clone(), health) {
        Some(true) => info!(pool, upstream = %upstream.authority, "upstream is healthy again"),
        Some(false) => warn!(
            pool,
            upstream = %upstream.authority,
            error = rendered.as_ref().err().map_or("", String::as_str),
            "upstream is unhealthy"
        ),
        None => {}
    }
    outcome
}

/// One probe: passes on a 2xx or 3xx answer within the timeout.
///
/// Each probe opens its own connection (and closes it): it checks that the
/// upstream accepts connections and answers, and it never takes or spoils
/// an idle connection of the request path's pool. Its answer is read with
/// the request path's own parser, up to the head: the status is the verdict.
pub async fn probe(
    upstream: &Upstream,
    tls: Option<&UpstreamTls>,
    health: &Health,
) -> Result<(), ProbeError> {
    if !health.path.starts_with('/') || health.path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(ProbeError::BadPath(health.path.clone()));
    }
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {PROBE_USER_AGENT}\r\nConnection: close\r\n\r\n",
        health.path, upstream.authority
    );
    let exchange = async {
        let stream = TcpStream::connect(upstream.authority.as_str())
            .await
            .map_err(|e| ProbeError::Connect(Arc::new(e)))?;
        let _ = stream.set_nodelay(true);
        let status = match tls {
            None => ask(stream, &request, &health.path).await?,
            Some(tls) => {
                let name = tls
                    .server_name
                    .clone()
                    .unwrap_or_else(|| upstream.authority.host().to_owned());
                let name = rustls::pki_types::ServerName::try_from(name)
                    .map_err(|e| ProbeError::ServerName(e.to_string()))?;
                let stream = tokio_rustls::TlsConnector::from(tls.client.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| ProbeError::Tls(Arc::new(e)))?;
                ask(stream, &request, &health.path).await?
            }
        };
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(ProbeError::Status {
                path: health.path.clone(),
                status,
            })
        }
    };
    match tokio::time::timeout(health.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::TimedOut {
            path: health.path.clone(),
            timeout: health.timeout,
        }),
    }
}

/// Sends `request` on `stream` and reads the answer's head: its status.
async fn ask<S>(mut stream: S, request: &str, path: &str) -> Result<http::StatusCode, ProbeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let failed = |reason: String| ProbeError::Exchange {
        path: path.to_owned(),
        reason,
    };
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| failed(e.to_string()))?;
    stream.flush().await.map_err(|e| failed(e.to_string()))?;
    let mut buf = Vec::with_capacity(4096);
    let mut head = http1::ResponseHead::default();
    loop {
        match http1::parse_response(&buf, MAX_HEAD, false, &mut head) {
            Ok(true) if head.is_interim() => {
                buf.drain(..head.len);
                continue;
            }
            Ok(true) => {
                return http::StatusCode::from_u16(head.status)
                    .map_err(|_| failed("invalid status code".to_owned()))
            }
            Ok(false) => {}
            Err(reason) => return Err(failed(format!("malformed answer: {reason}"))),
        }
        if buf.len() == buf.capacity() {
            buf.reserve(4096);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) => return Err(failed("the connection closed before an answer".to_owned())),
            Ok(_) => {}
            Err(e) => return Err(failed(e.to_string())),
        }
    }
}

/// Longest answer head a probe reads.
const MAX_HEAD: usize = 64 * 1024;
