//! Upstreams that are down, slow, or answer malformed HTTP.

use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;

use crate::support::*;

fn error_code(body: &str) -> String {
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    json["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_owned()
}

#[tokio::test]
async fn unreachable_upstream_answers_502_as_json() {
    let dead = dead_addr().await;
    let proxy = Proxy::start(&[dead], &[dead]).await;
    let (status, headers, body) = get(&proxy.url("/")).await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(error_code(&body), "upstream_unreachable");
    assert!(
        !body.contains(&dead.to_string()),
        "the answer leaks the upstream address: {body}"
    );
}

#[tokio::test]
async fn connect_failure_is_retried_once_on_another_upstream() {
    let dead = dead_addr().await;
    let alive = Upstream::start(|request| async move {
        let body = request.into_body().collect().await.unwrap().to_bytes();
        text(format!("alive got {}", body.len()))
    })
    .await;
    let proxy = Proxy::start(&[dead, alive.addr], &[alive.addr]).await;
    // Round robin sends every other request to the dead upstream first;
    // each must still succeed, body included.
    for i in 0..6 {
        let (status, _, body) = if i % 2 == 0 {
            get(&proxy.url("/")).await
        } else {
            send(
                Request::post(proxy.url("/"))
                    .body(full(vec![7u8; 100_000]))
                    .unwrap(),
            )
            .await
        };
        assert_eq!(status, 200, "request {i}: {body}");
        let expected = if i % 2 == 0 {
            "alive got 0"
        } else {
            "alive got 100000"
        };
        assert_eq!(body, expected);
    }
    assert_eq!(alive.hits(), 6);
}

#[tokio::test]
async fn slow_upstream_answers_504() {
    let slow = Upstream::start(|_| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        text("too late")
    })
    .await;
    let config = config_text(
        &[slow.addr],
        &[slow.addr],
        "[timeouts]\nupstream = \"300ms\"\n",
    );
    let proxy = Proxy::with_config(&config).await;
    let started = std::time::Instant::now();
    let (status, _, body) = get(&proxy.url("/")).await;
    assert_eq!(status, 504);
    assert_eq!(error_code(&body), "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "504 came only after {:?}",
        started.elapsed()
    );
}

/// An upstream that answers `reply` verbatim must yield a clean 502.
async fn assert_clean_502(reply: &'static [u8]) {
    let (upstream, _task) = raw_upstream(reply).await;
    let proxy = Proxy::start(&[upstream], &[upstream]).await;
    let (status, _, body) = get(&proxy.url("/")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(error_code(&body), "bad_upstream_response");
}

#[tokio::test]
async fn upstream_response_with_both_lengths_becomes_502() {
    assert_clean_502(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn upstream_response_with_bad_chunking_becomes_502() {
    assert_clean_502(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn upstream_cut_off_mid_body_is_never_passed_off_as_complete() {
    // The head promises 100 bytes; the upstream sends 5 and closes.
    let (upstream, _task) =
        raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello").await;
    let proxy = Proxy::start(&[upstream], &[upstream]).await;
    let request = Request::get(proxy.url("/")).body(full("")).unwrap();
    let outcome = within(client().request(request)).await;
    match outcome {
        Ok(response) if response.status() == 200 => {
            let body = within(response.into_body().collect()).await;
            assert!(body.is_err(), "a truncated body was delivered as complete");
        }
        Ok(response) => assert_eq!(response.status(), 502),
        Err(error) => panic!("no answer at all: {error}"),
    }
}
