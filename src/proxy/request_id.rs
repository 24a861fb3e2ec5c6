//! `X-Request-Id`: one name for a request from the client to the
//! upstream's logs and back. A sane id the client sent is kept; any other
//! request gets one made here. Either way it goes upstream, back to the
//! client, into the access log and into every error body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The field's name.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The longest id kept from a client.
pub const MAX_LEN: usize = 64;

/// A request's id, held inline: no allocation per request.
#[derive(Clone, Copy)]
pub struct RequestId {
    len: u8,
    bytes: [u8; MAX_LEN],
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for RequestId {
    fn default() -> RequestId {
        RequestId {
            len: 0,
            bytes: [0; MAX_LEN],
        }
    }
}

impl RequestId {
    /// The client's id if it is sane (see [`is_sane`]), else a new one.
    pub fn keep_or_make(sent: Option<&[u8]>) -> RequestId {
        match sent {
            Some(sent) if is_sane(sent) => {
                let mut id = RequestId::default();
                id.bytes[..sent.len()].copy_from_slice(sent);
                id.len = sent.len() as u8;
                id
            }
            _ => RequestId::make(),
        }
    }

    /// A new id: 24 hex digits, a random prefix chosen once per process
    /// and a counter, so ids never repeat within a run and are unlikely to
    /// across runs and instances.
    pub fn make() -> RequestId {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut id = RequestId::default();
        id.bytes[..12].copy_from_slice(prefix());
        hex(n, &mut id.bytes[12..24]);
        id.len = 24;
        id
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Its text (always ASCII).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// As a header value.
    pub fn header_value(&self) -> http::HeaderValue {
        http::HeaderValue::from_bytes(self.as_bytes()).expect("request ids are visible ASCII")
    }
}

/// Whether a client's id is kept: 1 to [`MAX_LEN`] letters, digits and
/// `-_.:+=/@`. Anything else (spaces, quotes, control bytes, a novel) could
/// break a log line or an upstream's parser, and is replaced.
pub fn is_sane(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+=/@".contains(b))
}

/// Random per process: 48 bits from the system's generator, in hex,
/// formatted once.
fn prefix() -> &'static [u8; 12] {
    static PREFIX: OnceLock<[u8; 12]> = OnceLock::new();
    PREFIX.get_or_init(|| {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 8];
        // Only uniqueness rests on it: a failed generator leaves the clock.
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            bytes = nanos.to_le_bytes();
        }
        let mut prefix = [0; 12];
        hex(u64::from_le_bytes(bytes), &mut prefix);
        prefix
    })
}

/// The low `out.len() * 4` bits of `n` as lowercase hex (`out.len()` is
/// even), two digits a step.
fn hex(mut n: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for pair in out.rchunks_exact_mut(2) {
        let byte = (n & 0xff) as usize;
        pair[0] = DIGITS[byte >> 4];
        pair[1] = DIGITS[byte & 0xf];
        n >>= 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_id_is_kept_and_anything_else_replaced() {
        let kept = RequestId::keep_or_make(Some(b"req-42:a/b"));
        assert_eq!(kept.as_str(), "req-42:a/b");
        for insane in [
            &b""[..],
            b"has space",
            b"quote\"",
            b"new\nline",
            &[b'a'; 65],
        ] {
            let made = RequestId::keep_or_make(Some(insane));
            assert_eq!(made.as_bytes().len(), 24, "{insane:?}");
            assert!(made.as_bytes().iter().all(u8::is_ascii_hexdigit));
        }
    }

    #[test]
    fn made_ids_differ() {
        let a = RequestId::make();
        let b = RequestId::make();
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.as_str()[..12], b.as_str()[..12], "one prefix per process");
    }
}
