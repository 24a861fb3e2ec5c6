//! Malformed and hostile requests, sent as raw bytes. Each must get its
//! 4xx and a closed connection, and the upstream must never see it.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

/// Sends `request` raw and checks it is refused with `status`, the
/// connection closed, and nothing reached the upstream.
async fn refused(request: &[u8], status: u16) {
    let upstream = Upstream::named("upstream").await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let answer = raw(proxy.addr, request).await;
    assert_eq!(
        status_of(&answer),
        status,
        "for {:?}:\n{answer}",
        String::from_utf8_lossy(request)
    );
    assert_eq!(upstream.hits(), 0, "the upstream saw {:?}", upstream.seen());
}

#[tokio::test]
async fn missing_host_is_refused() {
    refused(b"GET / HTTP/1.1\r\n\r\n", 400).await;
}

#[tokio::test]
async fn duplicate_host_is_refused() {
    refused(
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn request_target_that_is_not_a_path_is_refused() {
    refused(b"GET ok HTTP/1.1\r\nHost: a.example\r\n\r\n", 400).await;
}

#[tokio::test]
async fn asterisk_target_is_refused_except_for_options() {
    refused(b"GET * HTTP/1.1\r\nHost: a.example\r\n\r\n", 400).await;
}

#[tokio::test]
async fn bad_chunk_size_is_refused_before_the_upstream() {
    refused(
        b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    // The classic CL.TE smuggling shape: a second request hides in the body.
    refused(
        b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.example\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_get_501() {
    // hyper would undo the chunking and let the gzip bytes through as if
    // they were the body.
    refused(
        b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        501,
    )
    .await;
}

#[tokio::test]
async fn oversized_header_block_gets_431() {
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.example\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    refused(big.as_bytes(), 431).await;
}

#[tokio::test]
async fn header_limit_is_configurable() {
    let upstream = Upstream::named("upstream").await;
    let config = with_listener_keys(
        &config_text(&[upstream.addr], &[upstream.addr], ""),
        "max_header_bytes = 2048\n",
    );
    let proxy = Proxy::with_config(&config).await;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(4096)
    );
    assert_eq!(status_of(&raw(proxy.addr, request.as_bytes()).await), 431);
    let small = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    assert_eq!(status_of(&raw(proxy.addr, small.as_bytes()).await), 200);
}

#[tokio::test]
async fn http2_host_that_disagrees_with_authority_is_refused() {
    let upstream = Upstream::named("upstream").await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    let request = http::Request::get(proxy.url("/"))
        .header("host", "other.example")
        .body(full(""))
        .unwrap();
    let response = within(client.request(request)).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn garbage_request_line_gets_400_while_another_client_is_served() {
    let upstream = Upstream::named("fine").await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    // A well-behaved client holds a keep-alive connection open meanwhile.
    let mut good = TcpStream::connect(proxy.addr).await.unwrap();
    good.write_all(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();

    let answer = raw(proxy.addr, b"\x16\x03\x01garbage\r\n\r\n").await;
    assert_eq!(status_of(&answer), 400, "{answer}");

    good.write_all(b"GET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answers = read_to_close(&mut good).await;
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 2, "{answers}");
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn a_first_head_that_arrives_in_pieces_is_read_whole() {
    // "PR" could be the start of HTTP/2's preface: the proxy reads on to
    // tell, then hands hyper everything it read, in order.
    let upstream = Upstream::named("fine").await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"PR").await.unwrap();
    // Paced, so that the two pieces arrive in two reads.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream
        .write_all(b"OPFIND /dav HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut stream).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(upstream.seen()[0].target, "/dav");
}

/// A proxy in front of `upstream` whose `timeouts.header` is `timeout`.
async fn with_header_timeout(upstream: &Upstream, timeout: &str) -> Proxy {
    let extra = format!("[timeouts]\nheader = \"{timeout}\"\n");
    Proxy::with_config(&config_text(&[upstream.addr], &[upstream.addr], &extra)).await
}

#[tokio::test]
async fn idle_and_trickling_connections_are_closed_after_the_header_timeout() {
    let upstream = Upstream::named("fine").await;
    let proxy = with_header_timeout(&upstream, "500ms").await;

    // Connects and sends nothing.
    let started = Instant::now();
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    read_to_close(&mut idle).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );

    // Trickles one byte every 100 ms: never a complete head.
    let started = Instant::now();
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for byte in head {
        if slow.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "trickling client never cut off"
        );
    }
    let rest = read_to_close(&mut slow).await;
    assert!(!rest.contains("200 OK"), "{rest}");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(upstream.hits(), 0);

    // A keep-alive connection left idle after a request is closed too.
    let mut kept = TcpStream::connect(proxy.addr).await.unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut kept).await;
    assert_eq!(status_of(&answer), 200);
}

#[tokio::test]
async fn the_first_head_is_due_a_header_timeout_after_connecting() {
    use tokio::io::AsyncReadExt;
    let upstream = Upstream::named("fine").await;
    let proxy = with_header_timeout(&upstream, "1s").await;
    // The client waits most of the timeout before its first byte, then
    // trickles the rest: its clock started when it connected.
    let connected = Instant::now();
    let (mut from_proxy, mut to_proxy) = TcpStream::connect(proxy.addr).await.unwrap().into_split();
    let trickle = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(900)).await;
        for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if to_proxy.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut rest = Vec::new();
    let _ = within(from_proxy.read_to_end(&mut rest)).await;
    let closed_after = connected.elapsed();
    trickle.abort();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    // Counted from the first byte instead, it would be about 1.9 s.
    assert!(
        closed_after < Duration::from_millis(1500),
        "closed {closed_after:?} after connecting"
    );
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn the_header_timeout_does_not_cut_a_slow_answer() {
    // The upstream takes longer than the header timeout to answer: that
    // clock is for the client's head, not for the exchange behind it.
    let upstream = Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(900)).await;
        text("slow but sure")
    })
    .await;
    let proxy = with_header_timeout(&upstream, "300ms").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    for path in ["/1", "/2"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_answer(&mut stream, "slow but sure").await;
        assert_eq!(status_of(&answer), 200, "{answer}");
    }
    // Then, owing nothing, the connection gets the header timeout again.
    let started = Instant::now();
    let rest = read_to_close(&mut stream).await;
    assert!(rest.is_empty(), "{rest}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    refused(
        b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
        405,
    )
    .await;
}

#[tokio::test]
async fn announced_body_that_never_starts_gets_408() {
    let upstream = Upstream::named("upstream").await;
    let proxy = with_header_timeout(&upstream, "300ms").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut stream).await;
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert_eq!(upstream.hits(), 0);
}
