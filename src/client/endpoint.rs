//! What `--endpoint URL` means: a front door, and where its API is.
//!
//! An endpoint is a front door's base URL, `http://HOST[:PORT]`, whose API
//! is under `/api` (nginx sends `/api/…` to the workers), so
//! `http://127.0.0.1:8080` and `http://127.0.0.1:8080/api` name the same
//! API. A URL with any other path names the API's own base
//! (`http://proxy.example/gallery/api`); a trailing `/images.json` is
//! forgiven. Only plain `http`: the client speaks HTTP/1.1 without TLS (a
//! front door behind TLS is reached through its plain-HTTP port, or not at
//! all). No user info, query or fragment.

use std::fmt;

/// One front door: where to connect, what to send as `Host`, and the path
/// under which its API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as the user gave it, without a trailing `/`: how messages
    /// name the endpoint.
    shown: String,
    /// `HOST[:PORT]` as given, for the `Host` header.
    authority: String,
    /// The host to connect to (an IPv6 address without its brackets).
    host: String,
    port: u16,
    /// The API's base path: `/api`, or the path given; no trailing `/`.
    api_path: String,
}

impl Endpoint {
    /// Parses `--endpoint`'s value (see the module doc).
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let refuse = |why: &str| {
            format!(
                "{text:?} is not an endpoint ({why}): expected a front door's \
                 http://HOST[:PORT], such as http://127.0.0.1:8080"
            )
        };
        let trimmed = text.trim();
        let (scheme, rest) = trimmed
            .split_once("://")
            .ok_or_else(|| refuse("no scheme"))?;
        match scheme.to_ascii_lowercase().as_str() {
            "http" => {}
            "https" => {
                return Err(refuse(
                    "gallery-client speaks plain HTTP only; give the front door's http:// address",
                ));
            }
            _ => return Err(refuse("the scheme must be http")),
        }
        if rest.contains(['?', '#']) {
            return Err(refuse("an endpoint has no query or fragment"));
        }
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        let (host, port) = crate::origin::parse_authority(authority).map_err(refuse)?;
        let port = port.unwrap_or(80);
        if path.contains("//") || path.split('/').any(|part| part == ".." || part == ".") {
            return Err(refuse("the path must be plain, like /api"));
        }
        if !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~%".contains(&b))
        {
            return Err(refuse("the path may hold only letters, digits and -._~%/"));
        }
        let path = path.trim_end_matches('/');
        let path = path.strip_suffix("/images.json").unwrap_or(path);
        let api_path = if path.is_empty() { "/api" } else { path };
        Ok(Endpoint {
            shown: trimmed.trim_end_matches('/').to_string(),
            authority: authority.to_string(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            api_path: api_path.to_string(),
        })
    }

    /// The host to connect to.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The value of the `Host` header.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The request target of `path` under the API (`/images.json` →
    /// `/api/images.json`).
    pub fn target(&self, path: &str) -> String {
        format!("{}{path}", self.api_path)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(text: &str) -> Endpoint {
        Endpoint::parse(text).unwrap_or_else(|e| panic!("{text:?} refused: {e}"))
    }

    #[test]
    fn a_front_door_and_its_api_base_name_the_same_api() {
        for given in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://127.0.0.1:8080/api",
            "http://127.0.0.1:8080/api/",
            "http://127.0.0.1:8080/api/images.json",
            "HTTP://127.0.0.1:8080",
        ] {
            let parsed = endpoint(given);
            assert_eq!(parsed.host(), "127.0.0.1", "{given}");
            assert_eq!(parsed.port(), 8080, "{given}");
            assert_eq!(parsed.authority(), "127.0.0.1:8080", "{given}");
            assert_eq!(
                parsed.target("/images.json?indent=2"),
                "/api/images.json?indent=2",
                "{given}"
            );
        }
        assert_eq!(
            endpoint("http://127.0.0.1:8080/").to_string(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            endpoint("http://127.0.0.1:8080/api").to_string(),
            "http://127.0.0.1:8080/api"
        );
    }

    #[test]
    fn another_path_is_the_api_base_itself_and_the_port_defaults_to_80() {
        let parsed = endpoint("http://gallery.example/shop/api/");
        assert_eq!((parsed.host(), parsed.port()), ("gallery.example", 80));
        assert_eq!(parsed.authority(), "gallery.example");
        assert_eq!(parsed.target("/images.json"), "/shop/api/images.json");

        let v6 = endpoint("http://[::1]:9080");
        assert_eq!((v6.host(), v6.port()), ("::1", 9080));
        assert_eq!(v6.authority(), "[::1]:9080");
    }

    #[test]
    fn anything_else_is_refused_saying_why() {
        for (bad, why) in [
            ("127.0.0.1:8080", "no scheme"),
            ("", "no scheme"),
            ("https://127.0.0.1:8443", "plain HTTP only"),
            ("ftp://127.0.0.1", "must be http"),
            ("http://", "the host must be"),
            ("http://:8080", "the host must be"),
            ("http://exa mple:80", "the host must be"),
            ("http://127.0.0.1:0", "the port must be"),
            ("http://127.0.0.1:65536", "the port must be"),
            ("http://127.0.0.1:", "the port must be"),
            ("http://user:pw@127.0.0.1:8080", "no user name"),
            ("http://127.0.0.1:8080/api?x=1", "no query"),
            ("http://127.0.0.1:8080/#top", "no query"),
            ("http://127.0.0.1:8080/../api", "plain, like /api"),
            ("http://127.0.0.1:8080//api", "plain, like /api"),
            ("http://127.0.0.1:8080/a\"pi", "only letters"),
        ] {
            let error = Endpoint::parse(bad).expect_err(bad);
            assert!(
                error.contains(why) && error.contains("expected a front door's"),
                "{bad}: {error}"
            );
        }
    }
}
