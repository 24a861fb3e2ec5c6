//! `[cluster]`: the etcd endpoints, the key prefix, this instance's name,
//! and the two time budgets of a fleet.

use std::time::Duration;

use super::super::*;
use super::*;

/// The shortest `ack_timeout`: it bounds every etcd request too, and a
/// round trip to etcd takes some milliseconds.
const MIN_ACK_TIMEOUT: Duration = Duration::from_millis(100);

/// The shortest lease etcd grants whole seconds for, and that a keep-alive
/// every third of it can renew in time.
const MIN_LEASE_TTL: Duration = Duration::from_secs(2);

impl Validator<'_> {
    pub(super) fn cluster(&mut self, section: &ClusterSection) -> Cluster {
        let mut endpoints = Vec::new();
        if section.endpoints.get_ref().is_empty() {
            self.problem(
                Some(section.endpoints.span()),
                "cluster.endpoints: list at least one etcd endpoint, like \"http://127.0.0.1:2379\"",
            );
        }
        for endpoint in section.endpoints.get_ref() {
            match endpoint_problem(endpoint.get_ref()) {
                None => endpoints.push(endpoint.get_ref().clone()),
                Some(problem) => self.problem(
                    Some(endpoint.span()),
                    format!("cluster.endpoints: `{}` {problem}", endpoint.get_ref()),
                ),
            }
        }
        let prefix = match &section.prefix {
            None => DEFAULT_CLUSTER_PREFIX.to_owned(),
            Some(prefix) => {
                let text = prefix.get_ref().trim_end_matches('/');
                if !prefix.get_ref().starts_with('/') || text.is_empty() {
                    self.problem(
                        Some(prefix.span()),
                        "cluster.prefix: must start with `/` and name something, like \"/switchyard/shop\"",
                    );
                }
                text.to_owned()
            }
        };
        let instance = match &section.instance {
            Some(name) => {
                if !valid_instance_name(name.get_ref()) {
                    self.problem(
                        Some(name.span()),
                        "cluster.instance: use letters, digits, `.`, `-` and `_` only",
                    );
                }
                name.get_ref().clone()
            }
            None => host_name(),
        };
        let ack_timeout = match &section.ack_timeout {
            Some(d) => self.duration("cluster.ack_timeout", d, MIN_ACK_TIMEOUT),
            None => DEFAULT_ACK_TIMEOUT,
        };
        let lease_ttl = match &section.lease_ttl {
            Some(d) => {
                let ttl = self.duration("cluster.lease_ttl", d, MIN_LEASE_TTL);
                if ttl >= MIN_LEASE_TTL && ttl.subsec_nanos() != 0 {
                    self.problem(
                        Some(d.span()),
                        "cluster.lease_ttl: must be whole seconds (etcd counts leases in seconds)",
                    );
                }
                ttl
            }
            None => DEFAULT_LEASE_TTL,
        };
        Cluster {
            endpoints,
            prefix,
            instance,
            ack_timeout,
            lease_ttl,
        }
    }
}

/// What is wrong with an etcd endpoint, if anything.
fn endpoint_problem(endpoint: &str) -> Option<&'static str> {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Some(if endpoint.starts_with("https://") {
            "uses TLS, which is not supported yet; use http:// on a trusted network"
        } else {
            "must be http://HOST:PORT"
        });
    };
    match rest.parse::<http::uri::Authority>() {
        Ok(authority) if authority.port_u16().is_some() && !rest.contains('@') => None,
        _ => Some("must be http://HOST:PORT"),
    }
}

fn valid_instance_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// The machine's host name, the default instance name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| valid_instance_name(name))
        .unwrap_or_else(|| "switchyard".to_owned())
}
