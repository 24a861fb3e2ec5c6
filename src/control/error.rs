//! Why the control plane refused a change.

use std::path::PathBuf;

use super::deploy::DeployLock;
use crate::config::ConfigError;
use crate::health::ProbeResult;
use crate::state::persist::PersistError;
use crate::state::schedule::WindowRefusal;
use crate::state::MissingLivePool;

/// Why a change was refused. Nothing changed, except after
/// [`ControlError::NotDurable`].
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The named pool is not in the config.
    #[error("pool `{0}` is not in the config")]
    UnknownPool(String),
    /// No upstream of the target passed its probe.
    #[error(
        "pool `{pool}` has no healthy upstream: {}",
        describe_failures(failures)
    )]
    PoolUnhealthy {
        /// The target pool.
        pool: String,
        /// Every upstream's probe result.
        failures: Vec<ProbeResult>,
    },
    /// There is nothing to roll back to: nothing has been switched yet.
    #[error("there is no previous pool: nothing has been switched yet")]
    NoPreviousPool,
    /// The previous pool was removed from the config since.
    #[error("the previous pool `{0}` is no longer in the config")]
    PreviousPoolGone(String),
    /// The state file could not be written.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// The one error after which something did change: the change is
    /// applied and the state file holds it, but the disk did not confirm
    /// that it is durable, and the old decisions could not be put back.
    #[error("the change is applied and the state file holds it, but its durability is not confirmed ({0}): a crash before the disk settles may undo it")]
    NotDurable(PersistError),
    /// `generation` is at its largest value and cannot count one more
    /// change (only a hand-edited state file gets there).
    #[error("generation is at its maximum ({}); no further change can be counted: reset it in the state file while switchyard is stopped", u64::MAX)]
    GenerationExhausted,
    /// etcd could not be reached (or the fleet's decisions not applied
    /// here): the change was not made.
    #[error("the cluster is unavailable: {0}")]
    ClusterUnavailable(String),
    /// The change is committed, but these instances did not report it
    /// within `cluster.ack_timeout`; they apply it when they catch up.
    #[error("committed, but not acknowledged in time by: {}", .0.join(", "))]
    NotAcknowledged(Vec<String>),
    /// Another change through another instance came first; its decisions
    /// are applied here, and the change is decided again on them. Never
    /// answered: the writer retries.
    #[error("another change came first")]
    Raced,
    /// The config file cannot be applied; the old config keeps serving.
    #[error("invalid config: {}", .0.lines().join("; "))]
    InvalidConfig(ReloadRefusal),
    /// No planned window has this id.
    #[error("no window `{0}` is planned")]
    UnknownWindow(String),
    /// Another deploy holds the deploy lock.
    #[error("a deploy of `{}` by {} is running since {} (lock {}); wait for it to end, or for its lock to lapse {}s after its ctl stops", .0.pool, .0.holder, .0.started_at, .0.id, super::deploy::LOCK_TTL.as_secs())]
    DeployRunning(DeployLock),
    /// No deploy holds the lock under this id (it lapsed, or the proxy
    /// restarted).
    #[error("no deploy holds lock `{0}` (it lapsed, was released, or the proxy restarted)")]
    UnknownDeploy(String),
    /// A new process took over from this one (a binary upgrade); it makes
    /// the changes now.
    #[error("this process has handed over to a new one (a binary upgrade); ask again, and the new process answers")]
    HandedOver,
    /// A failed upgrade could not take the state file's lock back.
    #[error("this process lost its lock on the state file (a failed upgrade could not take it back), so another process may write it; it serves on with its decisions but changes none: restart it")]
    StateFileUnlocked,
    /// The window cannot be planned as asked.
    #[error(transparent)]
    Window(#[from] WindowRefusal),
}

/// Why a reload was refused.
#[derive(Debug)]
pub enum ReloadRefusal {
    /// The file does not load: unreadable, or with problems at positions.
    Invalid(ConfigError),
    /// It is valid on its own, but lacks the live pool.
    RemovesLivePool {
        /// The config file.
        path: PathBuf,
        /// What is missing.
        missing: MissingLivePool,
    },
}

impl ReloadRefusal {
    /// Every problem as one `PATH:LINE:COL: message` line (or `PATH:
    /// message` where no position applies).
    pub fn lines(&self) -> Vec<String> {
        match self {
            ReloadRefusal::Invalid(error) => error.lines(),
            ReloadRefusal::RemovesLivePool { path, missing } => vec![format!(
                "{}: {missing}; switch to another pool before removing it",
                path.display()
            )],
        }
    }
}

fn describe_failures(failures: &[ProbeResult]) -> String {
    failures
        .iter()
        .map(|p| match &p.outcome {
            Ok(()) => format!("{} passed", p.upstream),
            Err(e) => format!("{}: {e}", p.upstream),
        })
        .collect::<Vec<_>>()
        .join("; ")
}
