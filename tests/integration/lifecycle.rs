//! The `switchyard` binary itself: `check`'s output and exit codes, and
//! `serve`'s graceful stop on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::support::*;

#[tokio::test]
async fn check_accepts_a_valid_file_with_a_summary() {
    let dir = TempDir::new();
    let path = dir.write(
        "ok.toml",
        &config_text(
            &["127.0.0.1:9001".parse().unwrap()],
            &["127.0.0.1:9101".parse().unwrap()],
            "",
        ),
    );
    let (code, stdout, stderr) = check(&path).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        format!(
            "{}: ok: listener 127.0.0.1:0, pools blue (1 upstreams), green (1 upstreams), initial pool blue\n",
            path.display()
        )
    );
}

#[tokio::test]
async fn shipped_example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/switchyard.toml");
    let (code, stdout, stderr) = check(&path).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[tokio::test]
async fn check_lists_every_error_with_its_position() {
    let dir = TempDir::new();
    let text = "\
[listener]
bind = \"localhost\"

[pools.blue]
upstreams = []

[timeouts]
drain = \"soon\"

[state]
initial_pool = \"purple\"
colour = \"red\"
";
    let path = dir.write("bad.toml", text);
    let (code, stdout, stderr) = check(&path).await;
    assert_eq!(code, 1, "{stdout}");
    let p = path.display();
    assert_eq!(
        stderr,
        format!(
            "{p}:2:8: listener.bind: `localhost` is not an address like 127.0.0.1:8080\n\
             {p}:5:13: pools.blue.upstreams: a pool needs at least one upstream\n\
             {p}:8:9: timeouts.drain: invalid value: string \"soon\", expected a duration\n\
             {p}:11:16: state.initial_pool: `purple` is not a pool; expected one of: blue\n\
             {p}:12:1: state.colour: unknown field `colour`, expected `file` or `initial_pool`\n"
        )
    );
}

#[tokio::test]
async fn check_reports_syntax_errors_and_missing_files() {
    let dir = TempDir::new();
    let path = dir.write(
        "broken.toml",
        "[pools.blue\nupstreams = [\"127.0.0.1:1\"]\n",
    );
    let (code, _, stderr) = check(&path).await;
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with(&format!("{}:1:", path.display())),
        "{stderr}"
    );

    let (code, _, stderr) = check(&dir.path().join("missing.toml")).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot read config file"), "{stderr}");
}

#[tokio::test]
async fn sigterm_finishes_the_requests_in_flight_logs_them_and_exits_0() {
    let slow = Upstream::start(|_| async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        text("finished")
    })
    .await;
    let config = config_text(
        &[slow.addr],
        &[slow.addr],
        "[log]\naccess = \"access.log\"\n",
    );
    let mut served = Served::start(&config).await;
    let url = format!("http://{}/slow", served.addr);
    let in_flight: Vec<_> = (0..5)
        .map(|_| tokio::spawn(get_owned(url.clone())))
        .collect();
    eventually("the slow requests reached the upstream", || {
        slow.hits() == 5
    })
    .await;

    served.signal("-TERM").await;

    // New connections are refused once the listener is closed...
    let addr = served.addr;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...while the requests in flight are still running (the listening
    // socket is closed, not merely no longer accepted from)...
    assert!(
        in_flight.iter().all(|request| !request.is_finished()),
        "the listener was refused only once the requests were done"
    );
    // ...and they complete normally.
    for request in in_flight {
        let (status, _, body) = within(request).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "finished"));
    }
    let exit = within(served.child.wait()).await.unwrap();
    assert_eq!(exit.code(), Some(0));
    // Answered in the process's last moments, and logged all the same.
    let log = served.config.with_file_name("access.log");
    let log = std::fs::read_to_string(log).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains("\" 200 ")).count(),
        5,
        "{log}"
    );
}

async fn get_owned(url: String) -> (u16, http::HeaderMap, String) {
    get(&url).await
}

/// The demo binary on any free ports, and its proxy's URL once printed.
async fn start_demo() -> (tokio::process::Child, String) {
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let proxy = within(async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("demo exited before printing its URL");
            if let Some(url) = line.trim_start().strip_prefix("proxy") {
                break url.split_whitespace().next().unwrap().to_owned();
            }
        }
    })
    .await;
    // Read the rest of the tour: a closed pipe would fail the demo's prints.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, proxy)
}

/// Sends `signal` to `child` and waits for it to exit.
async fn stop_with(mut child: tokio::process::Child, signal: &str) -> std::process::ExitStatus {
    let pid = child.id().expect("running").to_string();
    assert!(Command::new("kill")
        .args([signal, &pid])
        .status()
        .await
        .unwrap()
        .success());
    within(child.wait()).await.unwrap()
}

#[tokio::test]
async fn demo_serves_blue_and_stops_cleanly() {
    let (child, proxy) = start_demo().await;
    let (status, headers, body) = get(&proxy).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-demo-pool"], "blue");
    assert!(
        body.starts_with("Hello from blue (instance 1 of 2)"),
        "{body}"
    );
    let (_, _, body) = get(&proxy).await;
    assert!(
        body.starts_with("Hello from blue (instance 2 of 2)"),
        "{body}"
    );

    assert_eq!(stop_with(child, "-INT").await.code(), Some(0));
}

#[tokio::test]
async fn a_demo_whose_terminal_closes_stops() {
    // A daemon reloads on SIGHUP; the demo, run from a terminal, ends with it.
    let (child, proxy) = start_demo().await;
    assert_eq!(get(&proxy).await.0, 200);
    assert_eq!(stop_with(child, "-HUP").await.code(), Some(0));
}

#[tokio::test]
async fn check_refuses_files_that_cannot_be_made() {
    let dir = TempDir::new();
    let text = "[admin]\nsocket = \"gone/admin.sock\"\n[state]\nfile = \"/nonexistent-volume/state.json\"\n[log]\naccess = \".\"\n[pools.blue]\nupstreams = [\"127.0.0.1:9001\"]\n";
    let path = dir.write("dirs.toml", text);
    let (code, stdout, stderr) = check(&path).await;
    assert_eq!(code, 1, "{stdout}");
    let p = path.display();
    assert!(
        stderr.contains(&format!("{p}:2:10: admin.socket: the directory ")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{p}:4:8: state.file: the directory /nonexistent-volume does not exist"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{p}:6:10: log.access: ")) && stderr.contains(" is a directory;"),
        "{stderr}"
    );
}
