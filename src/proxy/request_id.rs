//! `X-Request-Id`: one name for a request from the client to the
//! upstream's logs and back. A sane id the client sent is kept; any other
//! request gets one made here. Either way it goes upstream, back to the
//! client, into the access log and into every error body.

use std::cell::RefCell;
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

    /// A new id: 24 hex digits, 96 bits from the system's random
    /// generator. Random, so that nobody can tell the id another request
    /// will get and send it on their own to muddle two requests' lines; 96
    /// bits, so that ids repeat with negligible odds (about 10⁻⁹ after 10¹⁰
    /// requests), within a run and across runs and instances.
    pub fn make() -> RequestId {
        let mut id = RequestId::default();
        for (pair, byte) in id.bytes[..24].chunks_exact_mut(2).zip(random_bytes()) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
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

const HEX: &[u8; 16] = b"0123456789abcdef";

/// How many ids' worth of random bytes a thread fetches at once: one
/// system call per 256 ids rather than one per id.
const BATCH: usize = 256;

thread_local! {
    static RANDOM: RefCell<Batch> = const {
        RefCell::new(Batch {
            bytes: [0; 12 * BATCH],
            next: 12 * BATCH,
        })
    };
}

/// Random bytes fetched ahead, used 12 at a time.
struct Batch {
    bytes: [u8; 12 * BATCH],
    next: usize,
}

/// 12 random bytes, never handed out twice.
fn random_bytes() -> [u8; 12] {
    RANDOM.with_borrow_mut(|batch| {
        if batch.next == batch.bytes.len() {
            refill(&mut batch.bytes);
            batch.next = 0;
        }
        let at = batch.next;
        batch.next += 12;
        batch.bytes[at..at + 12]
            .try_into()
            .expect("12 bytes of the batch")
    })
}

/// Fills `bytes` from the system's generator. Should it ever fail, ids
/// still differ and are not guessed from each other: a keyed hash (std's
/// SipHash, keyed at random once per process) of a counter stands in.
fn refill(bytes: &mut [u8]) {
    use ring::rand::SecureRandom;
    if ring::rand::SystemRandom::new().fill(bytes).is_ok() {
        return;
    }
    use std::hash::BuildHasher;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static KEY: OnceLock<std::hash::RandomState> = OnceLock::new();
    let key = KEY.get_or_init(std::hash::RandomState::new);
    for chunk in bytes.chunks_mut(8) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let hash = key.hash_one(n).to_le_bytes();
        chunk.copy_from_slice(&hash[..chunk.len()]);
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
        // Nothing shared that would tell the next one: no common prefix
        // beyond what chance gives.
        let common = a
            .as_bytes()
            .iter()
            .zip(b.as_bytes())
            .take_while(|(x, y)| x == y);
        assert!(common.count() < 6, "{a:?} then {b:?}");
    }

    #[test]
    fn ids_stay_distinct_across_batches() {
        let ids: std::collections::HashSet<String> = (0..3 * BATCH)
            .map(|_| RequestId::make().as_str().to_owned())
            .collect();
        assert_eq!(ids.len(), 3 * BATCH);
    }
}
