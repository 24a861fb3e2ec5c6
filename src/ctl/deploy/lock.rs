//! The deploy lock, held by the proxy and renewed from here: a second
//! deploy anywhere is refused while this one runs, and the lock lapses on
//! its own if this `ctl` dies.

use std::time::Duration;

use http::{Method, StatusCode};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::api::{DeployDocument, DeployLockRequest, DeployStep};
use crate::control::deploy::LOCK_TTL;
use crate::ctl::client::{call, expect_ok, json_body, Endpoint, Failure};

/// How often the lock is renewed: three times within its life, so one
/// lost renewal does not lose it.
const RENEW_EVERY: Duration = Duration::from_secs(LOCK_TTL.as_secs() / 3);

/// The lock this deploy holds, renewed in the background until released.
pub struct HeldLock {
    /// Its id.
    pub id: String,
    /// Set, with the reason, once the lock is lost to another deploy.
    lost: watch::Receiver<Option<String>>,
    renewing: JoinHandle<()>,
}

impl HeldLock {
    /// Takes the lock for a deploy of `pool` by `holder`, or says why not
    /// (another deploy runs: the proxy's message names it).
    pub async fn take(endpoint: &Endpoint, pool: &str, holder: &str) -> Result<HeldLock, Failure> {
        let request = DeployLockRequest {
            pool: pool.to_owned(),
            holder: holder.to_owned(),
            id: None,
        };
        let (status, body) = call(
            endpoint,
            Method::POST,
            "/v1/deploys",
            Some(json_body(&request)),
        )
        .await?;
        let lock: DeployDocument = expect_ok(status, &body, "taking the deploy lock")?;
        let (lose, lost) = watch::channel(None);
        let renewing = tokio::spawn(renew(endpoint.clone(), request, lock.id.clone(), lose));
        Ok(HeldLock {
            id: lock.id,
            lost,
            renewing,
        })
    }

    /// Why the lock was lost, if it was.
    pub fn lost(&self) -> Option<String> {
        self.lost.borrow().clone()
    }

    /// Stops renewing and gives the lock back (best effort: if the proxy
    /// cannot be reached, the lock lapses by itself).
    pub async fn release(self, endpoint: &Endpoint) {
        self.renewing.abort();
        let path = format!("/v1/deploys/{}", self.id);
        let _ = call(endpoint, Method::DELETE, &path, None).await;
    }

    /// Records a step in the proxy's audit log (best effort).
    pub async fn record(&self, endpoint: &Endpoint, name: &str, outcome: &str, detail: &str) {
        let step = DeployStep {
            name: name.to_owned(),
            outcome: outcome.to_owned(),
            detail: detail.to_owned(),
        };
        let path = format!("/v1/deploys/{}/steps", self.id);
        let record = call(endpoint, Method::POST, &path, Some(json_body(&step)));
        let _ = tokio::time::timeout(Duration::from_secs(5), record).await;
    }
}

/// Renews the lock every [`RENEW_EVERY`]. A proxy that lost it (restarted)
/// is asked to take it again under the same id; if another deploy took it
/// meanwhile, the lock is lost and `lose` says why. A proxy that cannot be
/// reached is tried again at the next round.
async fn renew(
    endpoint: Endpoint,
    mut request: DeployLockRequest,
    id: String,
    lose: watch::Sender<Option<String>>,
) {
    request.id = Some(id.clone());
    let path = format!("/v1/deploys/{id}");
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        // Each call bounded by the pause between renewals: one that hangs
        // must not let the lock lapse behind it.
        let renewal = tokio::time::timeout(RENEW_EVERY, call(&endpoint, Method::PUT, &path, None));
        match renewal.await {
            Ok(Ok((status, _))) if status == StatusCode::NOT_FOUND => {}
            _ => continue,
        }
        let body = json_body(&request);
        let retake = call(&endpoint, Method::POST, "/v1/deploys", Some(body));
        match tokio::time::timeout(RENEW_EVERY, retake).await {
            Ok(Ok((status, body))) if status == StatusCode::CONFLICT => {
                let why = match expect_ok::<DeployDocument>(
                    status,
                    &body,
                    "taking the deploy lock again",
                ) {
                    Err(failure) => failure.joined(),
                    Ok(_) => "another deploy holds the lock".to_owned(),
                };
                lose.send_replace(Some(why));
                return;
            }
            _ => continue,
        }
    }
}
