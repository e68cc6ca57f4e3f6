//! HTTP plumbing shared by both servers: the per-request log line, the
//! supervisor's probe answer, and serving a router on a listener until
//! SIGTERM/SIGINT, letting in-flight requests finish.

use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// `X-Content-Type-Options: nosniff` on every response, so browsers trust
/// the declared content types (JSON stays JSON, SVG stays an image).
pub fn nosniff() -> tower_http::set_header::SetResponseHeaderLayer<axum::http::HeaderValue> {
    tower_http::set_header::SetResponseHeaderLayer::overriding(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    )
}

/// The request header with which the supervisor's readiness probe asks
/// which process answered.
pub const PROBE_HEADER: &str = "x-gallery-probe";
/// The response header that answers it: this process's pid.
pub const PID_HEADER: &str = "x-gallery-pid";

/// Names this process in the response to a supervisor probe, so that a new
/// process sharing its socket with an old one can be told apart.
pub async fn answer_probe(request: Request, next: Next) -> Response {
    let probed = request.headers().contains_key(PROBE_HEADER);
    let mut response = next.run(request).await;
    if probed {
        response.headers_mut().insert(
            PID_HEADER,
            axum::http::HeaderValue::from(std::process::id()),
        );
    }
    response
}

/// Logs method, path, status and duration of every request.
pub async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // The supervisor's checks (every second) are logged only at debug level.
    let probe = request.headers().contains_key(PROBE_HEADER);
    let response = next.run(request).await;
    let (status, ms) = (
        response.status().as_u16(),
        started.elapsed().as_secs_f64() * 1000.0,
    );
    if probe {
        tracing::debug!("{method} {path} {status} {ms:.1}ms (supervisor check)");
    } else {
        tracing::info!("{method} {path} {status} {ms:.1}ms");
    }
    response
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("{name} received: finishing in-flight requests");
}

/// Serves `app` on `listener` on a fresh runtime until a stop signal.
pub fn serve(listener: std::net::TcpListener, app: Router, name: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tracing::info!("{name} listening on http://{}", listener.local_addr()?);
        // Without TCP_NODELAY a response written in two parts (headers, then
        // a file body) waits ~40 ms for the client's delayed ACK (Nagle).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::warn!("cannot set TCP_NODELAY: {error}");
            }
        });
        let app = app.layer(axum::middleware::from_fn(answer_probe));
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        tracing::info!("{name} stopped");
        Ok(())
    })
}

/// Sets up logging to stderr; `RUST_LOG` overrides the default `info`.
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        // Under the supervisor stderr is a non-blocking pipe: a line that
        // finds it full is dropped. Reporting that on stderr would panic.
        .log_internal_errors(false)
        .init();
}
