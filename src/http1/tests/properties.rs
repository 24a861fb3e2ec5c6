//! Properties of the codec over generated input: any chunking of any body
//! decodes to that body; no bytes at all break the chunked decoder or the
//! head parsers; a forwarded head reads back as what was judged.

use proptest::prelude::*;

use super::*;

/// A body cut into chunks at `cuts`, each chunk with an extension or not,
/// and a trailer or not.
fn encode(body: &[u8], cuts: &[usize], extensions: bool, trailer: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    for cut in cuts {
        if rest.is_empty() {
            break;
        }
        let (chunk, after) = rest.split_at((*cut).clamp(1, rest.len()));
        chunked::size_line(chunk.len(), &mut out);
        if extensions {
            out.truncate(out.len() - 2);
            out.extend_from_slice(b" ;ext=\"q;\\\"\"\r\n");
        }
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
        rest = after;
    }
    if !rest.is_empty() {
        chunked::size_line(rest.len(), &mut out);
        out.extend_from_slice(rest);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    if trailer {
        out.extend_from_slice(b"X-Sum: abc\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

proptest! {
    #[test]
    fn any_chunking_of_any_body_decodes_to_that_body(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        cuts in proptest::collection::vec(1usize..80, 0..12),
        reads in proptest::collection::vec(1usize..40, 0..40),
        extensions: bool,
        trailer: bool,
    ) {
        let mut encoded = encode(&body, &cuts, extensions, trailer);
        let len = encoded.len();
        encoded.extend_from_slice(b"GET / HTTP/1.1\r\n");
        prop_assert_eq!(decode_all(&encoded, &reads), Ok((body, len)));
    }

    #[test]
    fn the_chunked_decoder_survives_any_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        reads in proptest::collection::vec(1usize..40, 0..20),
    ) {
        // An error or an end, never a panic, and never beyond the input.
        if let Ok((_, used)) = decode_all(&bytes, &reads) {
            prop_assert!(used <= bytes.len());
        }
    }

    #[test]
    fn the_head_parsers_survive_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut head = RequestHead::default();
        if let Ok(true) = parse_request(&bytes, MAX, &mut head) {
            prop_assert!(head.len <= bytes.len());
        }
        let mut head = ResponseHead::default();
        if let Ok(true) = parse_response(&bytes, MAX, false, &mut head) {
            prop_assert!(head.len <= bytes.len());
        }
    }

    #[test]
    fn a_forwarded_head_reads_back_as_what_was_judged(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]),
        path in "(/[a-zA-Z0-9._~%-]{0,8}){1,4}",
        query in proptest::option::of("[a-zA-Z0-9=&]{0,12}"),
        fields in proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,12}", "[ -~]{0,20}"), 0..8),
        length in proptest::option::of(0u64..100_000),
        chunked: bool,
    ) {
        let mut bytes = format!("{method} {path}");
        if let Some(query) = &query {
            bytes.push('?');
            bytes.push_str(query);
        }
        bytes.push_str(" HTTP/1.1\r\nHost: app.example\r\n");
        for (name, value) in &fields {
            bytes.push_str(&format!("{name}: {value}\r\n"));
        }
        match (length, chunked) {
            (_, true) => bytes.push_str("Transfer-Encoding: chunked\r\n"),
            (Some(length), false) => bytes.push_str(&format!("Content-Length: {length}\r\n")),
            (None, false) => {}
        }
        bytes.push_str("\r\n");
        let bytes = bytes.into_bytes();
        let mut head = RequestHead::default();
        // Generated names can collide with the ones judged (a second Host,
        // a Content-Length beside the chunking): those must be refused.
        let Ok(true) = parse_request(&bytes, MAX, &mut head) else {
            return Ok(());
        };
        for end in 0..bytes.len() {
            let mut partial = RequestHead::default();
            prop_assert_eq!(parse_request(&bytes[..end], MAX, &mut partial), Ok(false));
        }
        let mut out = Vec::new();
        let edits = RequestEdits {
            path: None,
            forwarded_for: b"192.0.2.7",
            proto: b"https",
            drops_cookie: no_cookie_of_ours,
            request_id: b"id-1",
        };
        write::request_head(&bytes, &head, &edits, &mut out);
        let mut again = RequestHead::default();
        prop_assert_eq!(parse_request(&out, MAX, &mut again), Ok(true));
        prop_assert_eq!(again.len, out.len());
        prop_assert_eq!(&again.method, &head.method);
        prop_assert_eq!(again.path.of(&out), head.path.of(&bytes));
        prop_assert_eq!(again.query.map(|q| q.of(&out)), head.query.map(|q| q.of(&bytes)));
        prop_assert_eq!(again.framing, head.framing);
        prop_assert_eq!(again.authority(&out), head.authority(&bytes));
        let others = |h: &RequestHead, buf: &[u8]| -> Vec<(Vec<u8>, Vec<u8>)> {
            h.fields
                .iter()
                .filter(|f| f.kind == Kind::Other && !h.connection_names(buf, f.name.of(buf)))
                .map(|f| (f.name.of(buf).to_vec(), f.value.of(buf).to_vec()))
                .collect()
        };
        prop_assert_eq!(others(&again, &out), others(&head, &bytes));
    }
}
