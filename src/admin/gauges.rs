//! What `GET /metrics` shows as gauges, read from the snapshot.

use crate::control::Control;
use crate::metrics::{CertGauges, ClusterGauges, Gauges, PoolGauges, UpstreamGauges};
use crate::state::Snapshot;

/// What the snapshot says that `/metrics` shows as gauges.
pub fn of(snapshot: &Snapshot, control: &Control) -> Gauges {
    let pools = snapshot
        .pools
        .iter()
        .map(|(name, pool)| PoolGauges {
            name: name.clone(),
            live: name == &snapshot.decisions.live_pool,
            upstreams: pool
                .upstreams
                .iter()
                .map(|upstream| UpstreamGauges {
                    authority: upstream.authority.to_string(),
                    healthy: upstream.is_healthy(),
                    idle_connections: upstream.connections.len(),
                })
                .collect(),
        })
        .collect();
    let certificates = snapshot
        .config
        .certificates()
        .into_iter()
        .map(|(listener, cert)| CertGauges {
            listener,
            path: cert.cert.display().to_string(),
            not_after: cert.not_after,
        })
        .collect();
    let cluster = control.fleet_status().map(|fleet| ClusterGauges {
        instance: fleet.instance,
        connected: fleet.connected,
        instances: fleet.instances.len(),
    });
    Gauges {
        maintenance: snapshot.decisions.maintenance.enabled,
        generation: snapshot.decisions.generation,
        pools,
        certificates,
        cluster,
    }
}
