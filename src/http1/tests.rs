use super::chunked::{self, Decoded, Decoder};
use super::write::{self, RequestEdits, ResponseEdits};
use super::*;

const MAX: usize = 16 * 1024;

fn parse(bytes: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let mut head = RequestHead::default();
    Ok(parse_request(bytes, MAX, &mut head)?.then_some(head))
}

fn refusal(bytes: &[u8]) -> HeadError {
    parse(bytes).expect_err("refused")
}

fn no_cookie_of_ours(pair: &[u8]) -> bool {
    pair.trim_ascii().starts_with(b"ours=")
}

fn forwarded(bytes: &[u8]) -> String {
    let head = parse(bytes).unwrap().expect("complete");
    let mut out = Vec::new();
    write::request_head(
        bytes,
        &head,
        &RequestEdits {
            path: None,
            forwarded_for: b"192.0.2.7",
            proto: b"http",
            drops_cookie: no_cookie_of_ours,
            // None here: see `the_request_id_replaces_any_other`.
            request_id: b"",
        },
        &mut out,
    );
    String::from_utf8(out).unwrap()
}

#[test]
fn an_ordinary_request_is_read_in_place() {
    let bytes = b"GET /a/b?x=1 HTTP/1.1\r\nHost: app.example\r\nAccept: */*\r\n\r\nnext";
    let head = parse(bytes).unwrap().unwrap();
    assert_eq!(head.len, bytes.len() - 4);
    assert_eq!(head.method, http::Method::GET);
    assert_eq!(head.path.of(bytes), b"/a/b");
    assert_eq!(head.query.unwrap().of(bytes), b"x=1");
    assert_eq!(head.authority(bytes), Some(&b"app.example"[..]));
    assert_eq!(head.get(bytes, "accept"), Some(&b"*/*"[..]));
    assert_eq!(head.framing, Framing::Empty);
    assert!(!head.close && !head.websocket && !head.expects_continue);
}

#[test]
fn a_head_in_pieces_is_complete_only_at_its_end() {
    let bytes = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n";
    let mut head = RequestHead::default();
    for end in 0..bytes.len() {
        assert_eq!(parse_request(&bytes[..end], MAX, &mut head), Ok(false));
    }
    assert_eq!(parse_request(bytes, MAX, &mut head), Ok(true));
    assert_eq!(head.framing, Framing::Length(5));
}

#[test]
fn ambiguous_framing_is_refused() {
    let cases: &[(&[u8], HeadError)] = &[
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            HeadError::Bad(request::AMBIGUOUS_LENGTH),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            HeadError::Bad("conflicting Content-Length headers"),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            HeadError::Bad("invalid Content-Length header"),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            HeadError::Bad("invalid Content-Length header"),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            HeadError::Bad("invalid Content-Length header"),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            HeadError::TransferCoding,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            HeadError::Bad("the chunked transfer coding applied twice"),
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            HeadError::Bad("Transfer-Encoding in an HTTP/1.0 request"),
        ),
    ];
    for (bytes, error) in cases {
        assert_eq!(refusal(bytes), *error, "{}", String::from_utf8_lossy(bytes));
    }
    // The same length twice, or as a list, is one length.
    let same = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5, 5\r\n\r\n";
    assert_eq!(parse(same).unwrap().unwrap().framing, Framing::Length(5));
}

#[test]
fn malformed_heads_are_refused() {
    let bad = |bytes: &[u8]| matches!(refusal(bytes), HeadError::Bad(_));
    // obs-fold, a bare CR, a space before the colon, a bad name byte.
    assert!(bad(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n"
    ));
    assert!(bad(b"GET / HTTP/1.1\r\nHost: a\rX-A: 1\r\n\r\n"));
    assert!(bad(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"));
    assert!(bad(b"GET / HTTP/1.1\r\nHo\"st: a\r\n\r\n"));
    assert!(bad(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(bad(b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(bad(b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert_eq!(refusal(b"GET / HTTP/2.0\r\n\r\n"), HeadError::Version);
    assert_eq!(
        refusal(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
        HeadError::Connect
    );
}

#[test]
fn oversized_heads_are_refused_before_they_end() {
    let mut head = RequestHead::default();
    let long_line = [b"GET /".as_slice(), &[b'a'; 200]].concat();
    assert_eq!(
        parse_request(&long_line, 100, &mut head),
        Err(HeadError::LineTooLong)
    );
    // Whole, in one read: still the line that is too long.
    let whole = [long_line.as_slice(), b" HTTP/1.1\r\nHost: a\r\n\r\n"].concat();
    assert_eq!(
        parse_request(&whole, 100, &mut head),
        Err(HeadError::LineTooLong)
    );
    let many = [
        b"GET / HTTP/1.1\r\nHost: a\r\n".as_slice(),
        &b"X-A: 1\r\n".repeat(20),
    ]
    .concat();
    assert_eq!(
        parse_request(&many, 100, &mut head),
        Err(HeadError::TooLarge)
    );
    let fields = [
        b"GET / HTTP/1.1\r\nHost: a\r\n".as_slice(),
        &b"X-A: 1\r\n".repeat(MAX_HEADERS + 1),
        b"\r\n",
    ]
    .concat();
    assert_eq!(refusal(&fields), HeadError::TooLarge);
}

#[test]
fn targets_and_hosts_must_agree() {
    let bad = |bytes: &[u8]| matches!(refusal(bytes), HeadError::Bad(_));
    assert!(bad(b"GET ok HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(bad(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(bad(b"GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(bad(b"GET / HTTP/1.1\r\n\r\n"));
    assert!(bad(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"));
    assert!(bad(b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n"));
    assert!(bad(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"));
    assert!(bad(b"GET http://b/ HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(bad(b"GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(parse(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap()
        .is_some());
    assert!(parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
    assert!(parse(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
        .unwrap()
        .is_some());
    let absolute = b"GET HTTP://A.example:80?q HTTP/1.1\r\nHost: a.example:80\r\n\r\n";
    assert_eq!(
        forwarded(absolute).lines().next(),
        Some("GET /?q HTTP/1.1"),
        "absolute form goes on in origin form"
    );
}

#[test]
fn connection_options_follow_the_version() {
    let head = |bytes: &[u8]| parse(bytes).unwrap().unwrap();
    assert!(head(b"GET / HTTP/1.0\r\n\r\n").close);
    assert!(!head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").close);
    assert!(head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x, Close\r\n\r\n").close);
    let websocket = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n";
    assert!(head(websocket).websocket);
    let h2c =
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n";
    assert!(!head(h2c).websocket);
    let both = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n";
    assert!(!head(both).websocket);
    let forwarded_h2c = forwarded(h2c);
    assert!(!forwarded_h2c.to_ascii_lowercase().contains("upgrade"));
    assert!(!forwarded_h2c
        .to_ascii_lowercase()
        .contains("http2-settings"));
}

#[test]
fn the_forwarded_head_is_the_hops_edit_of_the_received_one() {
    let bytes = b"POST /submit HTTP/1.1\r\n\
Host: app.example\r\n\
Connection: keep-alive, X-Secret, Host\r\n\
Keep-Alive: timeout=5\r\n\
X-Secret: 1\r\n\
TE: trailers\r\n\
Expect: 100-continue\r\n\
X-Original-URL: /admin\r\n\
X-HTTP-Method-Override: DELETE\r\n\
X-Forwarded-For: 10.0.0.1\r\n\
x-forwarded-for: 10.0.0.2\r\n\
X-Forwarded-Proto: https\r\n\
X-Forwarded-Host: evil.example\r\n\
X-Switchyard-Bypass: token\r\n\
Cookie: a=1; ours=secret;b=2\r\n\
Cookie: c=3\r\n\
Content-Length: 005\r\n\
X-Kept: yes\r\n\r\n";
    assert_eq!(
        forwarded(bytes),
        "POST /submit HTTP/1.1\r\n\
Host: app.example\r\n\
X-Kept: yes\r\n\
content-length: 5\r\n\
cookie: a=1;b=2; c=3\r\n\
x-forwarded-for: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\n\
x-forwarded-proto: http\r\n\
x-forwarded-host: app.example\r\n\r\n"
    );
    let websocket = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n";
    assert_eq!(
        forwarded(websocket),
        "GET /ws HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: k\r\n\
x-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: a\r\n\
upgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    );
    let only_ours = b"GET / HTTP/1.0\r\nCookie: ours=1\r\n\r\n";
    assert_eq!(
        forwarded(only_ours),
        "GET / HTTP/1.1\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\n\r\n"
    );
}

fn decode_all(input: &[u8], pieces: &[usize]) -> Result<(Vec<u8>, usize), chunked::ChunkError> {
    let mut decoder = Decoder::new();
    let mut data = Vec::new();
    let mut at = 0;
    let mut cuts = pieces.iter().copied().chain(std::iter::repeat(usize::MAX));
    let mut end = 0;
    while !decoder.is_done() {
        if at == end {
            if end == input.len() {
                return Err("cut short");
            }
            end = end
                .saturating_add(cuts.next().unwrap_or(1).max(1))
                .min(input.len());
        }
        let (used, decoded) = decoder.decode(&input[at..end])?;
        at += used;
        if let Decoded::Data(bytes) = decoded {
            data.extend_from_slice(bytes);
        }
    }
    Ok((data, at))
}

#[test]
fn chunked_bodies_decode_strictly() {
    let body = b"5;name=\"va;l\"\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
    for piece in [1, 2, 3, 7, body.len()] {
        assert_eq!(
            decode_all(body, &[piece; 64]),
            Ok((b"hello world".to_vec(), body.len() - 4)),
            "piece {piece}"
        );
    }
    let errors: &[&[u8]] = &[
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"5;a\nb\r\nhello\r\n0\r\n\r\n",
        b"11111111111111111\r\n",
        b"0\r\nbad trailer\r\n\r\n",
        b"0\r\nX: 1\n\r\n",
        b"0\r\n\n",
    ];
    for bytes in errors {
        assert!(
            decode_all(bytes, &[]).is_err(),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

fn response(bytes: &[u8], to_head: bool) -> Result<ResponseHead, &'static str> {
    let mut head = ResponseHead::default();
    assert!(parse_response(bytes, MAX, to_head, &mut head)?);
    Ok(head)
}

#[test]
fn response_framing_follows_status_method_and_fields() {
    let framing = |bytes: &[u8], to_head| response(bytes, to_head).unwrap().framing;
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
    assert_eq!(framing(ok, false), Framing::Length(3));
    assert_eq!(framing(ok, true), Framing::Empty);
    assert_eq!(
        framing(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
            false
        ),
        Framing::Empty
    );
    assert_eq!(
        framing(b"HTTP/1.1 304 Not Modified\r\n\r\n", false),
        Framing::Empty
    );
    assert_eq!(
        framing(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        ),
        Framing::Chunked
    );
    let until_close = response(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
    assert_eq!(until_close.framing, Framing::UntilClose);
    assert!(until_close.close);
    assert!(
        response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false)
            .unwrap()
            .close
    );
    assert!(response(b"HTTP/1.1 100 Continue\r\n\r\n", false)
        .unwrap()
        .is_interim());
    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: 1\r\n folded\r\n\r\n",
        b"HTTP/1.1 099 Odd\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
    ] {
        assert!(
            response(bad, false).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn the_clients_response_head_drops_this_hops_fields() {
    let bytes = b"HTTP/1.1 200 Fine\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\n\r\n";
    let head = response(bytes, false).unwrap();
    let mut out = Vec::new();
    write::response_head(
        bytes,
        &head,
        &ResponseEdits {
            framing: Framing::Chunked,
            persistence: write::Persistence::Close,
            request_id: b"",
        },
        &mut out,
    );
    assert_eq!(
        without_date(&out),
        "HTTP/1.1 200 Fine\r\nSet-Cookie: a=1\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    let head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n";
    let head = response(head_answer, true).unwrap();
    let mut out = Vec::new();
    write::response_head(
        head_answer,
        &head,
        &ResponseEdits {
            framing: Framing::Empty,
            persistence: write::Persistence::Keep,
            request_id: b"",
        },
        &mut out,
    );
    assert_eq!(
        without_date(&out),
        "HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n"
    );
    assert!(
        String::from_utf8_lossy(&out).contains("\r\ndate: "),
        "a Date is added"
    );
    let dated =
        b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\nContent-Length: 0\r\n\r\n";
    let head = response(dated, false).unwrap();
    let mut out = Vec::new();
    let edits = ResponseEdits {
        framing: Framing::Empty,
        persistence: write::Persistence::KeepAlive,
        request_id: b"",
    };
    write::response_head(dated, &head, &edits, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 OK\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n",
        "the upstream's Date is kept"
    );
}

/// A head as text, without its `date` line.
fn without_date(head: &[u8]) -> String {
    String::from_utf8_lossy(head)
        .split_inclusive("\r\n")
        .filter(|line| !line.starts_with("date: "))
        .collect()
}

#[test]
fn every_field_the_proxy_acts_on_is_known_in_any_case() {
    let known = [
        ("te", Kind::HopByHop),
        ("host", Kind::Host),
        ("date", Kind::Date),
        ("cookie", Kind::Cookie),
        ("expect", Kind::Expect),
        ("upgrade", Kind::Upgrade),
        ("trailer", Kind::HopByHop),
        ("connection", Kind::Connection),
        ("keep-alive", Kind::HopByHop),
        ("x-rewrite-url", Kind::Rewrite),
        ("x-http-method", Kind::Rewrite),
        ("content-length", Kind::ContentLength),
        ("x-original-url", Kind::Rewrite),
        ("http2-settings", Kind::HopByHop),
        ("x-forwarded-for", Kind::ForwardedFor),
        ("x-forwarded-host", Kind::ForwardedSet),
        ("proxy-connection", Kind::HopByHop),
        ("transfer-encoding", Kind::TransferEncoding),
        ("x-forwarded-proto", Kind::ForwardedSet),
        ("x-method-override", Kind::Rewrite),
        ("proxy-authenticate", Kind::HopByHop),
        ("proxy-authorization", Kind::HopByHop),
        ("x-switchyard-bypass", Kind::Bypass),
        ("x-http-method-override", Kind::Rewrite),
    ];
    for (name, kind) in known {
        let upper = name.to_ascii_uppercase();
        let title: String = name
            .split('-')
            .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
            .collect::<Vec<_>>()
            .join("-");
        for spelling in [name, upper.as_str(), title.as_str()] {
            assert_eq!(Kind::of(spelling.as_bytes()), kind, "{spelling}");
        }
    }
    for other in [
        "",
        "t",
        "server",
        "hosts",
        "content-type",
        "x-forwarded-fox",
    ] {
        assert_eq!(Kind::of(other.as_bytes()), Kind::Other, "{other}");
    }
}

mod properties;

#[test]
fn the_request_id_replaces_any_other_both_ways() {
    let bytes =
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: bad id\r\nx-request-id: second\r\n\r\n";
    let head = parse(bytes).unwrap().unwrap();
    let mut out = Vec::new();
    let edits = RequestEdits {
        path: None,
        forwarded_for: b"192.0.2.7",
        proto: b"http",
        drops_cookie: no_cookie_of_ours,
        request_id: b"chosen",
    };
    write::request_head(bytes, &head, &edits, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text.to_ascii_lowercase().matches("x-request-id").count(),
        1,
        "{text}"
    );
    assert!(text.contains("\r\nx-request-id: chosen\r\n"), "{text}");

    let answer = b"HTTP/1.1 200 OK\r\nX-Request-Id: the-upstream-s\r\nContent-Length: 0\r\n\r\n";
    let head = response(answer, false).unwrap();
    let mut out = Vec::new();
    let edits = ResponseEdits {
        framing: Framing::Empty,
        persistence: write::Persistence::Keep,
        request_id: b"chosen",
    };
    write::response_head(answer, &head, &edits, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text.to_ascii_lowercase().matches("x-request-id").count(),
        1,
        "{text}"
    );
    assert!(text.contains("\r\nx-request-id: chosen\r\n"), "{text}");
}
