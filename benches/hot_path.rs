//! Micro-benchmarks of the per-request work that does not touch a socket:
//! reading the shared state (one `ArcSwap` load plus taking the live pool
//! out of it), the maintenance gate's decision and answer, picking an
//! upstream under each balancing policy, and rewriting a request's and a
//! response's headers.
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
            let admitted = gate.admits(&http::Method::POST, black_box("/orders/42"), client);
            black_box((admitted, gate.response(Some(&accept))))
        })
    });
    c.bench_function("gate: admit an allow_paths request", |b| {
        b.iter(|| {
            let snapshot = state.load();
            let gate = snapshot.gate.as_ref().expect("maintenance is on");
            black_box(gate.admits(&http::Method::POST, black_box("/health/db"), client))
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

fn header_rewriting(c: &mut Criterion) {
    use http::header::{HeaderMap, HeaderValue};
    // What a browser sends, plus what a load balancer in front added.
    let mut request = HeaderMap::new();
    for (name, value) in [
        ("host", "shop.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("connection", "keep-alive"),
        ("cookie", "session=8c6f1e2a9b; theme=dark"),
        ("x-forwarded-for", "198.51.100.7"),
    ] {
        request.insert(name, HeaderValue::from_static(value));
    }
    let client =
        switchyard::proxy::headers::forwarded_for("203.0.113.9".parse().expect("an address"));
    c.bench_function("headers: rewrite a browser request for the upstream", |b| {
        b.iter_batched(
            || request.clone(),
            |mut headers| {
                switchyard::proxy::headers::prepare_request(&mut headers, None, &client, "http");
                headers
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let mut response = HeaderMap::new();
    for (name, value) in [
        ("content-type", "text/html; charset=utf-8"),
        ("content-length", "5120"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("cache-control", "private, max-age=0"),
        ("set-cookie", "session=8c6f1e2a9b; HttpOnly"),
    ] {
        response.insert(name, HeaderValue::from_static(value));
    }
    c.bench_function(
        "headers: rewrite an upstream response for the client",
        |b| {
            b.iter_batched(
                || response.clone(),
                |mut headers| {
                    switchyard::proxy::headers::prepare_response(&mut headers);
                    headers
                },
                criterion::BatchSize::SmallInput,
            )
        },
    );
}

criterion_group!(benches, state_load, gate, pick, header_rewriting);
criterion_main!(benches);
