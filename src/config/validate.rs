//! From TOML text to a [`Config`], collecting every problem on the way.
//!
//! Stage one parses the document and deserializes each top-level section on
//! its own, so a type error in `[timeouts]` does not hide one in `[pools]`.
//! Stage two checks meaning (addresses parse, pools exist, ...) and fills in
//! the documented defaults. Each problem points at the key or value at
//! fault; a missing section points at the top of the file.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::uri::Authority;
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::file::*;
use super::tls::{self, Tls, TlsVersion, UpstreamTls};
use super::*;

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
                "pools" => file.pools = self.section(name, value),
                "health" => file.health = self.section(name, value),
                "switch" => file.switch = self.section(name, value),
                "timeouts" => file.timeouts = self.section(name, value),
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
        let pools = self.pools(file.pools.as_ref());
        let state = self.state(file.state.as_ref(), &pools);
        let maintenance = self.maintenance(file.maintenance.as_ref());
        let health = self.health(file.health.as_ref());
        let switch = file.switch.as_ref().map(|s| self.switch(s.get_ref()));
        let timeouts = self.timeouts(file.timeouts.as_ref());
        Config {
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
            digest: 0,
            warnings: Vec::new(),
        }
    }

    fn listener(&mut self, section: Option<&Spanned<ListenerSection>>) -> Listener {
        let section = section.map(Spanned::get_ref);
        let bind = match section.and_then(|s| s.bind.as_ref()) {
            Some(bind) => self.socket_addr("listener.bind", bind),
            None => DEFAULT_LISTENER_BIND.parse().expect("default bind parses"),
        };
        let max_header_bytes = self.whole_number(
            "listener.max_header_bytes",
            section.and_then(|s| s.max_header_bytes.as_ref()),
            MAX_HEADER_BYTES_FLOOR..=MAX_HEADER_BYTES_CEILING,
            DEFAULT_MAX_HEADER_BYTES as u64,
        ) as usize;
        let max_discard_bytes = self.whole_number(
            "listener.max_discard_bytes",
            section.and_then(|s| s.max_discard_bytes.as_ref()),
            0..=MAX_DISCARD_BYTES_CEILING,
            DEFAULT_MAX_DISCARD_BYTES,
        );
        let http2_max_streams = self.whole_number(
            "listener.http2_max_streams",
            section.and_then(|s| s.http2_max_streams.as_ref()),
            1..=HTTP2_MAX_STREAMS_CEILING,
            u64::from(DEFAULT_HTTP2_MAX_STREAMS),
        ) as u32;
        let http2_max_resets = self.whole_number(
            "listener.http2_max_resets",
            section.and_then(|s| s.http2_max_resets.as_ref()),
            1..=HTTP2_MAX_RESETS_CEILING,
            DEFAULT_HTTP2_MAX_RESETS,
        );
        let tls = section
            .and_then(|s| s.tls.as_ref())
            .map(|t| self.tls("listener", t));
        let redirect_https = self.redirect_https(
            "listener",
            section.and_then(|s| s.redirect_https.as_ref()),
            &tls,
        );
        Listener {
            bind,
            max_header_bytes,
            max_discard_bytes,
            http2_max_streams,
            http2_max_resets,
            redirect_https,
            tls: tls.flatten(),
        }
    }

    /// `tls`, `ca_file` and `server_name` of pool `key`.
    fn upstream_tls(&mut self, key: &str, pool: &PoolSection) -> Option<UpstreamTls> {
        let enabled = pool.tls.as_ref().is_some_and(|t| *t.get_ref());
        if !enabled {
            for (field, value) in [
                ("ca_file", &pool.ca_file),
                ("server_name", &pool.server_name),
            ] {
                if let Some(value) = value {
                    self.problem(
                        Some(value.span()),
                        format!("{key}.{field}: only applies with `tls = true`"),
                    );
                }
            }
            return None;
        }
        let server_name = match &pool.server_name {
            Some(name) => match rustls_pki_types::ServerName::try_from(name.get_ref().clone()) {
                Ok(_) => Some(name.get_ref().clone()),
                Err(_) => {
                    self.problem(
                        Some(name.span()),
                        format!(
                            "{key}.server_name: `{}` is not a DNS name or IP address",
                            name.get_ref()
                        ),
                    );
                    None
                }
            },
            None => None,
        };
        let (ca_file, loaded) = match &pool.ca_file {
            Some(file) => {
                let path = self.path(&format!("{key}.ca_file"), file);
                let loaded = tls::load_roots(&path);
                if let Err(reason) = &loaded {
                    self.problem(Some(file.span()), format!("{key}.ca_file: {reason}"));
                }
                (Some(path), loaded)
            }
            None => {
                let loaded = tls::system_roots();
                if let Err(reason) = &loaded {
                    let at = pool.tls.as_ref().map(Spanned::span);
                    self.problem(at, format!("{key}.tls: {reason}; set {key}.ca_file"));
                }
                (None, loaded)
            }
        };
        let roots = loaded.ok()?;
        Some(UpstreamTls {
            client: tls::client_config(roots),
            ca_file,
            server_name,
        })
    }

    /// `redirect_https` of listener `key`: only for a plain listener.
    fn redirect_https(
        &mut self,
        key: &str,
        value: Option<&Spanned<bool>>,
        tls: &Option<Option<Tls>>,
    ) -> bool {
        match value {
            Some(v) if *v.get_ref() && tls.is_some() => {
                self.problem(
                    Some(v.span()),
                    format!("{key}.redirect_https: a listener with TLS has nothing to redirect; remove one of them"),
                );
                false
            }
            Some(v) => *v.get_ref(),
            None => false,
        }
    }

    /// `[KEY.tls]`: every pair loaded and checked; `None` if any failed
    /// (each failure is recorded where its file is named).
    fn tls(&mut self, key: &str, section: &Spanned<TlsSection>) -> Option<Tls> {
        let section = section.get_ref();
        let min_version = match &section.min_version {
            None => TlsVersion::V1_2,
            Some(v) => match v.get_ref().as_str() {
                "1.2" => TlsVersion::V1_2,
                "1.3" => TlsVersion::V1_3,
                other => {
                    self.problem(
                        Some(v.span()),
                        format!("{key}.tls.min_version: `{other}` is not \"1.2\" or \"1.3\""),
                    );
                    TlsVersion::V1_2
                }
            },
        };
        if section.certs.get_ref().is_empty() {
            self.problem(
                Some(section.certs.span()),
                format!("{key}.tls.certs: at least one certificate is needed"),
            );
            return None;
        }
        let now = SystemTime::now();
        let mut pairs = Vec::new();
        let mut failed = false;
        for entry in section.certs.get_ref() {
            let entry = entry.get_ref();
            let cert = self.path(&format!("{key}.tls.certs.cert"), &entry.cert);
            let key_path = self.path(&format!("{key}.tls.certs.key"), &entry.key);
            match tls::load_pair(&cert, &key_path, now) {
                Ok(pair) => {
                    if pair.info.not_after <= now + tls::EXPIRY_WARNING {
                        self.warnings.push(self.at(
                            Some(entry.cert.span()),
                            format!(
                                "{key}.tls.certs.cert: {} expires at {}, within 14 days",
                                cert.display(),
                                humantime::format_rfc3339_seconds(pair.info.not_after)
                            ),
                        ));
                    }
                    pairs.push(pair);
                }
                Err(reason) => {
                    // A key that fails is the key's fault; anything else, the cert's.
                    let at = if reason.starts_with(&key_path.display().to_string()) {
                        entry.key.span()
                    } else {
                        entry.cert.span()
                    };
                    self.problem(Some(at), format!("{key}.tls.certs: {reason}"));
                    failed = true;
                }
            }
        }
        if failed {
            return None;
        }
        Some(Tls {
            min_version,
            server: tls::server_config(min_version, &pairs),
            certs: pairs.into_iter().map(|p| p.info).collect(),
        })
    }

    fn admin(&mut self, section: Option<&Spanned<AdminSection>>) -> Admin {
        let section = section.map(Spanned::get_ref);
        let given = section.and_then(|s| s.socket.as_ref());
        let socket = match given {
            Some(socket) => self.path("admin.socket", socket),
            None => self.base.join(DEFAULT_ADMIN_SOCKET),
        };
        self.directory_exists("admin.socket", &socket, given.map(Spanned::span));
        let bind = section
            .and_then(|s| s.bind.as_ref())
            .map(|b| (b.span(), self.socket_addr("admin.bind", b)));
        let token_file = section
            .and_then(|s| s.token_file.as_ref())
            .map(|t| (t.span(), self.path("admin.token_file", t)));
        let mut token = None;
        match (&bind, &token_file) {
            (Some((span, _)), None) => self.problem(
                Some(span.clone()),
                "admin.bind: a TCP admin listener needs admin.token_file (the bearer token clients must send)",
            ),
            (_, Some((span, file))) => match std::fs::read_to_string(file) {
                Ok(text) => {
                    token = BearerToken::from_file_text(&text);
                    if token.is_none() {
                        self.problem(
                            Some(span.clone()),
                            format!("admin.token_file: {} is empty", file.display()),
                        );
                    }
                }
                Err(e) => self.problem(
                    Some(span.clone()),
                    format!("admin.token_file: cannot read {}: {e}", file.display()),
                ),
            },
            (None, None) => {}
        }
        let max_connections = self.whole_number(
            "admin.max_connections",
            section.and_then(|s| s.max_connections.as_ref()),
            1..=ADMIN_MAX_CONNECTIONS_CEILING,
            DEFAULT_ADMIN_MAX_CONNECTIONS as u64,
        ) as usize;
        Admin {
            socket,
            bind: bind.map(|(_, addr)| addr),
            token_file: token_file.map(|(_, file)| file),
            token,
            max_connections,
        }
    }

    fn pools(&mut self, section: Option<&Spanned<PoolsSection>>) -> BTreeMap<String, PoolConfig> {
        let mut pools = BTreeMap::new();
        let Some(section) = section else {
            self.problem(
                None,
                "missing [pools]: define at least one pool, e.g. [pools.blue] upstreams = [\"127.0.0.1:9001\"]",
            );
            return pools;
        };
        if section.get_ref().is_empty() {
            self.problem(Some(section.span()), "[pools]: define at least one pool");
        }
        for (name, pool) in section.get_ref() {
            if !valid_pool_name(name.get_ref()) {
                self.problem(
                    Some(name.span()),
                    format!(
                        "pools.{}: a pool name may hold only letters, digits, `-` and `_`",
                        name.get_ref()
                    ),
                );
            }
            let key = format!("pools.{}", name.get_ref());
            let pool = pool.get_ref();
            let mut upstreams = Vec::new();
            let mut seen = HashSet::new();
            if pool.upstreams.get_ref().is_empty() {
                self.problem(
                    Some(pool.upstreams.span()),
                    format!("{key}.upstreams: a pool needs at least one upstream"),
                );
            }
            for addr in pool.upstreams.get_ref() {
                match parse_upstream(addr.get_ref()) {
                    Ok(authority) => {
                        if !seen.insert(authority.clone()) {
                            self.problem(
                                Some(addr.span()),
                                format!("{key}.upstreams: `{authority}` is listed twice"),
                            );
                        }
                        upstreams.push(authority);
                    }
                    Err(reason) => self.problem(
                        Some(addr.span()),
                        format!("{key}.upstreams: `{}` {reason}", addr.get_ref()),
                    ),
                }
            }
            let balance = match pool.balance.as_ref() {
                None => Balance::default(),
                Some(b) => match b.get_ref().as_str() {
                    "round_robin" => Balance::RoundRobin,
                    "least_in_flight" => Balance::LeastInFlight,
                    other => {
                        self.problem(
                            Some(b.span()),
                            format!(
                                "{key}.balance: unknown policy `{other}`, expected `round_robin` or `least_in_flight`"
                            ),
                        );
                        Balance::default()
                    }
                },
            };
            let max_connections = self.whole_number(
                &format!("{key}.max_connections"),
                pool.max_connections.as_ref(),
                1..=MAX_CONNECTIONS_CEILING,
                DEFAULT_MAX_CONNECTIONS as u64,
            ) as usize;
            let tls = self.upstream_tls(&key, pool);
            pools.insert(
                name.get_ref().clone(),
                PoolConfig {
                    upstreams,
                    balance,
                    max_connections,
                    tls,
                },
            );
        }
        pools
    }

    fn state(
        &mut self,
        section: Option<&Spanned<StateSection>>,
        pools: &BTreeMap<String, PoolConfig>,
    ) -> State {
        let section = section.map(Spanned::get_ref);
        let given = section.and_then(|s| s.file.as_ref());
        let file = match given {
            Some(file) => self.path("state.file", file),
            None => self.base.join(DEFAULT_STATE_FILE),
        };
        self.directory_exists("state.file", &file, given.map(Spanned::span));
        let initial = section.and_then(|s| s.initial_pool.as_ref());
        let initial_pool = initial
            .map(|p| p.get_ref().clone())
            .unwrap_or_else(|| DEFAULT_INITIAL_POOL.to_owned());
        if !pools.is_empty() && !pools.contains_key(&initial_pool) {
            let known: Vec<&str> = pools.keys().map(String::as_str).collect();
            let message = match initial {
                Some(_) => format!(
                    "state.initial_pool: `{initial_pool}` is not a pool; expected one of: {}",
                    known.join(", ")
                ),
                None => format!(
                    "state.initial_pool: defaults to `{DEFAULT_INITIAL_POOL}`, which is not a pool; set it to one of: {}",
                    known.join(", ")
                ),
            };
            self.problem(initial.map(Spanned::span), message);
        }
        State { file, initial_pool }
    }

    fn maintenance(&mut self, section: Option<&Spanned<MaintenanceSection>>) -> Maintenance {
        let section = section.map(Spanned::get_ref);
        let message = section
            .and_then(|s| s.message.as_ref())
            .map(|m| m.get_ref().clone())
            .unwrap_or_else(|| DEFAULT_MAINTENANCE_MESSAGE.to_owned());
        let retry_after = match section.and_then(|s| s.retry_after.as_ref()) {
            Some(d) => {
                let retry_after = self.duration("maintenance.retry_after", d, Duration::ZERO);
                if retry_after > MAX_RETRY_AFTER {
                    self.problem(
                        Some(d.span()),
                        format!(
                            "maintenance.retry_after: must be at most {}",
                            humantime::format_duration(MAX_RETRY_AFTER)
                        ),
                    );
                }
                retry_after
            }
            None => DEFAULT_RETRY_AFTER,
        };
        let allow_paths = match section.and_then(|s| s.allow_paths.as_ref()) {
            Some(paths) => paths
                .iter()
                .filter_map(|p| {
                    if p.get_ref().starts_with('/') {
                        Some(p.get_ref().clone())
                    } else {
                        self.problem(
                            Some(p.span()),
                            format!(
                                "maintenance.allow_paths: `{}` must start with `/`",
                                p.get_ref()
                            ),
                        );
                        None
                    }
                })
                .collect(),
            None => DEFAULT_ALLOW_PATHS
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
        };
        let bypass_cidrs = section
            .and_then(|s| s.bypass_cidrs.as_ref())
            .map(|cidrs| {
                cidrs
                    .iter()
                    .filter_map(|c| match parse_cidr(c.get_ref()) {
                        Some(net) => Some(net),
                        None => {
                            self.problem(
                                Some(c.span()),
                                format!(
                                    "maintenance.bypass_cidrs: `{}` is not a network like 10.0.0.0/8 or an address",
                                    c.get_ref()
                                ),
                            );
                            None
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let html_page = section.and_then(|s| s.html_page.as_ref()).and_then(|p| {
            let path = self.path("maintenance.html_page", p);
            match std::fs::read(&path) {
                Ok(body) => Some(HtmlPage {
                    path,
                    body: Bytes::from(body),
                }),
                Err(e) => {
                    self.problem(
                        Some(p.span()),
                        format!("maintenance.html_page: cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        });
        Maintenance {
            message,
            retry_after,
            allow_paths,
            bypass_cidrs,
            html_page,
        }
    }

    fn health(&mut self, section: Option<&Spanned<HealthSection>>) -> Health {
        let section = section.map(Spanned::get_ref);
        let path = match section.and_then(|s| s.path.as_ref()) {
            Some(p) if p.get_ref().starts_with('/') && p.get_ref().parse::<http::Uri>().is_ok() => {
                p.get_ref().clone()
            }
            Some(p) => {
                self.problem(
                    Some(p.span()),
                    format!("health.path: `{}` is not a path like /health", p.get_ref()),
                );
                DEFAULT_HEALTH_PATH.to_owned()
            }
            None => DEFAULT_HEALTH_PATH.to_owned(),
        };
        let min = Duration::from_millis(1);
        let interval = section
            .and_then(|s| s.interval.as_ref())
            .map_or(DEFAULT_HEALTH_INTERVAL, |d| {
                self.duration("health.interval", d, min)
            });
        let timeout = section
            .and_then(|s| s.timeout.as_ref())
            .map_or(DEFAULT_HEALTH_TIMEOUT, |d| {
                self.duration("health.timeout", d, min)
            });
        let healthy_threshold = self.threshold(
            "health.healthy_threshold",
            section.and_then(|s| s.healthy_threshold.as_ref()),
            DEFAULT_HEALTHY_THRESHOLD,
        );
        let unhealthy_threshold = self.threshold(
            "health.unhealthy_threshold",
            section.and_then(|s| s.unhealthy_threshold.as_ref()),
            DEFAULT_UNHEALTHY_THRESHOLD,
        );
        Health {
            path,
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
        }
    }

    fn switch(&mut self, section: &SwitchSection) -> SwitchWatch {
        let watch = section.watch.as_ref().map_or(DEFAULT_SWITCH_WATCH, |d| {
            self.duration("switch.watch", d, Duration::from_secs(1))
        });
        let max_error_rate = match &section.max_error_rate {
            None => DEFAULT_MAX_ERROR_RATE,
            Some(rate) if (0.0..=1.0).contains(rate.get_ref()) => *rate.get_ref(),
            Some(rate) => {
                self.problem(
                    Some(rate.span()),
                    format!(
                        "switch.max_error_rate: {} is not a share between 0 and 1 (0.05 is 5%)",
                        rate.get_ref()
                    ),
                );
                DEFAULT_MAX_ERROR_RATE
            }
        };
        let min_requests = u64::from(self.threshold(
            "switch.min_requests",
            section.min_requests.as_ref(),
            DEFAULT_MIN_REQUESTS,
        ));
        SwitchWatch {
            watch,
            max_error_rate,
            min_requests,
        }
    }

    fn timeouts(&mut self, section: Option<&Spanned<TimeoutsSection>>) -> Timeouts {
        let section = section.map(Spanned::get_ref);
        let min = Duration::from_millis(1);
        let mut pick = |key: &str, value: Option<&SpannedDuration>, default: Duration| {
            value.map_or(default, |d| self.duration(key, d, min))
        };
        Timeouts {
            connect: pick(
                "timeouts.connect",
                section.and_then(|s| s.connect.as_ref()),
                DEFAULT_CONNECT_TIMEOUT,
            ),
            upstream: pick(
                "timeouts.upstream",
                section.and_then(|s| s.upstream.as_ref()),
                DEFAULT_UPSTREAM_TIMEOUT,
            ),
            drain: pick(
                "timeouts.drain",
                section.and_then(|s| s.drain.as_ref()),
                DEFAULT_DRAIN_TIMEOUT,
            ),
            header: pick(
                "timeouts.header",
                section.and_then(|s| s.header.as_ref()),
                DEFAULT_HEADER_TIMEOUT,
            ),
            client_body: pick(
                "timeouts.client_body",
                section.and_then(|s| s.client_body.as_ref()),
                DEFAULT_CLIENT_BODY_TIMEOUT,
            ),
            send: pick(
                "timeouts.send",
                section.and_then(|s| s.send.as_ref()),
                DEFAULT_SEND_TIMEOUT,
            ),
        }
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

    /// With `on_disk`, records a problem unless `file`'s directory exists.
    fn directory_exists(&mut self, key: &str, file: &Path, span: Option<Range<usize>>) {
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

fn valid_pool_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// An upstream is `host:port`; a scheme or path is a mistake worth naming.
fn parse_upstream(addr: &str) -> Result<Authority, &'static str> {
    if addr.contains("://") {
        return Err("must be host:port without a scheme");
    }
    let authority: Authority = addr
        .parse()
        .map_err(|_| "is not an address like 127.0.0.1:9001")?;
    if authority.port_u16().is_none() {
        return Err("needs a port, like 127.0.0.1:9001");
    }
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err("is not an address like 127.0.0.1:9001");
    }
    Ok(authority)
}

/// A network, or a single address taken as a host network.
fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match parse(Path::new("sy.toml"), text, false) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }

    const MINIMAL: &str = "[pools.blue]\nupstreams = [\"127.0.0.1:9001\"]\n";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = parse(Path::new("etc/sy.toml"), MINIMAL, false).expect("valid");
        assert_eq!(config.listener.bind.to_string(), DEFAULT_LISTENER_BIND);
        assert_eq!(config.listener.max_header_bytes, DEFAULT_MAX_HEADER_BYTES);
        assert_eq!(config.state.initial_pool, "blue");
        assert_eq!(config.state.file, Path::new("etc/run/state.json"));
        assert_eq!(config.admin.socket, Path::new("etc/run/admin.sock"));
        assert_eq!(config.timeouts.upstream, DEFAULT_UPSTREAM_TIMEOUT);
        assert_eq!(config.maintenance.allow_paths, ["/health", "/status"]);
        assert!(config.preview.is_none());
    }

    #[test]
    fn every_section_error_is_reported_with_its_position() {
        let text = "[listener]\nbind = \"nope\"\n\n[timeouts]\nconnect = \"fast\"\n\n[pools.blue]\nupstreams = [\"127.0.0.1\"]\n";
        let found = problems(text);
        assert_eq!(
            found,
            [
                "2:8: listener.bind: `nope` is not an address like 127.0.0.1:8080",
                "5:11: timeouts.connect: invalid value: string \"fast\", expected a duration",
                "8:14: pools.blue.upstreams: `127.0.0.1` needs a port, like 127.0.0.1:9001",
            ]
        );
    }

    #[test]
    fn a_bad_value_hides_no_other_problem_of_its_section() {
        let text = format!(
            "{MINIMAL}[maintenance]\nretry_after = \"ten minutes\"\nbypass_cidrs = [\"10.0.0.0/33\"]\nallow_paths = [\"health\"]\nmessage = 5\n"
        );
        let found = problems(&text);
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(
            found[0].starts_with("4:15: maintenance.retry_after: "),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("5:17: maintenance.bypass_cidrs: "),
            "{found:?}"
        );
        assert!(
            found[2].starts_with("6:16: maintenance.allow_paths: "),
            "{found:?}"
        );
        assert!(
            found[3].starts_with("7:11: maintenance.message: "),
            "{found:?}"
        );
    }

    #[test]
    fn retry_after_is_at_most_a_week() {
        let text = format!("{MINIMAL}[maintenance]\nretry_after = \"1000000000y\"\n");
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("4:15: maintenance.retry_after: must be at most 7days"),
            "{found:?}"
        );
        let text = format!("{MINIMAL}[maintenance]\nretry_after = \"7d\"\n");
        assert!(problems(&text).is_empty());
    }

    #[test]
    fn semantic_errors_point_at_the_offending_value() {
        let text = "[listener]\nbind = \"nope\"\n[pools.blue]\nupstreams = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n[state]\ninitial_pool = \"red\"\n";
        let found = problems(text);
        assert_eq!(
            found,
            [
                "2:8: listener.bind: `nope` is not an address like 127.0.0.1:8080",
                "4:29: pools.blue.upstreams: `127.0.0.1:1` is listed twice",
                "6:16: state.initial_pool: `red` is not a pool; expected one of: blue",
            ]
        );
    }

    #[test]
    fn unknown_keys_and_sections_are_errors() {
        let text = format!("{MINIMAL}[listener]\nbnid = \"x\"\n[extra]\n");
        let found = problems(&text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("4:1: listener.bnid: unknown field `bnid`"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("5:2: unknown section `extra`"),
            "{found:?}"
        );
    }

    #[test]
    fn the_limits_are_defaulted_and_bounded() {
        let config = parse(Path::new("sy.toml"), MINIMAL, false).unwrap();
        assert_eq!(config.listener.max_discard_bytes, DEFAULT_MAX_DISCARD_BYTES);
        assert_eq!(config.listener.http2_max_streams, DEFAULT_HTTP2_MAX_STREAMS);
        assert_eq!(config.listener.http2_max_resets, DEFAULT_HTTP2_MAX_RESETS);
        assert_eq!(config.admin.max_connections, DEFAULT_ADMIN_MAX_CONNECTIONS);
        let text = format!(
            "{MINIMAL}[listener]\nmax_discard_bytes = -1\nhttp2_max_streams = 0\nhttp2_max_resets = 0\n[admin]\nmax_connections = 5000\n"
        );
        assert_eq!(
            problems(&text),
            [
                "4:21: listener.max_discard_bytes: must be a whole number from 0 to 67108864",
                "5:21: listener.http2_max_streams: must be a whole number from 1 to 10000",
                "6:20: listener.http2_max_resets: must be a whole number from 1 to 1000000",
                "8:19: admin.max_connections: must be a whole number from 1 to 4096",
            ]
        );
        let text = format!("{MINIMAL}[listener]\nmax_discard_bytes = 0\n");
        let config = parse(Path::new("sy.toml"), &text, false).unwrap();
        assert_eq!(config.listener.max_discard_bytes, 0, "0 closes instead");
    }

    #[test]
    fn tcp_admin_requires_a_token_file() {
        let text = format!("{MINIMAL}[admin]\nbind = \"127.0.0.1:9901\"\n");
        assert_eq!(
            problems(&text),
            ["4:8: admin.bind: a TCP admin listener needs admin.token_file (the bearer token clients must send)"]
        );
    }

    #[test]
    fn switch_rules_are_checked_and_defaulted() {
        let text = format!("{MINIMAL}[switch]\n");
        let config = parse(Path::new("sy.toml"), &text, false).unwrap();
        let rules = config.switch.expect("[switch] enables the watch");
        assert_eq!(rules.watch, DEFAULT_SWITCH_WATCH);
        assert_eq!(rules.min_requests, u64::from(DEFAULT_MIN_REQUESTS));
        let text =
            format!("{MINIMAL}[switch]\nwatch = \"10ms\"\nmax_error_rate = 5\nmin_requests = 0\n");
        let found = problems(&text);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].contains("switch.watch: must be at least 1s"),
            "{found:?}"
        );
        assert!(
            found[1].contains("not a share between 0 and 1"),
            "{found:?}"
        );
        assert!(found[2].contains("switch.min_requests"), "{found:?}");
        let config = parse(Path::new("sy.toml"), MINIMAL, false).unwrap();
        assert!(config.switch.is_none());
    }

    #[test]
    fn syntax_errors_stop_before_meaning() {
        let found = problems("[pools.blue\nupstreams = 1\n");
        assert!(!found.is_empty());
        assert!(found[0].starts_with("1:"), "{found:?}");
    }

    #[test]
    fn missing_pools_is_reported_at_the_top() {
        assert_eq!(
            problems("[listener]\nbind = \"127.0.0.1:1\"\n"),
            ["1:1: missing [pools]: define at least one pool, e.g. [pools.blue] upstreams = [\"127.0.0.1:9001\"]"]
        );
    }

    #[test]
    fn upstreams_need_host_and_port() {
        assert!(parse_upstream("127.0.0.1:9001").is_ok());
        assert!(parse_upstream("app.internal:80").is_ok());
        assert!(parse_upstream("127.0.0.1").is_err());
        assert!(parse_upstream("http://127.0.0.1:80").is_err());
        assert!(parse_upstream("").is_err());
    }

    #[test]
    fn position_counts_characters_not_bytes() {
        assert_eq!(position("ab\ncé d", 7), (2, 4));
        assert_eq!(position("x", 0), (1, 1));
    }
}
