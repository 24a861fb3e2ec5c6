//! The admin API: HTTP/1.1 + JSON on a unix socket, and optionally on TCP
//! with a bearer token.
//!
//! | method, path | does |
//! |---|---|
//! | `GET /v1/status` | the status document |
//! | `PUT /v1/maintenance` | gate on or off (`enabled`, `message`, `retry_after`) |
//! | `POST /v1/switch` | make a pool live (`to`, `force`) |
//! | `POST /v1/rollback` | make the previous pool live (`force`) |
//! | `POST /v1/reload` | re-read the config file |
//! | `POST /v1/upgrade` | a new process of the binary takes over ([`crate::upgrade`]) |
//! | `GET /metrics` | Prometheus metrics |
//! | `PATCH /service-context` | the maintenance flag, for existing pipelines |
//! | `GET`, `POST /v1/maintenance/windows` | list or plan maintenance windows |
//! | `DELETE /v1/maintenance/windows/{id}` | cancel a window |
//! | `POST /v1/bypass-tokens` | issue a bypass token (`ttl`, `label`) |
//! | `POST /v1/pools/{name}/probe` | probe a pool's upstreams now |
//! | `POST /v1/deploys`, `PUT`/`DELETE /v1/deploys/{id}` | take, renew, release the deploy lock |
//! | `POST /v1/deploys/{id}/steps` | a deploy step, for the audit log |
//! | `GET /v1/events` | what happens, as Server-Sent Events ([`events`]) |
//! | `GET /`, `/dashboard.js`, `/dashboard.css` | the dashboard ([`dashboard`]) |
//!
//! On TCP, `admin.token_file`'s token may do all of it; `admin.read_token_file`'s
//! only the `GET`s of status, windows, metrics and events (`403 forbidden`
//! otherwise). The dashboard's files need no token. Browsers are held to
//! their own origin ([`origin`]).
//!
//! The unix socket is created with mode 0600: it is bound under a temporary
//! name, restricted, then renamed into place, so there is no moment when
//! another user could connect. A socket file left by a crashed run is
//! replaced; one that a running process still answers on is not. The file
//! is removed on a clean exit.

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod events;
pub mod gauges;
pub mod origin;
pub mod resource;
pub mod routes;
pub mod stall;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tracing::{debug, info, Instrument};

use crate::config::Admin as AdminConfig;
use crate::control::Via;
use crate::shutdown::StopOnDrop;
use crate::state::persist::replace_by_rename;
use api::AdminError;
use auth::Rights;
use resource::Resource;
pub use routes::Router;

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminStartError {
    /// Another process answers on the socket.
    #[error("admin socket {} is in use by a running process; stop it or choose another admin.socket", path.display())]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error("admin socket path {} exists and is not a socket; remove it or choose another admin.socket", path.display())]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// Binding or preparing the socket failed.
    #[error("cannot create admin socket {}: {source}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The socket's directory does not exist.
    #[error("the directory {} of admin socket {} does not exist; create it (or mount its volume)", dir.display(), path.display())]
    NoDirectory {
        /// The socket path.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// The TCP listener could not be bound.
    #[error("cannot listen on {addr} (admin): {source}")]
    Bind {
        /// Its address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The admin API's bound listeners.
#[derive(Debug)]
pub struct AdminListeners {
    socket_path: PathBuf,
    socket: UnixListener,
    tcp: Option<TcpListener>,
}

impl AdminListeners {
    /// Binds the unix socket and, if configured, the TCP listener; each
    /// given already bound (handed over by an upgrade) is used instead.
    pub async fn bind(
        config: &AdminConfig,
        socket: Option<UnixListener>,
        tcp: Option<TcpListener>,
    ) -> Result<AdminListeners, AdminStartError> {
        let socket = match socket {
            Some(socket) => socket,
            None => bind_socket(&config.socket)?,
        };
        // Validation requires a token with `bind`; each request is checked
        // against the token of the config in force when it arrives.
        let tcp = match (config.bind, tcp) {
            (Some(_), Some(tcp)) => Some(tcp),
            (Some(addr), None) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| AdminStartError::Bind { addr, source })?,
            ),
            (None, _) => None,
        };
        Ok(AdminListeners {
            socket_path: config.socket.clone(),
            socket,
            tcp,
        })
    }

    /// The unix socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The TCP listener's address, if there is one.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The unix socket's listener.
    pub fn unix_socket(&self) -> &UnixListener {
        &self.socket
    }

    /// The TCP listener, if there is one.
    pub fn tcp_listener(&self) -> Option<&TcpListener> {
        self.tcp.as_ref()
    }

    /// Serves admin calls until dropped (the accept loops end when the
    /// returned guard is dropped, and the socket file is removed then).
    pub fn serve(self, router: Router) -> AdminServing {
        info!(socket = %self.socket_path.display(), "admin API listening");
        let mut tasks = vec![StopOnDrop::spawn(accept_socket(
            self.socket,
            router.clone(),
        ))];
        if let Some(listener) = self.tcp {
            if let Ok(addr) = listener.local_addr() {
                info!(%addr, "admin API listening on TCP (bearer token required)");
            }
            tasks.push(StopOnDrop::spawn(accept_tcp(listener, router)));
        }
        AdminServing {
            tasks,
            socket_path: Some(self.socket_path),
        }
    }
}

/// The running admin API; dropping it stops accepting and removes the
/// socket file.
#[derive(Debug)]
pub struct AdminServing {
    tasks: Vec<StopOnDrop>,
    /// The socket file to remove; `None` once a new process owns it.
    socket_path: Option<PathBuf>,
}

impl AdminServing {
    /// Leaves the socket file in place when dropped: a new process (a
    /// binary upgrade) answers on it now.
    pub fn keep_socket_file(&mut self) {
        self.socket_path = None;
    }
}

impl Drop for AdminServing {
    fn drop(&mut self) {
        // Stop accepting before the socket file goes.
        self.tasks.clear();
        let Some(path) = &self.socket_path else {
            return;
        };
        if let Err(error) = std::fs::remove_file(path) {
            debug!(%error, socket = %path.display(), "cannot remove admin socket");
        }
    }
}

/// Binds `path` with mode 0600, replacing a stale socket file.
fn bind_socket(path: &Path) -> Result<UnixListener, AdminStartError> {
    let fail = |source| AdminStartError::Socket {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(AdminStartError::SocketInUse {
                    path: path.to_owned(),
                });
            }
            info!(socket = %path.display(), "replacing a stale admin socket");
        }
        Ok(_) => {
            return Err(AdminStartError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // Never created here: a missing directory is a config mistake or a
    // volume that is not mounted, and either needs a person.
    if !dir.is_dir() {
        return Err(AdminStartError::NoDirectory {
            path: path.to_owned(),
            dir: dir.to_owned(),
        });
    }
    // Bound and made 0600 beside it, then renamed into place: no client
    // ever finds the socket with looser permissions.
    let suffix = std::process::id().to_string();
    replace_by_rename(path, &suffix, |temp| {
        let listener = UnixListener::bind(temp).map_err(|e| ("bind", e))?;
        std::fs::set_permissions(temp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ("set mode 0600", e))?;
        Ok(listener)
    })
    .map_err(|(_, source)| fail(source))
}

async fn accept_socket(listener: UnixListener, router: Router) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let uid = stream.peer_cred().ok().map(|cred| cred.uid());
                tokio::spawn(serve(stream, router.clone(), Via::Socket(uid), false));
            }
            Err(error) => crate::accept::recover(&error, "admin socket").await,
        }
    }
}

async fn accept_tcp(listener: TcpListener, router: Router) {
    // Each connection holds a slot: past `admin.max_connections`, a new one
    // is closed at once, so strangers cannot hold more than a few
    // descriptors and tasks. Operators and pipelines need a handful.
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Only this loop adds to `open`, so nothing can pass the
                // cap between the check and the increment.
                if open.load(Ordering::Relaxed) >= router.config().admin.max_connections {
                    debug!(client.addr = %peer, "admin connection refused: too many open");
                    continue;
                }
                let slot = Slot::take(&open);
                let _ = stream.set_nodelay(true);
                let span = tracing::debug_span!("admin", client.addr = %peer);
                let router = router.clone();
                tokio::spawn(
                    async move {
                        serve(stream, router, Via::Tcp(peer), true).await;
                        drop(slot);
                    }
                    .instrument(span),
                );
            }
            Err(error) => crate::accept::recover(&error, "admin tcp").await,
        }
    }
}

async fn serve<S>(stream: S, router: Router, via: Via, needs_token: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // As on the public listeners: a request head within `timeouts.header`.
    let header_timeout = router.config().timeouts.header;
    let send_timeout = router.config().timeouts.send;
    // Set once this connection answers an upgrade: when it ends, the
    // answer is out, and the process that gave it may exit.
    let upgraded = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let upgrader = router.upgrader().cloned();
    let answered = upgraded.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        let answered = answered.clone();
        async move {
            let method = request.method();
            let resource = Resource::of(request.uri().path());
            // The tokens of the config in force now: a reload after
            // rotating one takes effect for the next request.
            let rights = match needs_token {
                false => Some(Rights::Full),
                true => router.rights(request.headers()),
            };
            let refusal = if let Some(reason) = origin::refusal(request.headers(), !needs_token) {
                Some(AdminError::CrossOrigin(reason))
            } else {
                match rights {
                    None if resource.is_some_and(|r| r.is_public(method)) => None,
                    None => Some(AdminError::Unauthorized),
                    Some(Rights::Read) if !resource.is_some_and(|r| r.only_reads(method)) => {
                        Some(AdminError::Forbidden {
                            method: method.clone(),
                            path: request.uri().path().to_owned(),
                        })
                    }
                    Some(_) => None,
                }
            };
            if let Some(error) = refusal {
                info!(target: "audit", %via, method = %request.method(), path = %request.uri().path(), error = ?error.to_string(), "admin call refused");
                let mut response = routes::error_response(&error);
                if let AdminError::Unauthorized = error {
                    response.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static("Bearer"),
                    );
                }
                return Ok::<_, Infallible>(response);
            }
            // Only the dashboard's files are served without rights.
            let rights = rights.unwrap_or(Rights::Read);
            let upgrade = resource == Some(Resource::Upgrade);
            // An events stream lasts as long as its reader: not a call to wait for.
            let _call = (resource != Some(Resource::Events)).then(|| router.calls().track());
            let response = router.handle(request, via, rights).await;
            if upgrade && response.status().is_success() {
                answered.store(true, Ordering::Relaxed);
            }
            Ok(response)
        }
    });
    let stream = stall::SendDeadline::new(stream, send_timeout);
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(error) = connection.await {
        debug!(%error, "admin connection ended with an error");
    }
    if let Some(upgrader) = upgrader.filter(|_| upgraded.load(Ordering::Relaxed)) {
        upgrader.answered();
    }
}

/// One open TCP admin connection, counted while it lives.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Slot {
        open.fetch_add(1, Ordering::Relaxed);
        Slot(open.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
