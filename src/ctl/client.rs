//! Talking to the admin API: where it is, one call, and its answer read
//! as a document or as the lines of a refusal.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use super::CtlArgs;
use crate::config::Config;
use crate::envelope::ErrorDocument;

/// How long `ctl` waits for the admin API (a switch probes, so allow some).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the admin API is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Socket(PathBuf),
    Tcp {
        authority: String,
        token: Option<String>,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Socket(path) => write!(f, "admin socket {}", path.display()),
            Endpoint::Tcp { authority, .. } => write!(f, "admin API http://{authority}"),
        }
    }
}

/// A failed `ctl` call: what to print, and the exit code.
pub struct Failure {
    /// What to print on stderr, a line each.
    pub lines: Vec<String>,
    /// Whether it is a usage error (exit 2).
    pub usage: bool,
}

impl Failure {
    /// Its lines as one.
    pub fn joined(&self) -> String {
        self.lines.join("; ")
    }

    /// A failure of one line.
    pub fn one(line: impl Into<String>) -> Failure {
        Failure {
            lines: vec![line.into()],
            usage: false,
        }
    }
}

/// Works out where the admin API is.
pub fn endpoint(args: &CtlArgs) -> Result<Endpoint, Failure> {
    if let Some(admin) = &args.admin {
        if let Some(rest) = admin.strip_prefix("http://") {
            let authority = rest.trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') {
                return Err(Failure {
                    lines: vec![format!(
                        "--admin {admin}: expected a socket path or http://HOST:PORT"
                    )],
                    usage: true,
                });
            }
            return Ok(Endpoint::Tcp {
                authority: authority.to_owned(),
                token: std::env::var("SWITCHYARD_TOKEN").ok(),
            });
        }
        if admin.starts_with("https://") {
            return Err(Failure {
                lines: vec!["--admin: the admin API speaks plain HTTP; use http://HOST:PORT or a socket path".to_owned()],
                usage: true,
            });
        }
        return Ok(Endpoint::Socket(PathBuf::from(admin)));
    }
    match Config::load(&args.config) {
        Ok(config) => Ok(Endpoint::Socket(config.admin.socket)),
        Err(error) => {
            let first = error.lines().into_iter().next().unwrap_or_default();
            Err(Failure::one(format!(
                "cannot find the admin socket from the config ({first}); pass --admin SOCKET or set SWITCHYARD_ADMIN"
            )))
        }
    }
}

/// How often, and how far apart, a call refused `handed_over` is sent
/// again: a binary upgrade's old process refuses changes once the new one
/// has taken over, and stops accepting at once, so the next connection
/// reaches the new one.
const HANDED_OVER_RETRIES: u32 = 20;
const HANDED_OVER_PAUSE: Duration = Duration::from_millis(50);

/// One admin call: the status and the body of the answer.
pub async fn call(
    endpoint: &Endpoint,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes), Failure> {
    let mut retries = 0;
    loop {
        let answer = call_once(endpoint, method.clone(), path, body.clone()).await?;
        if retries == HANDED_OVER_RETRIES || !is_handed_over(&answer) {
            return Ok(answer);
        }
        retries += 1;
        tokio::time::sleep(HANDED_OVER_PAUSE).await;
    }
}

/// Whether the answer is a `503 handed_over` (nothing was changed).
fn is_handed_over((status, body): &(StatusCode, Bytes)) -> bool {
    *status == StatusCode::SERVICE_UNAVAILABLE
        && serde_json::from_slice::<serde_json::Value>(body)
            .is_ok_and(|answer| answer["error"]["code"] == "handed_over")
}

async fn call_once(
    endpoint: &Endpoint,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes), Failure> {
    let exchange = async {
        match endpoint {
            Endpoint::Socket(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(|e| unreachable(endpoint, &e))?;
                exchange(stream, endpoint, method, path, body).await
            }
            Endpoint::Tcp { authority, .. } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(|e| unreachable(endpoint, &e))?;
                exchange(stream, endpoint, method, path, body).await
            }
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(Failure::one(format!(
                "{endpoint} did not answer within {}",
                humantime::format_duration(CALL_TIMEOUT)
            )))
        })
}

fn unreachable(endpoint: &Endpoint, error: &std::io::Error) -> Failure {
    Failure::one(format!(
        "cannot reach the {endpoint}: {error} (is `switchyard serve` running with this config?)"
    ))
}

async fn exchange<S>(
    stream: S,
    endpoint: &Endpoint,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes), Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let broken = |e: hyper::Error| Failure::one(format!("the {endpoint} broke off: {e}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(broken)?;
    tokio::spawn(connection);
    let mut request = Request::new(Full::new(body.clone().unwrap_or_default()));
    *request.method_mut() = method;
    *request.uri_mut() = path.parse().expect("admin paths are valid URIs");
    let headers = request.headers_mut();
    let host = match endpoint {
        Endpoint::Socket(_) => HeaderValue::from_static("switchyard"),
        Endpoint::Tcp { authority, .. } => HeaderValue::from_str(authority)
            .map_err(|_| Failure::one(format!("--admin: bad address {authority}")))?,
    };
    headers.insert(HOST, host);
    if body.is_some() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Endpoint::Tcp {
        token: Some(token), ..
    } = endpoint
    {
        let value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| Failure::one("SWITCHYARD_TOKEN holds characters a header cannot"))?;
        headers.insert(AUTHORIZATION, value);
    }
    let response = sender.send_request(request).await.map_err(broken)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(broken)?
        .to_bytes();
    Ok((status, body))
}

/// The document of a success (200 or 201), or the refusal as lines to print.
pub fn expect_ok<T: serde::de::DeserializeOwned>(
    status: StatusCode,
    body: &Bytes,
    what: &str,
) -> Result<T, Failure> {
    if status.is_success() {
        return serde_json::from_slice(body).map_err(|e| {
            Failure::one(format!("{what}: unexpected answer from the admin API: {e}"))
        });
    }
    Err(refusal(status, body, what))
}

/// Nothing for a success without a document (204), or the refusal as
/// lines to print.
pub fn expect_done(status: StatusCode, body: &Bytes, what: &str) -> Result<(), Failure> {
    if status.is_success() {
        return Ok(());
    }
    Err(refusal(status, body, what))
}

/// The lines that say why the admin API refused `what`.
fn refusal(status: StatusCode, body: &Bytes, what: &str) -> Failure {
    let Ok(ErrorDocument { error }) = serde_json::from_slice::<ErrorDocument>(body) else {
        return Failure::one(format!("{what} failed: the admin API answered {status}"));
    };
    let mut first = format!("{what} refused ({}): {}", error.code, error.message);
    if error.code == "unauthorized" {
        first.push_str("; set SWITCHYARD_TOKEN to the admin token");
    }
    // Config problems get a line each, as `check` prints them; other
    // details (each upstream's probe error) fit on the one line.
    let mut lines = Vec::new();
    if error.code == "invalid_config" {
        lines.push(first);
        lines.extend(error.details.iter().map(|d| format!("  {d}")));
    } else {
        if !error.details.is_empty() {
            first.push_str(&format!(" ({})", error.details.join("; ")));
        }
        lines.push(first);
    }
    Failure {
        lines,
        usage: false,
    }
}

/// `value` as a JSON request body.
pub fn json_body(value: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("admin requests serialize"))
}
