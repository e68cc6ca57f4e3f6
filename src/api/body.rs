//! Request-side extractors: the JSON body whatever its `Content-Type`, the
//! `indent` query parameter, and the list query (`indent`, `limit`,
//! `after`); and rendering JSON with that indentation.
//!
//! `axum::Json` refuses a body without `Content-Type: application/json`, but
//! the original walkthrough posts with `curl --data`, which sends a form
//! type; [`AnyJson`] reads the bytes (under the body limit) and parses them,
//! keeping the bytes for the `Idempotency-Key` comparison. A declared
//! `Content-Length` over the limit is refused before a byte of the body is
//! read, so a client announcing a huge upload gets its 413 at once instead
//! of the server waiting for (or draining) the body.
//!
//! Query values are parsed strictly: digits only, no sign, no blanks, and a
//! parameter given twice is a malformed query. `after` without `limit` is a
//! 400 too, rather than a guess at what the client meant.

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use bytes::Bytes;
use serde::ser::{SerializeSeq, Serializer as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::MAX_BODY_BYTES;
use super::error::ApiError;
use crate::store::Page;

/// Most spaces `?indent=N` accepts; more is refused rather than amplified.
pub const MAX_INDENT: usize = 10;

/// Most rows one `?limit=N` page may ask for.
pub const MAX_PAGE_LIMIT: u32 = 500;

/// A request body parsed as JSON regardless of its declared content type,
/// and the bytes it was parsed from.
pub struct AnyJson(pub Value, pub Bytes);

impl<S: Send + Sync> FromRequest<S> for AnyJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
            return Err(ApiError::TooLarge);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else if crate::http::is_body_timeout(&rejection) {
                ApiError::SlowBody
            } else {
                ApiError::UnreadableBody
            }
        })?;
        let value = serde_json::from_slice(&bytes).map_err(|_| ApiError::BadJson)?;
        Ok(AnyJson(value, bytes))
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

    /// Serialises a JSON array whose elements `fill` pushes one at a time,
    /// byte for byte as [`Indent::render`] would serialise them collected
    /// in a `Vec`, into a buffer of `capacity` to start with. `fill`'s error
    /// abandons the output.
    pub fn render_each<T: Serialize, E>(
        self,
        capacity: usize,
        fill: impl FnOnce(&mut dyn FnMut(&T)) -> Result<(), E>,
    ) -> Result<Vec<u8>, E> {
        let mut out = Vec::with_capacity(capacity);
        if self.0 == 0 {
            let formatter = serde_json::ser::CompactFormatter;
            render_seq(&mut out, formatter, fill)?;
        } else {
            let spaces = " ".repeat(self.0);
            let formatter = serde_json::ser::PrettyFormatter::with_indent(spaces.as_bytes());
            render_seq(&mut out, formatter, fill)?;
        }
        out.push(b'\n');
        Ok(out)
    }
}

fn render_seq<T: Serialize, E, F: serde_json::ser::Formatter>(
    out: &mut Vec<u8>,
    formatter: F,
    fill: impl FnOnce(&mut dyn FnMut(&T)) -> Result<(), E>,
) -> Result<(), E> {
    const INFALLIBLE: &str = "serialising to memory cannot fail";
    let mut serializer = serde_json::Serializer::with_formatter(out, formatter);
    let mut seq = serializer.serialize_seq(None).expect(INFALLIBLE);
    fill(&mut |element| seq.serialize_element(element).expect(INFALLIBLE))?;
    seq.end().expect(INFALLIBLE);
    Ok(())
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

/// The query of `GET /images.json`: `indent`, and a page when `limit`
/// (and optionally `after`) is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListQuery {
    pub indent: Indent,
    pub page: Option<Page>,
}

#[derive(Deserialize)]
struct RawListQuery {
    indent: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

impl ListQuery {
    fn parse(raw: RawListQuery) -> Result<Self, ApiError> {
        let indent = Indent::parse(raw.indent.as_deref())?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let page = match (raw.limit.as_deref(), raw.after.as_deref()) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ApiError::BadQuery(format!(
                    "`after` needs a `limit` (1 to {MAX_PAGE_LIMIT})"
                )));
            }
            (Some(limit), after) => {
                let limit = limit
                    .parse::<u32>()
                    .ok()
                    .filter(|n| digits(limit) && (1..=MAX_PAGE_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadQuery(format!(
                            "`limit` must be an integer from 1 to {MAX_PAGE_LIMIT}"
                        ))
                    })?;
                let after = match after {
                    None => 0,
                    Some(after) if digits(after) => {
                        // Past the largest id there is nothing to return.
                        after.parse::<i64>().unwrap_or(i64::MAX)
                    }
                    Some(_) => {
                        return Err(ApiError::BadQuery(
                            "`after` must be a non-negative integer (an image id)".to_string(),
                        ));
                    }
                };
                Some(Page { after, limit })
            }
        };
        Ok(ListQuery { indent, page })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Query(raw) = Query::<RawListQuery>::try_from_uri(&parts.uri)
            .map_err(|_| ApiError::BadQuery("the query string is malformed".to_string()))?;
        ListQuery::parse(raw)
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

    fn list(query: &str) -> Result<ListQuery, ApiError> {
        let uri: axum::http::Uri = format!("/images.json?{query}").parse().unwrap();
        let Query(raw) = Query::<RawListQuery>::try_from_uri(&uri)
            .map_err(|_| ApiError::BadQuery("malformed".into()))?;
        ListQuery::parse(raw)
    }

    #[test]
    fn list_query_pages_only_with_a_limit() {
        let page = |after, limit| Some(Page { after, limit });
        assert_eq!(list("").unwrap().page, None);
        assert_eq!(list("indent=2").unwrap().indent, Indent(2));
        assert_eq!(list("limit=1").unwrap().page, page(0, 1));
        assert_eq!(list("limit=500&after=0").unwrap().page, page(0, 500));
        assert_eq!(list("after=7&limit=10").unwrap().page, page(7, 10));
        assert_eq!(list("limit=010").unwrap().page, page(0, 10));
        assert_eq!(
            list("limit=3&after=99999999999999999999999").unwrap().page,
            page(i64::MAX, 3)
        );
        let both = list("limit=2&after=5&indent=4").unwrap();
        assert_eq!((both.indent, both.page), (Indent(4), page(5, 2)));
    }

    #[test]
    fn list_query_refuses_bad_limits_and_cursors() {
        for query in [
            "limit=0",
            "limit=501",
            "limit=",
            "limit=-1",
            "limit=+5",
            "limit=1.5",
            "limit=ten",
            "limit=%205",
            "limit=4294967297",
            "limit=5&after=",
            "limit=5&after=-1",
            "limit=5&after=x",
            "limit=5&after=1e3",
            "after=5",
            "after=",
            "limit=5&limit=6",
            "limit=5&indent=11",
        ] {
            let error = list(query)
                .err()
                .unwrap_or_else(|| panic!("{query:?} accepted"));
            assert!(matches!(error, ApiError::BadQuery(_)), "{query}: {error}");
        }
    }

    #[test]
    fn render_each_matches_render_of_a_vec_for_every_indent() {
        let values = [
            serde_json::json!({"id": 1, "t": "a\"b"}),
            serde_json::json!({"id": 2, "t": [1, {"x": null}]}),
        ];
        for n in 0..=MAX_INDENT {
            for count in 0..=values.len() {
                let slice = &values[..count];
                let streamed = Indent(n)
                    .render_each(0, |push| {
                        slice.iter().for_each(push);
                        Ok::<(), ()>(())
                    })
                    .unwrap();
                assert_eq!(streamed, Indent(n).render(&slice.to_vec()), "{n} {count}");
            }
        }
        let failed = Indent(0).render_each::<Value, _>(0, |_| Err("broken"));
        assert_eq!(failed, Err("broken"));
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
