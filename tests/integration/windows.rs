//! Maintenance windows planned ahead: the gate goes on and off by itself,
//! the list and its refusals, cancelling, restarts, and `ctl`.

use serde_json::Value;

use crate::support::*;

fn window(starts_in: i64, ends_in: i64, extra: &str) -> String {
    format!(
        r#"{{"starts_at": "{}", "ends_at": "{}"{extra}}}"#,
        rfc3339_in(starts_in),
        rfc3339_in(ends_in)
    )
}

async fn windows(proxy: &Proxy) -> Vec<Value> {
    let (status, doc) = proxy.admin("GET", "/v1/maintenance/windows", None).await;
    assert_eq!(status, 200, "{doc}");
    doc["windows"].as_array().expect("a list").clone()
}

#[tokio::test]
async fn a_window_turns_the_gate_on_at_its_start_and_off_at_its_end() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let body = window(
        2,
        4,
        r#", "message": "Planned upgrade", "mode": "read_only""#,
    );
    let (status, created) = proxy
        .admin("POST", "/v1/maintenance/windows", Some(&body))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"]
        .as_str()
        .expect("the id is a string")
        .to_owned();
    assert_eq!(created["message"], "Planned upgrade");
    assert_eq!(created["mode"], "read_only");
    // Listed, and in the status document, and not yet in force.
    assert_eq!(windows(&proxy).await[0]["id"], id.as_str());
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["windows"][0]["id"], id.as_str(), "{doc}");
    assert_eq!(doc["maintenance"]["enabled"], false);
    assert_eq!(doc["generation"], 1);
    let post = || async {
        let request = http::Request::post(proxy.url("/"))
            .body(full("{}"))
            .unwrap();
        send(request).await
    };
    assert_eq!(post().await.0, 200);

    // At its start: on, read-only, counting down to its end.
    until("the window started", || async { post().await.0 == 503 }).await;
    let (_, headers, body) = post().await;
    assert!(body.contains("Planned upgrade"), "{body}");
    let left: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=4).contains(&left), "Retry-After {left}");
    assert_eq!(get(&proxy.url("/")).await.0, 200, "reads pass");
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["maintenance"]["until"], created["ends_at"], "{doc}");
    assert_eq!(doc["generation"], 2);

    // At its end: off, and the window has left the list.
    until("the window ended", || async { post().await.0 == 200 }).await;
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["maintenance"]["enabled"], false, "{doc}");
    assert_eq!(doc["generation"], 3, "planned, started, ended");
    assert!(windows(&proxy).await.is_empty());
}

#[tokio::test]
async fn windows_that_overlap_end_first_or_have_ended_are_refused() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let path = "/v1/maintenance/windows";
    let (status, first) = proxy
        .admin("POST", path, Some(&window(3600, 7200, "")))
        .await;
    assert_eq!(status, 201, "{first}");
    let refusals = [
        (window(5400, 9000, ""), "overlaps window"),
        (window(1800, 3601, ""), "overlaps window"),
        (window(9000, 8000, ""), "before it starts"),
        (window(-7200, -3600, ""), "already ended"),
        (
            r#"{"starts_at": "tomorrow", "ends_at": "later"}"#.to_owned(),
            "starts_at",
        ),
        (window(9000, 10000, r#", "mode": "half""#), "mode"),
        (window(9000, 10000, r#", "colour": "red""#), "unknown field"),
    ];
    for (body, says) in refusals {
        let (status, doc) = proxy.admin("POST", path, Some(&body)).await;
        assert_eq!(status, 400, "{body}: {doc}");
        assert_eq!(doc["error"]["code"], "bad_request");
        let message = doc["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    // Touching is fine.
    let (status, doc) = proxy
        .admin("POST", path, Some(&window(7200, 9000, "")))
        .await;
    assert_eq!(status, 201, "{doc}");
    let listed = windows(&proxy).await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["id"], first["id"], "soonest first");
    // The one without a message uses maintenance.message.
    assert_eq!(listed[0]["message"], "Service is undergoing maintenance");

    let (status, doc) = proxy
        .admin("DELETE", "/v1/maintenance/windows/w999", None)
        .await;
    assert_eq!(status, 404, "{doc}");
    assert_eq!(doc["error"]["code"], "unknown_window");
    let (status, _) = proxy.admin("PATCH", path, Some("{}")).await;
    assert_eq!(status, 405);
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["generation"], 2, "refusals change nothing");
}

#[tokio::test]
async fn a_window_created_after_its_start_begins_at_once_and_cancelling_it_ends_it() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let path = "/v1/maintenance/windows";
    let (status, running) = proxy
        .admin("POST", path, Some(&window(-60, 3600, "")))
        .await;
    assert_eq!(status, 201, "{running}");
    // In force by the time the call answers.
    assert_eq!(get(&proxy.url("/")).await.0, 503);
    let (_, later) = proxy
        .admin("POST", path, Some(&window(7200, 9000, "")))
        .await;

    // Cancelling a window to come leaves the running one alone.
    let cancel = |id: &Value| format!("{path}/{}", id.as_str().unwrap());
    let (status, body) = proxy.admin("DELETE", &cancel(&later["id"]), None).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(body, Value::String(String::new()), "204 has no body");
    assert_eq!(get(&proxy.url("/")).await.0, 503);
    // Cancelling the running one turns the gate off.
    let (status, _) = proxy.admin("DELETE", &cancel(&running["id"]), None).await;
    assert_eq!(status, 204);
    assert_eq!(get(&proxy.url("/")).await.0, 200);
    assert!(windows(&proxy).await.is_empty());
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(doc["generation"], 4, "two plans, two cancels");
    assert_eq!(doc["last_event"]["kind"], "maintenance");
}

#[tokio::test]
async fn windows_survive_a_restart_and_one_whose_start_passed_is_in_force_at_once() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let (status, created) = proxy
        .admin(
            "POST",
            "/v1/maintenance/windows",
            Some(&window(3600, 7200, r#", "message": "Planned""#)),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let dir = proxy.stop().await;
    let proxy = Proxy::in_dir(dir).await;
    let listed = windows(&proxy).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], created["id"]);
    assert_eq!(listed[0]["message"], "Planned");
    assert_eq!(get(&proxy.url("/")).await.0, 200);

    // Its start passes while the proxy is stopped (the state file is moved
    // back in time rather than the test waiting an hour).
    let dir = proxy.stop().await;
    let path = dir.path().join("run/state.json");
    let mut state: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    state["windows"][0]["starts_at"] = Value::String(rfc3339_in(-1));
    std::fs::write(&path, state.to_string()).unwrap();
    let proxy = Proxy::in_dir(dir).await;
    let (status, _, body) = get(&proxy.url("/")).await;
    assert_eq!(status, 503, "in force from the first request");
    assert!(body.contains("Planned"), "{body}");
}

#[tokio::test]
async fn ctl_plans_lists_shows_and_cancels_windows() {
    let blue = Upstream::named("blue").await;
    let proxy = Proxy::start(&[blue.addr], &[blue.addr]).await;
    let admin = proxy.admin.display().to_string();
    let ctl_with = |args: &[&str]| {
        let mut all = vec!["--admin".to_owned(), admin.clone()];
        all.extend(args.iter().map(|s| s.to_string()));
        all
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl(&args, &[]).await
    };

    let (code, out, err) = run(ctl_with(&["maintenance", "windows"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "no maintenance window planned\n");
    let from = rfc3339_in(3600);
    let (code, out, err) = run(ctl_with(&[
        "maintenance",
        "schedule",
        "--from",
        &from,
        "--until",
        "2h",
        "--message",
        "Back by ten",
        "--read-only",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("planned window w1: "), "{out}");
    assert!(out.contains(&from), "{out}");
    assert!(out.contains("(read-only): \"Back by ten\""), "{out}");

    let (code, out, _) = run(ctl_with(&["maintenance", "windows"])).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("window w1: "), "{out}");
    let (_, out, _) = run(ctl_with(&["status"])).await;
    assert!(out.contains("next window   window w1: "), "{out}");

    // Refused by the proxy: exit 1 with its reason.
    let (code, _, err) = run(ctl_with(&[
        "maintenance",
        "schedule",
        "--from",
        "90m",
        "--until",
        "100m",
    ]))
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("overlaps window w1"), "{err}");
    // Refused on the command line: exit 2.
    let (code, _, err) = run(ctl_with(&["maintenance", "schedule", "--from", "1h"])).await;
    assert_eq!(code, 2, "{err}");

    let (code, out, err) = run(ctl_with(&["maintenance", "cancel", "w1"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "window w1 cancelled\n");
    let (code, _, err) = run(ctl_with(&["maintenance", "cancel", "w1"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("unknown_window"), "{err}");
    let (code, _, _) = run(ctl_with(&["maintenance", "cancel", "../v1/switch"])).await;
    assert_eq!(code, 2, "an id that is not one never reaches the API");
}
