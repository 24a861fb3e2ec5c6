//! The entry points: `[listener]`, `[preview]`'s TLS and redirect, `[admin]`.

use std::time::SystemTime;

use toml::Spanned;

use super::super::tls::{self, Tls, TlsVersion};
use super::super::*;
use super::*;

impl Validator<'_> {
    pub(super) fn listener(&mut self, section: Option<&Spanned<ListenerSection>>) -> Listener {
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
    /// `redirect_https` of listener `key`: only for a plain listener.
    pub(super) fn redirect_https(
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
    /// `[KEY.tls]`: every pair loaded and checked; `None` if any failed
    /// (each failure is recorded where its file is named).
    pub(super) fn tls(&mut self, key: &str, section: &Spanned<TlsSection>) -> Option<Tls> {
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
                Err(error) => {
                    let at = if error.is_the_keys() {
                        entry.key.span()
                    } else {
                        entry.cert.span()
                    };
                    self.problem(Some(at), format!("{key}.tls.certs: {error}"));
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

    pub(super) fn admin(&mut self, section: Option<&Spanned<AdminSection>>) -> Admin {
        let section = section.map(Spanned::get_ref);
        let given = section.and_then(|s| s.socket.as_ref());
        let socket = match given {
            Some(socket) => self.path("admin.socket", socket),
            None => self.base.join(DEFAULT_ADMIN_SOCKET),
        };
        self.file_can_be("admin.socket", &socket, given.map(Spanned::span));
        let bind = section
            .and_then(|s| s.bind.as_ref())
            .map(|b| (b.span(), self.socket_addr("admin.bind", b)));
        let token_file = section
            .and_then(|s| s.token_file.as_ref())
            .map(|t| (t.span(), self.path("admin.token_file", t)));
        if let (Some((span, _)), None) = (&bind, &token_file) {
            self.problem(
                Some(span.clone()),
                "admin.bind: a TCP admin listener needs admin.token_file (the bearer token clients must send)",
            );
        }
        let token = token_file
            .as_ref()
            .and_then(|(span, file)| self.token("admin.token_file", span, file));
        let read_token_file = section
            .and_then(|s| s.read_token_file.as_ref())
            .map(|t| (t.span(), self.path("admin.read_token_file", t)));
        let read_token = read_token_file
            .as_ref()
            .and_then(|(span, file)| self.token("admin.read_token_file", span, file));
        if let (Some(read), Some(full), Some((span, _))) = (&read_token, &token, &read_token_file) {
            if read == full {
                self.problem(
                    Some(span.clone()),
                    "admin.read_token_file: holds the same token as admin.token_file; a read-only token must differ from the full one",
                );
            }
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
            read_token_file: read_token_file.map(|(_, file)| file),
            read_token,
            max_connections,
        }
    }

    /// The token in `file`, named by `key`, if it is readable and not empty.
    fn token(&mut self, key: &str, span: &std::ops::Range<usize>, file: &Path) -> Option<Secret> {
        let bytes = self.read_file(key, span.clone(), file)?;
        let Ok(text) = String::from_utf8(bytes) else {
            self.problem(
                Some(span.clone()),
                format!("{key}: {} is not UTF-8 text", file.display()),
            );
            return None;
        };
        let token = Secret::from_file_text(&text);
        if token.is_none() {
            self.problem(
                Some(span.clone()),
                format!("{key}: {} is empty", file.display()),
            );
        }
        token
    }
}
