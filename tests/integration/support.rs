//! The harness: real upstream servers, the real proxy on ephemeral loopback
//! ports, raw sockets and HTTP clients to talk to it, and deadlines for
//! every wait. Everything started here is stopped on drop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use serde_json::Value;
use switchyard::config::Config;
use switchyard::proxy::Route;
use switchyard::server::Server;

/// The longest any single wait in a test may take.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A body an upstream handler answers with.
pub type TestBody = BoxBody<Bytes, hyper::Error>;
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

/// A complete in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A plain `200` with `text`.
pub fn text(text: impl Into<Bytes>) -> Response<TestBody> {
    Response::new(full(text))
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Path and query.
    pub target: String,
    /// Headers as received.
    pub headers: HeaderMap,
}

/// The `User-Agent` switchyard's health probes send.
pub const PROBE: &str = "switchyard-health";

/// A real HTTP/1.1 upstream server on an ephemeral port. What it counts
/// (`seen`, `hits`, `connections`) leaves health probes out; `probes`
/// counts those.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream answering every request with `handler`.
    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |request| Box::pin(handler(request)));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let probes = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let seen = seen.clone();
            let connections = connections.clone();
            let probes = probes.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let handler = handler.clone();
                    let seen = seen.clone();
                    let (connections, probes) = (connections.clone(), probes.clone());
                    // A connection counts once it carries a request that
                    // is not a probe.
                    let counted = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let service = service_fn(move |request: Request<Incoming>| {
                        let probe = request
                            .headers()
                            .get("user-agent")
                            .is_some_and(|ua| ua == PROBE);
                        if probe {
                            probes.fetch_add(1, Ordering::SeqCst);
                        } else {
                            if !counted.swap(true, Ordering::SeqCst) {
                                connections.fetch_add(1, Ordering::SeqCst);
                            }
                            seen.lock().unwrap().push(Seen {
                                target: request.uri().to_string(),
                                headers: request.headers().clone(),
                            });
                        }
                        let answer = handler(request);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    tokio::spawn(
                        http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades(),
                    );
                }
            }
        });
        Upstream {
            addr,
            seen,
            connections,
            probes,
            task,
        }
    }

    /// Starts an upstream answering `name` to everything.
    pub async fn named(name: &'static str) -> Upstream {
        Upstream::start(move |_| async move { text(name) }).await
    }

    /// Starts an upstream that takes requests and never answers them
    /// (its health probes it answers).
    pub async fn unanswering() -> Upstream {
        Upstream::start(|request| async move {
            if request
                .headers()
                .get("user-agent")
                .is_some_and(|ua| ua == PROBE)
            {
                return text("ok");
            }
            std::future::pending().await
        })
        .await
    }

    /// Starts an upstream that accepts WebSocket upgrades and echoes every
    /// byte that arrives afterwards.
    pub async fn websocket_echo() -> Upstream {
        Upstream::start(|mut request| async move {
            // Health probes and plain requests get a plain answer.
            if !request.headers().contains_key("upgrade") {
                return text("websocket echo");
            }
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(http::StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(full(""))
                .unwrap()
        })
        .await
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests reached this upstream.
    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// How many connections carried requests (not probes) to this upstream.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// How many health probes reached this upstream.
    pub fn probes(&self) -> usize {
        self.probes.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address nothing listens on (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Reads from `stream` until a whole request head has arrived (and
/// whatever came with it); `false` if the stream ended first.
pub async fn read_head(stream: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// A raw TCP upstream that answers each connection's first request with
/// `reply` bytes, verbatim, then closes.
pub async fn raw_upstream(reply: &'static [u8]) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if !read_head(&mut stream).await {
                    return;
                }
                let _ = stream.write_all(reply).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        // `run/`, for the admin socket and state file: serving never
        // creates a missing directory.
        std::fs::create_dir_all(dir.join("run")).unwrap();
        TempDir(dir)
    }

    /// A directory holding `switchyard.toml` with `text`, and an empty
    /// `run/` for the admin socket and state file.
    pub fn with_config(text: &str) -> TempDir {
        let dir = TempDir::new();
        dir.write("switchyard.toml", text);
        dir
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` inside the directory.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config with the listener on an ephemeral port and the given pools
/// (`blue` live), plus `extra` TOML appended.
///
/// Unless `extra` has its own `[health]`, probes get a generous timeout: a
/// test machine starved of CPU must not see its upstreams turn unhealthy
/// behind the test's back.
pub fn config_text(blue: &[SocketAddr], green: &[SocketAddr], extra: &str) -> String {
    let list = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let health = if extra.contains("[health]") {
        ""
    } else {
        "[health]\ntimeout = \"5s\"\n\n"
    };
    format!(
        "[listener]\nbind = \"127.0.0.1:0\"\n\n[pools.blue]\nupstreams = [{}]\n\n[pools.green]\nupstreams = [{}]\n\n{health}{extra}\n",
        list(blue),
        list(green),
    )
}

/// `config` (from [`config_text`]) with more keys in its `[listener]`.
pub fn with_listener_keys(config: &str, keys: &str) -> String {
    let bind = "bind = \"127.0.0.1:0\"\n";
    config.replacen(bind, &format!("{bind}{keys}"), 1)
}

/// The real proxy, in this process, on an ephemeral port, with its config,
/// admin socket and state file in its own temporary directory.
pub struct Proxy {
    pub addr: SocketAddr,
    /// The preview listener, when the config has one.
    pub preview: Option<SocketAddr>,
    /// The admin unix socket.
    pub admin: PathBuf,
    /// The TCP admin listener, when the config has one.
    pub admin_tcp: Option<SocketAddr>,
    /// The config file.
    pub config: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    running: Option<JoinHandle<()>>,
    dir: Option<TempDir>,
}

impl Proxy {
    /// Starts the proxy in front of `blue` (live) and `green`.
    pub async fn start(blue: &[SocketAddr], green: &[SocketAddr]) -> Proxy {
        Proxy::with_config(&config_text(blue, green, "")).await
    }

    /// Starts the proxy with a whole config text.
    pub async fn with_config(text: &str) -> Proxy {
        let dir = TempDir::new();
        dir.write("switchyard.toml", text);
        Proxy::in_dir(dir).await
    }

    /// Starts the proxy on the `switchyard.toml` already in `dir`, panicking
    /// with the reason if it does not start.
    pub async fn in_dir(dir: TempDir) -> Proxy {
        match Proxy::try_in_dir(dir).await {
            Ok(proxy) => proxy,
            Err((error, _)) => panic!("proxy did not start: {error}"),
        }
    }

    /// Starts the proxy on the `switchyard.toml` in `dir`; on failure, the
    /// reason and the directory back.
    pub async fn try_in_dir(dir: TempDir) -> Result<Proxy, (String, TempDir)> {
        let path = dir.path().join("switchyard.toml");
        let config = match Config::load(&path) {
            Ok(config) => config,
            Err(e) => return Err((e.to_string(), dir)),
        };
        let server = match Server::bind(config).await {
            Ok(server) => server,
            Err(e) => return Err((e.to_string(), dir)),
        };
        let addr = server.local_addr(Route::Live).unwrap();
        let preview = server.local_addr(Route::Preview);
        let admin = server.admin_socket().to_owned();
        let admin_tcp = server.admin_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Ok(Proxy {
            addr,
            preview,
            admin,
            admin_tcp,
            config: path,
            stop: Some(stop),
            running: Some(running),
            dir: Some(dir),
        })
    }

    /// The proxy's directory.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory lives as long as the proxy")
            .path()
    }

    /// Stops the proxy gracefully, waits until it has, and hands back its
    /// directory (config, state file) for a restart.
    pub async fn stop(mut self) -> TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = self.running.take() {
            within(running).await.expect("server task");
        }
        self.dir.take().expect("the directory is still here")
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// One admin call over the unix socket: status and JSON body.
    pub async fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        admin_call(&self.admin, method, path, body).await
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The value of the metric `name` (a gauge or counter without labels).
pub async fn metric(proxy: &Proxy, name: &str) -> i64 {
    let (_, metrics) = proxy.admin("GET", "/metrics", None).await;
    let metrics = metrics.as_str().expect("metrics are text").to_owned();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}

/// The proxy's `switchyard_parked_connections` gauge: idle HTTP/1
/// connections parked.
pub async fn parked_connections(proxy: &Proxy) -> i64 {
    metric(proxy, "switchyard_parked_connections").await
}

/// One admin call over the unix socket at `socket`: status and JSON body
/// (or the text as a JSON string when the body is not JSON).
pub async fn admin_call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let stream = within(tokio::net::UnixStream::connect(socket))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", socket.display()));
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "switchyard")
        .body(full(body.unwrap_or("").to_owned()))
        .unwrap();
    let (status, text) = exchange(stream, request).await;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Sends one request on a fresh HTTP/1 connection over `stream`.
pub async fn exchange<S>(stream: S, request: Request<TestBody>) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        within(hyper::client::conn::http1::handshake(TokioIo::new(stream)))
            .await
            .unwrap();
    tokio::spawn(connection);
    send_on(&mut sender, request).await
}

/// Sends `request` on an open HTTP/1 connection: status and body text.
pub async fn send_on(
    sender: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    request: Request<TestBody>,
) -> (u16, String) {
    let response = within(sender.send_request(request)).await.unwrap();
    status_and_text(response).await
}

/// An answer's status and its whole body as text.
pub async fn status_and_text(response: Response<hyper::body::Incoming>) -> (u16, String) {
    let status = response.status().as_u16();
    let body = within(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// An HTTP/1.1 client that reuses connections.
pub fn client(
) -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>
{
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// GETs `url` and returns status, headers and body text.
pub async fn get(url: &str) -> (u16, HeaderMap, String) {
    let request = Request::get(url).body(full("")).unwrap();
    send(request).await
}

/// Sends `request` with a fresh client and reads the whole answer.
pub async fn send(request: Request<TestBody>) -> (u16, HeaderMap, String) {
    let response = within(client().request(request))
        .await
        .expect("request failed");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = within(response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Writes raw bytes to `addr` and reads until the proxy closes the
/// connection (or the deadline passes, which fails the test).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_to_close(&mut stream).await
}

/// Reads until EOF or reset, under the deadline.
pub async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match within(stream.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Awaits `future`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .expect("timed out waiting")
}

/// Polls `check` until it is true, failing the test after [`DEADLINE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The status code of a raw HTTP/1 answer.
pub fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

/// Polls the async `check` until it is true, failing the test after
/// [`DEADLINE`].
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP/2 connection to `addr` (prior knowledge), ready for requests,
/// and the task that drives it.
pub async fn h2_connect(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = within(h2::client::handshake(tcp)).await.unwrap();
    let connection = tokio::spawn(connection);
    (within(client.ready()).await.unwrap(), connection)
}

/// The `switchyard` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// The real binary serving; killed on drop if still running.
pub struct Served {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    /// The config file.
    pub config: PathBuf,
    /// Every line it has logged so far.
    log: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl Served {
    /// Runs `switchyard serve` on `config` in a fresh directory and waits
    /// until it listens.
    pub async fn start(config: &str) -> Served {
        Served::start_with(config, &[]).await
    }

    /// [`Served::start`] with `files` (name, contents) beside the config.
    pub async fn start_with_files(config: &str, files: &[(&str, &str)]) -> Served {
        let dir = TempDir::new();
        for (name, contents) in files {
            dir.write(name, contents);
        }
        Served::start_in(dir, config, &[]).await
    }

    /// [`Served::start`] with `envs` set for the process.
    pub async fn start_with(config: &str, envs: &[(&str, &str)]) -> Served {
        Served::start_in(TempDir::new(), config, envs).await
    }

    /// [`Served::start`] in `dir`, the binary run as `binary` (a link to
    /// [`BIN`], say).
    pub async fn start_as(binary: &Path, dir: TempDir, config: &str) -> Served {
        Served::start_from(binary, dir, config, &[]).await
    }

    async fn start_in(dir: TempDir, config: &str, envs: &[(&str, &str)]) -> Served {
        Served::start_from(Path::new(BIN), dir, config, envs).await
    }

    async fn start_from(
        binary: &Path,
        dir: TempDir,
        config: &str,
        envs: &[(&str, &str)],
    ) -> Served {
        use tokio::io::AsyncBufReadExt;
        let path = dir.write("switchyard.toml", config);
        let mut child = tokio::process::Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied())
            .env_remove("SWITCHYARD_ADMIN")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start switchyard");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let addr = within(async {
            loop {
                let line = lines.next_line().await.unwrap().unwrap_or_else(|| {
                    panic!(
                        "switchyard exited before listening: {:?}",
                        log.lock().unwrap()
                    )
                });
                log.lock().unwrap().push(line.clone());
                if let Some(rest) = line.split("listening addr=").nth(1) {
                    break rest.split_whitespace().next().unwrap().parse().unwrap();
                }
                // With `log.format = "json"`.
                if line.contains("\"message\":\"listening\"") {
                    let rest = line.split("\"addr\":\"").nth(1).unwrap();
                    break rest.split('"').next().unwrap().parse().unwrap();
                }
            }
        })
        .await;
        // Keep reading stderr so the child never blocks on a full pipe.
        let keep = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                keep.lock().unwrap().push(line);
            }
        });
        Served {
            child,
            addr,
            config: path,
            log,
            _dir: dir,
        }
    }

    /// Whether any logged line contains every one of `parts`.
    pub fn logged(&self, parts: &[&str]) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|line| parts.iter().all(|p| line.contains(p)))
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The value after `key` on the first logged line containing `marker`.
    pub fn logged_value(&self, marker: &str, key: &str) -> Option<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(marker))
            .find_map(|line| line.split(key).nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    }

    /// Sends `signal` (`-TERM`, `-HUP`) to the process.
    pub async fn signal(&self, signal: &str) {
        send_signal(self.child.id().expect("running"), signal).await;
    }
}

/// Sends `signal` (`-TERM`, `-STOP`, ...) to process `pid` with kill(1).
pub async fn send_signal(pid: u32, signal: &str) {
    let sent = tokio::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
}

/// Reads from `stream` until what was read ends with `tail`; fails the test
/// if the connection closes first.
pub async fn read_answer(stream: &mut TcpStream, tail: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).ends_with(tail) {
        let n = within(stream.read(&mut buf)).await.unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends a WebSocket upgrade request to `addr`; the open stream and the
/// answer's head.
pub async fn open_websocket(addr: SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = ask_for_websocket(&mut stream).await;
    (stream, head)
}

/// Sends a WebSocket upgrade request on `stream`; the answer's head.
pub async fn ask_for_websocket(stream: &mut TcpStream) -> String {
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    read_answer(stream, "\r\n\r\n").await
}

/// Sends a masked text frame "hello" (RFC 6455 §5.7) on an open WebSocket
/// and tells whether it came back verbatim (`false`: the tunnel is closed).
pub async fn websocket_echoes(stream: &mut TcpStream) -> bool {
    let frame = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    if stream.write_all(&frame).await.is_err() {
        return false;
    }
    let mut echoed = [0u8; 11];
    match within(stream.read_exact(&mut echoed)).await {
        Ok(_) => {
            assert_eq!(echoed, frame);
            true
        }
        Err(_) => false,
    }
}

/// Runs `switchyard check --config PATH`: exit code, stdout, stderr.
pub async fn check(path: &Path) -> (i32, String, String) {
    let output = within(
        tokio::process::Command::new(BIN)
            .arg("check")
            .arg("--config")
            .arg(path)
            .output(),
    )
    .await
    .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A real etcd (Debian's `etcd-server`), on free loopback ports with its
/// own data directory; killed on drop.
pub struct EtcdServer {
    child: Option<tokio::process::Child>,
    /// `http://127.0.0.1:PORT`, what a `[cluster]` config names.
    pub endpoint: String,
    client_port: u16,
    peer_port: u16,
    dir: TempDir,
}

/// A port nothing listens on now (the listener is closed at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl EtcdServer {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> EtcdServer {
        let (client_port, peer_port) = (free_port(), free_port());
        let mut etcd = EtcdServer {
            child: None,
            endpoint: format!("http://127.0.0.1:{client_port}"),
            client_port,
            peer_port,
            dir: TempDir::new(),
        };
        etcd.run().await;
        etcd
    }

    async fn run(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = tokio::process::Command::new("etcd")
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.dir.path().join("etcd"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start etcd (Debian's etcd-server)");
        self.child = Some(child);
        let port = self.client_port;
        until("etcd answers", || async move {
            let health = tokio::time::timeout(Duration::from_millis(500), etcd_health(port));
            matches!(health.await, Ok(Some(true)))
        })
        .await;
    }

    /// Kills etcd (the data stays, for [`EtcdServer::restart`]).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to etcd.
    pub async fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(tokio::process::Child::id)
            .expect("etcd is running");
        send_signal(pid, signal).await;
    }

    /// Starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.run().await;
    }
}

/// Whether the etcd on `port` says it is healthy; `None` if it does not
/// answer.
async fn etcd_health(port: u16) -> Option<bool> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .await
        .ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    Some(String::from_utf8_lossy(&answer).contains("\"health\":\"true\""))
}

/// Runs `switchyard ctl ARGS` and returns exit code, stdout and stderr.
pub async fn ctl(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(BIN);
    command
        .arg("ctl")
        .args(args)
        .env_remove("SWITCHYARD_ADMIN")
        .env_remove("SWITCHYARD_CONFIG")
        .env_remove("SWITCHYARD_TOKEN");
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = within(command.output()).await.unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// An RFC 3339 time `from_now` ahead (or behind, if negative).
pub fn rfc3339_in(seconds: i64) -> String {
    let now = std::time::SystemTime::now();
    let at = if seconds >= 0 {
        now + std::time::Duration::from_secs(seconds.unsigned_abs())
    } else {
        now - std::time::Duration::from_secs(seconds.unsigned_abs())
    };
    humantime::format_rfc3339_seconds(at).to_string()
}
