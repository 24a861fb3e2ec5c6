//! The whole serving process: restore the decisions, bind every listener,
//! run the data plane, the admin API and the config watcher, then drain.
//!
//! Binding is separate from running so that callers (tests, `demo`) can
//! bind port 0 and read the real addresses before anything is served.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::access_log::AccessLog;
use crate::admin::api::Listeners;
use crate::admin::{AdminListeners, AdminStartError, Router};
use crate::config::Config;
use crate::control::fleet::{Fleet, JoinError};
use crate::control::Control;
use crate::metrics::Metrics;
use crate::proxy::{accept_loop, Proxy, Route};
use crate::shutdown::{Lifecycle, StopOnDrop};
use crate::state::persist::{self, PersistError};
use crate::state::{Decisions, SharedState, Snapshot};
use crate::upgrade::{Inherited, Role, Successor, Upgrader};
use crate::upstream::connection;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener address could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The state file exists but cannot be used.
    #[error("{0}; fix or restore it (switchyard will not guess which pool should be live)")]
    State(#[from] PersistError),
    /// The state file names a live pool the config does not have.
    #[error("state file {} makes pool `{pool}` live, but the config has no such pool; add it back to the config or fix the state file", file.display())]
    LivePoolMissing {
        /// The state file.
        file: PathBuf,
        /// The pool it names.
        pool: String,
    },
    /// The admin API could not start.
    #[error(transparent)]
    Admin(#[from] AdminStartError),
    /// The fleet's decisions name a live pool this config lacks.
    #[error("the fleet's decisions in etcd make pool `{pool}` live, but this config has no such pool; add it to the config")]
    FleetPoolMissing {
        /// The pool they name.
        pool: String,
    },
    /// The instance could not join its fleet.
    #[error(transparent)]
    Cluster(#[from] JoinError),
    /// The access log could not start.
    #[error(transparent)]
    AccessLog(#[from] crate::access_log::StartError),
    /// The listening sockets could not be copied for a later upgrade.
    #[error("cannot keep the listening sockets for upgrades: {0}")]
    Sockets(std::io::Error),
}

/// How long a stopping server waits, past the drain, for the connections
/// it closed to be gone and for the access log to be written out.
const CLOSING_GRACE: Duration = Duration::from_millis(500);

/// How long an idle connection of an old process is kept once a new one
/// has taken over (its drain's wait for a first or next request).
const OLD_PROCESS_IDLE: Duration = Duration::from_secs(1);

/// A bound server, ready to run.
#[derive(Debug)]
pub struct Server {
    proxy: Arc<Proxy>,
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    listeners: Vec<(Route, TcpListener)>,
    admin: AdminListeners,
    /// The access log the proxy writes, if any.
    access_log: Option<Arc<AccessLog>>,
    /// Hands over to a new binary; holds the state file's lock until then,
    /// or until `run` ends.
    upgrader: Arc<Upgrader>,
    /// The process this one takes over from, told once this one serves.
    successor_of: Option<Successor>,
    /// The sockets of that process this one adopted.
    adopted_sockets: Vec<Role>,
}

impl Server {
    /// Restores the decisions from the state file (or starts from
    /// `initial_pool` when there is none) and binds every listener.
    pub async fn bind(config: Config) -> Result<Server, ServeError> {
        Server::bind_inheriting(config, None).await
    }

    /// [`Server::bind`], adopting the sockets an upgrade handed over where
    /// the config names the same addresses, and the health records.
    pub async fn bind_inheriting(
        config: Config,
        mut inherited: Option<Inherited>,
    ) -> Result<Server, ServeError> {
        let state_file = config.state.file.clone();
        let state_lock = persist::lock(&state_file)?;
        let restored = persist::load(&state_file)?;
        let from_file = restored.is_some();
        let (decisions, watch) = match restored {
            Some((decisions, watch)) => {
                info!(
                    file = %state_file.display(),
                    live_pool = %decisions.live_pool,
                    maintenance = decisions.maintenance.enabled,
                    generation = decisions.generation,
                    "decisions restored"
                );
                (decisions, watch)
            }
            None => {
                info!(
                    file = %state_file.display(),
                    live_pool = %config.state.initial_pool,
                    "no state file yet; starting from initial_pool"
                );
                (Decisions::initial(&config), None)
            }
        };
        // A gate whose end passed while the process was stopped is off
        // before anything is served, and a window whose start came is on.
        // (A fleet's are changed by whichever instance's clock gets there
        // first.)
        let decisions = match &config.cluster {
            None => catch_up_on_the_clock(&state_file, decisions, watch.as_ref())?,
            Some(_) => decisions,
        };
        // A fleet's decisions are the ones in etcd; this instance's state
        // file is its copy of the last it applied.
        let (fleet, adopted) = match &config.cluster {
            None => (None, None),
            Some(cluster) => {
                let (fleet, adopted) = Fleet::join(cluster, decisions.clone(), from_file).await?;
                let adopted = (adopted != decisions).then_some(adopted);
                (Some(fleet), adopted)
            }
        };
        let metrics = Arc::new(Metrics::new());
        let config = Arc::new(config);
        let snapshot = Snapshot::start(
            config.clone(),
            adopted.clone().unwrap_or(decisions),
            metrics.clone(),
        )
        .map_err(|missing| {
            if adopted.is_some() {
                ServeError::FleetPoolMissing { pool: missing.0 }
            } else {
                ServeError::LivePoolMissing {
                    file: state_file.clone(),
                    pool: missing.0,
                }
            }
        })?;
        // Saved only once they are known to apply here: a restart while
        // etcd is away then starts from them.
        if let Some(adopted) = &adopted {
            if let Err(error) = persist::save(&state_file, adopted, watch.as_ref()) {
                warn!(%error, "cannot write the fleet's decisions to the state file; serving them");
            }
        }
        let state = Arc::new(SharedState::new(snapshot));
        let mut take = |role, addr| inherited.as_mut().and_then(|i| i.take_tcp(role, addr));
        let public = match take(Role::Public, config.listener.bind) {
            Some(listener) => listener,
            None => bind("listener", config.listener.bind).await?,
        };
        let mut listeners = vec![(Route::Live, public)];
        if let Some(preview) = &config.preview {
            let listener = match take(Role::Preview, preview.bind) {
                Some(listener) => listener,
                None => bind("preview", preview.bind).await?,
            };
            listeners.push((Route::Preview, listener));
        }
        let admin_tcp = config
            .admin
            .bind
            .and_then(|addr| take(Role::AdminTcp, addr));
        let admin_socket = inherited
            .as_mut()
            .and_then(|i| i.take_unix(&config.admin.socket));
        let admin = AdminListeners::bind(&config.admin, admin_socket, admin_tcp).await?;
        if let Some(inherited) = &inherited {
            inherited.restore_health(&state);
        }
        // A watch after a switch goes on with what the old process counted.
        let watched = match (&inherited, &watch) {
            (Some(inherited), Some(watch)) => inherited.watch_figures(&watch.pool),
            _ => (0, 0),
        };
        let adopted_sockets = inherited.map(|i| i.adopted()).unwrap_or_default();
        let access_log = AccessLog::start(&config.log.access, config.log.format)?.map(Arc::new);
        let control = Control::new(state.clone(), fleet);
        // Each with the address its config names, for a new process to
        // recognise.
        let mut sockets = vec![(
            Role::Public,
            config.listener.bind.to_string(),
            listeners[0].1.as_fd(),
        )];
        if let (Some(preview), Some((_, listener))) = (&config.preview, listeners.get(1)) {
            sockets.push((Role::Preview, preview.bind.to_string(), listener.as_fd()));
        }
        sockets.push((
            Role::AdminSocket,
            crate::upgrade::normalized(&config.admin.socket)
                .display()
                .to_string(),
            admin.unix_socket().as_fd(),
        ));
        if let (Some(addr), Some(listener)) = (config.admin.bind, admin.tcp_listener()) {
            sockets.push((Role::AdminTcp, addr.to_string(), listener.as_fd()));
        }
        let upgrader =
            Upgrader::new(control.clone(), state_lock, sockets).map_err(ServeError::Sockets)?;
        Ok(Server {
            proxy: Arc::new(
                Proxy::new(state.clone(), metrics.clone(), Lifecycle::default())
                    .with_access_log(access_log.clone()),
            ),
            access_log,
            control: {
                if let Some(watch) = watch {
                    control.resume_watch(watch, watched);
                }
                control.restore_deploy_lock();
                control
            },
            metrics,
            listeners,
            admin,
            upgrader: Arc::new(upgrader),
            successor_of: None,
            adopted_sockets,
        })
    }

    /// Refuses upgrades, saying `why` (the demo: its upstreams live in its
    /// own process).
    pub fn without_upgrades(mut self, why: &'static str) -> Server {
        if let Some(upgrader) = Arc::get_mut(&mut self.upgrader) {
            upgrader.refuse(why);
        }
        self
    }

    /// This server takes over from the process `successor` speaks to: it
    /// tells that process once it serves, instead of systemd.
    pub fn succeeding(mut self, successor: Successor) -> Server {
        self.successor_of = Some(successor);
        self
    }

    /// The address a route's listener is bound to.
    pub fn local_addr(&self, route: Route) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(r, _)| *r == route)
            .and_then(|(_, l)| l.local_addr().ok())
    }

    /// The admin unix socket.
    pub fn admin_socket(&self) -> &Path {
        self.admin.socket_path()
    }

    /// The TCP admin listener's address, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.tcp_addr()
    }

    /// The shared runtime state.
    pub fn state(&self) -> &Arc<SharedState> {
        self.proxy.state()
    }

    /// Serves until `shutdown` resolves or a new process has taken over
    /// (`crate::upgrade`), then drains: listeners close at once, in-flight
    /// requests get `timeouts.drain` to finish, and what is left after that
    /// is closed. The admin socket is removed on the way out (unless a new
    /// process answers on it), and the access log written out.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        // First: until they are listened for, a SIGHUP or a SIGUSR1 would
        // end the process.
        let hangups = crate::reload::on_hangup(self.control.clone());
        let reopens = reopen_on_usr1(self.access_log.clone());
        let bound = Listeners {
            public: self.local_addr(Route::Live),
            preview: self.local_addr(Route::Preview),
        };
        for (route, listener) in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                info!(%addr, ?route, "listening");
            }
            tokio::spawn(accept_loop(self.proxy.clone(), listener, route));
        }
        // A new process holds changes back until the one it took over from
        // decides no more requests on the decisions it had: until it has
        // exited, or at most as long as a request head it began reading
        // before the handover may take (an idle connection of its closes
        // within a second).
        let held = match self.successor_of {
            Some(_) => Some(self.control.hold_changes().await),
            None => None,
        };
        let router = Router::new(self.control.clone(), self.metrics.clone(), bound)
            .with_upgrader(self.upgrader.clone());
        let admin_calls = router.calls().clone();
        let mut admin = self.admin.serve(router);
        let checks = crate::health::spawn_checks(self.proxy.state().clone());
        let fleet = self.control.follow_fleet();
        let schedule = self.control.keep_schedule();
        let reaper = spawn_reaper(self.proxy.state().clone());
        let watcher = match crate::reload::watch(self.control.clone()) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                warn!(%error, "cannot watch the config file; reload with SIGHUP or POST /v1/reload");
                None
            }
        };
        match self.successor_of {
            Some(successor) => {
                successor.ready(self.adopted_sockets).await;
                let header = self.proxy.state().load().config.timeouts.header;
                tokio::spawn(async move {
                    successor.until_gone(header + OLD_PROCESS_IDLE).await;
                    drop(held);
                });
            }
            None => crate::notify::ready(),
        }
        let handed_over = tokio::select! {
            () = shutdown => None,
            handed = self.upgrader.handed_over() => Some(handed),
        };
        // The listeners close below; these copies must not keep them open.
        self.upgrader.close_sockets();
        // After a handover, systemd follows the new process.
        if handed_over.is_none() {
            crate::notify::stopping();
        }
        drop(hangups);
        drop(reopens);
        drop(fleet);
        drop(schedule);
        // Changes stop waiting for this instance at once.
        self.control.leave_fleet().await;
        drop(watcher);
        drop(checks);
        drop(reaper);
        // The admin API closes with the public listeners: the process is on
        // its way out, and the socket file goes with it, unless a new
        // process has taken it over.
        if handed_over
            .as_ref()
            .is_some_and(|h| h.adopted.contains(&Role::AdminSocket))
        {
            admin.keep_socket_file();
        }
        drop(admin);
        let lifecycle = self.proxy.lifecycle();
        let budget = self.proxy.state().load().config.timeouts.drain;
        info!(pid = std::process::id(), connections = lifecycle.active(), budget = ?budget, "stopping: listeners closed, draining");
        let cut = lifecycle.drain(budget).await;
        if cut > 0 {
            warn!(
                cut,
                "drain budget spent; closed connections and tunnels still open"
            );
            // They close at once now; their last lines are worth the wait.
            let _ = tokio::time::timeout(CLOSING_GRACE, lifecycle.emptied()).await;
        } else {
            info!("drained");
        }
        if let Some(log) = &self.access_log {
            log.flush(CLOSING_GRACE).await;
        }
        if handed_over.is_some() {
            // The upgrade's answer, and those refused `handed_over` since,
            // reach their callers before the process is gone.
            let answered = async {
                admin_calls.emptied().await;
                self.upgrader.until_answered().await;
            };
            let _ = tokio::time::timeout(CLOSING_GRACE, answered).await;
        }
        self.upgrader.release();
    }
}

/// Opens the access log file again on every `SIGUSR1` (as nginx does),
/// once logrotate has moved it away, until dropped; `None` (logged) if the
/// signal cannot be listened for. Listened for without an access log too:
/// the signal's default would end the process.
fn reopen_on_usr1(log: Option<Arc<AccessLog>>) -> Option<StopOnDrop> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = match signal(SignalKind::user_defined1()) {
        Ok(usr1) => usr1,
        Err(error) => {
            warn!(%error, "cannot listen for SIGUSR1; the access log cannot be reopened");
            return None;
        }
    };
    Some(StopOnDrop::spawn(async move {
        while usr1.recv().await.is_some() {
            match &log {
                Some(log) => log.reopen(),
                None => info!("SIGUSR1: no access log file to reopen"),
            }
        }
    }))
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { what, addr, source })
}

/// Closes the upstream connections idle for longer than
/// [`connection::IDLE_TIMEOUT`] (and lets go of the shared HTTP/2 ones no
/// request started on for as long), every upstream of the snapshot in force,
/// until dropped. An upstream that a reload removed closes its idle
/// connections when the last request that used it lets it go.
fn spawn_reaper(state: Arc<SharedState>) -> StopOnDrop {
    StopOnDrop::spawn(async move {
        let mut every = tokio::time::interval(connection::REAP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = every.tick().await;
            let snapshot = state.load();
            for upstream in snapshot.pools.values().flat_map(|p| &p.upstreams) {
                upstream.connections.reap(now);
                upstream.http2.reap(now);
            }
        }
    })
}

/// `decisions` with every change the clock made while the process was
/// stopped (the gate's end, a window's start), saved with one more
/// generation, as if it had been running.
fn catch_up_on_the_clock(
    state_file: &Path,
    decisions: Decisions,
    watch: Option<&crate::state::PendingWatch>,
) -> Result<Decisions, ServeError> {
    let Some((mut decisions, what)) = decisions.timed_changes(std::time::SystemTime::now()) else {
        return Ok(decisions);
    };
    decisions.generation = decisions.generation.saturating_add(1);
    persist::save(state_file, &decisions, watch)?;
    info!(target: "audit", via = "schedule", generation = decisions.generation, change = ?what, "a planned maintenance change came while stopped; made before serving");
    Ok(decisions)
}
