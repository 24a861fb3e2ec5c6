//! Running the migration or verification: `sh -c CMD` in a process group
//! of its own, so that stopping it stops everything it started.

use std::os::fd::AsFd;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{kill_process_group, test_kill_process_group, Pid, Signal};
use tokio::process::Command;
use tokio::sync::watch;

use super::StopSignal;

/// Runs `$1` (the script) with `sh -c` in place of this shell, beside a
/// watchdog that sends SIGTERM to the whole group once process `$2` (this
/// `ctl`) is gone. `exec` keeps the group leader's pid, so `$$` in the
/// script is the group's id.
const WATCHDOG: &str = r#"( while kill -0 "$2" 2>/dev/null; do sleep 1; done; kill -TERM 0 ) </dev/null >/dev/null 2>&1 &
exec sh -c "$1""#;

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
    Interrupted(StopSignal),
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
    mut interrupt: watch::Receiver<Option<StopSignal>>,
) -> Result<(), CommandFailure> {
    let mut command = Command::new("sh");
    // Its own process group, so a signal reaches all it started; no
    // terminal input, which a background group cannot read (a prompt
    // would stop it for good). A watchdog in the group ends the group if
    // this process dies without a chance to (SIGKILL): a migration must
    // not run on, its lock lapsed, beside the next deploy's.
    command
        .arg("-c")
        .arg(WATCHDOG)
        .arg("switchyard-deploy")
        .arg(script)
        .arg(std::process::id().to_string())
        .process_group(0)
        .stdin(Stdio::null())
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
            Err(_) => CommandFailure::Interrupted(StopSignal::Terminate),
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
