//! What the access log says of each request on an HTTP/1 connection: what
//! was asked, taken while its head is still in the buffer; what became of
//! it is the engine's `Served` (`proxy::record`), shared with HTTP/2.
//! Nothing is copied while the access log is off.

use std::time::SystemTime;

use http::{Method, Version};
use tokio::time::Instant;

use super::{ClientIo, Engine};
use crate::access_log::Entry;

/// A request as it began.
pub(super) struct Started {
    /// `None` for bytes that never parsed as a request.
    line: Option<(Method, String, Version)>,
    at: Instant,
    /// The connection's byte counts then.
    used: u64,
    sent: u64,
}

impl<I: ClientIo> Engine<I> {
    /// Whether the access log is on.
    pub(super) fn logs_access(&self) -> bool {
        self.serving.proxy.access_log.is_some()
    }

    /// The parsed request as it begins, if the access log is on.
    pub(super) fn started(&self) -> Option<Started> {
        self.logs_access().then(|| {
            let buf = self.input.unread();
            let head = &self.head;
            let path = String::from_utf8_lossy(head.path.of(buf));
            let query = head.query.map(|q| String::from_utf8_lossy(q.of(buf)));
            let target = crate::access_log::target(&path, query.as_deref());
            Started {
                line: Some((head.method.clone(), target, head.version)),
                at: Instant::now(),
                used: self.input.used,
                sent: self.sent,
            }
        })
    }

    /// Bytes that never made a request, if the access log is on.
    pub(super) fn started_unparsed(&self) -> Option<Started> {
        self.logs_access().then(|| Started {
            line: None,
            at: Instant::now(),
            used: self.input.used,
            sent: self.sent,
        })
    }

    /// Writes the access log's line for the request that `started`, now
    /// over.
    pub(super) fn log_access(&self, started: Option<Started>, now: Instant) {
        let (Some(log), Some(started)) = (&self.serving.proxy.access_log, started) else {
            return;
        };
        let (method, target, protocol) = match &started.line {
            Some((method, target, version)) => (
                method.as_str(),
                target.as_str(),
                if *version == Version::HTTP_10 {
                    "HTTP/1.0"
                } else {
                    "HTTP/1.1"
                },
            ),
            None => ("-", "-", "-"),
        };
        let served = &self.served;
        log.log(&Entry {
            time: SystemTime::now(),
            client: self.serving.client.addr,
            method,
            target,
            protocol,
            status: served.status,
            // The whole head was used, even for a refused one, by now.
            bytes_in: self.input.used.saturating_sub(started.used),
            bytes_out: self.sent - started.sent,
            duration: now.saturating_duration_since(started.at),
            pool: served.pool_name(),
            upstream: served.upstream_name(),
            gate: served.gated,
            request_id: self.request_id.as_str(),
        });
    }
}
