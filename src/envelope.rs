//! The JSON error envelope of every answer switchyard makes itself, on the
//! public listeners and on the admin API alike:
//! `{"error": {"code": "...", "message": "...", "details": [...],
//! "request_id": "..."}}`, with `details` only where there are several
//! items and `request_id` only in the data plane's. `ctl` reads it back.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// `{"error": {...}}`, the shape of every refusal and failure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDocument {
    /// The error.
    pub error: ErrorBody,
}

/// The inside of an error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code (`unknown_pool`, `upstream_timeout`, ...).
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
    /// Every item, where there are several (config problems, failing
    /// upstreams).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    /// The request's `X-Request-Id`, in the data plane's answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ErrorDocument {
    /// An error with `code` and `message` and no details.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ErrorDocument {
        ErrorDocument {
            error: ErrorBody {
                code: code.into(),
                message: message.into(),
                details: Vec::new(),
                request_id: None,
            },
        }
    }

    /// The same, with `details`.
    pub fn with_details(mut self, details: Vec<String>) -> ErrorDocument {
        self.error.details = details;
        self
    }

    /// The same, naming the request it answers.
    pub fn with_request_id(mut self, request_id: &str) -> ErrorDocument {
        self.error.request_id = Some(request_id.to_owned());
        self
    }

    /// Its JSON on one line: what the data plane answers.
    pub fn to_json(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("an error document serializes"))
    }
}
