//! The TCP admin listener's bearer token.
//!
//! The token is read from `admin.token_file` with the rest of the config
//! (surrounding whitespace trimmed, so a trailing newline does not
//! matter), so a reload after rotating it takes the new one at once. Requests are
//! checked in constant time, so response timing does not reveal how much
//! of a guess was right.

use http::header::AUTHORIZATION;
use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::Secret;

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
