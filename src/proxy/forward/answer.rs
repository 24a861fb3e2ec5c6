//! An HTTP/1 upstream's answer body, read from its connection as hyper
//! asks for it on the way to an HTTP/2 client.
//!
//! The framing is the one the answer's head declared, checked as it goes:
//! a body with a length ends at its last byte, a chunked one at its last
//! chunk (decoded strictly, see [`crate::http1::chunked`]), and one
//! delimited by the close at the close. A body read to its end gives its
//! connection back to the upstream's idle ones, unless the connection must
//! close or carries bytes nobody asked for; one abandoned (the client reset
//! its stream) or broken takes its connection with it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use crate::body::BodyError;
use crate::http1::chunked::{Decoded, Decoder};
use crate::http1::Framing;
use crate::upstream::connection::Connection;
use crate::upstream::InFlight;

/// How much one read from the upstream takes at most.
const READ_SIZE: usize = 16 * 1024;

/// The body of an answer, coming on its connection.
#[derive(Debug)]
pub struct AnswerBody {
    /// Until the body has ended (or broken).
    connection: Option<Connection>,
    /// Bytes read from the connection: `buf[at..filled]` are not used yet.
    buf: Vec<u8>,
    at: usize,
    filled: usize,
    left: Left,
    /// Whether the connection may serve another request after this body.
    reusable: bool,
    /// The request's count against its upstream, until the body ends.
    in_flight: Option<InFlight>,
}

/// What is left of the body.
#[derive(Debug)]
enum Left {
    /// This many bytes.
    Length(u64),
    /// Chunks, up to the last one.
    Chunked(Decoder),
    /// Whatever comes until the upstream closes.
    UntilClose,
    /// Nothing: the body has ended.
    Done,
}

impl AnswerBody {
    /// The body framed as `framing` (which has one), whose first bytes are
    /// `buf[at..]`. `reusable`: whether the connection may serve another
    /// request once the body has ended.
    pub fn new(
        connection: Connection,
        mut buf: Vec<u8>,
        at: usize,
        framing: Framing,
        reusable: bool,
        in_flight: InFlight,
    ) -> AnswerBody {
        let filled = buf.len();
        buf.resize(filled.max(READ_SIZE), 0);
        let left = match framing {
            Framing::Length(n) => Left::Length(n),
            Framing::Chunked => Left::Chunked(Decoder::new()),
            Framing::UntilClose => Left::UntilClose,
            Framing::Empty => Left::Done,
        };
        AnswerBody {
            connection: Some(connection),
            buf,
            at,
            filled,
            left,
            reusable: reusable && framing != Framing::UntilClose,
            in_flight: Some(in_flight),
        }
    }

    /// The next piece of data already read, if there is one; `Ok(None)`
    /// when more must be read first.
    fn buffered(&mut self) -> Result<Option<Bytes>, BodyError> {
        let available = &self.buf[self.at..self.filled];
        let data = match &mut self.left {
            Left::Done => return Ok(None),
            Left::Length(left) => {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(available.len());
                *left -= n as u64;
                let data = Bytes::copy_from_slice(&available[..n]);
                self.at += n;
                if *left == 0 {
                    self.end();
                }
                data
            }
            Left::UntilClose => {
                let data = Bytes::copy_from_slice(available);
                self.at = self.filled;
                data
            }
            Left::Chunked(decoder) => loop {
                let (used, decoded) = decoder
                    .decode(&self.buf[self.at..self.filled])
                    .map_err(|reason| BodyError::Upstream(format!("malformed chunk: {reason}")))?;
                let data = match decoded {
                    Decoded::Data(data) => Bytes::copy_from_slice(data),
                    Decoded::NeedMore => Bytes::new(),
                    Decoded::End => Bytes::new(),
                };
                self.at += used;
                if matches!(decoded, Decoded::End) {
                    self.end();
                    break data;
                }
                if !data.is_empty() || self.at == self.filled {
                    break data;
                }
            },
        };
        Ok((!data.is_empty()).then_some(data))
    }

    /// The body has ended: its connection goes back to the upstream's
    /// idle ones if it may, and the request stops counting.
    fn end(&mut self) {
        self.left = Left::Done;
        let in_flight = self.in_flight.take();
        let connection = self.connection.take();
        // Bytes after the end answer nothing that was asked.
        if self.reusable && self.at == self.filled {
            if let (Some(connection), Some(in_flight)) = (connection, &in_flight) {
                in_flight.upstream().connections.put(connection);
            }
        }
    }

    /// Reads more from the connection; `Ok(0)` at its end.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, BodyError>> {
        if self.at == self.filled {
            (self.at, self.filled) = (0, 0);
        } else if self.filled == self.buf.len() {
            // No room left after what is still unread: move it to the front.
            self.buf.copy_within(self.at..self.filled, 0);
            (self.at, self.filled) = (0, self.filled - self.at);
        }
        let Some(connection) = self.connection.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let mut room = ReadBuf::new(&mut self.buf[self.filled..]);
        match Pin::new(&mut connection.stream).poll_read(cx, &mut room) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(error)) => Poll::Ready(Err(BodyError::Upstream(error.to_string()))),
            Poll::Ready(Ok(())) => {
                let n = room.filled().len();
                self.filled += n;
                Poll::Ready(Ok(n))
            }
        }
    }

    /// The body broke: nothing more comes, and the connection closes.
    fn broken(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.left = Left::Done;
        self.connection = None;
        self.in_flight = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl http_body::Body for AnswerBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            match this.buffered() {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) if matches!(this.left, Left::Done) => return Poll::Ready(None),
                Ok(None) => {}
                Err(error) => return this.broken(error),
            }
            match this.poll_read_more(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(1..)) => {}
                Poll::Ready(Ok(0)) if matches!(this.left, Left::UntilClose) => {
                    this.end();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    let cut = BodyError::Upstream(
                        "the upstream closed before the end of its answer".to_owned(),
                    );
                    return this.broken(cut);
                }
                Poll::Ready(Err(error)) => return this.broken(error),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.left, Left::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Left::Length(n) => SizeHint::with_exact(n),
            Left::Done => SizeHint::with_exact(0),
            Left::Chunked(_) | Left::UntilClose => SizeHint::default(),
        }
    }
}
