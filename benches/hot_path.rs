//! Micro-benchmarks of the per-request work that does not touch a socket:
//! reading the shared state (one `ArcSwap` load plus taking the live pool
//! out of it) and picking an upstream under each balancing policy.
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
use switchyard::state::{SharedState, Snapshot};
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

fn state_load(c: &mut Criterion) {
    let state = SharedState::new(Snapshot::new(config(), "blue"));
    c.bench_function("state: load snapshot, take live pool and timeouts", |b| {
        b.iter(|| {
            let snapshot = state.load();
            black_box((snapshot.live.clone(), snapshot.config.timeouts.upstream))
        })
    });
}

fn pick(c: &mut Criterion) {
    let config = config();
    for balance in [Balance::RoundRobin, Balance::LeastInFlight] {
        let mut pool_config = config.pools["blue"].clone();
        pool_config.balance = balance;
        let pool = Pool::new("blue", &pool_config);
        c.bench_function(
            &format!("pick: {} over 4 upstreams", balance.as_str()),
            |b| b.iter(|| black_box(pool.pick(None))),
        );
    }
}

criterion_group!(benches, state_load, pick);
criterion_main!(benches);
