//! WebSocket tunnels: once an upstream answers `101`, the client's and the
//! upstream's connections are joined until either closes, the server
//! stops, or the tunnel is no longer wanted (its pool stopped being live,
//! or the gate turned on) for `timeouts.drain`.

use std::sync::Arc;

use http::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tracing::{debug, info, Instrument};

use super::forward::Answer;
use super::{headers, Proxy, Route};
use crate::body::Body;
use crate::shutdown::Phase;
use crate::state::SharedState;

impl Proxy {
    /// Passes the upstream's `101` to the client and, once both sides have
    /// switched, copies bytes both ways until either closes, the server
    /// stops, or `timeouts.drain` has passed since the tunnel stopped being
    /// wanted: its pool is no longer the one its listener routes to, or the
    /// gate is on and would not let its request through.
    pub(super) fn tunnel(
        &self,
        answer: Answer,
        client_upgrade: OnUpgrade,
        origin: TunnelOrigin,
    ) -> Response<Body> {
        let Answer {
            mut response,
            in_flight,
        } = answer;
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let tracked = self.lifecycle.track();
        let mut phase = self.lifecycle.watch();
        let retired = retired(self.state.clone(), origin);
        tokio::spawn(
            async move {
                // Both guards live as long as the tunnel.
                let _tracked = tracked;
                let _tunnel = in_flight.into_tunnel();
                let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok(pair) => pair,
                    Err(error) => {
                        debug!(%error, "upgrade did not complete");
                        return;
                    }
                };
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                tokio::select! {
                    copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
                        Ok((up, down)) => debug!(bytes.up = up, bytes.down = down, "tunnel closed"),
                        Err(error) => debug!(%error, "tunnel broken"),
                    },
                    // Dropping both ends closes them.
                    _ = phase.wait_for(|p| *p == Phase::Closing) => debug!("tunnel closed at shutdown"),
                    () = retired => info!("tunnel closed: its pool is no longer live, or maintenance is on, and the drain budget is spent"),
                }
            }
            .in_current_span(),
        );
        let (mut parts, _) = response.into_parts();
        headers::prepare_response(&mut parts.headers, true);
        Response::from_parts(parts, Body::empty())
    }
}

/// What a tunnel was opened for: enough to tell, at every later change,
/// whether it would still be let through.
pub(super) struct TunnelOrigin {
    pub(super) pool: String,
    pub(super) route: Route,
    pub(super) path: String,
    pub(super) client: std::net::IpAddr,
    /// The bypass token its request carried: one that expires, or whose
    /// secret changes, no longer lets it through.
    pub(super) token: Option<String>,
}

impl TunnelOrigin {
    /// Whether `state` would still send this tunnel's request where it
    /// went: its pool is still the one its listener routes to, and the
    /// gate (if on) still admits it. Preview tunnels go to the pool that
    /// is not live by design.
    fn still_wanted(&self, state: &SharedState) -> bool {
        let snapshot = state.load();
        let preview = snapshot.config.preview.as_ref();
        let routed_here = match self.route {
            Route::Live => snapshot.decisions.live_pool == self.pool,
            Route::Preview => true,
        };
        let bypass = self.route == Route::Preview && preview.is_some_and(|p| p.bypass_maintenance);
        let gated = !bypass
            && snapshot
                .gate
                .as_ref()
                // Only WebSocket upgrades are tunnelled, and they are GETs.
                .is_some_and(|gate| {
                    !gate.admits(&http::Method::GET, &self.path, self.client)
                        && !self.token.as_deref().is_some_and(|t| gate.honours(t))
                });
        routed_here && !gated
    }
}

/// Resolves once the tunnel of `origin` has not been wanted (see
/// [`TunnelOrigin::still_wanted`]) for `timeouts.drain` in a row: after a
/// switch away from its pool, or once the gate is on. A change back within
/// the budget lets the tunnel live on.
pub(super) async fn retired(state: Arc<SharedState>, origin: TunnelOrigin) {
    let mut changes = state.subscribe();
    // A tunnel let through by a bypass token is judged again when the
    // token expires, as at every change.
    let token_expires = origin.token.as_deref().and_then(|token| {
        let expires = state.load().bypass.as_ref()?.expiry(token)?;
        let left = expires.duration_since(std::time::SystemTime::now()).ok()?;
        Some(Instant::now() + left + std::time::Duration::from_millis(100))
    });
    let expiry = async move {
        match token_expires {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    let mut expired = false;
    loop {
        while origin.still_wanted(&state) {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() {
                    return std::future::pending().await;
                },
                () = &mut expiry, if !expired => expired = true,
            }
        }
        let deadline = Instant::now() + state.load().config.timeouts.drain;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                    if origin.still_wanted(&state) {
                        break;
                    }
                }
            }
        }
    }
}
