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

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::header::{HeaderName, HeaderValue, COOKIE};
use http::HeaderMap;
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

/// The token a request carries, header first, then cookie.
pub fn token_in(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(&HEADER) {
        return value.to_str().ok().map(str::trim);
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE_NAME).then(|| value.trim_matches('"'))
        })
}

/// Removes the bypass header and cookie from a request's headers, keeping
/// every other cookie as it was.
pub fn strip(headers: &mut HeaderMap) {
    headers.remove(&HEADER);
    // Most requests carry no such cookie: one scan, no allocation.
    let carries = headers
        .get_all(COOKIE)
        .iter()
        .any(|value| contains(value.as_bytes(), COOKIE_NAME.as_bytes()));
    if !carries {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| {
            let Ok(text) = value.to_str() else {
                // Not text: no cookie of ours can be parsed out of it, and
                // the application reads it as it would have.
                return Some(value.clone());
            };
            let pairs: Vec<&str> = text
                .split(';')
                .map(str::trim)
                .filter(|pair| {
                    !pair.is_empty()
                        && pair.split_once('=').map_or(*pair, |(name, _)| name.trim())
                            != COOKIE_NAME
                })
                .collect();
            (!pairs.is_empty())
                .then(|| HeaderValue::from_str(&pairs.join("; ")).expect("parts of a valid value"))
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
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
        // A cookie that merely contains the name is kept.
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("not_switchyard_bypass=1"));
        strip(&mut headers);
        assert_eq!(headers[COOKIE], "not_switchyard_bypass=1");
    }
}
