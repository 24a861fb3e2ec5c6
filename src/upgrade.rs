//! Replacing the running binary with no failed request (`switchyard ctl
//! upgrade`, `POST /v1/upgrade`).
//!
//! The running process starts the binary it was started from (so a
//! package upgrade's new file is what runs) as `serve --config PATH
//! --take-over`, with one end of a private `channel` as its standard
//! input, and they talk:
//!
//! 1. The new process loads the config and says hello (or why it cannot).
//!    Every change of the decisions waits from the start of the upgrade.
//! 2. The old one lets go of the state file and sends its listening
//!    sockets (public, preview, admin socket, admin TCP) as `SCM_RIGHTS`,
//!    with every upstream's health record.
//! 3. The new one takes the state file, restores the decisions from it,
//!    adopts each socket its config still names at the same address (and
//!    binds any other), takes the health records, starts serving, and says
//!    it is ready.
//! 4. The old one tells systemd the new main PID, refuses changes from then
//!    on (the new one makes them), stops accepting, drains within
//!    `timeouts.drain` and exits 0. Its admin socket file stays: it is the
//!    new process's now.
//!
//! A new process that fails, exits or is not ready within
//! [`HANDOVER_TIMEOUT`] is killed; the old one takes the state file back
//! and goes on as before, and the caller is told why.
//!
//! **Why no connection is lost.** The sockets are passed, not bound again:
//! both processes hold the same kernel sockets, so a connection waiting in
//! an accept queue is accepted by one or the other, and the queue never
//! closes. (Binding a second socket with `SO_REUSEPORT` instead would give
//! each process a queue of its own, and the connections waiting in the old
//! one's when it closes are reset.) While both accept, both apply the same
//! decisions: changes wait until the handover is over. An HTTP/1
//! connection the old process accepted just before it stopped accepting is
//! still served; its answers say `Connection: close`, so clients open the
//! next connection to the new process.

mod channel;
mod successor;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use crate::control::{Control, ControlError, Via};
use crate::state::persist::{self, StateLock};
use crate::state::SharedState;
use crate::upstream::ProbeRecord;
use channel::Channel;
pub use successor::{Inherited, Successor};

/// How long a new process has to load its config, take over and start
/// serving (joining a fleet included).
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new process that did not take over is given to exit by
/// itself before it is killed.
const EXIT_WAIT: Duration = Duration::from_secs(1);
/// How long a killed new process is waited for.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long the state file's lock is tried again once the new process is
/// gone.
const RELOCK_FOR: Duration = Duration::from_secs(2);

/// What a listening socket is to the process holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// `listener.bind`.
    Public,
    /// `preview.bind`.
    Preview,
    /// `admin.socket`.
    AdminSocket,
    /// `admin.bind`.
    AdminTcp,
}

/// A socket offered to the new process: its role, and the address (or
/// path) the old process's config named when it was bound.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Offered {
    role: Role,
    configured: String,
}

/// One upstream's health, as the old process knows it.
#[derive(Debug, Serialize, Deserialize)]
struct Health {
    pool: String,
    upstream: String,
    healthy: bool,
    probes: ProbeRecord,
}

/// What the old process sends, the sockets attached in `sockets`' order.
#[derive(Debug, Serialize, Deserialize)]
struct Handover {
    sockets: Vec<Offered>,
    health: Vec<Health>,
    /// Where its decisions are ([`normalized`]).
    state_file: PathBuf,
    /// The watch after a switch in progress: its pool, requests, errors.
    watch: Option<(String, u64, u64)>,
}

/// What the new process says.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum FromNew {
    /// Its config loaded: it is ready for the sockets.
    Hello { version: String },
    /// It serves; these sockets it adopted.
    Ready { adopted: Vec<Role> },
    /// It cannot take over, and exits.
    Failed { error: String },
}

/// Why an upgrade did not happen. Nothing changed: this process serves on.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Another upgrade is running.
    #[error("an upgrade is already in progress")]
    InProgress,
    /// This process has handed over already.
    #[error("this process has already handed over to pid {0}")]
    AlreadyHandedOver(u32),
    /// The new process could not be started, or did not take over.
    #[error("{0}; this process goes on serving")]
    Failed(String),
    /// The control plane refused (it handed over meanwhile).
    #[error(transparent)]
    Control(#[from] ControlError),
    /// This process cannot be upgraded.
    #[error("{0}")]
    Unavailable(&'static str),
}

/// The answer to a successful upgrade.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Upgraded {
    /// The new process.
    pub pid: u32,
    /// This one, now draining.
    pub previous_pid: u32,
    /// What the new binary says it is (`--version`).
    pub version: String,
}

/// Whom this process handed over to.
#[derive(Debug, Clone)]
pub struct HandedOver {
    /// The new process.
    pub pid: u32,
    /// The sockets it adopted.
    pub adopted: Vec<Role>,
}

/// What a running process needs to hand over to a new one.
#[derive(Debug)]
pub struct Upgrader {
    /// Why this process cannot be upgraded, if it cannot (the demo).
    refusal: Option<&'static str>,
    /// The binary this process was started from; an error if unknown.
    binary: Result<PathBuf, String>,
    control: Arc<Control>,
    /// Copies of the listening sockets, to send; closed when the process
    /// stops serving (a copy open would keep a closed listener's queue
    /// taking connections nobody accepts).
    sockets: std::sync::Mutex<Vec<(Offered, OwnedFd)>>,
    state_file: PathBuf,
    /// This process's hold on the state file; given up during a handover.
    state_lock: std::sync::Mutex<Option<StateLock>>,
    /// Held while an upgrade runs: one at a time.
    running: tokio::sync::Mutex<()>,
    handed_over: watch::Sender<Option<HandedOver>>,
    /// The line to the new process, kept open until this one is done: the
    /// new one holds changes back until it closes.
    successor_line: std::sync::Mutex<Option<Channel>>,
    /// Told when the connection that asked for the upgrade has its answer.
    answered: Notify,
}

impl Upgrader {
    /// The upgrader of a process holding `state_lock`, whose listening
    /// sockets are `sockets` (each with its role and configured address).
    pub fn new(
        control: Arc<Control>,
        state_lock: StateLock,
        sockets: Vec<(Role, String, BorrowedFd<'_>)>,
    ) -> std::io::Result<Upgrader> {
        let sockets = sockets
            .into_iter()
            .map(|(role, configured, socket)| {
                Ok((Offered { role, configured }, socket.try_clone_to_owned()?))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Upgrader {
            binary: started_from(),
            refusal: None,
            state_file: control.state().load().config.state.file.clone(),
            control,
            sockets: std::sync::Mutex::new(sockets),
            state_lock: std::sync::Mutex::new(Some(state_lock)),
            running: tokio::sync::Mutex::new(()),
            handed_over: watch::Sender::new(None),
            successor_line: std::sync::Mutex::new(None),
            answered: Notify::new(),
        })
    }

    /// Refuses every upgrade, saying `why`.
    pub fn refuse(&mut self, why: &'static str) {
        self.refusal = Some(why);
    }

    /// Starts the binary anew and hands over to it; see the module docs.
    pub async fn upgrade(&self, via: Via) -> Result<Upgraded, UpgradeError> {
        let Ok(_one) = self.running.try_lock() else {
            return Err(UpgradeError::InProgress);
        };
        if let Some(handed) = &*self.handed_over.borrow() {
            return Err(UpgradeError::AlreadyHandedOver(handed.pid));
        }
        if let Some(why) = self.refusal {
            return Err(UpgradeError::Unavailable(why));
        }
        let binary = self.binary.as_ref().map_err(|e| {
            UpgradeError::Failed(format!("cannot tell which binary this process runs: {e}"))
        })?;
        info!(target: "audit", %via, change = "upgrade", binary = %binary.display(), "binary upgrade: starting the new process; changes wait until it has taken over");
        let frozen = self.control.freeze().await?;
        let config = self.control.state().load().config.path.clone();
        let fail = |what: &str, e: std::io::Error| UpgradeError::Failed(format!("{what}: {e}"));
        let (channel, theirs) = Channel::pair().map_err(|e| fail("cannot open the channel", e))?;
        let mut child = tokio::process::Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--take-over")
            .stdin(Stdio::from(theirs))
            .spawn()
            .map_err(|e| fail(&format!("cannot start {}", binary.display()), e))?;
        let pid = child.id().unwrap_or_default();
        let outcome = tokio::time::timeout(HANDOVER_TIMEOUT, self.hand_over(&channel))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "was not ready within {}s",
                    HANDOVER_TIMEOUT.as_secs()
                ))
            });
        match outcome {
            Ok((version, adopted)) => {
                crate::notify::main_pid(pid);
                frozen.hand_over();
                info!(target: "audit", %via, change = "upgrade", pid, %version, "binary upgrade: the new process has taken over; this one drains and exits");
                *self.successor_line.lock().expect("line lock poisoned") = Some(channel);
                self.handed_over
                    .send_replace(Some(HandedOver { pid, adopted }));
                Ok(Upgraded {
                    pid,
                    previous_pid: std::process::id(),
                    version,
                })
            }
            Err(why) => {
                // Gone before the state file is taken back: its lock goes
                // with it. One that said why it stops is given a moment to.
                let exited = match tokio::time::timeout(EXIT_WAIT, child.wait()).await {
                    Ok(exited) => exited,
                    Err(_) => {
                        let _ = child.start_kill();
                        tokio::time::timeout(KILL_WAIT, child.wait())
                            .await
                            .unwrap_or_else(|_| Err(std::io::Error::other("still running")))
                    }
                };
                let status = match exited {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("status unknown: {e}"),
                };
                match self.retake_state_lock().await {
                    true => drop(frozen),
                    false => frozen.lose_state_file(),
                }
                let why = format!("the new process (pid {pid}, {status}) {why}");
                warn!(target: "audit", %via, change = "upgrade", error = %why, "binary upgrade failed; this process goes on serving");
                Err(UpgradeError::Failed(why))
            }
        }
    }

    /// Steps 1 to 3 of the module docs, from this side: the new process's
    /// version and the sockets it adopted, or what went wrong.
    async fn hand_over(&self, channel: &Channel) -> Result<(String, Vec<Role>), String> {
        let version = match channel.recv().await {
            Ok(Some((FromNew::Hello { version }, _))) => version,
            other => return Err(refusal(other)),
        };
        // Copies again, so that no lock is held across the send.
        let sockets = self
            .sockets
            .lock()
            .expect("sockets lock poisoned")
            .iter()
            .map(|(offered, socket)| Ok((offered.clone(), socket.try_clone()?)))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| format!("could not be given the sockets: {e}"))?;
        if sockets.is_empty() {
            return Err("was too late: this process is stopping".to_owned());
        }
        drop(self.state_lock().take());
        let handover = Handover {
            sockets: sockets.iter().map(|(o, _)| o.clone()).collect(),
            health: health_of(self.control.state()),
            state_file: normalized(&self.state_file),
            watch: self
                .control
                .watch_status()
                .map(|w| (w.pool, w.requests, w.errors)),
        };
        let fds: Vec<_> = sockets.iter().map(|(_, s)| s.as_fd()).collect();
        if let Err(e) = channel.send(&handover, &fds).await {
            return Err(format!("could not be sent the sockets: {e}"));
        }
        match channel.recv().await {
            Ok(Some((FromNew::Ready { adopted }, _))) => Ok((version, adopted)),
            other => Err(refusal(other)),
        }
    }

    /// Takes the state file back after a failed handover; whether it could.
    async fn retake_state_lock(&self) -> bool {
        if self.state_lock().is_some() {
            return true;
        }
        let deadline = tokio::time::Instant::now() + RELOCK_FOR;
        loop {
            match persist::lock(&self.state_file) {
                Ok(lock) => {
                    *self.state_lock() = Some(lock);
                    return true;
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    error!(error = %e, "cannot take the state file back after a failed upgrade; serving on, but refusing every change until restarted");
                    return false;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn state_lock(&self) -> std::sync::MutexGuard<'_, Option<StateLock>> {
        self.state_lock.lock().expect("state lock poisoned")
    }

    /// Resolves once this process has handed over.
    pub async fn handed_over(&self) -> HandedOver {
        let mut handed = self.handed_over.subscribe();
        let seen = handed
            .wait_for(Option::is_some)
            .await
            .expect("the sender lives in self")
            .clone();
        seen.expect("waited for")
    }

    /// The answer to the upgrade has been written to whoever asked.
    pub fn answered(&self) {
        self.answered.notify_one();
    }

    /// Waits for the answer to the upgrade to be written.
    pub async fn until_answered(&self) {
        self.answered.notified().await;
    }

    /// Closes the copies of the listening sockets: the process stops
    /// serving, and no upgrade can take them any more.
    pub fn close_sockets(&self) {
        self.sockets.lock().expect("sockets lock poisoned").clear();
    }

    /// Lets go of the state file, and of the line to a new process: this
    /// one is done.
    pub fn release(&self) {
        drop(self.state_lock().take());
        drop(
            self.successor_line
                .lock()
                .expect("line lock poisoned")
                .take(),
        );
    }
}

/// The binary this process was started from, as it was named: a path
/// made absolute, or the name found on `PATH`, not resolved through links
/// (so that a `current` link moved to a new release is followed); the
/// file it runs from if that cannot be told.
fn started_from() -> Result<PathBuf, String> {
    let named = std::env::args_os().next().map(PathBuf::from);
    let found = named.and_then(|named| {
        if named.components().count() > 1 {
            return std::path::absolute(named).ok();
        }
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(&named))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => Ok(path),
        None => std::env::current_exe().map_err(|e| e.to_string()),
    }
}

/// `path` as both processes can compare it: its directory resolved, its
/// name kept (a socket or state file that does not exist yet has none to
/// resolve).
pub fn normalized(path: &std::path::Path) -> PathBuf {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    match (dir.canonicalize(), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => path.to_owned(),
    }
}

/// What to say about a new process that did not answer as it should.
fn refusal(answer: std::io::Result<Option<(FromNew, Vec<OwnedFd>)>>) -> String {
    match answer {
        Ok(Some((FromNew::Failed { error }, _))) => format!("could not take over: {error}"),
        Ok(Some((other, _))) => format!("answered out of turn: {other:?}"),
        Ok(None) => "exited before taking over; its log says why".to_owned(),
        Err(e) => format!("could not be heard: {e}"),
    }
}

/// Every upstream's health record, pool by pool.
fn health_of(state: &SharedState) -> Vec<Health> {
    let snapshot = state.load();
    snapshot
        .pools
        .iter()
        .flat_map(|(name, pool)| {
            pool.upstreams.iter().map(move |upstream| Health {
                pool: name.clone(),
                upstream: upstream.authority.to_string(),
                healthy: upstream.is_healthy(),
                probes: upstream.probes(),
            })
        })
        .collect()
}
