//! The proxy's own answers on an HTTP/1 connection (the gate's 503, a
//! redirect, an error), and what becomes of the body of a request it
//! answers without forwarding.

use std::sync::Arc;

use http::{Method, StatusCode};
use tokio::time::Instant;
use tracing::debug;

use super::{ClientIo, Engine};
use crate::http1::chunked::{Decoded, Decoder};
use crate::http1::write::Persistence;
use crate::http1::{self, Framing};
use crate::proxy::record::Served;
use crate::proxy::request_id::RequestId;
use crate::proxy::ProxyError;
use crate::shutdown::Phase;

impl<I: ClientIo> Engine<I> {
    /// Answers the request without forwarding it: first reads and drops
    /// its body if that is small and prompt (a client library that sends
    /// a POST's head and body in two writes would otherwise have its body
    /// read as the next request, or its next request fail), and otherwise
    /// says `Connection: close` and closes.
    pub(super) async fn answer_with(&mut self, answer: Answer) -> bool {
        let method = self.head.method.clone();
        let http10 = self.head.version == http::Version::HTTP_10;
        self.served = answer.served();
        let id = self.request_id;
        let mut keep = !self.head.close
            && *self.phase.borrow() == Phase::Serving
            && !matches!(&answer, Answer::Error(error) if error.closes_connection());
        self.out.clear();
        if self.head.framing == Framing::Empty {
            // The usual case: the answer is written while the head it
            // answers is still in the buffer.
            let accept = self.head.get(self.input.unread(), "accept");
            answer.write(
                accept,
                (&method, &id),
                Persistence::of(keep, http10),
                &mut self.out,
            );
            self.input.consume(self.head.len);
        } else {
            let accept = self
                .head
                .get(self.input.unread(), "accept")
                .map(<[u8]>::to_vec);
            keep &= self.discard_body().await;
            let persistence = Persistence::of(keep, http10);
            answer.write(
                accept.as_deref(),
                (&method, &id),
                persistence,
                &mut self.out,
            );
        }
        self.write_out().await.is_ok() && keep
    }

    /// Reads the request's body and drops it, if it is no larger than
    /// `listener.max_discard_bytes` and done within `timeouts.header`;
    /// whether it was. A client waiting for `100 Continue` is not asked
    /// for a body that would only be dropped.
    async fn discard_body(&mut self) -> bool {
        let framing = self.head.framing;
        let head_len = self.head.len;
        if framing == Framing::Empty {
            self.input.consume(head_len);
            return true;
        }
        if self.head.expects_continue {
            return false;
        }
        let (limit, budget) = {
            let snapshot = self.serving.proxy.state.load();
            let config = &snapshot.config;
            (config.listener.max_discard_bytes, config.timeouts.header)
        };
        if matches!(framing, Framing::Length(n) if n > limit) {
            return false;
        }
        self.input.consume(head_len);
        let deadline = Instant::now() + budget;
        let mut left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut decoder = Decoder::new();
        let mut read = 0u64;
        loop {
            match framing {
                Framing::Length(_) => {
                    left -= self.input.take(left).len() as u64;
                    if left == 0 {
                        return true;
                    }
                }
                _ => loop {
                    let Ok((used, decoded)) = decoder.decode(self.input.unread()) else {
                        return false;
                    };
                    // `None` at the body's end, `Some(0)` for more input.
                    let data = match decoded {
                        Decoded::Data(data) => Some(data.len() as u64),
                        Decoded::End => None,
                        Decoded::NeedMore => Some(0),
                    };
                    self.input.consume(used);
                    match data {
                        None => return true,
                        Some(0) => break,
                        Some(n) => read += n,
                    }
                    if read > limit {
                        return false;
                    }
                },
            }
            match tokio::time::timeout_at(deadline, self.input.read_from(&mut self.io)).await {
                Ok(Ok(1..)) => {}
                _ => {
                    debug!("unwanted request body too slow, broken or cut off; closing after the answer");
                    return false;
                }
            }
        }
    }
}

/// An answer of the proxy's own.
pub(super) enum Answer {
    /// Boxed: the usual answers (the gate's, an error) are small.
    Response(Box<http::Response<crate::body::Body>>),
    Gate(Arc<crate::state::gate::Gate>),
    Error(ProxyError),
}

impl Answer {
    /// What the access log says of it.
    fn served(&self) -> Served {
        match self {
            Answer::Gate(_) => Served::answered(StatusCode::SERVICE_UNAVAILABLE, true),
            Answer::Error(error) => Served::answered(error.status(), false),
            Answer::Response(response) => Served::answered(response.status(), false),
        }
    }

    /// Writes it for a `request` (its method and id) that sent `accept`
    /// into `out`, saying what `persistence` says of the connection.
    fn write(
        &self,
        accept: Option<&[u8]>,
        request: (&Method, &RequestId),
        persistence: Persistence,
        out: &mut Vec<u8>,
    ) {
        let (method, id) = request;
        match self {
            Answer::Gate(gate) => {
                gate.write_http1(accept, (method, id.as_bytes()), persistence, out);
            }
            Answer::Error(error) => error.write_http1(method, id, persistence, out),
            Answer::Response(response) => http1::write::answer(
                response.status(),
                response.headers(),
                response.body().in_memory().unwrap_or_default(),
                (method, id.as_bytes()),
                persistence,
                out,
            ),
        }
    }
}
