//! Configuration: what the operator wrote, validated into one [`Config`].
//!
//! Loading runs in stages (`file.rs` describes the TOML shape, `validate.rs`
//! turns it into a [`Config`]); nothing outside this module sees the file
//! structs. Every problem carries the line and column it was found at, and
//! all of them are reported at once, so `switchyard check` can list them as
//! `PATH:LINE:COL: message` and a bad reload can show them in the admin API.

mod bounds;
mod file;
pub mod read;
pub mod tls;
mod validate;

pub use bounds::{message_fault, MAX_MESSAGE_BYTES, MAX_PAGE_PLACEHOLDERS, MAX_RETRY_AFTER};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use ipnet::IpNet;

/// Where `serve`, `check` and `ctl` look for the config when not told.
pub const DEFAULT_CONFIG_PATH: &str = "config/switchyard.toml";
/// Default public listener address.
pub const DEFAULT_LISTENER_BIND: &str = "127.0.0.1:8080";
/// Default limit on a request's header block (request line included), in bytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// Default most of an unwanted request body (one the proxy answers
/// without forwarding, such as the gate's) read and discarded to keep its
/// connection open; a larger one closes the connection after the answer.
pub const DEFAULT_MAX_DISCARD_BYTES: u64 = 1024 * 1024;
/// Default most HTTP/2 streams one client connection may have open at once.
pub const DEFAULT_HTTP2_MAX_STREAMS: u32 = 100;
/// Default number of streams an HTTP/2 client may reset before it is
/// judged: past it, a connection that reset most of its streams is sent
/// GOAWAY and closed (the "rapid reset" attack).
pub const DEFAULT_HTTP2_MAX_RESETS: u64 = 100;
/// Default most connections the TCP admin listener keeps open at once.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// Default admin socket path, relative to the config file.
pub const DEFAULT_ADMIN_SOCKET: &str = "run/admin.sock";
/// Default state file path, relative to the config file.
pub const DEFAULT_STATE_FILE: &str = "run/state.json";
/// Default pool made live when no state file exists yet.
pub const DEFAULT_INITIAL_POOL: &str = "blue";
/// Default text of the maintenance answer.
pub const DEFAULT_MAINTENANCE_MESSAGE: &str = "Service is undergoing maintenance";
/// Default `Retry-After` of the maintenance answer.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5 * 60);

/// Default paths that pass the maintenance gate.
pub const DEFAULT_ALLOW_PATHS: &[&str] = &["/health", "/status"];
/// Default health probe path.
pub const DEFAULT_HEALTH_PATH: &str = "/health";
/// Default time between two probes of one upstream.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Default budget of one probe.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
/// Default consecutive successes that make an upstream healthy again.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Default consecutive failures that make an upstream unhealthy.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;
/// Default time a switch is watched for (with a `[switch]` section).
pub const DEFAULT_SWITCH_WATCH: Duration = Duration::from_secs(120);
/// Default error share that rolls a switch back.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.05;
/// Default number of requests below which a watch gives no verdict.
pub const DEFAULT_MIN_REQUESTS: u32 = 20;
/// Default budget to open a TCP connection to an upstream.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default budget from sending a request until the upstream's response head arrives.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Default budget for in-flight work at shutdown, and for tunnels after a
/// switch away from their pool or the gate turning on.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default budget for a client to send a complete request head; also how
/// long an idle keep-alive connection is kept.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default key prefix of the decisions in etcd.
pub const DEFAULT_CLUSTER_PREFIX: &str = "/switchyard";
/// Default time a change through the cluster waits for every instance.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default lease of an instance's registration in etcd.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// Default cap on the connections open to one upstream at once: what a
/// flood of slow requests can make the proxy open, whatever the timeouts.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default longest pause in a request body (between two reads): a client
/// that stops sending its body mid-way holds an upstream connection no
/// longer than this.
pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Default longest time a client may take no byte of an answer before its
/// connection is closed: a client that does not read cannot hold the
/// answer's buffers and its upstream connection for longer.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// A validated configuration. Paths are already resolved against the
/// directory of the config file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file, as it was named (not canonicalized).
    pub path: PathBuf,
    /// The public entry point.
    pub listener: Listener,
    /// The optional preview entry point, routed to the pool that is not live.
    pub preview: Option<Preview>,
    /// Where the admin API listens.
    pub admin: Admin,
    /// Where the decisions persist.
    pub state: State,
    /// What users see during maintenance, and who bypasses it.
    pub maintenance: Maintenance,
    /// Upstream pools by name (`blue`, `green`, ...).
    pub pools: BTreeMap<String, PoolConfig>,
    /// How upstreams are probed.
    pub health: Health,
    /// The watch after a switch that rolls back by itself; `None` without
    /// a `[switch]` section.
    pub switch: Option<SwitchWatch>,
    /// Time budgets.
    pub timeouts: Timeouts,
    /// The etcd cluster the decisions live in; `None` without a
    /// `[cluster]` section (then nothing of etcd is touched).
    pub cluster: Option<Cluster>,
    /// The log lines' format and the access log.
    pub log: Log,
    /// A digest of the file's text, so a watcher can tell whether the file
    /// on disk is still the one this config came from.
    pub digest: u64,
    /// What is valid but deserves attention, such as a certificate that
    /// expires within 14 days.
    pub warnings: Vec<Problem>,
}

/// The public listener.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Address to accept connections on.
    pub bind: SocketAddr,
    /// Largest accepted request head (request line and headers), in bytes;
    /// larger heads get `431`. Applies to the preview listener too, as do
    /// the limits below.
    pub max_header_bytes: usize,
    /// Most of an unwanted request body read and discarded to keep its
    /// connection; `0` closes every such connection instead.
    pub max_discard_bytes: u64,
    /// Most HTTP/2 streams open at once on one client connection.
    pub http2_max_streams: u32,
    /// Resets after which an HTTP/2 connection that reset most of its
    /// streams is sent GOAWAY.
    pub http2_max_resets: u64,
    /// Plain listener only: answer every request with a 308 to https.
    pub redirect_https: bool,
    /// TLS termination, if configured.
    pub tls: Option<tls::Tls>,
}

/// The preview listener.
#[derive(Debug, Clone)]
pub struct Preview {
    /// Address to accept connections on.
    pub bind: SocketAddr,
    /// Whether preview traffic passes the maintenance gate.
    pub bypass_maintenance: bool,
    /// Plain listener only: answer every request with a 308 to https.
    pub redirect_https: bool,
    /// TLS termination, if configured.
    pub tls: Option<tls::Tls>,
}

/// The admin API's listeners.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Unix socket path (created with mode 0600).
    pub socket: PathBuf,
    /// Optional TCP address; requires `token_file`.
    pub bind: Option<SocketAddr>,
    /// File holding the bearer token of the TCP listener.
    pub token_file: Option<PathBuf>,
    /// The token `token_file` held when the config was loaded: a reload
    /// after rotating it takes the new one at once.
    pub token: Option<Secret>,
    /// File holding the read-only token of the TCP listener.
    pub read_token_file: Option<PathBuf>,
    /// The token `read_token_file` held when the config was loaded: it may
    /// read the status, windows and metrics, and change nothing.
    pub read_token: Option<Secret>,
    /// Most connections the TCP listener keeps open at once; more are
    /// closed as they arrive.
    pub max_connections: usize,
}

/// The shortest `maintenance.bypass_secret_file` accepted: the bypass
/// tokens' HMAC-SHA256 key should hold as much as its output.
pub const MIN_BYPASS_SECRET_BYTES: usize = 32;

/// A secret read from a file (a bearer token, the bypass tokens' key),
/// kept out of logs and debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// The secret in a file's text, surrounding white space trimmed (a
    /// trailing newline does not count); `None` if nothing is left.
    pub fn from_file_text(text: &str) -> Option<Secret> {
        let token = text.trim();
        (!token.is_empty()).then(|| Secret(token.as_bytes().to_vec()))
    }

    /// A key file's bytes as they are, binary or not, but for one final
    /// newline (`\n` or `\r\n`), which editors and `echo` add.
    pub fn from_file_bytes(mut bytes: Vec<u8>) -> Secret {
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        Secret(bytes)
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty (never, when read by [`Secret::from_file_text`]).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Durable state.
#[derive(Debug, Clone)]
pub struct State {
    /// The JSON file holding the decisions.
    pub file: PathBuf,
    /// Pool made live when `file` does not exist yet.
    pub initial_pool: String,
}

/// The maintenance gate's answer and exceptions.
#[derive(Debug, Clone)]
pub struct Maintenance {
    /// Default message of the 503 answer.
    pub message: String,
    /// Default `Retry-After`.
    pub retry_after: Duration,
    /// Path prefixes (whole segments) that still reach the live pool.
    pub allow_paths: Vec<String>,
    /// Client networks that still reach the live pool.
    pub bypass_cidrs: Vec<IpNet>,
    /// HTML page served to clients that prefer `text/html`.
    pub html_page: Option<HtmlPage>,
    /// The key of bypass tokens, read from `bypass_secret_file` when the
    /// config is loaded; without it, no token is issued or honoured.
    pub bypass_secret: Option<Secret>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Log {
    /// The format of every line: the diagnostic log's and the access log's.
    pub format: LogFormat,
    /// Where each answered request is logged, if anywhere.
    pub access: AccessLog,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of words and `key=value` pairs, for people.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Where the access log goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AccessLog {
    /// Nowhere: no line per request.
    #[default]
    Off,
    /// Standard error, between the other log lines.
    Stderr,
    /// This file, appended to, and opened again on `SIGUSR1` (after a
    /// rotation has moved it away).
    File(PathBuf),
}

/// A maintenance page, read when the config is loaded.
#[derive(Debug, Clone)]
pub struct HtmlPage {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its bytes.
    pub body: Bytes,
}

/// One upstream pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Upstream addresses (`host:port`).
    pub upstreams: Vec<Authority>,
    /// How requests are spread over them.
    pub balance: Balance,
    /// The most connections open to each upstream at once (tunnels aside).
    pub max_connections: usize,
    /// TLS to the upstreams, if `tls = true`.
    pub tls: Option<tls::UpstreamTls>,
}

/// A balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Each upstream in turn.
    #[default]
    RoundRobin,
    /// The upstream with the fewest requests in flight (ties in turn).
    LeastInFlight,
}

impl Balance {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastInFlight => "least_in_flight",
        }
    }
}

/// Health probing.
#[derive(Debug, Clone)]
pub struct Health {
    /// Path probed with `GET`.
    pub path: String,
    /// Time between probes of one upstream.
    pub interval: Duration,
    /// Budget of one probe.
    pub timeout: Duration,
    /// Consecutive successes that make an upstream healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make an upstream unhealthy.
    pub unhealthy_threshold: u32,
}

/// `[switch]`: after a switch, watch the new live pool and roll back if
/// it answers too many errors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwitchWatch {
    /// How long after a switch the new pool is watched.
    pub watch: Duration,
    /// Share (0 to 1) of 5xx answers and upstream failures that triggers
    /// the rollback.
    pub max_error_rate: f64,
    /// No verdict on fewer requests than this.
    pub min_requests: u64,
}

/// Time budgets.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Opening a TCP connection to an upstream.
    pub connect: Duration,
    /// From the moment the upstream has the whole request (its turn, see
    /// `body::Progress`) until its response head arrives.
    pub upstream: Duration,
    /// In-flight work at shutdown; also how long a tunnel outlives its
    /// pool's switch or the gate turning on.
    pub drain: Duration,
    /// Three bounds on a client, one budget: its complete request head
    /// (from the connection's start, or from its last answer); how long a
    /// kept-alive connection may sit idle (HTTP/1 and HTTP/2); and how
    /// long a request body may take to start, or to be discarded when the
    /// proxy answers without it. The admin listeners' head deadline too.
    pub header: Duration,
    /// The longest a request body may pause between two reads; also the
    /// deadline for an admin call's whole body.
    pub client_body: Duration,
    /// The longest a client may take no byte of an answer.
    pub send: Duration,
}

/// `[cluster]`: one decision across many instances, held in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// etcd v3 endpoints, `http://host:port`.
    pub endpoints: Vec<String>,
    /// Every key of this service lives under it (no trailing `/`).
    pub prefix: String,
    /// This instance's name, unique in the fleet.
    pub instance: String,
    /// How long a change waits for every instance to apply it.
    pub ack_timeout: Duration,
    /// How long an instance that stops renewing its lease keeps counting.
    pub lease_ttl: Duration,
}

/// One problem in a config file, with its position (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Line of the offending text.
    pub line: usize,
    /// Column (in characters) of the offending text.
    pub column: usize,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        /// The config path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but has problems.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        /// The config path.
        path: PathBuf,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

impl Config {
    /// Every warning as one `PATH:LINE:COL: warning: message` line.
    pub fn warning_lines(&self) -> Vec<String> {
        self.warnings
            .iter()
            .map(|p| p.located(&self.path, Some("warning")))
            .collect()
    }

    /// A digest over every certificate and key file as loaded.
    pub fn files_digest(&self) -> u64 {
        let all: Vec<u8> = self
            .certificates()
            .iter()
            .flat_map(|(_, c)| c.digest.to_le_bytes())
            .collect();
        digest(&all)
    }

    /// Every certificate of every listener, with its listener's name.
    pub fn certificates(&self) -> Vec<(&'static str, &tls::CertInfo)> {
        let listener = self
            .listener
            .tls
            .iter()
            .flat_map(|t| &t.certs)
            .map(|c| ("listener", c));
        let preview = self
            .preview
            .iter()
            .filter_map(|p| p.tls.as_ref())
            .flat_map(|t| &t.certs)
            .map(|c| ("preview", c));
        listener.chain(preview).collect()
    }
}

impl ConfigError {
    /// Every problem as one `PATH:LINE:COL: message` line.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Read { .. } => vec![self.to_string()],
            ConfigError::Invalid { path, problems } => {
                problems.iter().map(|p| p.located(path, None)).collect()
            }
        }
    }
}

/// A digest of `bytes`: 64-bit FNV-1a, a fixed function, so the same text
/// has the same digest in every process and every build, and the config
/// `version` of two proxies can be compared. (It tells changes apart; it
/// is no defence against a forger.)
pub fn digest(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| p.located(path, None)).collect();
    lines.join("\n")
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read::regular_text_file(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::validate(path, &text, true)
    }

    /// Validates `text` as the contents of the config file at `path`
    /// (which anchors relative paths and error messages). Unlike
    /// [`Config::load`], it does not require the directories of
    /// `state.file` and `admin.socket` to exist.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::validate(path, text, false)
    }

    fn validate(path: &Path, text: &str, on_disk: bool) -> Result<Config, ConfigError> {
        let mut config =
            validate::parse(path, text, on_disk).map_err(|problems| ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })?;
        config.digest = digest(text.as_bytes());
        Ok(config)
    }

    /// A one-line summary for `check` and the startup log.
    pub fn summary(&self) -> String {
        let pools: Vec<String> = self
            .pools
            .iter()
            .map(|(name, pool)| format!("{name} ({} upstreams)", pool.upstreams.len()))
            .collect();
        format!(
            "listener {}, pools {}, initial pool {}",
            self.listener.bind,
            pools.join(", "),
            self.state.initial_pool
        )
    }
}

impl Problem {
    /// `PATH:LINE:COL: [severity: ]message`, the way compilers write it,
    /// so editors and CI annotators can jump to it.
    pub fn located(&self, path: &Path, severity: Option<&str>) -> String {
        let severity = severity.map(|s| format!("{s}: ")).unwrap_or_default();
        let (line, column) = (self.line, self.column);
        format!(
            "{}:{line}:{column}: {severity}{}",
            path.display(),
            self.message
        )
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::digest;

    #[test]
    fn the_digest_is_the_fixed_fnv_1a() {
        // The published FNV-1a 64 test vectors: any build gives these.
        assert_eq!(digest(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(digest(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(digest(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
