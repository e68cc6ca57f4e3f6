//! Web origins (`scheme://host[:port]`), parsed in one place for every flag
//! that names one: `static-server --api-origin` and `--cors-origin` of the
//! API and the supervisor (whose nginx config renders the same list).

use std::fmt;
use std::str::FromStr;

/// A web origin, `scheme://host[:port]`: an API the page may call
/// (`static-server --api-origin`) or a page that may call the API
/// (`--cors-origin`).
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
        let (host, port) = parse_authority(authority).map_err(refuse)?;
        Ok(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// `HOST[:PORT]` of a URL: a host of letters, digits, `-` and `.` (or a
/// bracketed IPv6 address, brackets kept) and an optional port 1..=65535,
/// with no user info. The error says why, for the caller's message.
pub fn parse_authority(authority: &str) -> Result<(&str, Option<u16>), &'static str> {
    if authority.contains('@') {
        return Err("it has no user name or password");
    }
    let (host, port) = match authority.rfind(':') {
        // A colon inside brackets belongs to an IPv6 address.
        Some(colon) if !authority[colon..].contains(']') => {
            let digits = &authority[colon + 1..];
            let port = digits
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0 && digits.bytes().all(|b| b.is_ascii_digit()))
                .ok_or("the port must be a number from 1 to 65535")?;
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
        return Err("the host must be a name or an IP address");
    }
    Ok((host, port))
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
}
