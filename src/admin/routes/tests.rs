//! The router called directly, without a socket.

use super::*;
use crate::config::Config;
use crate::state::{Decisions, SharedState, Snapshot};

/// A router over a fresh state, with its state file in `dir`.
fn router(dir: &std::path::Path) -> Router {
    let text = format!(
        "[state]\nfile = \"{}\"\n[pools.blue]\nupstreams = [\"127.0.0.1:1\"]\n[pools.green]\nupstreams = [\"127.0.0.1:2\"]\n",
        dir.join("state.json").display()
    );
    let config = Config::parse(&dir.join("switchyard.toml"), &text).unwrap();
    let decisions = Decisions::initial(&config);
    let metrics = Arc::new(Metrics::new());
    let snapshot = Snapshot::start(Arc::new(config), decisions, metrics.clone()).unwrap();
    Router::new(
        Control::new(Arc::new(SharedState::new(snapshot)), None),
        metrics,
        Listeners {
            public: None,
            preview: None,
        },
    )
}

async fn call(
    router: &Router,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = router
        .handle(request, Via::Socket(None), Rights::Full)
        .await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn the_router_answers_without_a_socket() {
    let dir = std::env::temp_dir().join(format!("switchyard-router-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let router = router(&dir);
    let (status, doc) = call(&router, Method::GET, "/v1/status", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["live_pool"], "blue");
    let (status, doc) = call(&router, Method::PUT, "/v1/maintenance", "{\"enabled\": 1}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(doc["error"]["code"], "bad_request");
    // Forced, so no probe of the (absent) upstreams is needed.
    let (status, doc) = call(
        &router,
        Method::POST,
        "/v1/switch",
        "{\"to\": \"green\", \"force\": true}",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["live_pool"], "green");
    assert_eq!(
        doc["last_event"]["reason"],
        "switched from blue to green (forced)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
