//! The `Idempotency-Key` request header (SPEC §13) and the
//! `Idempotent-Replayed` answer header.
//!
//! A client that must not store a POST twice sends a key of its choosing
//! (1 to 200 characters; a UUID is typical) and, when a POST fails without an
//! answer (a 502, a reset, a timeout), sends the *same* request again with
//! the *same* key until it gets one. The first request stores; a repeat with
//! the same body, on any worker, within [`crate::store::IDEMPOTENCY_WINDOW`],
//! answers 200 with the image stored first and `Idempotent-Replayed: true`;
//! the same key with a different body is a 422. What counts as the same body
//! is the raw bytes, not their meaning: a retry must resend what it sent.
//!
//! This module only parses the header; the decision is the store's, in the
//! transaction that stores the image (see `crate::store`).

use axum::extract::FromRequestParts;
use axum::http::HeaderName;
use axum::http::request::Parts;

use super::error::ApiError;

/// The request header carrying the key.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header marking an answer that was replayed, not stored now.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Longest accepted key, in characters.
pub const MAX_KEY_CHARS: usize = 200;

/// A valid key: 1 to [`MAX_KEY_CHARS`] characters of UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of a request: `None` without the header; refused when empty,
    /// longer than [`MAX_KEY_CHARS`], not UTF-8, or sent more than once.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Result<Option<Self>, ApiError> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        let refuse = || {
            ApiError::BadHeader(format!(
                "`Idempotency-Key` must be one value of 1 to {MAX_KEY_CHARS} characters"
            ))
        };
        if values.next().is_some() {
            return Err(refuse());
        }
        let text = std::str::from_utf8(value.as_bytes()).map_err(|_| refuse())?;
        let length = text.chars().count();
        if length == 0 || length > MAX_KEY_CHARS {
            return Err(refuse());
        }
        Ok(Some(IdempotencyKey(text.to_string())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The key of a request, if it has one.
pub struct MaybeKey(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        IdempotencyKey::from_headers(&parts.headers).map(MaybeKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn key(values: &[&[u8]]) -> Result<Option<IdempotencyKey>, ApiError> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(IDEMPOTENCY_KEY, HeaderValue::from_bytes(value).unwrap());
        }
        IdempotencyKey::from_headers(&headers)
    }

    #[test]
    fn a_key_is_one_to_200_characters() {
        assert_eq!(key(&[]).unwrap(), None);
        assert_eq!(key(&[b"a"]).unwrap().unwrap().as_str(), "a");
        let longest = "k".repeat(MAX_KEY_CHARS);
        assert_eq!(
            key(&[longest.as_bytes()]).unwrap().unwrap().as_str(),
            longest
        );
        // Characters, not bytes: 200 two-byte characters are fine.
        let wide = "é".repeat(MAX_KEY_CHARS);
        assert!(key(&[wide.as_bytes()]).unwrap().is_some());
    }

    #[test]
    fn empty_long_repeated_or_non_utf8_keys_are_refused() {
        let long = "k".repeat(MAX_KEY_CHARS + 1);
        let wide = "é".repeat(MAX_KEY_CHARS + 1);
        for values in [
            vec![b"".as_slice()],
            vec![long.as_bytes()],
            vec![wide.as_bytes()],
            vec![b"a", b"b"],
            vec![b"\xff\xfe"],
        ] {
            let error = key(&values).err().unwrap();
            assert!(matches!(error, ApiError::BadHeader(_)), "{values:?}");
        }
    }
}
