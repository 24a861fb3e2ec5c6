//! Bypass tokens: signed passes through the maintenance gate for testers.
//!
//! A token is `EXPIRES.LABEL.MAC`: the expiry in Unix seconds, the label in
//! unpadded base64url, and HMAC-SHA256 under `maintenance.bypass_secret_file`
//! over the two (with a fixed prefix naming the purpose), in unpadded
//! base64url. Nothing is stored: every instance with the secret checks a
//! token alone, and changing the secret revokes them all. The MAC is
//! computed and compared by `ring`, in constant time.
//!
//! A client carries one as the header `X-Switchyard-Bypass` or the cookie
//! `switchyard_bypass`; both are removed from every request before it goes
//! upstream (see [`strip`]), gate on or off, so the application never sees
//! a pass it did not issue.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::header::{HeaderName, HeaderValue, COOKIE};
use http::HeaderMap;
use memchr::memmem;
use ring::hmac;

/// The header that carries a token.
pub static HEADER: HeaderName = HeaderName::from_static("x-switchyard-bypass");
/// The cookie that carries a token.
pub const COOKIE_NAME: &str = "switchyard_bypass";
/// The public listener's path that turns a token into the cookie: under
/// a prefix applications do not use, and never forwarded.
pub const BROWSER_PATH: &str = "/.switchyard/bypass";
/// The longest label a token may carry.
pub const MAX_LABEL_BYTES: usize = 64;
/// The longest life a token may be given.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longer than any token this module issues: anything longer is not
/// looked at.
const MAX_TOKEN_BYTES: usize = 256;
/// Signed before the token's fields, so a MAC made with the same secret
/// for anything else is never a valid token.
const PURPOSE: &[u8] = b"switchyard bypass token v1.";

/// The key tokens are signed with.
#[derive(Clone)]
pub struct BypassKey(hmac::Key);

impl std::fmt::Debug for BypassKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BypassKey(..)")
    }
}

impl BypassKey {
    /// The key of `secret`.
    pub fn new(secret: &[u8]) -> BypassKey {
        BypassKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// A token for `label` that holds until `expires_at` (to the second).
    pub fn issue(&self, label: &str, expires_at: SystemTime) -> String {
        let expires = expires_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signed = format!("{expires}.{}", URL_SAFE_NO_PAD.encode(label));
        let mac = hmac::sign(&self.0, &[PURPOSE, signed.as_bytes()].concat());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()))
    }

    /// Whether `token` is one this key signed, and holds at `now`.
    pub fn admits(&self, token: &str, now: SystemTime) -> bool {
        self.expiry(token).is_some_and(|expires| expires > now)
    }

    /// When `token` expires, if this key signed it (expired or not).
    pub fn expiry(&self, token: &str) -> Option<SystemTime> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let (signed, mac) = token.rsplit_once('.')?;
        let (expires, _label) = signed.split_once('.')?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        hmac::verify(&self.0, &[PURPOSE, signed.as_bytes()].concat(), &mac).ok()?;
        let expires: u64 = expires.parse().ok()?;
        Some(UNIX_EPOCH + Duration::from_secs(expires))
    }
}

/// The token in one `Cookie` field's value, if it carries one.
pub fn token_in_cookie(value: &[u8]) -> Option<&str> {
    value.split(|b| *b == b';').find_map(|pair| {
        let value = ours(pair)?;
        std::str::from_utf8(value).ok().map(|v| v.trim_matches('"'))
    })
}

/// Whether a `Cookie` pair (`name=value`) is the bypass cookie.
pub fn is_cookie(pair: &[u8]) -> bool {
    ours(pair).is_some()
}

/// The token a request carries, header first, then cookie.
pub fn token_in(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(&HEADER) {
        return value.to_str().ok().map(str::trim);
    }
    // Cookies are read as bytes: a browser sends raw UTF-8 in other
    // cookies' values, and that must not hide ours.
    headers
        .get_all(COOKIE)
        .iter()
        .find_map(|value| token_in_cookie(value.as_bytes()))
}

/// The value of `pair` (`name=value`, as a `Cookie` header lists them) if
/// it is the bypass cookie.
fn ours(pair: &[u8]) -> Option<&[u8]> {
    let at = pair.iter().position(|b| *b == b'=')?;
    (pair[..at].trim_ascii() == COOKIE_NAME.as_bytes()).then(|| pair[at + 1..].trim_ascii())
}

/// Removes the bypass header and cookie from a request's headers, keeping
/// every other cookie as it was.
pub fn strip(headers: &mut HeaderMap) {
    headers.remove(&HEADER);
    // Most requests carry no such cookie: one scan, no allocation.
    static FINDER: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(COOKIE_NAME));
    let carries = headers
        .get_all(COOKIE)
        .iter()
        .any(|value| FINDER.find(value.as_bytes()).is_some());
    if !carries {
        return;
    }
    // Every other pair is kept byte for byte, separators and all (a `;`
    // inside a quoted value splits it, and is put back where it was).
    let kept: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| {
            let pairs: Vec<&[u8]> = value
                .as_bytes()
                .split(|b| *b == b';')
                .filter(|pair| ours(pair).is_none())
                .collect();
            let joined = pairs.join(&b";"[..]);
            let joined = joined.trim_ascii();
            (!joined.is_empty())
                .then(|| HeaderValue::from_bytes(joined).expect("parts of a valid value"))
        })
        .collect();
    headers.remove(COOKIE);
    for value in kept {
        headers.append(COOKIE, value);
    }
}

/// The `Set-Cookie` value that carries `token` until `expires_at`.
pub fn set_cookie(token: &str, expires_at: SystemTime, secure: bool) -> HeaderValue {
    let max_age = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .as_secs();
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .expect("a token is made of URL-safe characters")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BypassKey {
        BypassKey::new(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn a_token_holds_until_it_expires_and_only_under_its_secret() {
        let now = SystemTime::now();
        let token = key().issue("qa team", now + Duration::from_secs(60));
        assert!(key().admits(&token, now));
        assert!(!key().admits(&token, now + Duration::from_secs(61)));
        let other = BypassKey::new(b"another secret of thirty-two bytes!");
        assert!(!other.admits(&token, now), "a new secret revokes it");
        // Any change to any part breaks it.
        let (expires, rest) = token.split_once('.').unwrap();
        let later = format!("{}.{rest}", expires.parse::<u64>().unwrap() + 3600);
        assert!(!key().admits(&later, now));
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(!key().admits(&String::from_utf8(flipped).unwrap(), now));
        for junk in ["", ".", "..", "1.2.3", "x.y.z.w", &"a".repeat(1000)] {
            assert!(!key().admits(junk, now), "{junk:?}");
        }
    }

    #[test]
    fn the_token_is_found_in_the_header_or_the_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; switchyard_bypass=T1; b=2"),
        );
        assert_eq!(token_in(&headers), Some("T1"));
        headers.insert(&HEADER, HeaderValue::from_static(" T2 "));
        assert_eq!(token_in(&headers), Some("T2"));
        assert_eq!(token_in(&HeaderMap::new()), None);
    }

    #[test]
    fn strip_removes_the_header_and_our_cookie_only() {
        let mut headers = HeaderMap::new();
        headers.insert(&HEADER, HeaderValue::from_static("T"));
        headers.append(
            COOKIE,
            HeaderValue::from_static("a=1; switchyard_bypass=T; b=2"),
        );
        headers.append(COOKIE, HeaderValue::from_static("switchyard_bypass=T"));
        headers.append(COOKIE, HeaderValue::from_static("c=3"));
        strip(&mut headers);
        assert!(!headers.contains_key(&HEADER));
        let cookies: Vec<_> = headers.get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2", "c=3"]);
        // The others are kept as they were, byte for byte.
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("c=4;d=5;switchyard_bypass=T; q=\"a;b\""),
        );
        strip(&mut headers);
        assert_eq!(headers[COOKIE], "c=4;d=5; q=\"a;b\"");
        // Raw UTF-8 in another cookie hides nothing.
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_bytes("name=Zoë; switchyard_bypass=T".as_bytes()).unwrap(),
        );
        assert_eq!(token_in(&headers), Some("T"));
        strip(&mut headers);
        assert_eq!(headers[COOKIE].as_bytes(), "name=Zoë".as_bytes());
        // A cookie that merely contains the name is kept.
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("not_switchyard_bypass=1"));
        strip(&mut headers);
        assert_eq!(headers[COOKIE], "not_switchyard_bypass=1");
    }
}
