//! Pools whose upstreams speak TLS: certificates verified with the pool's
//! CA, HTTP/1.1 for HTTP/1 clients and h2 (by ALPN) for HTTP/2 clients on
//! one shared connection, and that connection's limits and failures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::Request;
use hyper_util::rt::TokioIo;

use crate::support::*;
use crate::tls::Pki;

/// What a test upstream's listener gives back: its address, its task, its
/// certificate's files, and how many connections it accepted.
type TlsServer = (
    std::net::SocketAddr,
    tokio::task::JoinHandle<()>,
    TempDir,
    Arc<AtomicUsize>,
);

/// An upstream speaking TLS with a certificate for `name` signed by `pki`,
/// answering `secure` and the HTTP version it was spoken to with (h2 when
/// the client offers it by ALPN).
async fn tls_upstream(pki: &Pki, name: &str) -> TlsServer {
    tls_server(pki, name, |stream, _| async move {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let service =
            hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
                Ok::<_, std::convert::Infallible>(text(format!("secure {:?}", request.version())))
            });
        let io = TokioIo::new(stream);
        if h2 {
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(io, service)
                .await;
        } else {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        }
    })
    .await
}

/// A TLS listener with a certificate for `name` signed by `pki`, offering
/// h2 and HTTP/1.1 by ALPN, that hands each handshaken connection (and how
/// many came before it) to `serve`.
async fn tls_server<F, Fut>(pki: &Pki, name: &str, serve: F) -> TlsServer
where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, usize) -> Fut
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use switchyard::config::tls::{load_pair, server_config, TlsVersion};
    let dir = TempDir::new();
    let (cert, key) = pki.leaf(&[name]);
    let cert_path = dir.write("upstream.pem", &cert);
    let key_path = dir.write("upstream.key", &key);
    let pair = load_pair(&cert_path, &key_path, std::time::SystemTime::now()).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(TlsVersion::V1_2, &[pair]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let serve = Arc::new(serve);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let before = counted.fetch_add(1, Ordering::SeqCst);
            let (acceptor, serve) = (acceptor.clone(), serve.clone());
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(stream).await {
                    serve(stream, before).await;
                }
            });
        }
    });
    (addr, task, dir, accepted)
}

/// A config of one upstream at `addr` over TLS for both pools, blue's
/// `extra` keys added.
fn tls_pools(addr: std::net::SocketAddr, blue_extra: &str) -> String {
    format!(
        "[listener]\nbind = \"127.0.0.1:0\"\n\n\
         [pools.blue]\nupstreams = [\"{addr}\"]\ntls = true\nca_file = \"ca.pem\"\nserver_name = \"upstream.test\"\n{blue_extra}\n\
         [pools.green]\nupstreams = [\"{addr}\"]\ntls = true\nca_file = \"ca.pem\"\nserver_name = \"upstream.test\"\n\n\
         [health]\ninterval = \"1h\"\ntimeout = \"5s\"\n\n[timeouts]\nconnect = \"3s\"\n"
    )
}

/// An HTTP/2 client (h2c) to the proxy.
fn h2_client(
) -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>
{
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>()
}

/// `request`'s status and body, sent with `client`.
async fn h2_send(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        TestBody,
    >,
    request: Request<TestBody>,
) -> (u16, String) {
    status_and_text(within(client.request(request)).await.unwrap()).await
}

/// The proxy in front of the TLS upstream at `addr`, whose certificate
/// `pki` signed, for both pools, with blue's `blue_extra` keys.
async fn proxy_in_front(pki: &Pki, addr: std::net::SocketAddr, blue_extra: &str) -> Proxy {
    let dir = TempDir::new();
    dir.write("ca.pem", &pki.ca.pem());
    dir.write("switchyard.toml", &tls_pools(addr, blue_extra));
    Proxy::in_dir(dir).await
}

#[tokio::test]
async fn upstreams_over_tls_are_verified_with_the_pools_ca() {
    let pki = Pki::new();
    let (addr, _server, _files, _) = tls_upstream(&pki, "upstream.test").await;
    let stranger = Pki::new();
    let dir = TempDir::new();
    dir.write("ca.pem", &pki.ca.pem());
    dir.write("other-ca.pem", &stranger.ca.pem());
    let text = format!(
        "[listener]\nbind = \"127.0.0.1:0\"\n\n\
         [pools.blue]\nupstreams = [\"{addr}\"]\ntls = true\nca_file = \"other-ca.pem\"\nserver_name = \"upstream.test\"\n\n\
         [pools.green]\nupstreams = [\"{addr}\"]\ntls = true\nca_file = \"ca.pem\"\nserver_name = \"upstream.test\"\n\n\
         [health]\ntimeout = \"5s\"\n"
    );
    dir.write("switchyard.toml", &text);
    let proxy = Proxy::in_dir(dir).await;

    // Blue's CA did not sign the upstream's certificate: a clear 502.
    let (status, _, body) = get(&proxy.url("/")).await;
    assert_eq!(status, 502, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "upstream_tls_failed");

    // Green's CA did: the switch's TLS probe passes, and requests go
    // through: an HTTP/1 client's over HTTP/1.1 (the WebSockets it may ask
    // for need it), an HTTP/2 client's over HTTP/2, which the upstream
    // offers by ALPN.
    let (code, doc) = proxy
        .admin("POST", "/v1/switch", Some(r#"{"to": "green"}"#))
        .await;
    assert_eq!(code, 200, "{doc}");
    let (status, _, body) = get(&proxy.url("/")).await;
    assert_eq!((status, body.as_str()), (200, "secure HTTP/1.1"));
    let answer = h2_send(
        &h2_client(),
        Request::get(proxy.url("/")).body(full("")).unwrap(),
    )
    .await;
    assert_eq!(answer, (200, "secure HTTP/2.0".to_owned()));
}

#[tokio::test]
async fn http2_requests_at_first_contact_share_the_one_connection_a_cap_of_one_allows() {
    let pki = Pki::new();
    let (addr, _server, _files, accepted) = tls_upstream(&pki, "upstream.test").await;
    let proxy = proxy_in_front(&pki, addr, "max_connections = 1\n").await;
    // The first round of health probes, one per pool, then none for an hour.
    eventually("the first probes", || accepted.load(Ordering::SeqCst) >= 2).await;
    let before = accepted.load(Ordering::SeqCst);

    // Eight requests at once, before the proxy knows the upstream speaks
    // h2: one opens the only connection the cap allows, and the others,
    // waiting for room, take the shared connection as soon as it is up,
    // not a 503 once the connect timeout has passed.
    let h2 = h2_client();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (h2, url) = (h2.clone(), proxy.url("/"));
        requests
            .spawn(async move { h2_send(&h2, Request::get(url).body(full("")).unwrap()).await });
    }
    for answer in within(requests.join_all()).await {
        assert_eq!(answer, (200, "secure HTTP/2.0".to_owned()));
    }
    assert_eq!(accepted.load(Ordering::SeqCst) - before, 1);
}

/// An h2 upstream whose connections answer with the rank of the stream
/// on its connection (from 1), and treat each stream as `treat` says of
/// that rank. Over HTTP/1.1 (health probes), it answers `200`.
async fn h2_upstream(
    pki: &Pki,
    treat: fn(usize) -> Treat,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>, TempDir) {
    let (addr, server, files, _) = tls_server(pki, "upstream.test", move |stream, _| async move {
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            let ok = hyper::service::service_fn(|_| async {
                Ok::<_, std::convert::Infallible>(text("ok"))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), ok)
                .await;
            return;
        }
        let Ok(mut connection) = h2::server::handshake(stream).await else {
            return;
        };
        let mut rank = 0;
        while let Some(Ok((_request, mut respond))) = connection.accept().await {
            rank += 1;
            let treatment = treat(rank);
            match treatment {
                Treat::Answer => {}
                Treat::Refuse => {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    continue;
                }
                Treat::GoAwayUnanswered => {
                    connection.abrupt_shutdown(h2::Reason::NO_ERROR);
                    continue;
                }
            }
            let head = http::Response::builder().status(200).body(()).unwrap();
            if let Ok(mut body) = respond.send_response(head, false) {
                let _ = body.send_data(format!("stream {rank}").into(), true);
            }
        }
    })
    .await;
    (addr, server, files)
}

/// What [`h2_upstream`] does with a stream.
#[derive(Clone, Copy)]
enum Treat {
    Answer,
    /// Reset with `REFUSED_STREAM`.
    Refuse,
    /// Say GOAWAY and close the connection, the stream unanswered.
    GoAwayUnanswered,
}

#[tokio::test]
async fn a_stream_the_upstream_refuses_unprocessed_goes_again_on_its_connection() {
    // The second and fourth streams of a connection are refused, as by an
    // upstream at its stream limit just then.
    let pki = Pki::new();
    let (addr, _server, _files) = h2_upstream(&pki, |rank| match rank {
        2 | 4 => Treat::Refuse,
        _ => Treat::Answer,
    })
    .await;
    // One connection at most: the request goes again on the one there is.
    let proxy = proxy_in_front(&pki, addr, "max_connections = 1\n").await;
    let h2 = h2_client();
    let get = || Request::get(proxy.url("/")).body(full("")).unwrap();

    let answer = h2_send(&h2, get()).await;
    assert_eq!(answer, (200, "stream 1".to_owned()));
    let answer = h2_send(&h2, get()).await;
    assert_eq!(answer, (200, "stream 3".to_owned()));
    // A request with a body does not go again: its body went with the
    // refused stream.
    let post = Request::post(proxy.url("/")).body(full("payload")).unwrap();
    let (status, body) = h2_send(&h2, post).await;
    assert_eq!(status, 502, "{body}");
    // And the refusal counts nothing against the upstream's health.
    let answer = h2_send(&h2, get()).await;
    assert_eq!(answer, (200, "stream 5".to_owned()));
}

#[tokio::test]
async fn a_request_lost_with_its_shared_connection_goes_again_on_a_new_one_if_it_may_go_twice() {
    // Each connection answers its first stream; at its second, it says
    // GOAWAY and closes without answering, as an upstream that stops.
    let pki = Pki::new();
    let (addr, _server, _files) = h2_upstream(&pki, |rank| match rank {
        1 => Treat::Answer,
        _ => Treat::GoAwayUnanswered,
    })
    .await;
    let proxy = proxy_in_front(&pki, addr, "max_connections = 1\n").await;
    let h2 = h2_client();
    let get = || Request::get(proxy.url("/")).body(full("")).unwrap();

    let answer = h2_send(&h2, get()).await;
    assert_eq!(answer, (200, "stream 1".to_owned()));
    // Lost with the first connection: sent again, as the first stream of
    // a new one (once the old one has closed: a cap of one).
    let answer = h2_send(&h2, get()).await;
    assert_eq!(answer, (200, "stream 1".to_owned()));
    // A POST may not go twice: the upstream may have acted on it.
    let post = Request::post(proxy.url("/")).body(full("")).unwrap();
    let (status, body) = h2_send(&h2, post).await;
    assert_eq!(status, 502, "{body}");
    let answer = h2_send(&h2, get()).await;
    assert_eq!(answer, (200, "stream 1".to_owned()));
}

#[tokio::test]
async fn upstream_tls_keys_are_checked() {
    let blue = Upstream::named("blue").await;
    let dir = TempDir::new();
    let text = format!(
        "[listener]\nbind = \"127.0.0.1:0\"\n\n[pools.blue]\nupstreams = [\"{}\"]\nca_file = \"ca.pem\"\n\n\
         [pools.green]\nupstreams = [\"{}\"]\ntls = true\nca_file = \"missing.pem\"\nserver_name = \"not a name\"\n",
        blue.addr, blue.addr
    );
    dir.write("switchyard.toml", &text);
    let (code, _, err) = check(&dir.path().join("switchyard.toml")).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("pools.blue.ca_file: only applies with `tls = true`"),
        "{err}"
    );
    assert!(err.contains("pools.green.ca_file: cannot read"), "{err}");
    assert!(
        err.contains("pools.green.server_name: `not a name`"),
        "{err}"
    );
}
