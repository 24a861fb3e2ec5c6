//! Bypass tokens: a signed pass through the gate, as a header, a cookie or
//! the browser path; never seen by the application; revoked with the
//! secret.

use http::Request;

use crate::support::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test\n";
const MAINTENANCE: &str = "[maintenance]\nbypass_secret_file = \"bypass.secret\"\n";

/// A proxy in front of `upstream` with a bypass secret.
async fn proxy_with_secret(upstream: &Upstream) -> Proxy {
    proxy_with_secret_and(upstream, "").await
}

/// As [`proxy_with_secret`], with more config sections.
async fn proxy_with_secret_and(upstream: &Upstream, extra: &str) -> Proxy {
    let dir = TempDir::new();
    dir.write("bypass.secret", SECRET);
    dir.write(
        "switchyard.toml",
        &config_text(
            &[upstream.addr],
            &[upstream.addr],
            &format!("{MAINTENANCE}{extra}"),
        ),
    );
    Proxy::in_dir(dir).await
}

async fn issue(proxy: &Proxy, body: &str) -> String {
    let (status, doc) = proxy.admin("POST", "/v1/bypass-tokens", Some(body)).await;
    assert_eq!(status, 201, "{doc}");
    assert!(doc["expires_at"].is_string(), "{doc}");
    doc["token"].as_str().unwrap().to_owned()
}

/// A POST to `/orders` with these headers: its status.
async fn post_with(proxy: &Proxy, headers: &[(&str, &str)]) -> u16 {
    let mut request = Request::post(proxy.url("/orders"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request.body(full("{}")).unwrap()).await.0
}

#[tokio::test]
async fn a_valid_token_passes_the_gate_and_never_reaches_the_application() {
    let blue = Upstream::named("blue").await;
    let proxy = proxy_with_secret(&blue).await;
    let token = issue(&proxy, r#"{"ttl": "1h", "label": "qa"}"#).await;
    proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;

    assert_eq!(post_with(&proxy, &[]).await, 503);
    assert_eq!(
        post_with(&proxy, &[("x-switchyard-bypass", &token)]).await,
        200
    );
    let cookie = format!("theme=dark; switchyard_bypass={token}; lang=en");
    assert_eq!(post_with(&proxy, &[("cookie", &cookie)]).await, 200);
    // What the application saw: neither the header nor that cookie.
    let seen = blue.seen();
    let last_two = &seen[seen.len() - 2..];
    assert!(!last_two[0].headers.contains_key("x-switchyard-bypass"));
    assert_eq!(last_two[1].headers["cookie"], "theme=dark; lang=en");

    // Anything but a token this secret signed meets the gate.
    let forged = format!("{}x", &token);
    for bad in [forged.as_str(), "", "1.2.3", "9999999999.cWE.AAAA"] {
        assert_eq!(
            post_with(&proxy, &[("x-switchyard-bypass", bad)]).await,
            503,
            "{bad:?}"
        );
    }
    // Gate off, the token is still removed on the way.
    proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": false}"#))
        .await;
    assert_eq!(
        post_with(
            &proxy,
            &[("x-switchyard-bypass", &token), ("cookie", &cookie)]
        )
        .await,
        200
    );
    let seen = blue.seen().pop().unwrap();
    assert!(!seen.headers.contains_key("x-switchyard-bypass"));
    assert_eq!(seen.headers["cookie"], "theme=dark; lang=en");
}

#[tokio::test]
async fn an_expired_token_or_one_under_an_old_secret_is_ignored() {
    let blue = Upstream::named("blue").await;
    let proxy = proxy_with_secret(&blue).await;
    let short = issue(&proxy, r#"{"ttl": "1s"}"#).await;
    let long = issue(&proxy, r#"{"ttl": "1h"}"#).await;
    proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    until("the short token expired", || async {
        post_with(&proxy, &[("x-switchyard-bypass", &short)]).await == 503
    })
    .await;
    assert_eq!(
        post_with(&proxy, &[("x-switchyard-bypass", &long)]).await,
        200
    );
    // A new secret revokes every token.
    std::fs::write(
        proxy.dir().join("bypass.secret"),
        "a brand new secret of enough bytes, rotated",
    )
    .unwrap();
    let (status, doc) = proxy.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(
        post_with(&proxy, &[("x-switchyard-bypass", &long)]).await,
        503
    );
}

#[tokio::test]
async fn the_browser_path_sets_the_cookie_and_is_never_forwarded() {
    let blue = Upstream::named("blue").await;
    let proxy = proxy_with_secret(&blue).await;
    let token = issue(&proxy, r#"{"ttl": "1h", "label": "qa"}"#).await;
    proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;

    let (status, headers, _) = get(&proxy.url(&format!("/.switchyard/bypass?token={token}"))).await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/");
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with(&format!("switchyard_bypass={token}; Path=/; Max-Age=")),
        "{cookie}"
    );
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    // The browser sends it back, and gets through.
    let pair = cookie.split(';').next().unwrap();
    assert_eq!(post_with(&proxy, &[("cookie", pair)]).await, 200);

    // A bad token gets no cookie.
    let (status, headers, body) = get(&proxy.url("/.switchyard/bypass?token=nope")).await;
    assert_eq!(status, 403, "{body}");
    assert!(!headers.contains_key("set-cookie"));
    assert!(body.contains("invalid_bypass_token"), "{body}");
    let (status, _, _) = get(&proxy.url("/.switchyard/bypass")).await;
    assert_eq!(status, 403);
    // Other methods, and the path spelled with dot segments, stay here too.
    assert_eq!(
        status_of(&raw(proxy.addr, b"POST /.switchyard/bypass HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await),
        405
    );
    let (status, _, _) =
        get(&proxy.url(&format!("/app/../.switchyard/bypass?token={token}"))).await;
    assert_eq!(status, 303);
    // Only the cookie-carrying POST reached the application.
    assert_eq!(blue.seen().len(), 1, "{:?}", blue.seen());
    assert!(blue
        .seen()
        .iter()
        .all(|s| !s.target.contains(".switchyard")));
}

#[tokio::test]
async fn without_a_secret_tokens_are_refused_and_a_short_secret_fails_check() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let (status, doc) = proxy
        .admin("POST", "/v1/bypass-tokens", Some(r#"{"ttl": "1h"}"#))
        .await;
    assert_eq!(status, 409, "{doc}");
    assert_eq!(doc["error"]["code"], "bypass_not_configured");
    let (status, _, body) = get(&proxy.url("/.switchyard/bypass?token=x")).await;
    assert_eq!(status, 404);
    assert!(body.contains("bypass_not_configured"), "{body}");
    assert_eq!(blue.hits(), 0, "the path is never forwarded");

    // Bad requests for a token.
    let proxy = proxy_with_secret(&blue).await;
    for body in [
        r#"{"ttl": "forever"}"#,
        r#"{"ttl": "0s"}"#,
        r#"{"ttl": "400d"}"#,
        r#"{"ttl": "1h", "label": "a\nb"}"#,
        r#"{}"#,
    ] {
        let (status, doc) = proxy.admin("POST", "/v1/bypass-tokens", Some(body)).await;
        assert_eq!(status, 400, "{body}: {doc}");
    }

    let dir = TempDir::new();
    dir.write("bypass.secret", "too short\n");
    let config = dir.write(
        "switchyard.toml",
        &config_text(&[blue.addr], &[blue.addr], MAINTENANCE),
    );
    let (code, _, err) = check(&config).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("maintenance.bypass_secret_file"), "{err}");
    assert!(err.contains("at least 32"), "{err}");
}

#[tokio::test]
async fn ctl_prints_the_token_alone() {
    let blue = Upstream::named("blue").await;
    let proxy = proxy_with_secret(&blue).await;
    let admin = proxy.admin.display().to_string();
    let (code, out, err) = ctl(
        &[
            "--admin",
            &admin,
            "bypass-token",
            "--ttl",
            "2h",
            "--label",
            "qa",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let token = out.trim_end_matches('\n');
    assert_eq!(out.lines().count(), 1, "{out}");
    proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    assert_eq!(
        post_with(&proxy, &[("x-switchyard-bypass", token)]).await,
        200
    );
}

#[tokio::test]
async fn no_spelling_of_the_browser_path_is_forwarded() {
    let blue = Upstream::named("blue").await;
    let proxy = proxy_with_secret(&blue).await;
    let token = issue(&proxy, r#"{"ttl": "1h"}"#).await;
    // Gate off: anything forwarded would reach the application. Slashes
    // merged, it is the browser path.
    for path in [
        "//.switchyard/bypass",
        "/.switchyard//bypass",
        "/.switchyard/bypass/",
    ] {
        let (status, _, body) = get(&proxy.url(&format!("{path}?token={token}"))).await;
        assert_eq!(status, 303, "{path}: {body}");
    }
    // Else it is the proxy's all the same.
    for path in [
        "/.switchyard/bypass;x",
        "/.switchyard%2Fbypass",
        "/.SWITCHYARD/bypass",
        "/.switchyard/other",
    ] {
        let (status, headers, body) = get(&proxy.url(&format!("{path}?token={token}"))).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!headers.contains_key("set-cookie"), "{path}");
    }
    assert_eq!(blue.hits(), 0, "{:?}", blue.seen());
}

#[tokio::test]
async fn a_websocket_let_through_by_a_token_closes_when_the_token_expires() {
    let echo = Upstream::websocket_echo().await;
    let proxy = proxy_with_secret_and(&echo, "[timeouts]\ndrain = \"1s\"\n").await;
    let token = issue(&proxy, r#"{"ttl": "2s"}"#).await;
    proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!(
        "GET /chat HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         X-Switchyard-Bypass: {token}\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();
    let head = read_answer(&mut stream, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(websocket_echoes(&mut stream).await);
    // No change of state comes: the token's expiry alone retires it, after
    // the drain.
    let closed = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if !websocket_echoes(&mut stream).await {
                return;
            }
        }
    };
    within(closed).await;
}
