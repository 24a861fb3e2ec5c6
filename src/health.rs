//! Health probes: `GET health.path` on an upstream within `health.timeout`.
//!
//! A switch or rollback probes every upstream of its target right then
//! ([`probe_pool`]), so stale health never lets a switch through; the
//! results count as health checks and update each upstream's record.

use std::sync::Arc;

use http::header::{HeaderValue, HOST, USER_AGENT};
use http::uri::Authority;
use http::{Request, Uri};
use http_body_util::BodyExt;

use crate::config::Health;
use crate::proxy::{Body, UpstreamClient};
use crate::upstream::{Pool, Upstream};

/// One upstream's probe result.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// The upstream probed.
    pub upstream: Authority,
    /// `Err` with the reason if it did not pass.
    pub outcome: Result<(), String>,
}

/// Probes every upstream of `pool` at once and records each result, in
/// the pool's order.
pub async fn probe_pool(
    client: &Arc<UpstreamClient>,
    pool: &Pool,
    health: &Health,
) -> Vec<ProbeResult> {
    let probes: Vec<_> = pool
        .upstreams
        .iter()
        .map(|upstream| {
            let (client, upstream, health) = (client.clone(), upstream.clone(), health.clone());
            tokio::spawn(async move {
                let outcome = probe(&client, &upstream, &health).await;
                upstream.record_probe(outcome.clone(), &health);
                outcome
            })
        })
        .collect();
    let mut results = Vec::with_capacity(probes.len());
    for (upstream, probe) in pool.upstreams.iter().zip(probes) {
        let outcome = probe
            .await
            .unwrap_or_else(|e| Err(format!("probe task failed: {e}")));
        results.push(ProbeResult {
            upstream: upstream.authority.clone(),
            outcome,
        });
    }
    results
}

/// One probe: passes on a 2xx or 3xx answer within the timeout.
pub async fn probe(
    client: &UpstreamClient,
    upstream: &Arc<Upstream>,
    health: &Health,
) -> Result<(), String> {
    let uri = Uri::builder()
        .scheme("http")
        .authority(upstream.authority.clone())
        .path_and_query(health.path.as_str())
        .build()
        .map_err(|e| format!("bad probe target: {e}"))?;
    let mut request = Request::new(Body::empty());
    *request.uri_mut() = uri;
    let host = HeaderValue::from_str(upstream.authority.as_str())
        .expect("an authority is a valid header value");
    request.headers_mut().insert(HOST, host);
    request
        .headers_mut()
        .insert(USER_AGENT, HeaderValue::from_static("switchyard-health"));
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        })?;
        let status = response.status();
        // Read the (small) body so the connection can be reused.
        let _ = response.into_body().collect().await;
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("GET {} answered {status}", health.path))
        }
    };
    match tokio::time::timeout(health.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer to GET {} within {}",
            health.path,
            humantime::format_duration(health.timeout)
        )),
    }
}
