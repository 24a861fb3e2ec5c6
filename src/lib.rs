//! switchyard: a reverse proxy that holds the maintenance and blue/green
//! decisions of a service, so that database migrations stop being outages.
//!
//! The module map, in the order a request meets them:
//!
//! - [`cli`]: the command line (`serve`, `check`, `demo`) and exit codes.
//! - [`config`]: the TOML file, validated into one [`config::Config`] with
//!   every problem's position.
//! - [`state`]: the runtime [`state::Snapshot`] (live pool, config) behind one
//!   `ArcSwap`; the data plane reads it with a single load per request.
//! - [`proxy`]: the data plane: accept loop, front-door checks, forwarding,
//!   upgrades, error answers.
//! - [`upstream`]: pools of upstreams and how a request picks one.
//! - [`shutdown`]: signals and the drain of in-flight work.
//! - [`demo`]: the zero-setup tour with built-in blue and green apps.

pub mod cli;
pub mod config;
pub mod demo;
pub mod proxy;
pub mod shutdown;
pub mod state;
pub mod upstream;
