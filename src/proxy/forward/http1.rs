//! One attempt at an HTTP/2 client's request over an HTTP/1.1 connection
//! to an upstream: the head written from the request's parts, the body
//! framed as its length says (chunked when it has none), and the answer's
//! head read back (its body is [`super::answer`]'s).
//!
//! ```text
//! write the head and the body frames already in hand, in one write
//!   ─► stream the rest of the body, watching for an early answer
//!   ─► read the answer's head within `timeouts.upstream` (skip 1xx)
//! ```

use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::Method;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::Outgoing;
use crate::body::{Body, BodyError};
use crate::config::Timeouts;
use crate::http1::{self, chunked, Framing, ResponseHead};
use crate::proxy::exchange::{
    bad_answer, lost, read_more, timed_out, write_all, MAX_RESPONSE_HEAD,
};
use crate::proxy::ProxyError;
use crate::upstream::connection::Connection;
use crate::upstream::Upstream;

/// How an attempt failed.
pub(super) enum Attempt {
    /// The client gets this.
    Failed(ProxyError),
    /// A kept-alive connection closed under a request that may be sent
    /// again: it goes once more, on a new connection.
    Resend,
}

impl From<ProxyError> for Attempt {
    fn from(error: ProxyError) -> Attempt {
        Attempt::Failed(error)
    }
}

/// How a request's body goes to the upstream: with its length when the
/// client gave one (HTTP/2's `content-length`, which hyper holds the
/// stream to), chunked otherwise.
pub(super) fn framing(body: &Body) -> Framing {
    if http_body::Body::is_end_stream(body) {
        return Framing::Empty;
    }
    match http_body::Body::size_hint(body).exact() {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    }
}

/// Writes the HTTP/1.1 head of `head` into `out`, its body framed as
/// `framing`.
pub(super) fn request_head(head: &Outgoing, framing: Framing, out: &mut Vec<u8>) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        // The framing is this hop's, written below.
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked | Framing::UntilClose => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        // A method that usually has a body says it has none.
        Framing::Empty
            if matches!(head.method, Method::POST | Method::PUT | Method::PATCH)
                || head.headers.contains_key(CONTENT_LENGTH) =>
        {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::Empty => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// A request body on its way out, framed as the head said.
struct Upload {
    framing: Framing,
    /// Bytes left of a body with a length.
    left: u64,
    done: bool,
}

impl Upload {
    fn new(framing: Framing) -> Upload {
        Upload {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            done: !framing.has_body(),
        }
    }

    /// Adds what `frame` carries to `out`, framed; trailers are dropped.
    fn frame(&mut self, frame: Frame<Bytes>, out: &mut Vec<u8>) -> Result<(), ProxyError> {
        let Ok(data) = frame.into_data() else {
            return Ok(());
        };
        if data.is_empty() {
            return Ok(());
        }
        match self.framing {
            Framing::Length(_) => {
                let len = data.len() as u64;
                if len > self.left {
                    return Err(ProxyError::BadRequestBody(
                        "the body is longer than its content-length".to_owned(),
                    ));
                }
                self.left -= len;
                out.extend_from_slice(&data);
            }
            _ => {
                chunked::size_line(data.len(), out);
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
        }
        Ok(())
    }

    /// The client's body ended: ends it for the upstream too.
    fn end(&mut self, out: &mut Vec<u8>) -> Result<(), ProxyError> {
        self.done = true;
        match self.framing {
            Framing::Length(_) if self.left > 0 => Err(ProxyError::BadRequestBody(
                "the body ended before its content-length".to_owned(),
            )),
            Framing::Chunked | Framing::UntilClose => {
                out.extend_from_slice(chunked::LAST_CHUNK);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Adds one polled frame, or the end, to `out`.
    fn take(
        &mut self,
        polled: Option<Result<Frame<Bytes>, BodyError>>,
        out: &mut Vec<u8>,
    ) -> Result<(), ProxyError> {
        match polled {
            Some(Ok(frame)) => self.frame(frame, out),
            None => self.end(out),
            Some(Err(error)) => Err(client_failure(&error)),
        }
    }
}

/// What the client is told when its own body failed.
pub(super) fn client_failure(error: &BodyError) -> ProxyError {
    match error {
        BodyError::Stalled(limit) => ProxyError::ClientBodyTimeout(*limit),
        other => ProxyError::BadRequestBody(super::error_chain(other)),
    }
}

/// What one attempt needs to know of its request.
pub(super) struct Request<'a> {
    /// Its head, written.
    pub(super) head: &'a [u8],
    pub(super) framing: Framing,
    pub(super) to_head: bool,
    /// Whether it may be sent again (idempotent, no body).
    pub(super) resendable: bool,
}

/// Sends `request` with `body` on `connection` and reads the answer's head
/// into `answer`, its bytes (and any of its body that came with them) into
/// `buf`. Returns whether the body went out in full: an upstream may answer
/// before it has read all of it, and its connection is not reused then.
#[allow(clippy::too_many_arguments)]
pub(super) async fn exchange(
    connection: &mut Connection,
    request: &Request<'_>,
    body: &mut Body,
    reused: bool,
    upstream: &Upstream,
    timeouts: &Timeouts,
    buf: &mut Vec<u8>,
    answer: &mut ResponseHead,
) -> Result<bool, Attempt> {
    let mut upload = Upload::new(request.framing);
    let mut out = request.head.to_vec();
    // The frames already in hand (the one read ahead) go with the head.
    while !upload.done {
        let polled = std::future::poll_fn(|cx| {
            Poll::Ready(http_body::Body::poll_frame(Pin::new(&mut *body), cx))
        });
        match polled.await {
            Poll::Ready(polled) => upload.take(polled, &mut out)?,
            Poll::Pending => break,
        }
    }
    if let Err(error) = write_all(&mut connection.stream, &out, timeouts.upstream).await {
        if error.kind() == std::io::ErrorKind::TimedOut {
            return Err(timed_out(upstream, timeouts).into());
        }
        if reused && request.resendable {
            return Err(Attempt::Resend);
        }
        return Err(lost(upstream, reused, &error.to_string()).into());
    }
    // The rest of the body, unless an answer comes first (an early 413).
    'upload: while !upload.done {
        out.clear();
        tokio::select! {
            biased;
            read = read_more(&mut connection.stream, buf) => {
                match read {
                    Ok(1..) => {}
                    Ok(0) => return Err(lost(upstream, true, "the connection closed during the upload").into()),
                    Err(error) => return Err(lost(upstream, true, &error.to_string()).into()),
                }
                // An interim answer (`100`, `103`) asks for nothing: the
                // upload goes on. A final one is read below.
                loop {
                    match http1::parse_response(buf, MAX_RESPONSE_HEAD, false, answer) {
                        Ok(true) if answer.is_interim() => {
                            buf.drain(..answer.len);
                        }
                        Ok(false) => continue 'upload,
                        Ok(true) | Err(_) => break 'upload,
                    }
                }
            }
            // The body's pauses are limited by the body itself.
            polled = body.frame() => upload.take(polled, &mut out)?,
        }
        match write_all(&mut connection.stream, &out, timeouts.upstream).await {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                return Err(timed_out(upstream, timeouts).into())
            }
            Err(error) => return Err(lost(upstream, true, &error.to_string()).into()),
        }
    }

    // The answer's head, within `timeouts.upstream` of the request having
    // gone out; interim answers are skipped.
    let deadline = Instant::now() + timeouts.upstream;
    loop {
        match http1::parse_response(buf, MAX_RESPONSE_HEAD, request.to_head, answer) {
            Ok(true) if answer.is_interim() => {
                buf.drain(..answer.len);
                continue;
            }
            Ok(true) => return Ok(upload.done),
            Ok(false) => {}
            Err(reason) => return Err(bad_answer(upstream, reason).into()),
        }
        let read = tokio::time::timeout_at(deadline, read_more(&mut connection.stream, buf)).await;
        let cut = match read {
            Err(_) => return Err(timed_out(upstream, timeouts).into()),
            Ok(Ok(0)) => "the connection closed before an answer".to_owned(),
            Ok(Err(error)) => error.to_string(),
            Ok(Ok(_)) => continue,
        };
        if !buf.is_empty() {
            return Err(
                bad_answer(upstream, format!("the answer's head was cut short: {cut}")).into(),
            );
        }
        if reused && request.resendable && upload.done {
            return Err(Attempt::Resend);
        }
        return Err(lost(upstream, reused, &cut).into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::uri::PathAndQuery;
    use http::{HeaderMap, HeaderValue};

    fn outgoing(method: Method, fields: &[(&'static str, &'static str)]) -> Outgoing {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(*name, HeaderValue::from_static(value));
        }
        Outgoing {
            method,
            path: PathAndQuery::from_static("/a?b=c"),
            headers,
        }
    }

    fn written(head: &Outgoing, framing: Framing) -> String {
        let mut out = Vec::new();
        request_head(head, framing, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_head_carries_this_hops_framing_only() {
        let head = outgoing(
            Method::POST,
            &[
                ("host", "app.example"),
                ("content-length", "5"),
                ("transfer-encoding", "chunked"),
            ],
        );
        assert_eq!(
            written(&head, Framing::Length(5)),
            "POST /a?b=c HTTP/1.1\r\nhost: app.example\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!(
            written(&head, Framing::Chunked),
            "POST /a?b=c HTTP/1.1\r\nhost: app.example\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        // A POST without a body says so; a GET says nothing.
        assert!(written(&head, Framing::Empty).ends_with("content-length: 0\r\n\r\n"));
        let get = outgoing(Method::GET, &[("host", "app.example")]);
        assert_eq!(
            written(&get, Framing::Empty),
            "GET /a?b=c HTTP/1.1\r\nhost: app.example\r\n\r\n"
        );
    }

    #[test]
    fn an_upload_is_held_to_its_length_and_chunked_without_one() {
        let data = |bytes: &'static [u8]| Some(Ok(Frame::data(Bytes::from_static(bytes))));
        let mut out = Vec::new();
        let mut upload = Upload::new(Framing::Length(5));
        upload.take(data(b"hel"), &mut out).unwrap();
        assert!(upload.take(None, &mut out).is_err(), "ended short");
        let mut upload = Upload::new(Framing::Length(5));
        assert!(upload.take(data(b"hello!"), &mut out).is_err(), "too long");

        out.clear();
        let mut upload = Upload::new(Framing::Chunked);
        upload.take(data(b"hello"), &mut out).unwrap();
        upload.take(data(b""), &mut out).unwrap();
        upload
            .take(Some(Ok(Frame::trailers(HeaderMap::new()))), &mut out)
            .unwrap();
        upload.take(None, &mut out).unwrap();
        assert!(upload.done);
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
    }
}
