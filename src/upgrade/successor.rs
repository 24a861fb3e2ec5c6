//! The new process's side of an upgrade (`serve --take-over`): say hello,
//! take the sockets and health records, say ready.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use super::{normalized, Channel, FromNew, Handover, Health, Offered, Role};
use crate::state::SharedState;

/// This process, taking over from the one that started it.
#[derive(Debug)]
pub struct Successor {
    channel: Channel,
}

/// What the old process handed over, taken socket by socket.
#[derive(Debug)]
pub struct Inherited {
    sockets: Vec<(Offered, Option<OwnedFd>)>,
    health: Vec<Health>,
    watch: Option<(String, u64, u64)>,
}

impl Successor {
    /// The line to the old process, on standard input.
    pub fn connect() -> std::io::Result<Successor> {
        Ok(Successor {
            channel: Channel::from_stdin()?,
        })
    }

    /// Says hello as `version` and waits for the sockets; refuses if the
    /// old process's decisions are in another file than `state_file`.
    pub async fn take_over(&self, version: &str, state_file: &Path) -> std::io::Result<Inherited> {
        let hello = FromNew::Hello {
            version: version.to_owned(),
        };
        self.channel.send(&hello, &[]).await?;
        let Some((handover, sockets)) = self.channel.recv::<Handover>().await? else {
            return Err(std::io::Error::other(
                "the old process closed the channel before handing over",
            ));
        };
        if normalized(state_file) != handover.state_file {
            return Err(std::io::Error::other(format!(
                "state.file is now {}, but the running process's decisions are in {}: the new process would start from other decisions; put state.file back, or move the file while switchyard is stopped",
                state_file.display(),
                handover.state_file.display()
            )));
        }
        if sockets.len() != handover.sockets.len() {
            return Err(std::io::Error::other(format!(
                "{} sockets announced, {} received",
                handover.sockets.len(),
                sockets.len()
            )));
        }
        info!(
            sockets = sockets.len(),
            upstreams = handover.health.len(),
            "taking over from the running process"
        );
        Ok(Inherited {
            sockets: handover
                .sockets
                .into_iter()
                .zip(sockets.into_iter().map(Some))
                .collect(),
            health: handover.health,
            watch: handover.watch,
        })
    }

    /// Tells the old process why this one cannot take over; it exits next.
    pub async fn fail(&self, error: &str) {
        let failed = FromNew::Failed {
            error: error.to_owned(),
        };
        if let Err(e) = self.channel.send(&failed, &[]).await {
            warn!(error = %e, "cannot tell the old process why this one stops");
        }
    }

    /// Tells the old process this one serves, on the sockets of `adopted`.
    pub async fn ready(&self, adopted: Vec<Role>) {
        if let Err(e) = self.channel.send(&FromNew::Ready { adopted }, &[]).await {
            warn!(error = %e, "cannot tell the old process this one serves");
        }
    }

    /// Resolves once the old process has exited (its end of the line
    /// closes with it), or after `at_most`.
    pub async fn until_gone(self, at_most: Duration) {
        let gone = async { while let Ok(Some(_)) = self.channel.recv::<FromNew>().await {} };
        match tokio::time::timeout(at_most, gone).await {
            Ok(()) => info!("the old process has exited; changes go on here"),
            Err(_) => {
                info!(waited = ?at_most, "the old process still finishes requests; changes go on here")
            }
        }
    }
}

impl Inherited {
    /// The socket the old process's config named `configured` for `role`
    /// (port 0 included: it is the socket it got for that line), or for
    /// another TCP listener when it names a port (listeners that swapped
    /// addresses); `None` to bind anew.
    pub fn take_tcp(
        &mut self,
        role: Role,
        configured: SocketAddr,
    ) -> Option<tokio::net::TcpListener> {
        let address = configured.to_string();
        let socket = match self.take(role, &address) {
            Some(socket) => socket,
            None if configured.port() != 0 => [Role::Public, Role::Preview, Role::AdminTcp]
                .into_iter()
                .find_map(|other| self.take(other, &address))?,
            None => return None,
        };
        let listener = std::net::TcpListener::from(socket);
        adopt(
            role,
            listener
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(listener)),
        )
    }

    /// The admin socket, if the old process's config named the same path.
    pub fn take_unix(&mut self, configured: &Path) -> Option<tokio::net::UnixListener> {
        let path = normalized(configured).display().to_string();
        let socket = self.take(Role::AdminSocket, &path)?;
        let listener = std::os::unix::net::UnixListener::from(socket);
        adopt(
            Role::AdminSocket,
            listener
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UnixListener::from_std(listener)),
        )
    }

    fn take(&mut self, role: Role, configured: &str) -> Option<OwnedFd> {
        let (offered, socket) = self.sockets.iter_mut().find(|(o, _)| o.role == role)?;
        (offered.configured == configured).then(|| socket.take())?
    }

    /// The roles whose socket was taken.
    pub fn adopted(&self) -> Vec<Role> {
        self.sockets
            .iter()
            .filter(|(_, socket)| socket.is_none())
            .map(|(offered, _)| offered.role)
            .collect()
    }

    /// The requests and errors the old process's watch of `pool` counted.
    pub fn watch_figures(&self, pool: &str) -> (u64, u64) {
        match &self.watch {
            Some((watched, requests, errors)) if watched == pool => (*requests, *errors),
            _ => (0, 0),
        }
    }

    /// Gives each upstream still configured the health the old process
    /// knew it by.
    pub fn restore_health(&self, state: &SharedState) {
        let snapshot = state.load();
        for health in &self.health {
            let upstream = snapshot.pools.get(&health.pool).and_then(|pool| {
                pool.upstreams
                    .iter()
                    .find(|u| u.authority.as_str() == health.upstream)
            });
            if let Some(upstream) = upstream {
                upstream.restore(health.healthy, health.probes.clone());
            }
        }
    }
}

fn adopt<T>(role: Role, listener: std::io::Result<T>) -> Option<T> {
    listener
        .inspect_err(
            |e| warn!(?role, error = %e, "cannot use the socket handed over; binding anew"),
        )
        .ok()
}
