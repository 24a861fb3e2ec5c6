//! The TCP admin listener's bearer tokens: `admin.token_file`'s, with
//! full rights, and `admin.read_token_file`'s, which may only read.
//!
//! Each token is read with the rest of the config
//! (surrounding whitespace trimmed, so a trailing newline does not
//! matter), so a reload after rotating it takes the new one at once. Requests are
//! checked in constant time, so response timing does not reveal how much
//! of a guess was right.

use http::header::AUTHORIZATION;
use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rights {
    /// Every call.
    Full,
    /// The calls that change nothing (see [`super::resource::Resource::only_reads`]).
    Read,
}

/// What the bearer token `headers` carry may do under the config's `full`
/// and `read` tokens; `None` for no token, or another one.
pub fn rights(full: Option<&Secret>, read: Option<&Secret>, headers: &HeaderMap) -> Option<Rights> {
    // Both are compared, so the time taken does not tell which matched.
    let is_full = full.is_some_and(|token| admits(token, headers));
    let is_read = read.is_some_and(|token| admits(token, headers));
    match (is_full, is_read) {
        (true, _) => Some(Rights::Full),
        (false, true) => Some(Rights::Read),
        (false, false) => None,
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>`.
pub fn admits(token: &Secret, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some(scheme_end) = value.iter().position(|b| *b == b' ') else {
        return false;
    };
    let (scheme, rest) = value.split_at(scheme_end);
    // `subtle` compares in time that depends only on the lengths, and keeps
    // the optimiser from cutting the comparison short.
    scheme.eq_ignore_ascii_case(b"bearer") && bool::from(rest.trim_ascii().ct_eq(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let token = Secret::from_file_text("s3cret\n").unwrap();
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            admits(&token, &headers)
        };
        assert!(with("Bearer s3cret"));
        assert!(with("bearer s3cret"));
        assert!(!with("Bearer s3cre"));
        assert!(!with("Bearer s3cret2"));
        assert!(!with("Basic s3cret"));
        assert!(!with("s3cret"));
        assert!(!admits(&token, &HeaderMap::new()));
    }
}
