//! The browser protections sent with every static response (SPEC §13), and
//! the one place that decides which API origins the page may call.
//!
//! `Content-Security-Policy`, rendered once at start-up from the
//! `--api-origin` list:
//!
//! ```text
//! default-src 'self'; script-src 'self'; style-src 'self';
//! connect-src 'self' <api origins>; img-src 'self' http: https:;
//! object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'
//! ```
//!
//! - Scripts and styles only from the page's own origin, none inline: the
//!   page is `index.html` + `script.js` + `style.css` and nothing else.
//! - `connect-src` is where the API may be: the page's own origin (its
//!   `/api` through the front door) plus each `--api-origin` (the CORS
//!   walkthrough: page on 8082, API on 8081). A `?api=` naming any other
//!   origin is refused by the browser before a byte leaves it; the page
//!   hears of it through the `securitypolicyviolation` event and says so.
//!   The policy is thus the only list of allowed origins: there is no
//!   second copy (a config file, a `<meta>`) to drift from it. A page
//!   given several front doors (`?api=A,B`, tried in turn) needs each one's
//!   origin here (`--api-origin` once per origin); one the policy refuses
//!   is passed over while another remains.
//! - `img-src` allows any `http:`/`https:` image, not just the API's
//!   origins: the API accepts any absolute http(s) URL as an image (the
//!   original walkthrough adds one from Unsplash), so the page must be able
//!   to show one. An `<img>` is passive: an SVG in it runs no script. The
//!   seeded images are site paths on this server (`'self'`); `data:` is not
//!   allowed because the API refuses `data:` URLs, so no stored image can
//!   need it.
//! - `object-src 'none'`, `base-uri 'none'` (no `<base>` redirecting the
//!   relative script URL), `form-action 'self'` (the form is sent by the
//!   script; without it, only to this page), `frame-ancestors 'none'`.
//!
//! `X-Frame-Options: DENY` says the same as `frame-ancestors 'none'` to
//! browsers that predate CSP 2. `Referrer-Policy: no-referrer`, rather than
//! `strict-origin-when-cross-origin`: the page loads images from any host a
//! user typed in, and those hosts need not learn the gallery's address (or
//! its `?api=` query); nothing here reads `Referer` (CORS uses `Origin`,
//! which is sent regardless).
//!
//! The headers go on every response (404s and images included): an SVG
//! opened directly is a document too.

use axum::http::{HeaderName, HeaderValue, header};

pub use crate::origin::Origin;

/// The `Content-Security-Policy` of the page, allowing `api_origins` as
/// API origins besides the page's own.
pub fn content_security_policy(api_origins: &[Origin]) -> String {
    let connect: String = api_origins
        .iter()
        .map(|origin| format!(" {origin}"))
        .collect();
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; \
         connect-src 'self'{connect}; img-src 'self' http: https:; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// Every security header of a static response, `api_origins` rendered
/// into the policy.
pub fn security_headers(api_origins: &[Origin]) -> [(HeaderName, HeaderValue); 3] {
    let policy = HeaderValue::try_from(content_security_policy(api_origins))
        .expect("a policy made of parsed origins is a valid header value");
    [
        (header::CONTENT_SECURITY_POLICY, policy),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(text: &str) -> Origin {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} refused: {e}"))
    }

    #[test]
    fn the_policy_allows_the_api_origins_for_connections_only() {
        let policy = content_security_policy(&[
            origin("http://127.0.0.1:8081"),
            origin("https://api.example.com"),
        ]);
        let directives: Vec<&str> = policy.split("; ").collect();
        assert!(
            directives
                .contains(&"connect-src 'self' http://127.0.0.1:8081 https://api.example.com")
        );
        assert!(directives.contains(&"script-src 'self'"));
        assert!(directives.contains(&"style-src 'self'"));
        assert!(directives.contains(&"img-src 'self' http: https:"));
        assert!(directives.contains(&"frame-ancestors 'none'"));
        assert!(directives.contains(&"object-src 'none'"));
        assert!(directives.contains(&"base-uri 'none'"));
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(
            content_security_policy(&[])
                .split("; ")
                .find(|d| d.starts_with("connect-src")),
            Some("connect-src 'self'")
        );
    }
}
