//! `[state]`, `[maintenance]` and `[timeouts]`: where decisions persist,
//! what the gate answers, and every time budget.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use ipnet::IpNet;
use toml::Spanned;

use super::super::file::*;
use super::super::*;
use super::*;

impl Validator<'_> {
    pub(super) fn state(
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
        self.file_can_be("state.file", &file, given.map(Spanned::span));
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

    pub(super) fn maintenance(
        &mut self,
        section: Option<&Spanned<MaintenanceSection>>,
    ) -> Maintenance {
        let section = section.map(Spanned::get_ref);
        let given = section.and_then(|s| s.message.as_ref());
        if let Some(fault) = given.and_then(|m| message_fault(m.get_ref())) {
            let span = given.map(Spanned::span);
            self.problem(span, format!("maintenance.message: {fault}"));
        }
        let message = given
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
            let body = self.read_file("maintenance.html_page", p.span(), &path)?;
            let placeholders = String::from_utf8_lossy(&body).matches("{{").count();
            if placeholders > MAX_PAGE_PLACEHOLDERS {
                self.problem(
                    Some(p.span()),
                    format!(
                        "maintenance.html_page: {} holds {placeholders} `{{{{`; at most {MAX_PAGE_PLACEHOLDERS} (the page is rendered whole at every change)",
                        path.display()
                    ),
                );
            }
            Some(HtmlPage {
                path,
                body: Bytes::from(body),
            })
        });
        let bypass_secret = section
            .and_then(|s| s.bypass_secret_file.as_ref())
            .and_then(|file| self.bypass_secret(file));
        Maintenance {
            message,
            retry_after,
            allow_paths,
            bypass_cidrs,
            html_page,
            bypass_secret,
        }
    }

    /// The secret in `maintenance.bypass_secret_file`, if it is readable
    /// and long enough to sign with.
    fn bypass_secret(&mut self, file: &Spanned<String>) -> Option<Secret> {
        let path = self.path("maintenance.bypass_secret_file", file);
        let bytes = self.read_file("maintenance.bypass_secret_file", file.span(), &path)?;
        let secret = Secret::from_file_bytes(bytes);
        if secret.len() < MIN_BYPASS_SECRET_BYTES {
            self.problem(
                Some(file.span()),
                format!(
                    "maintenance.bypass_secret_file: {} holds {} bytes (a final newline aside); a bypass secret needs at least {MIN_BYPASS_SECRET_BYTES} (try `openssl rand -hex 32`)",
                    path.display(),
                    secret.len()
                ),
            );
            return None;
        }
        Some(secret)
    }

    pub(super) fn timeouts(&mut self, section: Option<&Spanned<TimeoutsSection>>) -> Timeouts {
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
}

/// A network, or a single address taken as a host network.
fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}
