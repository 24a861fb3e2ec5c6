//! When a WebSocket tunnel is no longer wanted: its pool stopped being
//! live, or the gate turned on and would not let its request through. The
//! HTTP/1 engine joins a client's and an upstream's connections once the
//! upstream answers `101`, until either closes, the server stops, or the
//! tunnel has not been wanted for `timeouts.drain`.

use std::sync::Arc;

use tokio::time::Instant;

use super::Route;
use crate::state::SharedState;

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
