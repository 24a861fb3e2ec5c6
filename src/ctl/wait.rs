//! `ctl wait`: returns once something has happened on the proxy, for the
//! steps of a migration that must not start before it has.

use std::time::Duration;

use clap::Subcommand;
use http::Method;

use super::client::{call, expect_ok, Endpoint, Failure};
use crate::admin::api::StatusDocument;

/// How often the proxy is asked.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// What `ctl wait` waits for.
#[derive(Debug, Subcommand)]
pub enum WaitAction {
    /// Until POOL has no request in flight and no tunnel open on this
    /// instance: after a switch, the old pool has finished its work and
    /// may be stopped.
    Drained {
        /// The pool (default: the previous pool, the one a switch left).
        pool: Option<String>,
        /// Give up (exit 1) after this long, e.g. `30s`.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
        timeout: Duration,
    },
}

/// Runs `action` against the admin API at `endpoint`.
pub async fn run(endpoint: &Endpoint, action: WaitAction) -> Result<String, Failure> {
    let WaitAction::Drained { pool, timeout } = action;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (status, body) = call(endpoint, Method::GET, "/v1/status", None).await?;
        let document: StatusDocument = expect_ok(status, &body, "status")?;
        let name =
            match (&pool, &document.previous_pool) {
                (Some(pool), _) | (None, Some(pool)) => pool.clone(),
                (None, None) => return Err(Failure::one(
                    "there is no previous pool to wait for; name the pool: `ctl wait drained POOL`",
                )),
            };
        let Some(open) = document.pools.get(&name) else {
            let known: Vec<&str> = document.pools.keys().map(String::as_str).collect();
            return Err(Failure::one(format!(
                "`{name}` is not a pool; expected one of: {}",
                known.join(", ")
            )));
        };
        if open.in_flight == 0 && open.tunnels == 0 {
            return Ok(format!(
                "pool `{name}` drained: no request in flight, no tunnel open\n"
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::one(format!(
                "pool `{name}` not drained after {}: {} requests in flight, {} tunnels open",
                humantime::format_duration(timeout),
                open.in_flight,
                open.tunnels
            )));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
