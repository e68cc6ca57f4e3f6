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
//!   second copy (a config file, a `<meta>`) to drift from it.
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

use std::fmt;
use std::str::FromStr;

use axum::http::{HeaderName, HeaderValue, header};

/// A web origin, `scheme://host[:port]`, that the page may call as its API.
///
/// Parsed, not just checked: only `http`/`https`, a host of letters,
/// digits, `-` and `.` (or a bracketed IPv6 address), an optional port
/// 1..=65535, and no path, query, fragment or user info. One trailing `/`
/// is forgiven, since browsers show origins with it. Scheme and host are
/// kept in lower case, as browsers compare them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl FromStr for Origin {
    type Err = String;

    fn from_str(text: &str) -> Result<Origin, String> {
        let refuse = |why: &str| {
            format!(
                "{text:?} is not an origin ({why}): expected scheme://host[:port], \
                 such as http://127.0.0.1:8081"
            )
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| refuse("no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(refuse("the scheme must be http or https"));
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(refuse("an origin has no path, query or fragment"));
        }
        if authority.contains('@') {
            return Err(refuse("an origin has no user name or password"));
        }
        let (host, port) = match authority.rfind(':') {
            // A colon inside brackets belongs to an IPv6 address.
            Some(colon) if !authority[colon..].contains(']') => {
                let digits = &authority[colon + 1..];
                let port = digits
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0 && digits.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| refuse("the port must be a number from 1 to 65535"))?;
                (&authority[..colon], Some(port))
            }
            _ => (authority, None),
        };
        let plain_name = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        let ipv6 = host.len() > 2
            && host.starts_with('[')
            && host.ends_with(']')
            && host[1..host.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !plain_name && !ipv6 {
            return Err(refuse("the host must be a name or an IP address"));
        }
        Ok(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

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
    fn origins_parse_and_print_the_way_browsers_write_them() {
        for (given, shown) in [
            ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
            ("https://api.example.com", "https://api.example.com"),
            ("HTTP://API.Example.COM:443/", "http://api.example.com:443"),
            ("http://[::1]:8081", "http://[::1]:8081"),
            ("http://[::1]", "http://[::1]"),
            ("http://localhost:1", "http://localhost:1"),
        ] {
            let parsed = origin(given);
            assert_eq!(parsed.to_string(), shown);
            assert_eq!(origin(shown), parsed, "{shown} does not parse back");
        }
    }

    #[test]
    fn anything_but_an_origin_is_refused_saying_why() {
        let (scheme, path, user, port, host) = (
            "the scheme must be http or https",
            "no path, query or fragment",
            "no user name or password",
            "the port must be a number from 1 to 65535",
            "the host must be a name or an IP address",
        );
        for (bad, why) in [
            ("", "no scheme"),
            ("127.0.0.1:8081", "no scheme"),
            ("//127.0.0.1:8081", "no scheme"),
            ("://127.0.0.1:8081", scheme),
            ("ftp://example.com", scheme),
            ("javascript://x", scheme),
            ("http://", host),
            ("http:///", host),
            ("http://example.com/api", path),
            ("http://127.0.0.1:8081/api", path),
            ("http://example.com//", path),
            ("http://example.com?x=1", path),
            ("http://example.com#x", path),
            ("http://user@example.com", user),
            ("http://example.com:", port),
            ("http://example.com:0", port),
            ("http://example.com:65536", port),
            ("http://example.com:+80", port),
            ("http://exa mple.com", host),
            ("http://*.example.com", host),
            ("http://example.com;script-src *", host),
            ("http://[::1", host),
            ("http://[]", host),
            ("*", "no scheme"),
        ] {
            let error = bad.parse::<Origin>().expect_err(bad);
            assert!(
                error.contains(why) && error.contains("expected scheme://host[:port]"),
                "{bad}: {error}"
            );
        }
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
