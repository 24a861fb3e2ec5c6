//! `switchyard ctl deploy`, the real binary against `switchyard serve`,
//! with real shell commands as the migration and the verification: what
//! the public listener answered while they ran, what was undone when a
//! step failed or the deploy was interrupted, and the lock between two
//! deploys.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// A served proxy, blue live, green idle, with a preview listener, and a
/// scratch directory for the commands' marker files.
struct Setup {
    served: Served,
    blue: Upstream,
    green: Upstream,
    scratch: TempDir,
}

impl Setup {
    async fn start(extra: &str) -> Setup {
        let blue = Upstream::named("blue").await;
        let green = Upstream::named("green").await;
        let served = Served::start(&config_text(
            &[blue.addr],
            &[green.addr],
            &format!("[preview]\nbind = \"127.0.0.1:0\"\n{extra}"),
        ))
        .await;
        Setup {
            served,
            blue,
            green,
            scratch: TempDir::new(),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// `ctl deploy ARGS`, started in the background.
    fn deploy(&self, args: &[&str]) -> tokio::process::Child {
        tokio::process::Command::new(BIN)
            .arg("ctl")
            .arg("--config")
            .arg(&self.served.config)
            .arg("deploy")
            .args(args)
            .env_remove("SWITCHYARD_ADMIN")
            .env_remove("SWITCHYARD_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start ctl deploy")
    }

    async fn status(&self) -> Value {
        let socket = self.served.config.parent().unwrap().join("run/admin.sock");
        admin_call(&socket, "GET", "/v1/status", None).await.1
    }

    /// What the public listener answers to a POST now.
    async fn public_post(&self) -> (u16, String) {
        let request = http::Request::post(format!("http://{}/", self.served.addr))
            .body(full("{}"))
            .unwrap();
        let (status, _, body) = send(request).await;
        (status, body)
    }
}

/// Waits for `child` to end: exit code, stdout, stderr.
async fn finished(child: tokio::process::Child) -> (i32, String, String) {
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("ctl deploy ended in time")
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits until `path` exists.
async fn exists(path: &Path) {
    let path = path.to_owned();
    eventually(&format!("{} exists", path.display()), move || path.exists()).await;
}

#[tokio::test]
async fn a_deploy_runs_every_step_with_the_gate_on_while_the_migration_runs() {
    let setup = Setup::start("").await;
    let (migrating, proceed, seen) = (
        setup.file("migrating"),
        setup.file("proceed"),
        setup.file("seen-by-verify"),
    );
    let migrate = format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.05; done",
        migrating.display(),
        proceed.display()
    );
    let verify = format!(
        "echo \"$SWITCHYARD_POOL $SWITCHYARD_LIVE_POOL $SWITCHYARD_PREVIEW_URL\" > {}",
        seen.display()
    );
    let child = setup.deploy(&[
        "green",
        "--maintenance",
        "--message",
        "Migrating the orders table",
        "--migrate",
        &migrate,
        "--verify",
        &verify,
    ]);
    // While the migration runs: users get the gate's 503 with the message,
    // and the live pool has not changed.
    exists(&migrating).await;
    let (status, body) = setup.public_post().await;
    assert_eq!(status, 503);
    assert!(body.contains("Migrating the orders table"), "{body}");
    let doc = setup.status().await;
    assert_eq!(doc["live_pool"], "blue");
    assert_eq!(doc["deploy"]["pool"], "green", "{doc}");
    assert_eq!(setup.green.hits(), 0);
    std::fs::write(&proceed, "").unwrap();

    let (code, out, err) = finished(child).await;
    assert_eq!(code, 0, "{out}\n{err}");
    for step in ["check", "gate", "migrate", "verify", "switch", "ungate"] {
        assert!(
            out.contains(&format!(" {step:<8} started"))
                && out.contains(&format!(" {step:<8} ok in ")),
            "{step}: {out}"
        );
    }
    assert!(out.contains("deploy of green done in"), "{out}");
    // The commands got the deploy's environment.
    let preview = setup.status().await["listeners"]["preview"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap().trim(),
        format!("green blue http://{preview}")
    );
    // After: green live, the gate off, no deploy running.
    assert_eq!(setup.public_post().await, (200, "green".to_owned()));
    let doc = setup.status().await;
    assert_eq!(doc["maintenance"]["enabled"], false);
    assert_eq!(doc["deploy"], Value::Null);
    // Every step is in the proxy's audit log.
    until("the audit log has the deploy", || async {
        setup
            .served
            .logged(&["change=\"deploy\"", "step=ungate", "outcome=ok"])
            && setup
                .served
                .logged(&["change=\"deploy\"", "step=migrate", "outcome=started"])
    })
    .await;
    let _ = &setup.blue;
}

#[tokio::test]
async fn a_failed_migration_turns_the_gate_off_and_keeps_the_live_pool() {
    let setup = Setup::start("").await;
    let child = setup.deploy(&[
        "green",
        "--read-only",
        "--migrate",
        "echo migrating >&2; exit 3",
        "--json",
    ]);
    let (code, out, err) = finished(child).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("failed at step migrate"), "{err}");
    assert!(err.contains("exited with 3"), "{err}");
    assert!(err.contains("does not undo"), "{err}");
    assert!(
        err.contains("migrating"),
        "the command's output goes to stderr: {err}"
    );
    // --json: one document on stdout and nothing else.
    let report: Value = serde_json::from_str(&out).expect("stdout is one JSON document");
    assert_eq!(report["ok"], false);
    assert_eq!(report["pool"], "green");
    let names: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["check", "gate", "migrate", "undo"]);
    assert_eq!(report["steps"][2]["ok"], false);
    assert_eq!(report["steps"][3]["ok"], true);
    for field in ["started_at", "ended_at", "detail"] {
        assert!(report["steps"][0][field].is_string(), "{field}: {report}");
    }
    let doc = setup.status().await;
    assert_eq!(doc["live_pool"], "blue");
    assert_eq!(doc["maintenance"]["enabled"], false, "{doc}");
    assert_eq!(setup.public_post().await, (200, "blue".to_owned()));
    assert_eq!(doc["deploy"], Value::Null, "the lock is released");
}

#[tokio::test]
async fn a_second_deploy_is_refused_and_a_dead_deploys_lock_lapses() {
    let setup = Setup::start("").await;
    let waiting = setup.file("waiting");
    let migrate = format!("echo $$ > {}; sleep 60", waiting.display());
    let mut first = setup.deploy(&["green", "--maintenance", "--migrate", &migrate]);
    exists(&waiting).await;

    let (code, out, err) = finished(setup.deploy(&["green"])).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("deploy_running"), "{err}");
    assert!(
        err.contains("a deploy of `green`"),
        "names the running one: {err}"
    );
    assert_eq!(setup.status().await["live_pool"], "blue");

    // The first ctl dies without a word: its lock lapses by itself, and
    // its migration is ended by the watchdog in its process group.
    send_signal(first.id().unwrap(), "-KILL").await;
    within(first.wait()).await.unwrap();
    let group = std::fs::read_to_string(&waiting).unwrap().trim().to_owned();
    let proc_dir = PathBuf::from(format!("/proc/{group}"));
    eventually("the orphaned migration ended", move || !proc_dir.exists()).await;
    let lapsed = async {
        loop {
            if setup.status().await["deploy"].is_null() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), lapsed)
        .await
        .expect("the dead deploy's lock lapsed");
    let (code, out, err) = finished(setup.deploy(&["green"])).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(setup.status().await["live_pool"], "green");
}

#[tokio::test]
async fn ctrl_c_stops_the_migration_and_undoes_the_gate() {
    let setup = Setup::start("").await;
    let (pid_file, stopped) = (setup.file("pid"), setup.file("stopped"));
    // The shell records that it got SIGTERM, and its child sleeps.
    let migrate = format!(
        "trap 'touch {}; exit 143' TERM; echo $$ > {}; sleep 60 & wait",
        stopped.display(),
        pid_file.display()
    );
    let child = setup.deploy(&["green", "--maintenance", "--migrate", &migrate]);
    exists(&pid_file).await;
    assert_eq!(setup.public_post().await.0, 503);
    send_signal(child.id().unwrap(), "-INT").await;
    let (code, out, err) = finished(child).await;
    assert_eq!(code, 130, "{out}\n{err}");
    assert!(err.contains("interrupted (SIGINT)"), "{err}");
    assert!(stopped.exists(), "the migration got SIGTERM");
    let doc = setup.status().await;
    assert_eq!(doc["maintenance"]["enabled"], false, "{doc}");
    assert_eq!(doc["live_pool"], "blue");
}

#[tokio::test]
async fn a_hanging_verification_is_stopped_by_timeout_and_nothing_is_switched() {
    let setup = Setup::start("").await;
    let child = setup.deploy(&["green", "--verify", "sleep 60", "--timeout", "1s"]);
    let (code, out, err) = finished(child).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("failed at step verify"), "{err}");
    assert!(err.contains("did not finish within 1s"), "{err}");
    assert!(err.contains("did not change: still blue"), "{err}");
    assert_eq!(setup.status().await["live_pool"], "blue");
}

#[tokio::test]
async fn the_check_step_refuses_what_cannot_work() {
    let setup = Setup::start("").await;
    let refusals: [(&[&str], &str); 3] = [
        (&["purple"], "pool `purple` is not in the config"),
        (&["blue"], "pool `blue` is already live"),
        (&["green", "--watch", "1m"], "add a [switch] section"),
    ];
    for (args, says) in refusals {
        let (code, out, err) = finished(setup.deploy(args)).await;
        assert_eq!(code, 1, "{args:?}: {out}\n{err}");
        assert!(err.contains("failed at step check"), "{err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A usage error: --message means nothing without a gate.
    let (code, _, err) = finished(setup.deploy(&["green", "--message", "hi"])).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = finished(setup.deploy(&["green", "--maintenance", "--read-only"])).await;
    assert_eq!(code, 2, "{err}");

    // An unhealthy pool fails the check unless --force.
    let dead = dead_addr().await;
    let served = Served::start(&config_text(&[setup.blue.addr], &[dead], "")).await;
    let deploy = |args: &[&str]| {
        tokio::process::Command::new(BIN)
            .arg("ctl")
            .arg("--config")
            .arg(&served.config)
            .arg("deploy")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let (code, _, err) = finished(deploy(&["green"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("passed its probe"), "{err}");
    let (code, out, err) = finished(deploy(&["green", "--force"])).await;
    assert_eq!(code, 0, "{out}\n{err}");
}

#[tokio::test]
async fn a_watch_that_sees_an_automatic_rollback_fails_the_deploy() {
    let blue = Upstream::named("blue").await;
    // Green passes its probes and fails its users.
    let green = Upstream::start(|request| async move {
        let mut response = text("green is broken");
        if request.uri().path() != "/health" {
            *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        }
        response
    })
    .await;
    let served = Served::start(&config_text(
        &[blue.addr],
        &[green.addr],
        "[switch]\nwatch = \"5s\"\nmax_error_rate = 0.5\nmin_requests = 3\n",
    ))
    .await;
    let child = tokio::process::Command::new(BIN)
        .arg("ctl")
        .arg("--config")
        .arg(&served.config)
        .args(["deploy", "green", "--watch", "8s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Users keep coming while the deploy runs.
    let url = format!("http://{}/", served.addr);
    let traffic = tokio::spawn(async move {
        loop {
            let _ = get(&url).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let (code, out, err) = finished(child).await;
    traffic.abort();
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("failed at step watch"), "{err}");
    assert!(err.contains("rolled back automatically"), "{err}");
    assert_eq!(get(&format!("http://{}/", served.addr)).await.2, "blue");
}

#[tokio::test]
async fn a_proxy_restarted_during_the_migration_keeps_the_gate_and_the_deploy_goes_on() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let proxy = Proxy::start(&[blue.addr], &[green.addr]).await;
    let scratch = TempDir::new();
    let (migrating, proceed) = (
        scratch.path().join("migrating"),
        scratch.path().join("proceed"),
    );
    let migrate = format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.05; done",
        migrating.display(),
        proceed.display()
    );
    let child = tokio::process::Command::new(BIN)
        .arg("ctl")
        .arg("--admin")
        .arg(&proxy.admin)
        .args(["deploy", "green", "--maintenance", "--migrate", &migrate])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    exists(&migrating).await;
    let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
    let lock = doc["deploy"]["id"].clone();
    assert!(lock.is_string(), "{doc}");

    // The proxy goes away and comes back while the migration runs: the
    // gate is durable, and the deploy's ctl takes its lock again.
    let dir = proxy.stop().await;
    let proxy = Proxy::in_dir(dir).await;
    assert_eq!(get(&proxy.url("/")).await.0, 503, "the gate survived");
    // And so did the lock: a second deploy is not let in beside the first.
    let second = tokio::process::Command::new(BIN)
        .arg("ctl")
        .arg("--admin")
        .arg(&proxy.admin)
        .args(["deploy", "green"])
        .output();
    let second = within(second).await.unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("deploy_running"));
    let relocked = async {
        loop {
            let (_, doc) = proxy.admin("GET", "/v1/status", None).await;
            if doc["deploy"]["id"] == lock {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), relocked)
        .await
        .expect("the deploy took its lock again");
    std::fs::write(&proceed, "").unwrap();
    let (code, out, err) = finished(child).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let (status, _, body) = get(&proxy.url("/")).await;
    assert_eq!((status, body.as_str()), (200, "green"));
}

#[tokio::test]
async fn a_hangup_a_sigterm_or_a_closed_output_still_leaves_the_gate_as_it_was() {
    let setup = Setup::start("").await;
    // The terminal goes away: SIGHUP, handled as SIGTERM is (exit 129).
    let pid_file = setup.file("pid");
    let migrate = format!("echo $$ > {}; sleep 60", pid_file.display());
    let child = setup.deploy(&["green", "--maintenance", "--migrate", &migrate]);
    exists(&pid_file).await;
    assert_eq!(setup.public_post().await.0, 503);
    send_signal(child.id().unwrap(), "-HUP").await;
    let (code, out, err) = finished(child).await;
    assert_eq!(code, 129, "{out}\n{err}");
    assert_eq!(setup.status().await["maintenance"]["enabled"], false);

    // SIGTERM the same, with 143.
    std::fs::remove_file(&pid_file).unwrap();
    let child = setup.deploy(&["green", "--maintenance", "--migrate", &migrate]);
    exists(&pid_file).await;
    send_signal(child.id().unwrap(), "-TERM").await;
    let (code, out, err) = finished(child).await;
    assert_eq!(code, 143, "{out}\n{err}");
    assert!(err.contains("terminated (SIGTERM)"), "{err}");
    assert_eq!(setup.status().await["maintenance"]["enabled"], false);

    // Its stdout closed at once (`| head -0`): the deploy goes on to the end.
    let mut child = setup.deploy(&["green", "--maintenance", "--migrate", "true"]);
    drop(child.stdout.take());
    let (code, _, err) = finished(child).await;
    assert_eq!(code, 0, "{err}");
    let doc = setup.status().await;
    assert_eq!(doc["live_pool"], "green");
    assert_eq!(doc["maintenance"]["enabled"], false);
}

#[tokio::test]
async fn a_gate_taken_over_during_the_deploy_is_left_on() {
    let setup = Setup::start("").await;
    let (migrating, proceed) = (setup.file("migrating"), setup.file("proceed"));
    let migrate = format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.05; done; exit 1",
        migrating.display(),
        proceed.display()
    );
    let child = setup.deploy(&["green", "--maintenance", "--migrate", &migrate]);
    exists(&migrating).await;
    // An operator gives the gate an end of their own meanwhile.
    let socket = setup.served.config.parent().unwrap().join("run/admin.sock");
    let body = format!(
        r#"{{"enabled": true, "message": "ours now", "until": "{}"}}"#,
        rfc3339_in(3600)
    );
    let (status, _) = admin_call(&socket, "PUT", "/v1/maintenance", Some(&body)).await;
    assert_eq!(status, 200);
    std::fs::write(&proceed, "").unwrap();
    let (code, _, err) = finished(child).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("left as it is"), "{err}");
    let doc = setup.status().await;
    assert_eq!(doc["maintenance"]["enabled"], true, "{doc}");
    assert_eq!(doc["maintenance"]["message"], "ours now");
}
