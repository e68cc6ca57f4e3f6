//! SPEC §13's browser protections on `static-server`'s responses, read off
//! the wire: the Content-Security-Policy with the `--api-origin` list,
//! `X-Frame-Options`, `Referrer-Policy` and `nosniff`, on every kind of
//! answer; and a bad `--api-origin` refused at start.

use std::process::Command;
use std::time::Duration;

use crate::browser::start_site;
use crate::helpers::{Proc, assets_dir, bin, client, raw_request};

/// The policy for a page that may call these two API origins.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    connect-src 'self' http://127.0.0.1:8081 https://api.example.com; \
    img-src 'self' http: https:; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// The value of header `name` in a raw response head, if present once.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    let mut values = head.lines().filter_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    });
    let value = values.next();
    assert!(values.next().is_none(), "{name} sent twice:\n{head}");
    value
}

#[test]
fn every_static_response_carries_the_policy_and_the_browser_protections() {
    let server = start_site(&[
        "http://127.0.0.1:8081".to_string(),
        "https://API.example.com/".to_string(),
    ]);
    let etag = client()
        .get(server.url("/style.css"))
        .send()
        .unwrap()
        .headers()["etag"]
        .to_str()
        .unwrap()
        .to_string();
    let conditional = client()
        .get(server.url("/style.css"))
        .header("if-none-match", &etag)
        .send()
        .unwrap();
    assert_eq!(conditional.status(), 304);

    // The page, an image, a miss, a refused path, a HEAD, and a 304.
    let mut heads: Vec<(String, u16, String)> = [
        ("GET", "/"),
        ("GET", "/images/cat.svg"),
        ("GET", "/missing.html"),
        ("GET", "/%2e%2e/Cargo.toml"),
        ("HEAD", "/index.html"),
    ]
    .iter()
    .map(|(method, path)| {
        let (status, head, _) = raw_request(server.port, method, path);
        (format!("{method} {path}"), status, head)
    })
    .collect();
    let head_of_304 = conditional
        .headers()
        .iter()
        .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
        .collect::<Vec<_>>()
        .join("\r\n");
    heads.push(("conditional GET /style.css".into(), 304, head_of_304));

    let statuses: Vec<u16> = heads.iter().map(|(_, status, _)| *status).collect();
    assert_eq!(statuses, [200, 200, 404, 404, 200, 304]);
    for (what, _, head) in &heads {
        assert_eq!(
            header(head, "content-security-policy"),
            Some(POLICY),
            "{what}:\n{head}"
        );
        assert_eq!(header(head, "x-frame-options"), Some("DENY"), "{what}");
        assert_eq!(
            header(head, "referrer-policy"),
            Some("no-referrer"),
            "{what}"
        );
        assert_eq!(
            header(head, "x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
    }

    // Without --api-origin the page may call only its own origin.
    let alone = start_site(&[]);
    let (_, head, _) = raw_request(alone.port, "GET", "/");
    let policy = header(&head, "content-security-policy").unwrap_or_default();
    assert!(policy.contains("connect-src 'self'; "), "{policy}");
}

#[test]
fn a_bad_api_origin_stops_the_server_with_a_clear_error() {
    for bad in [
        "http://127.0.0.1:8081/api",
        "127.0.0.1:8081",
        "ftp://x",
        "http://a b",
    ] {
        let mut command = Command::new(bin("static-server"));
        command
            .args(["--port", "0", "--api-origin", bad, "--path"])
            .arg(assets_dir());
        let (status, output) = Proc::spawn("static", command).finish(Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{bad}: {output}");
        assert!(
            output.contains("--api-origin") && output.contains("expected scheme://host[:port]"),
            "{bad}: {output}"
        );
        assert!(!output.contains("listening"), "{bad}: {output}");
    }
}
