//! Clients that misbehave, on purpose or not, must cost nobody else
//! anything and must not get past the gate: aborted uploads and broken
//! bodies are the client's fault, never an upstream's; an h2c upgrade is
//! never passed on; a refused upgrade leaves the connection watched; an
//! upstream's keep-alive race costs no request; the proxy's own answers
//! keep a client's connection in step with its body.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// No probe runs during these tests after the first: only live traffic
/// could change an upstream's health.
const NO_PROBES: &str = "[health]\ninterval = \"1h\"\ntimeout = \"5s\"\n";

/// An upstream that reads every request body to its end before
/// answering, counting the bodies that broke on the way.
async fn reader(broken: Arc<AtomicUsize>) -> Upstream {
    Upstream::start(move |request| {
        let broken = broken.clone();
        async move {
            if request.into_body().collect().await.is_err() {
                broken.fetch_add(1, Ordering::SeqCst);
            }
            text("read")
        }
    })
    .await
}

async fn healthy(proxy: &Proxy, pool: &str) -> Vec<bool> {
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    doc["pools"][pool]["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["healthy"] == true)
        .collect()
}

/// Sends a head announcing 1 MiB, 100 KiB of it, and leaves: with a FIN,
/// or with a reset.
async fn abandon_upload(addr: std::net::SocketAddr, reset: bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1048576\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&vec![b'x'; 100 * 1024]).await.unwrap();
    // Give the proxy time to start passing the body on.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    if reset {
        // A zero linger makes the close a reset; it never blocks.
        #[allow(deprecated)]
        stream.set_linger(Some(std::time::Duration::ZERO)).unwrap();
    }
    drop(stream);
}

#[tokio::test]
async fn clients_abandoning_uploads_never_take_the_pool_down() {
    let broken = Arc::new(AtomicUsize::new(0));
    let one = reader(broken.clone()).await;
    let two = reader(broken.clone()).await;
    let proxy =
        Proxy::with_config(&config_text(&[one.addr, two.addr], &[one.addr], NO_PROBES)).await;
    for reset in [false, true, false, true, false, true] {
        abandon_upload(proxy.addr, reset).await;
    }
    // Each abandoned upload reached an upstream and broke there.
    eventually("every abandoned upload reached an upstream", || {
        broken.load(Ordering::SeqCst) == 6
    })
    .await;
    until("the aborts were answered as the clients' fault", || async {
        metric(
            &proxy,
            "switchyard_requests_total{pool=\"blue\",class=\"4xx\"}",
        )
        .await
            == 6
    })
    .await;
    assert_eq!(healthy(&proxy, "blue").await, [true, true]);
    assert_eq!(
        metric(
            &proxy,
            "switchyard_requests_total{pool=\"blue\",class=\"5xx\"}"
        )
        .await,
        0
    );
    for _ in 0..4 {
        assert_eq!(get(&proxy.url("/")).await.0, 200);
    }
}

#[tokio::test]
async fn a_body_broken_after_its_first_chunk_is_the_clients_400() {
    let broken = Arc::new(AtomicUsize::new(0));
    let upstream = reader(broken.clone()).await;
    let proxy =
        Proxy::with_config(&config_text(&[upstream.addr], &[upstream.addr], NO_PROBES)).await;
    // A malformed second chunk, then a chunk longer than its size line.
    let shapes: [&[u8]; 2] = [
        b"5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
        b"5\r\nhello\r\n3\r\nlonger than three\r\n0\r\n\r\n",
    ];
    for body in shapes {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        // The first chunk alone, so the proxy commits to the upstream.
        stream.write_all(&body[..10]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stream.write_all(&body[10..]).await.unwrap();
        let answer = read_to_close(&mut stream).await;
        assert_eq!(status_of(&answer), 400, "{answer}");
    }
    assert_eq!(healthy(&proxy, "blue").await, [true]);
    assert_eq!(get(&proxy.url("/")).await.0, 200);
}

/// A raw upstream that answers the first request of each connection and
/// closes the connection when a second one arrives on it: the race of an
/// upstream's keep-alive timeout with the proxy reusing the connection.
async fn closes_on_reuse() -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn({
        let answered = answered.clone();
        async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let answered = answered.clone();
                tokio::spawn(async move {
                    if !read_head(&mut stream).await {
                        return;
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if stream.write_all(reply).await.is_err() {
                        return;
                    }
                    // The next request, if any, finds the connection closing.
                    let _ = stream.read(&mut [0u8; 1024]).await;
                });
            }
        }
    });
    (addr, answered, task)
}

#[tokio::test]
async fn an_upstream_closing_a_reused_connection_costs_no_request_and_no_health() {
    let (addr, answered, _task) = closes_on_reuse().await;
    let proxy = Proxy::with_config(&config_text(&[addr], &[addr], NO_PROBES)).await;
    for round in 0..5 {
        // Long enough apart for the idle connection to be suspect (under
        // load, connections are reused at once and never copied).
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let (status, _, body) = get(&proxy.url("/")).await;
        assert_eq!((status, body.as_str()), (200, "ok"), "GET {round}");
    }
    assert!(answered.load(Ordering::SeqCst) >= 5);
    // A POST with a body cannot be sent twice: it fails, but the upstream
    // is not blamed for the race.
    let post = http::Request::post(proxy.url("/"))
        .body(full("payload"))
        .unwrap();
    let _ = send(post).await;
    assert_eq!(healthy(&proxy, "blue").await, [true]);
    let (status, _, _) = get(&proxy.url("/")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_h2c_upgrade_never_reaches_the_upstream() {
    // An upstream that would take the connection over to h2c if asked.
    let upstream = Upstream::start(|request| async move {
        if request.headers().contains_key("upgrade") {
            return http::Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "h2c")
                .body(full(""))
                .unwrap();
        }
        text("plain")
    })
    .await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let upgrade = b"GET /health HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    for maintenance in [false, true] {
        if maintenance {
            proxy
                .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
                .await;
        }
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(upgrade).await.unwrap();
        let answer = read_answer(&mut stream, "plain").await;
        assert_eq!(status_of(&answer), 200, "{answer}");
    }
    for seen in upstream.seen() {
        assert!(
            !seen.headers.contains_key("upgrade") && !seen.headers.contains_key("http2-settings"),
            "the upstream was asked to upgrade: {:?}",
            seen.headers
        );
    }
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn after_a_refused_upgrade_the_connection_is_still_checked_for_smuggling() {
    let upstream = Upstream::named("no upgrade here").await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let first = read_answer(&mut stream, "no upgrade here").await;
    assert_eq!(status_of(&first), 200, "{first}");
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX")
        .await
        .unwrap();
    let second = read_to_close(&mut stream).await;
    assert_eq!(status_of(&second), 400, "{second}");
    assert_eq!(upstream.hits(), 1);
}

/// Maintenance on, through the admin socket.
async fn gate_on(proxy: &Proxy) {
    let (status, _) = proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_gated_post_sent_in_two_writes_keeps_its_connection() {
    let upstream = Upstream::named("app").await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    gate_on(&proxy).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    for round in 0..3 {
        // As http.client, urllib3 and requests send it: the head, then the body.
        stream
            .write_all(b"POST /orders HTTP/1.1\r\nHost: a.example\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        stream.write_all(b"{\"item\": 42}\n").await.unwrap();
        let answer = read_answer(&mut stream, "}").await;
        assert_eq!(status_of(&answer), 503, "round {round}: {answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("connection: close"),
            "round {round}: {answer}"
        );
    }
    // The body was never read as a request: the next one is answered.
    proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": false}"#))
        .await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut stream, "app").await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn a_gated_upload_too_large_to_discard_is_answered_with_connection_close() {
    let upstream = Upstream::named("app").await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    gate_on(&proxy).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 8388608\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut stream).await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn max_discard_bytes_decides_which_gated_uploads_keep_their_connection() {
    let upstream = Upstream::named("app").await;
    let proxy = Proxy::with_config(&with_listener_keys(
        &config_text(&[upstream.addr], &[upstream.addr], ""),
        "max_discard_bytes = 16\n",
    ))
    .await;
    gate_on(&proxy).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // Within the limit: read, discarded, and the connection kept.
    stream
        .write_all(b"POST /a HTTP/1.1\r\nHost: a.example\r\nContent-Length: 16\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&[b'x'; 16]).await.unwrap();
    let answer = read_answer(&mut stream, "}").await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // One byte over, announced or chunked: answered, then closed.
    for request in [
        &b"POST /b HTTP/1.1\r\nHost: a.example\r\nContent-Length: 17\r\n\r\nxxxxxxxxxxxxxxxxx"[..],
        &b"POST /c HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n11\r\nxxxxxxxxxxxxxxxxx\r\n0\r\n\r\n"[..],
    ] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let answer = read_to_close(&mut stream).await;
        assert_eq!(status_of(&answer), 503, "{answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    }
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn allow_paths_cannot_be_walked_out_of() {
    let upstream = Upstream::named("app").await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    gate_on(&proxy).await;
    for target in [
        "/health/..;/secret",
        "/health/.;x/../secret",
        "/health/..%5csecret",
        "/health/..\\secret",
        "/health/%2e%2e/secret",
        "/health/%2E%2e;/secret",
        "/health/x%2F..%2F..%2Fsecret",
        "/health;x/../secret",
        "/health/./../secret",
        "/status/%2e./secret",
        "/health%00/../secret",
        "/health/..%3b/secret",
        "/health/%252e%252e/secret",
        "/health/%c0%ae%c0%ae/secret",
        "/health/..%20/secret",
    ] {
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n");
        let answer = raw(proxy.addr, request.as_bytes()).await;
        let status = status_of(&answer);
        assert!(status == 400 || status == 503, "{target}: {answer}");
    }
    assert_eq!(upstream.hits(), 0, "reached the app: {:?}", upstream.seen());
    // What the gate lets through, the app reads the same way.
    let answer = raw(
        proxy.addr,
        b"GET /health/./db/../live?x=1 HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(upstream.seen()[0].target, "/health/live?x=1");
}

#[tokio::test]
async fn odd_heads_are_normalized_or_refused_before_the_upstream() {
    let upstream = Upstream::named("app").await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    // A Host with userinfo: servers disagree on which host it names.
    let answer = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert_eq!(upstream.hits(), 0);

    // A length with leading zeros goes on as the length hyper read.
    let answer = raw(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 0005\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(upstream.seen()[0].headers["content-length"], "5");

    // Headers that make an application read another URL or method do not
    // reach it, on an allowed path during maintenance least of all.
    gate_on(&proxy).await;
    let answer = raw(
        proxy.addr,
        b"GET /health HTTP/1.1\r\nHost: a.example\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX-HTTP-Method-Override: DELETE\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = &upstream.seen()[1].headers;
    for name in ["x-original-url", "x-rewrite-url", "x-http-method-override"] {
        assert!(!seen.contains_key(name), "{name} reached the upstream");
    }
}

#[tokio::test]
async fn an_http2_client_resetting_its_streams_gets_goaway() {
    let started = Arc::new(AtomicUsize::new(0));
    let upstream = Upstream::start({
        let started = started.clone();
        move |_| {
            started.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                text("slow")
            }
        }
    })
    .await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let (mut client, connection) = h2_connect(proxy.addr).await;
    // Batches of streams, each reset once the proxy has started on it (a
    // stream reset before that is refused by the HTTP/2 library itself).
    let mut opened = 0;
    'attack: for batch in 0..40 {
        let mut streams = Vec::new();
        for i in 0..50 {
            let request = http::Request::get(format!("http://a.example/work/{batch}/{i}"))
                .body(())
                .unwrap();
            let Ok((_, stream)) = client.send_request(request, true) else {
                break 'attack;
            };
            streams.push(stream);
            opened += 1;
            client = match within(client.ready()).await {
                Ok(client) => client,
                Err(_) => break 'attack,
            };
        }
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        for mut stream in streams {
            stream.send_reset(h2::Reason::CANCEL);
        }
    }
    // The proxy ends the connection: the client's driver finishes.
    within(connection).await.unwrap().ok();
    assert!(opened < 2000, "all {opened} streams were accepted");
    until("the abuse is counted", || async {
        metric(&proxy, "switchyard_abusive_connections_total").await == 1
    })
    .await;
    assert!(metric(&proxy, "switchyard_client_resets_total").await >= 100);
    // Others are served as before.
    assert_eq!(get(&proxy.url("/")).await.0, 200);
    assert!(
        started.load(Ordering::SeqCst) < 400,
        "{} upstream requests for reset streams",
        started.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn the_http2_stream_and_reset_limits_are_the_configured_ones() {
    let upstream = Upstream::start(|_| async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        text("slow")
    })
    .await;
    let proxy = Proxy::with_config(&with_listener_keys(
        &config_text(&[upstream.addr], &[upstream.addr], ""),
        "http2_max_streams = 3\nhttp2_max_resets = 10\n",
    ))
    .await;
    let (mut client, connection) = h2_connect(proxy.addr).await;
    // Once the proxy's SETTINGS have arrived (an answer has), the client
    // knows how many streams it may open.
    let request = http::Request::get("http://a.example/").body(()).unwrap();
    let (answer, _) = client.send_request(request, true).unwrap();
    assert_eq!(within(answer).await.unwrap().status(), 200);
    assert_eq!(client.current_max_send_streams(), 3);
    // Twelve resets of twelve streams: past ten, GOAWAY.
    for i in 0..12 {
        client = match within(client.ready()).await {
            Ok(client) => client,
            Err(_) => break,
        };
        let request = http::Request::get(format!("http://a.example/{i}"))
            .body(())
            .unwrap();
        let Ok((_, mut stream)) = client.send_request(request, true) else {
            break;
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        stream.send_reset(h2::Reason::CANCEL);
    }
    within(connection).await.unwrap().ok();
    until("the abuse is counted", || async {
        metric(&proxy, "switchyard_abusive_connections_total").await == 1
    })
    .await;
}

#[tokio::test]
async fn an_http2_connection_that_goes_quiet_after_its_preface_is_closed() {
    let upstream = Upstream::named("app").await;
    let proxy = Proxy::with_config(&config_text(
        &[upstream.addr],
        &[upstream.addr],
        "[timeouts]\nheader = \"1s\"\n",
    ))
    .await;
    let opened = tokio::time::Instant::now();
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // Half a header block: HEADERS without END_HEADERS, and no CONTINUATION.
    stream
        .write_all(b"\x00\x00\x01\x01\x01\x00\x00\x00\x01\x82")
        .await
        .unwrap();
    read_to_close(&mut stream).await;
    let elapsed = opened.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_millis(900),
        "closed after {elapsed:?}"
    );
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn a_client_that_does_not_read_its_answer_is_let_go_after_the_send_timeout() {
    let upstream = Upstream::start(|_| async { text(vec![b'x'; 16 * 1024 * 1024]) }).await;
    let proxy = Proxy::with_config(&config_text(
        &[upstream.addr],
        &[upstream.addr],
        "[timeouts]\nsend = \"1s\"\n",
    ))
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    // Never read: the answer stalls in the sockets.
    until("the connection is open", || async {
        metric(&proxy, "switchyard_client_connections").await == 1
    })
    .await;
    let stalled = tokio::time::Instant::now();
    until("the stalled connection is closed", || async {
        metric(&proxy, "switchyard_client_connections").await == 0
    })
    .await;
    assert!(stalled.elapsed() >= std::time::Duration::from_millis(500));
    drop(stream);
}

#[tokio::test]
async fn a_body_that_stops_midway_is_cut_off_after_the_client_body_timeout() {
    let broken = Arc::new(AtomicUsize::new(0));
    let upstream = reader(broken.clone()).await;
    let proxy = Proxy::with_config(&config_text(
        &[upstream.addr],
        &[upstream.addr],
        "[timeouts]\nclient_body = \"1s\"\n[health]\ninterval = \"1h\"\ntimeout = \"5s\"\n",
    ))
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let sent = tokio::time::Instant::now();
    // And nothing more: the upstream connection is not held for long.
    let answer = read_to_close(&mut stream).await;
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(sent.elapsed() >= std::time::Duration::from_millis(900));
    eventually("the upstream saw the body cut off", || {
        broken.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(healthy(&proxy, "blue").await, [true]);
}

/// An upstream that takes `delay` to answer, counting connections.
async fn slow(delay: std::time::Duration) -> Upstream {
    Upstream::start(move |request| async move {
        if request.uri().path() != "/health" {
            tokio::time::sleep(delay).await;
        }
        text("slow")
    })
    .await
}

#[tokio::test]
async fn connections_to_an_upstream_are_capped_and_waited_for() {
    let upstream = slow(std::time::Duration::from_millis(300)).await;
    let pools = format!(
        "[listener]\nbind = \"127.0.0.1:0\"\n[pools.blue]\nupstreams = [\"{a}\"]\nmax_connections = 1\n[pools.green]\nupstreams = [\"{a}\"]\n[health]\ninterval = \"1h\"\ntimeout = \"5s\"\n[timeouts]\nconnect = \"3s\"\n",
        a = upstream.addr
    );
    let proxy = Proxy::with_config(&pools).await;
    // Two at once on a cap of one: the second waits for the first's
    // connection to come back, and both are answered on it.
    let (a, b) = (proxy.url("/a"), proxy.url("/b"));
    let (first, second) = tokio::join!(get(&a), get(&b));
    assert_eq!((first.0, second.0), (200, 200));
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn a_full_upstream_answers_503_busy_and_stays_healthy() {
    let upstream = slow(std::time::Duration::from_secs(2)).await;
    let pools = format!(
        "[listener]\nbind = \"127.0.0.1:0\"\n[pools.blue]\nupstreams = [\"{a}\"]\nmax_connections = 2\n[pools.green]\nupstreams = [\"{a}\"]\n[health]\ninterval = \"1h\"\ntimeout = \"5s\"\n[timeouts]\nconnect = \"200ms\"\n",
        a = upstream.addr
    );
    let proxy = Proxy::with_config(&pools).await;
    let hold = |path: &'static str| {
        let url = proxy.url(path);
        tokio::spawn(async move { get(&url).await })
    };
    let (one, two) = (hold("/1"), hold("/2"));
    eventually("both slow requests reached the upstream", || {
        upstream.hits() == 2
    })
    .await;
    let (status, _, body) = get(&proxy.url("/3")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("upstream_busy"), "{body}");
    assert_eq!(upstream.hits(), 2, "a third connection was opened");
    assert_eq!(healthy(&proxy, "blue").await, [true]);
    assert_eq!(one.await.unwrap().0, 200);
    assert_eq!(two.await.unwrap().0, 200);
    assert_eq!(get(&proxy.url("/4")).await.0, 200);
}

#[tokio::test]
async fn a_refused_reload_leaves_the_connection_caps_as_they_were() {
    let upstream = slow(std::time::Duration::from_secs(1)).await;
    // Traffic goes through the preview listener, to green: a reload
    // refused for removing blue, the live pool, still names green.
    let config = |blue: bool, cap: u32, extra: &str| {
        let blue = if blue {
            format!("[pools.blue]\nupstreams = [\"{}\"]\n", upstream.addr)
        } else {
            // Valid on its own, so that only removing the live pool is wrong.
            "[state]\ninitial_pool = \"green\"\n".to_owned()
        };
        format!(
            "[listener]\nbind = \"127.0.0.1:0\"\n[preview]\nbind = \"127.0.0.1:0\"\n{blue}[pools.green]\nupstreams = [\"{a}\"]\nmax_connections = {cap}\n[health]\ninterval = \"1h\"\ntimeout = \"5s\"\n[timeouts]\nconnect = \"200ms\"\n{extra}",
            a = upstream.addr
        )
    };
    let proxy = Proxy::with_config(&config(true, 1, "")).await;
    let preview = proxy.preview.expect("the preview listener is bound");
    let busy_while_one_is_held = || async {
        let url = format!("http://{preview}/held");
        let held = tokio::spawn(async move { get(&url).await });
        let hits = upstream.hits();
        eventually("the held request reached the upstream", || {
            upstream.hits() == hits + 1
        })
        .await;
        let (status, _, body) = get(&format!("http://{preview}/second")).await;
        assert_eq!(held.await.unwrap().0, 200);
        status == 503 && body.contains("upstream_busy")
    };
    assert!(busy_while_one_is_held().await, "the cap of one holds");
    // A cap of three in a file that is invalid elsewhere, then in one that
    // removes the live pool: both refused whole.
    for refused in [config(true, 3, "send = \"soon\"\n"), config(false, 3, "")] {
        std::fs::write(&proxy.config, refused).unwrap();
        let (status, doc) = proxy.admin("POST", "/v1/reload", None).await;
        assert_eq!(status, 422, "{doc}");
        assert!(
            busy_while_one_is_held().await,
            "a refused reload moved the cap"
        );
    }
    // The same cap in a valid file takes effect.
    std::fs::write(&proxy.config, config(true, 3, "")).unwrap();
    let (status, doc) = proxy.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 200, "{doc}");
    assert!(
        !busy_while_one_is_held().await,
        "the valid reload left the cap at one"
    );
}

#[tokio::test]
async fn a_client_still_uploading_when_the_gate_answers_gets_the_answer_not_a_reset() {
    let upstream = Upstream::named("app").await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    gate_on(&proxy).await;
    for round in 0..5 {
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        // Too large to discard: the answer closes the connection while the
        // body is still coming.
        writer
            .write_all(
                b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4194304\r\n\r\n",
            )
            .await
            .unwrap();
        let sending = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..32 {
                if writer.write_all(&chunk).await.is_err() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            writer
        });
        // Read only once the client has sent what it was going to.
        let _writer = within(sending).await.unwrap();
        let mut answer = Vec::new();
        let read = within(reader.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(read.is_ok(), "round {round}: {read:?} after {answer:?}");
        assert_eq!(status_of(&answer), 503, "round {round}: {answer}");
    }
}

#[tokio::test]
async fn a_slow_but_steady_upload_is_not_the_upstreams_timeout() {
    let broken = Arc::new(AtomicUsize::new(0));
    let upstream = reader(broken.clone()).await;
    let proxy = Proxy::with_config(&config_text(
        &[upstream.addr],
        &[upstream.addr],
        "[timeouts]\nupstream = \"1s\"\nclient_body = \"1s\"\n",
    ))
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 8\r\n\r\n")
        .await
        .unwrap();
    // A byte every 400 ms: never a pause of client_body, 3 s in all, three
    // times timeouts.upstream.
    for _ in 0..8 {
        stream.write_all(b"x").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    let answer = read_answer(&mut stream, "read").await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(
        metric(
            &proxy,
            "switchyard_requests_total{pool=\"blue\",class=\"5xx\"}"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn an_upload_answered_early_does_not_hold_its_connection_for_the_next_request() {
    // An upstream that answers at once and reads the body in the
    // background, as nginx does with `return`: the connection stays busy
    // with the upload after the answer.
    let upstream = Upstream::start(|request| async move {
        let body = request.into_body();
        tokio::spawn(async move {
            let _ = body.collect().await;
        });
        text("early")
    })
    .await;
    let proxy =
        Proxy::with_config(&config_text(&[upstream.addr], &[upstream.addr], NO_PROBES)).await;
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(
        b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let answer = read_answer(&mut slow, "early").await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    // The upload goes on (slowly); another client is not held behind it.
    let started = tokio::time::Instant::now();
    let (status, _, body) = get(&proxy.url("/next")).await;
    assert_eq!((status, body.as_str()), (200, "early"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "waited {:?} behind another client's upload",
        started.elapsed()
    );
    drop(slow);
}

#[tokio::test]
async fn an_upstream_that_stops_reading_an_upload_times_out() {
    // Reads nothing and never answers.
    let upstream = Upstream::start(|request| async move {
        let _body = request.into_body();
        std::future::pending::<()>().await;
        text("never")
    })
    .await;
    let proxy = Proxy::with_config(&config_text(
        &[upstream.addr],
        &[upstream.addr],
        "[timeouts]\nupstream = \"1s\"\n",
    ))
    .await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let size = 64 * 1024 * 1024;
    let head =
        format!("POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: {size}\r\n\r\n");
    writer.write_all(head.as_bytes()).await.unwrap();
    // The client sends as fast as it may; the upstream's side is stuck.
    let sending = tokio::spawn(async move {
        let chunk = vec![b'x'; 256 * 1024];
        for _ in 0..size / chunk.len() {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut answer = vec![0u8; 4096];
    let n = within(reader.read(&mut answer)).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert_eq!(status_of(&answer), 504, "{answer}");
    sending.abort();
}

/// An upstream with a common bug: it answers a HEAD with a head, and a
/// moment later with a body anyway. Every other request gets `genuine`.
async fn late_body_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                loop {
                    let Ok(n @ 1..) = stream.read(&mut buf).await else {
                        return;
                    };
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = seen.drain(..end + 4).collect::<Vec<u8>>();
                        if head.starts_with(b"HEAD") {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
                                .await;
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            let _ = stream.write_all(b"INJECT").await;
                        } else {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ngenuine")
                                .await;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn bytes_an_upstream_sends_unasked_never_reach_another_client() {
    let upstream = late_body_upstream().await;
    let proxy = Proxy::with_config(&config_text(&[upstream], &[upstream], NO_PROBES)).await;
    // More spoiled idle connections than a task may poll in one turn of
    // the scheduler: each must still be looked at before it is reused.
    let heads: Vec<_> = (0..200)
        .map(|_| {
            let addr = proxy.addr;
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream
                    .write_all(b"HEAD /page HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
                read_to_close(&mut stream).await
            })
        })
        .collect();
    for head in heads {
        let answer = head.await.unwrap();
        assert_eq!(status_of(&answer), 200, "{answer}");
    }
    // The late bodies are in by now.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for _ in 0..3 {
        let (status, _, body) = get(&proxy.url("/account")).await;
        assert_eq!((status, body.as_str()), (200, "genuine"));
    }
}

#[tokio::test]
async fn a_client_that_leaves_frees_its_upstream_connection() {
    let upstream = Upstream::start(|request| async move {
        if request.uri().path() == "/slow" {
            tokio::time::sleep(std::time::Duration::from_secs(20)).await;
        }
        text("ok")
    })
    .await;
    let a = upstream.addr;
    let proxy = Proxy::with_config(&format!(
        "[listener]\nbind = \"127.0.0.1:0\"\n[pools.blue]\nupstreams = [\"{a}\"]\nmax_connections = 2\n[pools.green]\nupstreams = [\"{a}\"]\n{NO_PROBES}[timeouts]\nconnect = \"3s\"\n"
    ))
    .await;
    // Two clients ask for something slow and leave at once.
    for _ in 0..2 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        eventually("the upstream saw the slow request", || {
            upstream.seen().iter().any(|s| s.target == "/slow")
        })
        .await;
        drop(stream);
    }
    // Their upstream connections were let go with them: the next client
    // is not kept waiting behind them.
    let started = std::time::Instant::now();
    let (status, _, body) = get(&proxy.url("/fast")).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "waited {:?} for an upstream connection",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_interim_answer_during_an_upload_does_not_stop_it() {
    // Sends 103 Early Hints as soon as it has the head, then reads the
    // whole body and says how long it was.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Health probes come first: answered and let go.
        let (mut stream, seen, end) = loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 65536];
            let end = loop {
                let n = stream.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
                if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end + 4;
                }
            };
            if seen.starts_with(b"POST") {
                break (stream, seen, end);
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
        };
        let (mut seen, mut buf) = (seen, vec![0u8; 65536]);
        stream
            .write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
            .await
            .unwrap();
        while seen.len() - end < 300_000 {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the upload stopped");
            seen.extend_from_slice(&buf[..n]);
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n{:06}",
            seen.len() - end
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
    });
    let proxy = Proxy::with_config(&config_text(&[upstream], &[upstream], NO_PROBES)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 300000\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&[b'x'; 1000]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stream.write_all(&[b'x'; 299_000]).await.unwrap();
    let answer = read_answer(&mut stream, "300000").await;
    assert_eq!(status_of_final(&answer), 200, "{answer}");
}

/// The status of the last answer in `text` (after any interim ones).
fn status_of_final(text: &str) -> u16 {
    let last = text.rfind("HTTP/1.1 ").unwrap_or(0);
    status_of(&text[last..])
}

#[tokio::test]
async fn an_http10_client_kept_alive_is_told_so_by_the_proxys_own_answers() {
    let upstream = Upstream::named("blue").await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let (code, _) = proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    assert_eq!(code, 200);
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..2 {
        stream
            .write_all(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answer(&mut stream, "}").await;
        assert_eq!(status_of(&answer), 503, "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("connection: keep-alive"),
            "{answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("\r\ndate: "),
            "{answer}"
        );
    }
}
