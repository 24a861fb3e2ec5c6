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

/// An upstream that breaks RFC 9112 §9.3 on purpose: it answers a POST
/// with `400` without reading its body, keeps the connection open, and
/// then reads whatever comes next on it, the unread body first, as the
/// next request, whose answer names the line it read.
async fn upstream_that_leaves_bodies_unread() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    let answer = if line.starts_with("POST ") {
                        "HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\n\r\nbad".to_owned()
                    } else {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{line}",
                            line.len()
                        )
                    };
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_connection_that_answered_an_error_to_a_request_with_a_body_is_not_reused() {
    let upstream = upstream_that_leaves_bodies_unread().await;
    let proxy = Proxy::start(&[upstream], &[upstream]).await;
    let post = Request::post(proxy.url("/form"))
        .body(full("SMUGGLED"))
        .unwrap();
    let (status, _, body) = send(post).await;
    assert_eq!((status, body.as_str()), (400, "bad"));
    // On the same connection, the upstream would read `SMUGGLEDGET /next`
    // as this request's line.
    let (status, _, body) = get(&proxy.url("/next")).await;
    assert_eq!((status, body.as_str()), (200, "GET /next HTTP/1.1"));
}
