//! Maintenance planned ahead: windows, and the changes the clock makes to
//! the decisions (a window starts, the gate's end comes, an ended window
//! leaves the list).
//!
//! Everything here is a pure function of the decisions and a time, so the
//! one rule serves the running process, a restart that finds a change due
//! while it was stopped, and every instance of a fleet (the first to commit
//! the change wins; the others find nothing left to do).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Decisions, MaintenanceMode, MaintenanceState};

/// The most windows that may be planned at once: the list is part of every
/// decision written, so it has a bound.
pub const MAX_WINDOWS: usize = 100;
pub use crate::config::MAX_MESSAGE_BYTES;

/// A maintenance window planned ahead: at `starts_at` the gate goes on with
/// `until = ends_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Its name in the admin API: unique for the life of the decisions.
    pub id: String,
    /// When the gate goes on.
    pub starts_at: SystemTime,
    /// When the gate goes off.
    pub ends_at: SystemTime,
    /// The 503's message; `None` follows `maintenance.message`.
    pub message: Option<String>,
    /// Which requests the gate holds back while it runs.
    pub mode: MaintenanceMode,
    /// Whether its start has come (and turned the gate on). An operator may
    /// turn the gate off early; a started window never turns it on again.
    pub started: bool,
}

impl Window {
    /// Whether the gate is this window's: on, ending when the window does.
    pub fn holds_the_gate(&self, gate: &MaintenanceState) -> bool {
        self.started && gate.enabled && gate.until == Some(self.ends_at)
    }
}

/// A window asked for, not yet checked against the others.
#[derive(Debug, Clone)]
pub struct PlannedWindow {
    /// When the gate goes on.
    pub starts_at: SystemTime,
    /// When the gate goes off.
    pub ends_at: SystemTime,
    /// The 503's message; `None` follows `maintenance.message`.
    pub message: Option<String>,
    /// Which requests the gate holds back.
    pub mode: MaintenanceMode,
}

/// Why a window cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowRefusal {
    /// `ends_at` is not after `starts_at`.
    #[error("the window ends ({ends_at}) before it starts ({starts_at})")]
    EndsBeforeStart {
        /// RFC 3339.
        starts_at: String,
        /// RFC 3339.
        ends_at: String,
    },
    /// `ends_at` has passed.
    #[error("the window has already ended ({0}); give an end to come")]
    Ended(String),
    /// It overlaps a planned window.
    #[error("the window overlaps window {id} ({starts_at} to {ends_at}); windows may touch but not overlap")]
    Overlaps {
        /// The other window's id.
        id: String,
        /// RFC 3339.
        starts_at: String,
        /// RFC 3339.
        ends_at: String,
    },
    /// [`MAX_WINDOWS`] are planned already.
    #[error("{MAX_WINDOWS} windows are planned already; cancel one first")]
    TooMany,
}

/// What the clock changed, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimedChange {
    /// A window started: the gate is on until its end.
    WindowStarted(String),
    /// The gate's end came: it is off.
    GateEnded,
    /// Only windows that had ended left the list.
    WindowsEnded,
}

impl Decisions {
    /// When the clock next changes these decisions: the gate's end, the
    /// start of a window, or the end of one. `None` while nothing is timed.
    pub fn next_timed_change(&self) -> Option<SystemTime> {
        let m = &self.maintenance;
        let gate_end = m.until.filter(|_| m.enabled);
        let windows = self.windows.iter().map(|w| match w.started {
            false => w.starts_at,
            true => w.ends_at,
        });
        gate_end.into_iter().chain(windows).min()
    }

    /// These decisions after every change the clock has made by `now`, and
    /// the one that matters most to an operator; `None` when none is due.
    /// The generation is left as it is: committing moves it.
    pub fn timed_changes(&self, now: SystemTime) -> Option<(Decisions, TimedChange)> {
        let mut next = self.clone();
        let mut what = TimedChange::WindowsEnded;
        let m = &next.maintenance;
        if m.enabled && m.until.is_some_and(|until| until <= now) {
            next.maintenance = MaintenanceState::off();
            what = TimedChange::GateEnded;
        }
        next.windows.retain(|w| w.ends_at > now);
        // At most one window runs at `now`: they never overlap.
        if let Some(window) = next
            .windows
            .iter_mut()
            .find(|w| !w.started && w.starts_at <= now)
        {
            window.started = true;
            let since = match next.maintenance.since {
                Some(since) if next.maintenance.enabled => since,
                _ => whole_second(now),
            };
            next.maintenance = MaintenanceState {
                enabled: true,
                message: window.message.clone(),
                retry_after: None,
                since: Some(since),
                mode: window.mode,
                until: Some(window.ends_at),
            };
            what = TimedChange::WindowStarted(window.id.clone());
        }
        (next != *self).then_some((next, what))
    }

    /// These decisions with `planned` added as window `id`, started at once
    /// if its start has come by `now`.
    pub fn with_window(
        &self,
        id: String,
        planned: PlannedWindow,
        now: SystemTime,
    ) -> Result<Decisions, WindowRefusal> {
        let time = super::persist::rfc3339;
        if planned.ends_at <= planned.starts_at {
            return Err(WindowRefusal::EndsBeforeStart {
                starts_at: time(planned.starts_at),
                ends_at: time(planned.ends_at),
            });
        }
        if planned.ends_at <= now {
            return Err(WindowRefusal::Ended(time(planned.ends_at)));
        }
        // Ended windows still listed (the clock has not pruned them yet)
        // neither count nor collide.
        let planned_windows = self.windows.iter().filter(|w| w.ends_at > now);
        if let Some(other) = planned_windows
            .clone()
            .find(|w| planned.starts_at < w.ends_at && w.starts_at < planned.ends_at)
        {
            return Err(WindowRefusal::Overlaps {
                id: other.id.clone(),
                starts_at: time(other.starts_at),
                ends_at: time(other.ends_at),
            });
        }
        if planned_windows.count() >= MAX_WINDOWS {
            return Err(WindowRefusal::TooMany);
        }
        let mut next = self.clone();
        next.windows.push(Window {
            id,
            starts_at: planned.starts_at,
            ends_at: planned.ends_at,
            message: planned.message,
            mode: planned.mode,
            started: false,
        });
        next.windows.sort_by_key(|w| w.starts_at);
        Ok(match next.timed_changes(now) {
            Some((started, _)) => started,
            None => next,
        })
    }

    /// These decisions without window `id`; `None` if there is no such
    /// window. Cancelling the window that holds the gate turns it off.
    pub fn without_window(&self, id: &str) -> Option<Decisions> {
        let at = self.windows.iter().position(|w| w.id == id)?;
        let mut next = self.clone();
        let window = next.windows.remove(at);
        if window.holds_the_gate(&next.maintenance) {
            next.maintenance = MaintenanceState::off();
        }
        Some(next)
    }

    /// The windows not yet ended at `now`, soonest first.
    pub fn windows_at(&self, now: SystemTime) -> impl Iterator<Item = &Window> {
        self.windows.iter().filter(move |w| w.ends_at > now)
    }
}

impl MaintenanceState {
    /// The gate as `maintenance off` leaves it: texts follow the config.
    pub fn off() -> MaintenanceState {
        MaintenanceState {
            enabled: false,
            message: None,
            retry_after: None,
            since: None,
            mode: MaintenanceMode::Full,
            until: None,
        }
    }
}

/// `time` to the whole second: what the state file holds exactly.
pub fn whole_second(time: SystemTime) -> SystemTime {
    let seconds = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn decisions() -> Decisions {
        Decisions {
            live_pool: "blue".to_owned(),
            previous_pool: None,
            maintenance: MaintenanceState::off(),
            windows: Vec::new(),
            generation: 1,
        }
    }

    fn planned(from: u64, to: u64) -> PlannedWindow {
        PlannedWindow {
            starts_at: at(from),
            ends_at: at(to),
            message: Some("planned".to_owned()),
            mode: MaintenanceMode::ReadOnly,
        }
    }

    #[test]
    fn a_window_turns_the_gate_on_at_its_start_and_off_at_its_end() {
        let d = decisions()
            .with_window("w2".to_owned(), planned(100, 200), at(0))
            .unwrap();
        assert!(!d.maintenance.enabled);
        assert_eq!(d.next_timed_change(), Some(at(100)));
        assert_eq!(d.timed_changes(at(99)), None);

        let (d, what) = d.timed_changes(at(100)).unwrap();
        assert_eq!(what, TimedChange::WindowStarted("w2".to_owned()));
        assert!(d.maintenance.enabled);
        assert_eq!(d.maintenance.until, Some(at(200)));
        assert_eq!(d.maintenance.mode, MaintenanceMode::ReadOnly);
        assert_eq!(d.maintenance.message.as_deref(), Some("planned"));
        assert_eq!(d.next_timed_change(), Some(at(200)));
        // Applying the same change twice (two instances of a fleet) is one change.
        assert_eq!(d.timed_changes(at(150)), None);

        let (d, what) = d.timed_changes(at(200)).unwrap();
        assert_eq!(what, TimedChange::GateEnded);
        assert!(!d.maintenance.enabled);
        assert!(d.windows.is_empty());
        assert_eq!(d.next_timed_change(), None);
    }

    #[test]
    fn touching_windows_hand_the_gate_over() {
        let d = decisions()
            .with_window("a".to_owned(), planned(100, 200), at(0))
            .unwrap()
            .with_window("b".to_owned(), planned(200, 300), at(0))
            .unwrap();
        let (d, _) = d.timed_changes(at(100)).unwrap();
        let (d, what) = d.timed_changes(at(200)).unwrap();
        assert_eq!(what, TimedChange::WindowStarted("b".to_owned()));
        assert_eq!(d.maintenance.until, Some(at(300)));
        assert_eq!(d.windows.len(), 1);
    }

    #[test]
    fn windows_that_overlap_end_first_or_have_ended_are_refused() {
        let d = decisions()
            .with_window("a".to_owned(), planned(100, 200), at(0))
            .unwrap();
        for (from, to) in [(150, 250), (50, 150), (120, 180), (50, 250)] {
            let refused = d.with_window("b".to_owned(), planned(from, to), at(0));
            assert!(
                matches!(refused, Err(WindowRefusal::Overlaps { ref id, .. }) if id == "a"),
                "{from}-{to}: {refused:?}"
            );
        }
        assert!(matches!(
            d.with_window("b".to_owned(), planned(300, 300), at(0)),
            Err(WindowRefusal::EndsBeforeStart { .. })
        ));
        assert!(matches!(
            d.with_window("b".to_owned(), planned(300, 250), at(0)),
            Err(WindowRefusal::EndsBeforeStart { .. })
        ));
        assert!(matches!(
            d.with_window("b".to_owned(), planned(10, 20), at(20)),
            Err(WindowRefusal::Ended(_))
        ));
    }

    #[test]
    fn a_window_created_after_its_start_begins_at_once() {
        let d = decisions()
            .with_window("a".to_owned(), planned(100, 200), at(150))
            .unwrap();
        assert!(d.maintenance.enabled);
        assert_eq!(d.maintenance.since, Some(at(150)));
        assert!(d.windows[0].started);
    }

    #[test]
    fn cancelling_the_running_window_turns_the_gate_off_and_no_other() {
        let d = decisions()
            .with_window("a".to_owned(), planned(100, 200), at(0))
            .unwrap()
            .with_window("b".to_owned(), planned(300, 400), at(0))
            .unwrap();
        let (running, _) = d.timed_changes(at(100)).unwrap();
        let cancelled = running.without_window("b").unwrap();
        assert!(cancelled.maintenance.enabled);
        let cancelled = running.without_window("a").unwrap();
        assert!(!cancelled.maintenance.enabled);
        assert_eq!(cancelled.windows.len(), 1);
        assert_eq!(running.without_window("zz"), None);

        // Turned off by hand, then on again with another end: not the
        // window's gate any more.
        let mut taken_over = running.clone();
        taken_over.maintenance.until = Some(at(500));
        assert!(taken_over.without_window("a").unwrap().maintenance.enabled);
    }

    #[test]
    fn a_window_missed_entirely_leaves_the_list_without_touching_the_gate() {
        let d = decisions()
            .with_window("a".to_owned(), planned(100, 200), at(0))
            .unwrap();
        let (d, what) = d.timed_changes(at(250)).unwrap();
        assert_eq!(what, TimedChange::WindowsEnded);
        assert!(!d.maintenance.enabled);
        assert!(d.windows.is_empty());
    }

    #[test]
    fn the_number_of_windows_is_bounded() {
        let mut d = decisions();
        for i in 0..MAX_WINDOWS as u64 {
            d = d
                .with_window(format!("w{i}"), planned(100 + i * 10, 110 + i * 10), at(0))
                .unwrap();
        }
        assert_eq!(
            d.with_window("one-more".to_owned(), planned(5000, 5001), at(0)),
            Err(WindowRefusal::TooMany)
        );
    }
}
