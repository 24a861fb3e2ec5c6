//! The chunked transfer coding (RFC 9112 §7.1), decoded strictly and
//! encoded canonically.
//!
//! Decoding is where servers have disagreed: a bare LF ending a chunk
//! line, a size with a sign or spaces, an extension with a line break in
//! it, chunk data not followed by CRLF. Each of those is an error here,
//! never a guess. Extensions and trailers are read (and bounded) but not
//! passed on: the proxy re-encodes the data it decoded, so the next hop
//! reads exactly the chunks the proxy read.

/// Longest chunk-size line (extensions included) accepted.
pub const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// The last chunk and an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Why a chunked body is malformed.
pub type ChunkError = &'static str;

/// Where in the coding the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a size (`digits` so far).
    Size { size: u64, digits: u8 },
    /// Whitespace after a size, before the `;` that must follow.
    SizeSpace { size: u64 },
    /// The extensions after the `;` (read, then dropped).
    Extension {
        size: u64,
        quoted: bool,
        escaped: bool,
    },
    /// The LF of a chunk-size line.
    SizeLf { size: u64 },
    /// This many bytes of chunk data are left.
    Data(u64),
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field's name (`seen` bytes of it).
    TrailerName { seen: bool },
    /// Inside a trailer field's value.
    TrailerValue,
    /// The LF of a trailer line.
    TrailerLf,
    /// The LF of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// A chunked body decoder: bytes in, data out.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    /// Bytes of the current size line.
    line: usize,
    /// Trailer bytes so far.
    trailers: usize,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder::new()
    }
}

/// What one step of decoding found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Chunk data, a slice of the input.
    Data(&'a [u8]),
    /// More input is needed (everything given was consumed).
    NeedMore,
    /// The body ended: the last chunk and the trailers are read.
    End,
}

impl Decoder {
    /// A decoder at the start of a body.
    pub fn new() -> Decoder {
        Decoder {
            state: State::Size { size: 0, digits: 0 },
            line: 0,
            trailers: 0,
        }
    }

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the decoder stands exactly between two chunks (no size line,
    /// data or trailer partly read): where a body cut short is cut
    /// cleanly, if at all.
    pub fn between_chunks(&self) -> bool {
        self.state == (State::Size { size: 0, digits: 0 })
    }

    /// Decodes from `input`: returns how many bytes were consumed and what
    /// they held. Data is returned as soon as it is seen, one run at a
    /// time; call again with the rest of the input.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Decoded<'a>), ChunkError> {
        let mut at = 0;
        while at < input.len() {
            if let State::Data(left) = self.state {
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - at);
                self.state = if n as u64 == left {
                    State::DataCr
                } else {
                    State::Data(left - n as u64)
                };
                return Ok((at + n, Decoded::Data(&input[at..at + n])));
            }
            if self.state == State::Done {
                return Ok((at, Decoded::End));
            }
            let byte = input[at];
            at += 1;
            self.step(byte)?;
            if self.state == State::Done {
                return Ok((at, Decoded::End));
            }
        }
        Ok((at, Decoded::NeedMore))
    }

    /// One byte of a line (size, trailer, or the CRLF after data).
    fn step(&mut self, byte: u8) -> Result<(), ChunkError> {
        self.state = match self.state {
            State::Size { size, digits } => {
                self.line += 1;
                match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits >= 16 {
                            return Err("chunk size too large");
                        }
                        let digit = (byte as char).to_digit(16).unwrap_or(0);
                        State::Size {
                            size: (size << 4) | u64::from(digit),
                            digits: digits + 1,
                        }
                    }
                    _ if digits == 0 => return Err("chunk size is not a hexadecimal number"),
                    b'\r' => State::SizeLf { size },
                    _ => after_size(size, byte)?,
                }
            }
            State::SizeSpace { size } => {
                self.line += 1;
                if self.line > MAX_LINE {
                    return Err("chunk-size line too long");
                }
                after_size(size, byte)?
            }
            State::Extension {
                size,
                quoted,
                escaped,
            } => {
                self.line += 1;
                if self.line > MAX_LINE {
                    return Err("chunk extensions too long");
                }
                match byte {
                    b'\r' if !quoted => State::SizeLf { size },
                    b'"' if !escaped => State::Extension {
                        size,
                        quoted: !quoted,
                        escaped: false,
                    },
                    b'\\' if quoted && !escaped => State::Extension {
                        size,
                        quoted,
                        escaped: true,
                    },
                    b'\t' | b' '..=b'~' => State::Extension {
                        size,
                        quoted,
                        escaped: false,
                    },
                    // CR in quotes, LF, other controls, obs-text.
                    _ => return Err("invalid byte in a chunk extension"),
                }
            }
            State::SizeLf { size } => {
                if byte != b'\n' {
                    return Err("chunk-size line not ended by CRLF");
                }
                self.line = 0;
                if size == 0 {
                    State::TrailerStart
                } else {
                    State::Data(size)
                }
            }
            State::DataCr if byte == b'\r' => State::DataLf,
            State::DataLf if byte == b'\n' => State::Size { size: 0, digits: 0 },
            State::DataCr | State::DataLf => return Err("chunk data not followed by CRLF"),
            State::TrailerStart => {
                self.count_trailer()?;
                match byte {
                    b'\r' => State::EndLf,
                    _ if is_token(byte) => State::TrailerName { seen: true },
                    _ => return Err("invalid trailer field"),
                }
            }
            State::TrailerName { seen } => {
                self.count_trailer()?;
                match byte {
                    b':' if seen => State::TrailerValue,
                    _ if is_token(byte) => State::TrailerName { seen: true },
                    _ => return Err("invalid trailer field name"),
                }
            }
            State::TrailerValue => {
                self.count_trailer()?;
                match byte {
                    b'\r' => State::TrailerLf,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => State::TrailerValue,
                    _ => return Err("invalid byte in a trailer field"),
                }
            }
            State::TrailerLf if byte == b'\n' => State::TrailerStart,
            State::EndLf if byte == b'\n' => State::Done,
            State::TrailerLf | State::EndLf => return Err("trailer line not ended by CRLF"),
            State::Data(_) | State::Done => unreachable!("handled by decode"),
        };
        Ok(())
    }

    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err("trailer section too large");
        }
        Ok(())
    }
}

/// After a chunk size (and any whitespace): more whitespace, or the `;`
/// that begins the extensions (RFC 9112 §7.1.1: whitespace only before it).
fn after_size(size: u64, byte: u8) -> Result<State, ChunkError> {
    match byte {
        b' ' | b'\t' => Ok(State::SizeSpace { size }),
        b';' => Ok(State::Extension {
            size,
            quoted: false,
            escaped: false,
        }),
        _ => Err("invalid byte after a chunk size"),
    }
}

/// Whether `byte` may be part of a field name (RFC 9110 `tchar`).
fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Writes the size line of a chunk of `len` bytes (`len` > 0) into `out`:
/// the data follows, then `\r\n`.
pub fn size_line(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        digits[at] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}
