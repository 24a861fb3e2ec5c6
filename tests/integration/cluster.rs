//! A fleet of instances holding one decision through a real etcd: what
//! is switched through one is served by all the moment the call returns,
//! concurrent changes are serialized, an etcd outage fails no request and
//! loses no decision, and a late instance is named.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::support::*;

/// A fleet under test: its own etcd, a blue and a green upstream, and a
/// key prefix of its own, so tests never share decisions.
struct TestFleet {
    etcd: EtcdServer,
    blue: Upstream,
    green: Upstream,
    prefix: String,
}

impl TestFleet {
    async fn start() -> TestFleet {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TestFleet {
            etcd: EtcdServer::start().await,
            blue: Upstream::named("blue").await,
            green: Upstream::named("green").await,
            prefix: format!(
                "/test/{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    /// The config of instance `name`.
    fn config(&self, name: &str) -> String {
        config_text(
            &[self.blue.addr],
            &[self.green.addr],
            &format!(
                "[cluster]\nendpoints = [\"{}\"]\nprefix = \"{}\"\ninstance = \"{name}\"\nack_timeout = \"2s\"\nlease_ttl = \"2s\"\n",
                self.etcd.endpoint, self.prefix
            ),
        )
    }

    /// Instance `name`, started in this process.
    async fn instance(&self, name: &str) -> Proxy {
        Proxy::with_config(&self.config(name)).await
    }
}

/// Waits until `count` instances are registered, as `proxy` sees them:
/// only those count for a change's acknowledgements.
async fn registered(proxy: &Proxy, count: usize) {
    until("every instance registered", || async {
        let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
        doc["cluster"]["instances"].as_array().map_or(0, Vec::len) == count
    })
    .await;
}

/// The pool `proxy` sends a request to, by the upstream's answer.
async fn serving(proxy: &Proxy) -> String {
    get(&proxy.url("/")).await.2
}

#[tokio::test]
async fn a_switch_through_one_instance_is_served_by_all_when_the_call_returns() {
    let fleet = TestFleet::start().await;
    let a = fleet.instance("a").await;
    let b = fleet.instance("b").await;
    let c = fleet.instance("c").await;
    for proxy in [&a, &b, &c] {
        assert_eq!(serving(proxy).await, "blue");
    }
    // Every instance registered before the change: it waits for all three.
    until("all three registered", || async {
        let (_, doc) = a.admin("GET", "/v1/status", None).await;
        doc["cluster"]["instances"].as_array().map_or(0, Vec::len) == 3
    })
    .await;
    let (status, doc) = b
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["generation"], 1);
    for proxy in [&a, &b, &c] {
        assert_eq!(
            serving(proxy).await,
            "green",
            "the moment the call returned"
        );
    }
    let (_, doc) = c.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["live_pool"], "green");
    assert_eq!(doc["cluster"]["prefix"], fleet.prefix.as_str());
    assert_eq!(doc["cluster"]["instance"], "c");
    assert_eq!(doc["cluster"]["connected"], true);
    assert_eq!(
        metric(&c, "switchyard_cluster_connected{instance=\"c\"}").await,
        1
    );
    assert_eq!(metric(&c, "switchyard_generation").await, 1);
    // ctl status shows every instance and what it applied.
    let output = tokio::process::Command::new(BIN)
        .args(["ctl", "--admin"])
        .arg(&c.admin)
        .arg("status")
        .env_remove("SWITCHYARD_CONFIG")
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        shown.contains(&format!(
            "cluster       {} as c, connected to etcd",
            fleet.prefix
        )),
        "{shown}"
    );
    for name in ["a", "b", "c"] {
        assert!(
            shown
                .lines()
                .any(|l| l.trim_start().starts_with(name) && l.contains("generation 1")),
            "{shown}"
        );
    }
    // A new instance adopts the fleet's decisions, whatever its own
    // initial_pool says.
    let d = fleet.instance("d").await;
    assert_eq!(serving(&d).await, "green");
    let (_, doc) = d.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["generation"], 1);
}

#[tokio::test]
async fn concurrent_changes_through_two_instances_are_both_kept() {
    let fleet = TestFleet::start().await;
    let a = fleet.instance("a").await;
    let b = fleet.instance("b").await;
    registered(&a, 2).await;
    let (switched, gated) = tokio::join!(
        a.admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#)),
        b.admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#)),
    );
    assert_eq!(switched.0, 200, "{}", switched.1);
    assert_eq!(gated.0, 200, "{}", gated.1);
    for proxy in [&a, &b] {
        let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
        assert_eq!(doc["live_pool"], "green", "{doc}");
        assert_eq!(doc["maintenance"]["enabled"], true, "{doc}");
        assert_eq!(doc["generation"], 2, "{doc}");
    }
}

#[tokio::test]
async fn an_etcd_outage_fails_no_request_and_refuses_changes() {
    let mut fleet = TestFleet::start().await;
    let a = fleet.instance("a").await;
    let b = fleet.instance("b").await;
    // Both registered, so the switch waits for both to apply it.
    registered(&a, 2).await;
    let (status, _) = a
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(status, 200);
    fleet.etcd.kill().await;
    // Traffic goes on with the decisions last applied.
    for _ in 0..20 {
        assert_eq!(serving(&a).await, "green");
        assert_eq!(serving(&b).await, "green");
    }
    let (status, doc) = b
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    assert_eq!(status, 503, "{doc}");
    assert_eq!(doc["error"]["code"], "cluster_unavailable");
    let (_, doc) = b.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["maintenance"]["enabled"], false, "nothing changed");
    assert_eq!(doc["cluster"]["connected"], false);
    assert_eq!(
        metric(&b, "switchyard_cluster_connected{instance=\"b\"}").await,
        0
    );
    // Back: changes go through again, and reach both.
    fleet.etcd.restart().await;
    until("a change goes through again", || async {
        b.admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
            .await
            .0
            == 200
    })
    .await;
    let (_, doc) = a.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["maintenance"]["enabled"], true, "{doc}");
    assert_eq!(doc["generation"], 2, "{doc}");
}

#[tokio::test]
async fn an_instance_that_does_not_apply_a_change_is_named() {
    let fleet = TestFleet::start().await;
    let a = fleet.instance("a").await;
    // An instance that registered and then froze: its lease lives on (kept
    // by this test), its generation stays.
    let mut client = etcd_client::Client::connect([fleet.etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    let lease = client.lease_grant(30, None).await.unwrap().id();
    client
        .put(
            format!("{}/instances/frozen", fleet.prefix),
            r#"{"generation": 0}"#,
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let (status, doc) = a
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(status, 504, "{doc}");
    assert_eq!(doc["error"]["code"], "not_acknowledged");
    assert_eq!(doc["error"]["details"], serde_json::json!(["frozen"]));
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "waited ack_timeout"
    );
    // Committed all the same: this instance serves it.
    assert_eq!(serving(&a).await, "green");
    // Once its lease is gone, it no longer counts.
    client.lease_revoke(lease).await.unwrap();
    let (status, doc) = a.admin("POST", "/v1/rollback", None).await;
    assert_eq!(status, 200, "{doc}");
}

#[tokio::test]
async fn a_frozen_instance_is_named_and_a_killed_one_stops_counting() {
    let fleet = TestFleet::start().await;
    // A lease long enough that a busy machine never lets b's lapse before
    // it is frozen.
    let config = |name| {
        fleet
            .config(name)
            .replace("lease_ttl = \"2s\"", "lease_ttl = \"5s\"")
    };
    let a = Proxy::with_config(&config("a")).await;
    let mut b = Served::start(&config("b")).await;
    let instances = || async {
        let (_, doc) = a.admin("GET", "/v1/status", None).await;
        doc["cluster"]["instances"].as_array().map_or(0, Vec::len)
    };
    until("both registered", || async { instances().await == 2 }).await;
    b.signal("-STOP").await;
    let (status, doc) = a
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(status, 504, "{doc}");
    assert_eq!(doc["error"]["details"], serde_json::json!(["b"]));
    // Thawed, it catches up, and says so in its audit log.
    b.signal("-CONT").await;
    let b_url = format!("http://{}/", b.addr);
    until("b serves green", || async {
        get(&b_url).await.2 == "green"
    })
    .await;
    eventually("b logged what it applied", || {
        b.logged(&["audit", "applied the fleet's decisions", "live_pool=green"])
    })
    .await;
    // A change through b names b in the audit log.
    let b_admin = b.config.parent().unwrap().join("run/admin.sock");
    let (status, doc) = admin_call(
        &b_admin,
        "PUT",
        "/v1/maintenance",
        Some(r#"{"enabled": true}"#),
    )
    .await;
    assert_eq!(status, 200, "{doc}");
    eventually("b's audit line names it", || {
        b.logged(&["fleet{instance=b}", "audit", "maintenance on"])
    })
    .await;
    // Killed, it stops counting once its lease expires.
    b.child.kill().await.unwrap();
    until("b's lease expired", || async { instances().await == 1 }).await;
    let (status, doc) = a.admin("POST", "/v1/rollback", None).await;
    assert_eq!(status, 200, "{doc}");
}

#[tokio::test]
async fn a_restart_during_an_outage_starts_from_the_state_file_and_without_one_does_not_start() {
    let mut fleet = TestFleet::start().await;
    let a = fleet.instance("a").await;
    let (status, _) = a
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(status, 200);
    let dir = a.stop().await;
    fleet.etcd.kill().await;
    // Its state file says green: it serves green, never initial_pool.
    let a = Proxy::in_dir(dir).await;
    assert_eq!(serving(&a).await, "green");
    let (_, doc) = a.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["cluster"]["connected"], false, "{doc}");
    // A new instance has nothing to start from.
    let dir = TempDir::new();
    dir.write("switchyard.toml", &fleet.config("new"));
    let Err((error, _)) = Proxy::try_in_dir(dir).await else {
        panic!("an instance without a state file started while etcd was away");
    };
    assert!(error.contains("did not answer"), "{error}");
    // etcd back: the restarted instance reads the fleet's decisions again.
    fleet.etcd.restart().await;
    until("connected again", || async {
        let (_, doc) = a.admin("GET", "/v1/status", None).await;
        doc["cluster"]["connected"] == true
    })
    .await;
    let (status, doc) = a.admin("POST", "/v1/rollback", None).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["generation"], 2);
}

#[tokio::test]
async fn a_frozen_etcd_refuses_changes_in_time_and_fails_no_request() {
    let fleet = TestFleet::start().await;
    let a = fleet.instance("a").await;
    fleet.etcd.signal("-STOP").await;
    let started = tokio::time::Instant::now();
    let (status, doc) = a
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(status, 503, "{doc}");
    assert_eq!(doc["error"]["code"], "cluster_unavailable");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "answered within ack_timeout, not held: {:?}",
        started.elapsed()
    );
    for _ in 0..20 {
        assert_eq!(serving(&a).await, "blue");
    }
    fleet.etcd.signal("-CONT").await;
    until("a change goes through again", || async {
        a.admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
            .await
            .0
            == 200
    })
    .await;
    assert_eq!(serving(&a).await, "green");
}

#[tokio::test]
async fn a_gate_with_an_end_turns_off_once_for_the_whole_fleet() {
    let fleet = TestFleet::start().await;
    let a = fleet.instance("a").await;
    let b = fleet.instance("b").await;
    registered(&a, 2).await;
    let end = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(2),
    );
    let body = format!(r#"{{"enabled": true, "until": "{end}"}}"#);
    let (status, doc) = a.admin("PUT", "/v1/maintenance", Some(&body)).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(get(&b.url("/")).await.0, 503, "b applied the gate");
    for proxy in [&a, &b] {
        until("the gate ended", || async {
            get(&proxy.url("/")).await.0 == 200
        })
        .await;
    }
    // Both clocks fired; one change was made.
    for proxy in [&a, &b] {
        let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
        assert_eq!(doc["generation"], 2, "{doc}");
        assert_eq!(doc["maintenance"]["enabled"], false);
    }
}

#[tokio::test]
async fn a_window_planned_through_one_instance_runs_once_on_all() {
    let fleet = TestFleet::start().await;
    let a = fleet.instance("a").await;
    let b = fleet.instance("b").await;
    registered(&a, 2).await;
    let body = format!(
        r#"{{"starts_at": "{}", "ends_at": "{}"}}"#,
        rfc3339_in(2),
        rfc3339_in(4)
    );
    let (status, doc) = a
        .admin("POST", "/v1/maintenance/windows", Some(&body))
        .await;
    assert_eq!(status, 201, "{doc}");
    let (_, listed) = b.admin("GET", "/v1/maintenance/windows", None).await;
    assert_eq!(listed["windows"][0]["id"], doc["id"], "b has the window");
    for proxy in [&a, &b] {
        until("the window started", || async {
            get(&proxy.url("/")).await.0 == 503
        })
        .await;
    }
    for proxy in [&a, &b] {
        until("the window ended", || async {
            get(&proxy.url("/")).await.0 == 200
        })
        .await;
    }
    // Both clocks fired at the start and at the end; one change each.
    for proxy in [&a, &b] {
        let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
        assert_eq!(doc["generation"], 3, "planned, started, ended: {doc}");
        assert_eq!(doc["windows"], serde_json::json!([]));
    }
}

#[tokio::test]
async fn a_deploy_through_one_instance_locks_out_a_deploy_through_another() {
    let fleet = TestFleet::start().await;
    let a = fleet.instance("a").await;
    let b = fleet.instance("b").await;
    registered(&a, 2).await;
    let scratch = TempDir::new();
    let waiting = scratch.path().join("waiting");
    let proceed = scratch.path().join("proceed");
    let migrate = format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.05; done",
        waiting.display(),
        proceed.display()
    );
    let deploy = |admin: &std::path::Path, migrate: Option<&str>| {
        let mut command = tokio::process::Command::new(BIN);
        command
            .arg("ctl")
            .arg("--admin")
            .arg(admin)
            .args(["deploy", "green"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(migrate) = migrate {
            command.args(["--migrate", migrate]);
        }
        command.spawn().unwrap()
    };
    let first = deploy(&a.admin, Some(&migrate));
    let path = waiting.clone();
    eventually("the migration started", move || path.exists()).await;
    let (_, doc) = b.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["deploy"]["pool"], "green", "b sees a's deploy: {doc}");
    let second = within(deploy(&b.admin, None).wait_with_output())
        .await
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("deploy_running"), "{err}");
    std::fs::write(&proceed, "").unwrap();
    let first = within(first.wait_with_output()).await.unwrap();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(serving(&b).await, "green");
    let (_, doc) = b.admin("GET", "/v1/status", None).await;
    assert_eq!(
        doc["deploy"],
        serde_json::Value::Null,
        "released for the fleet"
    );
}
