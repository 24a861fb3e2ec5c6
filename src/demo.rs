//! `switchyard demo`: the whole idea in one command.
//!
//! Starts three tiny built-in apps on loopback (blue with two instances,
//! green with one), writes a config for them into a temporary directory,
//! and serves the proxy in front of them until Ctrl-C. Each app answers
//! with its color and instance, so balancing and pool changes are visible
//! from `curl`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::body::Body;
use crate::config::Config;
use crate::proxy::Route;
use crate::server::Server;

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(listen: SocketAddr) -> ExitCode {
    match tour(listen).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("switchyard demo: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn tour(listen: SocketAddr) -> Result<(), String> {
    let blue = [
        start_app("blue", 1, 2).await?,
        start_app("blue", 2, 2).await?,
    ];
    let green = [start_app("green", 1, 1).await?];
    let dir = std::env::temp_dir().join(format!("switchyard-demo-{}", std::process::id()));
    // `run/` holds the admin socket and the state file.
    std::fs::create_dir_all(dir.join("run"))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let config_path = dir.join("switchyard.toml");
    // The dashboard's token, on the demo's TCP admin listener.
    let token = demo_token()?;
    write_private(&dir.join("run/admin.token"), &token)
        .map_err(|e| format!("cannot write the admin token in {}: {e}", dir.display()))?;
    let config_text = demo_config(listen, &blue, &green);
    std::fs::write(&config_path, config_text)
        .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    let config = Config::load(&config_path).map_err(|e| e.to_string())?;
    let server = Server::bind(config).await.map_err(|e| match e {
        crate::server::ServeError::Bind { .. } => format!(
            "{e}\n  another program has this port; try: switchyard demo --listen 127.0.0.1:0"
        ),
        other => other.to_string(),
    })?
    .without_upgrades("the demo's upstreams live in its own process, and would not outlive it: stop the demo and start it again instead");
    let proxy = server
        .local_addr(Route::Live)
        .ok_or("the proxy listener has no address")?;
    let preview = server
        .local_addr(Route::Preview)
        .ok_or("the preview listener has no address")?;
    let admin = server.admin_socket().to_owned();
    let dashboard = server
        .admin_addr()
        .ok_or("the admin TCP listener has no address")?;
    // Caught before the tour is printed: a Ctrl-C right after it stops
    // the demo cleanly rather than killing it; so does closing its terminal.
    let stop = crate::shutdown::StopSignals::listen_with_hangup();
    let tour = Tour {
        proxy,
        preview,
        blue: &blue,
        green: &green,
        config: &config_path,
        admin: &admin,
        dashboard,
        token: &token,
    };
    tour.print();
    server
        .run(crate::shutdown::stop_requested(stop, "demo stopping"))
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn demo_config(listen: SocketAddr, blue: &[SocketAddr], green: &[SocketAddr]) -> String {
    // The preview listener sits on the next port (any free one with port 0).
    let mut preview = listen;
    if listen.port() != 0 {
        preview.set_port(listen.port().wrapping_add(1));
    }
    let list = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "# Written by `switchyard demo`.\n\
         [listener]\nbind = \"{listen}\"\n\n\
         [preview]\nbind = \"{preview}\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"run/admin.token\"\n\n\
         [state]\ninitial_pool = \"blue\"\n\n\
         [pools.blue]\nupstreams = [{}]\n\n\
         [pools.green]\nupstreams = [{}]\n\n\
         [timeouts]\ndrain = \"2s\"\n\n\
         [log]\naccess = \"stderr\"\n",
        list(blue),
        list(green)
    )
}

/// Where the demo's parts are, for the tour it prints.
struct Tour<'a> {
    proxy: SocketAddr,
    preview: SocketAddr,
    blue: &'a [SocketAddr],
    green: &'a [SocketAddr],
    config: &'a Path,
    admin: &'a Path,
    dashboard: SocketAddr,
    token: &'a str,
}

impl Tour<'_> {
    /// Prints what runs where, and what to try.
    fn print(&self) {
        let Tour {
            proxy,
            preview,
            blue,
            green,
            config,
            admin,
            dashboard,
            token,
        } = self;
        let me = std::env::current_exe()
            .ok()
            .and_then(|p| p.to_str().map(str::to_owned))
            .unwrap_or_else(|| "switchyard".to_owned());
        let addrs = |a: &[SocketAddr]| {
            a.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "\nswitchyard demo is running.\n\n\
         \x20 proxy       http://{proxy}/      live pool: blue\n\
         \x20 preview     http://{preview}/      the pool that is not live: green\n\
         \x20 blue pool   {}   (two instances)\n\
         \x20 green pool  {}\n\
         \x20 config      {}\n\
         \x20 dashboard   http://{dashboard}/      token: {token}\n\n\
         Try:\n\
         \x20 curl http://{proxy}/                  # blue answers, instances in turn\n\
         \x20 curl -i http://{proxy}/hello          # see the X-Forwarded-For the app got\n\
         \x20 curl --http2-prior-knowledge http://{proxy}/   # HTTP/2 (h2c) works too\n\
         \x20 curl http://{preview}/                  # green, through the preview route\n\n\
         Drive it from another terminal:\n\
         \x20 export SWITCHYARD_ADMIN={admin}\n\
         \x20 {me} ctl status\n\
         \x20 {me} ctl switch green          # then curl the proxy again\n\
         \x20 {me} ctl rollback\n\
         \x20 {me} ctl maintenance on --message \"Back at 10:00\" --retry-after 10m\n\
         \x20 curl -i http://{proxy}/          # 503 with Retry-After; a browser gets a page\n\
         \x20 {me} ctl maintenance off\n\
         \x20 {me} check --config {}\n\n\
         Press Ctrl-C to stop.\n",
            addrs(blue),
            addrs(green),
            config.display(),
            config.display(),
            admin = admin.display(),
        );
    }
}

/// Writes `text` to a new file only its owner may read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

/// A fresh random token for the demo's dashboard.
fn demo_token() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "cannot make a random admin token".to_owned())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Starts one demo app on an ephemeral loopback port.
async fn start_app(color: &'static str, instance: u32, of: u32) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot start the {color} demo app: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot start the {color} demo app: {e}"))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service_fn(move |request| async move {
                Ok::<_, Infallible>(answer(color, instance, of, &request))
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok(addr)
}

fn answer(color: &str, instance: u32, of: u32, request: &Request<Incoming>) -> Response<Body> {
    if request.uri().path() == "/health" {
        return Response::new(Body::full("ok\n"));
    }
    let forwarded_for = request
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let text = format!(
        "Hello from {color} (instance {instance} of {of}): {} {} (X-Forwarded-For: {forwarded_for})\n",
        request.method(),
        request.uri().path(),
    );
    let mut response = Response::new(Body::full(text));
    response.headers_mut().insert(
        "x-demo-pool",
        http::HeaderValue::from_static(if color == "blue" { "blue" } else { "green" }),
    );
    response
}
