//! TLS termination with certificates made in the test (rcgen): HTTP/1.1 and
//! h2 by ALPN, SNI, certificate replacement without dropping connections,
//! refusal of a broken pair, `check`'s verdicts, and the https redirect.

use std::sync::Arc;

use http::Request;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::*;

/// A private CA and the leaf certificates it signs.
pub(crate) struct Pki {
    pub(crate) ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Pki {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A certificate for `names`, and its key, as PEM.
    pub(crate) fn leaf(&self, names: &[&str]) -> (String, String) {
        self.leaf_until(names, rcgen::date_time_ymd(4000, 1, 1))
    }

    fn leaf_until(&self, names: &[&str], not_after: time::OffsetDateTime) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = not_after;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client that trusts this CA and offers `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// Accepts any certificate: for tests that look at which one was served,
/// including to a client that sends no SNI.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn inspecting_client() -> Arc<ClientConfig> {
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate))
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn handshake(
    config: Arc<ClientConfig>,
    addr: std::net::SocketAddr,
    name: ServerName<'static>,
) -> TlsStream<TcpStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    within(tokio_rustls::TlsConnector::from(config).connect(name, stream))
        .await
        .expect("TLS handshake")
}

/// The DNS names of the certificate the server presented.
fn served_names(stream: &TlsStream<TcpStream>) -> Vec<String> {
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(certs[0].as_ref()).unwrap();
    let san = cert.subject_alternative_name().unwrap().expect("SANs");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

fn dns(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).unwrap()
}

/// Writes `pairs` as `NAME.pem`/`NAME.key` into `dir`, and a config whose
/// listener serves them in that order.
fn tls_config(dir: &TempDir, blue: &Upstream, pairs: &[(&str, &(String, String))], extra: &str) {
    let mut certs = String::new();
    for (name, (cert, key)) in pairs {
        dir.write(&format!("{name}.pem"), cert);
        dir.write(&format!("{name}.key"), key);
        certs.push_str(&format!(
            "[[listener.tls.certs]]\ncert = \"{name}.pem\"\nkey = \"{name}.key\"\n\n"
        ));
    }
    let text = format!(
        "[listener]\nbind = \"127.0.0.1:0\"\n\n{certs}[pools.blue]\nupstreams = [\"{}\"]\n\n[pools.green]\nupstreams = [\"{}\"]\n\n[health]\ntimeout = \"5s\"\n\n{extra}",
        blue.addr, blue.addr
    );
    dir.write("switchyard.toml", &text);
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
}

/// A proxy whose listener serves one certificate, for `a.test`, in front
/// of `blue`.
async fn serving_a_test(pki: &Pki, blue: &Upstream) -> Proxy {
    let dir = TempDir::new();
    tls_config(&dir, blue, &[("a", &pki.leaf(&["a.test"]))], "");
    Proxy::in_dir(dir).await
}

/// One GET of `path` over an HTTP/1.1 connection on `stream`.
async fn get_over(
    sender: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    path: &str,
) -> (u16, String) {
    let request = Request::get(path)
        .header("host", "a.test")
        .body(full(""))
        .unwrap();
    send_on(sender, request).await
}

async fn http1_over(
    stream: TlsStream<TcpStream>,
) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

#[tokio::test]
async fn tls_carries_http1_and_h2_and_says_https_upstream() {
    let pki = Pki::new();
    let blue = Upstream::named("blue").await;
    let proxy = serving_a_test(&pki, &blue).await;

    let stream = handshake(pki.client(&[b"http/1.1"]), proxy.addr, dns("a.test")).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut sender = http1_over(stream).await;
    assert_eq!(get_over(&mut sender, "/").await, (200, "blue".to_owned()));
    assert_eq!(blue.seen()[0].headers["x-forwarded-proto"], "https");

    let stream = handshake(pki.client(&[b"h2", b"http/1.1"]), proxy.addr, dns("a.test")).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = Request::get("https://a.test/h2").body(full("")).unwrap();
    let response = within(sender.send_request(request)).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn an_idle_tls_connection_is_parked_and_serves_its_next_request() {
    let pki = Pki::new();
    let blue = Upstream::named("blue").await;
    let proxy = serving_a_test(&pki, &blue).await;
    let stream = handshake(pki.client(&[b"http/1.1"]), proxy.addr, dns("a.test")).await;
    let mut sender = http1_over(stream).await;
    assert_eq!(get_over(&mut sender, "/1").await, (200, "blue".to_owned()));
    until("the idle TLS connection is parked", || async {
        parked_connections(&proxy).await == 1
    })
    .await;
    assert_eq!(get_over(&mut sender, "/2").await, (200, "blue".to_owned()));
    assert_eq!(parked_connections(&proxy).await, 0);
    assert_eq!(blue.connections(), 1, "one upstream connection for both");
}

#[tokio::test]
async fn sni_picks_the_certificate_and_no_sni_gets_the_first() {
    let pki = Pki::new();
    let blue = Upstream::named("blue").await;
    let dir = TempDir::new();
    let a = pki.leaf(&["a.test"]);
    let b = pki.leaf(&["b.test", "*.b.test"]);
    tls_config(&dir, &blue, &[("a", &a), ("b", &b)], "");
    let proxy = Proxy::in_dir(dir).await;

    let stream = handshake(inspecting_client(), proxy.addr, dns("b.test")).await;
    assert_eq!(served_names(&stream), ["b.test", "*.b.test"]);
    let stream = handshake(inspecting_client(), proxy.addr, dns("www.b.test")).await;
    assert_eq!(served_names(&stream), ["b.test", "*.b.test"]);
    let stream = handshake(inspecting_client(), proxy.addr, dns("a.test")).await;
    assert_eq!(served_names(&stream), ["a.test"]);
    // An unknown name, and no SNI at all (an IP address), get the first.
    let stream = handshake(inspecting_client(), proxy.addr, dns("other.test")).await;
    assert_eq!(served_names(&stream), ["a.test"]);
    let ip = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let stream = handshake(inspecting_client(), proxy.addr, ip).await;
    assert_eq!(served_names(&stream), ["a.test"]);
    // A verifying client accepts the chain for its name.
    let stream = handshake(pki.client(&[b"http/1.1"]), proxy.addr, dns("b.test")).await;
    let mut sender = http1_over(stream).await;
    assert_eq!(get_over(&mut sender, "/").await.0, 200);
}

#[tokio::test]
async fn a_renewed_certificate_serves_new_handshakes_and_spares_open_connections() {
    let pki = Pki::new();
    let blue = Upstream::named("blue").await;
    let proxy = serving_a_test(&pki, &blue).await;
    let old = handshake(inspecting_client(), proxy.addr, dns("a.test")).await;
    assert_eq!(served_names(&old), ["a.test"]);
    let mut open = http1_over(old).await;
    assert_eq!(get_over(&mut open, "/").await.0, 200);

    let served = |names: &'static [&'static str]| {
        let addr = proxy.addr;
        move || async move {
            let stream = handshake(inspecting_client(), addr, dns("a.test")).await;
            served_names(&stream) == names
        }
    };
    // Written in place, picked up by the watcher.
    let (cert, key) = pki.leaf(&["a.test", "renewed-1.test"]);
    std::fs::write(proxy.dir().join("a.key"), &key).unwrap();
    std::fs::write(proxy.dir().join("a.pem"), &cert).unwrap();
    until(
        "the renewed certificate is served",
        served(&["a.test", "renewed-1.test"]),
    )
    .await;
    // Replaced by rename, as certbot does.
    let (cert, key) = pki.leaf(&["a.test", "renewed-2.test"]);
    let staged = |name: &str, text: &str| {
        let path = proxy.dir().join(format!("{name}.new"));
        std::fs::write(&path, text).unwrap();
        std::fs::rename(&path, proxy.dir().join(name)).unwrap();
    };
    staged("a.key", &key);
    staged("a.pem", &cert);
    until(
        "the renamed-over certificate is served",
        served(&["a.test", "renewed-2.test"]),
    )
    .await;
    // The connection opened before any of this still works.
    assert_eq!(get_over(&mut open, "/").await, (200, "blue".to_owned()));
}

#[tokio::test]
async fn a_symlinked_certificate_swap_is_served() {
    let pki = Pki::new();
    let blue = Upstream::named("blue").await;
    let dir = TempDir::new();
    // The cert-manager / ConfigMap layout: files reached through `..data`.
    let first = dir.path().join("..v1");
    std::fs::create_dir(&first).unwrap();
    let (cert, key) = pki.leaf(&["a.test"]);
    std::fs::write(first.join("tls.crt"), &cert).unwrap();
    std::fs::write(first.join("tls.key"), &key).unwrap();
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", dir.path().join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", dir.path().join("tls.key")).unwrap();
    let text = format!(
        "[listener]\nbind = \"127.0.0.1:0\"\n\n[[listener.tls.certs]]\ncert = \"tls.crt\"\nkey = \"tls.key\"\n\n[pools.blue]\nupstreams = [\"{}\"]\n",
        blue.addr
    );
    dir.write("switchyard.toml", &text);
    let proxy = Proxy::in_dir(dir).await;

    let second = proxy.dir().join("..v2");
    std::fs::create_dir(&second).unwrap();
    let (cert, key) = pki.leaf(&["a.test", "swapped.test"]);
    std::fs::write(second.join("tls.crt"), &cert).unwrap();
    std::fs::write(second.join("tls.key"), &key).unwrap();
    std::os::unix::fs::symlink("..v2", proxy.dir().join("..data_tmp")).unwrap();
    std::fs::rename(proxy.dir().join("..data_tmp"), proxy.dir().join("..data")).unwrap();
    let addr = proxy.addr;
    until("the swapped certificate is served", || async move {
        let stream = handshake(inspecting_client(), addr, dns("a.test")).await;
        served_names(&stream) == ["a.test", "swapped.test"]
    })
    .await;
}

#[tokio::test]
async fn a_broken_replacement_is_refused_and_the_old_pair_keeps_serving() {
    let pki = Pki::new();
    let blue = Upstream::named("blue").await;
    let proxy = serving_a_test(&pki, &blue).await;
    // A key that belongs to another certificate.
    let (_, other_key) = pki.leaf(&["a.test"]);
    std::fs::write(proxy.dir().join("a.key"), other_key).unwrap();
    let (status, doc) = proxy.admin("POST", "/v1/reload", None).await;
    assert_eq!(status, 422, "{doc}");
    let detail = doc["error"]["details"][0].as_str().unwrap();
    assert!(
        detail.contains("does not belong to the certificate"),
        "{detail}"
    );
    let stream = handshake(pki.client(&[b"http/1.1"]), proxy.addr, dns("a.test")).await;
    let mut sender = http1_over(stream).await;
    assert_eq!(get_over(&mut sender, "/").await, (200, "blue".to_owned()));
    let (_, status) = proxy.admin("GET", "/v1/status", None).await;
    assert_eq!(status["config"]["certificates"][0]["names"][0], "a.test");
}

#[tokio::test]
async fn check_reports_certificates_and_flags_bad_ones() {
    let pki = Pki::new();
    let blue = Upstream::named("blue").await;

    let dir = TempDir::new();
    tls_config(
        &dir,
        &blue,
        &[("a", &pki.leaf(&["a.test", "www.a.test"]))],
        "",
    );
    let (code, out, err) = check(&dir.path().join("switchyard.toml")).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("a.pem: a.test, www.a.test; expires 4000-01-01"),
        "{out}"
    );

    let (cert, _) = pki.leaf(&["a.test"]);
    let (_, other_key) = pki.leaf(&["a.test"]);
    tls_config(&dir, &blue, &[("a", &(cert, other_key))], "");
    let (code, _, err) = check(&dir.path().join("switchyard.toml")).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("a.key does not belong to the certificate"),
        "{err}"
    );
    assert!(err.contains(":6:7:"), "the key's line is named: {err}");

    let expired = pki.leaf_until(&["a.test"], rcgen::date_time_ymd(2021, 1, 1));
    tls_config(&dir, &blue, &[("a", &expired)], "");
    let (code, _, err) = check(&dir.path().join("switchyard.toml")).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("the certificate expired at 2021-01-01"),
        "{err}"
    );

    let soon = time::OffsetDateTime::now_utc() + time::Duration::days(5);
    tls_config(
        &dir,
        &blue,
        &[("a", &pki.leaf_until(&["a.test"], soon))],
        "",
    );
    let (code, _, err) = check(&dir.path().join("switchyard.toml")).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning:") && err.contains("within 14 days"),
        "{err}"
    );

    let text = std::fs::read_to_string(dir.path().join("switchyard.toml"))
        .unwrap()
        .replace("[listener]\n", "[listener]\nredirect_https = true\n")
        .replace(
            "[[listener.tls.certs]]",
            "[listener.tls]\nmin_version = \"1.1\"\n\n[[listener.tls.certs]]",
        );
    dir.write("switchyard.toml", &text);
    let (code, _, err) = check(&dir.path().join("switchyard.toml")).await;
    assert_eq!(code, 1);
    assert!(err.contains("redirect_https"), "{err}");
    assert!(err.contains("`1.1` is not \"1.2\" or \"1.3\""), "{err}");
}

#[tokio::test]
async fn a_plain_listener_can_redirect_to_https() {
    let blue = Upstream::named("blue").await;
    let text = config_text(&[blue.addr], &[blue.addr], "")
        .replace("[listener]\n", "[listener]\nredirect_https = true\n");
    let proxy = Proxy::with_config(&text).await;
    let request = Request::get(proxy.url("/cart?item=42"))
        .header("host", "shop.test:8080")
        .body(full(""))
        .unwrap();
    let (status, headers, _) = send(request).await;
    assert_eq!(status, 308);
    assert_eq!(headers["location"], "https://shop.test/cart?item=42");
    assert_eq!(blue.hits(), 0);
}

#[tokio::test]
async fn min_version_1_3_refuses_tls_1_2_clients() {
    let pki = Pki::new();
    let blue = Upstream::named("blue").await;
    let dir = TempDir::new();
    tls_config(&dir, &blue, &[("a", &pki.leaf(&["a.test"]))], "");
    let text = std::fs::read_to_string(dir.path().join("switchyard.toml"))
        .unwrap()
        .replacen(
            "[[listener.tls.certs]]",
            "[listener.tls]\nmin_version = \"1.3\"\n\n[[listener.tls.certs]]",
            1,
        );
    dir.write("switchyard.toml", &text);
    let proxy = Proxy::in_dir(dir).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let tls12_only =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let refused = within(
        tokio_rustls::TlsConnector::from(Arc::new(tls12_only)).connect(dns("a.test"), stream),
    )
    .await;
    assert!(refused.is_err(), "a TLS 1.2 client got through");
    let stream = handshake(pki.client(&[b"http/1.1"]), proxy.addr, dns("a.test")).await;
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn the_preview_listener_terminates_tls_too() {
    let pki = Pki::new();
    let blue = Upstream::named("blue").await;
    let green = Upstream::named("green").await;
    let dir = TempDir::new();
    let (cert, key) = pki.leaf(&["preview.test"]);
    dir.write("preview.pem", &cert);
    dir.write("preview.key", &key);
    let text = config_text(
        &[blue.addr],
        &[green.addr],
        "[preview]\nbind = \"127.0.0.1:0\"\n\n[[preview.tls.certs]]\ncert = \"preview.pem\"\nkey = \"preview.key\"\n",
    );
    dir.write("switchyard.toml", &text);
    let proxy = Proxy::in_dir(dir).await;
    let preview = proxy.preview.expect("the preview listener");
    let stream = handshake(pki.client(&[b"http/1.1"]), preview, dns("preview.test")).await;
    let mut sender = http1_over(stream).await;
    assert_eq!(get_over(&mut sender, "/").await, (200, "green".to_owned()));
    assert_eq!(green.seen()[0].headers["x-forwarded-proto"], "https");
    // The public listener stays plain.
    assert_eq!(get(&proxy.url("/")).await.2, "blue");
}

#[tokio::test]
async fn plain_http_sent_to_a_tls_listener_gets_a_400_in_http() {
    let pki = Pki::new();
    let blue = Upstream::named("blue").await;
    let proxy = serving_a_test(&pki, &blue).await;
    let answer = raw(proxy.addr, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(answer.contains("HTTPS"), "{answer}");
    assert_eq!(blue.hits(), 0);
}
