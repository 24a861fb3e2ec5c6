//! `switchyard ctl upgrade`: a new process of the binary takes over the
//! listening sockets of the running one, under load, and the old one
//! drains and exits; or, when the new one cannot, the old one goes on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::support::*;

/// Kills a process the test did not start itself (the new process an
/// upgrade started) when the test ends, however it ends.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// Steady load on `addr` from clients that behave differently: pooled
/// keep-alive, a new connection per request, and a POST whose head and
/// body arrive in two writes. Each request that fails is recorded.
struct Load {
    running: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Load {
        let running = Arc::new(AtomicBool::new(true));
        let answered = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let kinds = ["keep-alive", "new connection", "two-write POST"];
        for kind in kinds.iter().cycle().take(3 * kinds.len()).copied() {
            let (running, answered, failures) =
                (running.clone(), answered.clone(), failures.clone());
            tasks.push(tokio::spawn(async move {
                let pooled = client();
                while running.load(Ordering::Relaxed) {
                    let outcome = match kind {
                        "keep-alive" => keep_alive_get(&pooled, addr).await,
                        "new connection" => raw_exchange(addr, false).await,
                        _ => raw_exchange(addr, true).await,
                    };
                    match outcome {
                        Ok(()) => answered.fetch_add(1, Ordering::Relaxed),
                        Err(error) => {
                            failures.lock().unwrap().push(format!("{kind}: {error}"));
                            0
                        }
                    };
                }
            }));
        }
        Load {
            running,
            answered,
            failures,
            tasks,
        }
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }

    /// Waits until `more` requests past `from` have been answered.
    async fn until_answered(&self, more: usize) {
        let target = self.answered() + more;
        until("the load to be answered", || async {
            self.answered() >= target
        })
        .await;
    }

    async fn stop(self) -> Vec<String> {
        self.running.store(false, Ordering::Relaxed);
        for task in self.tasks {
            within(task).await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        failures
    }
}

async fn keep_alive_get(
    pooled: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        TestBody,
    >,
    addr: std::net::SocketAddr,
) -> Result<(), String> {
    let request = http::Request::get(format!("http://{addr}/"))
        .body(full(""))
        .unwrap();
    let response = within(pooled.request(request))
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    within(http_body_util::BodyExt::collect(response.into_body()))
        .await
        .map_err(|e| e.to_string())?;
    match status.as_u16() {
        200 => Ok(()),
        other => Err(format!("answered {other}")),
    }
}

/// One request on a connection of its own; a POST's head and body are
/// written apart, as many client libraries send them.
async fn raw_exchange(addr: std::net::SocketAddr, post: bool) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect refused: {e}"))?;
    let written = async {
        if post {
            stream
                .write_all(b"POST /form HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
                .await?;
            tokio::task::yield_now().await;
            stream.write_all(b"hello").await
        } else {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
                .await
        }
    };
    written.await.map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    within(stream.read_to_end(&mut answer))
        .await
        .map_err(|e| format!("read: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    match answer.starts_with("HTTP/1.1 200") {
        true => Ok(()),
        false => Err(format!("answered {:?}", answer.lines().next())),
    }
}

/// Runs `ctl upgrade` and returns the new process's pid.
async fn upgrade(config: &str) -> u32 {
    let (code, out, err) = ctl(&["--config", config, "upgrade"], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    out.split("pid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"))
}

/// Whether process `pid` has ended (a zombie nobody reaped counts: an old
/// process's parent may be gone too).
fn exited_or_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

async fn status_json(config: &str) -> serde_json::Value {
    let (code, out, err) = ctl(&["--config", config, "status", "--json"], &[]).await;
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_fails_no_request_and_carries_decisions_and_health_over() {
    let green = Upstream::named("green").await;
    let dead = dead_addr().await;
    let extra =
        "[preview]\nbind = \"127.0.0.1:0\"\n\n[health]\ninterval = \"500ms\"\ntimeout = \"5s\"\n";
    let mut served = Served::start(&config_text(&[dead], &[green.addr], extra)).await;
    let config = served.config.display().to_string();
    until("the preview listener", || async {
        served.logged(&["listening", "route=Preview"])
    })
    .await;
    let preview = served.logged_value("route=Preview", "addr=").unwrap();
    let (code, _, err) = ctl(&["--config", &config, "switch", "green"], &[]).await;
    assert_eq!(code, 0, "{err}");
    // Blue's upstream has failed a few probes in a row by now.
    let failures_of_blue = |status: &serde_json::Value| {
        status["pools"]["blue"]["upstreams"][0]["consecutive_failures"]
            .as_u64()
            .unwrap()
    };
    until("blue's upstream to fail 4 probes", || async {
        failures_of_blue(&status_json(&config).await) >= 4
    })
    .await;
    let before = status_json(&config).await;

    let load = Load::start(served.addr);
    load.until_answered(50).await;
    let pid = upgrade(&config).await;
    let mut started = vec![KillOnDrop(pid)];
    assert_ne!(Some(pid), served.child.id());

    // The health the old process knew is the new one's from the start (it
    // would count from 0, and call the upstream healthy, otherwise).
    let after = status_json(&config).await;
    assert!(
        failures_of_blue(&after) >= failures_of_blue(&before),
        "{after}"
    );
    assert_eq!(after["pools"]["blue"]["upstreams"][0]["healthy"], false);
    assert_eq!(after["live_pool"], "green");
    assert_eq!(after["generation"], before["generation"]);

    // The old process drains and exits 0, and the load goes on, through
    // more upgrades in a row.
    let exited = within(served.child.wait()).await.unwrap();
    assert!(exited.success(), "{exited}");
    load.until_answered(50).await;
    for _ in 0..4 {
        let old = started.last().unwrap().0;
        started.push(KillOnDrop(upgrade(&config).await));
        until("the old process to exit", || async { exited_or_gone(old) }).await;
        load.until_answered(50).await;
    }
    let answered = load.answered();
    let failures = load.stop().await;
    assert!(
        failures.is_empty(),
        "failed requests of {answered}: {failures:?}"
    );

    // The same sockets: the preview listener answers on its port, and the
    // admin socket (not removed by the old process) takes changes, which
    // the new process now writes.
    let answer = raw(
        preview.parse().unwrap(),
        b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    let (code, _, err) = ctl(&["--config", &config, "maintenance", "on"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(status_json(&config).await["maintenance"]["enabled"], true);
    assert!(served.logged(&["the new process has taken over", &format!("pid={pid}")]));
    assert!(!exited_or_gone(started.last().unwrap().0));
}

#[tokio::test]
async fn a_new_process_that_cannot_take_over_leaves_the_old_one_serving() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let served = Served::start(&config_text(&[blue.addr], &[green.addr], "")).await;
    until("the admin socket", || async {
        served.logged(&["admin API listening"])
    })
    .await;
    // The config will not say where it is.
    let socket = served
        .logged_value("admin API listening", "socket=")
        .unwrap();
    let good = std::fs::read_to_string(&served.config).unwrap();
    // The new process reads the config as it is now.
    std::fs::write(
        &served.config,
        good.replace("[pools.green]", "[pools.green]\nbalance = 7"),
    )
    .unwrap();

    let (code, out, err) = ctl(&["--admin", &socket, "upgrade"], &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("could not take over"), "{err}");
    assert!(
        err.contains("switchyard.toml:8") && err.contains("exit status: 1"),
        "the config's problem is named: {err}"
    );
    assert!(err.contains("goes on serving"), "{err}");

    // Nothing changed: it serves, and takes changes (its hold on the
    // state file is back).
    let (status, _, body) = get(&format!("http://{}/", served.addr)).await;
    assert_eq!((status, body.as_str()), (200, "blue"));
    let (code, _, err) = ctl(&["--admin", &socket, "switch", "green"], &[]).await;
    assert_eq!(code, 0, "{err}");
    let (status, _, body) = get(&format!("http://{}/", served.addr)).await;
    assert_eq!((status, body.as_str()), (200, "green"));
}

#[tokio::test]
async fn take_over_is_refused_when_run_by_hand() {
    let dir = TempDir::with_config(&config_text(&[dead_addr().await], &[dead_addr().await], ""));
    let output = within(
        tokio::process::Command::new(BIN)
            .args(["serve", "--take-over", "--config"])
            .arg(dir.path().join("switchyard.toml"))
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("only for the process `switchyard ctl upgrade` starts"),
        "{err}"
    );
}

#[tokio::test]
async fn changes_after_an_upgrade_wait_until_the_old_process_is_gone() {
    let slow = Upstream::start(|_| async move {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        text("slow")
    })
    .await;
    let served = Served::start(&config_text(&[slow.addr], &[slow.addr], "")).await;
    let config = served.config.display().to_string();
    let old = served.child.id().unwrap();
    let url = format!("http://{}/", served.addr);
    let in_flight = tokio::spawn(async move { get(&url).await });
    eventually("the request to reach the upstream", || slow.hits() == 1).await;
    let new = KillOnDrop(upgrade(&config).await);

    // The old process still decides requests on the decisions it had until
    // its request in flight is answered and it exits: a change made before
    // that would not apply to all of them.
    let (code, _, err) = ctl(&["--config", &config, "maintenance", "on"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        exited_or_gone(old),
        "the change was made while the old process served"
    );
    let (status, _, body) = within(in_flight).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "slow"));
    let (status, _, _) = get(&format!("http://{}/", served.addr)).await;
    assert_eq!(status, 503);
    assert!(!exited_or_gone(new.0));
}

#[tokio::test]
async fn an_upgrade_runs_the_binary_at_the_path_it_was_started_from() {
    let blue = Upstream::named("blue").await;
    let dir = TempDir::new();
    // A release layout: `current` links to the release that runs.
    let current = dir.path().join("current");
    std::os::unix::fs::symlink(BIN, &current).unwrap();
    let served =
        Served::start_as(&current, dir, &config_text(&[blue.addr], &[blue.addr], "")).await;
    let config = served.config.display().to_string();
    let dir = served.config.parent().unwrap().to_owned();
    // The next release: a wrapper that leaves a mark, then runs the binary.
    let mark = dir.join("next-release-ran");
    let next = dir.join("next");
    std::fs::write(
        &next,
        format!(
            "#!/bin/sh\ntouch '{}'\nexec '{BIN}' \"$@\"\n",
            mark.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&next, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::remove_file(&current).unwrap();
    std::os::unix::fs::symlink(&next, &current).unwrap();

    let _new = KillOnDrop(upgrade(&config).await);
    assert!(
        mark.exists(),
        "the link was resolved when the old process started"
    );
    let (status, _, body) = get(&format!("http://{}/", served.addr)).await;
    assert_eq!((status, body.as_str()), (200, "blue"));
}

#[tokio::test]
async fn an_upgrade_that_would_move_the_decisions_is_refused() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let served = Served::start(&config_text(&[blue.addr], &[green.addr], "")).await;
    let config = served.config.display().to_string();
    let (code, _, err) = ctl(&["--config", &config, "switch", "green"], &[]).await;
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&served.config).unwrap();
    std::fs::write(
        &served.config,
        format!("{text}\n[state]\nfile = \"elsewhere.json\"\n"),
    )
    .unwrap();

    let (code, _, err) = ctl(&["--config", &config, "upgrade"], &[]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("state.file is now") && err.contains("elsewhere.json"),
        "{err}"
    );
    let (status, _, body) = get(&format!("http://{}/", served.addr)).await;
    assert_eq!((status, body.as_str()), (200, "green"));
}

#[tokio::test]
async fn the_watch_after_a_switch_keeps_its_figures_across_an_upgrade() {
    let blue = Upstream::named("blue").await;
    let failing = Upstream::start(|_| async move {
        let mut answer = text("broken");
        *answer.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        answer
    })
    .await;
    let extra = "[switch]\nwatch = \"2m\"\nmax_error_rate = 0.9\nmin_requests = 100\n";
    let served = Served::start(&config_text(&[blue.addr], &[failing.addr], extra)).await;
    let config = served.config.display().to_string();
    let (code, _, err) = ctl(&["--config", &config, "switch", "green", "--force"], &[]).await;
    assert_eq!(code, 0, "{err}");
    for _ in 0..5 {
        let (status, _, _) = get(&format!("http://{}/", served.addr)).await;
        assert_eq!(status, 500);
    }
    assert_eq!(status_json(&config).await["watch"]["errors"], 5);

    let _new = KillOnDrop(upgrade(&config).await);
    let watch = status_json(&config).await["watch"].clone();
    assert_eq!(
        (watch["requests"].as_u64(), watch["errors"].as_u64()),
        (Some(5), Some(5)),
        "{watch}"
    );
}
