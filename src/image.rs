//! The domain: a stored [`Image`] and a validated [`NewImage`].
//!
//! `NewImage::parse` is the only place the POST rules of SPEC §3 live: all
//! three fields are strings, `title` and `url` are non-empty after trimming,
//! lengths are counted in characters, and `url` is an absolute http(s) URL or
//! a site path starting with a single `/`; no field holds a NUL character
//! (PostgreSQL's text cannot). Unknown fields are ignored. Values
//! are stored as sent (trimmed), never as HTML.

use serde::Serialize;
use serde_json::Value;

pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_ALT_TEXT_CHARS: usize = 1000;
pub const MAX_URL_CHARS: usize = 2048;

/// An image as stored and as returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    pub id: i64,
    pub title: String,
    pub alt_text: String,
    pub url: String,
}

/// An image that passed validation and may be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewImage {
    title: String,
    alt_text: String,
    url: String,
}

/// Why a POST body was refused; the text is safe to show to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("request body must be a JSON object with title, alt_text and url")]
    NotAnObject,
    #[error("`{0}` is required")]
    Missing(&'static str),
    #[error("`{0}` must be a string")]
    NotAString(&'static str),
    #[error("`{0}` must not be empty")]
    Empty(&'static str),
    #[error("`{field}` must be at most {max} characters")]
    TooLong { field: &'static str, max: usize },
    /// U+0000 has no place in text, and PostgreSQL cannot store it: it is
    /// refused on both backends alike.
    #[error("`{0}` must not contain NUL characters")]
    Nul(&'static str),
    #[error("`url` must be an absolute http(s) URL or a site path starting with a single /")]
    BadUrl,
}

impl NewImage {
    /// Validates a decoded JSON body.
    pub fn parse(body: &Value) -> Result<Self, ValidationError> {
        let object = body.as_object().ok_or(ValidationError::NotAnObject)?;
        let field = |name: &'static str, max: usize, required: bool| {
            let value = match object.get(name) {
                None | Some(Value::Null) => return Err(ValidationError::Missing(name)),
                Some(Value::String(s)) => s.trim(),
                Some(_) => return Err(ValidationError::NotAString(name)),
            };
            if required && value.is_empty() {
                return Err(ValidationError::Empty(name));
            }
            if value.chars().count() > max {
                return Err(ValidationError::TooLong { field: name, max });
            }
            if value.contains('\0') {
                return Err(ValidationError::Nul(name));
            }
            Ok(value.to_string())
        };
        let title = field("title", MAX_TITLE_CHARS, true)?;
        let alt_text = field("alt_text", MAX_ALT_TEXT_CHARS, false)?;
        let url = field("url", MAX_URL_CHARS, true)?;
        if !is_acceptable_url(&url) {
            return Err(ValidationError::BadUrl);
        }
        Ok(Self {
            title,
            alt_text,
            url,
        })
    }

    pub fn title(&self) -> &str {
        &self.title
    }
    pub fn alt_text(&self) -> &str {
        &self.alt_text
    }
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// An absolute `http`/`https` URL with a host, or a site path (`/x`, not `//x`).
fn is_acceptable_url(url: &str) -> bool {
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return false;
    }
    if let Some(path) = url.strip_prefix('/') {
        return !path.starts_with('/');
    }
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    match rest {
        Some(rest) => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host = authority.rsplit('@').next().unwrap_or("");
            !host.is_empty() && !host.starts_with(':')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(title: &str, alt: &str, url: &str) -> Value {
        json!({"title": title, "alt_text": alt, "url": url})
    }

    #[test]
    fn refuses_nul_characters_in_any_field() {
        let with_nul = |field: &str| {
            let mut body = json!({"title": "t", "alt_text": "a", "url": "/x"});
            body[field] = json!("before\u{0}after");
            NewImage::parse(&body)
        };
        assert_eq!(with_nul("title"), Err(ValidationError::Nul("title")));
        assert_eq!(with_nul("alt_text"), Err(ValidationError::Nul("alt_text")));
        assert!(with_nul("url").is_err());
    }

    #[test]
    fn accepts_the_original_walkthrough_post_and_trims() {
        let image = NewImage::parse(&json!({
            "title": "  Cat ", "alt_text": "A cool cat",
            "url": "https://images.unsplash.com/photo-1533738363-b7f9aef128ce",
            "extra": 1
        }))
        .unwrap();
        assert_eq!(image.title(), "Cat");
        assert_eq!(image.alt_text(), "A cool cat");
    }

    #[test]
    fn accepts_site_paths_and_empty_alt_text() {
        assert!(NewImage::parse(&body("t", "", "/images/cat.svg")).is_ok());
        assert!(NewImage::parse(&body("t", "", "HTTP://Example.com")).is_ok());
    }

    #[test]
    fn refuses_dangerous_or_relative_urls() {
        for url in [
            "javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "//evil.example/x.png",
            "images/cat.svg",
            "ftp://example.com/x",
            "http://",
            "https:///path",
            "/images/a b.svg",
            "/\\evil.example",
        ] {
            assert_eq!(
                NewImage::parse(&body("t", "a", url)),
                Err(ValidationError::BadUrl),
                "{url}"
            );
        }
    }

    #[test]
    fn requires_string_fields() {
        assert_eq!(
            NewImage::parse(&json!({"alt_text": "a", "url": "/x"})),
            Err(ValidationError::Missing("title"))
        );
        assert_eq!(
            NewImage::parse(&json!({"title": "t", "url": "/x"})),
            Err(ValidationError::Missing("alt_text"))
        );
        assert_eq!(
            NewImage::parse(&json!({"title": 5, "alt_text": "a", "url": "/x"})),
            Err(ValidationError::NotAString("title"))
        );
        assert_eq!(
            NewImage::parse(&json!([1, 2])),
            Err(ValidationError::NotAnObject)
        );
    }

    #[test]
    fn refuses_blank_title_and_url() {
        assert_eq!(
            NewImage::parse(&body("   ", "a", "/x")),
            Err(ValidationError::Empty("title"))
        );
        assert_eq!(
            NewImage::parse(&body("t", "a", " ")),
            Err(ValidationError::Empty("url"))
        );
    }

    #[test]
    fn counts_characters_not_bytes() {
        let title = "é".repeat(MAX_TITLE_CHARS);
        assert!(NewImage::parse(&body(&title, "a", "/x")).is_ok());
        let title = "é".repeat(MAX_TITLE_CHARS + 1);
        assert_eq!(
            NewImage::parse(&body(&title, "a", "/x")),
            Err(ValidationError::TooLong {
                field: "title",
                max: MAX_TITLE_CHARS
            })
        );
        let alt = "x".repeat(MAX_ALT_TEXT_CHARS + 1);
        assert!(NewImage::parse(&body("t", &alt, "/x")).is_err());
        let url = format!("/{}", "x".repeat(MAX_URL_CHARS));
        assert!(NewImage::parse(&body("t", "a", &url)).is_err());
    }
}
