//! Request-side extractors: the JSON body whatever its `Content-Type`, and
//! the `indent` query parameter.
//!
//! `axum::Json` refuses a body without `Content-Type: application/json`, but
//! the original walkthrough posts with `curl --data`, which sends a form
//! type; [`AnyJson`] reads the bytes (under the body limit) and parses them.

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;

/// Most spaces `?indent=N` accepts; more is refused rather than amplified.
pub const MAX_INDENT: usize = 10;

/// A request body parsed as JSON regardless of its declared content type.
pub struct AnyJson(pub Value);

impl<S: Send + Sync> FromRequest<S> for AnyJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::UnreadableBody
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(AnyJson)
            .map_err(|_| ApiError::BadJson)
    }
}

/// `?indent=N`: 0 (or absent) is compact JSON, 1..=10 pretty-prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Indent(pub usize);

impl Indent {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let Some(raw) = raw else { return Ok(Indent(0)) };
        let refuse = || {
            ApiError::BadQuery(format!(
                "`indent` must be an integer from 0 to {MAX_INDENT}"
            ))
        };
        if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse());
        }
        match raw.parse::<usize>() {
            Ok(n) if n <= MAX_INDENT => Ok(Indent(n)),
            _ => Err(refuse()),
        }
    }

    /// Serialises `value` with this indentation and a trailing newline.
    pub fn render<T: serde::Serialize>(self, value: &T) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        if self.0 == 0 {
            serde_json::to_writer(&mut out, value).expect("serialising to memory cannot fail");
        } else {
            let spaces = " ".repeat(self.0);
            let formatter = serde_json::ser::PrettyFormatter::with_indent(spaces.as_bytes());
            let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
            value
                .serialize(&mut serializer)
                .expect("serialising to memory cannot fail");
        }
        out.push(b'\n');
        out
    }
}

#[derive(Deserialize)]
struct IndentQuery {
    indent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Indent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Query(query) = Query::<IndentQuery>::try_from_uri(&parts.uri)
            .map_err(|_| ApiError::BadQuery("the query string is malformed".to_string()))?;
        Indent::parse(query.indent.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indent_accepts_zero_to_ten() {
        assert_eq!(Indent::parse(None).unwrap(), Indent(0));
        assert_eq!(Indent::parse(Some("0")).unwrap(), Indent(0));
        assert_eq!(Indent::parse(Some("2")).unwrap(), Indent(2));
        assert_eq!(Indent::parse(Some("10")).unwrap(), Indent(10));
    }

    #[test]
    fn indent_refuses_negative_empty_junk_and_large() {
        for raw in [
            "",
            "-1",
            "+2",
            "two",
            "2.0",
            " 2",
            "11",
            "99999999999999999999999",
        ] {
            assert!(Indent::parse(Some(raw)).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn render_indents_with_n_spaces() {
        let value = serde_json::json!([{"a": 1}]);
        assert_eq!(Indent(0).render(&value), b"[{\"a\":1}]\n");
        assert_eq!(
            String::from_utf8(Indent(2).render(&value)).unwrap(),
            "[\n  {\n    \"a\": 1\n  }\n]\n"
        );
    }
}
