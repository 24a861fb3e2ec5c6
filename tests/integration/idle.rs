//! Idle HTTP/1 connections are parked (their buffers let go) and pick up
//! where they left off, without a client noticing; busy ones never are.

use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Sends a GET for `path` on `stream` and reads its answer up to `tail`.
async fn get_on(stream: &mut TcpStream, path: &str, tail: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_answer(stream, tail).await
}

/// A connection to `proxy` that has had one answer (ending in `tail`) and
/// has since been parked.
async fn parked_connection(proxy: &Proxy, tail: &str) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let first = get_on(&mut stream, "/1", tail).await;
    assert_eq!(status_of(&first), 200, "{first}");
    until("the idle connection is parked", || async {
        parked_connections(proxy).await == 1
    })
    .await;
    stream
}

#[tokio::test]
async fn a_parked_connection_serves_its_next_requests_as_before() {
    let upstream = Upstream::named("blue").await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let mut stream = parked_connection(&proxy, "blue").await;
    let second = get_on(&mut stream, "/2", "blue").await;
    assert_eq!(status_of(&second), 200, "{second}");
    assert!(
        !second.to_ascii_lowercase().contains("connection: close"),
        "{second}"
    );
    assert_eq!(
        parked_connections(&proxy).await,
        0,
        "an active connection is not parked"
    );

    // Parked again, then two requests in one write: both answered, in order.
    until("parked again", || async {
        parked_connections(&proxy).await == 1
    })
    .await;
    stream
        .write_all(b"GET /3 HTTP/1.1\r\nHost: app\r\n\r\nGET /4 HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let both = read_answer(&mut stream, "blue").await;
    let both = if both.matches("HTTP/1.1 200").count() == 2 {
        both
    } else {
        both + &read_answer(&mut stream, "blue").await
    };
    assert_eq!(both.matches("HTTP/1.1 200").count(), 2, "{both}");
    let targets: Vec<String> = upstream.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/1", "/2", "/3", "/4"]);
}

#[tokio::test]
async fn a_slow_answer_body_or_head_keeps_its_connection() {
    // Slower than the time after which an idle connection is parked.
    let slow = Duration::from_millis(2500);
    let upstream = Upstream::start(move |request| async move {
        let path = request.uri().path().to_owned();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        if path == "/slow" {
            tokio::time::sleep(slow).await;
        }
        text(format!("{path} got {} bytes;", body.len()))
    })
    .await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();

    let answer = get_on(&mut stream, "/slow", "got 0 bytes;").await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    // A body that pauses halfway for longer than the parking delay.
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(slow).await;
    stream.write_all(b"world").await.unwrap();
    let answer = read_answer(&mut stream, "got 10 bytes;").await;
    assert_eq!(status_of(&answer), 200, "{answer}");

    // A head that pauses halfway: the header timeout (10 s) is the
    // only clock on it.
    stream
        .write_all(b"GET /after HTTP/1.1\r\nHost: app\r\n")
        .await
        .unwrap();
    tokio::time::sleep(slow).await;
    stream.write_all(b"\r\n").await.unwrap();
    let after = read_answer(&mut stream, "got 0 bytes;").await;
    assert_eq!(status_of(&after), 200, "{after}");
}

#[tokio::test]
async fn a_body_still_arriving_after_its_answer_is_not_mistaken_for_a_request() {
    let upstream = Upstream::named("blue").await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let (status, _) = proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    assert_eq!(status, 200);
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // The gate answers before the body is complete: a body too large to
    // discard is not waited for.
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 2000000\r\n\r\nhello")
        .await
        .unwrap();
    let gated = read_answer(&mut stream, "}").await;
    assert_eq!(status_of(&gated), 503, "{gated}");
    // Longer than the parking delay; the rest of the body is still owed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stream
        .write_all(b"worldGET /next HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = within(async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&rest).ends_with('}') {
                break;
            }
        }
    })
    .await;
    let rest = String::from_utf8_lossy(&rest);
    // Either the next request is gated too, or the connection is closed;
    // the tail of the body is never read as a request head.
    assert!(
        rest.is_empty() || status_of(&rest) == 503,
        "the body's tail was parsed as a request: {rest}"
    );
}

#[tokio::test]
async fn a_parked_connection_is_closed_after_the_header_timeout() {
    let upstream = Upstream::named("blue").await;
    let extra = "[timeouts]\nheader = \"3s\"\n";
    let proxy = Proxy::with_config(&config_text(&[upstream.addr], &[upstream.addr], extra)).await;
    let mut stream = parked_connection(&proxy, "blue").await;
    assert_eq!(metric(&proxy, "switchyard_client_connections").await, 1);
    let mut rest = Vec::new();
    let read = within(stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(0)) && rest.is_empty(),
        "closed without a word: {read:?} {rest:?}"
    );
    until("the closed connection is no longer counted", || async {
        parked_connections(&proxy).await == 0
            && metric(&proxy, "switchyard_client_connections").await == 0
    })
    .await;
}

#[tokio::test]
async fn stopping_closes_parked_connections_at_once() {
    let upstream = Upstream::named("blue").await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let mut stream = parked_connection(&proxy, "blue").await;
    // `stop` waits for the server, within the test deadline.
    let _dir = proxy.stop().await;
    let mut rest = Vec::new();
    let read = within(stream.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(0)), "{read:?} {rest:?}");
}

#[tokio::test]
async fn a_parked_connection_can_still_upgrade() {
    let upstream = Upstream::websocket_echo().await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let mut stream = parked_connection(&proxy, "websocket echo").await;
    let head = ask_for_websocket(&mut stream).await;
    assert_eq!(status_of(&head), 101, "{head}");
    assert!(websocket_echoes(&mut stream).await);
}
