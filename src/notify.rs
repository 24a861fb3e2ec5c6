//! What the service manager is told (systemd's `Type=notify`): ready once
//! every listener is bound and the decisions are restored, stopping once a
//! drain begins. Without `$NOTIFY_SOCKET` (not under systemd) nothing is
//! sent.

use sd_notify::NotifyState;
use tracing::warn;

/// Every listener is bound and accepting, the decisions restored.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// A binary upgrade's new process serves now: systemd is to follow it
/// (with `NotifyAccess=main`, only the main process may say so).
pub fn main_pid(pid: u32) {
    send(&[NotifyState::MainPid(pid)]);
}

/// The listeners are closed; requests in flight are draining.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(false, states) {
        warn!(%error, "cannot tell the service manager (NOTIFY_SOCKET)");
    }
}
