//! The config file as written: one serde struct per TOML section.
//!
//! These structs only know the file's shape. Every field that validation may
//! need to point at is `Spanned`, so a semantic error can name the line and
//! column of the offending value. Defaults live in `validate.rs`, beside the
//! checks, so that one place decides what a missing key means.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// A humantime duration (`"500ms"`, `"30s"`, `"10m"`) with its position.
pub type SpannedDuration = Spanned<humantime_serde::Serde<Duration>>;

/// `[listener]`: the public entry point.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub bind: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_discard_bytes: Option<Spanned<i64>>,
    pub http2_max_streams: Option<Spanned<i64>>,
    pub http2_max_resets: Option<Spanned<i64>>,
    pub redirect_https: Option<Spanned<bool>>,
    pub tls: Option<Spanned<TlsSection>>,
}

/// `[listener.tls]` and `[preview.tls]`: TLS termination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub min_version: Option<Spanned<String>>,
    pub certs: Spanned<Vec<Spanned<CertSection>>>,
}

/// `[[listener.tls.certs]]`: one certificate chain and its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertSection {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// `[preview]`: a second listener that routes to the pool that is not live.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewSection {
    pub bind: Spanned<String>,
    pub bypass_maintenance: Option<bool>,
    pub redirect_https: Option<Spanned<bool>>,
    pub tls: Option<Spanned<TlsSection>>,
}

/// `[admin]`: where operators reach the control plane.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub socket: Option<Spanned<String>>,
    pub bind: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub read_token_file: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
}

/// `[state]`: where the decisions persist.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    pub file: Option<Spanned<String>>,
    pub initial_pool: Option<Spanned<String>>,
}

/// `[maintenance]`: what gated users see, and who still gets through.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSection {
    pub message: Option<Spanned<String>>,
    pub retry_after: Option<SpannedDuration>,
    pub allow_paths: Option<Vec<Spanned<String>>>,
    pub bypass_cidrs: Option<Vec<Spanned<String>>>,
    pub html_page: Option<Spanned<String>>,
    pub bypass_secret_file: Option<Spanned<String>>,
}

/// `[pools.NAME]`: one upstream pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    pub upstreams: Spanned<Vec<Spanned<String>>>,
    pub balance: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub tls: Option<Spanned<bool>>,
    pub ca_file: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
}

/// `[pools]`: every pool by name.
pub type PoolsSection = BTreeMap<Spanned<String>, Spanned<PoolSection>>;

/// `[health]`: how upstreams are probed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    pub path: Option<Spanned<String>>,
    pub interval: Option<SpannedDuration>,
    pub timeout: Option<SpannedDuration>,
    pub healthy_threshold: Option<Spanned<i64>>,
    pub unhealthy_threshold: Option<Spanned<i64>>,
}

/// `[switch]`: the watch after a switch, and when it rolls back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchSection {
    pub watch: Option<SpannedDuration>,
    pub max_error_rate: Option<Spanned<f64>>,
    pub min_requests: Option<Spanned<i64>>,
}

/// `[timeouts]`: every time budget.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    pub connect: Option<SpannedDuration>,
    pub upstream: Option<SpannedDuration>,
    pub drain: Option<SpannedDuration>,
    pub header: Option<SpannedDuration>,
    pub client_body: Option<SpannedDuration>,
    pub send: Option<SpannedDuration>,
}

/// `[cluster]`: the etcd cluster a fleet of instances holds one decision in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub endpoints: Spanned<Vec<Spanned<String>>>,
    pub prefix: Option<Spanned<String>>,
    pub instance: Option<Spanned<String>>,
    pub ack_timeout: Option<SpannedDuration>,
    pub lease_ttl: Option<SpannedDuration>,
}

/// `[log]`: the format of every log line, and the access log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub format: Option<Spanned<String>>,
    pub access: Option<Spanned<String>>,
}

/// The whole file, section by section; `None` where a section is absent or
/// could not be read (its error is already recorded).
#[derive(Debug, Default)]
pub struct FileConfig {
    pub listener: Option<Spanned<ListenerSection>>,
    pub preview: Option<Spanned<PreviewSection>>,
    pub admin: Option<Spanned<AdminSection>>,
    pub state: Option<Spanned<StateSection>>,
    pub maintenance: Option<Spanned<MaintenanceSection>>,
    pub pools: Option<Spanned<PoolsSection>>,
    pub health: Option<Spanned<HealthSection>>,
    pub switch: Option<Spanned<SwitchSection>>,
    pub timeouts: Option<Spanned<TimeoutsSection>>,
    pub cluster: Option<Spanned<ClusterSection>>,
    pub log: Option<Spanned<LogSection>>,
    /// Whether the file has a `[pools]` section, read or not: one that
    /// could not be read is not also missing.
    pub has_pools: bool,
}
