//! The one meaning of a request path, decided before the gate looks at it.
//!
//! The gate lets `maintenance.allow_paths` through, so it must read a path
//! the way the application behind it will. Servers disagree on some shapes,
//! and each disagreement is a way past the gate (`/health/..;/secret` is
//! `/health/..;/secret` to one server and `/secret` to Tomcat). The rule:
//!
//! - Percent-encoded unreserved characters (`%2e`, `%41`, ...) are decoded
//!   (RFC 3986 §6.2.2.2): they mean the same either way.
//! - Dot segments (`.`, `..`) are removed (RFC 3986 §5.2.4).
//! - The request goes upstream with the path so normalized, so the gate
//!   and the application read the same path.
//! - Shapes that servers read differently are refused with `400`: a
//!   backslash or `%5C` (a separator to some servers), `%00`, and a dot
//!   segment with `;` parameters (`..;`, `.;x`).
//! - An encoded slash (`%2F`) is passed on as is, but such a path never
//!   matches `allow_paths` (see the gate): some servers decode it before
//!   routing and some do not.
//! - Other `;` parameters are part of their segment: `/health;v=1` is not
//!   `/health` to the gate, so it is gated (never the other way round).

/// Why a path is refused.
pub type Refusal = &'static str;

/// The path `path` means, if it differs from what was sent; an error for
/// a path servers would read differently.
pub fn normalize(path: &str) -> Result<Option<String>, Refusal> {
    // Most paths have nothing to look at twice.
    if !path
        .bytes()
        .any(|b| matches!(b, b'.' | b'%' | b';' | b'\\') || !b.is_ascii())
    {
        return Ok(None);
    }
    if path.contains('\\') || contains_ignore_case(path, "%5c") {
        return Err("a backslash in the path: servers disagree on whether it separates segments");
    }
    if path.contains("%00") {
        return Err("an encoded NUL in the path");
    }
    // Never valid UTF-8: only an overlong encoding (`%c0%ae` for `.`) uses them.
    if contains_ignore_case(path, "%c0") || contains_ignore_case(path, "%c1") {
        return Err("an overlong UTF-8 encoding in the path");
    }
    let decoded = decode_unreserved(path)?;
    let changed = decoded.is_some();
    let decoded = decoded.as_deref().unwrap_or(path);
    let mut dot_segments = false;
    for segment in decoded.split('/') {
        let (bare, params) = match segment.split_once(';') {
            Some((bare, _)) => (bare, true),
            None => (segment, false),
        };
        if bare == "." || bare == ".." {
            if params {
                return Err(
                    "a dot segment with parameters (`..;`) in the path: servers disagree on what it means",
                );
            }
            dot_segments = true;
        } else if reads_as_dots(segment) {
            return Err(
                "a segment that some servers read as `.` or `..` (encoded twice, with `%3B`, or padded)",
            );
        }
    }
    // A dot inside a name (`/app.js`) changes nothing: no copy is made.
    let normalized = match (dot_segments, changed) {
        (true, _) => remove_dot_segments(decoded),
        (false, true) => decoded.to_owned(),
        (false, false) => return Ok(None),
    };
    Ok((normalized != path).then_some(normalized))
}

/// Whether a lenient server could read `segment` as a dot segment: after
/// decoding it again (and again), cutting its `;` parameters, trimming
/// white space and reading full-width dots as dots. (A segment that is
/// plainly `.` or `..` is not asked: it is removed.)
fn reads_as_dots(segment: &str) -> bool {
    let is_dots = |text: &str| {
        let bare = text.split(';').next().unwrap_or("");
        matches!(bare.trim_matches(|c: char| c.is_whitespace()), "." | "..")
    };
    // The usual segment (`app.js`) needs no copy to be judged.
    if !segment.contains(['%', '\u{ff0e}']) {
        return is_dots(segment);
    }
    let mut text = segment.to_owned();
    for _ in 0..3 {
        match percent_decode(&text) {
            Some(decoded) if decoded != text => text = decoded,
            _ => break,
        }
    }
    is_dots(&text.replace('\u{ff0e}', "."))
}

/// Every percent-encoding of `text` decoded; `None` if that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    String::from_utf8(crate::http1::percent::decoded(text)).ok()
}

/// `path` with its percent-encoded unreserved characters decoded, or
/// `None` if it has none.
fn decode_unreserved(path: &str) -> Result<Option<String>, Refusal> {
    if !path.contains('%') {
        return Ok(None);
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(path.len());
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a malformed percent-encoding in the path")?;
            if hex.is_ascii_alphanumeric() || matches!(hex, b'-' | b'.' | b'_' | b'~') {
                out.push(hex);
                changed = true;
            } else {
                out.extend_from_slice(&bytes[i..i + 3]);
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    // Only ASCII characters were decoded into a string that was UTF-8.
    let out = String::from_utf8(out).expect("decoding unreserved characters keeps UTF-8");
    Ok(changed.then_some(out))
}

/// RFC 3986 §5.2.4 for an absolute path: `.` segments go, `..` takes the
/// segment before it (never above the root), and a path that ended in one
/// ends in `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "." => trailing_slash = true,
            ".." => {
                kept.pop();
                trailing_slash = true;
            }
            _ => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

/// Whether `haystack` contains `needle`, ASCII case ignored.
pub fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, Refusal> {
        normalize(path).map(|n| n.unwrap_or_else(|| path.to_owned()))
    }

    #[test]
    fn ordinary_paths_are_left_alone() {
        for path in [
            "/",
            "/health",
            "/static/app.js",
            "/a/b/",
            "/items;v=2",
            "/q%20x",
            "/a%2Fb",
        ] {
            assert_eq!(normalize(path), Ok(None), "{path}");
        }
    }

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says() {
        assert_eq!(norm("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(norm("/health/../secret").unwrap(), "/secret");
        assert_eq!(norm("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/..").unwrap(), "/");
        assert_eq!(norm("/a//../b").unwrap(), "/a/b");
    }

    #[test]
    fn encoded_dots_and_letters_are_decoded_first() {
        assert_eq!(norm("/health/%2e%2e/secret").unwrap(), "/secret");
        assert_eq!(norm("/health/%2E./secret").unwrap(), "/secret");
        assert_eq!(norm("/he%61lth").unwrap(), "/health");
        // Reserved characters stay encoded.
        assert_eq!(norm("/a%2Fb/%3F").unwrap(), "/a%2Fb/%3F");
    }

    #[test]
    fn shapes_servers_disagree_on_are_refused() {
        for path in [
            "/health/..;/secret",
            "/health/.;x/secret",
            "/health/%2e%2e;/secret",
            "/health/..\\secret",
            "/health/..%5csecret",
            "/health/..%5Csecret",
            "/health%00/x",
            "/bad%zz",
            "/bad%2",
            "/health/..%3b/secret",
            "/health/.%3B/secret",
            "/health/%252e%252e/secret",
            "/health/%c0%ae%c0%ae/secret",
            "/health/..%20/secret",
            "/health/..%09/secret",
            "/health/%EF%BC%8E%EF%BC%8E/secret",
            "/health/\u{ff0e}\u{ff0e}/secret",
        ] {
            assert!(normalize(path).is_err(), "{path}");
        }
    }
}
