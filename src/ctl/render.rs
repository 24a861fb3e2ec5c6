//! What `ctl` prints for people: the status document, and one-line
//! answers to changes.

use std::fmt::Write as _;

use crate::admin::api::{StatusDocument, WindowDocument};

/// One line that says which pool is live after a change.
pub fn pools_line(what: &str, document: &StatusDocument) -> String {
    format!(
        "{what} {} (previous {}), generation {}\n",
        document.live_pool,
        document.previous_pool.as_deref().unwrap_or("none"),
        document.generation
    )
}

/// The compact human view of a status document.
pub fn render_status(document: &StatusDocument) -> String {
    let mut out = String::new();
    let m = &document.maintenance;
    let _ = writeln!(
        out,
        "live pool     {} (previous: {})",
        document.live_pool,
        document.previous_pool.as_deref().unwrap_or("none")
    );
    if m.enabled {
        let _ = writeln!(
            out,
            "maintenance   ON{} since {}{}: \"{}\" (Retry-After {}s)",
            if m.mode == "read_only" {
                " (read-only: reads pass)"
            } else {
                ""
            },
            m.since.as_deref().unwrap_or("?"),
            m.until
                .as_ref()
                .map(|until| format!(", ends {until}"))
                .unwrap_or_default(),
            m.message,
            m.retry_after_s
        );
    } else {
        let _ = writeln!(out, "maintenance   off");
    }
    if let Some(next) = document.windows.first() {
        let _ = write!(out, "next window   {}", window_line(next));
        if document.windows.len() > 1 {
            let _ = writeln!(
                out,
                "              and {} more (`maintenance windows` lists them)",
                document.windows.len() - 1
            );
        }
    }
    let _ = writeln!(out, "generation    {}", document.generation);
    for (name, pool) in &document.pools {
        let role = if *name == document.live_pool {
            " (live)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "pool {name}{role}: {} in flight, {} tunnels",
            pool.in_flight, pool.tunnels
        );
        for upstream in &pool.upstreams {
            let health = if upstream.healthy {
                "healthy"
            } else {
                "UNHEALTHY"
            };
            let _ = write!(out, "  {:<22} {health}", upstream.addr);
            if let Some(checked) = &upstream.last_check {
                let _ = write!(out, ", checked {checked}");
            }
            if let Some(error) = &upstream.last_error {
                let _ = write!(
                    out,
                    ", {} failures in a row, last: {error}",
                    upstream.consecutive_failures
                );
            }
            out.push('\n');
        }
    }
    if let Some(watch) = &document.watch {
        let _ = writeln!(
            out,
            "watch         {} until {}: {} errors in {} requests",
            watch.pool, watch.until, watch.errors, watch.requests
        );
    }
    if let Some(event) = &document.last_event {
        let _ = writeln!(
            out,
            "last event    {} at {}: {}",
            event.kind, event.at, event.reason
        );
    }
    if let Some(cluster) = &document.cluster {
        let _ = writeln!(
            out,
            "cluster       {} as {}, {}",
            cluster.prefix,
            cluster.instance,
            if cluster.connected {
                "connected to etcd"
            } else {
                "etcd UNREACHABLE: serving the decisions last applied"
            }
        );
        for instance in &cluster.instances {
            let behind = if instance.generation < document.generation {
                "  (behind)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {:<20} generation {}{behind}",
                instance.name, instance.generation
            );
        }
    }
    let _ = writeln!(
        out,
        "config        {} (version {}, loaded {})",
        document.config.path, document.config.version, document.config.loaded_at
    );
    match &document.config.last_reload_error {
        None => {
            let _ = writeln!(out, "last reload   ok");
        }
        Some(error) => {
            let _ = writeln!(out, "last reload   FAILED, old config still serving:");
            for line in error.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    out
}

/// One window, on one line.
pub fn window_line(window: &WindowDocument) -> String {
    let reads = if window.mode == "read_only" {
        " (read-only)"
    } else {
        ""
    };
    format!(
        "window {}: {} to {}{reads}: {:?}\n",
        window.id, window.starts_at, window.ends_at, window.message
    )
}
