//! Hot reload: the config file is watched through edits, rename-over and
//! ConfigMap-style symlink swaps, and reloaded on request; an invalid
//! config changes nothing and says why; a valid one fails no request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

/// Waits until the proxy's live pool answers `body`.
async fn until_answered(proxy: &Proxy, body: &'static str) {
    let url = proxy.url("/");
    until(&format!("the proxy answers {body:?}"), || {
        let url = url.clone();
        async move { get(&url).await.2 == body }
    })
    .await;
}

#[tokio::test]
async fn an_edit_in_place_is_applied() {
    let one = Upstream::named("one").await;
    let two = Upstream::named("two").await;
    let proxy = Proxy::start(&[one.addr], &[one.addr]).await;
    assert_eq!(get(&proxy.url("/")).await.2, "one");
    std::fs::write(&proxy.config, config_text(&[two.addr], &[one.addr], "")).unwrap();
    until_answered(&proxy, "two").await;
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(
        doc["pools"]["blue"]["upstreams"][0]["addr"],
        two.addr.to_string()
    );
    assert_eq!(doc["generation"], 0, "a reload is not a decision");
}

#[tokio::test]
async fn a_replacement_by_rename_is_applied() {
    let one = Upstream::named("one").await;
    let two = Upstream::named("two").await;
    let proxy = Proxy::start(&[one.addr], &[one.addr]).await;
    let staged = proxy.dir().join("switchyard.toml.new");
    std::fs::write(&staged, config_text(&[two.addr], &[one.addr], "")).unwrap();
    std::fs::rename(&staged, &proxy.config).unwrap();
    until_answered(&proxy, "two").await;
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_applied() {
    let one = Upstream::named("one").await;
    let two = Upstream::named("two").await;
    // The layout Kubernetes mounts: the file is a link through `..data`,
    // which points at a timestamped directory and is swapped atomically.
    let dir = TempDir::new();
    let first = dir.path().join("..2026_11_22_1");
    std::fs::create_dir(&first).unwrap();
    std::fs::write(
        first.join("switchyard.toml"),
        config_text(&[one.addr], &[one.addr], ""),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_11_22_1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/switchyard.toml", dir.path().join("switchyard.toml"))
        .unwrap();
    let proxy = Proxy::in_dir(dir).await;
    assert_eq!(get(&proxy.url("/")).await.2, "one");

    let second = proxy.dir().join("..2026_11_22_2");
    std::fs::create_dir(&second).unwrap();
    std::fs::write(
        second.join("switchyard.toml"),
        config_text(&[two.addr], &[one.addr], ""),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_11_22_2", proxy.dir().join("..data_tmp")).unwrap();
    std::fs::rename(proxy.dir().join("..data_tmp"), proxy.dir().join("..data")).unwrap();
    std::fs::remove_dir_all(proxy.dir().join("..2026_11_22_1")).unwrap();
    until_answered(&proxy, "two").await;
}

#[tokio::test]
async fn the_api_reloads_and_reports_when_it_did() {
    let one = Upstream::named("one").await;
    let two = Upstream::named("two").await;
    let proxy = Proxy::start(&[one.addr], &[one.addr]).await;
    let (_, before) = proxy.admin("GET", "/v1/status", None).await;
    // Rewrite and reload at once; the watcher may get there first, which
    // is fine: the call must still answer with the new config applied.
    std::fs::write(&proxy.config, config_text(&[two.addr], &[one.addr], "")).unwrap();
    let (status, doc) = proxy.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(
        doc["pools"]["blue"]["upstreams"][0]["addr"],
        two.addr.to_string()
    );
    assert_eq!(doc["config"]["last_reload_error"], serde_json::Value::Null);
    assert!(doc["config"]["loaded_at"].is_string());
    assert_eq!(doc["config"]["path"], before["config"]["path"]);
    assert_ne!(doc["config"]["version"], before["config"]["version"]);
    assert_eq!(get(&proxy.url("/")).await.2, "two");
}

#[tokio::test]
async fn an_invalid_config_keeps_the_old_one_serving_and_says_why() {
    let one = Upstream::named("one").await;
    let proxy = Proxy::start(&[one.addr], &[one.addr]).await;
    let good = std::fs::read_to_string(&proxy.config).unwrap();
    std::fs::write(
        &proxy.config,
        good.replace("[pools.green]", "[pools.green]\nbalance = \"random\""),
    )
    .unwrap();
    let (status, doc) = proxy.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 422, "{doc}");
    assert_eq!(doc["error"]["code"], "invalid_config");
    let details = doc["error"]["details"].as_array().unwrap();
    let prefix = format!("{}:", proxy.config.display());
    assert!(details[0].as_str().unwrap().starts_with(&prefix), "{doc}");
    assert!(details[0].as_str().unwrap().contains("balance"), "{doc}");
    assert_eq!(get(&proxy.url("/")).await.2, "one");
    let (_, status_doc) = proxy.admin("GET", "/v1/status", None).await;
    let error = status_doc["config"]["last_reload_error"].as_str().unwrap();
    assert!(error.contains("balance"), "{error}");

    // The watcher sees the fix and clears the error.
    std::fs::write(&proxy.config, &good).unwrap();
    until("the fixed config cleared the error", || async {
        let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
        doc["config"]["last_reload_error"].is_null()
    })
    .await;
}

#[tokio::test]
async fn a_broken_file_seen_by_the_watcher_is_reported() {
    let one = Upstream::named("one").await;
    let proxy = Proxy::start(&[one.addr], &[one.addr]).await;
    std::fs::write(&proxy.config, "[listener\nbind = 1").unwrap();
    until("the watcher reported the broken file", || async {
        let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
        doc["config"]["last_reload_error"].is_string()
    })
    .await;
    assert_eq!(get(&proxy.url("/")).await.2, "one");
}

#[tokio::test]
async fn a_reload_that_removes_the_live_pool_is_refused() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr]).await;
    let text = format!(
        "[listener]\nbind = \"127.0.0.1:0\"\n\n[state]\ninitial_pool = \"green\"\n\n[pools.green]\nupstreams = [\"{}\"]\n",
        green.addr
    );
    std::fs::write(&proxy.config, text).unwrap();
    let (status, doc) = proxy.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 422, "{doc}");
    let detail = doc["error"]["details"][0].as_str().unwrap();
    assert!(detail.contains("live pool `blue`"), "{detail}");
    assert_eq!(get(&proxy.url("/")).await.2, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request() {
    let blue = Upstream::start(|request| async move {
        if request.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        text("blue")
    })
    .await;
    let other = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let running = Arc::new(AtomicBool::new(true));
    let mut clients = Vec::new();
    for i in 0..4 {
        let url = proxy.url(if i == 0 { "/slow" } else { "/" });
        let running = running.clone();
        clients.push(tokio::spawn(async move {
            let client = client();
            let mut done = 0;
            while running.load(Ordering::Relaxed) {
                let request = http::Request::get(&url).body(full("")).unwrap();
                let response = within(client.request(request))
                    .await
                    .expect("request failed");
                assert_eq!(response.status(), 200);
                done += 1;
            }
            done
        }));
    }
    // Alternate the blue pool between two upstreams, and the timeouts.
    for i in 0..10 {
        let upstreams = if i % 2 == 0 {
            vec![other.addr, blue.addr]
        } else {
            vec![blue.addr]
        };
        let extra = format!("[timeouts]\nupstream = \"{}s\"\n", 10 + i);
        std::fs::write(&proxy.config, config_text(&upstreams, &[blue.addr], &extra)).unwrap();
        let (status, doc) = proxy.admin("POST", "/v1/reload", None).await;
        assert_eq!(status, 200, "{doc}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.store(false, Ordering::Relaxed);
    for client in clients {
        let done = within(client).await.expect("a client saw a failed request");
        assert!(done > 0);
    }
}

#[tokio::test]
async fn an_unchanged_config_is_left_alone() {
    use notify::event::{AccessKind, EventKind};
    use notify::Watcher;
    use std::sync::atomic::AtomicUsize;

    let one = Upstream::named("one").await;
    let two = Upstream::named("two").await;
    let proxy = Proxy::start(&[one.addr], &[one.addr]).await;
    // An edit applied: the proxy's watch is up and has looked at the file.
    std::fs::write(&proxy.config, config_text(&[two.addr], &[one.addr], "")).unwrap();
    until_answered(&proxy, "two").await;

    // Count how often the file is opened from now on. Looking at the file
    // opens it; if that counted as a change, the watch would look again
    // after each debounce period, forever.
    let opens = Arc::new(AtomicUsize::new(0));
    let counted = opens.clone();
    let config = proxy.config.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if matches!(event.kind, EventKind::Access(AccessKind::Open(_)))
                && event.paths.contains(&config)
            {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .unwrap();
    watcher
        .watch(proxy.dir(), notify::RecursiveMode::NonRecursive)
        .unwrap();
    // Nothing to wait for but time: several debounce periods.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(watcher);
    // One late look, from the reload's own reading, may still be counted.
    let opened = opens.load(Ordering::SeqCst);
    assert!(
        opened <= 1,
        "the config file was opened {opened} times while unchanged"
    );
    assert_eq!(get(&proxy.url("/")).await.2, "two");
}
