//! The admin API's edges: the socket's mode and lifetime, the TCP
//! listener's token, malformed calls, and the metrics.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn the_socket_is_private_and_removed_on_a_clean_stop() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let meta = std::fs::metadata(&proxy.admin).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let socket = proxy.admin.clone();
    let _dir = proxy.stop().await;
    assert!(!socket.exists(), "the socket outlived the server");
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
    let blue = Upstream::named("blue").await;
    let dir = TempDir::with_config(&config_text(&[blue.addr], &[blue.addr], ""));
    // What a crashed run leaves behind: a socket file nobody listens on.
    let stale = std::os::unix::net::UnixListener::bind(dir.path().join("run/admin.sock")).unwrap();
    drop(stale);
    let proxy = Proxy::in_dir(dir).await;
    let (status, _) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(status, 200);

    // A second server on the same config must not steal the socket.
    let second = TempDir::new();
    let text = std::fs::read_to_string(&proxy.config).unwrap().replace(
        "[pools.blue]",
        &format!(
            "[admin]\nsocket = \"{}\"\n\n[pools.blue]",
            proxy.admin.display()
        ),
    );
    second.write("switchyard.toml", &text);
    let Err((error, _second)) = Proxy::try_in_dir(second).await else {
        panic!("a second server took over a live admin socket");
    };
    assert!(error.contains("in use by a running process"), "{error}");
    let (status, _) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn malformed_calls_get_400_with_the_reason_and_change_nothing() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let cases = [
        (
            "PUT",
            "/v1/maintenance",
            "{\"enabled\": tru",
            "invalid JSON",
        ),
        (
            "PUT",
            "/v1/maintenance",
            "{\"enabled\": \"yes\"}",
            "invalid type",
        ),
        (
            "PUT",
            "/v1/maintenance",
            "{\"message\": \"x\"}",
            "missing field `enabled`",
        ),
        (
            "PUT",
            "/v1/maintenance",
            "{\"enabled\": true, \"retry_after\": \"soon\"}",
            "retry_after",
        ),
        (
            "PUT",
            "/v1/maintenance",
            "",
            "JSON request body is required",
        ),
        (
            "POST",
            "/v1/switch",
            "{\"too\": \"green\"}",
            "unknown field `too`",
        ),
        (
            "PUT",
            "/v1/maintenance",
            "{\"enabled\": true, \"message\": \"Back\\u001b[2J soon\"}",
            "message: no control characters",
        ),
        (
            "POST",
            "/v1/maintenance/windows",
            "{\"starts_at\": \"2030-01-01T00:00:00Z\", \"ends_at\": \"2030-01-01T01:00:00Z\", \"message\": \"a\\nb\"}",
            "message: no control characters",
        ),
        ("POST", "/v1/switch", "{\"to\": 5}", "invalid type"),
        ("POST", "/v1/rollback", "{\"force\": 1}", "invalid type"),
        (
            "PATCH",
            "/service-context",
            "{\"maintenance\": \"on\"}",
            "invalid type",
        ),
    ];
    for (method, path, body, reason) in cases {
        let (status, doc) = proxy.admin(method, path, Some(body)).await;
        assert_eq!(status, 400, "{method} {path} {body}: {doc}");
        assert_eq!(doc["error"]["code"], "bad_request");
        let message = doc["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(reason),
            "{method} {path} {body}: {message}"
        );
    }
    let (status, doc) = proxy.admin("GET", "/v1/nothing", None).await;
    assert_eq!(
        (status, doc["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, doc) = proxy.admin("DELETE", "/v1/switch", None).await;
    assert_eq!(
        (status, doc["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let big = format!(
        "{{\"enabled\": true, \"message\": \"{}\"}}",
        "x".repeat(100_000)
    );
    let (status, _) = proxy.admin("PUT", "/v1/maintenance", Some(&big)).await;
    assert_eq!(status, 413);
    // A length declared past the bound is refused at once, body or none.
    let mut socket = tokio::net::UnixStream::connect(&proxy.admin).await.unwrap();
    socket
        .write_all(b"PUT /v1/maintenance HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    within(socket.read_exact(&mut answer)).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413");

    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["generation"], 0);
    assert_eq!(doc["maintenance"]["enabled"], false);
    assert_eq!(get(&proxy.url("/")).await.0, 200);
}

#[tokio::test]
async fn the_tcp_listener_demands_the_bearer_token() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let dir = TempDir::new();
    dir.write("admin.token", "correct-horse-battery\n");
    dir.write(
        "switchyard.toml",
        &config_text(
            &[blue.addr],
            &[green.addr],
            "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n",
        ),
    );
    let proxy = Proxy::in_dir(dir).await;
    let addr = proxy.admin_tcp.expect("the TCP admin listener is bound");
    let call = |auth: Option<&'static str>| async move {
        let mut request = Request::post("/v1/switch").header("host", addr.to_string());
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let request = request.body(full(r#"{"to": "green"}"#)).unwrap();
        exchange(TcpStream::connect(addr).await.unwrap(), request).await
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic Y29ycmVjdA=="),
        Some("Bearer correct-horse-batter"),
    ] {
        let (status, body) = call(auth).await;
        assert_eq!(status, 401, "{auth:?}");
        assert!(body.contains("\"unauthorized\""), "{body}");
    }
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(
        doc["live_pool"], "blue",
        "an unauthorized call changed state"
    );
    assert_eq!(doc["generation"], 0);

    let (status, body) = call(Some("Bearer correct-horse-battery")).await;
    assert_eq!(status, 200, "{body}");
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["live_pool"], "green");
}

#[tokio::test]
async fn metrics_count_requests_and_decisions() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr]).await;
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/")).await.0, 200);
    }
    proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    assert_eq!(get(&proxy.url("/")).await.0, 503);
    std::fs::write(&proxy.config, "not toml [").unwrap();
    proxy.admin("POST", "/v1/reload", None).await;

    let (status, metrics) = proxy.admin("GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().expect("metrics are text").to_owned();
    for line in [
        "switchyard_requests_total{pool=\"blue\",class=\"2xx\"} 3",
        "switchyard_gated_requests_total 1",
        "switchyard_request_duration_seconds_count 4",
        "switchyard_maintenance 1",
        "switchyard_live_pool{pool=\"green\"} 1",
        "switchyard_live_pool{pool=\"blue\"} 0",
        "switchyard_generation 2",
        "switchyard_switches_total{kind=\"switch\"} 1",
        "switchyard_reloads_total{result=\"error\"} ",
        "switchyard_upstream_healthy{pool=\"green\",upstream=",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
}

/// A proxy with the TCP admin listener, its token in `admin.token`.
async fn with_tcp_admin(token: &str) -> (Proxy, std::net::SocketAddr, Upstream) {
    with_tcp_admin_and(token, "").await
}

/// As [`with_tcp_admin`], with more `[admin]` keys.
async fn with_tcp_admin_and(
    token: &str,
    admin_keys: &str,
) -> (Proxy, std::net::SocketAddr, Upstream) {
    let blue = Upstream::named("blue").await;
    let dir = TempDir::new();
    dir.write("admin.token", token);
    dir.write(
        "switchyard.toml",
        &config_text(
            &[blue.addr],
            &[blue.addr],
            &format!("[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n{admin_keys}"),
        ),
    );
    let proxy = Proxy::in_dir(dir).await;
    let addr = proxy.admin_tcp.expect("the TCP admin listener is bound");
    (proxy, addr, blue)
}

/// `GET /v1/status` over TCP with `token`: the status code.
async fn tcp_status(addr: std::net::SocketAddr, token: &str) -> u16 {
    let request = Request::get("/v1/status")
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(full(""))
        .unwrap();
    exchange(TcpStream::connect(addr).await.unwrap(), request)
        .await
        .0
}

#[tokio::test]
async fn a_rotated_token_takes_effect_at_the_next_reload() {
    let (proxy, addr, _blue) = with_tcp_admin("first-token\n").await;
    assert_eq!(tcp_status(addr, "first-token").await, 200);
    std::fs::write(proxy.dir().join("admin.token"), "second-token\n").unwrap();
    let (status, _) = proxy.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 200);
    assert_eq!(tcp_status(addr, "first-token").await, 401);
    assert_eq!(tcp_status(addr, "second-token").await, 200);
}

#[tokio::test]
async fn strangers_cannot_hold_more_than_a_few_admin_connections() {
    let (proxy, addr, _blue) = with_tcp_admin_and("the-token\n", "max_connections = 8\n").await;
    let mut strangers = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // Half a head, never finished.
        stream
            .write_all(b"GET /v1/status HTTP/1.1\r\nHo")
            .await
            .unwrap();
        strangers.push(stream);
    }
    // Those past the cap are closed at once.
    let mut closed = 0;
    for stream in &mut strangers {
        let mut buf = [0u8; 64];
        // Closed with the half head unread: an end of stream or a reset.
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(50), stream.read(&mut buf)).await;
        if matches!(read, Ok(Ok(0) | Err(_))) {
            closed += 1;
        }
    }
    assert_eq!(closed, 100 - 8, "admin.max_connections = 8");
    // The data plane and the unix socket carry on.
    assert_eq!(get(&proxy.url("/")).await.0, 200);
    assert_eq!(proxy.admin("GET", "/v1/status", None).await.0, 200);
}

#[tokio::test]
async fn only_a_json_object_is_a_request_body_and_retry_after_is_bounded() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    for body in ["[true]", "true", "\"on\"", "[\"green\"]"] {
        for (method, path) in [("PUT", "/v1/maintenance"), ("POST", "/v1/switch")] {
            let (status, doc) = proxy.admin(method, path, Some(body)).await;
            assert_eq!(status, 400, "{method} {path} {body}: {doc}");
            assert_eq!(doc["error"]["code"], "bad_request");
        }
    }
    let huge = r#"{"enabled": true, "retry_after": "1000000000y"}"#;
    let (status, doc) = proxy.admin("PUT", "/v1/maintenance", Some(huge)).await;
    assert_eq!(status, 400, "{doc}");
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["maintenance"]["enabled"], false);
    assert_eq!(doc["generation"], 0);
}

#[tokio::test]
async fn an_admin_body_that_stalls_is_refused_after_its_deadline() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::with_config(&config_text(
        &[blue.addr],
        &[blue.addr],
        "[timeouts]\nclient_body = \"1s\"\n",
    ))
    .await;
    let mut stream = tokio::net::UnixStream::connect(&proxy.admin).await.unwrap();
    let sent = tokio::time::Instant::now();
    stream
        .write_all(b"PUT /v1/maintenance HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"ena")
        .await
        .unwrap();
    let waited = std::time::Duration::from_secs(6);
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(waited, stream.read(&mut answer))
        .await
        .expect("the stalled call was held past its deadline")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(answer.contains("timeouts.client_body"), "{answer}");
    assert!(sent.elapsed() >= std::time::Duration::from_millis(900));
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["maintenance"]["enabled"], false);
}

/// One call over TCP with `token`: the status code and the body.
async fn tcp_call(
    addr: std::net::SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(full(body.to_owned()))
        .unwrap();
    exchange(TcpStream::connect(addr).await.unwrap(), request).await
}

#[tokio::test]
async fn a_read_only_token_reads_and_changes_nothing() {
    let blue = Upstream::named("blue").await;
    let dir = TempDir::new();
    dir.write("admin.token", "full-rights-token\n");
    dir.write("read.token", "read-only-token\n");
    dir.write("bypass.secret", "0123456789abcdef0123456789abcdef\n");
    dir.write(
        "switchyard.toml",
        &config_text(
            &[blue.addr],
            &[blue.addr],
            "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\nread_token_file = \"read.token\"\n\
             [maintenance]\nbypass_secret_file = \"bypass.secret\"\n",
        ),
    );
    let proxy = Proxy::in_dir(dir).await;
    let addr = proxy.admin_tcp.expect("the TCP admin listener is bound");
    let read = "read-only-token";

    for path in [
        "/v1/status",
        "/v1/maintenance/windows",
        "/metrics",
        "/service-context",
    ] {
        let (status, body) = tcp_call(addr, read, "GET", path, "").await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let changes = [
        ("PUT", "/v1/maintenance", r#"{"enabled": true}"#),
        ("POST", "/v1/switch", r#"{"to": "green", "force": true}"#),
        ("POST", "/v1/rollback", ""),
        ("POST", "/v1/reload", ""),
        ("POST", "/v1/bypass-tokens", r#"{"ttl": "1h"}"#),
        (
            "POST",
            "/v1/maintenance/windows",
            r#"{"starts_at": "2030-01-01T00:00:00Z", "ends_at": "2030-01-01T01:00:00Z"}"#,
        ),
        ("DELETE", "/v1/maintenance/windows/w1", ""),
        ("PATCH", "/service-context", r#"{"maintenance": true}"#),
        ("GET", "/v1/unknown", ""),
    ];
    for (method, path, body) in changes {
        let (status, answer) = tcp_call(addr, read, method, path, body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert!(answer.contains("\"forbidden\""), "{answer}");
    }
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["generation"], 0, "nothing changed: {doc}");
    assert_eq!(doc["maintenance"]["enabled"], false);
    assert_eq!(get(&proxy.url("/")).await.0, 200);

    // The full token keeps every right; another token has none.
    let (status, _) = tcp_call(
        addr,
        "full-rights-token",
        "POST",
        "/v1/bypass-tokens",
        r#"{"ttl": "1h"}"#,
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(tcp_status(addr, "read-only-tokenX").await, 401);

    // ctl with the read token: status works, a change says why it cannot.
    let admin = format!("http://{addr}");
    let (code, out, err) = ctl(
        &["--admin", &admin, "status"],
        &[("SWITCHYARD_TOKEN", read)],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("live pool"), "{out}");
    let (code, _, err) = ctl(
        &["--admin", &admin, "maintenance", "on"],
        &[("SWITCHYARD_TOKEN", read)],
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("forbidden") && err.contains("full admin token"),
        "{err}"
    );
}

#[tokio::test]
async fn a_read_token_equal_to_the_full_one_fails_check() {
    let dir = TempDir::new();
    dir.write("admin.token", "same\n");
    dir.write("read.token", "same");
    let config = dir.write(
        "switchyard.toml",
        &config_text(
            &["127.0.0.1:1".parse().unwrap()],
            &["127.0.0.1:2".parse().unwrap()],
            "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\nread_token_file = \"read.token\"\n",
        ),
    );
    let (code, _, err) = check(&config).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("admin.read_token_file"), "{err}");
}

#[tokio::test]
async fn the_dashboard_s_files_answer_head_with_their_length_and_no_body() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let mut stream = tokio::net::UnixStream::connect(&proxy.admin).await.unwrap();
    // HEAD, then GET on the same connection: the GET's answer must begin
    // right after the HEAD's head.
    stream
        .write_all(b"HEAD /dashboard.js HTTP/1.1\r\nHost: localhost\r\n\r\nGET /dashboard.js HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answers = Vec::new();
    within(stream.read_to_end(&mut answers)).await.unwrap();
    let answers = String::from_utf8(answers).unwrap();
    let (head_answer, rest) = answers.split_once("\r\n\r\n").unwrap();
    assert!(head_answer.starts_with("HTTP/1.1 200"), "{head_answer}");
    assert!(
        rest.starts_with("HTTP/1.1 200"),
        "a body after HEAD: {rest:.80}"
    );
    let length = |head: &str| {
        head.lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            .expect("a content-length")
    };
    let (get_head, body) = rest.split_once("\r\n\r\n").unwrap();
    assert_eq!(length(head_answer), length(get_head));
    assert_eq!(length(get_head), body.len().to_string());
}

#[tokio::test]
async fn a_client_that_never_reads_its_answers_gives_its_admin_slot_back() {
    let blue = Upstream::named("blue").await;
    let dir = TempDir::new();
    dir.write("admin.token", "full-rights-token\n");
    dir.write(
        "switchyard.toml",
        &config_text(
            &[blue.addr],
            &[blue.addr],
            "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\nmax_connections = 1\n\
             [timeouts]\nsend = \"1s\"\n",
        ),
    );
    let proxy = Proxy::in_dir(dir).await;
    let addr = proxy.admin_tcp.expect("the TCP admin listener is bound");
    // The one slot, taken by a client asking for megabytes of the
    // dashboard's files (no token needed) and reading none of them.
    let mut hog = TcpStream::connect(addr).await.unwrap();
    let ask = format!("GET /dashboard.js HTTP/1.1\r\nHost: {addr}\r\n\r\n").repeat(2000);
    within(hog.write_all(ask.as_bytes())).await.unwrap();
    // An operator gets in once the hog has been cut off.
    until("an operator's call is answered", || async {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            return false;
        };
        let call = format!(
            "GET /v1/status HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer full-rights-token\r\nConnection: close\r\n\r\n"
        );
        if stream.write_all(call.as_bytes()).await.is_err() {
            return false;
        }
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            stream.read_to_end(&mut answer),
        );
        read.await.is_ok_and(|r| r.is_ok()) && answer.starts_with(b"HTTP/1.1 200")
    })
    .await;
    drop(hog);
}
