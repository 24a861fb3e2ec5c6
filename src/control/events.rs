//! What the control plane did last, as the status document reports it.

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
        }
    }
}
