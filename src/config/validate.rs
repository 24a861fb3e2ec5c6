//! From TOML text to a [`Config`], collecting every problem on the way.
//!
//! Stage one parses the document and deserializes each top-level section on
//! its own, so a type error in `[timeouts]` does not hide one in `[pools]`.
//! Stage two checks meaning (addresses parse, pools exist, ...) and fills in
//! the documented defaults. Each problem points at the key or value at
//! fault; a missing section points at the top of the file.

use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::file::*;
use super::*;

mod behaviour;
mod cluster;
mod files;
mod listeners;
mod log;
mod pools;

/// The sections a config file may have.
const SECTIONS: &[&str] = &[
    "listener",
    "preview",
    "admin",
    "state",
    "maintenance",
    "pools",
    "health",
    "switch",
    "timeouts",
    "cluster",
    "log",
];

/// Largest `max_header_bytes` accepted: beyond this a header block is an attack.
const MAX_HEADER_BYTES_CEILING: u64 = 1024 * 1024;
/// Smallest `max_header_bytes` accepted: below this ordinary browsers break.
const MAX_HEADER_BYTES_FLOOR: u64 = 1024;
/// Largest `max_connections` accepted per upstream.
const MAX_CONNECTIONS_CEILING: u64 = 65_536;
/// Largest `max_discard_bytes` accepted: reading more to save one
/// connection costs more than the connection.
const MAX_DISCARD_BYTES_CEILING: u64 = 64 * 1024 * 1024;
/// Largest `http2_max_streams` accepted.
const HTTP2_MAX_STREAMS_CEILING: u64 = 10_000;
/// Largest `http2_max_resets` accepted.
const HTTP2_MAX_RESETS_CEILING: u64 = 1_000_000;
/// Largest `admin.max_connections` accepted.
const ADMIN_MAX_CONNECTIONS_CEILING: u64 = 4096;

/// Parses and validates; `Err` holds every problem, sorted by position.
/// With `on_disk`, the directories the config names for files switchyard
/// creates (the state file, the admin socket) must exist: switchyard never
/// creates one, since a missing one is a mistake or an unmounted volume.
pub(super) fn parse(path: &Path, text: &str, on_disk: bool) -> Result<Config, Vec<Problem>> {
    let mut v = Validator {
        on_disk,
        text,
        base: path.parent().map(Path::to_owned).unwrap_or_default(),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let file = v.read_sections();
    if !v.problems.is_empty() && file.is_none() {
        return Err(v.finish());
    }
    let mut config = v.build(path, file.unwrap_or_default());
    if v.problems.is_empty() {
        config.warnings = std::mem::take(&mut v.warnings);
        Ok(config)
    } else {
        Err(v.finish())
    }
}

struct Validator<'t> {
    /// Whether directories named by the config must exist.
    on_disk: bool,
    text: &'t str,
    /// Directory that relative paths resolve against.
    base: PathBuf,
    problems: Vec<Problem>,
    /// What is valid but deserves attention (a certificate about to expire).
    warnings: Vec<Problem>,
}

impl Validator<'_> {
    fn finish(mut self) -> Vec<Problem> {
        self.problems.sort_by_key(|p| (p.line, p.column));
        self.problems.dedup();
        self.problems
    }

    /// Records a problem at a byte span of the text (`None`: top of file).
    fn problem(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let problem = self.at(span, message);
        self.problems.push(problem);
    }

    /// A problem (or warning) at a byte span of the text.
    fn at(&self, span: Option<Range<usize>>, message: impl Into<String>) -> Problem {
        let (line, column) = match span {
            Some(span) => position(self.text, span.start),
            None => (1, 1),
        };
        Problem {
            line,
            column,
            message: message.into(),
        }
    }

    /// Stage one: syntax, then the shape of each section. `None` when the
    /// document itself does not parse.
    fn read_sections(&mut self) -> Option<FileConfig> {
        let (root, errors) = DeTable::parse_recoverable(self.text);
        if !errors.is_empty() {
            for error in errors {
                self.problem(error.span(), error.message().to_owned());
            }
            return None;
        }
        let mut file = FileConfig::default();
        for (key, value) in root.into_inner() {
            let name: &str = key.get_ref();
            match name {
                "listener" => file.listener = self.section(name, value),
                "preview" => file.preview = self.section(name, value),
                "admin" => file.admin = self.section(name, value),
                "state" => file.state = self.section(name, value),
                "maintenance" => file.maintenance = self.section(name, value),
                "pools" => {
                    file.has_pools = true;
                    file.pools = self.section(name, value);
                }
                "health" => file.health = self.section(name, value),
                "switch" => file.switch = self.section(name, value),
                "timeouts" => file.timeouts = self.section(name, value),
                "cluster" => file.cluster = self.section(name, value),
                "log" => file.log = self.section(name, value),
                other => self.problem(
                    Some(key.span()),
                    format!(
                        "unknown section `{other}`, expected one of: {}",
                        SECTIONS.join(", ")
                    ),
                ),
            }
        }
        Some(file)
    }

    fn section<T: DeserializeOwned>(
        &mut self,
        name: &str,
        value: Spanned<DeValue<'_>>,
    ) -> Option<Spanned<T>> {
        // serde stops at a section's first bad value. To name every one,
        // and by its key, a bad key is dropped and the section read again
        // (at most once per key), until it reads or fails as a whole.
        let mut value = value;
        let mut dropped: Vec<String> = Vec::new();
        loop {
            let span = value.span();
            let error = match Spanned::<T>::deserialize(ValueDeserializer::from(value.clone())) {
                // With bad keys dropped, the rest is still checked (their
                // problems recorded; the config is refused all the same).
                Ok(section) => return Some(section),
                Err(error) => error,
            };
            let at = error.span().unwrap_or(span);
            let DeValue::Table(table) = value.get_mut() else {
                self.problem(Some(at), format!("[{name}]: {}", error.message()));
                return None;
            };
            let culprit = table
                .iter()
                .find(|(key, value)| {
                    key.span().contains(&at.start) || value.span().contains(&at.start)
                })
                .map(|(key, _)| key.clone());
            match culprit {
                Some(key) => {
                    table.remove(&key);
                    let key = key.into_inner().to_string();
                    self.problem(Some(at), format!("{name}.{key}: {}", error.message()));
                    dropped.push(key);
                }
                None => {
                    // A required key dropped above is reported already.
                    let message = error.message();
                    if !dropped
                        .iter()
                        .any(|key| message.contains(&format!("`{key}`")))
                    {
                        self.problem(Some(at), format!("[{name}]: {message}"));
                    }
                    return None;
                }
            }
        }
    }

    /// Stage two: meaning and defaults.
    fn build(&mut self, path: &Path, file: FileConfig) -> Config {
        let listener = self.listener(file.listener.as_ref());
        let preview = file.preview.as_ref().map(|p| {
            let bind = self.socket_addr("preview.bind", &p.get_ref().bind);
            // Port 0 asks the system for any free port, so two of them differ.
            if bind == listener.bind && bind.port() != 0 {
                self.problem(
                    Some(p.get_ref().bind.span()),
                    "preview.bind: must differ from listener.bind",
                );
            }
            let tls = p.get_ref().tls.as_ref().map(|t| self.tls("preview", t));
            let redirect_https =
                self.redirect_https("preview", p.get_ref().redirect_https.as_ref(), &tls);
            Preview {
                bind,
                bypass_maintenance: p.get_ref().bypass_maintenance.unwrap_or(true),
                redirect_https,
                tls: tls.flatten(),
            }
        });
        let admin = self.admin(file.admin.as_ref());
        let pools = self.pools(file.pools.as_ref(), file.has_pools);
        let state = self.state(file.state.as_ref(), &pools);
        let maintenance = self.maintenance(file.maintenance.as_ref());
        let health = self.health(file.health.as_ref());
        let switch = file.switch.as_ref().map(|s| self.switch(s.get_ref()));
        let timeouts = self.timeouts(file.timeouts.as_ref());
        let cluster = file.cluster.as_ref().map(|c| self.cluster(c.get_ref()));
        let log = self.log(file.log.as_ref());
        let config = Config {
            path: path.to_owned(),
            listener,
            preview,
            admin,
            state,
            maintenance,
            pools,
            health,
            switch,
            timeouts,
            cluster,
            log,
            digest: 0,
            warnings: Vec::new(),
        };
        self.files_apart(&config);
        config
    }

    fn socket_addr(&mut self, key: &str, value: &Spanned<String>) -> SocketAddr {
        value.get_ref().parse().unwrap_or_else(|_| {
            self.problem(
                Some(value.span()),
                format!(
                    "{key}: `{}` is not an address like 127.0.0.1:8080",
                    value.get_ref()
                ),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    /// The bytes of `file`, named by `key` at `span`; a problem if it
    /// cannot be read.
    fn read_file(&mut self, key: &str, span: Range<usize>, file: &Path) -> Option<Vec<u8>> {
        match super::read::regular_file(file) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.problem(
                    Some(span),
                    format!("{key}: cannot read {}: {e}", file.display()),
                );
                None
            }
        }
    }

    fn path(&mut self, key: &str, value: &Spanned<String>) -> PathBuf {
        if value.get_ref().is_empty() {
            self.problem(Some(value.span()), format!("{key}: must not be empty"));
        }
        let path = Path::new(value.get_ref());
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base.join(path)
        }
    }

    /// With `on_disk`, records a problem unless `file` could be made: its
    /// directory exists, and it is not a directory itself.
    fn file_can_be(&mut self, key: &str, file: &Path, span: Option<Range<usize>>) {
        if self.on_disk && file.is_dir() {
            self.problem(
                span,
                format!(
                    "{key}: {} is a directory; name a file (in it, for example)",
                    file.display()
                ),
            );
            return;
        }
        let dir = match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if self.on_disk && !dir.is_dir() {
            let default = if span.is_none() { " (the default)" } else { "" };
            self.problem(
                span,
                format!(
                    "{key}: the directory {} does not exist{default}; create it (switchyard does not)",
                    dir.display()
                ),
            );
        }
    }

    fn duration(&mut self, key: &str, value: &SpannedDuration, min: Duration) -> Duration {
        let duration = **value.get_ref();
        if duration < min {
            self.problem(
                Some(value.span()),
                format!(
                    "{key}: must be at least {}",
                    humantime::format_duration(min)
                ),
            );
        }
        duration
    }

    /// A whole-number key within `range`; `default` where it is absent, or
    /// (the problem recorded) where it is out of range.
    fn whole_number(
        &mut self,
        key: &str,
        value: Option<&Spanned<i64>>,
        range: RangeInclusive<u64>,
        default: u64,
    ) -> u64 {
        let Some(n) = value else { return default };
        match u64::try_from(*n.get_ref()) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                let (low, high) = range.into_inner();
                let message = if high == u64::from(u32::MAX) {
                    format!("{key}: must be a whole number of at least {low}")
                } else {
                    format!("{key}: must be a whole number from {low} to {high}")
                };
                self.problem(Some(n.span()), message);
                default
            }
        }
    }

    fn threshold(&mut self, key: &str, value: Option<&Spanned<i64>>, default: u32) -> u32 {
        let n = self.whole_number(key, value, 1..=u64::from(u32::MAX), u64::from(default));
        u32::try_from(n).expect("bounded by the range")
    }
}

/// Line and column (1-based, column in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
