//! The binary as installed software: `--version`, its completions and man
//! page, and what it tells systemd.

use tokio::net::{TcpStream, UnixDatagram};

use crate::support::*;

/// Runs the binary with `args`; its exit code and stdout.
async fn run(args: &[&str]) -> (i32, String) {
    let output = within(tokio::process::Command::new(BIN).args(args).output())
        .await
        .expect("run switchyard");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
async fn the_version_names_the_commit_it_was_built_from() {
    let (code, out) = run(&["--version"]).await;
    assert_eq!(code, 0);
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let commit = commit.unwrap_or_else(|| "unknown".to_owned());
    assert_eq!(
        out,
        format!(
            "switchyard {} (commit {commit})\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[tokio::test]
async fn completions_and_the_man_page_come_from_the_command_line() {
    let (code, bash) = run(&["completions", "bash"]).await;
    assert_eq!(code, 0);
    for word in ["serve", "ctl", "maintenance", "drained", "--config"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    // It parses as bash.
    let dir = TempDir::new();
    let script = dir.write("switchyard.bash", &bash);
    let parsed = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(parsed.success());
    let (_, zsh) = run(&["completions", "zsh"]).await;
    assert!(zsh.starts_with("#compdef switchyard"), "{zsh:.40}");
    let (_, fish) = run(&["completions", "fish"]).await;
    assert!(fish.contains("complete -c switchyard"), "{fish:.80}");
    let (code, _) = run(&["completions", "tcsh"]).await;
    assert_eq!(code, 2, "an unknown shell is a usage error");

    let (code, man) = run(&["man"]).await;
    assert_eq!(code, 0);
    assert!(man.contains(".TH switchyard 1"), "{man:.200}");
    assert!(man.contains("(commit "), "the man page names the version");
    for command in ["serve", "check", "ctl", "completions"] {
        assert!(man.contains(command), "the man page lacks {command}");
    }
}

#[tokio::test]
async fn systemd_hears_ready_once_it_listens_and_stopping_at_sigterm() {
    let blue = Upstream::named("blue").await;
    let dir = TempDir::new();
    let socket = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&socket).unwrap();
    let socket = socket.display().to_string();
    let mut served = Served::start_with(
        &config_text(&[blue.addr], &[blue.addr], ""),
        &[("NOTIFY_SOCKET", &socket)],
    )
    .await;
    let mut message = vec![0u8; 512];
    let n = within(notify.recv(&mut message)).await.unwrap();
    let said = String::from_utf8_lossy(&message[..n]).into_owned();
    assert!(said.lines().any(|l| l == "READY=1"), "{said}");
    // Ready means ready: it answers.
    assert!(TcpStream::connect(served.addr).await.is_ok());
    assert_eq!(get(&format!("http://{}/", served.addr)).await.0, 200);

    served.signal("-TERM").await;
    let n = within(notify.recv(&mut message)).await.unwrap();
    let said = String::from_utf8_lossy(&message[..n]).into_owned();
    assert!(said.lines().any(|l| l == "STOPPING=1"), "{said}");
    let exit = within(served.child.wait()).await.unwrap();
    assert_eq!(exit.code(), Some(0));
}
