//! Integration tests: the real proxy, started on ephemeral loopback ports in
//! front of real upstream HTTP servers, driven over real sockets.
//!
//! - `proxying`: what a well-behaved client and upstream see: methods,
//!   streaming bodies, keep-alive, h2c, WebSocket, headers, balancing.
//! - `failures`: upstreams that are down, slow or malformed.
//! - `front_door`: malformed and hostile requests, sent as raw bytes.
//! - `hostile`: clients that misbehave must cost nobody else anything and
//!   must not get past the gate.
//! - `http2`: HTTP/2 clients in front of HTTP/1.1 upstreams.
//! - `corpus`: the HTTP/1 engine on a corpus of valid, edge-case and
//!   malicious requests, split at every byte.
//! - `idle`: parking idle HTTP/1 connections, and what must not be parked.
//! - `lifecycle`: the binary itself: `check`, and SIGTERM's drain.
//! - `maintenance`: the gate, through the admin socket.
//! - `observing`: request ids, the access log, JSON logs.
//! - `events`: the admin API's events stream.
//! - `switching`: switch and rollback, including under load.
//! - `durability`: the state file across restarts and failures.
//! - `admin`: the admin API's socket, token, malformed calls, metrics.
//! - `browser`: the dashboard and the maintenance page in headless
//!   Chromium.
//! - `reloading`: config reload on edit, rename, symlink swap and API.
//! - `ctl`: the `switchyard ctl` binary against a served proxy, and SIGHUP.
//! - `service`: `--version`, completions, the man page, and systemd's
//!   readiness notification.
//! - `safety`: health checks, passive health, preview, tunnel drain,
//!   automatic rollback.
//! - `tls`: TLS termination, SNI, certificate renewal, `check` on TLS files.
//! - `tls_upstream`: upstreams over TLS, HTTP/1.1 and a shared h2
//!   connection.
//! - `upgrade`: a new process of the binary taking over under load, and
//!   one that cannot.
//! - `windows`: maintenance windows planned ahead.
//! - `bypass`: bypass tokens through the gate.
//! - `deploy`: `ctl deploy` with real shell commands as migration and
//!   verification.
//! - `cluster`: a fleet of instances holding one decision through a real
//!   etcd.

mod admin;
mod browser;
mod bypass;
mod cluster;
mod corpus;
mod ctl;
mod deploy;
mod durability;
mod events;
mod failures;
mod front_door;
mod hostile;
mod http2;
mod idle;
mod lifecycle;
mod maintenance;
mod observing;
mod proxying;
mod reloading;
mod safety;
mod service;
mod support;
mod switching;
mod tls;
mod tls_upstream;
mod upgrade;
mod windows;
