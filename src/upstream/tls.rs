//! The client of a pool's TLS upstreams: hyper-util's pooling client over
//! rustls, which also speaks HTTP/2 to an upstream that offers it. (Plain
//! upstreams are reached on kept-alive connections of the proxy's own, see
//! [`super::keepalive`].)

use std::time::Duration;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::config::tls::UpstreamTls;

/// The pooled HTTP client that talks to a pool's TLS upstreams.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Builds the client for a pool's TLS upstreams: verified against its CA
/// (or the system's roots), HTTP/2 when the upstream offers it by ALPN.
pub fn client(connect_timeout: Duration, tls: &UpstreamTls) -> UpstreamClient {
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config((*tls.client).clone())
        .https_only();
    // Validation checked the name parses.
    let name = tls
        .server_name
        .as_ref()
        .and_then(|n| rustls::pki_types::ServerName::try_from(n.clone()).ok());
    let builder = match name {
        Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name)),
        None => builder,
    };
    let connector = builder
        .enable_all_versions()
        .wrap_connector(http_connector(connect_timeout));
    build(connector)
}

fn http_connector(connect_timeout: Duration) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    // The TLS layer above decides what the scheme allows.
    connector.enforce_http(false);
    connector
}

fn build(connector: HttpsConnector<HttpConnector>) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        // The client's own Host would be the upstream's address; the
        // proxy passes the client's Host through instead.
        .set_host(false)
        .build(connector)
}
