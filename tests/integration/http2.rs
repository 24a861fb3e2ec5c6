//! HTTP/2 clients in front of HTTP/1.1 upstreams: their requests go out
//! on the proxy's own HTTP/1 connections, framed as they came, and the
//! answers come back whole however the upstream framed them.

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;

use crate::support::*;

/// An HTTP/2 connection to `proxy` (prior knowledge), ready for requests.
async fn h2_client(proxy: &Proxy) -> h2::client::SendRequest<Bytes> {
    h2_connect(proxy.addr).await.0
}

/// Sends `request` with `chunks` as its body (each a DATA frame, a short
/// pause between them) and reads the whole answer: its status, its
/// headers, and its body, or the error that cut it.
async fn exchange_h2(
    client: &mut h2::client::SendRequest<Bytes>,
    request: Request<()>,
    chunks: &[&'static [u8]],
) -> (u16, http::HeaderMap, Result<Vec<u8>, h2::Error>) {
    *client = within(client.clone().ready()).await.unwrap();
    let (answer, mut stream) = client.send_request(request, chunks.is_empty()).unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        stream
            .send_data(Bytes::from_static(chunk), i + 1 == chunks.len())
            .unwrap();
    }
    let answer = within(answer).await.unwrap();
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    let mut body = answer.into_body();
    let mut data = Vec::new();
    let read = within(async {
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    })
    .await;
    (status, headers, read)
}

#[tokio::test]
async fn bodies_go_out_framed_as_they_came_on_kept_alive_connections() {
    let upstream = Upstream::start(|request| async move {
        let field = |name: &str| {
            request
                .headers()
                .get(name)
                .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
        };
        let framing = format!("{} {}", field("content-length"), field("transfer-encoding"));
        let body = request.into_body().collect().await.unwrap().to_bytes();
        text(format!("{framing} {}", String::from_utf8_lossy(&body)))
    })
    .await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let mut client = h2_client(&proxy).await;

    let with_length = Request::post("http://a.example/form")
        .header("content-length", "11")
        .body(())
        .unwrap();
    let (status, _, body) = exchange_h2(&mut client, with_length, &[b"hello", b" world"]).await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), b"11 - hello world");

    // No length: the upstream gets it chunked, and whole.
    let streamed = Request::post("http://a.example/stream").body(()).unwrap();
    let (status, _, body) = exchange_h2(&mut client, streamed, &[b"one,", b"two,", b"three"]).await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), b"- chunked one,two,three");

    let head = Request::head("http://a.example/").body(()).unwrap();
    let (status, headers, body) = exchange_h2(&mut client, head, &[]).await;
    assert_eq!(status, 200);
    assert!(headers.contains_key("content-length"), "{headers:?}");
    assert_eq!(body.unwrap(), b"");

    let get = Request::get("http://a.example/").body(()).unwrap();
    let (status, _, body) = exchange_h2(&mut client, get, &[]).await;
    assert_eq!((status, body.unwrap()), (200, b"- - ".to_vec()));
    assert_eq!(
        upstream.connections(),
        1,
        "one kept-alive connection carries the requests that follow each other"
    );
}

#[tokio::test]
async fn answers_come_back_whole_however_the_upstream_framed_them() {
    let answers: [(&'static [u8], &[u8]); 4] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
            b"hello world",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
            b"hello world",
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the close",
            b"until the close",
        ),
        // A length repeated goes on once: HTTP/2 clients refuse a list.
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\nfive!",
            b"five!",
        ),
    ];
    for (reply, expected) in answers {
        let (addr, _task) = raw_upstream(reply).await;
        let proxy = Proxy::start(&[addr], &[addr]).await;
        let mut client = h2_client(&proxy).await;
        let get = Request::get("http://a.example/").body(()).unwrap();
        let (status, headers, body) = exchange_h2(&mut client, get, &[]).await;
        assert_eq!(status, 200);
        assert!(!headers.contains_key("connection"), "{headers:?}");
        assert!(!headers.contains_key("transfer-encoding"), "{headers:?}");
        let lengths = headers.get_all("content-length").iter().count();
        assert!(lengths <= 1, "{headers:?}");
        assert_eq!(
            body.unwrap(),
            expected,
            "{}",
            String::from_utf8_lossy(reply)
        );
    }

    // Cut short after its head and first bytes: never passed off as whole.
    let (addr, _task) =
        raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this").await;
    let proxy = Proxy::start(&[addr], &[addr]).await;
    let client = h2_client(&proxy).await;
    let get = Request::get("http://a.example/").body(()).unwrap();
    let (answer, _) = client.clone().send_request(get, true).unwrap();
    // The stream is reset: before its head is out, or after.
    if let Ok(answer) = within(answer).await {
        let mut body = answer.into_body();
        let mut cut = false;
        while let Some(chunk) = within(body.data()).await {
            if chunk.is_err() {
                cut = true;
                break;
            }
        }
        assert!(cut, "a cut answer came back whole");
    }
    // A broken chunk before the head goes out is a clean 502.
    let (addr, _task) =
        raw_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n").await;
    let proxy = Proxy::start(&[addr], &[addr]).await;
    let mut client = h2_client(&proxy).await;
    let get = Request::get("http://a.example/").body(()).unwrap();
    let (status, _, _) = exchange_h2(&mut client, get, &[]).await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn an_answer_before_the_upload_ends_is_passed_on_and_its_connection_dropped() {
    let upstream = Upstream::start(|request| async move {
        if request.uri().path() == "/upload" {
            // Refused before a byte of the body is read.
            let mut answer = text("too large");
            *answer.status_mut() = http::StatusCode::PAYLOAD_TOO_LARGE;
            return answer;
        }
        text("next")
    })
    .await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let mut client = h2_client(&proxy).await;
    client = within(client.clone().ready()).await.unwrap();
    let upload = Request::post("http://a.example/upload").body(()).unwrap();
    let (answer, mut stream) = client.send_request(upload, false).unwrap();
    stream
        .send_data(Bytes::from_static(b"the first part"), false)
        .unwrap();
    let answer = within(answer).await.unwrap();
    assert_eq!(answer.status(), 413);
    drop(stream);

    let get = Request::get("http://a.example/next").body(()).unwrap();
    let (status, _, body) = exchange_h2(&mut client, get, &[]).await;
    assert_eq!((status, body.unwrap()), (200, b"next".to_vec()));
    assert_eq!(
        upstream.connections(),
        2,
        "the connection whose upload was cut short served another request"
    );
}

#[tokio::test]
async fn a_head_request_gets_the_proxy_s_own_answers_without_a_body() {
    let upstream = Upstream::named("blue").await;
    let proxy = Proxy::start(&[upstream.addr], &[upstream.addr]).await;
    let mut client = h2_client(&proxy).await;
    let head = |path: &str| {
        Request::head(format!("http://a.example{path}"))
            .body(())
            .unwrap()
    };

    // A reserved path, a path refused, then the gate's 503.
    let (status, headers, body) = exchange_h2(&mut client, head("/.switchyard/none"), &[]).await;
    assert_eq!(status, 404);
    assert_eq!(body.unwrap(), b"", "{headers:?}");
    let get = Request::get("http://a.example/.switchyard/none")
        .body(())
        .unwrap();
    let (_, _, whole) = exchange_h2(&mut client, get, &[]).await;
    assert_eq!(
        headers["content-length"],
        whole.unwrap().len().to_string(),
        "the length a GET gets"
    );
    let (status, _, body) = exchange_h2(&mut client, head("/a%00b"), &[]).await;
    assert_eq!(status, 400);
    assert_eq!(body.unwrap(), b"");
    let (status, _) = proxy
        .admin("PUT", "/v1/maintenance", Some(r#"{"enabled": true}"#))
        .await;
    assert_eq!(status, 200);
    let (status, headers, body) = exchange_h2(&mut client, head("/page"), &[]).await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert_eq!(body.unwrap(), b"");
}

#[tokio::test]
async fn a_204_comes_back_without_a_length_whatever_the_upstream_said() {
    let (upstream, _task) =
        raw_upstream(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello").await;
    let proxy = Proxy::start(&[upstream], &[upstream]).await;
    let mut client = h2_client(&proxy).await;
    let get = Request::get("http://a.example/").body(()).unwrap();
    let (status, headers, body) = exchange_h2(&mut client, get, &[]).await;
    assert_eq!(status, 204);
    assert!(!headers.contains_key("content-length"), "{headers:?}");
    assert_eq!(body.unwrap(), b"");
}
