//! The access log: one line for every request switchyard answers, written
//! by a thread of its own so that a slow disk never holds up a request.
//!
//! A request formats its line and hands it over without waiting: the queue
//! between them is bounded ([`QUEUE_LINES`]), and when the writer is that
//! far behind, lines are dropped and counted rather than held in memory
//! without end; the next line written says how many were lost. A file is
//! appended to, and opened again on `SIGUSR1`, once logrotate (or an
//! operator) has moved it away.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::{AccessLog as Target, LogFormat};

/// How many lines may wait for the writer before new ones are dropped.
pub const QUEUE_LINES: usize = 16 * 1024;

/// What is known of one answered request.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// When the answer was complete (RFC 3339, milliseconds, UTC).
    #[serde(serialize_with = "rfc3339_millis")]
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
    /// From the request's head to its answer's last byte, in milliseconds.
    #[serde(rename = "duration_ms", serialize_with = "millis")]
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

fn rfc3339_millis<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*time))
}

fn millis<S: serde::Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(duration_ms(*duration))
}

/// Milliseconds with three decimals (microseconds).
fn duration_ms(duration: Duration) -> f64 {
    (duration.as_micros() as f64) / 1000.0
}

impl Entry<'_> {
    /// The entry as one line of `format`, newline included.
    pub fn line(&self, format: LogFormat) -> Vec<u8> {
        match format {
            LogFormat::Json => {
                let mut line = serde_json::to_vec(self).expect("an access log entry serializes");
                line.push(b'\n');
                line
            }
            LogFormat::Text => self.text().into_bytes(),
        }
    }

    /// `TIME CLIENT "METHOD TARGET PROTOCOL" STATUS key=value...`: the
    /// request line as common log formats have it, then named fields.
    /// The target is printable ASCII (the parsers let nothing else
    /// through), so quoting it cannot be escaped from.
    fn text(&self) -> String {
        let mut line = String::with_capacity(160 + self.target.len());
        let _ = write!(
            line,
            "{} {} \"{} {} {}\" {} in={} out={} ms={:.3} pool={} upstream={} gate={} id={}",
            humantime::format_rfc3339_millis(self.time),
            self.client,
            self.method,
            self.target,
            self.protocol,
            self.status,
            self.bytes_in,
            self.bytes_out,
            duration_ms(self.duration),
            self.pool.unwrap_or("-"),
            self.upstream.unwrap_or("-"),
            if self.gate { "yes" } else { "no" },
            self.request_id,
        );
        line.push('\n');
        line
    }
}

/// What the writer thread is told.
enum Message {
    Line(Vec<u8>),
    /// Open the file again (it has been moved away).
    Reopen,
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
#[error("cannot open the access log {}: {source}", path.display())]
pub struct OpenError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: io::Error,
}

impl AccessLog {
    /// Starts the writer for `target` in `format`; `None` when the access
    /// log is off.
    pub fn start(target: &Target, format: LogFormat) -> Result<Option<AccessLog>, OpenError> {
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
            .map_err(|source| OpenError {
                path: PathBuf::from("(writer thread)"),
                source,
            })?;
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

    /// Has the file opened again, after a rotation moved it away.
    pub fn reopen(&self) {
        // Waits for room: a reopen must not be lost behind a full queue.
        let _ = self.queue.send(Message::Reopen);
    }
}

fn open(path: &Path) -> Result<File, OpenError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| OpenError {
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
    fn run(mut self, lines: &mpsc::Receiver<Message>) {
        let mut batch = Vec::with_capacity(64 * 1024);
        while let Ok(first) = lines.recv() {
            let mut next = Some(first);
            // What is waiting goes out together: one write for many lines.
            while let Some(message) = next.take() {
                match message {
                    Message::Line(line) => self.add(&mut batch, &line),
                    Message::Reopen => {
                        self.flush(&mut batch);
                        self.reopen();
                    }
                }
                if batch.len() < 64 * 1024 {
                    next = lines.try_recv().ok();
                }
            }
            self.flush(&mut batch);
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
