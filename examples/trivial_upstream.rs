//! `trivial_upstream`: the benchmark's "trivial upstream" ceiling (see
//! `bench/`). It answers every request, whatever the method or path, with the
//! same fixed bytes after reading the request body: no routing, no database,
//! no logging, no middleware. What a real server costs beyond this is what
//! the benchmark's ratios show.
//!
//! It runs like the gallery's servers do: hyper HTTP/1 with keep-alive and
//! `TCP_NODELAY` on a tokio runtime of `--threads` threads (0, the default:
//! one per core; 1: a current-thread runtime), so the bench can give it the
//! threads the supervisor gives the servers it stands in for.
//!
//!   cargo run --release --example trivial_upstream -- \
//!       [--port N] [--body-file FILE] [--content-type TYPE] [--threads N]
//!
//! `--port 0` (the default) takes a free port; the first line on stdout is
//! `listening on http://127.0.0.1:PORT`. Without `--body-file` the body is the
//! gallery's three sample images as JSON. It runs until killed.

use std::convert::Infallible;
use std::io::Write;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// The body of `GET /images.json` on a fresh database.
const THREE_ROWS: &str = concat!(
    r#"[{"id":1,"title":"Sunset","alt_text":"A warm sunset over the sea","url":"/images/sunset.svg"},"#,
    r#"{"id":2,"title":"Mountain","alt_text":"A snowy mountain under a clear sky","url":"/images/mountain.svg"},"#,
    r#"{"id":3,"title":"Cat","alt_text":"A cat curled up asleep","url":"/images/cat.svg"}]"#,
    "\n"
);

struct Args {
    port: u16,
    threads: usize,
    body: Bytes,
    content_type: HeaderValue,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        port: 0,
        threads: 0,
        body: Bytes::from_static(THREE_ROWS.as_bytes()),
        content_type: HeaderValue::from_static("application/json"),
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => {
                let text = value()?;
                args.port = text
                    .parse()
                    .map_err(|_| format!("--port: {text:?} is not a port (0..=65535)"))?;
            }
            "--threads" => {
                let text = value()?;
                args.threads = text
                    .parse()
                    .map_err(|_| format!("--threads: {text:?} is not a number"))?;
            }
            "--body-file" => {
                let path = value()?;
                let bytes = std::fs::read(&path).map_err(|e| format!("--body-file {path}: {e}"))?;
                args.body = Bytes::from(bytes);
            }
            "--content-type" => {
                let text = value()?;
                args.content_type = HeaderValue::from_str(&text)
                    .map_err(|_| format!("--content-type: {text:?} is not a header value"))?;
            }
            "-h" | "--help" => {
                println!(
                    "usage: trivial_upstream [--port N] [--body-file FILE] [--content-type TYPE] [--threads N]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

fn main() -> std::process::ExitCode {
    match parse_args().and_then(|args| run(args).map_err(|e| e.to_string())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("trivial_upstream: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> std::io::Result<()> {
    let runtime = gallery::http::runtime(args.threads)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on http://{}", listener.local_addr()?)?;
        stdout.flush()?;
        let body = args.body;
        let content_type = args.content_type;
        loop {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let body = body.clone();
            let content_type = content_type.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let body = body.clone();
                    let content_type = content_type.clone();
                    async move {
                        // Read what the client sent, as a real handler would,
                        // so the connection stays reusable after a POST.
                        let _ = request.into_body().collect().await;
                        let mut response = Response::new(Full::new(body));
                        response.headers_mut().insert(CONTENT_TYPE, content_type);
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    })
}
