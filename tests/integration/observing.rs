//! What operators watch: request ids from the client to the upstream and
//! back, the access log (text and JSON, reopened on SIGUSR1), JSON logs.

use std::time::Duration;

use http::Request;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

/// The access log's lines so far, once there are at least `n`.
async fn access_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    eventually("access log lines", || {
        lines = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.len() >= n
    })
    .await;
    lines
}

fn is_made_id(id: &str) -> bool {
    id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn a_sane_request_id_is_kept_and_any_other_is_replaced_both_ways() {
    // The upstream echoes an id of its own: the client still gets the one
    // the upstream was sent.
    let blue = Upstream::start(|_| async {
        let mut answer = text("blue");
        answer
            .headers_mut()
            .insert("x-request-id", "the-upstream-s-own".parse().unwrap());
        answer
    })
    .await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;

    let with_id = |id: &'static str| {
        Request::get(proxy.url("/a"))
            .header("x-request-id", id)
            .body(full(""))
            .unwrap()
    };
    let (status, headers, _) = send(with_id("order-42:retry/1")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-request-id"], "order-42:retry/1");
    assert_eq!(blue.seen()[0].headers["x-request-id"], "order-42:retry/1");

    // Spaces, quotes, or too long: replaced, upstream and client alike.
    for insane in ["two words", "quote\"d", &"x".repeat(65)] {
        let request = Request::get(proxy.url("/a"))
            .header("x-request-id", insane)
            .body(full(""))
            .unwrap();
        let (_, headers, _) = send(request).await;
        let id = headers["x-request-id"].to_str().unwrap().to_owned();
        assert!(is_made_id(&id), "{insane:?} became {id:?}");
        let seen = blue.seen().last().unwrap().headers.clone();
        assert_eq!(seen.get_all("x-request-id").iter().count(), 1);
        assert_eq!(seen["x-request-id"], id.as_str());
    }

    // None sent: each request gets its own.
    let (_, first, _) = get(&proxy.url("/a")).await;
    let (_, second, _) = get(&proxy.url("/a")).await;
    assert!(is_made_id(first["x-request-id"].to_str().unwrap()));
    assert_ne!(first["x-request-id"], second["x-request-id"]);
}

#[tokio::test]
async fn every_error_body_names_the_request_id() {
    let dead = dead_addr().await;
    let proxy = Proxy::start(&[dead], &[dead]).await;
    let (status, headers, body) = get(&proxy.url("/")).await;
    assert!(status == 502 || status == 503, "{status} {body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["error"]["request_id"],
        headers["x-request-id"].to_str().unwrap()
    );

    // A request that never parsed gets one too.
    let answer = raw(proxy.addr, b"NOT HTTP\r\n\r\n").await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    let id = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("an id")
        .to_owned();
    assert!(
        answer.contains(&format!("\"request_id\":\"{id}\"")),
        "{answer}"
    );

    // So do the answers on the proxy's own paths, over both protocols.
    let reserved = Request::get(proxy.url("/.switchyard/else"))
        .header("x-request-id", "mine-1")
        .body(full(""))
        .unwrap();
    let (status, _, body) = send(reserved).await;
    assert_eq!(status, 404);
    assert!(body.contains(r#""request_id":"mine-1""#), "{body}");
    let (mut client, _) = h2_connect(proxy.addr).await;
    let reserved = Request::get(format!("http://{}/.switchyard/else", proxy.addr))
        .header("x-request-id", "mine-2")
        .body(())
        .unwrap();
    let (answer, _) = client.send_request(reserved, true).unwrap();
    let mut body = within(answer).await.unwrap().into_body();
    let mut text = Vec::new();
    while let Some(chunk) = within(body.data()).await {
        text.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains(r#""request_id":"mine-2""#), "{text}");

    // The gate's answer carries it in its head.
    let (status, _) = proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    assert_eq!(status, 200);
    let (status, headers, _) = get(&proxy.url("/")).await;
    assert_eq!(status, 503);
    assert!(is_made_id(headers["x-request-id"].to_str().unwrap()));
}

#[tokio::test]
async fn the_access_log_has_one_json_line_per_request_with_every_field() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let config = config_text(
        &[blue.addr],
        &[green.addr],
        "[log]\nformat = \"json\"\naccess = \"access.log\"\n",
    );
    let proxy = Proxy::with_config(&config).await;
    let log = proxy.dir().join("access.log");

    let (_, headers, _) = get(&proxy.url("/orders?page=2")).await;
    let forwarded_id = headers["x-request-id"].to_str().unwrap().to_owned();

    // A POST whose head and body come in two writes, as client libraries
    // send them.
    let head = "POST /upload HTTP/1.1\r\nhost: shop\r\ncontent-length: 5\r\nx-request-id: two-writes\r\n\r\n";
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b"hello").await.unwrap();
    let answer = read_answer(&mut stream, "blue").await;
    assert_eq!(status_of(&answer), 200, "{answer}");

    proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    let (status, _, _) = get(&proxy.url("/gated")).await;
    assert_eq!(status, 503);

    let lines = access_lines(&log, 3).await;
    let entries: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let get_entry = &entries[0];
    assert_eq!(get_entry["method"], "GET");
    assert_eq!(get_entry["target"], "/orders?page=2");
    assert_eq!(get_entry["protocol"], "HTTP/1.1");
    assert_eq!(get_entry["status"], 200);
    assert_eq!(get_entry["pool"], "blue");
    assert_eq!(get_entry["upstream"], blue.addr.to_string());
    assert_eq!(get_entry["gate"], false);
    assert_eq!(get_entry["request_id"], forwarded_id.as_str());
    assert!(get_entry["client"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(get_entry["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(get_entry["bytes_out"].as_u64().unwrap() > 0);
    assert!(get_entry["time"].as_str().unwrap().ends_with('Z'));

    let post = &entries[1];
    assert_eq!(post["method"], "POST");
    assert_eq!(post["request_id"], "two-writes");
    assert_eq!(post["bytes_in"], (head.len() + 5) as u64);
    assert_eq!(post["bytes_out"], answer.len() as u64);

    let gated = &entries[2];
    assert_eq!(gated["status"], 503);
    assert_eq!(gated["gate"], true);
    assert_eq!(gated["pool"], serde_json::Value::Null);
}

#[tokio::test]
async fn the_text_access_log_reads_like_a_common_log_line() {
    let blue = Upstream::named("blue").await;
    let config = config_text(
        &[blue.addr],
        &[blue.addr],
        "[log]\naccess = \"access.log\"\n",
    );
    let proxy = Proxy::with_config(&config).await;
    let request = Request::get(proxy.url("/a?b=c"))
        .header("x-request-id", "text-1")
        .body(full(""))
        .unwrap();
    send(request).await;
    let line = access_lines(&proxy.dir().join("access.log"), 1)
        .await
        .remove(0);
    assert!(line.contains(" \"GET /a?b=c HTTP/1.1\" 200 in="), "{line}");
    assert!(
        line.contains(&format!(
            "pool=blue upstream={} gate=no id=text-1",
            blue.addr
        )),
        "{line}"
    );
}

#[tokio::test]
async fn http2_requests_are_logged_with_their_answer_s_bytes() {
    let blue = Upstream::named("blue").await;
    let config = config_text(
        &[blue.addr],
        &[blue.addr],
        "[log]\nformat = \"json\"\naccess = \"access.log\"\n",
    );
    let proxy = Proxy::with_config(&config).await;
    let (mut client, _) = h2_connect(proxy.addr).await;
    let request = Request::get(format!("http://{}/h2", proxy.addr))
        .body(())
        .unwrap();
    let (answer, _) = client.send_request(request, true).unwrap();
    let answer = within(answer).await.unwrap();
    let id = answer.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut body = answer.into_body();
    while let Some(chunk) = within(body.data()).await {
        chunk.unwrap();
    }
    let lines = access_lines(&proxy.dir().join("access.log"), 1).await;
    let entry: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(entry["protocol"], "HTTP/2.0");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["bytes_out"], 4);
    assert_eq!(entry["request_id"], id.as_str());
    assert_eq!(entry["upstream"], blue.addr.to_string());
}

#[tokio::test]
async fn a_request_whose_client_left_before_the_answer_is_logged_with_status_0() {
    let blue = Upstream::unanswering().await;
    let config = config_text(
        &[blue.addr],
        &[blue.addr],
        "[log]\nformat = \"json\"\naccess = \"access.log\"\n",
    );
    let proxy = Proxy::with_config(&config).await;

    // HTTP/2: the stream is reset once the upstream has the request.
    let (mut client, connection) = h2_connect(proxy.addr).await;
    let request = Request::get(format!("http://{}/left-h2", proxy.addr))
        .header("x-request-id", "gone-on-h2")
        .body(())
        .unwrap();
    let (answer, _) = client.send_request(request, true).unwrap();
    eventually("the upstream has the HTTP/2 request", || blue.hits() == 1).await;
    drop(answer);
    let lines = access_lines(&proxy.dir().join("access.log"), 1).await;
    let entry: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(entry["status"], 0, "{entry}");
    assert_eq!(entry["target"], "/left-h2");
    assert_eq!(entry["pool"], "blue");
    assert_eq!(entry["upstream"], blue.addr.to_string(), "{entry}");
    assert_eq!(entry["request_id"], "gone-on-h2");
    drop(client);
    connection.abort();

    // HTTP/1.1: the connection is closed instead.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"GET /left-h1 HTTP/1.1\r\nHost: x\r\nX-Request-Id: gone-on-h1\r\n\r\n")
        .await
        .unwrap();
    eventually("the upstream has the HTTP/1 request", || blue.hits() == 2).await;
    drop(tcp);
    let lines = access_lines(&proxy.dir().join("access.log"), 2).await;
    let entry: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(entry["status"], 0, "{entry}");
    assert_eq!(entry["target"], "/left-h1");
    assert_eq!(entry["pool"], "blue");
    assert_eq!(entry["upstream"], blue.addr.to_string(), "{entry}");
    assert_eq!(entry["request_id"], "gone-on-h1");
}

#[tokio::test]
async fn an_upstream_that_fails_an_http2_request_is_named_in_its_line() {
    let blue = Upstream::unanswering().await;
    let config = config_text(
        &[blue.addr],
        &[blue.addr],
        "[timeouts]\nupstream = \"100ms\"\n[log]\nformat = \"json\"\naccess = \"access.log\"\n",
    );
    let proxy = Proxy::with_config(&config).await;
    let (mut client, _) = h2_connect(proxy.addr).await;
    let request = Request::get(format!("http://{}/slow", proxy.addr))
        .body(())
        .unwrap();
    let (answer, _) = client.send_request(request, true).unwrap();
    let answer = within(answer).await.unwrap();
    assert_eq!(answer.status(), 504);
    drop(answer);
    let lines = access_lines(&proxy.dir().join("access.log"), 1).await;
    let entry: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(entry["status"], 504, "{entry}");
    assert_eq!(entry["upstream"], blue.addr.to_string(), "{entry}");
}

#[tokio::test]
async fn a_bypass_token_never_reaches_the_access_log_however_the_path_is_spelled() {
    let blue = Upstream::named("blue").await;
    let dir = TempDir::new();
    dir.write("bypass.secret", "0123456789abcdef0123456789abcdef\n");
    dir.write(
        "switchyard.toml",
        &config_text(
            &[blue.addr],
            &[blue.addr],
            "[maintenance]\nbypass_secret_file = \"bypass.secret\"\n[log]\naccess = \"access.log\"\n",
        ),
    );
    let proxy = Proxy::in_dir(dir).await;
    let (status, doc) = proxy
        .admin("POST", "/v1/bypass-tokens", Some(r#"{"ttl": "1h"}"#))
        .await;
    assert_eq!(status, 201, "{doc}");
    let token = doc["token"].as_str().unwrap().to_owned();
    let spellings = [
        "/.switchyard/bypass",
        "/.swit%63hyard/bypass",
        "/%2e%73%77%69%74%63%68%79%61%72%64/%62ypass",
        "/.%53witchyard/bypass",
    ];
    for path in spellings {
        let (status, _, _) = get(&proxy.url(&format!("{path}?token={token}"))).await;
        assert!(status == 303 || status == 404, "{path}: {status}");
    }
    let lines = access_lines(&proxy.dir().join("access.log"), spellings.len()).await;
    for line in &lines {
        assert!(!line.contains(&token), "{line}");
        assert!(line.contains("?(redacted)"), "{line}");
    }
}

#[tokio::test]
async fn sigusr1_reopens_the_access_log_and_json_logs_carry_the_audit() {
    let blue = Upstream::named("blue").await;
    let config = format!(
        "{}[admin]\nsocket = \"admin.sock\"\n[state]\nfile = \"state.json\"\n",
        config_text(
            &[blue.addr],
            &[blue.addr],
            "[log]\nformat = \"json\"\naccess = \"access.log\"\n"
        )
    );
    let served = Served::start(&config).await;
    let dir = served.config.parent().unwrap().to_owned();
    let url = format!("http://{}/", served.addr);
    get(&url).await;
    let log = dir.join("access.log");
    access_lines(&log, 1).await;

    // logrotate moves the file away, then signals.
    std::fs::rename(&log, dir.join("access.log.1")).unwrap();
    served.signal("-USR1").await;
    eventually("the access log reopened", || {
        served.logged(&["access log opened again"])
    })
    .await;
    get(&url).await;
    assert_eq!(access_lines(&log, 1).await.len(), 1);
    let rotated = std::fs::read_to_string(dir.join("access.log.1")).unwrap();
    assert_eq!(rotated.lines().count(), 1);

    // A refused change is in the audit log at info, as JSON.
    let socket = dir.join("admin.sock");
    let (status, _) = admin_call(&socket, "POST", "/v1/switch", Some(r#"{"to": "purple"}"#)).await;
    assert_eq!(status, 404);
    eventually("the refusal in the audit log", || {
        served.logged(&["\"target\":\"audit\"", "admin call refused", "purple"])
    })
    .await;
    let mut stderr_is_json = true;
    for line in served.lines() {
        stderr_is_json &= serde_json::from_str::<serde_json::Value>(&line)
            .is_ok_and(|v| v["message"].is_string() && v["level"].is_string());
    }
    assert!(stderr_is_json);
}
