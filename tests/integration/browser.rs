//! The dashboard and the maintenance page in a real browser: Debian's
//! headless Chromium, driven over WebDriver by its `chromedriver`, against
//! the real binary. Set `SWITCHYARD_SCREENSHOTS=DIR` to keep a screenshot
//! of each page (the README's come from here).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use http::Request;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, UnixStream};

use crate::support::*;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// The token of the dashboard's full-rights tests.
const TOKEN: &str = "dashboard-full-token-0123456789";
const READ_TOKEN: &str = "dashboard-read-token-0123456789";

/// A headless Chromium session; the driver is killed on drop.
struct Browser {
    _driver: tokio::process::Child,
    base: String,
    _profile: TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session. Without
    /// Chromium installed, `None` when `SWITCHYARD_SKIP_BROWSER_TESTS` is
    /// set, and a failure otherwise (`.ci/run` installs it).
    async fn start() -> Option<Browser> {
        if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
            if std::env::var_os("SWITCHYARD_SKIP_BROWSER_TESTS").is_some() {
                eprintln!("browser test skipped: no {CHROMEDRIVER}");
                return None;
            }
            panic!("the browser tests need Debian's chromium and chromium-driver (apt-get install chromium chromium-driver), or SWITCHYARD_SKIP_BROWSER_TESTS=1");
        }
        // Under a loaded machine chromedriver now and then exits before it
        // listens: it is started again, a few times at most.
        let mut attempts = 0;
        let (driver, port) = loop {
            attempts += 1;
            let mut driver = tokio::process::Command::new(CHROMEDRIVER)
                .arg("--port=0")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start chromedriver");
            let mut lines = tokio::io::BufReader::new(driver.stdout.take().unwrap()).lines();
            let port: Option<u16> = within(async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(rest) = line.split("started successfully on port ").nth(1) {
                        return rest.trim_end_matches('.').parse().ok();
                    }
                }
                None
            })
            .await;
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            match port {
                Some(port) => break (driver, port),
                None => assert!(
                    attempts < 3,
                    "chromedriver exited before listening, {attempts} times"
                ),
            }
        };
        let profile = TempDir::new();
        let driver_url = format!("http://127.0.0.1:{port}");
        let capabilities = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,1000", format!("--user-data-dir={}", profile.path().display())],
        }}}});
        let session = call(&driver_url, "POST", "/session", Some(capabilities)).await;
        let id = session["sessionId"].as_str().expect("a session").to_owned();
        Some(Browser {
            _driver: driver,
            base: format!("{driver_url}/session/{id}"),
            _profile: profile,
        })
    }

    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        call(&self.base, method, path, body).await
    }

    async fn open(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The result of `script` run in the page.
    async fn eval(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// The text of the element `selector` finds, or null.
    async fn text(&self, selector: &str) -> Value {
        self.eval(&format!(
            "const e = document.querySelector({selector:?}); return e && !e.closest('[hidden]') ? e.textContent.trim() : null;"
        ))
        .await
    }

    /// Waits until `selector`'s text is `want`; how long that took.
    async fn wait_for_text(&self, selector: &str, want: &str) -> Duration {
        let started = tokio::time::Instant::now();
        let deadline = started + DEADLINE;
        loop {
            if self.text(selector).await == want {
                return started.elapsed();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{selector} never read {want:?}; it reads {:?}",
                self.text(selector).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn element(&self, selector: &str) -> String {
        let found = self
            .command(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": selector})),
            )
            .await;
        found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {selector}: {found}"))
            .to_owned()
    }

    /// Clicks `selector` once it is shown.
    async fn click(&self, selector: &str) {
        self.wait_until_shown(selector).await;
        let element = self.element(selector).await;
        self.command(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, selector: &str, text: &str) {
        self.wait_until_shown(selector).await;
        let element = self.element(selector).await;
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn wait_until_shown(&self, selector: &str) {
        let script = format!(
            "const e = document.querySelector({selector:?}); return !!e && !e.closest('[hidden]') && e.getClientRects().length > 0;"
        );
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while self.eval(&script).await != true {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{selector} never shown"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Saves a screenshot as `name` under `$SWITCHYARD_SCREENSHOTS`, if set.
    async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("SWITCHYARD_SCREENSHOTS") else {
            return;
        };
        self.eval("window.scrollTo(0, 0); return null;").await;
        let shot = self.command("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().expect("a screenshot"))
            .unwrap();
        std::fs::write(PathBuf::from(dir).join(name), png).unwrap();
    }
}

/// One WebDriver call; its `value`.
async fn call(base: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(full(body.map(|b| b.to_string()).unwrap_or_default()))
        .unwrap();
    // A new session starts the browser, which takes a while.
    let response = tokio::time::timeout(DEADLINE * 2, client().request(request))
        .await
        .expect("chromedriver answers")
        .expect("chromedriver answers");
    let (status, text) = status_and_text(response).await;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert!(status < 400, "{method} {path}: {status} {text}");
    value["value"].clone()
}

/// The served binary with a TCP admin listener (full and read tokens)
/// and its admin addresses.
async fn served_with_tcp_admin(blue: &Upstream, green: &Upstream) -> (Served, String, PathBuf) {
    let config = format!(
        "{}[admin]\nsocket = \"admin.sock\"\nbind = \"127.0.0.1:0\"\ntoken_file = \"token\"\nread_token_file = \"read-token\"\n[state]\nfile = \"state.json\"\n",
        config_text(&[blue.addr], &[green.addr], "")
    );
    let served =
        Served::start_with_files(&config, &[("token", TOKEN), ("read-token", READ_TOKEN)]).await;
    eventually("the admin TCP listener", || {
        served.logged(&["admin API listening on TCP"])
    })
    .await;
    let admin = served
        .logged_value("admin API listening on TCP", "addr=")
        .expect("the admin TCP address");
    let socket = served.config.parent().unwrap().join("admin.sock");
    (served, format!("http://{admin}/"), socket)
}

#[tokio::test]
async fn the_dashboard_logs_in_follows_ctl_and_switches_and_gates() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let (_served, dashboard, socket) = served_with_tcp_admin(&blue, &green).await;

    browser.open(&dashboard).await;
    browser.wait_until_shown("#login").await;
    browser.type_into("#token", "not-the-token").await;
    browser.click("#login-submit").await;
    browser
        .wait_for_text("#login-error", "That token was refused")
        .await;
    browser
        .eval("document.querySelector('#token').value = ''; return null;")
        .await;
    browser.type_into("#token", TOKEN).await;
    browser.click("#login-submit").await;
    browser.wait_for_text("#live-pool", "blue").await;
    browser.wait_for_text("#connection", "Live").await;

    // A switch made with `ctl` shows within a second.
    let switched = tokio::process::Command::new(BIN)
        .args(["ctl", "--admin"])
        .arg(&socket)
        .args(["switch", "green"])
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(switched.success());
    let shown_after = browser.wait_for_text("#live-pool", "green").await;
    assert!(
        shown_after < Duration::from_secs(1),
        "shown after {shown_after:?}"
    );
    browser.screenshot("dashboard.png").await;

    // The page's own switch, confirmed.
    browser.click("#switch-to-blue").await;
    browser.wait_until_shown("#confirm").await;
    browser.click("#confirm-yes").await;
    browser.wait_for_text("#live-pool", "blue").await;
    let (_, status) = admin_call(&socket, "GET", "/v1/status", None).await;
    assert_eq!(status["live_pool"], "blue");

    // Maintenance on, with a message.
    browser.click("#maintenance-on").await;
    browser
        .type_into("#maintenance-message-input", "Back by 10:30")
        .await;
    browser.click("#confirm-yes").await;
    browser.wait_for_text("#maintenance-state", "on").await;
    browser
        .wait_for_text("#maintenance-message", "Back by 10:30")
        .await;
    let (_, status) = admin_call(&socket, "GET", "/v1/status", None).await;
    assert_eq!(status["maintenance"]["enabled"], true);
    assert_eq!(status["maintenance"]["message"], "Back by 10:30");
    browser.screenshot("dashboard-maintenance.png").await;
}

#[tokio::test]
async fn a_read_only_token_sees_the_dashboard_without_its_buttons() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let blue = Upstream::named("blue").await;
    let (_served, dashboard, _) = served_with_tcp_admin(&blue, &blue).await;
    browser.open(&dashboard).await;
    browser.type_into("#token", READ_TOKEN).await;
    browser.click("#login-submit").await;
    browser.wait_for_text("#live-pool", "blue").await;
    browser.wait_for_text("#connection", "Live").await;
    let actions = browser
        .eval("const a = document.querySelector('#actions'); return !a || a.hidden || a.getClientRects().length === 0;")
        .await;
    assert_eq!(actions, true, "no buttons for a read-only token");
}

#[tokio::test]
async fn the_dashboard_works_on_the_admin_socket_through_a_port_forward() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    // What `socat TCP-LISTEN:...,fork UNIX-CONNECT:admin.sock` does.
    let forward = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = forward.local_addr().unwrap().port();
    let socket = proxy.admin.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = forward.accept().await {
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Ok(mut unix) = UnixStream::connect(&socket).await {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    });
    // No token on the socket: no login.
    browser.open(&format!("http://127.0.0.1:{port}/")).await;
    browser.wait_for_text("#live-pool", "blue").await;
    browser.wait_until_shown("#switch-to-green").await;
}

#[tokio::test]
async fn the_maintenance_page_shows_the_operator_s_message_in_a_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let (status, _) = proxy
        .admin(
            "PUT",
            "/v1/maintenance",
            Some(r#"{"enabled": true, "message": "Back by 10:30 <b>sharp</b>", "until": "2099-01-01T10:30:00Z"}"#),
        )
        .await;
    assert_eq!(status, 200);
    browser.open(&proxy.url("/orders")).await;
    browser
        .wait_for_text("#message", "Back by 10:30 <b>sharp</b>")
        .await;
    browser.wait_for_text("h1", "Down for maintenance").await;
    assert_eq!(browser.text("time").await, "2099-01-01 10:30 UTC");
    browser.screenshot("maintenance-page.png").await;
    assert_eq!(blue.hits(), 0);
}
