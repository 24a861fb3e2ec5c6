//! switchyard: a reverse proxy that holds the maintenance and blue/green
//! decisions of a service, so that database migrations stop being outages.
//!
//! The modules, bottom to top: each imports only those above it in this
//! list, and those beside it where it says so.
//!
//! - [`accept`]: what every accept loop does when `accept` fails.
//! - [`bypass`]: signed bypass tokens, and where a request carries one.
//! - [`config`]: the TOML file, validated into one [`config::Config`] with
//!   every problem's position.
//! - [`envelope`]: the JSON error envelope of every answer switchyard
//!   makes itself.
//! - [`http1`]: HTTP/1.1 heads parsed in place and judged strictly, written
//!   out again with a hop's edits; chunked bodies decoded and re-encoded.
//! - [`metrics`]: Prometheus counters and a lock-free latency histogram.
//! - [`notify`]: what the service manager (systemd) is told.
//! - [`shutdown`]: signals, the drain of in-flight work, and background
//!   tasks that stop when dropped.
//! - [`body`]: the streamed body with one frame read ahead.
//! - [`access_log`]: one line per answered request, written by a thread of
//!   its own.
//! - [`upstream`]: pools of upstreams, how a request picks one, and each
//!   upstream's own connections.
//! - [`state`]: the runtime [`state::Snapshot`] (decisions, pools, gate,
//!   config) behind one `ArcSwap`, the gate built with it, and the state
//!   file ([`state::persist`]).
//! - [`proxy`], [`health`] and [`control`], side by side: the data plane
//!   (connections, the request path, tunnels); health probes; the one
//!   writer of the state (maintenance, switch, rollback, reload, each
//!   persisted and audited), which probes through `health`. `proxy` and
//!   `control` meet only at the snapshot. [`cluster`], beside them, speaks
//!   to etcd for `control` when the decisions are a fleet's.
//! - [`admin`], [`reload`] and [`upgrade`]: the admin API (unix socket,
//!   optional TCP with a token); what triggers a reload (the config file
//!   watch, SIGHUP); a new binary taking over the listening sockets, which
//!   the admin API starts.
//! - [`server`]: the serving process: restore decisions, bind, run, drain.
//! - [`cli`], [`ctl`] and [`demo`]: the command line and its exit codes,
//!   `switchyard ctl` (the admin API's client), the zero-setup tour.

pub mod accept;
pub mod bypass;
pub mod config;
pub mod envelope;
pub mod http1;
pub mod metrics;
pub mod notify;
pub mod shutdown;

pub mod access_log;
pub mod body;

pub mod upstream;

pub mod state;

pub mod cluster;
pub mod control;
pub mod health;
pub mod proxy;

pub mod admin;
pub mod reload;
pub mod upgrade;

pub mod server;

pub mod cli;
pub mod ctl;
pub mod demo;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Each top-level module's layer, as listed above: 0 at the bottom.
    const LAYERS: &[(&str, u8)] = &[
        ("accept", 0),
        ("bypass", 0),
        ("config", 0),
        ("envelope", 0),
        ("http1", 0),
        ("metrics", 0),
        ("notify", 0),
        ("shutdown", 0),
        ("access_log", 1),
        ("body", 1),
        ("upstream", 2),
        ("state", 3),
        ("proxy", 4),
        ("health", 4),
        ("control", 4),
        ("cluster", 4),
        ("admin", 5),
        ("reload", 5),
        ("upgrade", 5),
        ("server", 6),
        ("cli", 7),
        ("ctl", 7),
        ("demo", 7),
    ];

    /// The imports between modules of one layer that the map allows.
    const BESIDE: &[(&str, &str)] = &[
        ("control", "health"),
        ("control", "cluster"),
        ("admin", "upgrade"),
        ("cli", "ctl"),
        ("cli", "demo"),
    ];

    fn layer(module: &str) -> u8 {
        LAYERS
            .iter()
            .find(|(name, _)| *name == module)
            .unwrap_or_else(|| panic!("module `{module}` is not in the layer list"))
            .1
    }

    /// Every `crate::MODULE` a file names outside comments.
    fn named_modules(text: &str) -> Vec<String> {
        text.lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .flat_map(|line| {
                line.match_indices("crate::")
                    .map(move |(i, _)| &line[i + 7..])
            })
            .map(|rest| {
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect()
    }

    /// Records in `wrong` what `path`, a file of `module`, must not import.
    fn check(path: &Path, module: &str, wrong: &mut Vec<String>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                check(&entry.unwrap().path(), module, wrong);
            }
            return;
        }
        let text = std::fs::read_to_string(path).unwrap();
        for named in named_modules(&text) {
            let allowed = named == module
                || layer(&named) < layer(module)
                || BESIDE.contains(&(module, named.as_str()));
            if !allowed {
                wrong.push(format!("{} imports {named}", path.display()));
            }
        }
    }

    #[test]
    fn modules_import_only_those_below_them() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut wrong = Vec::new();
        for (module, _) in LAYERS {
            check(&src.join(format!("{module}.rs")), module, &mut wrong);
            let dir = src.join(module);
            if dir.is_dir() {
                check(&dir, module, &mut wrong);
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}
