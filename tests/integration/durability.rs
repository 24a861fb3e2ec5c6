//! The decisions survive a restart, a state file that can't be trusted
//! stops startup, and a state file that can't be written refuses the
//! change rather than applying it unsaved.

use std::os::unix::fs::PermissionsExt;

use crate::support::*;

#[tokio::test]
async fn a_restart_restores_the_live_pool_and_the_gate() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr]).await;
    let (status, _) = proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(status, 200);
    let on = r#"{"enabled": true, "message": "Migrating", "retry_after": "2m"}"#;
    let (status, before) = proxy.admin("PUT", "/v1/maintenance", Some(on)).await;
    assert_eq!(status, 200);

    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(proxy.dir().join("run/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["version"], 1);
    assert_eq!(state["live_pool"], "green");
    assert_eq!(state["previous_pool"], "blue");
    assert_eq!(state["maintenance"]["enabled"], true);
    assert_eq!(state["maintenance"]["message"], "Migrating");
    assert_eq!(state["maintenance"]["retry_after_s"], 120);
    assert_eq!(state["generation"], 2);

    let dir = proxy.stop().await;
    let proxy = Proxy::in_dir(dir).await;
    let (_, after) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(after["live_pool"], "green");
    assert_eq!(after["previous_pool"], "blue");
    assert_eq!(after["maintenance"], before["maintenance"]);
    assert_eq!(after["generation"], 2);
    let (status, headers, body) = get(&proxy.url("/")).await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "120");
    assert_eq!(body, r#"{"message":"Migrating"}"#);

    let (_, doc) = proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": false}"#))
        .await;
    assert_eq!(doc["generation"], 3);
    let (status, _, body) = get(&proxy.url("/")).await;
    assert_eq!((status, body.as_str()), (200, "green"));
}

#[tokio::test]
async fn a_corrupt_state_file_stops_startup_naming_the_file() {
    let blue = Upstream::named("blue").await;
    let dir = TempDir::with_config(&config_text(&[blue.addr], &[blue.addr], ""));
    dir.write("run/state.json", "{\"version\": 1, \"live_pool\": \"gre");
    let Err((error, dir)) = Proxy::try_in_dir(dir).await else {
        panic!("started on a corrupt state file");
    };
    let file = dir.path().join("run/state.json");
    assert!(
        error.contains(&format!("state file {} is corrupt", file.display())),
        "{error}"
    );

    // A pool the config no longer has is refused the same way.
    dir.write(
        "run/state.json",
        r#"{"version": 1, "live_pool": "purple", "previous_pool": null,
            "maintenance": {"enabled": false, "message": "m", "retry_after_s": 1, "since": null},
            "generation": 4}"#,
    );
    let Err((error, _dir)) = Proxy::try_in_dir(dir).await else {
        panic!("started with a live pool the config lacks");
    };
    assert!(error.contains("state.json"), "{error}");
    assert!(error.contains("`purple`"), "{error}");
}

#[tokio::test]
async fn a_state_file_that_cannot_be_written_fails_the_call_and_changes_nothing() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr]).await;
    let run = proxy.dir().join("run");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Permissions don't bind root; then a directory where the temporary
    // file must go makes the write fail just the same.
    let blocker = run.join(".state.json.tmp");
    if std::fs::write(run.join("probe"), "").is_ok() {
        std::fs::remove_file(run.join("probe")).unwrap();
        std::fs::create_dir(&blocker).unwrap();
    }

    let (status, doc) = proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(status, 500, "{doc}");
    assert_eq!(doc["error"]["code"], "state_not_saved");
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(message.contains("state.json"), "{message}");
    let (status, doc) = proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    assert_eq!(status, 500, "{doc}");

    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["live_pool"], "blue");
    assert_eq!(doc["maintenance"]["enabled"], false);
    assert_eq!(doc["generation"], 0);
    let (status, _, body) = get(&proxy.url("/")).await;
    assert_eq!((status, body.as_str()), (200, "blue"));

    // Once the directory is writable again, the same call goes through.
    let _ = std::fs::remove_dir(&blocker);
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (status, doc) = proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["generation"], 1);
}

/// Starts a proxy on `dir`, expecting it to refuse; the reason.
async fn refused_start(dir: TempDir) -> String {
    match Proxy::try_in_dir(dir).await {
        Ok(_) => panic!("started when it should not have"),
        Err((error, _)) => error,
    }
}

#[tokio::test]
async fn a_state_file_behind_a_dangling_link_or_in_a_missing_directory_is_not_a_first_start() {
    let blue = Upstream::named("blue").await;
    let config = config_text(&[blue.addr], &[blue.addr], "");

    // A volume that is not mounted: the link points at nothing.
    let dir = TempDir::with_config(&config);
    std::os::unix::fs::symlink(
        dir.path().join("volume/state.json"),
        dir.path().join("run/state.json"),
    )
    .unwrap();
    let error = refused_start(dir).await;
    assert!(error.contains("is its volume mounted"), "{error}");

    // A directory that does not exist is not created behind the operator's back.
    let dir = TempDir::with_config(&config_text(
        &[blue.addr],
        &[blue.addr],
        "[state]\nfile = \"missing/state.json\"\n",
    ));
    let error = refused_start(dir).await;
    assert!(error.contains("does not exist"), "{error}");
    let dir = TempDir::with_config(&config_text(
        &[blue.addr],
        &[blue.addr],
        "[admin]\nsocket = \"missing/admin.sock\"\n",
    ));
    let error = refused_start(dir).await;
    assert!(error.contains("does not exist"), "{error}");

    // A FIFO would hang startup if it were read.
    let dir = TempDir::with_config(&config);
    let fifo = dir.path().join("run/state.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let error = within(refused_start(dir)).await;
    assert!(error.contains("not a regular file"), "{error}");
}

#[tokio::test]
async fn a_link_planted_at_the_temp_path_is_never_written_through() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr]).await;
    let victim = proxy.dir().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, proxy.dir().join("run/.state.json.tmp")).unwrap();
    let (status, _) = proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(status, 200);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let state = std::fs::read_to_string(proxy.dir().join("run/state.json")).unwrap();
    assert!(state.contains("\"live_pool\": \"green\""), "{state}");
}

#[tokio::test]
async fn a_second_process_on_the_same_state_file_is_refused() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let config = switchyard::config::Config::load(&proxy.config).unwrap();
    let error = switchyard::server::Server::bind(config)
        .await
        .expect_err("a second server on the same state file");
    assert!(
        error
            .to_string()
            .contains("in use by another switchyard process"),
        "{error}"
    );
    // The first one is unaffected, and a restart after it stops is fine.
    assert_eq!(get(&proxy.url("/")).await.0, 200);
    let dir = proxy.stop().await;
    let proxy = Proxy::in_dir(dir).await;
    assert_eq!(get(&proxy.url("/")).await.0, 200);
}

/// The live pool as the state file records it (before the first change,
/// there is no file and a restart would start from `initial_pool`).
fn live_in_file(proxy: &Proxy) -> String {
    let Ok(text) = std::fs::read_to_string(proxy.dir().join("run/state.json")) else {
        return "blue".to_owned();
    };
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["live_pool"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_switch_abandoned_by_its_caller_is_applied_exactly_as_it_is_saved() {
    use tokio::io::AsyncWriteExt;
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr]).await;
    for round in 0..40u64 {
        let to = if round % 2 == 0 { "green" } else { "blue" };
        let body = format!(r#"{{"to": "{to}", "force": true}}"#);
        let request = format!(
            "POST /v1/switch HTTP/1.1\r\nHost: switchyard\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut stream = tokio::net::UnixStream::connect(&proxy.admin).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        // The caller gives up at some moment during the call.
        tokio::time::sleep(std::time::Duration::from_micros(round % 8 * 400)).await;
        drop(stream);
        // Changes run one at a time: once this one is answered, the
        // abandoned one has ended, one way or the other.
        let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
        let live = doc["live_pool"].as_str().unwrap().to_owned();
        let (status, _) = proxy
            .admin(
                "POST",
                "/v1/switch",
                Some(&format!(r#"{{"to": "{live}", "force": true}}"#)),
            )
            .await;
        assert_eq!(status, 200);
        let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
        assert_eq!(
            doc["live_pool"].as_str().unwrap(),
            live_in_file(&proxy),
            "round {round}: the running state and the state file disagree"
        );
    }
}
