//! The admin API's events stream: what it says as decisions, health,
//! reloads and watch verdicts change, and the rates once a second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::support::*;

/// `GET /v1/events` on the admin socket at `socket`: the answer, its body
/// unread.
async fn ask_for_events(socket: &std::path::Path) -> http::Response<hyper::body::Incoming> {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::get("/v1/events")
        .header("host", "switchyard")
        .body(full(""))
        .unwrap();
    within(sender.send_request(request)).await.unwrap()
}

/// An events stream being read, and every event it has sent so far.
struct Events {
    body: hyper::body::Incoming,
    unread: String,
    seen: Vec<(String, Value)>,
}

impl Events {
    /// Opens `GET /v1/events` on the admin socket of `proxy`.
    async fn open(proxy: &Proxy) -> Events {
        let answer = ask_for_events(&proxy.admin).await;
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers()["content-type"], "text/event-stream");
        Events {
            body: answer.into_body(),
            unread: String::new(),
            seen: Vec::new(),
        }
    }

    /// The data of the first event named `name` that `matches`, among
    /// those sent so far or still to come.
    async fn find(&mut self, name: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let mut looked = 0;
        within(async {
            loop {
                if let Some((_, data)) = self.seen[looked..]
                    .iter()
                    .find(|(n, data)| n == name && matches(data))
                {
                    return data.clone();
                }
                looked = self.seen.len();
                self.read_more().await;
            }
        })
        .await
    }

    /// Reads the next frames of the stream.
    async fn read_more(&mut self) {
        let frame = self.body.frame().await.expect("the stream ended").unwrap();
        let Ok(data) = frame.into_data() else { return };
        self.unread.push_str(std::str::from_utf8(&data).unwrap());
        while let Some((event, rest)) = self.unread.split_once("\n\n") {
            let name = event.lines().find_map(|l| l.strip_prefix("event: "));
            let data = event.lines().find_map(|l| l.strip_prefix("data: "));
            let (Some(name), Some(data)) = (name, data) else {
                panic!("a malformed event: {event:?}");
            };
            let data = serde_json::from_str(data).expect("JSON data");
            self.seen.push((name.to_owned(), data));
            self.unread = rest.to_owned();
        }
    }
}

#[tokio::test]
async fn the_stream_tells_decisions_rates_watch_verdicts_reloads_and_health() {
    // Blue's probes fail while `sick`; green answers 500 to all but probes.
    let sick = Arc::new(AtomicBool::new(false));
    let blue = Upstream::start({
        let sick = sick.clone();
        move |request| {
            let sick = sick.load(Ordering::SeqCst);
            async move {
                let mut answer = text("blue");
                if request.uri().path() == "/health" && sick {
                    *answer.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                answer
            }
        }
    })
    .await;
    let green = Upstream::start(|request| async move {
        let mut answer = text("green");
        if request.uri().path() != "/health" {
            *answer.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        answer
    })
    .await;
    let config = config_text(
        &[blue.addr],
        &[green.addr],
        "[health]\ninterval = \"50ms\"\ntimeout = \"2s\"\n\
         [switch]\nwatch = \"30s\"\nmax_error_rate = 0.2\nmin_requests = 10\n",
    );
    let proxy = Proxy::with_config(&config).await;
    let mut events = Events::open(&proxy).await;
    let hello = events.find("hello", |_| true).await;
    assert_eq!(hello["rights"], "full");
    let status = events.find("status", |_| true).await;
    assert_eq!(status["live_pool"], "blue");

    let (code, doc) = proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(code, 200, "{doc}");
    let decision = events.find("decision", |d| d["kind"] == "switch").await;
    assert_eq!(decision["generation"], doc["generation"]);
    events.find("status", |s| s["live_pool"] == "green").await;

    // Green fails every request: the rates say so, and the watch rolls
    // the switch back.
    for _ in 0..10 {
        assert_eq!(get(&proxy.url("/")).await.0, 500);
    }
    let rates = events
        .find("rates", |r| {
            r["pools"]["green"]["errors"].as_u64() > Some(0)
        })
        .await;
    assert!(
        rates["pools"]["green"]["requests"].as_u64() >= Some(1),
        "{rates}"
    );
    assert!(rates["pools"]["blue"].is_object(), "{rates}");
    let verdict = events.find("watch", |_| true).await;
    assert_eq!(verdict["kind"], "auto_rollback", "{verdict}");
    events.find("status", |s| s["live_pool"] == "blue").await;

    let (code, _) = proxy.admin("POST", "/v1/reload", None).await;
    assert_eq!(code, 200);
    let reload = events.find("reload", |_| true).await;
    assert_eq!(reload["ok"], true, "{reload}");

    sick.store(true, Ordering::SeqCst);
    let turned = events.find("health", |h| h["pool"] == "blue").await;
    assert_eq!(turned["healthy"], false, "{turned}");
    assert_eq!(turned["upstream"], blue.addr.to_string());
}

#[tokio::test]
async fn events_streams_take_at_most_half_the_admin_slots() {
    let blue = Upstream::named("blue").await;
    let config = config_text(&[blue.addr], &[blue.addr], "[admin]\nmax_connections = 2\n");
    let proxy = Proxy::with_config(&config).await;
    let first = ask_for_events(&proxy.admin).await;
    assert_eq!(first.status(), 200);
    let (status, body) = admin_call(&proxy.admin, "GET", "/v1/events", None).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "too_many_streams");
    // Calls still get through, and a closed stream frees its place.
    let (status, _) = admin_call(&proxy.admin, "GET", "/v1/status", None).await;
    assert_eq!(status, 200);
    drop(first);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while ask_for_events(&proxy.admin).await.status() != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed stream's place never came free"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
