//! `[pools]`, `[health]` and `[switch]`: the upstreams, how they are
//! probed, and when a switch rolls back.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use http::uri::Authority;
use toml::Spanned;

use super::super::file::*;
use super::super::tls::{self, UpstreamTls};
use super::super::*;
use super::*;

impl Validator<'_> {
    pub(super) fn pools(
        &mut self,
        section: Option<&Spanned<PoolsSection>>,
        has_pools: bool,
    ) -> BTreeMap<String, PoolConfig> {
        let mut pools = BTreeMap::new();
        let Some(section) = section else {
            if has_pools {
                return pools;
            }
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

    /// `tls`, `ca_file` and `server_name` of pool `key`.
    pub(super) fn upstream_tls(&mut self, key: &str, pool: &PoolSection) -> Option<UpstreamTls> {
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
    pub(super) fn health(&mut self, section: Option<&Spanned<HealthSection>>) -> Health {
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

    pub(super) fn switch(&mut self, section: &SwitchSection) -> SwitchWatch {
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
}

fn valid_pool_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// An upstream is `host:port`; a scheme or path is a mistake worth naming.
pub(super) fn parse_upstream(addr: &str) -> Result<Authority, &'static str> {
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
