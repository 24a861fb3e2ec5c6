//! What the control plane did last, as the status document reports it and
//! the events stream announces it, and where each change came from, as the
//! audit log names it.

use std::fmt;
use std::net::SocketAddr;
use std::time::SystemTime;

/// What happened last, for the status document.
#[derive(Debug, Clone)]
pub struct Event {
    /// What kind of change.
    pub kind: EventKind,
    /// When.
    pub at: SystemTime,
    /// What, in words (with figures for an automatic rollback).
    pub reason: String,
}

/// The kinds of [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A switch.
    Switch,
    /// A manual rollback.
    Rollback,
    /// The watch rolled a switch back.
    AutoRollback,
    /// The watch wanted to roll back, but the previous pool failed its probe.
    AutoRollbackRefused,
    /// The gate turned on or off.
    Maintenance,
    /// A reload, applied or refused.
    Reload,
    /// The watch after a switch ended without a rollback (announced on the
    /// events stream only; it changes nothing).
    WatchPassed,
}

impl EventKind {
    /// The status document's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Switch => "switch",
            EventKind::Rollback => "rollback",
            EventKind::AutoRollback => "auto_rollback",
            EventKind::AutoRollbackRefused => "auto_rollback_refused",
            EventKind::Maintenance => "maintenance",
            EventKind::Reload => "reload",
            EventKind::WatchPassed => "watch_passed",
        }
    }
}

/// Where a change came from, for the audit log.
#[derive(Debug, Clone, Copy)]
pub enum Via {
    /// The admin unix socket, from a process of this user id (when the
    /// kernel says).
    Socket(Option<u32>),
    /// The TCP admin listener, from this client.
    Tcp(SocketAddr),
    /// `SIGHUP`.
    Signal,
    /// The config file watcher.
    Watcher,
    /// The watch after a switch (an automatic rollback).
    SwitchWatch,
    /// The clock: the gate's end came.
    Schedule,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Socket(Some(uid)) => write!(f, "admin socket uid {uid}"),
            Via::Socket(None) => f.write_str("admin socket"),
            Via::Tcp(peer) => write!(f, "admin tcp {peer}"),
            Via::Signal => f.write_str("SIGHUP"),
            Via::Schedule => f.write_str("schedule"),
            Via::Watcher => f.write_str("config watcher"),
            Via::SwitchWatch => f.write_str("switch watch"),
        }
    }
}
