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

use switchyard::config::Config;
use switchyard::proxy::{Route, Server};

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

/// A real HTTP/1.1 upstream server on an ephemeral port.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
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
        let task = tokio::spawn({
            let seen = seen.clone();
            let connections = connections.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let handler = handler.clone();
                    let seen = seen.clone();
                    let service = service_fn(move |request: Request<Incoming>| {
                        seen.lock().unwrap().push(Seen {
                            target: request.uri().to_string(),
                            headers: request.headers().clone(),
                        });
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
            task,
        }
    }

    /// Starts an upstream answering `name` to everything.
    pub async fn named(name: &'static str) -> Upstream {
        Upstream::start(move |_| async move { text(name) }).await
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests reached this upstream.
    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// How many connections were opened to this upstream.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
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
                let mut buf = vec![0u8; 16 * 1024];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
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
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
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
pub fn config_text(blue: &[SocketAddr], green: &[SocketAddr], extra: &str) -> String {
    let list = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[listener]\nbind = \"127.0.0.1:0\"\n\n[pools.blue]\nupstreams = [{}]\n\n[pools.green]\nupstreams = [{}]\n\n{extra}\n",
        list(blue),
        list(green),
    )
}

/// The real proxy, in this process, on an ephemeral port.
pub struct Proxy {
    pub addr: SocketAddr,
    /// The preview listener, when the config has one.
    pub preview: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    _dir: TempDir,
}

impl Proxy {
    /// Starts the proxy in front of `blue` (live) and `green`.
    pub async fn start(blue: &[SocketAddr], green: &[SocketAddr]) -> Proxy {
        Proxy::with_config(&config_text(blue, green, "")).await
    }

    /// Starts the proxy with a whole config text.
    pub async fn with_config(text: &str) -> Proxy {
        let dir = TempDir::new();
        let path = dir.write("switchyard.toml", text);
        let config = Config::load(&path).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let server = Server::bind(config).await.expect("bind proxy");
        let addr = server.local_addr(Route::Live).unwrap();
        let preview = server.local_addr(Route::Preview);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Proxy {
            addr,
            preview,
            stop: Some(stop),
            _dir: dir,
        }
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
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
