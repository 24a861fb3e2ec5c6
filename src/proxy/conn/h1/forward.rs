//! Forwarding a request on one of its upstream's own connections, driven
//! from the client connection's task.
//!
//! ```text
//! pick an upstream ─► take an idle connection or open one (retry a failed
//!   connect once elsewhere) ─► write the edited head and the body bytes
//!   already read, in one write ─► stream the rest of the body, watching for
//!   an early answer ─► read the answer's head (skip 1xx; 101 ─► tunnel)
//!   ─► relay the answer (see `relay`) ─► give the connection back
//! ```
//!
//! Who a failure is blamed on decides what follows: only the upstream's
//! own failures (a refused connect, a fresh connection cut before an
//! answer) count against its health. A kept-alive connection the upstream
//! closed just as it was reused is nobody's fault, and a request that can
//! be sent again (idempotent, no body) is, on a new connection. A client's
//! broken body is the client's `400`.

use std::sync::Arc;

use http::{Method, StatusCode, Version};
use tokio::time::Instant;
use tracing::{debug, info};

use super::relay::Upload;
use super::{ClientIo, Engine};
use crate::config::Timeouts;
use crate::http1::write::{Persistence, RequestEdits, ResponseEdits};
use crate::http1::{self, Framing};
use crate::proxy::exchange::{
    self, is_idempotent, lost, timed_out, write_all, Picked, MAX_RESPONSE_HEAD,
};
use crate::proxy::tunnel::{retired, TunnelOrigin};
use crate::proxy::ProxyError;
use crate::shutdown::Phase;
use crate::upstream::connection::{self, Connection};
use crate::upstream::{InFlight, Pool};

/// The interim answer to a client that waits before sending its body.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Where a request goes and what forwarding it needs, from the snapshot
/// it was routed by.
pub(in crate::proxy::conn) struct Destination {
    pub(in crate::proxy::conn) pool: Arc<Pool>,
    pub(in crate::proxy::conn) timeouts: Timeouts,
    /// The path to send, when its one meaning is spelled differently.
    pub(in crate::proxy::conn) path: Option<String>,
    /// For a WebSocket upgrade: what the gate keeps judging its tunnel by.
    pub(in crate::proxy::conn) tunnel: Option<TunnelAsk>,
}

/// What a tunnel is judged by after it opens.
pub(in crate::proxy::conn) struct TunnelAsk {
    pub(in crate::proxy::conn) path: String,
    pub(in crate::proxy::conn) token: Option<String>,
}

/// How an exchange failed.
pub(super) enum Failed {
    /// Before any byte of an answer went to the client: it gets this.
    Answer(ProxyError),
    /// Once its answer was under way: the client's connection is cut, so
    /// that it sees an incomplete answer, not a complete wrong one.
    Cut,
    /// The client left before its answer was complete: nobody's failure to
    /// count, and the upstream's connection goes with the exchange.
    Gone,
}

impl From<ProxyError> for Failed {
    fn from(error: ProxyError) -> Failed {
        Failed::Answer(error)
    }
}

/// What the request's exchange needs to know of it once its head has
/// left the input buffer.
#[derive(Clone, Copy)]
pub(super) struct Asked {
    pub(super) to_head: bool,
    pub(super) http10: bool,
    pub(super) close: bool,
    /// Whether the request had a body.
    pub(super) body: bool,
}

impl<I: ClientIo> Engine<I> {
    /// Forwards the parsed request to `destination` and relays the answer;
    /// whether the client's connection goes on.
    pub(super) async fn forward(&mut self, destination: Destination) -> bool {
        let method = self.head.method.clone();
        let mut upload = Upload::new(self.head.framing);
        let outcome = match self.body_begins(&destination.timeouts).await {
            Ok(continued) => {
                self.exchange(&destination, &method, &mut upload, continued)
                    .await
            }
            Err(error) => Err(error),
        };
        let pool = &destination.pool;
        if self.logs_access() {
            self.served.pool = Some(pool.clone());
        }
        match outcome {
            Ok((status, keep)) => {
                pool.requests.count(status);
                self.served.status = status.as_u16();
                keep
            }
            Err(Failed::Answer(error)) => {
                crate::proxy::log_failure(&error, &self.serving.client);
                pool.requests.count(error.status());
                self.served.status = error.status().as_u16();
                // Part of the body may be unread: the client must not send
                // its next request on this connection.
                let keep = upload.done
                    && !self.head.close
                    && *self.phase.borrow() == Phase::Serving
                    && !error.closes_connection();
                self.out.clear();
                let http10 = self.head.version == Version::HTTP_10;
                let persistence = Persistence::of(keep, http10);
                error.write_http1(&method, &self.request_id, persistence, &mut self.out);
                self.write_out().await.is_ok() && keep
            }
            Err(Failed::Cut) => {
                pool.requests.count(StatusCode::BAD_GATEWAY);
                false
            }
            Err(Failed::Gone) => {
                debug!("the client left before its answer was complete");
                false
            }
        }
    }

    /// Waits, within `timeouts.header`, for the first bytes of a body the
    /// request announces, before any upstream is involved: a client that
    /// announces a body and sends none gets its 408 without costing an
    /// upstream a connection, and a malformed first chunk never reaches
    /// one. A client that waits for `100 Continue` is told to go on first
    /// (returns whether it was).
    async fn body_begins(&mut self, timeouts: &Timeouts) -> Result<bool, Failed> {
        if !self.head.framing.has_body() || self.input.unread().len() > self.head.len {
            return Ok(false);
        }
        let continued = self.head.expects_continue;
        if continued {
            self.out.clear();
            self.out.extend_from_slice(CONTINUE);
            if self.write_out().await.is_err() {
                return Err(Failed::Cut);
            }
        }
        match tokio::time::timeout(timeouts.header, self.input.read_from(&mut self.io)).await {
            Ok(Ok(1..)) => Ok(continued),
            Ok(Ok(0)) => Err(ProxyError::BadRequestBody(
                "the client closed before its body began".to_owned(),
            )
            .into()),
            Ok(Err(error)) => Err(ProxyError::BadRequestBody(error.to_string()).into()),
            Err(_) => Err(ProxyError::ClientBodyTimeout(timeouts.header).into()),
        }
    }

    /// The exchange itself: the answer's status and whether the client's
    /// connection goes on, or how it failed. `continued`: whether the
    /// client was already told `100 Continue`.
    async fn exchange(
        &mut self,
        destination: &Destination,
        method: &Method,
        upload: &mut Upload,
        continued: bool,
    ) -> Result<(StatusCode, bool), Failed> {
        let Destination {
            pool,
            timeouts,
            path,
            ..
        } = destination;
        let asked = Asked {
            to_head: *method == Method::HEAD,
            http10: self.head.version == Version::HTTP_10,
            close: self.head.close,
            body: upload.has_body(),
        };
        let websocket = self.head.websocket;
        let expects_continue = self.head.expects_continue;
        let client = &self.serving.client;
        self.out.clear();
        http1::write::request_head(
            self.input.unread(),
            &self.head,
            &RequestEdits {
                path: path.as_deref(),
                forwarded_for: client.forwarded_for.as_bytes(),
                proto: if client.https { b"https" } else { b"http" },
                drops_cookie: crate::bypass::is_cookie,
                request_id: self.request_id.as_bytes(),
            },
            &mut self.out,
        );
        let head_len = self.out.len();
        self.input.consume(self.head.len);
        // Sent again only if nothing of it can have been lost: no body.
        let resendable = !upload.has_body() && is_idempotent(method);

        let mut picked = Picked::from(pool)?;
        let mut fresh_only = false;
        let connection = 'attempt: loop {
            let upstream = picked.upstream().clone();
            let checkout = connection::checkout(
                &upstream.authority,
                &upstream.connections,
                &upstream.slots,
                upstream.max_connections(),
                pool.tls_connect.as_ref(),
                timeouts.connect,
                fresh_only,
            )
            .await;
            let checkout = match checkout {
                Ok(checkout) => checkout,
                Err(error) => {
                    picked.connect_failed(error)?;
                    continue;
                }
            };
            let reused = checkout.idle_since.is_some();
            let mut connection = checkout.connection;
            self.relay.clear();
            // Whatever becomes of it now, this upstream had the request.
            if self.logs_access() {
                self.served.upstream = Some(upstream.clone());
            }

            // The head and the body bytes already read, in one write.
            self.out.truncate(head_len);
            upload
                .pump(&mut self.input, &mut self.out)
                .map_err(|reason| ProxyError::BadRequestBody(reason.to_owned()))?;
            if let Err(error) =
                write_all(&mut connection.stream, &self.out, timeouts.upstream).await
            {
                if error.kind() == std::io::ErrorKind::TimedOut {
                    return Err(timed_out(&upstream, timeouts).into());
                }
                if reused && resendable {
                    debug!(upstream = %upstream.authority, %error, "reused connection closed under the request; sending it again on a new one");
                    fresh_only = true;
                    continue;
                }
                return Err(lost(&upstream, reused, &error.to_string()).into());
            }
            if !upload.done {
                if expects_continue && !continued {
                    self.out.clear();
                    self.out.extend_from_slice(CONTINUE);
                    if self.write_out().await.is_err() {
                        return Err(Failed::Cut);
                    }
                }
                self.upload_rest(&mut connection, upload, timeouts, &upstream)
                    .await?;
            }

            // The answer's head, within `timeouts.upstream` of the request
            // having gone out; interim answers (100, 103) are skipped.
            let deadline = Instant::now() + timeouts.upstream;
            loop {
                match http1::parse_response(
                    &self.relay,
                    MAX_RESPONSE_HEAD,
                    asked.to_head,
                    &mut self.answer,
                ) {
                    Ok(true) if self.answer.is_interim() => {
                        self.relay.drain(..self.answer.len);
                        continue;
                    }
                    Ok(true) => break 'attempt connection,
                    Ok(false) => {}
                    Err(reason) => {
                        return Err(ProxyError::BadUpstreamResponse {
                            upstream: upstream.authority.clone(),
                            reason: reason.to_owned(),
                        }
                        .into())
                    }
                }
                let limit = self.serving.limits.max_header_bytes;
                let read = tokio::select! {
                    biased;
                    read = tokio::time::timeout_at(
                        deadline,
                        exchange::read_more(&mut connection.stream, &mut self.relay),
                    ) => read,
                    // The upstream's connection goes with the exchange.
                    () = client_left(&mut self.io, &mut self.input, limit) => return Err(Failed::Gone),
                };
                let cut = match read {
                    Err(_) => return Err(timed_out(&upstream, timeouts).into()),
                    Ok(Ok(0)) => "the connection closed before an answer".to_owned(),
                    Ok(Err(error)) => error.to_string(),
                    Ok(Ok(_)) => continue,
                };
                if !self.relay.is_empty() {
                    return Err(ProxyError::BadUpstreamResponse {
                        upstream: upstream.authority.clone(),
                        reason: format!("the answer's head was cut short: {cut}"),
                    }
                    .into());
                }
                if reused && resendable && upload.done {
                    debug!(upstream = %upstream.authority, reason = %cut, "reused connection closed under the request; sending it again on a new one");
                    fresh_only = true;
                    continue 'attempt;
                }
                return Err(lost(&upstream, reused, &cut).into());
            }
        };

        let in_flight = picked.into_in_flight();
        // An answer cut short after its head was sent is logged with it.
        self.served.status = self.answer.status;
        if self.answer.status == 101 {
            return match destination.tunnel.as_ref().filter(|_| websocket) {
                Some(ask) => self.tunnel(connection, in_flight, ask, &pool.name).await,
                None => Err(ProxyError::BadUpstreamResponse {
                    upstream: in_flight.upstream().authority.clone(),
                    reason: "101 Switching Protocols to a request that asked for no upgrade"
                        .to_owned(),
                }
                .into()),
            };
        }
        self.relay_answer(connection, in_flight, asked, upload.done)
            .await
    }

    /// Streams the rest of the request body to the upstream, watching for
    /// an answer that comes before the body is all sent (an early 413).
    async fn upload_rest(
        &mut self,
        connection: &mut Connection,
        upload: &mut Upload,
        timeouts: &Timeouts,
        upstream: &crate::upstream::Upstream,
    ) -> Result<(), Failed> {
        while !upload.done {
            let stream = &mut connection.stream;
            tokio::select! {
                biased;
                read = exchange::read_more(stream, &mut self.relay) => {
                    match read {
                        Ok(1..) => {}
                        Ok(0) => return Err(lost(upstream, true, "the connection closed during the upload").into()),
                        Err(error) => return Err(lost(upstream, true, &error.to_string()).into()),
                    }
                    // An interim answer (`100`, `103`) asks for nothing:
                    // the upload goes on. A final one before the end of the
                    // body is read next, and the connection is not reused.
                    match http1::parse_response(&self.relay, MAX_RESPONSE_HEAD, false, &mut self.answer) {
                        Ok(true) if self.answer.is_interim() => {
                            self.relay.drain(..self.answer.len);
                            continue;
                        }
                        Ok(false) => continue,
                        Ok(true) | Err(_) => return Ok(()),
                    }
                }
                read = tokio::time::timeout(timeouts.client_body, self.input.read_from(&mut self.io)) => {
                    match read {
                        Err(_) => return Err(ProxyError::ClientBodyTimeout(timeouts.client_body).into()),
                        Ok(Ok(0)) => return Err(ProxyError::BadRequestBody("the client closed before the body ended".to_owned()).into()),
                        Ok(Err(error)) => return Err(ProxyError::BadRequestBody(error.to_string()).into()),
                        Ok(Ok(_)) => {}
                    }
                }
            }
            self.out.clear();
            upload
                .pump(&mut self.input, &mut self.out)
                .map_err(|reason| ProxyError::BadRequestBody(reason.to_owned()))?;
            match write_all(&mut connection.stream, &self.out, timeouts.upstream).await {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(timed_out(upstream, timeouts).into())
                }
                Err(error) => return Err(lost(upstream, true, &error.to_string()).into()),
            }
        }
        Ok(())
    }

    /// Passes the upstream's `101` to the client and joins the two
    /// connections until either closes, the server stops, or the tunnel
    /// is no longer wanted for `timeouts.drain` (see [`retired`]).
    async fn tunnel(
        &mut self,
        mut connection: Connection,
        in_flight: InFlight,
        ask: &TunnelAsk,
        pool: &str,
    ) -> Result<(StatusCode, bool), Failed> {
        self.out.clear();
        let edits = ResponseEdits {
            framing: Framing::Empty,
            persistence: Persistence::Keep,
            request_id: self.request_id.as_bytes(),
        };
        http1::write::response_head(&self.relay, &self.answer, &edits, &mut self.out);
        // What the upstream sent after its 101 is the tunnel's already.
        self.out.extend_from_slice(&self.relay[self.answer.len..]);
        if self.write_out().await.is_err() {
            return Err(Failed::Cut);
        }
        if !self.input.is_empty() {
            let early = self.input.unread();
            if write_all(
                &mut connection.stream,
                early,
                self.serving.limits.send_timeout,
            )
            .await
            .is_err()
            {
                return Err(Failed::Cut);
            }
            self.input.consume(early.len());
        }
        let proxy = self.serving.proxy.clone();
        let _tracked = proxy.lifecycle().track();
        let _tunnel = in_flight.into_tunnel();
        let origin = TunnelOrigin {
            pool: pool.to_owned(),
            route: self.serving.client.route,
            path: ask.path.clone(),
            client: self.serving.client.addr.ip(),
            token: ask.token.clone(),
        };
        let mut phase = self.phase.clone();
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut self.io, &mut connection.stream) => match copied {
                Ok((up, down)) => {
                    debug!(bytes.up = up, bytes.down = down, "tunnel closed");
                    self.input.used += up;
                    self.sent += down;
                }
                Err(error) => debug!(%error, "tunnel broken"),
            },
            _ = phase.wait_for(|p| *p == Phase::Closing) => debug!("tunnel closed at shutdown"),
            () = retired(proxy.state().clone(), origin) => info!("tunnel closed: its pool is no longer live, or maintenance is on, and the drain budget is spent"),
        }
        Ok((StatusCode::SWITCHING_PROTOCOLS, false))
    }
}

/// Resolves once the client has closed its connection (or it failed),
/// while the proxy waits on the upstream for it. What the client sends
/// meanwhile (its next request, pipelined) is kept in `input`, up to
/// `limit` bytes; past that the client is no longer watched.
pub(super) async fn client_left<I: ClientIo>(io: &mut I, input: &mut super::Input, limit: usize) {
    loop {
        if input.unread().len() >= limit {
            return std::future::pending().await;
        }
        match input.read_from(io).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
