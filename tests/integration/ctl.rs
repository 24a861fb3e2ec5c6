//! `switchyard ctl`, the real binary, against `switchyard serve`, the real
//! binary: every command, its output, its exit codes; and SIGHUP.

use std::path::Path;

use crate::support::*;

fn config_arg(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test]
async fn ctl_drives_a_served_proxy_through_the_migration_workflow() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let served = Served::start(&config_text(&[blue.addr], &[green.addr], "")).await;
    let config = config_arg(&served.config);
    let url = format!("http://{}/", served.addr);
    // The admin socket is found through the config.
    let with = |args: &[&str]| {
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        all.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl(&args, &[]).await
    };

    let (code, out, err) = run(with(&["status"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("live pool     blue (previous: none)"), "{out}");
    assert!(out.contains("maintenance   off"), "{out}");
    assert!(out.contains(&format!("{}", green.addr)), "{out}");
    assert!(out.contains("last reload   ok"), "{out}");
    assert!(
        out.contains("(version "),
        "the config version is shown: {out}"
    );

    let (code, out, err) = run(with(&["switch", "green"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "live pool green (previous blue), generation 1\n");
    assert_eq!(get(&url).await.2, "green");

    let (code, out, err) = run(with(&[
        "maintenance",
        "on",
        "--message",
        "Back at 10:00",
        "--retry-after",
        "10m",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("maintenance on: \"Back at 10:00\" (Retry-After 600s)"),
        "{out}"
    );
    let (status, headers, _) = get(&url).await;
    assert_eq!(
        (status, &headers["retry-after"]),
        (503, &"600".parse::<http::HeaderValue>().unwrap())
    );

    let (code, out, _) = run(with(&["status", "--json"])).await;
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["maintenance"]["enabled"], true);
    assert_eq!(doc["live_pool"], "green");

    let (code, out, _) = run(with(&["maintenance", "off"])).await;
    assert_eq!((code, out.as_str()), (0, "maintenance off, generation 3\n"));
    let (code, out, _) = run(with(&["rollback"])).await;
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "rolled back: live pool blue (previous green), generation 4\n"
    );
    assert_eq!(get(&url).await.2, "blue");
    let (code, out, _) = run(with(&["reload"])).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("config reloaded: "), "{out}");
}

#[tokio::test]
async fn ctl_refusals_exit_1_with_one_actionable_line() {
    let blue = Upstream::named("blue").await;
    let dead = dead_addr().await;
    let served = Served::start(&config_text(&[blue.addr], &[dead], "")).await;
    let socket = served.config.parent().unwrap().join("run/admin.sock");
    let admin = socket.display().to_string();

    let (code, _, err) = ctl(&["--admin", &admin, "switch", "purple"], &[]).await;
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("unknown_pool") && err.contains("purple"),
        "{err}"
    );

    let (code, _, err) = ctl(&["switch", "green"], &[("SWITCHYARD_ADMIN", &admin)]).await;
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("pool_unhealthy"), "{err}");
    assert!(err.contains(&dead.to_string()), "{err}");

    let (code, _, err) = ctl(&["--admin", &admin, "rollback"], &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no_previous_pool"), "{err}");
    // Refusals are in the audit record at the default level, as changes are.
    eventually("refusals reach the audit log", || {
        served.logged(&["audit", "admin call refused", "purple"])
            && served.logged(&["audit", "admin call refused", "no healthy upstream"])
    })
    .await;

    std::fs::write(&served.config, "[pools.blue]\nupstreams = 7\n").unwrap();
    let (code, _, err) = ctl(&["--admin", &admin, "reload"], &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("invalid_config"), "{err}");
    assert!(
        err.contains(&format!("{}:2:", served.config.display())),
        "{err}"
    );
    let (code, out, _) = ctl(&["--admin", &admin, "status"], &[]).await;
    assert_eq!(code, 0);
    assert!(out.contains("last reload   FAILED"), "{out}");

    let (code, _, err) = ctl(&["--admin", "/nonexistent/admin.sock", "status"], &[]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach the admin socket /nonexistent/admin.sock"),
        "{err}"
    );
}

#[tokio::test]
async fn ctl_usage_errors_exit_2() {
    for args in [
        vec![],
        vec!["maintenance", "maybe"],
        vec!["switch"],
        vec!["maintenance", "on", "--retry-after", "soon"],
        vec![
            "--admin",
            "/x.sock",
            "maintenance",
            "off",
            "--message",
            "hi",
        ],
    ] {
        let (code, _, err) = ctl(&args, &[]).await;
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}

#[tokio::test]
async fn ctl_reaches_the_tcp_listener_with_the_token() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let dir = TempDir::new();
    let token_file = dir.write("admin.token", "t0ken\n");
    let extra = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
        token_file.display()
    );
    let served = Served::start(&config_text(&[blue.addr], &[green.addr], &extra)).await;
    let admin_addr = within(async {
        loop {
            if let Some(addr) = served.logged_value("admin API listening on TCP", "addr=") {
                break addr;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let admin = format!("http://{admin_addr}");
    let (code, _, err) = ctl(&["--admin", &admin, "switch", "green"], &[]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("unauthorized") && err.contains("SWITCHYARD_TOKEN"),
        "{err}"
    );
    let (code, out, err) = ctl(
        &["--admin", &admin, "switch", "green"],
        &[("SWITCHYARD_TOKEN", "t0ken")],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("live pool green"), "{out}");
}

#[tokio::test]
async fn sighup_reloads_the_config() {
    let one = Upstream::named("one").await;
    let served = Served::start(&config_text(&[one.addr], &[one.addr], "")).await;
    served.signal("-HUP").await;
    eventually("the SIGHUP reload was logged", || {
        served.logged(&["config reloaded", "via=SIGHUP"])
    })
    .await;
    // Still serving after it.
    let (status, _, body) = get(&format!("http://{}/", served.addr)).await;
    assert_eq!((status, body.as_str()), (200, "one"));
}

#[tokio::test]
async fn ctl_turns_on_read_only_maintenance() {
    let blue = Upstream::named("blue").await;
    let served = Served::start(&config_text(&[blue.addr], &[blue.addr], "")).await;
    let config = config_arg(&served.config);
    let (code, out, err) = ctl(
        &[
            "--config",
            &config,
            "maintenance",
            "on",
            "--read-only",
            "--until",
            "45m",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("read-only: reads still pass"), "{out}");
    let (_, out, _) = ctl(&["--config", &config, "status"], &[]).await;
    assert!(
        out.contains("maintenance   ON (read-only: reads pass)"),
        "{out}"
    );
    assert!(out.contains(", ends 20"), "the end is shown: {out}");
    // A time that is neither RFC 3339 nor a duration is a usage error.
    let (code, _, err) = ctl(
        &["--config", &config, "maintenance", "on", "--until", "soon"],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert_eq!(get(&format!("http://{}/", served.addr)).await.0, 200);
    // --read-only means nothing with off.
    let (code, _, err) = ctl(
        &["--config", &config, "maintenance", "off", "--read-only"],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{err}");
}

#[tokio::test]
async fn ctl_wait_drained_returns_once_the_old_pool_has_nothing_in_flight() {
    let slow = Upstream::start(|request| async move {
        if request.uri().path() == "/slow" {
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        }
        text("blue")
    })
    .await;
    let green = Upstream::named("green").await;
    let proxy = Proxy::start(&[slow.addr], &[green.addr]).await;
    let admin = proxy.admin.display().to_string();
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    eventually("the slow request reached blue", || slow.hits() == 1).await;
    let (status, _) = proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(status, 200);

    // Not in time: exit 1, saying what is still open.
    let (code, _, err) = ctl(
        &["--admin", &admin, "wait", "drained", "--timeout", "100ms"],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("pool `blue` not drained after 100ms: 1 requests in flight, 0 tunnels open"),
        "{err}"
    );
    // The previous pool by default: back once the slow request is answered.
    let (code, out, err) = ctl(&["--admin", &admin, "wait", "drained"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "pool `blue` drained: no request in flight, no tunnel open\n"
    );
    assert!(
        in_flight.is_finished(),
        "ctl returned before the request ended"
    );
    assert_eq!(within(in_flight).await.unwrap().0, 200);

    let (code, _, err) = ctl(&["--admin", &admin, "wait", "drained", "red"], &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("`red` is not a pool"), "{err}");
}
