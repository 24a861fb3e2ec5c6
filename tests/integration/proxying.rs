//! What well-behaved clients and upstreams see through the proxy.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Channel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn get_and_post_reach_the_live_pool() {
    let blue = Upstream::start(|request| async move {
        let method = request.method().clone();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        text(format!("blue {method} {}", String::from_utf8_lossy(&body)))
    })
    .await;
    let green = Upstream::named("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr]).await;

    let (status, _, body) = get(&proxy.url("/hello?x=1")).await;
    assert_eq!((status, body.as_str()), (200, "blue GET "));
    assert_eq!(blue.seen()[0].target, "/hello?x=1");

    let post = Request::post(proxy.url("/submit"))
        .body(full("payload"))
        .unwrap();
    let (status, _, body) = send(post).await;
    assert_eq!((status, body.as_str()), (200, "blue POST payload"));
    assert_eq!(green.hits(), 0, "green is not live and must not be hit");
}

/// 8 MiB each way, in chunks: the bytes must arrive intact and in order.
#[tokio::test]
async fn multi_mebibyte_bodies_stream_intact_both_ways() {
    const SIZE: usize = 8 * 1024 * 1024;
    let pattern = |i: usize| (i % 251) as u8;
    let upstream = Upstream::start(move |request| async move {
        if request.uri().path() == "/upload" {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let intact =
                body.len() == SIZE && body.iter().enumerate().all(|(i, b)| *b == pattern(i));
            return text(format!("{} {intact}", body.len()));
        }
        // Streamed download: 128 chunks of 64 KiB, produced as they are read.
        Response::new(chunked_body(SIZE, 64 * 1024, pattern))
    })
    .await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;

    let upload = Request::post(proxy.url("/upload"))
        .body(chunked_body(SIZE, 100_000, pattern))
        .unwrap();
    let (status, _, body) = send(upload).await;
    assert_eq!((status, body.as_str()), (200, "8388608 true"));

    let response =
        within(client().request(Request::get(proxy.url("/download")).body(full("")).unwrap()))
            .await
            .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = within(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body.len(), SIZE);
    assert!(
        body.iter().enumerate().all(|(i, b)| *b == pattern(i)),
        "download corrupted"
    );
}

/// A body of `total` bytes in `chunk`-sized frames, produced as it is read.
fn chunked_body(
    total: usize,
    chunk: usize,
    pattern: impl Fn(usize) -> u8 + Send + 'static,
) -> TestBody {
    let (mut tx, body) = Channel::<Bytes, hyper::Error>::new(2);
    tokio::spawn(async move {
        let mut offset = 0;
        while offset < total {
            let end = (offset + chunk).min(total);
            let bytes: Bytes = (offset..end).map(&pattern).collect::<Vec<u8>>().into();
            if tx.send_data(bytes).await.is_err() {
                return;
            }
            offset = end;
        }
    });
    body.boxed()
}

#[tokio::test]
async fn keep_alive_connections_are_reused_on_both_sides() {
    let upstream = Upstream::named("blue").await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    for i in 0..3 {
        let request = format!("GET /{i} HTTP/1.1\r\nHost: app\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_answer(&mut stream, "blue").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(upstream.hits(), 3);
    assert_eq!(
        upstream.connections(),
        1,
        "the upstream connection was not reused"
    );
    // Waiting for the next request, and shown as such.
    let idle = format!(
        "switchyard_upstream_idle_connections{{pool=\"blue\",upstream=\"{}\"}}",
        upstream.addr
    );
    assert_eq!(metric(&proxy, &idle).await, 1);
}

#[tokio::test]
async fn an_upstream_closing_idle_kept_alive_connections_costs_no_request() {
    // Each answer looks kept alive, but the upstream closes the connection
    // soon after, as one whose own idle timeout ran out does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = tokio::spawn({
        let closed = closed.clone();
        async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let closed = closed.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nblue";
                    let _ = stream.write_all(reply).await;
                    if String::from_utf8_lossy(&head).contains(PROBE) {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    drop(stream);
                    closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        }
    });
    let proxy = Proxy::start(&[upstream], &[upstream]).await;
    for i in 1..=5 {
        let (status, _, body) = get(&proxy.url(&format!("/{i}"))).await;
        assert_eq!((status, body.as_str()), (200, "blue"), "request {i}");
        // The proxy kept the connection; the upstream has closed it since.
        eventually("the upstream closed its connection", || {
            closed.load(std::sync::atomic::Ordering::SeqCst) == i
        })
        .await;
    }
    server.abort();
}

#[tokio::test]
async fn a_response_the_client_abandoned_does_not_leave_its_connection_for_reuse() {
    const SIZE: usize = 8 * 1024 * 1024;
    let upstream = Upstream::start(|request| async move {
        if request.uri().path() == "/big" {
            Response::new(chunked_body(SIZE, 16 * 1024, |i| (i % 251) as u8))
        } else {
            text("small")
        }
    })
    .await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = within(stream.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed before the head");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    // Gone with most of the body still on the upstream's connection.
    drop(stream);
    for _ in 0..3 {
        let (status, _, body) = get(&proxy.url("/small")).await;
        assert_eq!((status, body.as_str()), (200, "small"));
    }
    assert_eq!(
        upstream.connections(),
        2,
        "the abandoned connection was reused, or the next ones were not"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_proxied() {
    let upstream = Upstream::start(|request| async move {
        let host = request
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        text(format!("{:?} host={host}", request.version()))
    })
    .await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    let response = within(client.request(Request::get(proxy.url("/h2")).body(full("")).unwrap()))
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = within(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    // The upstream speaks HTTP/1.1 and gets :authority as Host.
    assert_eq!(body, format!("HTTP/1.1 host={}", proxy.addr));
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_both_ways() {
    let upstream = Upstream::websocket_echo().await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let (mut stream, head) = open_websocket(proxy.addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    let seen = &upstream.seen()[0];
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(
        seen.headers["sec-websocket-key"],
        "dGhlIHNhbXBsZSBub25jZQ=="
    );

    for _ in 0..2 {
        assert!(websocket_echoes(&mut stream).await);
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarded_headers_set() {
    let upstream = Upstream::start(|_| async move {
        Response::builder()
            .header("connection", "x-upstream-private")
            .header("x-upstream-private", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-app", "kept")
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let request = Request::get(proxy.url("/"))
        .header("host", "shop.example")
        .header("connection", "x-client-private")
        .header("x-client-private", "secret")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .body(full(""))
        .unwrap();
    let (status, headers, _) = send(request).await;
    assert_eq!(status, 200);
    assert!(!headers.contains_key("x-upstream-private"));
    assert!(!headers.contains_key("keep-alive"));
    assert_eq!(headers["x-app"], "kept");

    let seen = &upstream.seen()[0];
    for gone in ["x-client-private", "proxy-authorization", "te"] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the upstream"
        );
    }
    assert_eq!(seen.headers["host"], "shop.example");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "shop.example");
}

#[tokio::test]
async fn requests_are_balanced_across_upstreams() {
    let one = Upstream::named("one").await;
    let two = Upstream::named("two").await;
    let proxy = Proxy::start(&[one.addr, two.addr], &[one.addr]).await;
    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.push(get(&proxy.url("/")).await.2);
    }
    assert_eq!(one.hits(), 5, "{answers:?}");
    assert_eq!(two.hits(), 5, "{answers:?}");
}

#[tokio::test]
async fn least_in_flight_avoids_the_busy_upstream() {
    let slow = Upstream::start(|_| async move {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        text("slow")
    })
    .await;
    let fast = Upstream::named("fast").await;
    let config = config_text(&[slow.addr, fast.addr], &[fast.addr], "")
        .replace(
            "[pools.green]",
            "[pools.green]\nbalance = \"least_in_flight\"",
        )
        .replace(
            "[pools.blue]",
            "[pools.blue]\nbalance = \"least_in_flight\"",
        );
    let proxy = Proxy::with_config(&config).await;
    // Occupy whichever upstream the first request lands on, then make sure
    // the next ones avoid the slow one while it is busy.
    let first = tokio::spawn(get_owned(proxy.url("/")));
    eventually("the first request is on the slow upstream", || {
        slow.hits() == 1
    })
    .await;
    for _ in 0..4 {
        get(&proxy.url("/")).await;
    }
    assert_eq!(slow.hits(), 1, "the busy upstream got more requests");
    within(first).await.unwrap();
}

async fn get_owned(url: String) -> (u16, http::HeaderMap, String) {
    get(&url).await
}

#[tokio::test]
async fn preview_listener_routes_to_the_pool_that_is_not_live() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let config = config_text(
        &[blue.addr],
        &[green.addr],
        "[preview]\nbind = \"127.0.0.1:0\"\n",
    );
    let proxy = Proxy::with_config(&config).await;
    let preview = proxy.preview.expect("preview listener bound");
    assert_eq!(get(&format!("http://{preview}/")).await.2, "green");
    assert_eq!(get(&proxy.url("/")).await.2, "blue");
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let upstream = Upstream::start(|request| async move {
        let expect = request.headers().contains_key("expect");
        let body = request.into_body().collect().await.unwrap().to_bytes();
        text(format!(
            "{} expect-forwarded={expect}",
            String::from_utf8_lossy(&body)
        ))
    })
    .await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let interim = read_answer(&mut stream, "\r\n\r\n").await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    stream.write_all(b"hello").await.unwrap();
    let answer = read_answer(&mut stream, "expect-forwarded=false").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello expect-forwarded=false"), "{answer}");
}
