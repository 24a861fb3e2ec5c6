//! The access log: one line for every request switchyard answers, written
//! by a thread of its own so that a slow disk never holds up a request.
//!
//! A request formats its line and hands it over without waiting: the queue
//! between them is bounded ([`QUEUE_LINES`]), and when the writer is that
//! far behind, lines are dropped and counted rather than held in memory
//! without end; the next line written says how many were lost. A file is
//! appended to, and opened again on `SIGUSR1`, once logrotate (or an
//! operator) has moved it away.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{AccessLog as Target, LogFormat};
use crate::http1::write::decimal;

/// How many lines may wait for the writer before new ones are dropped.
pub const QUEUE_LINES: usize = 16 * 1024;

/// How often the writer takes what is queued.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// What is known of one answered request.
#[derive(Debug)]
pub struct Entry<'a> {
    /// When the answer was complete (RFC 3339, milliseconds, UTC).
    pub time: SystemTime,
    /// The client's address and port.
    pub client: SocketAddr,
    /// The request's method.
    pub method: &'a str,
    /// Its target as the client sent it (path and query).
    pub target: &'a str,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: &'static str,
    /// The answer's status; 0 when there was none (the client left, or the
    /// connection was cut after the answer began).
    pub status: u16,
    /// Bytes read from the client for this request: head and body.
    pub bytes_in: u64,
    /// Bytes written to the client for it: head and body.
    pub bytes_out: u64,
    /// From the request's head to its answer's last byte.
    pub duration: Duration,
    /// The pool it was forwarded to, if it was.
    pub pool: Option<&'a str>,
    /// The upstream that answered it, if one did.
    pub upstream: Option<&'a str>,
    /// Whether the maintenance gate answered it.
    pub gate: bool,
    /// Its `X-Request-Id`.
    pub request_id: &'a str,
}

// Written by hand rather than through `core::fmt` or serde: a line is
// written for every request, and the general machinery cost several
// times the rest of the line's work (measured with callgrind).
impl Entry<'_> {
    /// The entry as one line of `format`, newline included.
    pub fn line(&self, format: LogFormat) -> Vec<u8> {
        let mut out = Vec::with_capacity(224 + self.target.len());
        match format {
            LogFormat::Json => self.json(&mut out),
            LogFormat::Text => self.text(&mut out),
        }
        out.push(b'\n');
        out
    }

    /// `TIME CLIENT "METHOD TARGET PROTOCOL" STATUS key=value...`: the
    /// request line as common log formats have it, then named fields.
    /// Any byte that could break the line or its quotes (a space, a quote,
    /// a backslash, a control byte, non-ASCII) is written `\xHH`.
    fn text(&self, out: &mut Vec<u8>) {
        time(self.time, out);
        out.push(b' ');
        addr(self.client, out);
        out.extend_from_slice(b" \"");
        text_field(self.method, out);
        out.push(b' ');
        text_field(self.target, out);
        out.push(b' ');
        out.extend_from_slice(self.protocol.as_bytes());
        out.extend_from_slice(b"\" ");
        decimal(u64::from(self.status), out);
        out.extend_from_slice(b" in=");
        decimal(self.bytes_in, out);
        out.extend_from_slice(b" out=");
        decimal(self.bytes_out, out);
        out.extend_from_slice(b" ms=");
        millis(self.duration, out);
        out.extend_from_slice(b" pool=");
        text_field(self.pool.unwrap_or("-"), out);
        out.extend_from_slice(b" upstream=");
        text_field(self.upstream.unwrap_or("-"), out);
        out.extend_from_slice(if self.gate {
            b" gate=yes id="
        } else {
            b" gate=no id="
        });
        text_field(self.request_id, out);
    }

    /// One JSON object, names as in [`Entry`] (`duration_ms` in
    /// milliseconds, with microseconds).
    fn json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        time(self.time, out);
        out.extend_from_slice(b"\",\"client\":\"");
        addr(self.client, out);
        out.extend_from_slice(b"\",\"method\":");
        json_string(self.method, out);
        out.extend_from_slice(b",\"target\":");
        json_string(self.target, out);
        out.extend_from_slice(b",\"protocol\":\"");
        out.extend_from_slice(self.protocol.as_bytes());
        out.extend_from_slice(b"\",\"status\":");
        decimal(u64::from(self.status), out);
        out.extend_from_slice(b",\"bytes_in\":");
        decimal(self.bytes_in, out);
        out.extend_from_slice(b",\"bytes_out\":");
        decimal(self.bytes_out, out);
        out.extend_from_slice(b",\"duration_ms\":");
        millis(self.duration, out);
        out.extend_from_slice(b",\"pool\":");
        json_option(self.pool, out);
        out.extend_from_slice(b",\"upstream\":");
        json_option(self.upstream, out);
        out.extend_from_slice(if self.gate {
            b",\"gate\":true"
        } else {
            b",\"gate\":false"
        });
        out.extend_from_slice(b",\"request_id\":");
        json_string(self.request_id, out);
        out.push(b'}');
    }
}

/// `2026-12-01T10:30:00.123Z`; the part up to the second is formatted
/// once a second per thread.
fn time(at: SystemTime, out: &mut Vec<u8>) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, [u8; 19])> = const { std::cell::RefCell::new((u64::MAX, [0; 19])) };
    }
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != since.as_secs() {
            let text = humantime::format_rfc3339_seconds(at).to_string();
            if let Some(prefix) = text.as_bytes().get(..19) {
                second.1.copy_from_slice(prefix);
                second.0 = since.as_secs();
            }
        }
        out.extend_from_slice(&second.1);
    });
    let ms = since.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

/// `1.2.3.4:5678`, or `[::1]:5678`.
fn addr(addr: SocketAddr, out: &mut Vec<u8>) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                decimal(u64::from(octet), out);
            }
            out.push(b':');
            decimal(u64::from(v4.port()), out);
        }
        SocketAddr::V6(_) => out.extend_from_slice(addr.to_string().as_bytes()),
    }
}

/// Milliseconds with three decimals: `1.234`.
fn millis(duration: Duration, out: &mut Vec<u8>) {
    let micros = duration.as_micros().min(u128::from(u64::MAX)) as u64;
    decimal(micros / 1000, out);
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// `text` for a text line: printable ASCII but `"` and `\` as it is,
/// every other byte `\xHH`.
fn text_field(text: &str, out: &mut Vec<u8>) {
    for &b in text.as_bytes() {
        if b.is_ascii_graphic() && b != b'"' && b != b'\\' {
            out.push(b);
        } else {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `text` as a JSON string, quotes included.
fn json_string(text: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in text.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..0x20 | 0x7f => {
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
            }
            // UTF-8 passes as it is: `text` is a `str`.
            b => out.push(b),
        }
    }
    out.push(b'"');
}

fn json_option(text: Option<&str>, out: &mut Vec<u8>) {
    match text {
        Some(text) => json_string(text, out),
        None => out.extend_from_slice(b"null"),
    }
}

/// `path` and `query` as the access log shows them: the query of a path
/// that names switchyard's own (`/.switchyard/bypass?token=...`, however
/// spelled: in any case, percent-encoded or not) is left out, since it may
/// carry a bypass token.
pub fn target(path: &str, query: Option<&str>) -> String {
    let mut target = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    target.push_str(path);
    if let Some(query) = query {
        let names_us = |path: &[u8]| {
            path.windows(10)
                .any(|w| w.eq_ignore_ascii_case(b"switchyard"))
        };
        let ours = names_us(path.as_bytes())
            || (path.contains('%') && names_us(&crate::http1::percent::decoded(path)));
        target.push('?');
        target.push_str(if ours { "(redacted)" } else { query });
    }
    target
}

/// What the writer thread is told.
enum Message {
    Line(Vec<u8>),
    /// Open the file again (it has been moved away).
    Reopen,
    /// Write out every line before this one, then say so.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The access log's sending end, shared by every connection.
#[derive(Debug)]
pub struct AccessLog {
    format: LogFormat,
    queue: SyncSender<Message>,
    /// Lines dropped since the writer last said so.
    dropped: Arc<AtomicU64>,
}

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the access log {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    #[error("cannot start the access log's writer thread: {0}")]
    Writer(io::Error),
}

impl AccessLog {
    /// Starts the writer for `target` in `format`; `None` when the access
    /// log is off.
    pub fn start(target: &Target, format: LogFormat) -> Result<Option<AccessLog>, StartError> {
        let sink = match target {
            Target::Off => return Ok(None),
            Target::Stderr => Sink::Stderr,
            Target::File(path) => Sink::File {
                file: open(path)?,
                path: path.clone(),
            },
        };
        let (queue, lines) = mpsc::sync_channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            sink,
            dropped: dropped.clone(),
        };
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || writer.run(&lines))
            .map_err(StartError::Writer)?;
        Ok(Some(AccessLog {
            format,
            queue,
            dropped,
        }))
    }

    /// Logs `entry`, never waiting: when the writer is [`QUEUE_LINES`]
    /// behind, the line is dropped and counted.
    pub fn log(&self, entry: &Entry<'_>) {
        let line = entry.line(self.format);
        if let Err(TrySendError::Full(_)) = self.queue.try_send(Message::Line(line)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Has every line queued so far written out, waiting at most `limit`:
    /// the last thing a stopping server does, so that the requests of its
    /// last moments are not lost with the process.
    pub async fn flush(&self, limit: Duration) {
        let (done, written) = tokio::sync::oneshot::channel();
        // Blocks this thread only while the queue is full: at most a flush.
        if self.queue.send(Message::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(limit, written).await;
        }
    }

    /// Has the file opened again, after a rotation moved it away.
    pub fn reopen(&self) {
        // Waits for room (blocking this thread for at most a flush): a
        // reopen must not be lost behind a full queue.
        let _ = self.queue.send(Message::Reopen);
    }
}

fn open(path: &Path) -> Result<File, StartError> {
    use std::os::unix::fs::OpenOptionsExt;
    // Clients' addresses and what they asked for: not for every user.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| StartError::Open {
            path: path.to_owned(),
            source,
        })
}

/// Where the lines go.
enum Sink {
    Stderr,
    File { file: File, path: PathBuf },
}

/// The writer thread's side.
struct Writer {
    sink: Sink,
    dropped: Arc<AtomicU64>,
}

impl Writer {
    /// Writes lines until every sender is gone (the server has stopped).
    ///
    /// It looks for lines every [`FLUSH_EVERY`] rather than waiting on the
    /// queue: a waiting reader would have every request's thread wake it,
    /// a system call per line; this way a request only queues its line.
    fn run(mut self, lines: &mpsc::Receiver<Message>) {
        let mut batch = Vec::with_capacity(64 * 1024);
        loop {
            loop {
                match lines.try_recv() {
                    Ok(Message::Line(line)) => self.add(&mut batch, &line),
                    Ok(Message::Reopen) => {
                        self.flush(&mut batch);
                        self.reopen();
                    }
                    Ok(Message::Flush(done)) => {
                        self.flush(&mut batch);
                        let _ = done.send(());
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.flush(&mut batch);
                        return;
                    }
                }
                if batch.len() >= 64 * 1024 {
                    self.flush(&mut batch);
                }
            }
            self.flush(&mut batch);
            std::thread::sleep(FLUSH_EVERY);
        }
    }

    fn add(&mut self, batch: &mut Vec<u8>, line: &[u8]) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                lines = dropped,
                "access log lines dropped: the log could not be written as fast as requests were answered"
            );
        }
        if let Sink::Stderr = self.sink {
            // Line by line: a write of one line does not interleave with
            // the diagnostic log's lines on the same stream.
            let _ = io::stderr().write_all(line);
            return;
        }
        batch.extend_from_slice(line);
    }

    fn flush(&mut self, batch: &mut Vec<u8>) {
        if batch.is_empty() {
            return;
        }
        if let Sink::File { file, path } = &mut self.sink {
            if let Err(error) = file.write_all(batch) {
                tracing::warn!(%error, file = %path.display(), "cannot write the access log");
            }
        }
        batch.clear();
    }

    fn reopen(&mut self) {
        if let Sink::File { file, path } = &mut self.sink {
            match open(path) {
                Ok(reopened) => {
                    *file = reopened;
                    tracing::info!(file = %path.display(), "access log opened again");
                }
                // The old file stays: lines keep going somewhere.
                Err(error) => tracing::warn!(%error, "cannot open the access log again"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_000_000_123),
            client: "127.0.0.1:50000".parse().unwrap(),
            method: "GET",
            target: "/a?b=c",
            protocol: "HTTP/1.1",
            status: 200,
            bytes_in: 78,
            bytes_out: 512,
            duration: Duration::from_micros(1234),
            pool: Some("blue"),
            upstream: Some("127.0.0.1:9001"),
            gate: false,
            request_id: "abc",
        }
    }

    #[test]
    fn a_text_line_names_every_field() {
        let line = String::from_utf8(entry().line(LogFormat::Text)).unwrap();
        assert_eq!(
            line,
            "2026-11-30T00:53:20.123Z 127.0.0.1:50000 \"GET /a?b=c HTTP/1.1\" 200 in=78 out=512 ms=1.234 pool=blue upstream=127.0.0.1:9001 gate=no id=abc\n"
        );
    }

    #[test]
    fn nothing_a_client_sends_breaks_a_line() {
        let hostile = Entry {
            method: "GE\"T",
            target: "/a b\"c\\d\n{\"x\":1}\u{7f}é",
            request_id: "id\r\n",
            ..entry()
        };
        let text = String::from_utf8(hostile.line(LogFormat::Text)).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(
            text.contains(r#""GE\x22T /a\x20b\x22c\x5cd\x0a{\x22x\x22:1}\x7f\xc3\xa9 HTTP/1.1""#),
            "{text}"
        );
        assert!(text.ends_with(" id=id\\x0d\\x0a\n"), "{text}");
        let json = hostile.line(LogFormat::Json);
        assert_eq!(json.iter().filter(|&&b| b == b'\n').count(), 1);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["target"], hostile.target);
        assert_eq!(value["method"], hostile.method);
        assert_eq!(value["request_id"], hostile.request_id);
        let v6 = Entry {
            client: "[::1]:8080".parse().unwrap(),
            ..entry()
        };
        assert!(String::from_utf8(v6.line(LogFormat::Text))
            .unwrap()
            .contains(" [::1]:8080 "));
    }

    #[test]
    fn a_query_that_may_carry_a_bypass_token_is_left_out() {
        assert_eq!(target("/a", Some("b=c")), "/a?b=c");
        assert_eq!(target("/a", None), "/a");
        for path in [
            "/.switchyard/bypass",
            "//.Switchyard/bypass",
            "/%2eSWITCHYARD%2fbypass",
            "/.swit%63hyard/bypass",
            "/%2e%73%77%69%74%63%68%79%61%72%64/%62ypass",
            "/.%53witchyard/bypass",
        ] {
            assert_eq!(
                target(path, Some("token=secret")),
                format!("{path}?(redacted)")
            );
        }
    }

    #[test]
    fn a_json_line_is_one_object() {
        let line = entry().line(LogFormat::Json);
        assert_eq!(line.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["time"], "2026-11-30T00:53:20.123Z");
        assert_eq!(value["client"], "127.0.0.1:50000");
        assert_eq!(value["status"], 200);
        assert_eq!(value["duration_ms"], 1.234);
        assert_eq!(value["pool"], "blue");
        assert_eq!(value["gate"], false);
        assert_eq!(value["request_id"], "abc");
    }
}
