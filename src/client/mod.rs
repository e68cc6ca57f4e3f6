//! `gallery-client`: the API from the command line, through whichever of
//! several front doors answers (SPEC §10, "No single front door").
//!
//! ```text
//! gallery-client --endpoint http://A:8080 --endpoint http://B:8080 list [--indent N]
//! gallery-client --endpoint http://A:8080 --endpoint http://B:8080 add TITLE ALT URL
//! ```
//!
//! - [`endpoint`]: what an `--endpoint` URL names (a front door; its API
//!   under `/api`).
//! - [`failover`]: the rules, pure: which outcome moves a request on to the
//!   next endpoint, and the words for it.
//! - [`transport`]: one HTTP exchange with one endpoint (hyper's client,
//!   already in the tree for the supervisor's probes), sorted into an
//!   outcome.
//!
//! Each request starts again from the first endpoint; nothing is
//! remembered between runs. `add` always sends an `Idempotency-Key` (128
//! random bits from `/dev/urandom`, in hex) with the very same body bytes to
//! each endpoint it tries, so a POST that one front door may have stored
//! before dying is answered by the next one with the image stored first,
//! never stored twice. The switches are reported on stderr, one line each,
//! once the request has an answer; when none answers, the one error line
//! names every endpoint and why.
//!
//! This module owns its own flags ([`ClientArgs`]) rather than
//! `crate::cli`, which holds the servers' and the supervisor's: the client
//! shares none of them.

pub mod endpoint;
pub mod failover;
pub mod transport;

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use hyper::{Method, header};

use self::endpoint::Endpoint;
use self::failover::{Answer, first_answer};
use self::transport::{Request, Timeouts};
use crate::api::IDEMPOTENCY_KEY;
use crate::cli::parse_duration;

/// Lists and adds gallery images through whichever front door answers:
/// each request goes to the endpoints in turn, skipping one that refuses
/// the connection, does not answer, or answers 502, 503 or 504.
#[derive(Debug, Clone, Parser)]
#[command(name = "gallery-client", version)]
pub struct ClientArgs {
    /// A front door, http://HOST[:PORT], whose API is under /api (the same
    /// with /api written out; another path is the API's own base).
    /// Repeatable, tried in the order given; GALLERY_ENDPOINTS takes a
    /// comma-separated list.
    #[arg(
        long = "endpoint",
        global = true,
        value_name = "URL",
        env = "GALLERY_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080",
        value_parser = Endpoint::parse,
    )]
    pub endpoints: Vec<Endpoint>,
    /// How long an endpoint may take to accept a connection before the
    /// next is tried (seconds, or with a unit: 500ms).
    #[arg(long, global = true, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,
    /// How long an endpoint may take to answer a request before the next is
    /// tried (a POST only because it carries an Idempotency-Key).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum ClientCommand {
    /// Print every image, as the API's JSON array.
    List {
        /// Pretty-print with N spaces (0..=10; 0 is compact).
        #[arg(long, value_name = "N")]
        indent: Option<u32>,
    },
    /// Add an image and print it as stored (with its id).
    Add {
        /// The image's title.
        title: String,
        /// What the picture shows, for people who cannot see it.
        alt: String,
        /// The image's address: an absolute http(s) URL or a site path (/images/cat.svg).
        url: String,
        /// Pretty-print the stored image with N spaces (0..=10).
        #[arg(long, value_name = "N")]
        indent: Option<u32>,
    },
}

/// Runs one command; the answer's body goes to stdout, switches to stderr.
pub fn run(args: ClientArgs) -> anyhow::Result<()> {
    let request = match &args.command {
        ClientCommand::List { indent } => Request {
            method: Method::GET,
            path: images_path(*indent),
            headers: Vec::new(),
            body: Bytes::new(),
        },
        ClientCommand::Add {
            title,
            alt,
            url,
            indent,
        } => {
            let image = serde_json::json!({"title": title, "alt_text": alt, "url": url});
            Request {
                method: Method::POST,
                path: images_path(*indent),
                headers: vec![
                    (header::CONTENT_TYPE, "application/json".to_string()),
                    (IDEMPOTENCY_KEY, idempotency_key()?),
                ],
                body: Bytes::from(image.to_string()),
            }
        }
    };
    let timeouts = Timeouts {
        connect: args.connect_timeout,
        request: args.timeout,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting the I/O runtime")?;
    let resendable = request.method == Method::GET
        || request
            .headers
            .iter()
            .any(|(name, _)| name == IDEMPOTENCY_KEY);
    let endpoints = &args.endpoints;
    let (index, answer, skipped) = first_answer(endpoints, resendable, |endpoint| {
        transport::send(&runtime, endpoint, &request, timeouts)
    })
    .map_err(|unanswered| anyhow::anyhow!(failover::explain(endpoints, &unanswered)))?;
    let mut stderr = std::io::stderr().lock();
    for line in failover::notices(endpoints, &skipped) {
        let _ = writeln!(stderr, "{line}");
    }
    let body = accept(&endpoints[index], &answer)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&body)
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

/// `/images.json`, with `?indent=N` when asked.
fn images_path(indent: Option<u32>) -> String {
    match indent {
        Some(n) => format!("/images.json?indent={n}"),
        None => "/images.json".to_string(),
    }
}

/// The body of a successful answer (ending with a newline), or the API's
/// error message as this command's error.
fn accept(endpoint: &Endpoint, answer: &Answer) -> anyhow::Result<Vec<u8>> {
    let json: Option<serde_json::Value> = serde_json::from_slice(&answer.body).ok();
    if !(200..300).contains(&answer.status) {
        let status = format!("{} {}", answer.status, answer.reason);
        let message = json
            .as_ref()
            .and_then(|body| body.get("error")?.as_str().map(str::to_string));
        return Err(match message {
            Some(message) => anyhow::anyhow!("{endpoint} answered {}: {message}", status.trim()),
            None => anyhow::anyhow!(
                "{endpoint} answered {} without the API's error message: is it a gallery front door?",
                status.trim()
            ),
        });
    }
    if json.is_none() {
        anyhow::bail!(
            "{endpoint} answered {} with something other than JSON: is it a gallery front door?",
            answer.status
        );
    }
    let mut body = answer.body.clone();
    if body.last() != Some(&b'\n') {
        body.push(b'\n');
    }
    Ok(body)
}

/// A fresh key: 128 bits from the system's random source, as 32 hex digits.
fn idempotency_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("reading /dev/urandom for an Idempotency-Key")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            reason: hyper::StatusCode::from_u16(status)
                .unwrap()
                .canonical_reason()
                .unwrap_or(""),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_refusal_is_the_apis_own_message() {
        let endpoint = Endpoint::parse("http://127.0.0.1:8080").unwrap();
        let error = accept(
            &endpoint,
            &answer(400, r#"{"error":"`url` must be an absolute http(s) URL"}"#),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "http://127.0.0.1:8080 answered 400 Bad Request: `url` must be an absolute http(s) URL"
        );
        let error = accept(&endpoint, &answer(404, "<html>nope</html>")).unwrap_err();
        assert!(error.to_string().contains("is it a gallery front door?"));
        let error = accept(&endpoint, &answer(200, "<html>hi</html>")).unwrap_err();
        assert!(error.to_string().contains("other than JSON"), "{error}");
        assert_eq!(accept(&endpoint, &answer(200, "[]")).unwrap(), b"[]\n");
        assert_eq!(accept(&endpoint, &answer(200, "[]\n")).unwrap(), b"[]\n");
    }

    #[test]
    fn keys_are_fresh_128_bit_hex() {
        let (a, b) = (idempotency_key().unwrap(), idempotency_key().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn endpoints_come_from_flags_or_the_environment_and_default_to_the_local_front_door() {
        let parse = |argv: &[&str]| ClientArgs::try_parse_from(argv).map(|a| a.endpoints);
        let shown = |endpoints: Vec<Endpoint>| -> Vec<String> {
            endpoints.iter().map(ToString::to_string).collect()
        };
        // (The test process's own GALLERY_ENDPOINTS, if any, would be read.)
        if std::env::var_os("GALLERY_ENDPOINTS").is_none() {
            assert_eq!(
                shown(parse(&["gallery-client", "list"]).unwrap()),
                ["http://127.0.0.1:8080"]
            );
        }
        assert_eq!(
            shown(
                parse(&[
                    "gallery-client",
                    "--endpoint",
                    "http://127.0.0.1:8080",
                    "--endpoint",
                    "http://127.0.0.1:9080/api",
                    "list"
                ])
                .unwrap()
            ),
            ["http://127.0.0.1:8080", "http://127.0.0.1:9080/api"]
        );
        assert_eq!(
            shown(
                parse(&[
                    "gallery-client",
                    "--endpoint",
                    "http://a:1,http://b:2",
                    "list"
                ])
                .unwrap()
            ),
            ["http://a:1", "http://b:2"]
        );
        let refused = parse(&["gallery-client", "--endpoint", "https://a", "list"]).unwrap_err();
        assert!(refused.to_string().contains("plain HTTP only"), "{refused}");
        let args = ClientArgs::try_parse_from([
            "gallery-client",
            "add",
            "Cat",
            "A cool cat",
            "/images/cat.svg",
            "--indent",
            "2",
            "--endpoint",
            "http://127.0.0.1:9080",
        ])
        .unwrap();
        assert_eq!(shown(args.endpoints), ["http://127.0.0.1:9080"]);
        assert_eq!(
            args.command,
            ClientCommand::Add {
                title: "Cat".into(),
                alt: "A cool cat".into(),
                url: "/images/cat.svg".into(),
                indent: Some(2)
            }
        );
        assert_eq!(args.connect_timeout, Duration::from_secs(1));
        assert_eq!(args.timeout, Duration::from_secs(10));
    }
}
