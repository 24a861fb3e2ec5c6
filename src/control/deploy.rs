//! The deploy lock: while a `ctl deploy` runs, a second one against the
//! same proxy (or any instance of its fleet) is refused, naming the first.
//!
//! The lock is not a decision: it is not in the state file and moves no
//! generation. Its `ctl` renews it every few seconds; when the `ctl` dies,
//! the lock lapses [`LOCK_TTL`] after its last renewal. One process keeps
//! it in memory; a fleet keeps it in etcd under a lease of its own, so
//! every instance sees the same lock.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::{Control, ControlError};
use crate::state::persist::{beside, replace_by_rename, rfc3339};

/// How long a lock holds after its last renewal.
pub const LOCK_TTL: Duration = Duration::from_secs(10);
/// The most a status document waits for a fleet's lock.
const STATUS_BUDGET: Duration = Duration::from_millis(500);

/// A running deploy, as the lock records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployLock {
    /// The lock's id: the deploy's `ctl` renews and releases it by it.
    pub id: String,
    /// The pool the deploy makes live.
    pub pool: String,
    /// Who runs it (`user@host pid N`, as its `ctl` says).
    pub holder: String,
    /// When it began (RFC 3339).
    pub started_at: String,
    /// In a fleet, the lease that keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
}

/// The lock of one process, with when it lapses.
#[derive(Debug)]
pub(super) struct HeldHere {
    lock: DeployLock,
    lapses_at: Instant,
}

impl Control {
    /// Takes the deploy lock for a deploy of `pool` by `holder`; with `id`,
    /// takes it again under that id (after a restart of the proxy lost it),
    /// if no other deploy took it meanwhile.
    pub async fn take_deploy_lock(
        &self,
        pool: &str,
        holder: &str,
        id: Option<String>,
    ) -> Result<DeployLock, ControlError> {
        self.writer.check()?;
        if !self.state.load().pools.contains_key(pool) {
            return Err(ControlError::UnknownPool(pool.to_owned()));
        }
        let mut lock = DeployLock {
            id: id.unwrap_or_else(new_id),
            pool: pool.to_owned(),
            holder: holder.to_owned(),
            started_at: rfc3339(SystemTime::now()),
            lease: None,
        };
        match &self.fleet {
            None => {
                let mut held = self.deploy_lock_here();
                match held.as_mut() {
                    // Taken again by its holder (a retry): renewed as it is.
                    Some(here) if here.lapses_at > Instant::now() && here.lock.id == lock.id => {
                        here.lapses_at = Instant::now() + LOCK_TTL;
                        return Ok(here.lock.clone());
                    }
                    Some(other) if other.lapses_at > Instant::now() => {
                        return Err(ControlError::DeployRunning(other.lock.clone()));
                    }
                    _ => {}
                }
                *held = Some(HeldHere {
                    lock: lock.clone(),
                    lapses_at: Instant::now() + LOCK_TTL,
                });
                self.keep_lock_file(held.as_ref().map(|h| &h.lock));
                Ok(lock)
            }
            Some(fleet) => {
                let etcd = fleet.etcd();
                let unavailable = |e: crate::cluster::ClusterError| {
                    ControlError::ClusterUnavailable(format!("the deploy lock: {e}"))
                };
                // The record names the lease that keeps it, so any
                // instance can renew it.
                let taken = etcd
                    .take_lock(
                        |lease| {
                            lock.lease = Some(lease);
                            encode(&lock)
                        },
                        LOCK_TTL,
                    )
                    .await
                    .map_err(unavailable)?;
                match taken {
                    Ok(_) => Ok(lock),
                    Err(held) => match decode(&held) {
                        Some(other) if other.id == lock.id => {
                            // Ours already (a retry): renew it.
                            self.renew_deploy_lock(&lock.id).await
                        }
                        Some(other) => Err(ControlError::DeployRunning(other)),
                        None => Err(ControlError::ClusterUnavailable(
                            "the deploy lock in etcd is unreadable; delete its key by hand"
                                .to_owned(),
                        )),
                    },
                }
            }
        }
    }

    /// Renews the deploy lock `id` for another [`LOCK_TTL`].
    pub async fn renew_deploy_lock(&self, id: &str) -> Result<DeployLock, ControlError> {
        self.writer.check()?;
        let unknown = || ControlError::UnknownDeploy(id.to_owned());
        match &self.fleet {
            None => {
                let mut held = self.deploy_lock_here();
                match held.as_mut() {
                    Some(here) if here.lock.id == id && here.lapses_at > Instant::now() => {
                        here.lapses_at = Instant::now() + LOCK_TTL;
                        Ok(here.lock.clone())
                    }
                    _ => Err(unknown()),
                }
            }
            Some(fleet) => {
                let (lock, lease) = self.fleet_lock_of(id).await?;
                let alive = fleet.etcd().renew(lease, LOCK_TTL / 3).await.map_err(|e| {
                    ControlError::ClusterUnavailable(format!("renewing the deploy lock: {e}"))
                })?;
                if alive {
                    Ok(lock)
                } else {
                    Err(unknown())
                }
            }
        }
    }

    /// Releases the deploy lock `id`.
    pub async fn release_deploy_lock(&self, id: &str) -> Result<(), ControlError> {
        self.writer.check()?;
        let unknown = || ControlError::UnknownDeploy(id.to_owned());
        match &self.fleet {
            None => {
                let mut held = self.deploy_lock_here();
                match held.as_ref() {
                    Some(here) if here.lock.id == id => {
                        *held = None;
                        self.keep_lock_file(None);
                        Ok(())
                    }
                    _ => Err(unknown()),
                }
            }
            Some(fleet) => {
                let (_, lease) = self.fleet_lock_of(id).await?;
                // The key goes with its lease.
                fleet.etcd().revoke(lease).await.map_err(|e| {
                    ControlError::ClusterUnavailable(format!("releasing the deploy lock: {e}"))
                })
            }
        }
    }

    /// The deploy running now, if any (`None` too when etcd cannot say).
    pub async fn running_deploy(&self) -> Option<DeployLock> {
        match &self.fleet {
            None => self
                .deploy_lock_here()
                .as_ref()
                .filter(|here| here.lapses_at > Instant::now())
                .map(|here| here.lock.clone()),
            // The status must answer while etcd is away.
            Some(_) => tokio::time::timeout(STATUS_BUDGET, self.fleet_lock())
                .await
                .ok()
                .and_then(Result::ok)
                .flatten(),
        }
    }

    /// The fleet's lock if it is `id`'s, with the lease that keeps it.
    async fn fleet_lock_of(&self, id: &str) -> Result<(DeployLock, i64), ControlError> {
        self.fleet_lock()
            .await?
            .filter(|lock| lock.id == id)
            .and_then(|lock| lock.lease.map(|lease| (lock, lease)))
            .ok_or_else(|| ControlError::UnknownDeploy(id.to_owned()))
    }

    async fn fleet_lock(&self) -> Result<Option<DeployLock>, ControlError> {
        let fleet = self.fleet.as_ref().expect("only called in a fleet");
        let value = fleet.etcd().read_lock().await.map_err(|e| {
            ControlError::ClusterUnavailable(format!("reading the deploy lock: {e}"))
        })?;
        Ok(value.as_deref().and_then(decode))
    }

    /// Takes back the lock a previous run of this process held (the file
    /// beside the state file), for [`LOCK_TTL`]: its deploy may still be
    /// running, and renews it if so; else it lapses. Without it, a restart
    /// would let a second deploy in beside the first.
    pub fn restore_deploy_lock(&self) {
        // A fleet's lock is in etcd, and outlives any instance.
        if self.fleet.is_some() {
            return;
        }
        let Ok(text) = std::fs::read(lock_file(&self.state_file)) else {
            return;
        };
        if let Some(lock) = decode(&text) {
            tracing::info!(deploy = %lock.id, pool = ?lock.pool, "a deploy's lock from before the restart holds for {}s more", LOCK_TTL.as_secs());
            *self.deploy_lock_here() = Some(HeldHere {
                lock,
                lapses_at: Instant::now() + LOCK_TTL,
            });
        }
    }

    /// Keeps the lock file in step with the lock held here (best effort:
    /// without it, only a restart's protection is lost).
    fn keep_lock_file(&self, lock: Option<&DeployLock>) {
        let path = lock_file(&self.state_file);
        let written = match lock {
            None => std::fs::remove_file(&path).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }),
            Some(lock) => replace_by_rename(&path, "tmp", |temp| {
                std::fs::write(temp, encode(lock)).map_err(|e| ("write", e))
            })
            .map_err(|(_, e)| e),
        };
        if let Err(error) = written {
            tracing::warn!(%error, file = %path.display(), "cannot keep the deploy lock's file; a restart would forget the lock");
        }
    }

    fn deploy_lock_here(&self) -> std::sync::MutexGuard<'_, Option<HeldHere>> {
        self.deploy.lock().expect("deploy lock poisoned")
    }
}

/// The file beside the state file that keeps the lock across a restart.
fn lock_file(state_file: &Path) -> PathBuf {
    beside(state_file, "deploy")
}

fn encode(lock: &DeployLock) -> Vec<u8> {
    serde_json::to_vec(lock).expect("a lock serializes")
}

fn decode(value: &[u8]) -> Option<DeployLock> {
    serde_json::from_slice(value).ok()
}

/// Whether `id` is one the proxy makes: `d-` and 16 hex digits.
pub fn is_lock_id(id: &str) -> bool {
    id.strip_prefix("d-")
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A fresh lock id: 64 random bits, so two `ctl`s never pick the same.
fn new_id() -> String {
    let mut bytes = [0u8; 8];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("d-{hex}")
}
