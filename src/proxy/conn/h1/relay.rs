//! Bodies on their way through: a client's upload to the upstream, and
//! the upstream's answer to the client, each framed again on the way out.
//!
//! A body with a length goes through as it came, straight from the buffer
//! it was read into. A chunked one is decoded strictly and encoded again
//! (so the next hop reads exactly the chunks the proxy read); an answer
//! the upstream delimits by closing goes to an HTTP/1.1 client as chunks,
//! so that the client's connection can stay open. Anything after a body's
//! end on an upstream connection is not an answer to anything: that
//! connection is not used again, and those bytes go nowhere.

use std::io;

use http::StatusCode;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::forward::{Asked, Failed};
use super::{ClientIo, Engine, Input};
use crate::http1::chunked::{self, ChunkError, Decoded, Decoder};
use crate::http1::write::{Persistence, ResponseEdits};
use crate::http1::{self, Framing};
use crate::proxy::exchange::{body_settled, read_more};
use crate::proxy::ProxyError;
use crate::shutdown::Phase;
use crate::upstream::connection::Connection;
use crate::upstream::InFlight;

/// Chunks re-encoded for the client are sent once this much is waiting.
const FLUSH_AT: usize = 32 * 1024;

/// A client's request body on its way to the upstream.
pub(super) struct Upload {
    framing: Framing,
    /// Bytes left of a body with a length.
    left: u64,
    decoder: Decoder,
    /// Whether the whole body has been taken from the client.
    pub(super) done: bool,
}

impl Upload {
    /// The upload of a body framed as `framing`.
    pub(super) fn new(framing: Framing) -> Upload {
        Upload {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            decoder: Decoder::new(),
            done: !framing.has_body(),
        }
    }

    /// Whether the request has a body at all.
    pub(super) fn has_body(&self) -> bool {
        self.framing.has_body()
    }

    /// Moves the body bytes `input` holds into `out`, framed for the
    /// upstream (chunks encoded again).
    pub(super) fn pump(&mut self, input: &mut Input, out: &mut Vec<u8>) -> Result<(), ChunkError> {
        match self.framing {
            Framing::Empty | Framing::UntilClose => {}
            Framing::Length(_) => {
                let taken = input.take(self.left);
                out.extend_from_slice(taken);
                self.left -= taken.len() as u64;
                self.done = self.left == 0;
            }
            Framing::Chunked => {
                while !self.done {
                    let (used, decoded) = self.decoder.decode(input.unread())?;
                    let more = match decoded {
                        Decoded::Data(data) => {
                            encode_chunk(data, out);
                            true
                        }
                        Decoded::End => {
                            out.extend_from_slice(chunked::LAST_CHUNK);
                            self.done = true;
                            false
                        }
                        Decoded::NeedMore => false,
                    };
                    input.consume(used);
                    if !more {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    chunked::size_line(data.len(), out);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// How an upstream's answer body goes to the client.
enum Download {
    /// As it came: this many bytes, or (`None`) until the upstream closes.
    Raw(Option<u64>),
    /// Chunks decoded; encoded again for a chunked client, or passed raw to
    /// an HTTP/1.0 client, whose answer ends with the connection.
    Dechunk { decoder: Decoder, chunks: bool },
    /// Until the upstream closes, as chunks.
    Chunk,
}

impl<I: ClientIo> Engine<I> {
    /// Passes the answer parsed in `self.answer` to the client, its body
    /// after it; gives `connection` back to its upstream if the exchange
    /// ended cleanly. `upload_done`: whether the request's body was all
    /// taken from the client (if not, its connection cannot go on).
    pub(super) async fn relay_answer(
        &mut self,
        connection: Connection,
        in_flight: InFlight,
        asked: Asked,
        upload_done: bool,
    ) -> Result<(StatusCode, bool), Failed> {
        let status = StatusCode::from_u16(self.answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let framing = match self.answer.framing {
            Framing::Chunked | Framing::UntilClose if asked.http10 => Framing::UntilClose,
            Framing::Chunked | Framing::UntilClose => Framing::Chunked,
            other => other,
        };
        let keep = !asked.close
            && framing != Framing::UntilClose
            && upload_done
            && *self.phase.borrow() == Phase::Serving;
        let mut download = match self.answer.framing {
            Framing::Empty => Download::Raw(Some(0)),
            Framing::Length(n) => Download::Raw(Some(n)),
            Framing::Chunked => Download::Dechunk {
                decoder: Decoder::new(),
                chunks: framing == Framing::Chunked,
            },
            Framing::UntilClose if framing == Framing::Chunked => Download::Chunk,
            Framing::UntilClose => Download::Raw(None),
        };
        self.out.clear();
        let edits = ResponseEdits {
            framing,
            persistence: Persistence::of(keep, asked.http10),
            request_id: self.request_id.as_bytes(),
        };
        http1::write::response_head(&self.relay, &self.answer, &edits, &mut self.out);
        let upstream_close = self.answer.close;
        let mut at = self.answer.len;
        let mut stream = connection;
        let send_timeout = self.serving.limits.send_timeout;
        let mut sent_any = false;
        let upstream = in_flight.upstream().authority.clone();
        let done = loop {
            // What the relay buffer holds: passed on raw, or re-framed into
            // `out`.
            let (raw, finished) = match &mut download {
                Download::Raw(left) => {
                    let available = (self.relay.len() - at) as u64;
                    let n = left.map_or(available, |l| l.min(available)) as usize;
                    let raw = at..at + n;
                    at += n;
                    if let Some(left) = left {
                        *left -= n as u64;
                    }
                    (raw, *left == Some(0))
                }
                Download::Dechunk { decoder, chunks } => {
                    let mut finished = false;
                    while !finished {
                        let decoded = decoder.decode(&self.relay[at..]);
                        let (used, decoded) = match decoded {
                            Ok(step) => step,
                            Err(reason) if !sent_any => {
                                return Err(ProxyError::BadUpstreamResponse {
                                    upstream,
                                    reason: format!("malformed chunked body: {reason}"),
                                }
                                .into())
                            }
                            Err(_) => return Err(Failed::Cut),
                        };
                        at += used;
                        match decoded {
                            Decoded::Data(data) if *chunks => encode_chunk(data, &mut self.out),
                            Decoded::Data(data) => self.out.extend_from_slice(data),
                            Decoded::End => {
                                if *chunks {
                                    self.out.extend_from_slice(chunked::LAST_CHUNK);
                                }
                                finished = true;
                            }
                            Decoded::NeedMore => break,
                        }
                    }
                    (at..at, finished)
                }
                Download::Chunk => {
                    encode_chunk(&self.relay[at..], &mut self.out);
                    at = self.relay.len();
                    (at..at, false)
                }
            };
            let flush =
                finished || !raw.is_empty() || self.out.len() >= FLUSH_AT || at == self.relay.len();
            if flush && !(self.out.is_empty() && raw.is_empty()) {
                let raw_len = raw.len();
                let written =
                    write_two(&mut self.io, &self.out, &self.relay[raw], send_timeout).await;
                if written.is_err() {
                    return Err(Failed::Cut);
                }
                self.sent += (self.out.len() + raw_len) as u64;
                sent_any = true;
                self.out.clear();
            }
            if finished {
                break true;
            }
            if at == self.relay.len() {
                self.relay.clear();
                at = 0;
                let limit = self.serving.limits.max_header_bytes;
                let read = tokio::select! {
                    biased;
                    read = read_more(&mut stream.stream, &mut self.relay) => read,
                    () = super::forward::client_left(&mut self.io, &mut self.input, limit) => return Err(Failed::Gone),
                };
                match read {
                    Ok(1..) => {}
                    Ok(0) => match &mut download {
                        Download::Raw(None) => break true,
                        Download::Chunk => {
                            self.out.extend_from_slice(chunked::LAST_CHUNK);
                            if write_two(&mut self.io, &self.out, &[], send_timeout)
                                .await
                                .is_err()
                            {
                                return Err(Failed::Cut);
                            }
                            self.sent += self.out.len() as u64;
                            break true;
                        }
                        _ => break false,
                    },
                    Err(_) => break false,
                }
            }
        };
        if !done {
            // The upstream cut its answer short: so must the client's be.
            tracing::debug!(%upstream, "upstream answer cut short; closing the client connection");
            return Err(Failed::Cut);
        }
        // Reused only if nothing is left over, nobody said close, and the
        // request's body is settled.
        if !upstream_close
            && body_settled(upload_done, asked.body, status.as_u16())
            && at == self.relay.len()
        {
            in_flight.upstream().connections.put(stream);
        }
        drop(in_flight);
        Ok((status, keep))
    }
}

/// Writes `first` then `second` to `io`, in one system call when it takes
/// both, and flushes; fails if the writes wait for `timeout`.
async fn write_two<W: AsyncWrite + Unpin>(
    io: &mut W,
    first: &[u8],
    second: &[u8],
    timeout: std::time::Duration,
) -> io::Result<()> {
    let written = async {
        let (mut a, mut b) = (first, second);
        while !a.is_empty() || !b.is_empty() {
            let n = if a.is_empty() {
                io.write(b).await?
            } else if b.is_empty() {
                io.write(a).await?
            } else {
                io.write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])
                    .await?
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_a = n.min(a.len());
            a = &a[from_a..];
            b = &b[n - from_a..];
        }
        io.flush().await
    };
    match tokio::time::timeout(timeout, written).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took no byte in {timeout:?}"),
        )),
    }
}
