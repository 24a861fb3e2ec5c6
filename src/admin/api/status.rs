//! The status document: `GET /v1/status`, and the answer of every change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::WindowDocument;
use crate::control::deploy::DeployLock;
use crate::control::Control;
use crate::state::persist::rfc3339;
use crate::state::{MaintenanceMode, Snapshot};

/// The addresses the proxy's listeners are bound to.
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    /// The public listener.
    pub public: Option<SocketAddr>,
    /// The preview listener, if configured.
    pub preview: Option<SocketAddr>,
}

/// `GET /v1/status` and the answer of every successful change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusDocument {
    /// The pool the public listener routes to.
    pub live_pool: String,
    /// The pool a rollback returns to.
    pub previous_pool: Option<String>,
    /// The maintenance gate.
    pub maintenance: MaintenanceStatus,
    /// Every pool by name.
    pub pools: BTreeMap<String, PoolStatus>,
    /// The serving config.
    pub config: ConfigStatus,
    /// Increases by one with every change of the persisted decisions.
    pub generation: u64,
    /// The watch after the last switch, while it runs.
    pub watch: Option<WatchDocument>,
    /// The last change, of any kind.
    pub last_event: Option<EventDocument>,
    /// The fleet this instance is one of; null without `[cluster]`.
    #[serde(default)]
    pub cluster: Option<ClusterDocument>,
    /// Maintenance windows not yet ended, soonest first.
    #[serde(default)]
    pub windows: Vec<WindowDocument>,
    /// Where the listeners are bound.
    #[serde(default)]
    pub listeners: ListenersDocument,
    /// The `ctl deploy` running now, if any.
    #[serde(default)]
    pub deploy: Option<DeployDocument>,
}

/// The listeners part of the status document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListenersDocument {
    /// `HOST:PORT` of the public listener.
    pub public: String,
    /// `HOST:PORT` of the preview listener, or null.
    pub preview: Option<String>,
}

/// The running deploy in the status document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployDocument {
    /// Its lock's id.
    pub id: String,
    /// The pool it makes live.
    pub pool: String,
    /// Who runs it.
    pub holder: String,
    /// When it began (RFC 3339).
    pub started_at: String,
}

impl DeployDocument {
    /// `lock` as the admin API shows it.
    pub fn of(lock: DeployLock) -> DeployDocument {
        DeployDocument {
            id: lock.id,
            pool: lock.pool,
            holder: lock.holder,
            started_at: lock.started_at,
        }
    }
}

/// The `[switch]` rules in the status document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchRulesDocument {
    /// How long a switch is watched (humantime).
    pub watch: String,
    /// The error share that rolls it back.
    pub max_error_rate: f64,
    /// No verdict on fewer requests.
    pub min_requests: u64,
}

/// The cluster part of the status document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterDocument {
    /// `cluster.prefix`.
    pub prefix: String,
    /// This instance's name.
    pub instance: String,
    /// Whether this instance's last exchange with etcd succeeded.
    pub connected: bool,
    /// Every instance with a live lease.
    pub instances: Vec<InstanceDocument>,
}

/// One instance of the fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceDocument {
    /// Its name.
    pub name: String,
    /// The generation of the decisions it has applied.
    pub generation: u64,
}

/// The watch part of the status document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchDocument {
    /// The pool watched (the new live pool).
    pub pool: String,
    /// When the watch ends (RFC 3339).
    pub until: String,
    /// Requests the pool answered since the switch.
    pub requests: u64,
    /// How many of them were 5xx or upstream failures.
    pub errors: u64,
}

/// The last-event part of the status document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventDocument {
    /// `switch`, `rollback`, `auto_rollback`, `auto_rollback_refused`,
    /// `maintenance` or `reload`.
    pub kind: String,
    /// When (RFC 3339).
    pub at: String,
    /// What happened, in words.
    pub reason: String,
}

/// The maintenance part of the status document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaintenanceStatus {
    /// Whether the gate is on.
    pub enabled: bool,
    /// The 503's message.
    pub message: String,
    /// The 503's `Retry-After`, in seconds.
    pub retry_after_s: u64,
    /// When the gate was turned on (RFC 3339), or null while off.
    pub since: Option<String>,
    /// `full` or `read_only` (reads pass).
    #[serde(default = "full")]
    pub mode: String,
    /// When the gate turns itself off (RFC 3339), or null.
    #[serde(default)]
    pub until: Option<String>,
}

fn full() -> String {
    MaintenanceMode::Full.as_str().to_owned()
}

/// One pool in the status document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Its upstreams, in config order.
    pub upstreams: Vec<UpstreamStatus>,
    /// Requests in flight on the pool's upstreams.
    pub in_flight: usize,
    /// Upgraded connections (WebSocket) open to the pool's upstreams.
    pub tunnels: usize,
}

/// One upstream in the status document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamStatus {
    /// `host:port`.
    pub addr: String,
    /// Whether it counts as healthy.
    pub healthy: bool,
    /// When it was last probed (RFC 3339), or null.
    pub last_check: Option<String>,
    /// Why the last probe failed, or null.
    pub last_error: Option<String>,
    /// Failed probes in a row.
    pub consecutive_failures: u32,
}

/// The config part of the status document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// The config file as named at startup.
    pub path: String,
    /// When the serving config was loaded (RFC 3339).
    pub loaded_at: String,
    /// A digest of the serving config file's text: it changes when the
    /// file does, so two proxies (or two reloads) can be compared.
    pub version: String,
    /// Why the last reload failed (one problem per line), or null.
    pub last_reload_error: Option<String>,
    /// Every TLS certificate the listeners serve.
    #[serde(default)]
    pub certificates: Vec<CertificateStatus>,
    /// The `[switch]` rules, or null without automatic rollback.
    #[serde(default)]
    pub switch: Option<SwitchRulesDocument>,
}

/// One TLS certificate in the status document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// `listener` or `preview`.
    pub listener: String,
    /// The certificate file.
    pub cert: String,
    /// The DNS names it covers.
    pub names: Vec<String>,
    /// When it expires (RFC 3339).
    pub not_after: String,
}

impl StatusDocument {
    /// The status as of `snapshot`, with `control`'s watch and last event,
    /// where the listeners are, and the deploy running.
    pub fn of(
        snapshot: &Snapshot,
        control: &Control,
        listeners: Listeners,
        deploy: Option<DeployLock>,
    ) -> StatusDocument {
        let decisions = &snapshot.decisions;
        let m = &decisions.maintenance;
        let pools = snapshot
            .pools
            .iter()
            .map(|(name, pool)| {
                let upstreams = pool
                    .upstreams
                    .iter()
                    .map(|u| {
                        let probes = u.probes();
                        UpstreamStatus {
                            addr: u.authority.to_string(),
                            healthy: u.is_healthy(),
                            last_check: probes.last_check.map(rfc3339),
                            last_error: probes.last_error,
                            consecutive_failures: probes.consecutive_failures,
                        }
                    })
                    .collect();
                (
                    name.clone(),
                    PoolStatus {
                        upstreams,
                        in_flight: pool.in_flight(),
                        tunnels: pool.tunnels(),
                    },
                )
            })
            .collect();
        StatusDocument {
            live_pool: decisions.live_pool.clone(),
            previous_pool: decisions.previous_pool.clone(),
            maintenance: MaintenanceStatus {
                enabled: m.enabled,
                message: m.message(&snapshot.config.maintenance).to_owned(),
                retry_after_s: m
                    .retry_after_now(&snapshot.config.maintenance, SystemTime::now())
                    .as_secs(),
                since: m.since.map(rfc3339),
                mode: m.mode.as_str().to_owned(),
                until: m.until.map(rfc3339),
            },
            pools,
            config: ConfigStatus {
                path: snapshot.config.path.display().to_string(),
                loaded_at: rfc3339(snapshot.config_info.loaded_at),
                version: format!("{:016x}", snapshot.config.digest),
                certificates: snapshot
                    .config
                    .certificates()
                    .into_iter()
                    .map(|(listener, c)| CertificateStatus {
                        listener: listener.to_owned(),
                        cert: c.cert.display().to_string(),
                        names: c.names.clone(),
                        not_after: rfc3339(c.not_after),
                    })
                    .collect(),
                last_reload_error: snapshot
                    .config_info
                    .last_reload_error
                    .as_ref()
                    .map(|lines| lines.join("\n")),
                switch: snapshot.config.switch.map(|rules| SwitchRulesDocument {
                    watch: humantime::format_duration(rules.watch).to_string(),
                    max_error_rate: rules.max_error_rate,
                    min_requests: rules.min_requests,
                }),
            },
            generation: decisions.generation,
            watch: control.watch_status().map(|w| WatchDocument {
                pool: w.pool,
                until: rfc3339(w.until),
                requests: w.requests,
                errors: w.errors,
            }),
            last_event: control.last_event().map(|e| EventDocument {
                kind: e.kind.as_str().to_owned(),
                at: rfc3339(e.at),
                reason: e.reason,
            }),
            cluster: control.fleet_status().map(|f| ClusterDocument {
                prefix: f.prefix,
                instance: f.instance,
                connected: f.connected,
                instances: f
                    .instances
                    .into_iter()
                    .map(|(name, generation)| InstanceDocument { name, generation })
                    .collect(),
            }),
            windows: WindowDocument::list(snapshot),
            listeners: ListenersDocument {
                public: listeners.public.map(|a| a.to_string()).unwrap_or_default(),
                preview: listeners.preview.map(|a| a.to_string()),
            },
            deploy: deploy.map(DeployDocument::of),
        }
    }
}
