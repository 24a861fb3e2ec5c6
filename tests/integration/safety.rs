//! Safe switching: continuous and passive health, the 503 of a dead pool,
//! the preview route following switches, tunnels draining from the old
//! pool, and the automatic rollback of a switch that goes bad.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use crate::support::*;

/// Fast checks, so health changes show within a test's patience.
const FAST_HEALTH: &str = "[health]\ninterval = \"50ms\"\ntimeout = \"200ms\"\n";

/// An upstream answering `name`, whose `/health` fails while `sick` is set.
async fn flappy(name: &'static str, sick: Arc<AtomicBool>) -> Upstream {
    Upstream::start(move |request| {
        let sick = sick.load(Ordering::SeqCst);
        async move {
            let mut response = text(name);
            if request.uri().path() == "/health" && sick {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            response
        }
    })
    .await
}

/// An upstream answering 500 to everything but `/health`.
async fn failing(name: &'static str) -> Upstream {
    Upstream::start(move |request| async move {
        let mut response = text(name);
        if request.uri().path() != "/health" {
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        response
    })
    .await
}

async fn status(proxy: &Proxy) -> serde_json::Value {
    proxy.admin("GET", "/v1/status", None).await.1
}

#[tokio::test]
async fn an_upstream_turns_unhealthy_after_the_threshold_and_back_after_recovery() {
    let sick = Arc::new(AtomicBool::new(false));
    let flaky = flappy("flaky", sick.clone()).await;
    let steady = Upstream::named("steady").await;
    let extra = format!("{FAST_HEALTH}healthy_threshold = 2\nunhealthy_threshold = 3\n");
    let proxy = Proxy::with_config(&config_text(
        &[flaky.addr, steady.addr],
        &[steady.addr],
        &extra,
    ))
    .await;
    eventually("the first probes ran", || flaky.probes() > 0).await;

    sick.store(true, Ordering::SeqCst);
    until("flaky is reported unhealthy", || async {
        status(&proxy).await["pools"]["blue"]["upstreams"][0]["healthy"] == false
    })
    .await;
    let doc = status(&proxy).await;
    let record = &doc["pools"]["blue"]["upstreams"][0];
    assert!(
        record["consecutive_failures"].as_u64().unwrap() >= 3,
        "{record}"
    );
    assert!(
        record["last_error"].as_str().unwrap().contains("503"),
        "{record}"
    );
    assert!(record["last_check"].is_string(), "{record}");
    // Balancing skips it.
    let before = flaky.hits();
    for _ in 0..6 {
        assert_eq!(get(&proxy.url("/")).await.2, "steady");
    }
    assert_eq!(flaky.hits(), before);

    sick.store(false, Ordering::SeqCst);
    until("flaky is reported healthy again", || async {
        status(&proxy).await["pools"]["blue"]["upstreams"][0]["healthy"] == true
    })
    .await;
    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(get(&proxy.url("/")).await.2);
    }
    assert!(bodies.iter().any(|b| b == "flaky"), "{bodies:?}");
}

#[tokio::test]
async fn a_killed_upstream_stops_receiving_traffic_at_once() {
    let doomed = Upstream::named("doomed").await;
    let survivor = Upstream::named("survivor").await;
    // No probe will run during the test: only live traffic can notice.
    let extra = "[health]\ninterval = \"1h\"\n";
    let proxy = Proxy::with_config(&config_text(
        &[doomed.addr, survivor.addr],
        &[survivor.addr],
        extra,
    ))
    .await;
    eventually("the startup probes ran", || doomed.probes() == 1).await;
    let dead = doomed.addr;
    drop(doomed);

    // The first request that tries it is retried on the survivor; after
    // that, nothing is sent its way.
    for _ in 0..10 {
        let (status, _, body) = get(&proxy.url("/")).await;
        assert_eq!((status, body.as_str()), (200, "survivor"));
    }
    let doc = status(&proxy).await;
    let record = &doc["pools"]["blue"]["upstreams"][0];
    assert_eq!(record["addr"], dead.to_string());
    assert_eq!(record["healthy"], false, "{record}");
    assert!(record["last_error"].is_string(), "{record}");
}

#[tokio::test]
async fn a_live_pool_with_no_healthy_upstream_answers_503_without_trying() {
    let sick = Arc::new(AtomicBool::new(true));
    let upstream = flappy("blue", sick).await;
    let green = Upstream::named("green").await;
    let proxy =
        Proxy::with_config(&config_text(&[upstream.addr], &[green.addr], FAST_HEALTH)).await;
    until("blue's only upstream is unhealthy", || async {
        status(&proxy).await["pools"]["blue"]["upstreams"][0]["healthy"] == false
    })
    .await;
    let (code, headers, body) = get(&proxy.url("/")).await;
    assert_eq!(code, 503);
    assert_eq!(headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "no_healthy_upstream");
    assert_eq!(
        upstream.hits(),
        0,
        "a request was sent to an unhealthy upstream"
    );
}

#[tokio::test]
async fn preview_follows_every_switch() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let proxy = Proxy::with_config(&config_text(
        &[blue.addr],
        &[green.addr],
        "[preview]\nbind = \"127.0.0.1:0\"\n",
    ))
    .await;
    let preview = format!("http://{}/", proxy.preview.unwrap());
    assert_eq!(get(&preview).await.2, "green");
    proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(get(&preview).await.2, "blue");
    assert_eq!(get(&proxy.url("/")).await.2, "green");
    proxy.admin("POST", "/v1/rollback", None).await;
    assert_eq!(get(&preview).await.2, "green");
    assert_eq!(get(&proxy.url("/")).await.2, "blue");
}

#[tokio::test]
async fn a_websocket_on_the_old_pool_lives_until_the_drain_budget_then_closes() {
    let blue = Upstream::websocket_echo().await;
    let green = Upstream::named("green").await;
    let extra = "[timeouts]\ndrain = \"1s\"\n";
    let proxy = Proxy::with_config(&config_text(&[blue.addr], &[green.addr], extra)).await;
    let (mut socket, head) = open_websocket(proxy.addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(websocket_echoes(&mut socket).await);
    let doc = status(&proxy).await;
    assert_eq!(doc["pools"]["blue"]["tunnels"], 1, "{doc}");
    assert_eq!(doc["pools"]["blue"]["in_flight"], 0, "{doc}");

    let (code, _) = proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(code, 200);
    let switched = Instant::now();
    // New requests go to green; the tunnel to blue carries on for now.
    assert_eq!(get(&proxy.url("/")).await.2, "green");
    assert!(
        websocket_echoes(&mut socket).await,
        "the tunnel closed at the switch"
    );

    // Once the budget is spent, it is closed.
    closes_after_the_drain_budget(&proxy, &mut socket, switched).await;
}

/// Waits for the tunnel on `socket` to close, which must be no sooner than
/// the 1 s drain budget after `since`, and for blue's tunnel count to say so.
async fn closes_after_the_drain_budget(
    proxy: &Proxy,
    socket: &mut tokio::net::TcpStream,
    since: Instant,
) {
    let deadline = Instant::now() + DEADLINE;
    while websocket_echoes(socket).await {
        assert!(
            Instant::now() < deadline,
            "the tunnel outlived the drain budget"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        since.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the budget",
        since.elapsed()
    );
    until("the tunnel count is back to 0", || async {
        status(proxy).await["pools"]["blue"]["tunnels"] == 0
    })
    .await;
}

#[tokio::test]
async fn turning_the_gate_on_closes_tunnels_after_the_drain_budget() {
    let blue = Upstream::websocket_echo().await;
    let extra = "[timeouts]\ndrain = \"1s\"\n";
    let proxy = Proxy::with_config(&config_text(&[blue.addr], &[blue.addr], extra)).await;
    let (mut socket, head) = open_websocket(proxy.addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(websocket_echoes(&mut socket).await);

    let (code, _) = proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    assert_eq!(code, 200);
    let gated = Instant::now();
    assert!(
        websocket_echoes(&mut socket).await,
        "the tunnel closed at once, not after the drain budget"
    );
    closes_after_the_drain_budget(&proxy, &mut socket, gated).await;
}

#[tokio::test]
async fn a_switch_back_within_the_budget_spares_the_tunnel() {
    let blue = Upstream::websocket_echo().await;
    let green = Upstream::named("green").await;
    let extra = "[timeouts]\ndrain = \"300ms\"\n";
    let proxy = Proxy::with_config(&config_text(&[blue.addr], &[green.addr], extra)).await;
    let (mut socket, _) = open_websocket(proxy.addr).await;
    let (code, _) = proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(code, 200);
    let (code, doc) = proxy.admin("POST", "/v1/rollback", None).await;
    assert_eq!(code, 200, "{doc}");
    // Twice the budget later, the tunnel is still up. (Showing that
    // something does not happen takes waiting past when it would have.)
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(websocket_echoes(&mut socket).await, "the tunnel was closed");
}

fn watch_config(blue: &Upstream, green: &Upstream, watch: &str) -> String {
    config_text(
        &[blue.addr],
        &[green.addr],
        &format!("[switch]\nwatch = \"{watch}\"\nmax_error_rate = 0.2\nmin_requests = 10\n"),
    )
}

#[tokio::test]
async fn a_switch_to_a_failing_pool_is_rolled_back_by_itself() {
    let blue = Upstream::named("blue").await;
    let green = failing("green").await;
    let proxy = Proxy::with_config(&watch_config(&blue, &green, "30s")).await;
    let (code, doc) = proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(code, 200, "{doc}");
    assert_eq!(doc["watch"]["pool"], "green", "{doc}");
    assert!(doc["watch"]["until"].is_string(), "{doc}");
    for _ in 0..10 {
        assert_eq!(get(&proxy.url("/")).await.0, 500);
    }
    until("the watch rolled back to blue", || async {
        status(&proxy).await["live_pool"] == "blue"
    })
    .await;
    let doc = status(&proxy).await;
    assert_eq!(doc["previous_pool"], "green");
    assert_eq!(doc["watch"], serde_json::Value::Null);
    assert_eq!(doc["last_event"]["kind"], "auto_rollback", "{doc}");
    let reason = doc["last_event"]["reason"].as_str().unwrap();
    assert!(reason.contains("10 of 10"), "{reason}");
    assert_eq!(get(&proxy.url("/")).await.2, "blue");
    let (_, metrics) = proxy.admin("GET", "/metrics", None).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("switchyard_switches_total{kind=\"auto_rollback\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn answers_to_unknown_methods_are_not_errors_of_the_new_pool() {
    let blue = Upstream::named("blue").await;
    // An application that answers a method it does not know with 501, as
    // Python's http.server and Java servlets do.
    let green = Upstream::start(|request| async move {
        let mut response = text("green");
        if request.method().as_str() == "FOO" {
            *response.status_mut() = StatusCode::NOT_IMPLEMENTED;
        }
        response
    })
    .await;
    let proxy = Proxy::with_config(&watch_config(&blue, &green, "30s")).await;
    let (code, _) = proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(code, 200);
    for _ in 0..10 {
        let answer = raw(
            proxy.addr,
            b"FOO / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&answer), 501, "{answer}");
    }
    until("the watch saw the ten answers", || async {
        status(&proxy).await["watch"]["requests"] == 10
    })
    .await;
    let doc = status(&proxy).await;
    assert_eq!(doc["watch"]["errors"], 0, "{doc}");
    assert_eq!(doc["live_pool"], "green", "{doc}");
}

#[tokio::test]
async fn a_restart_within_the_watch_resumes_it() {
    let blue = Upstream::named("blue").await;
    let green = failing("green").await;
    let proxy = Proxy::with_config(&watch_config(&blue, &green, "30s")).await;
    let (code, doc) = proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(code, 200, "{doc}");
    let watch_until = doc["watch"]["until"].clone();
    let dir = proxy.stop().await;
    let proxy = Proxy::in_dir(dir).await;
    let doc = status(&proxy).await;
    assert_eq!(doc["watch"]["pool"], "green", "{doc}");
    assert_eq!(doc["watch"]["until"], watch_until, "{doc}");
    for _ in 0..10 {
        assert_eq!(get(&proxy.url("/")).await.0, 500);
    }
    until("the resumed watch rolled back to blue", || async {
        status(&proxy).await["live_pool"] == "blue"
    })
    .await;
    // The rollback ended the watch, in the file too.
    let dir = proxy.stop().await;
    let proxy = Proxy::in_dir(dir).await;
    let doc = status(&proxy).await;
    assert_eq!(doc["live_pool"], "blue");
    assert_eq!(doc["watch"], serde_json::Value::Null, "{doc}");
}

#[tokio::test]
async fn no_rollback_below_min_requests_nor_after_the_window() {
    let blue = Upstream::named("blue").await;
    let green = failing("green").await;
    let proxy = Proxy::with_config(&watch_config(&blue, &green, "1s")).await;
    proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    // Nine failures: all errors, but too few to judge.
    for _ in 0..9 {
        assert_eq!(get(&proxy.url("/")).await.0, 500);
    }
    until("the watch counted them", || async {
        status(&proxy).await["watch"]["requests"] == 9
    })
    .await;
    until("the window closed", || async {
        status(&proxy).await["watch"].is_null()
    })
    .await;
    // After the window, failures no longer count.
    for _ in 0..20 {
        assert_eq!(get(&proxy.url("/")).await.0, 500);
    }
    let doc = status(&proxy).await;
    assert_eq!(doc["live_pool"], "green");
    assert_eq!(doc["last_event"]["kind"], "switch", "{doc}");
}

#[tokio::test]
async fn a_rollback_to_an_unhealthy_previous_pool_is_refused_and_recorded() {
    let sick = Arc::new(AtomicBool::new(false));
    let blue = flappy("blue", sick.clone()).await;
    let green = failing("green").await;
    let proxy = Proxy::with_config(&watch_config(&blue, &green, "30s")).await;
    proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    sick.store(true, Ordering::SeqCst);
    for _ in 0..10 {
        get(&proxy.url("/")).await;
    }
    until("the refusal was recorded", || async {
        status(&proxy).await["last_event"]["kind"] == "auto_rollback_refused"
    })
    .await;
    let doc = status(&proxy).await;
    assert_eq!(doc["live_pool"], "green");
    let reason = doc["last_event"]["reason"].as_str().unwrap();
    assert!(reason.contains("stayed on green"), "{reason}");
}

#[tokio::test]
async fn a_manual_rollback_cancels_the_watch() {
    let blue = Upstream::named("blue").await;
    let green = failing("green").await;
    let proxy = Proxy::with_config(&watch_config(&blue, &green, "30s")).await;
    proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    let (_, doc) = proxy.admin("POST", "/v1/rollback", None).await;
    assert_eq!(doc["watch"], serde_json::Value::Null, "{doc}");
    assert_eq!(doc["last_event"]["kind"], "rollback");
}

#[tokio::test]
async fn probes_start_for_a_pool_added_by_reload() {
    let blue = Upstream::named("blue").await;
    let canary = Upstream::named("canary").await;
    let proxy = Proxy::with_config(&config_text(&[blue.addr], &[blue.addr], FAST_HEALTH)).await;
    let text = config_text(
        &[blue.addr],
        &[blue.addr],
        &format!(
            "{FAST_HEALTH}\n[pools.canary]\nupstreams = [\"{}\"]\n",
            canary.addr
        ),
    );
    std::fs::write(&proxy.config, text).unwrap();
    let (code, doc) = proxy.admin("POST", "/v1/reload", None).await;
    assert_eq!(code, 200, "{doc}");
    eventually("the new pool's upstream was probed", || canary.probes() > 0).await;
    until("status shows its check", || async {
        status(&proxy).await["pools"]["canary"]["upstreams"][0]["last_check"].is_string()
    })
    .await;
}
