//! The proxy's own HTTP/1 engine against hyper's, on the same corpus of
//! requests: valid, edge-case and malicious, pipelined, and split at every
//! byte boundary. Both run as the real binary (hyper's behind
//! `SWITCHYARD_HTTP1_ENGINE=hyper`) in front of the same kind of upstream,
//! which answers each request with what it received; the test compares
//! what each client got back, which includes what each upstream saw.
//!
//! Where the two differ on purpose (the own engine is stricter, or answers
//! in words where hyper closed in silence), the case says so and why.
//! This file goes with hyper's engine.

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// One conversation: the bytes a client sends on one connection.
struct Case {
    name: &'static str,
    bytes: &'static [u8],
    /// Sent split at every byte boundary too.
    split: bool,
    /// How hyper's engine answers instead, when the two differ on purpose:
    /// its transcript, and why the own engine's is the one wanted.
    hyper_differs: Option<(&'static str, &'static str)>,
}

const fn case(name: &'static str, bytes: &'static [u8], split: bool) -> Case {
    Case {
        name,
        bytes,
        split,
        hyper_differs: None,
    }
}

const CORPUS: &[Case] = &[
    case(
        "a plain GET",
        b"GET /a?b=c HTTP/1.1\r\nHost: app.example\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        true,
    ),
    case(
        "keep-alive then close",
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        true,
    ),
    case(
        "a POST with a length, pipelined",
        b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello worldGET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        true,
    ),
    case(
        "a chunked POST with an extension and a trailer",
        b"POST /chunks HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=\"y\"\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        true,
    ),
    case(
        "HTTP/1.0 without keep-alive",
        b"GET /old HTTP/1.0\r\n\r\n",
        true,
    ),
    case(
        "HTTP/1.0 with keep-alive",
        b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /again HTTP/1.0\r\n\r\n",
        false,
    ),
    case(
        "hop-by-hop and forwarded fields",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nX-Original-URL: /admin\r\n\r\n",
        false,
    ),
    case(
        "absolute-form target",
        b"GET http://a/abs?q=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        false,
    ),
    case(
        "dot segments and encoded unreserved characters",
        b"GET /x/../%61/./b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        false,
    ),
    case(
        "OPTIONS *",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        false,
    ),
    case(
        "HEAD",
        b"HEAD /h HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        false,
    ),
    case(
        "an h2c upgrade goes on as plain HTTP",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        false,
    ),
    case(
        "CL and TE together",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        true,
    ),
    case(
        "two different lengths",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabcGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        true,
    ),
    case(
        "a signed length",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
        false,
    ),
    case(
        "gzip, chunked",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        false,
    ),
    case(
        "a chunk size with a sign",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        false,
    ),
    case(
        "two Hosts",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        false,
    ),
    case("no Host", b"GET / HTTP/1.1\r\n\r\n", false),
    case(
        "a Host with userinfo",
        b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
        false,
    ),
    case(
        "a Host that disagrees with the target",
        b"GET http://b/ HTTP/1.1\r\nHost: a\r\n\r\n",
        false,
    ),
    case(
        "a backslash in the path",
        b"GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n",
        false,
    ),
    case(
        "a target that is not a path",
        b"GET ok HTTP/1.1\r\nHost: a\r\n\r\n",
        false,
    ),
    case(
        "CONNECT",
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        false,
    ),
    case(
        "obs-fold",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n",
        false,
    ),
    case(
        "a space before the colon",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        false,
    ),
    case(
        "a chunk-size line ended by a bare LF",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        false,
    ),
    case(
        "chunk data not followed by CRLF",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        false,
    ),
    case(
        "a client waiting for 100 Continue",
        b"PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        false,
    ),
    case(
        "a WebSocket upgrade the upstream does not take",
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        false,
    ),
    case(
        "cookies in two fields",
        b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1\r\nCookie: b=2; switchyard_bypass=x\r\nConnection: close\r\n\r\n",
        false,
    ),
    Case {
        name: "a head over the limit",
        bytes: b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n\r\n",
        split: false,
        hyper_differs: None,
    },
    Case {
        name: "HTTP/2.0 in a request line",
        bytes: b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        split: false,
        hyper_differs: Some((
            "400",
            "505 HTTP Version Not Supported says what is wrong (RFC 9110 §15.6.6)",
        )),
    },
    Case {
        name: "a body the client never finishes",
        bytes: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
        split: false,
        hyper_differs: None,
    },
];

/// An upstream that answers every request with what it received: method,
/// target, the fields that say something about the request (sorted), and
/// the body.
async fn echo_upstream() -> Upstream {
    Upstream::start(|request| async move {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut fields = BTreeMap::new();
        for (name, value) in &parts.headers {
            // Framing is each engine's own, and says nothing of the request.
            if matches!(name.as_str(), "content-length" | "transfer-encoding") {
                continue;
            }
            fields
                .entry(name.as_str().to_owned())
                .or_insert_with(Vec::new)
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        text(format!(
            "seen {} {} {fields:?} body={}",
            parts.method,
            parts.uri,
            String::from_utf8_lossy(&body)
        ))
    })
    .await
}

/// What a client got back on one connection: each answer's status, and
/// for an upstream's answer what the upstream saw. (The proxy's own answers
/// are compared by status: their wording is each engine's.)
fn transcript(raw: &[u8]) -> String {
    let mut answers = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = response.parse(rest) else {
            answers.push(format!("unparsed({} bytes)", rest.len()));
            break;
        };
        let status = response.code.unwrap_or(0);
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            });
        let chunked = response
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
        rest = &rest[len..];
        // An interim answer has no body, and whether one is sent depends
        // on when the body arrived.
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let body = if chunked {
            let (body, used) = dechunk(rest);
            rest = &rest[used..];
            body
        } else {
            let n = length.unwrap_or(rest.len()).min(rest.len());
            let body = rest[..n].to_vec();
            rest = &rest[n..];
            body
        };
        let body = String::from_utf8_lossy(&body).into_owned();
        match body.strip_prefix("seen ") {
            Some(seen) => answers.push(format!("{status}:{seen}")),
            None => answers.push(status.to_string()),
        }
    }
    answers.join(" | ")
}

/// A chunked body's data, and how many bytes it took.
fn dechunk(bytes: &[u8]) -> (Vec<u8>, usize) {
    let mut decoder = switchyard::http1::chunked::Decoder::new();
    let (mut data, mut at) = (Vec::new(), 0);
    while !decoder.is_done() {
        match decoder.decode(&bytes[at..]) {
            Ok((used, switchyard::http1::chunked::Decoded::Data(d))) => {
                data.extend_from_slice(d);
                at += used;
            }
            Ok((used, _)) => {
                at += used;
                if !decoder.is_done() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    (data, at)
}

/// Sends `bytes` (in two writes split at `split`, if given) and reads
/// until the proxy closes the connection.
async fn converse(addr: std::net::SocketAddr, bytes: &[u8], split: Option<usize>) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    match split {
        Some(at) => {
            stream.write_all(&bytes[..at]).await.unwrap();
            // Long enough for the proxy to read the first part alone.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let _ = stream.write_all(&bytes[at..]).await;
        }
        None => {
            let _ = stream.write_all(bytes).await;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_engines_give_the_same_answers_and_upstreams_see_the_same_requests() {
    let upstream = echo_upstream().await;
    let config = with_listener_keys(
        &config_text(
            &[upstream.addr],
            &[upstream.addr],
            "[timeouts]\nheader = \"1s\"\nclient_body = \"1s\"\n",
        ),
        "max_header_bytes = 1024\n",
    );
    let own = Served::start(&config).await;
    let hyper = Served::start_with(&config, &[("SWITCHYARD_HTTP1_ENGINE", "hyper")]).await;

    let mut differences = Vec::new();
    for case in CORPUS {
        let ours = transcript(&converse(own.addr, case.bytes, None).await);
        let theirs = transcript(&converse(hyper.addr, case.bytes, None).await);
        match case.hyper_differs {
            Some((expected, _why)) if theirs == expected && ours != theirs => {}
            Some((expected, why)) => differences.push(format!(
                "{}: expected hyper's {expected:?} beside ours ({why}), got ours {ours:?}, hyper's {theirs:?}",
                case.name
            )),
            None if ours == theirs => {}
            None => differences.push(format!(
                "{}:\n  own:   {ours}\n  hyper: {theirs}",
                case.name
            )),
        }
        if !case.split {
            continue;
        }
        for at in 1..case.bytes.len() {
            let split = transcript(&converse(own.addr, case.bytes, Some(at)).await);
            if split != ours {
                differences.push(format!(
                    "{} split at byte {at}: own engine answered {split:?}, whole {ours:?}",
                    case.name
                ));
            }
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}
