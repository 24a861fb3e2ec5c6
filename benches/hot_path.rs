//! Micro-benchmarks of the per-request work that does not touch a socket:
//! reading the shared state (one `ArcSwap` load plus taking the live pool
//! out of it), the maintenance gate's decision and answer, and picking an
//! upstream under each balancing policy.
//!
//! These are the steps every request pays for before any I/O, so a
//! regression here is a regression for every request. Whole-request
//! throughput against nginx and HAProxy is a separate, load-driven
//! comparison. Run with `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};

use switchyard::config::{Balance, Config};
use switchyard::metrics::{Metrics, RequestCounters};
use switchyard::state::{Decisions, SharedState, Snapshot};
use switchyard::upstream::Pool;

const CONFIG: &str = "\
[pools.blue]
upstreams = [\"127.0.0.1:9001\", \"127.0.0.1:9002\", \"127.0.0.1:9003\", \"127.0.0.1:9004\"]
[pools.green]
upstreams = [\"127.0.0.1:9101\"]
";

fn config() -> Arc<Config> {
    Arc::new(Config::parse(Path::new("bench.toml"), CONFIG).expect("bench config is valid"))
}

fn snapshot(maintenance: bool) -> Snapshot {
    let config = config();
    let mut decisions = Decisions::initial(&config);
    decisions.maintenance.enabled = maintenance;
    Snapshot::start(config, decisions, Arc::new(Metrics::new())).expect("blue is a pool")
}

fn state_load(c: &mut Criterion) {
    let state = SharedState::new(snapshot(false));
    c.bench_function(
        "state: load snapshot, check gate, take live pool and timeouts",
        |b| {
            b.iter(|| {
                let snapshot = state.load();
                black_box(snapshot.gate.is_some());
                black_box((snapshot.live.clone(), snapshot.config.timeouts.upstream))
            })
        },
    );
}

fn gate(c: &mut Criterion) {
    let state = SharedState::new(snapshot(true));
    let client = "203.0.113.9".parse().expect("an address");
    let accept = http::HeaderValue::from_static("*/*");
    c.bench_function("gate: decide and build the 503", |b| {
        b.iter(|| {
            let snapshot = state.load();
            let gate = snapshot.gate.as_ref().expect("maintenance is on");
            let admitted = gate.admits(black_box("/orders/42"), client);
            black_box((admitted, gate.response(Some(&accept))))
        })
    });
    c.bench_function("gate: admit an allow_paths request", |b| {
        b.iter(|| {
            let snapshot = state.load();
            let gate = snapshot.gate.as_ref().expect("maintenance is on");
            black_box(gate.admits(black_box("/health/db"), client))
        })
    });
}

fn pick(c: &mut Criterion) {
    let config = config();
    for balance in [Balance::RoundRobin, Balance::LeastInFlight] {
        let mut pool_config = config.pools["blue"].clone();
        pool_config.balance = balance;
        let pool = Pool::new("blue", &pool_config, RequestCounters::default());
        c.bench_function(
            &format!("pick: {} over 4 upstreams", balance.as_str()),
            |b| b.iter(|| black_box(pool.pick(None))),
        );
    }
}

criterion_group!(benches, state_load, gate, pick);
criterion_main!(benches);
