//! The maintenance gate, driven through the real admin socket: what gated
//! clients get, who still gets through, and that the upstream never sees a
//! gated request.

use http::Request;

use crate::support::*;

fn gate_on(message: &str, retry_after: &str) -> String {
    format!(r#"{{"enabled": true, "message": "{message}", "retry_after": "{retry_after}"}}"#)
}

#[tokio::test]
async fn gated_requests_get_503_with_retry_after_and_never_reach_the_upstream() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr]).await;

    let (status, doc) = proxy
        .admin(
            "PUT",
            "/v1/maintenance",
            Some(&gate_on("Back at 10:00", "10m")),
        )
        .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["maintenance"]["enabled"], true);
    assert_eq!(doc["maintenance"]["message"], "Back at 10:00");
    assert_eq!(doc["maintenance"]["retry_after_s"], 600);
    assert!(doc["maintenance"]["since"].is_string(), "{doc}");
    assert_eq!(doc["generation"], 1);

    // The call has returned: the very next request is gated.
    let (status, headers, body) = get(&proxy.url("/orders/42")).await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "600");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body, serde_json::json!({"message": "Back at 10:00"}));
    assert_eq!(blue.hits(), 0, "a gated request reached the upstream");

    let (status, doc) = proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": false}"#))
        .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["maintenance"]["enabled"], false);
    assert_eq!(doc["maintenance"]["since"], serde_json::Value::Null);
    assert_eq!(doc["generation"], 2);
    let (status, _, body) = get(&proxy.url("/orders/42")).await;
    assert_eq!((status, body.as_str()), (200, "blue"));
}

#[tokio::test]
async fn gate_on_without_text_uses_the_config_defaults() {
    let blue = Upstream::named("blue").await;
    let text = config_text(
        &[blue.addr],
        &[blue.addr],
        "[maintenance]\nmessage = \"Migrating, hang on\"\nretry_after = \"90s\"\n",
    );
    let proxy = Proxy::with_config(&text).await;
    let (status, doc) = proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    assert_eq!(status, 200, "{doc}");
    let (status, headers, body) = get(&proxy.url("/")).await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "90");
    assert_eq!(body, r#"{"message":"Migrating, hang on"}"#);
}

#[tokio::test]
async fn browsers_get_the_html_page_and_curl_gets_json() {
    let blue = Upstream::named("blue").await;
    let dir = TempDir::new();
    dir.write(
        "down.html",
        "<!doctype html><title>Down</title><p>Back soon</p>",
    );
    dir.write(
        "switchyard.toml",
        &config_text(
            &[blue.addr],
            &[blue.addr],
            "[maintenance]\nhtml_page = \"down.html\"\n",
        ),
    );
    let proxy = Proxy::in_dir(dir).await;
    proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;

    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let request = Request::get(proxy.url("/"))
        .header("accept", browser)
        .body(full(""))
        .unwrap();
    let (status, headers, body) = send(request).await;
    assert_eq!(status, 503);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(headers.contains_key("retry-after"));
    assert!(body.contains("Back soon"), "{body}");

    for accept in ["*/*", "application/json", "text/html, application/json"] {
        let request = Request::get(proxy.url("/"))
            .header("accept", accept)
            .body(full(""))
            .unwrap();
        let (status, headers, _) = send(request).await;
        assert_eq!(status, 503);
        assert_eq!(headers["content-type"], "application/json", "{accept}");
    }
    assert_eq!(blue.hits(), 0);
}

/// A browser's `Accept`.
const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// The gate's page as a browser gets it.
async fn page_for_a_browser(proxy: &Proxy) -> String {
    let request = Request::get(proxy.url("/"))
        .header("accept", BROWSER)
        .body(full(""))
        .unwrap();
    let (status, headers, body) = send(request).await;
    assert_eq!(status, 503);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    body
}

#[tokio::test]
async fn the_configured_page_shows_what_the_operator_said_escaped() {
    let blue = Upstream::named("blue").await;
    let dir = TempDir::new();
    dir.write(
        "down.html",
        "<p>{{message}}</p><p>back {{ until }}, retry in {{retry_after}} ({{retry_after_s}} s)</p><p>{{window}}</p><script>var t = {{other}};</script>",
    );
    dir.write(
        "switchyard.toml",
        &config_text(
            &[blue.addr],
            &[blue.addr],
            "[maintenance]\nhtml_page = \"down.html\"\n",
        ),
    );
    let proxy = Proxy::in_dir(dir).await;
    let (status, doc) = proxy
        .admin(
            "PUT",
            "/v1/maintenance",
            Some(r#"{"enabled": true, "message": "Back by 10:30 <script>alert(1)</script>", "retry_after": "10m", "until": "2099-01-01T10:30:00Z"}"#),
        )
        .await;
    assert_eq!(status, 200, "{doc}");
    let page = page_for_a_browser(&proxy).await;
    assert_eq!(
        page,
        "<p>Back by 10:30 &lt;script&gt;alert(1)&lt;/script&gt;</p><p>back 2099-01-01T10:30:00Z, retry in 7days (604800 s)</p><p></p><script>var t = {{other}};</script>",
        "with an end, the time left, at most a week as in Retry-After"
    );

    // A window's page names the window.
    proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": false}"#))
        .await;
    let (status, doc) = proxy
        .admin(
            "POST",
            "/v1/maintenance/windows",
            Some(r#"{"starts_at": "2020-01-01T00:00:00Z", "ends_at": "2099-01-01T00:00:00Z", "message": "Planned"}"#),
        )
        .await;
    assert_eq!(status, 201, "{doc}");
    let page = page_for_a_browser(&proxy).await;
    assert!(page.contains("<p>Planned</p>"), "{page}");
    assert!(page.contains("to 2099-01-01T00:00:00Z</p>"), "{page}");
}

#[tokio::test]
async fn a_configured_page_counts_down_with_retry_after_to_the_gate_s_end() {
    let blue = Upstream::named("blue").await;
    let dir = TempDir::new();
    dir.write("down.html", "<p>back in {{retry_after_s}} s</p>");
    dir.write(
        "switchyard.toml",
        &config_text(
            &[blue.addr],
            &[blue.addr],
            "[maintenance]\nhtml_page = \"down.html\"\nretry_after = \"10m\"\n",
        ),
    );
    let proxy = Proxy::in_dir(dir).await;
    let body = format!(r#"{{"enabled": true, "until": "{}"}}"#, rfc3339_in(120));
    let (status, doc) = proxy.admin("PUT", "/v1/maintenance", Some(&body)).await;
    assert_eq!(status, 200, "{doc}");
    // The page and the header say the same, and both count down.
    let page_and_header = || async {
        let request = Request::get(proxy.url("/"))
            .header("accept", BROWSER)
            .body(full(""))
            .unwrap();
        let (status, headers, page) = send(request).await;
        assert_eq!(status, 503);
        let left: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        (page, left)
    };
    let (page, left) = page_and_header().await;
    assert!((100..=120).contains(&left), "{left}");
    assert_eq!(page, format!("<p>back in {left} s</p>"));
    until("the page counts down", || async {
        let (page, now_left) = page_and_header().await;
        assert_eq!(page, format!("<p>back in {now_left} s</p>"));
        now_left < left
    })
    .await;
}

#[tokio::test]
async fn without_a_page_browsers_get_a_plain_built_in_one_and_api_clients_json() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    proxy
        .admin(
            "PUT",
            "/v1/maintenance",
            Some(r#"{"enabled": true, "message": "Back by 10:30 & not before"}"#),
        )
        .await;
    let page = page_for_a_browser(&proxy).await;
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(page.contains("<html lang=\"en\">"));
    assert!(page.contains("<h1>Down for maintenance</h1>"));
    assert!(page.contains("Back by 10:30 &amp; not before"), "{page}");
    let (status, headers, body) = get(&proxy.url("/")).await;
    assert_eq!(status, 503);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, r#"{"message":"Back by 10:30 & not before"}"#);
}

#[tokio::test]
async fn allow_paths_reach_the_live_pool_by_whole_segments() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    // The default allow_paths are /health and /status.
    for path in ["/health", "/health/", "/health/db", "/status?verbose=1"] {
        let (status, _, body) = get(&proxy.url(path)).await;
        assert_eq!((status, body.as_str()), (200, "blue"), "{path}");
    }
    for path in ["/healthz", "/", "/statusboard", "/health/../admin"] {
        let (status, _, _) = get(&proxy.url(path)).await;
        assert_eq!(status, 503, "{path}");
    }
    assert_eq!(blue.hits(), 4);
}

#[tokio::test]
async fn bypass_cidrs_reach_the_live_pool() {
    let blue = Upstream::named("blue").await;
    let text = config_text(
        &[blue.addr],
        &[blue.addr],
        "[maintenance]\nbypass_cidrs = [\"127.0.0.0/8\"]\n",
    );
    let proxy = Proxy::with_config(&text).await;
    proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    let (status, _, body) = get(&proxy.url("/anything")).await;
    assert_eq!((status, body.as_str()), (200, "blue"));

    // An address outside the range is gated (the test can only connect
    // from loopback, so the range is swapped by a reload).
    let text = config_text(
        &[blue.addr],
        &[blue.addr],
        "[maintenance]\nbypass_cidrs = [\"10.0.0.0/8\"]\n",
    );
    std::fs::write(&proxy.config, text).unwrap();
    let (status, doc) = proxy.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 200, "{doc}");
    let (status, _, _) = get(&proxy.url("/anything")).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn the_compat_route_flips_the_gate() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let (status, body) = proxy
        .admin(
            "PATCH",
            "/service-context",
            Some(r#"{"maintenance": true}"#),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"maintenance": true}));
    assert_eq!(get(&proxy.url("/")).await.0, 503);
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["maintenance"]["enabled"], true);
    assert_eq!(
        doc["maintenance"]["message"],
        "Service is undergoing maintenance"
    );

    let (status, body) = proxy
        .admin(
            "PATCH",
            "/service-context",
            Some(r#"{"maintenance": false}"#),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"maintenance": false}));
    assert_eq!(get(&proxy.url("/")).await.0, 200);
    let (status, body) = proxy.admin("GET", "/service-context", None).await;
    assert_eq!(
        (status, body),
        (200, serde_json::json!({"maintenance": false}))
    );

    // A pipeline's own message is taken; the context's other fields are
    // not switchyard's and are left alone.
    let (status, body) = proxy
        .admin(
            "PATCH",
            "/service-context",
            Some(r#"{"maintenance": true, "message": "Migrating, back by 10:30", "build": 42}"#),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"maintenance": true}));
    let (_, _, page) = get(&proxy.url("/")).await;
    assert_eq!(page, r#"{"message":"Migrating, back by 10:30"}"#);
    let (status, body) = proxy.admin("GET", "/service-context", None).await;
    assert_eq!(
        (status, body),
        (200, serde_json::json!({"maintenance": true}))
    );
}

#[tokio::test]
async fn a_call_that_changes_nothing_keeps_the_generation() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let on = gate_on("Back soon", "5m");
    let (_, doc) = proxy.admin("PUT", "/v1/maintenance", Some(&on)).await;
    assert_eq!(doc["generation"], 1);
    let since = doc["maintenance"]["since"].clone();
    let (status, doc) = proxy.admin("PUT", "/v1/maintenance", Some(&on)).await;
    assert_eq!(status, 200);
    assert_eq!(doc["generation"], 1);
    assert_eq!(doc["maintenance"]["since"], since);
    // A new message while on is a change; `since` stays.
    let (_, doc) = proxy
        .admin("PUT", "/v1/maintenance", Some(&gate_on("Later", "5m")))
        .await;
    assert_eq!(doc["generation"], 2);
    assert_eq!(doc["maintenance"]["since"], since);
    let off = r#"{"enabled": false}"#;
    let (_, doc) = proxy.admin("PUT", "/v1/maintenance", Some(off)).await;
    assert_eq!(doc["generation"], 3);
    let (_, doc) = proxy.admin("PUT", "/v1/maintenance", Some(off)).await;
    assert_eq!(doc["generation"], 3);
}

#[tokio::test]
async fn preview_passes_the_gate_unless_configured_not_to() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    for (bypass, expected) in [(true, 200), (false, 503)] {
        let text = config_text(
            &[blue.addr],
            &[green.addr],
            &format!("[preview]\nbind = \"127.0.0.1:0\"\nbypass_maintenance = {bypass}\n"),
        );
        let proxy = Proxy::with_config(&text).await;
        proxy
            .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
            .await;
        let preview = format!("http://{}/", proxy.preview.unwrap());
        let (status, _, _) = get(&preview).await;
        assert_eq!(status, expected, "bypass_maintenance = {bypass}");
        assert_eq!(get(&proxy.url("/")).await.0, 503);
    }
}

#[tokio::test]
async fn a_gate_without_its_own_text_follows_the_config_through_reloads() {
    let blue = Upstream::named("blue").await;
    let with_message = |message: &str| {
        config_text(
            &[blue.addr],
            &[blue.addr],
            &format!("[maintenance]\nmessage = \"{message}\"\nretry_after = \"1m\"\n"),
        )
    };
    let proxy = Proxy::with_config(&with_message("Down for a bit")).await;
    proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    assert_eq!(
        get(&proxy.url("/")).await.2,
        r#"{"message":"Down for a bit"}"#
    );

    std::fs::write(&proxy.config, with_message("Back at noon")).unwrap();
    let (status, doc) = proxy.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["maintenance"]["message"], "Back at noon");
    assert_eq!(doc["generation"], 1, "a reload is not a decision");
    assert_eq!(
        get(&proxy.url("/")).await.2,
        r#"{"message":"Back at noon"}"#
    );

    // A message the operator gave stays through reloads.
    let on = r#"{"enabled": true, "message": "Operator says hi"}"#;
    proxy.admin("PUT", "/v1/maintenance", Some(on)).await;
    std::fs::write(&proxy.config, with_message("Third text")).unwrap();
    proxy.admin("POST", "/v1/reload", None).await;
    let (_, headers, body) = get(&proxy.url("/")).await;
    assert_eq!(body, r#"{"message":"Operator says hi"}"#);
    assert_eq!(headers["retry-after"], "60");
}

/// `method /path` through `proxy`: the status.
async fn status_of_request(proxy: &Proxy, method: &str, path: &str) -> u16 {
    let request = Request::builder()
        .method(method)
        .uri(proxy.url(path))
        .body(full(if method == "POST" { "{}" } else { "" }))
        .unwrap();
    send(request).await.0
}

#[tokio::test]
async fn read_only_maintenance_lets_reads_through_and_holds_back_writes() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let (status, doc) = proxy
        .admin(
            "PUT",
            "/v1/maintenance",
            Some(r#"{"enabled": true, "mode": "read_only"}"#),
        )
        .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["maintenance"]["mode"], "read_only");
    for method in ["GET", "HEAD", "OPTIONS"] {
        assert_eq!(
            status_of_request(&proxy, method, "/orders").await,
            200,
            "{method}"
        );
    }
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        assert_eq!(
            status_of_request(&proxy, method, "/orders").await,
            503,
            "{method}"
        );
    }
    // allow_paths let every method through.
    assert_eq!(status_of_request(&proxy, "POST", "/health").await, 200);
    // A WebSocket upgrade is a read.
    let echo = Upstream::websocket_echo().await;
    let ws = Proxy::start(&[echo.addr], &[echo.addr]).await;
    ws.admin(
        "PUT",
        "/v1/maintenance",
        Some(r#"{"enabled": true, "mode": "read_only"}"#),
    )
    .await;
    let (mut stream, head) = open_websocket(ws.addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(websocket_echoes(&mut stream).await);
    // An unknown mode is refused; off clears the mode.
    let (status, _) = proxy
        .admin(
            "PUT",
            "/v1/maintenance",
            Some(r#"{"enabled": true, "mode": "writes"}"#),
        )
        .await;
    assert_eq!(status, 400);
    let (_, doc) = proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": false}"#))
        .await;
    assert_eq!(doc["maintenance"]["mode"], "full");
}

#[tokio::test]
async fn a_read_only_gate_survives_a_restart() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    proxy
        .admin(
            "PUT",
            "/v1/maintenance",
            Some(r#"{"enabled": true, "mode": "read_only"}"#),
        )
        .await;
    let dir = proxy.stop().await;
    let proxy = Proxy::in_dir(dir).await;
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["maintenance"]["mode"], "read_only", "{doc}");
    assert_eq!(status_of_request(&proxy, "GET", "/").await, 200);
    assert_eq!(status_of_request(&proxy, "POST", "/").await, 503);
}

#[tokio::test]
async fn a_gate_with_an_end_counts_down_and_turns_itself_off_durably() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let body = format!(r#"{{"enabled": true, "until": "{}"}}"#, rfc3339_in(3));
    let (status, doc) = proxy.admin("PUT", "/v1/maintenance", Some(&body)).await;
    assert_eq!(status, 200, "{doc}");
    assert!(doc["maintenance"]["until"].is_string(), "{doc}");
    assert_eq!(doc["generation"], 1);
    // Retry-After is the seconds left, not retry_after.
    let (status, headers, _) = get(&proxy.url("/")).await;
    assert_eq!(status, 503);
    let left: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3).contains(&left), "Retry-After {left}");
    // At the end the gate is off, by itself, as a change of its own.
    until("the gate turned itself off", || async {
        get(&proxy.url("/")).await.0 == 200
    })
    .await;
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["maintenance"]["enabled"], false, "{doc}");
    assert_eq!(doc["maintenance"]["until"], serde_json::Value::Null);
    assert_eq!(doc["generation"], 2);
    assert_eq!(doc["last_event"]["kind"], "maintenance");
    // Durably.
    let dir = proxy.stop().await;
    let proxy = Proxy::in_dir(dir).await;
    assert_eq!(get(&proxy.url("/")).await.0, 200);
}

#[tokio::test]
async fn an_end_in_the_past_is_refused_and_one_passed_while_stopped_is_applied_at_start() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let body = format!(r#"{{"enabled": true, "until": "{}"}}"#, rfc3339_in(-60));
    let (status, doc) = proxy.admin("PUT", "/v1/maintenance", Some(&body)).await;
    assert_eq!(status, 400, "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has passed"),
        "{doc}"
    );
    // On with an end, then stopped; the end passes while it is stopped
    // (the state file is moved back in time rather than the test waiting).
    let body = format!(r#"{{"enabled": true, "until": "{}"}}"#, rfc3339_in(3600));
    // Off clears the end.
    proxy.admin("PUT", "/v1/maintenance", Some(&body)).await;
    let (_, doc) = proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": false}"#))
        .await;
    assert_eq!(
        doc["maintenance"]["until"],
        serde_json::Value::Null,
        "{doc}"
    );
    proxy.admin("PUT", "/v1/maintenance", Some(&body)).await;
    let dir = proxy.stop().await;
    let path = dir.path().join("run/state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    state["maintenance"]["until"] = serde_json::Value::String(rfc3339_in(-1));
    std::fs::write(&path, state.to_string()).unwrap();
    let proxy = Proxy::in_dir(dir).await;
    // Off from the first request on, not only once a timer fired.
    assert_eq!(get(&proxy.url("/")).await.0, 200);
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["maintenance"]["enabled"], false, "{doc}");
    assert_eq!(doc["generation"], 4, "on, off, on, and the end");
}
