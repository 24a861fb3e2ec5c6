//! The admin API's JSON: request bodies, the status document, errors.
//!
//! These types are shared by the server and by `switchyard ctl`, so the two
//! can't drift apart. Field names are fixed by the interface contract;
//! fields may be added, never renamed or removed.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde::{Deserialize, Serialize};

mod status;

pub use status::*;

use crate::bypass;
use crate::config::{Maintenance, MAX_RETRY_AFTER};
use crate::control::ControlError;
use crate::envelope::ErrorDocument;
use crate::state::persist::{parse_rfc3339, rfc3339};
use crate::state::schedule::{whole_second, PlannedWindow};
use crate::state::{MaintenanceMode, Snapshot, Window};
use crate::upgrade::UpgradeError;

/// `PUT /v1/maintenance`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    /// On or off.
    pub enabled: bool,
    /// The 503's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The 503's `Retry-After`, as a humantime string (`"10m"`); parsed by
    /// [`MaintenanceRequest::retry_after`] so a bad one is named in the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    /// `full` (the default) or `read_only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// When the gate turns itself off (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// `message`, if it is a fit maintenance message (see
/// [`crate::config::message_fault`]).
pub fn checked_message(message: Option<&str>) -> Result<(), AdminError> {
    match message.and_then(crate::config::message_fault) {
        Some(fault) => Err(AdminError::BadRequest(format!("message: {fault}"))),
        None => Ok(()),
    }
}

impl MaintenanceRequest {
    /// `{"enabled": false}`: maintenance off.
    pub fn off() -> MaintenanceRequest {
        MaintenanceRequest {
            enabled: false,
            message: None,
            retry_after: None,
            mode: None,
            until: None,
        }
    }

    /// The requested end, if any: a time to come.
    pub fn until(&self) -> Result<Option<SystemTime>, AdminError> {
        let Some(text) = &self.until else {
            return Ok(None);
        };
        let until = parse_time("until", text)?;
        if until <= SystemTime::now() {
            return Err(AdminError::BadRequest(format!(
                "until: `{text}` has passed; give a time to come"
            )));
        }
        Ok(Some(until))
    }

    /// The requested mode; `full` when none is given.
    pub fn mode(&self) -> Result<MaintenanceMode, AdminError> {
        parse_mode(self.mode.as_deref())
    }

    /// The requested `Retry-After`, if any.
    pub fn retry_after(&self) -> Result<Option<Duration>, AdminError> {
        let Some(text) = &self.retry_after else {
            return Ok(None);
        };
        let retry_after = humantime::parse_duration(text).map_err(|e| {
            AdminError::BadRequest(format!(
                "retry_after: `{text}` is not a duration ({e}); write it like \"30s\" or \"10m\""
            ))
        })?;
        if retry_after > MAX_RETRY_AFTER {
            return Err(AdminError::BadRequest(format!(
                "retry_after: `{text}` is longer than the most allowed, {}",
                humantime::format_duration(MAX_RETRY_AFTER)
            )));
        }
        Ok(Some(retry_after))
    }
}

/// A mode as the admin API spells it; `full` when none is given.
fn parse_mode(text: Option<&str>) -> Result<MaintenanceMode, AdminError> {
    match text {
        None => Ok(MaintenanceMode::Full),
        Some(text) => MaintenanceMode::parse(text).ok_or_else(|| {
            AdminError::BadRequest(format!(
                "mode: `{text}` is not a mode; use \"full\" or \"read_only\""
            ))
        }),
    }
}

/// The RFC 3339 time `text` of the field `field`, to the whole second
/// (what the state file and a fleet's copy hold, so that every copy of a
/// decision is the same).
fn parse_time(field: &str, text: &str) -> Result<SystemTime, AdminError> {
    parse_rfc3339(text)
        .map(whole_second)
        .map_err(|e| {
            AdminError::BadRequest(format!(
                "{field}: `{text}` is not an RFC 3339 time ({e}); write it like \"2026-12-01T10:30:00Z\""
            ))
        })
}

/// `POST /v1/maintenance/windows`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowRequest {
    /// When the gate goes on (RFC 3339).
    pub starts_at: String,
    /// When it goes off (RFC 3339).
    pub ends_at: String,
    /// The 503's message; without one, `maintenance.message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `full` (the default) or `read_only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl WindowRequest {
    /// The window asked for, its fields parsed (the control plane checks
    /// it against the others).
    pub fn planned(&self) -> Result<PlannedWindow, AdminError> {
        checked_message(self.message.as_deref())?;
        Ok(PlannedWindow {
            starts_at: parse_time("starts_at", &self.starts_at)?,
            ends_at: parse_time("ends_at", &self.ends_at)?,
            message: self.message.clone(),
            mode: parse_mode(self.mode.as_deref())?,
        })
    }
}

/// A window, as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowDocument {
    /// Its id, for `DELETE /v1/maintenance/windows/{id}`.
    pub id: String,
    /// When the gate goes on (RFC 3339).
    pub starts_at: String,
    /// When it goes off (RFC 3339).
    pub ends_at: String,
    /// The 503's message while it runs.
    pub message: String,
    /// `full` or `read_only`.
    pub mode: String,
}

impl WindowDocument {
    /// `window` as shown under `config` (whose message it may follow).
    pub fn of(window: &Window, config: &Maintenance) -> WindowDocument {
        WindowDocument {
            id: window.id.clone(),
            starts_at: rfc3339(window.starts_at),
            ends_at: rfc3339(window.ends_at),
            message: window
                .message
                .clone()
                .unwrap_or_else(|| config.message.clone()),
            mode: window.mode.as_str().to_owned(),
        }
    }

    /// The windows of `snapshot` not yet ended, soonest first.
    pub fn list(snapshot: &Snapshot) -> Vec<WindowDocument> {
        snapshot
            .decisions
            .windows_at(SystemTime::now())
            .map(|w| WindowDocument::of(w, &snapshot.config.maintenance))
            .collect()
    }
}

/// `GET /v1/maintenance/windows`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowList {
    /// The windows not yet ended, soonest first.
    pub windows: Vec<WindowDocument>,
}

/// `POST /v1/bypass-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BypassTokenRequest {
    /// How long the token holds, as a humantime string (`"1h"`).
    pub ttl: String,
    /// Who or what it is for, signed into it (`"qa"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl BypassTokenRequest {
    /// The token's life: more than nothing, at most [`bypass::MAX_TTL`].
    pub fn ttl(&self) -> Result<Duration, AdminError> {
        let ttl = humantime::parse_duration(&self.ttl).map_err(|e| {
            AdminError::BadRequest(format!(
                "ttl: `{}` is not a duration ({e}); write it like \"1h\"",
                self.ttl
            ))
        })?;
        if ttl < Duration::from_secs(1) || ttl > bypass::MAX_TTL {
            return Err(AdminError::BadRequest(format!(
                "ttl: `{}` is not between 1s and {}",
                self.ttl,
                humantime::format_duration(bypass::MAX_TTL)
            )));
        }
        Ok(ttl)
    }

    /// The label, checked: short, and no control characters (it is logged).
    pub fn label(&self) -> Result<&str, AdminError> {
        let label = self.label.as_deref().unwrap_or("");
        if label.len() > bypass::MAX_LABEL_BYTES || label.chars().any(char::is_control) {
            return Err(AdminError::BadRequest(format!(
                "label: at most {} bytes, without control characters",
                bypass::MAX_LABEL_BYTES
            )));
        }
        Ok(label)
    }
}

/// The answer of `POST /v1/bypass-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BypassTokenDocument {
    /// The token, for `X-Switchyard-Bypass` or the `switchyard_bypass` cookie.
    pub token: String,
    /// When it stops holding (RFC 3339).
    pub expires_at: String,
}

/// The answer of `POST /v1/pools/{name}/probe`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeDocument {
    /// The pool probed.
    pub pool: String,
    /// Whether at least one upstream passed (what a switch asks).
    pub passed: bool,
    /// Each upstream's result, in the pool's order.
    pub upstreams: Vec<ProbeOutcome>,
}

/// One upstream's probe in a [`ProbeDocument`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeOutcome {
    /// `host:port`.
    pub addr: String,
    /// Why it did not pass, or null.
    pub error: Option<String>,
}

/// `POST /v1/deploys`: take the deploy lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployLockRequest {
    /// The pool the deploy makes live.
    pub pool: String,
    /// Who runs it.
    pub holder: String,
    /// The lock's id, to take it again after the proxy lost it (a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl DeployLockRequest {
    /// Refuses an id the proxy did not make, and a holder that would not
    /// fit an audit line.
    pub fn check(&self) -> Result<(), AdminError> {
        if let Some(id) = &self.id {
            if !crate::control::deploy::is_lock_id(id) {
                return Err(AdminError::BadRequest(format!(
                    "id: `{}` is not a deploy lock id (the proxy makes them: `d-` and 16 hex digits)",
                    id.escape_debug()
                )));
            }
        }
        if self.holder.len() > 200 || self.holder.chars().any(char::is_control) {
            return Err(AdminError::BadRequest(
                "holder: at most 200 bytes, without control characters".to_owned(),
            ));
        }
        Ok(())
    }
}

/// `POST /v1/deploys/{id}/steps`: one step of a deploy, for the audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployStep {
    /// The step: `check`, `gate`, `migrate`, `verify`, `switch`, `ungate`,
    /// `watch`, or `undo`.
    pub name: String,
    /// `started`, `ok` or `failed`.
    pub outcome: String,
    /// What happened, in words.
    #[serde(default)]
    pub detail: String,
}

impl DeployStep {
    /// Refuses names and outcomes that are not a deploy's, and details
    /// longer than an audit line should be.
    pub fn check(&self) -> Result<(), AdminError> {
        const NAMES: [&str; 8] = [
            "check", "gate", "migrate", "verify", "switch", "ungate", "watch", "undo",
        ];
        if !NAMES.contains(&self.name.as_str()) {
            return Err(AdminError::BadRequest(format!(
                "name: `{}` is not a deploy step ({})",
                self.name,
                NAMES.join(", ")
            )));
        }
        if !["started", "ok", "failed"].contains(&self.outcome.as_str()) {
            return Err(AdminError::BadRequest(format!(
                "outcome: `{}` is not started, ok or failed",
                self.outcome
            )));
        }
        if self.detail.len() > 4096 {
            return Err(AdminError::BadRequest(
                "detail: at most 4096 bytes".to_owned(),
            ));
        }
        Ok(())
    }
}

/// `POST /v1/switch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    /// The pool to make live.
    pub to: String,
    /// Skip the health probe.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/rollback` (the body is optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Skip the health probe.
    #[serde(default)]
    pub force: bool,
}

/// `PATCH /service-context`: the compatibility route. Other fields of an
/// application's service context are ignored, as that route always did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceContextRequest {
    /// The maintenance flag.
    pub maintenance: bool,
    /// The 503's message; without one, `maintenance.message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The answer of `GET` and `PATCH /service-context`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceContext {
    /// The maintenance flag.
    pub maintenance: bool,
}

/// Why the admin API refused a request.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Malformed JSON, a wrong type, a missing field.
    #[error("{0}")]
    BadRequest(String),
    /// No valid bearer token on the TCP listener.
    #[error("a valid `Authorization: Bearer <token>` header is required")]
    Unauthorized,
    /// A read-only token asked for a call that is not a read.
    #[error("this token may only read (GET /v1/status, GET /v1/maintenance/windows, GET /metrics, GET /v1/events, the dashboard); {method} {path} needs the full admin token")]
    Forbidden {
        /// The method used.
        method: http::Method,
        /// The path asked for.
        path: String,
    },
    /// A browser's request from a page of another origin, or naming this
    /// listener by a name a rebound DNS answer could give (see
    /// `super::origin`).
    #[error("{0}")]
    CrossOrigin(&'static str),
    /// As many events streams are open as may be.
    #[error("too many events streams are open here; close one (at most half of admin.max_connections per listener, half of that for the read-only token)")]
    TooManyStreams,
    /// No such endpoint.
    #[error("no endpoint {0}")]
    NotFound(String),
    /// The endpoint exists but not with this method.
    #[error("{path} does not accept {method}")]
    MethodNotAllowed {
        /// The method used.
        method: http::Method,
        /// The path asked for.
        path: String,
    },
    /// The body is larger than any admin call needs.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// A bypass token was asked for, but no secret signs them.
    #[error("bypass tokens are not configured: set maintenance.bypass_secret_file")]
    BypassNotConfigured,
    /// The control plane refused the change.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A binary upgrade did not happen.
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
}

impl AdminError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::Forbidden { .. } | AdminError::CrossOrigin(_) => StatusCode::FORBIDDEN,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::TooManyStreams => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::BypassNotConfigured => StatusCode::CONFLICT,
            AdminError::Upgrade(e) => match e {
                UpgradeError::InProgress
                | UpgradeError::AlreadyHandedOver(_)
                | UpgradeError::Unavailable(_) => StatusCode::CONFLICT,
                UpgradeError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
                UpgradeError::Control(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            AdminError::Control(e) => match e {
                ControlError::UnknownPool(_) => StatusCode::NOT_FOUND,
                ControlError::PoolUnhealthy { .. }
                | ControlError::NoPreviousPool
                | ControlError::PreviousPoolGone(_)
                | ControlError::GenerationExhausted => StatusCode::CONFLICT,
                ControlError::Persist(_) | ControlError::NotDurable(_) | ControlError::Raced => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                ControlError::InvalidConfig(_) => StatusCode::UNPROCESSABLE_ENTITY,
                ControlError::UnknownWindow(_) | ControlError::UnknownDeploy(_) => {
                    StatusCode::NOT_FOUND
                }
                ControlError::DeployRunning(_) => StatusCode::CONFLICT,
                ControlError::Window(_) => StatusCode::BAD_REQUEST,
                ControlError::ClusterUnavailable(_)
                | ControlError::HandedOver
                | ControlError::StateFileUnlocked => StatusCode::SERVICE_UNAVAILABLE,
                ControlError::NotAcknowledged(_) => StatusCode::GATEWAY_TIMEOUT,
            },
        }
    }

    /// The machine-readable `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::BadRequest(_) => "bad_request",
            AdminError::Unauthorized => "unauthorized",
            AdminError::Forbidden { .. } | AdminError::CrossOrigin(_) => "forbidden",
            AdminError::NotFound(_) => "not_found",
            AdminError::TooManyStreams => "too_many_streams",
            AdminError::MethodNotAllowed { .. } => "method_not_allowed",
            AdminError::TooLarge(_) => "payload_too_large",
            AdminError::BypassNotConfigured => "bypass_not_configured",
            AdminError::Upgrade(e) => match e {
                UpgradeError::InProgress => "upgrade_in_progress",
                UpgradeError::AlreadyHandedOver(_) | UpgradeError::Control(_) => "handed_over",
                UpgradeError::Failed(_) => "upgrade_failed",
                UpgradeError::Unavailable(_) => "upgrade_unavailable",
            },
            AdminError::Control(e) => match e {
                ControlError::UnknownPool(_) => "unknown_pool",
                ControlError::PoolUnhealthy { .. } => "pool_unhealthy",
                ControlError::NoPreviousPool | ControlError::PreviousPoolGone(_) => {
                    "no_previous_pool"
                }
                ControlError::GenerationExhausted => "generation_exhausted",
                ControlError::Persist(_) => "state_not_saved",
                ControlError::NotDurable(_) => "state_not_durable",
                ControlError::InvalidConfig(_) => "invalid_config",
                ControlError::ClusterUnavailable(_) => "cluster_unavailable",
                ControlError::NotAcknowledged(_) => "not_acknowledged",
                ControlError::Raced => "raced",
                ControlError::UnknownWindow(_) => "unknown_window",
                ControlError::UnknownDeploy(_) => "unknown_deploy",
                ControlError::DeployRunning(_) => "deploy_running",
                ControlError::Window(_) => "bad_request",
                ControlError::HandedOver => "handed_over",
                ControlError::StateFileUnlocked => "state_file_unlocked",
            },
        }
    }

    /// The answer's body.
    pub fn document(&self) -> ErrorDocument {
        let (message, details) = match self {
            AdminError::Control(ControlError::InvalidConfig(refusal)) => (
                "the config file is invalid; the old config keeps serving".to_owned(),
                refusal.lines(),
            ),
            AdminError::Control(ControlError::PoolUnhealthy { pool, failures }) => (
                format!(
                    "no upstream of pool `{pool}` passed its health probe; fix it or use force"
                ),
                failures
                    .iter()
                    .map(|p| match &p.outcome {
                        Ok(()) => format!("{}: passed", p.upstream),
                        Err(e) => format!("{}: {e}", p.upstream),
                    })
                    .collect(),
            ),
            AdminError::Control(ControlError::NotAcknowledged(late)) => (
                "the change is committed, but these instances did not apply it within cluster.ack_timeout; they will when they catch up".to_owned(),
                late.clone(),
            ),
            AdminError::Control(ControlError::ClusterUnavailable(reason)) => {
                (reason.clone(), Vec::new())
            }
            AdminError::Control(ControlError::Persist(e)) => {
                (format!("{e}; nothing changed"), Vec::new())
            }
            other => (other.to_string(), Vec::new()),
        };
        ErrorDocument::new(self.code(), message).with_details(details)
    }
}
