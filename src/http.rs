//! HTTP plumbing shared by both servers: the [`Envelope`] around every
//! request (its log line, the supervisor's probe answer, the body deadline,
//! fixed headers), and serving a router on a listener until SIGTERM/SIGINT,
//! letting in-flight requests finish.

use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::response::Response;

/// The request header with which the supervisor's readiness probe asks
/// which process answered.
pub const PROBE_HEADER: &str = "x-gallery-probe";
/// The response header that answers it: this process's pid.
pub const PID_HEADER: &str = "x-gallery-pid";

/// Whether each request's line is logged at debug rather than info level:
/// set behind nginx, whose access line already says the same and names the
/// server (`--quiet-requests`, passed by the supervisor and the Procfile).
static REQUESTS_AT_DEBUG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Logs each request's line at debug level from now on (see [`Envelope`]).
pub fn log_requests_at_debug() {
    REQUESTS_AT_DEBUG.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Something told of every client request (not the supervisor's checks):
/// its method, path, status and duration.
pub type RequestObserver =
    Box<dyn Fn(&axum::http::Method, &str, u16, std::time::Duration) + Send + Sync>;

static REQUEST_OBSERVER: std::sync::OnceLock<RequestObserver> = std::sync::OnceLock::new();

/// Tells `observer` of every client request from now on (the API's request
/// counts for `/metrics`). It rides on the [`Envelope`]'s request log, which
/// already has the request's method, path, status and duration in hand, so
/// counting costs no layer of its own. The first observer set stays.
pub fn observe_requests(observer: RequestObserver) {
    let _ = REQUEST_OBSERVER.set(observer);
}

/// A quick answer tried before the service inside an [`Envelope`] (the
/// static server's in-memory assets); `None` passes the request on.
pub type Shortcut = dyn Fn(&Request) -> Option<Response> + Send + Sync;

/// Everything both servers do around every request, in one layer:
///
/// - the request line: method, path, status and duration, at info level,
///   or at debug level after [`log_requests_at_debug`]; server errors (5xx)
///   are always logged, at warn level; client requests (not the
///   supervisor's checks) also go to the [`observe_requests`] observer;
/// - the answer to the supervisor's probe ([`PROBE_HEADER`] →
///   [`PID_HEADER`]: this pid), so a new process sharing its socket with an
///   old one can be told apart;
/// - a deadline of [`BODY_READ_TIMEOUT`] on a request body
///   ([`is_body_timeout`] tells the error); only the body is bounded, a
///   handler that takes long to answer is not cut off;
/// - fixed response headers, set on every response (always
///   `X-Content-Type-Options: nosniff`, so browsers trust the declared
///   content types);
/// - optionally a [`Shortcut`] answer, which skips the inner service: the
///   whole router, routing included, for the servers ([`App`]).
///
/// It is one hand-written service rather than a stack of `from_fn`
/// middlewares and header layers: each of those boxes, clones and polls a
/// future of its own per request. On the cached list, that stack of four
/// middlewares and a header layer each held a worker to 38–50k requests/s
/// where it did 60–67k without them.
#[derive(Clone)]
pub struct Envelope {
    headers: std::sync::Arc<[(axum::http::HeaderName, axum::http::HeaderValue)]>,
    shortcut: Option<std::sync::Arc<Shortcut>>,
}

impl Envelope {
    /// Sets `headers` (and `nosniff`) on every response, replacing any the
    /// service set.
    pub fn new(
        headers: impl IntoIterator<Item = (axum::http::HeaderName, axum::http::HeaderValue)>,
    ) -> Self {
        let nosniff = (
            axum::http::header::X_CONTENT_TYPE_OPTIONS,
            axum::http::HeaderValue::from_static("nosniff"),
        );
        Self {
            headers: headers.into_iter().chain([nosniff]).collect(),
            shortcut: None,
        }
    }

    /// Tries `shortcut` first on every request.
    pub fn with_shortcut(
        mut self,
        shortcut: impl Fn(&Request) -> Option<Response> + Send + Sync + 'static,
    ) -> Self {
        self.shortcut = Some(std::sync::Arc::new(shortcut));
        self
    }
}

impl<S> tower_layer::Layer<S> for Envelope {
    type Service = Enveloped<S>;

    fn layer(&self, inner: S) -> Enveloped<S> {
        Enveloped {
            inner,
            envelope: self.clone(),
        }
    }
}

/// A service inside an [`Envelope`].
#[derive(Clone)]
pub struct Enveloped<S> {
    inner: S,
    envelope: Envelope,
}

/// A router inside its [`Envelope`]: what [`serve`] serves. The envelope
/// is outside the routing, so its shortcut skips that too.
pub type App = Enveloped<Router>;

impl<S, B> tower_service::Service<axum::http::Request<B>> for Enveloped<S>
where
    S: tower_service::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let started = Instant::now();
        // hyper's body, boxed once (a `Body` is not boxed again).
        let request = request.map(axum::body::Body::new);
        let method = request.method().clone();
        // The path is a slice of the URI, whose clone shares its bytes.
        let uri = request.uri().clone();
        let probe = request.headers().contains_key(PROBE_HEADER);
        let envelope = self.envelope.clone();
        let shortcut = envelope.shortcut.as_ref();
        let answer = match shortcut.and_then(|shortcut| shortcut(&request)) {
            Some(response) => Answer::Ready(response),
            None => {
                // The inner service was made ready for this call; a clone
                // takes its place for the next one.
                let ready = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, ready);
                Answer::Pending(inner.call(bound_body_time(request)))
            }
        };
        Box::pin(async move {
            let mut response = match answer {
                Answer::Ready(response) => response,
                Answer::Pending(future) => future.await?,
            };
            let took = started.elapsed();
            log_request(&method, uri.path(), probe, response.status().as_u16(), took);
            let headers = response.headers_mut();
            for (name, value) in envelope.headers.iter() {
                headers.insert(name, value.clone());
            }
            if probe {
                headers.insert(
                    PID_HEADER,
                    axum::http::HeaderValue::from(std::process::id()),
                );
            }
            Ok(response)
        })
    }
}

/// An [`Envelope`]'s answer: from its shortcut, or to come from the service.
enum Answer<F> {
    Ready(Response),
    Pending(F),
}

/// The request line of [`Envelope`].
fn log_request(
    method: &axum::http::Method,
    path: &str,
    probe: bool,
    status: u16,
    took: std::time::Duration,
) {
    if !probe && let Some(observe) = REQUEST_OBSERVER.get() {
        observe(method, path, status, took);
    }
    let ms = took.as_secs_f64() * 1000.0;
    if probe {
        // The supervisor's checks (every second) are logged only at debug level.
        tracing::debug!("{method} {path} {status} {ms:.1}ms (supervisor check)");
    } else if status >= 500 {
        tracing::warn!("{method} {path} {status} {ms:.1}ms");
    } else if REQUESTS_AT_DEBUG.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!("{method} {path} {status} {ms:.1}ms");
    } else {
        tracing::info!("{method} {path} {status} {ms:.1}ms");
    }
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

/// How long a connection may take to send a request's headers, and how
/// long an idle keep-alive connection is kept (SPEC §13).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a request's body may take to arrive, from the end of its
/// headers: a client that drips its body is answered 408 after this.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// Connections one server process holds at most; more are closed at once
/// (nginx then tries another worker). Also bounded by the open-file limit.
pub const MAX_CONNECTIONS: usize = 10_000;

/// Gives a request body a deadline of [`BODY_READ_TIMEOUT`]; reading it
/// past that fails with a timeout ([`is_body_timeout`]). A body known to be
/// empty (a `GET`'s) is left as it is: it has nothing to wait for.
fn bound_body_time(request: Request) -> Request {
    use axum::body::HttpBody as _;
    if request.body().size_hint().exact() == Some(0) {
        return request;
    }
    request.map(|body| {
        axum::body::Body::new(tower_http::timeout::DeadlineBody::new(
            BODY_READ_TIMEOUT,
            body,
        ))
    })
}

/// Whether reading a body failed because of [`bound_body_time`]'s deadline.
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Raises this process's open-file limit to its hard limit, so the
/// connection cap, not the default of 1,024 descriptors, is what binds;
/// returns the limit now in force.
pub fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// Serves `app` on `listener` until a stop signal, on a fresh runtime of
/// `threads` threads (0: one per core). One thread is a current-thread
/// runtime: nothing is handed between threads, which on a machine with
/// more busy processes than cores is the cheaper way (each wake-up of a
/// second thread is a context switch the cores pay for).
///
/// The accept loop is our own rather than `axum::serve`: at a graceful stop
/// axum's connections, still detecting HTTP/1 or HTTP/2, drop a connection
/// that was accepted but whose request was not read yet, which resets a
/// request the client already sent (a POST cannot be retried). Here every
/// connection is HTTP/1: at the stop an idle keep-alive connection is
/// closed, and one whose first request is on its way is answered first.
/// Connections not yet accepted stay queued on the socket for whichever
/// process accepts next (the supervisor's next generation).
pub fn serve(
    listener: std::net::TcpListener,
    app: App,
    name: &str,
    threads: u16,
) -> anyhow::Result<()> {
    let runtime = runtime(threads.into())?;
    runtime.block_on(async {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tracing::info!("{name} listening on http://{}", listener.local_addr()?);
        // Leave room for the database, log and probe descriptors.
        let cap = MAX_CONNECTIONS.min(raise_open_file_limit().saturating_sub(64) as usize);
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(cap.max(1)));
        let mut refusing = false;
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let mut connections = tokio::task::JoinSet::new();
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => {
                    let tcp = match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(error) => {
                            // Out of file descriptors, say: back off a moment.
                            tracing::warn!("cannot accept a connection: {error}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        // Full: close it now rather than let it wait unseen.
                        if !refusing {
                            tracing::warn!("{cap} connections open: closing new ones until some end");
                            refusing = true;
                        }
                        drop(tcp);
                        continue;
                    };
                    refusing = false;
                    // Without TCP_NODELAY a response written in two parts
                    // (headers, then a file body) waits ~40 ms for the
                    // client's delayed ACK (Nagle).
                    if let Err(error) = tcp.set_nodelay(true) {
                        tracing::warn!("cannot set TCP_NODELAY: {error}");
                    }
                    let connection = serve_connection(tcp, app.clone(), stopping.clone());
                    connections.spawn(async move {
                        connection.await;
                        drop(permit);
                    });
                }
            }
        }
        drop(listener);
        let _ = stop.send(true);
        while connections.join_next().await.is_some() {}
        tracing::info!("{name} stopped");
        Ok(())
    })
}

/// A runtime of `threads` threads (0: one per core; 1: a current-thread
/// runtime), as the servers run on (see [`serve`]).
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if threads > 1 {
        builder.worker_threads(threads);
    }
    builder.enable_all().build()
}

/// How long, at a stop, a connection that has sent nothing yet is given to
/// send its request (nginx writes it right after connecting).
const FIRST_BYTES_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves one HTTP/1 connection until it closes, or until `stopping`
/// turns true and the request in progress (if any) is answered.
///
/// hyper's graceful shutdown closes a connection from which it has read
/// nothing yet, even when the request is already waiting in the socket: a
/// POST just accepted would be lost. So a connection that has delivered no
/// byte yet gets [`FIRST_BYTES_WINDOW`] to do so before the shutdown.
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    app: App,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let first_bytes = std::sync::Arc::new(tokio::sync::Notify::new());
    let io = FirstBytes {
        inner: tcp,
        seen: false,
        notify: first_bytes.clone(),
    };
    let service = hyper_util::service::TowerToHyperService::new(app);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let arrived = first_bytes.notified();
    tokio::pin!(arrived);
    let mut has_sent = false;
    tokio::select! {
        _ = connection.as_mut() => return,
        () = arrived.as_mut() => has_sent = true,
        _ = stopping.wait_for(|stop| *stop) => {}
    }
    if !*stopping.borrow() {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = stopping.wait_for(|stop| *stop) => {}
        }
    }
    if !has_sent {
        tokio::select! {
            _ = connection.as_mut() => return,
            () = arrived => {}
            () = tokio::time::sleep(FIRST_BYTES_WINDOW) => {}
        }
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// A connection that says when its first bytes arrive.
struct FirstBytes {
    inner: tokio::net::TcpStream,
    seen: bool,
    notify: std::sync::Arc<tokio::sync::Notify>,
}

impl tokio::io::AsyncRead for FirstBytes {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if !self.seen && buf.filled().len() > before {
            self.seen = true;
            // Stored if nobody waits yet: `notified()` then completes at once.
            self.notify.notify_one();
        }
        poll
    }
}

impl tokio::io::AsyncWrite for FirstBytes {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Sets up logging to stderr at `level` (`--log-level`); `RUST_LOG`, when
/// set, overrides it.
pub fn init_logging(level: crate::cli::LogLevel) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.to_string()));
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
