//! Blue/green switching through the real admin socket: switch, rollback,
//! their refusals, the generation, and the guarantee that a switch under
//! load fails no request and is seen by the very next request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::*;

async fn switch(proxy: &Proxy, to: &str) -> (u16, serde_json::Value) {
    let body = format!(r#"{{"to": "{to}"}}"#);
    proxy.admin("POST", "/v1/switch", Some(&body)).await
}

async fn body_of(proxy: &Proxy) -> String {
    let (status, _, body) = get(&proxy.url("/")).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn switch_and_rollback_move_traffic_and_count_generations() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr]).await;
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["live_pool"], "blue");
    assert_eq!(doc["previous_pool"], serde_json::Value::Null);
    assert_eq!(doc["generation"], 0);
    assert_eq!(body_of(&proxy).await, "blue");

    let (status, doc) = switch(&proxy, "green").await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["live_pool"], "green");
    assert_eq!(doc["previous_pool"], "blue");
    assert_eq!(doc["generation"], 1);
    assert_eq!(body_of(&proxy).await, "green");

    let (status, doc) = proxy.admin("POST", "/v1/rollback", None).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["live_pool"], "blue");
    assert_eq!(doc["previous_pool"], "green");
    assert_eq!(doc["generation"], 2);
    assert_eq!(body_of(&proxy).await, "blue");

    // Two rollbacks in a row return to where they started.
    let (status, doc) = proxy
        .admin("POST", "/v1/rollback", Some(r#"{"force": false}"#))
        .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["live_pool"], "green");
    assert_eq!(doc["generation"], 3);
    assert_eq!(body_of(&proxy).await, "green");

    // Switching to the live pool changes nothing.
    let (status, doc) = switch(&proxy, "green").await;
    assert_eq!(status, 200);
    assert_eq!(doc["generation"], 3);
    assert_eq!(doc["previous_pool"], "blue");
}

#[tokio::test]
async fn unknown_pools_and_missing_previous_pools_are_refused() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let (status, doc) = proxy.admin("POST", "/v1/rollback", None).await;
    assert_eq!(status, 409);
    assert_eq!(doc["error"]["code"], "no_previous_pool");

    let (status, doc) = switch(&proxy, "purple").await;
    assert_eq!(status, 404);
    assert_eq!(doc["error"]["code"], "unknown_pool");
    assert!(
        doc["error"]["message"].as_str().unwrap().contains("purple"),
        "{doc}"
    );
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["live_pool"], "blue");
    assert_eq!(doc["generation"], 0);
}

#[tokio::test]
async fn a_switch_to_a_pool_that_fails_its_probe_is_refused_unless_forced() {
    let blue = Upstream::named("blue").await;
    let dead = dead_addr().await;
    let proxy = Proxy::start(&[blue.addr], &[dead]).await;

    let (status, doc) = switch(&proxy, "green").await;
    assert_eq!(status, 409, "{doc}");
    assert_eq!(doc["error"]["code"], "pool_unhealthy");
    let details = doc["error"]["details"].as_array().unwrap();
    assert_eq!(details.len(), 1);
    assert!(
        details[0].as_str().unwrap().starts_with(&dead.to_string()),
        "{doc}"
    );
    let (_, status_doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(status_doc["live_pool"], "blue");
    assert_eq!(status_doc["generation"], 0);
    let upstream = &status_doc["pools"]["green"]["upstreams"][0];
    assert!(upstream["last_error"].is_string(), "{status_doc}");
    assert!(upstream["last_check"].is_string(), "{status_doc}");
    assert_eq!(body_of(&proxy).await, "blue");

    let (status, doc) = proxy
        .admin(
            "POST",
            "/v1/switch",
            Some(r#"{"to": "green", "force": true}"#),
        )
        .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["live_pool"], "green");

    // Rolling back probes blue, which is up.
    let (status, doc) = proxy.admin("POST", "/v1/rollback", None).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["live_pool"], "blue");
    // And rolling forward again to the dead pool needs force.
    let (status, doc) = proxy.admin("POST", "/v1/rollback", None).await;
    assert_eq!(status, 409, "{doc}");
    assert_eq!(doc["error"]["code"], "pool_unhealthy");
    let (status, _) = proxy
        .admin("POST", "/v1/rollback", Some(r#"{"force": true}"#))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_switch_probes_the_health_path_of_each_upstream() {
    let blue = Upstream::named("blue").await;
    let sick = Upstream::start(|request| async move {
        let mut response = text("sick");
        if request.uri().path() == "/health" {
            *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        response
    })
    .await;
    let well = Upstream::named("green").await;
    // Background checks run once at startup, then not for an hour: the
    // probes counted after that are the switch's own.
    let text = config_text(
        &[blue.addr],
        &[sick.addr, well.addr],
        "[health]\ninterval = \"1h\"\n",
    );
    let proxy = Proxy::with_config(&text).await;
    eventually("the startup probes ran", || {
        sick.probes() == 1 && well.probes() == 1
    })
    .await;
    // One upstream passing is enough.
    let (status, doc) = switch(&proxy, "green").await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!((sick.probes(), well.probes()), (2, 2));
    let upstreams = &doc["pools"]["green"]["upstreams"];
    assert_eq!(upstreams[0]["consecutive_failures"], 2, "{doc}");
    assert!(
        upstreams[0]["last_error"].as_str().unwrap().contains("503"),
        "{doc}"
    );
    assert_eq!(upstreams[1]["last_error"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_request_in_flight_on_the_old_pool_completes_after_a_switch() {
    let blue = Upstream::start(|request| async move {
        if request.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(800)).await;
            return text("blue, slowly");
        }
        text("blue")
    })
    .await;
    let green = Upstream::named("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr]).await;
    let url = proxy.url("/slow");
    let slow = tokio::spawn(async move { get(&url).await });
    eventually("the slow request reached blue", || blue.hits() == 1).await;

    let (status, _) = switch(&proxy, "green").await;
    assert_eq!(status, 200);
    assert_eq!(body_of(&proxy).await, "green");
    let (status, _, body) = within(slow).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "blue, slowly"));
}

/// One request on an already-open keep-alive connection.
struct Observation {
    started: Instant,
    finished: Instant,
    color: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_under_load_fails_nothing_and_is_seen_by_the_next_request() {
    const CLIENTS: usize = 8;
    const FLIPS: usize = 40;
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr]).await;

    let running = Arc::new(AtomicBool::new(true));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let (running, failures) = (running.clone(), failures.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while running.load(Ordering::Relaxed) {
                let request = Request::get("/")
                    .header("host", "app.test")
                    .body(full(""))
                    .unwrap();
                let started = Instant::now();
                let outcome = async {
                    sender.ready().await.map_err(|e| e.to_string())?;
                    let response = sender
                        .send_request(request)
                        .await
                        .map_err(|e| e.to_string())?;
                    let status = response.status();
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| e.to_string())?
                        .to_bytes();
                    let body = String::from_utf8_lossy(&body).into_owned();
                    if status == 200 {
                        Ok(body)
                    } else {
                        Err(format!("{status}: {body}"))
                    }
                };
                match outcome.await {
                    Ok(color) => seen.push(Observation {
                        started,
                        finished: Instant::now(),
                        color,
                    }),
                    Err(error) => {
                        failures.lock().unwrap().push(error);
                        // A broken connection ends this client.
                        return seen;
                    }
                }
            }
            seen
        }));
    }

    // Flip back and forth, recording when each flip had returned.
    let mut flips = Vec::new();
    for i in 0..FLIPS {
        let to = if i % 2 == 0 { "green" } else { "blue" };
        let called = Instant::now();
        let (status, doc) = switch(&proxy, to).await;
        assert_eq!(status, 200, "{doc}");
        flips.push((called, Instant::now(), to));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    running.store(false, Ordering::Relaxed);
    let mut observations = Vec::new();
    for client in clients {
        observations.extend(within(client).await.unwrap());
    }

    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        observations.len() > FLIPS * 2,
        "too little load to judge: {} requests",
        observations.len()
    );
    // A request that started after flip i returned went to flip i's pool,
    // or to that of a later flip already called before it finished (a slow
    // request may reach the proxy after the next flip); never to an older one.
    let mut judged = 0;
    for (i, (_, returned, to)) in flips.iter().enumerate() {
        let next_called = flips.get(i + 1).map(|(called, _, _)| *called);
        for o in &observations {
            if o.started < *returned || next_called.is_some_and(|next| o.started >= next) {
                continue;
            }
            let allowed: Vec<&str> = flips[i..]
                .iter()
                .filter(|(called, _, _)| *called < o.finished)
                .map(|(_, _, color)| *color)
                .collect();
            assert!(
                allowed.contains(&o.color.as_str()),
                "a request after flip {i} (to {to}) went to {}",
                o.color
            );
            if allowed.iter().all(|c| c == to) {
                judged += 1;
            }
        }
    }
    assert!(
        judged > FLIPS,
        "only {judged} requests fell cleanly between flips"
    );
}
