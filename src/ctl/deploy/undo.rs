//! Undoing a deploy that failed or was stopped: the gate it turned on
//! goes off, if it is still the one it set; what stays is said.

use std::time::{Duration, Instant, SystemTime};

use super::{maintenance, rfc3339, status, Deploy, StepFailure, StepRecord, UNDO_PATIENCE};
use crate::admin::api::{MaintenanceRequest, MaintenanceStatus, StatusDocument};
use crate::ctl::client::Failure;

impl Deploy<'_> {
    /// Undoes what the deploy did after `step` failed, and says so.
    pub(super) async fn undo(&mut self, step: &str, failure: &StepFailure) {
        say_err!(
            "switchyard ctl: deploy of {} failed at step {step}: {}",
            self.args.pool,
            failure.detail
        );
        if self.gate_is_ours {
            let started_at = SystemTime::now();
            let turned_off = self.gate_off_if_ours(Instant::now() + UNDO_PATIENCE).await;
            let (ok, detail) = match turned_off {
                Ok(GateOff::TurnedOff) => (
                    true,
                    "maintenance off: the gate this deploy turned on is off again".to_owned(),
                ),
                Ok(GateOff::NotOurs(why)) => (true, format!("{why}: left as it is")),
                Err(why) => (
                    false,
                    format!(
                        "the gate this deploy turned on is STILL ON ({why}); turn it off with `switchyard ctl maintenance off`"
                    ),
                ),
            };
            say_err!("switchyard ctl: undo: {detail}");
            if let Some(lock) = &self.lock {
                let outcome = if ok { "ok" } else { "failed" };
                lock.record(self.endpoint, "undo", outcome, &detail).await;
            }
            self.steps.push(StepRecord {
                name: "undo",
                ok,
                started_at: rfc3339(started_at),
                ended_at: rfc3339(SystemTime::now()),
                detail,
            });
        }
        // What the proxy says, not what this deploy believes: a switch
        // whose answer was lost may have been made.
        let live = status(self.endpoint).await.map(|s| s.live_pool);
        let switch_tried = self.steps.iter().any(|s| s.name == "switch");
        match live {
            Ok(live) if !switch_tried => {
                say_err!("switchyard ctl: the live pool did not change: still {live}");
            }
            Ok(live) if live == self.args.pool => say_err!(
                "switchyard ctl: {live} is live (the switch was made); `switchyard ctl rollback` returns to {}",
                self.live_before
            ),
            Ok(live) => say_err!("switchyard ctl: the live pool is {live}"),
            Err(_) => say_err!("switchyard ctl: the live pool could not be read back"),
        }
        if self.migrated {
            say_err!(
                "switchyard ctl: the migration ran (or started), and switchyard does not undo it: check the database before trying again"
            );
        }
    }

    /// Turns the gate off if it is still the one this deploy set, trying
    /// again until `deadline` while the proxy cannot be reached (it may be
    /// restarting). The gate is read, then turned off: a change made by
    /// someone else in between is the one thing this cannot see.
    pub(super) async fn gate_off_if_ours(&mut self, deadline: Instant) -> Result<GateOff, String> {
        loop {
            let attempt = async {
                let now = status(self.endpoint).await?;
                let m = &now.maintenance;
                if !m.enabled {
                    return Ok::<_, Failure>(GateOff::NotOurs(
                        "maintenance is off already".to_owned(),
                    ));
                }
                if let Some(why) = self.our_gate.as_ref().and_then(|ours| ours.taken_over(m)) {
                    return Ok(GateOff::NotOurs(why));
                }
                maintenance(self.endpoint, &MaintenanceRequest::off()).await?;
                Ok(GateOff::TurnedOff)
            };
            match attempt.await {
                Ok(off) => {
                    self.gate_is_ours = false;
                    return Ok(off);
                }
                Err(failure) if Instant::now() >= deadline => return Err(failure.joined()),
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }
}

/// What turning the deploy's gate off came to.
pub(super) enum GateOff {
    /// It was this deploy's, and is off.
    TurnedOff,
    /// Someone else's now (why), or off already: left as it is.
    NotOurs(String),
}

/// The gate as this deploy turned it on: when, with what message, in what
/// mode, with no end.
#[derive(Debug)]
pub(super) struct GateMark {
    since: Option<String>,
    message: String,
    mode: String,
}

impl GateMark {
    pub(super) fn of(document: &StatusDocument) -> GateMark {
        let m = &document.maintenance;
        GateMark {
            since: m.since.clone(),
            message: m.message.clone(),
            mode: m.mode.clone(),
        }
    }

    /// Why the gate `now` is no longer this deploy's, if it is not.
    fn taken_over(&self, now: &MaintenanceStatus) -> Option<String> {
        if let Some(until) = &now.until {
            return Some(format!(
                "the gate now ends by itself at {until} (a window, or an operator)"
            ));
        }
        if now.since != self.since || now.message != self.message || now.mode != self.mode {
            return Some("the gate was changed since this deploy turned it on".to_owned());
        }
        None
    }
}
