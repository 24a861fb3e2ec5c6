//! Running the migration or verification: `sh -c CMD` in a process group
//! of its own, so that stopping it stops everything it started.

use std::os::fd::AsFd;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{kill_process_group, test_kill_process_group, Pid, Signal};
use tokio::process::Command;
use tokio::sync::watch;

use super::Interrupt;

/// How long a command has to end after SIGTERM before it gets SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// How a command ended, when it did not exit 0.
#[derive(Debug)]
pub enum CommandFailure {
    /// It could not be started.
    Spawn(std::io::Error),
    /// It exited with a code other than 0, or was killed by a signal.
    Exited(ExitStatus),
    /// It ran longer than `--timeout` and was stopped.
    TimedOut(Duration),
    /// The deploy was interrupted and the command stopped.
    Interrupted(Interrupt),
}

/// Runs `sh -c script` with `env`, its output to the terminal (to stderr
/// when `to_stderr`), until it exits, `timeout` passes, or `interrupt`
/// says the deploy is to stop; then its group gets SIGTERM, and SIGKILL
/// after [`GRACE`].
pub async fn run(
    script: &str,
    env: &[(&str, String)],
    to_stderr: bool,
    timeout: Option<Duration>,
    mut interrupt: watch::Receiver<Option<Interrupt>>,
) -> Result<(), CommandFailure> {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .process_group(0)
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    if to_stderr {
        // With --json, stdout carries the one document and nothing else.
        match std::io::stderr().as_fd().try_clone_to_owned() {
            Ok(fd) => {
                command.stdout(Stdio::from(fd));
            }
            Err(error) => return Err(CommandFailure::Spawn(error)),
        }
    }
    let mut child = command.spawn().map_err(CommandFailure::Spawn)?;
    let group = child.id().and_then(|id| Pid::from_raw(id as i32));
    let timed_out = async {
        match timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let stop = tokio::select! {
        status = child.wait() => {
            return match status {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(CommandFailure::Exited(status)),
                Err(error) => Err(CommandFailure::Spawn(error)),
            };
        }
        () = timed_out => CommandFailure::TimedOut(timeout.unwrap_or_default()),
        interrupted = interrupt.wait_for(Option::is_some) => match interrupted {
            Ok(why) => CommandFailure::Interrupted(why.expect("waited for Some")),
            Err(_) => CommandFailure::Interrupted(Interrupt::Terminate),
        },
    };
    if let Some(group) = group {
        let _ = kill_process_group(group, Signal::TERM);
        // The shell may end at once while what it started goes on: the
        // whole group gets its grace, then SIGKILL.
        let ended = tokio::time::timeout(GRACE, async {
            let _ = child.wait().await;
            while test_kill_process_group(group).is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if ended.is_err() {
            let _ = kill_process_group(group, Signal::KILL);
            let _ = child.wait().await;
        }
    }
    Err(stop)
}

impl std::fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandFailure::Spawn(error) => write!(f, "could not run it: {error}"),
            CommandFailure::Exited(status) => match status.code() {
                Some(code) => write!(f, "it exited with {code}"),
                None => write!(f, "it was killed ({status})"),
            },
            CommandFailure::TimedOut(limit) => write!(
                f,
                "it did not finish within {} (--timeout) and was stopped",
                humantime::format_duration(*limit)
            ),
            CommandFailure::Interrupted(why) => write!(f, "{why}: it was stopped"),
        }
    }
}
