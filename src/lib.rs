//! switchyard: a reverse proxy that holds the maintenance and blue/green
//! decisions of a service, so that database migrations stop being outages.
//!
//! The module map, in the order a request meets them:
//!
//! - [`cli`]: the command line (`serve`, `check`, `demo`, `ctl`) and exit codes.
//! - [`config`]: the TOML file, validated into one [`config::Config`] with
//!   every problem's position.
//! - [`server`]: the serving process: restore decisions, bind, run, drain.
//! - [`state`]: the runtime [`state::Snapshot`] (decisions, pools, gate,
//!   config) behind one `ArcSwap`, and the state file ([`state::persist`]).
//! - [`proxy`]: the data plane: accept loop, front-door checks, maintenance
//!   gate, forwarding, upgrades, error answers.
//! - [`upstream`]: pools of upstreams and how a request picks one.
//! - [`control`]: the one writer of the state: maintenance, switch,
//!   rollback, reload, each persisted and audited.
//! - [`health`]: health probes of upstreams.
//! - [`admin`]: the admin API (unix socket, optional TCP with a token).
//! - [`ctl`]: `switchyard ctl`, the admin API's client.
//! - [`reload`]: watching the config file.
//! - [`metrics`]: Prometheus metrics.
//! - [`shutdown`]: signals, the drain of in-flight work, and background
//!   tasks that stop when dropped.
//! - [`demo`]: the zero-setup tour with built-in blue and green apps.

pub mod admin;
pub mod body;
pub mod cli;
pub mod config;
pub mod control;
pub mod ctl;
pub mod demo;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod upstream;
