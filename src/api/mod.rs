//! The JSON API of SPEC §3: `GET`/`POST /images.json` and `GET /health`.
//!
//! [`router`] builds the whole service from an [`ApiState`], so tests can
//! drive it in-process and [`run`] can serve it on any listener (a bound port
//! or a socket inherited from the supervisor). Handlers are short `?` lines;
//! failures are [`ApiError`]s, mapped to responses in `error.rs` only.
//! Database work runs on the blocking pool so a slow lock never stalls the
//! async workers.
//!
//! SPEC §13's extensions live beside the contract, each in its own module:
//! the unpaged list is served from a per-worker cache (`list_cache.rs`;
//! a plain `GET` of it is answered before the router while the cached body
//! is current, see `CachedListShortcut`),
//! `?limit=N&after=ID` pages are rendered per request (at most
//! [`MAX_PAGE_LIMIT`] rows, so bounded), `/health` uses its own database
//! connection so it never queues behind list work, and a POST may carry an
//! `Idempotency-Key` (`idempotency.rs`) that makes its retries safe.

mod body;
mod error;
mod idempotency;
mod list_cache;
pub mod stats;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use body::{AnyJson, Indent, ListQuery, MAX_INDENT, MAX_PAGE_LIMIT};
pub use error::{ApiError, Result};
pub use idempotency::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, IdempotencyKey, MAX_KEY_CHARS};
pub use list_cache::ListCache;

use crate::cli::ApiServerArgs;
use crate::image::NewImage;
use crate::store::{GroupWriter, Keyed, Store, StoreError, StoreOptions, Write};
use idempotency::MaybeKey;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The response header naming the worker that answered.
pub const WORKER_HEADER: HeaderName = HeaderName::from_static("x-worker");

/// Everything a handler needs.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    /// Commits POSTs in groups (one fsync for all waiting).
    pub writer: GroupWriter,
    pub worker: Arc<str>,
    pub lists: Arc<ListCache>,
    /// This worker's request counts, read by the supervisor.
    pub stats: Arc<stats::RequestStats>,
}

impl ApiState {
    pub fn new(store: Store, worker: &str) -> Self {
        Self {
            writer: GroupWriter::start(store.clone()),
            store,
            worker: Arc::from(worker),
            lists: Arc::default(),
            stats: Arc::default(),
        }
    }
}

/// Which origins may call the API from a browser.
#[derive(Debug, Clone, Default)]
pub enum CorsPolicy {
    /// `Access-Control-Allow-Origin: *` (the original's behaviour).
    #[default]
    AnyOrigin,
    /// Only these exact origins (e.g. `http://127.0.0.1:8082`).
    Origins(Vec<HeaderValue>),
}

impl CorsPolicy {
    /// The policy `--cors-origin` flags ask for: none or `*` is any origin;
    /// otherwise each must be an origin (`scheme://host[:port]`). The
    /// supervisor checks its flags with this too, and the nginx config
    /// renders the same list for nginx's own error answers.
    pub fn parse(origins: &[String]) -> anyhow::Result<CorsPolicy> {
        if origins.is_empty() || origins.iter().any(|o| o == "*") {
            return Ok(CorsPolicy::AnyOrigin);
        }
        origins
            .iter()
            .map(|origin| {
                let origin: crate::origin::Origin = origin
                    .parse()
                    .map_err(|why| anyhow::anyhow!("bad --cors-origin: {why}, or *"))?;
                Ok(HeaderValue::from_str(&origin.to_string())?)
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map(CorsPolicy::Origins)
    }
}

/// The complete API service.
pub fn router(state: ApiState, cors: CorsPolicy) -> crate::http::App {
    let worker_value =
        HeaderValue::from_str(&state.worker).unwrap_or_else(|_| HeaderValue::from_static("api"));
    let cors = cors_layer(cors);
    let mut envelope = crate::http::Envelope::new([(WORKER_HEADER, worker_value)]);
    if let Some(cached_list) = CachedListShortcut::new(&state, &cors) {
        envelope = envelope.with_shortcut(move |request| cached_list.answer(request));
    }
    let router = Router::new()
        .route("/images.json", get(list_images).post(create_image))
        .route("/health", get(health))
        .route(stats::STATS_PATH, get(request_stats))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(Arc::new(state))
        // One `layer` call for the three: each call wraps every route in a
        // boxed service of its own, cloned and allocated per request.
        .layer(tower_layer::Stack::new(
            tower_layer::Stack::new(
                DefaultBodyLimit::max(MAX_BODY_BYTES),
                CatchPanicLayer::custom(|_| {
                    ApiError::Internal("handler panicked".into()).into_response()
                }),
            ),
            cors,
        ));
    tower_layer::Layer::layer(&envelope, router)
}

/// The API's CORS rules (SPEC §3) for `policy`.
fn cors_layer(policy: CorsPolicy) -> CorsLayer {
    let allow_origin = match policy {
        CorsPolicy::AnyOrigin => AllowOrigin::any(),
        CorsPolicy::Origins(list) => AllowOrigin::list(list),
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE, IDEMPOTENCY_KEY])
        .expose_headers([WORKER_HEADER, IDEMPOTENT_REPLAYED])
        .max_age(std::time::Duration::from_secs(600))
}

/// The common case answered before the router: a plain `GET /images.json`
/// (no query, no `Origin`) while the cached body is current. It skips
/// routing, the body limit, the panic catcher and the CORS layer, and
/// answers with exactly their headers: those the router's own layers put on
/// such an answer, read from them once when the router is built. Anything
/// else, or a body that is stale (or, on PostgreSQL, not known to be fresh
/// without a round trip), goes through the router.
struct CachedListShortcut {
    store: Store,
    lists: Arc<ListCache>,
    /// The router's headers on the list, for a request without `Origin`.
    headers: axum::http::HeaderMap,
}

impl CachedListShortcut {
    fn new(state: &ApiState, cors: &CorsLayer) -> Option<Self> {
        Some(Self {
            store: state.store.clone(),
            lists: state.lists.clone(),
            headers: list_headers_without_origin(cors)?,
        })
    }

    fn answer(&self, request: &axum::extract::Request) -> Option<Response> {
        let plain = request.method() == Method::GET
            && request.uri().path() == "/images.json"
            && request.uri().query().is_none()
            && !request.headers().contains_key(header::ORIGIN);
        if !plain {
            return None;
        }
        let body = self.lists.current_now(&self.store)?;
        let mut response = Response::new(axum::body::Body::from(body));
        *response.headers_mut() = self.headers.clone();
        Some(response)
    }
}

/// The headers the list handler and `cors` give a `GET` without `Origin`:
/// a one-route router with the same layer, called once on such a request.
/// `None` (no shortcut) if it does not answer at once.
fn list_headers_without_origin(cors: &CorsLayer) -> Option<axum::http::HeaderMap> {
    use std::future::Future;
    use tower_service::Service;
    let mut probe = Router::new()
        .route(
            "/images.json",
            get(|| async { json_bytes(bytes::Bytes::new()) }),
        )
        .layer(cors.clone());
    let request = axum::http::Request::get("/images.json")
        .body(axum::body::Body::empty())
        .ok()?;
    let mut answer = std::pin::pin!(probe.call(request));
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match answer.as_mut().poll(&mut context) {
        std::task::Poll::Ready(Ok(response)) if response.status().is_success() => {
            let mut headers = response.headers().clone();
            // The length is the real body's, set when it is sent.
            headers.remove(header::CONTENT_LENGTH);
            Some(headers)
        }
        _ => None,
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::result::Result<T, StoreError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)
}

fn json_response(indent: Indent, value: &impl serde::Serialize) -> Response {
    json_bytes(indent.render(value).into())
}

fn json_bytes(body: bytes::Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn list_images(State(state): State<Arc<ApiState>>, query: ListQuery) -> Result<Response> {
    let ListQuery { indent, page } = query;
    let body = match page {
        None => state.lists.body(&state.store, indent).await?,
        Some(page) => {
            let capacity = page.limit as usize * 256;
            blocking(move || list_cache::render(&state.store, indent, Some(page), capacity))
                .await?
                .into()
        }
    };
    Ok(json_bytes(body))
}

async fn create_image(
    State(state): State<Arc<ApiState>>,
    indent: Indent,
    MaybeKey(key): MaybeKey,
    AnyJson(body, raw): AnyJson,
) -> Result<Response> {
    let image = NewImage::parse(&body)?;
    let write = match key {
        None => Write::Plain(image),
        Some(key) => Write::Keyed {
            image,
            key: key.as_str().to_string(),
            body: raw.to_vec(),
        },
    };
    let keyed = state.writer.write(write).await?;
    match keyed {
        Keyed::Stored(image) => Ok(json_response(indent, &image)),
        Keyed::Replayed(image) => {
            let mut response = json_response(indent, &image);
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            Ok(response)
        }
        Keyed::Conflict => Err(ApiError::IdempotencyKeyReused),
    }
}

/// The request counts, for the supervisor only (its probe header; nginx
/// blanks it, so through the front door this is a 404).
async fn request_stats(
    State(state): State<Arc<ApiState>>,
    headers: axum::http::HeaderMap,
) -> Result<Response> {
    if !headers.contains_key(crate::http::PROBE_HEADER) {
        return Err(ApiError::NotFound);
    }
    Ok(json_response(Indent(0), &state.stats.snapshot()))
}

async fn health(State(state): State<Arc<ApiState>>) -> Result<Response> {
    let store = state.store.clone();
    match blocking(move || store.ping()).await {
        Ok(()) => Ok(error::json_body(&json!({
            "status": "ok",
            "worker": &*state.worker,
            "pid": std::process::id(),
        }))),
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            Err(ApiError::DatabaseUnavailable)
        }
    }
}

/// Opens the store and serves the API until SIGTERM/SIGINT (or, with
/// `--prepare-database`, only opens it: created, migrated, seeded).
pub fn run(args: ApiServerArgs) -> anyhow::Result<()> {
    let location = crate::store::parse_database_location(&args.database)?;
    let options = StoreOptions {
        busy_timeout: std::time::Duration::from_millis(args.busy_timeout_ms),
        synchronous: args.synchronous,
        application_name: args.name.clone(),
        ..StoreOptions::default()
    };
    if args.prepare_database {
        Store::prepare(location, &options)?;
        return Ok(());
    }
    let listener = crate::listen::listener(args.bind, args.port)?;
    let store = if args.existing_database {
        Store::open_existing(&location, &options)
    } else {
        Store::open(&location, &options)?
    };
    let cors = CorsPolicy::parse(&args.cors_origin)?;
    let state = ApiState::new(store, &args.name);
    if !args.no_request_stats {
        stats::count_into(state.stats.clone());
    }
    crate::http::serve(listener, router(state, cors), &args.name, args.threads)
}

#[cfg(test)]
mod tests {
    //! In-process router tests against a real temporary SQLite file.

    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn state() -> (tempfile::TempDir, ApiState) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("g.db"), &StoreOptions::default()).unwrap();
        (dir, ApiState::new(store, "api-test"))
    }

    fn app() -> (tempfile::TempDir, crate::http::App) {
        let (dir, state) = state();
        (dir, router(state, CorsPolicy::AnyOrigin))
    }

    async fn send(
        app: crate::http::App,
        request: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let response = app.oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(bytes.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn lists_then_stores_an_image_posted_with_a_form_content_type() {
        let (_dir, app) = app();
        let post = Request::post("/images.json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(
                r#"{"title":"Dog","alt_text":"","url":"/d.svg"}"#,
            ))
            .unwrap();
        let (status, headers, body) = send(app.clone(), post).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-worker"], "api-test");
        assert_eq!(
            body,
            "{\"id\":4,\"title\":\"Dog\",\"alt_text\":\"\",\"url\":\"/d.svg\"}\n"
        );
        let (_, _, list) = send(
            app,
            Request::get("/images.json").body(Body::empty()).unwrap(),
        )
        .await;
        let list: serde_json::Value = serde_json::from_str(&list).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 4);
    }

    fn get(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    fn keyed_post(key: &str, body: &'static str) -> Request<Body> {
        Request::post("/images.json")
            .header("idempotency-key", key)
            .body(Body::from(body))
            .unwrap()
    }

    #[tokio::test]
    async fn the_cached_list_sees_every_write_and_pages_agree_with_it() {
        let (dir, app) = app();
        let (_, _, before) = send(app.clone(), get("/images.json")).await;
        let (_, _, pretty_before) = send(app.clone(), get("/images.json?indent=2")).await;
        let post = Request::post("/images.json")
            .body(Body::from(
                r#"{"title":"Dog","alt_text":"","url":"/d.svg"}"#,
            ))
            .unwrap();
        assert_eq!(send(app.clone(), post).await.0, StatusCode::OK);
        let (_, _, after) = send(app.clone(), get("/images.json")).await;
        assert_ne!(after, before);
        assert!(
            after.ends_with("{\"id\":4,\"title\":\"Dog\",\"alt_text\":\"\",\"url\":\"/d.svg\"}]\n"),
            "{after}"
        );
        // A write by another connection (another worker) is seen too.
        let other = rusqlite::Connection::open(dir.path().join("g.db")).unwrap();
        other
            .execute("UPDATE images SET title = 'Renamed' WHERE id = 1", [])
            .unwrap();
        let (_, _, renamed) = send(app.clone(), get("/images.json")).await;
        assert!(renamed.contains("Renamed"), "{renamed}");
        let (_, _, pretty_after) = send(app.clone(), get("/images.json?indent=2")).await;
        assert!(pretty_after.contains("\"title\": \"Renamed\""));
        assert_ne!(pretty_after, pretty_before);
        // Two pages of two are the unpaged list, split.
        let list: Vec<serde_json::Value> = serde_json::from_str(&renamed).unwrap();
        let (_, _, one) = send(app.clone(), get("/images.json?limit=2")).await;
        let (_, _, two) = send(app.clone(), get("/images.json?limit=2&after=2")).await;
        let one: Vec<serde_json::Value> = serde_json::from_str(&one).unwrap();
        let two: Vec<serde_json::Value> = serde_json::from_str(&two).unwrap();
        assert_eq!([one, two].concat(), list);
    }

    #[tokio::test]
    async fn a_keyed_post_is_stored_once_replayed_then_refused_with_another_body() {
        let (_dir, app) = app();
        let body = r#"{"title":"Dog","alt_text":"","url":"/d.svg"}"#;
        let (status, headers, first) = send(app.clone(), keyed_post("k", body)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!headers.contains_key("idempotent-replayed"));
        let (status, headers, again) = send(app.clone(), keyed_post("k", body)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["idempotent-replayed"], "true");
        assert_eq!(again, first);
        let (status, _, _) = send(
            app.clone(),
            keyed_post("k", r#"{"title":"Cat","alt_text":"","url":"/d.svg"}"#),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let (status, _, _) = send(app.clone(), keyed_post("", body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (_, _, list) = send(app, get("/images.json")).await;
        let list: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
        assert_eq!(list.len(), 4);
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_413_before_the_body() {
        let (_dir, app) = app();
        // The body is short, so only the declared length can refuse it.
        let request = Request::post("/images.json")
            .header("content-length", (MAX_BODY_BYTES + 1).to_string())
            .body(Body::from(
                r#"{"title":"Dog","alt_text":"","url":"/d.svg"}"#,
            ))
            .unwrap();
        let (status, _, body) = send(app, request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    }

    #[tokio::test]
    async fn every_error_is_a_json_body_from_the_one_mapping() {
        let (_dir, app) = app();
        let cases = [
            (
                Request::get("/images.json?indent=-1")
                    .body(Body::empty())
                    .unwrap(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Request::post("/images.json").body(Body::from("{")).unwrap(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Request::get("/nope").body(Body::empty()).unwrap(),
                StatusCode::NOT_FOUND,
            ),
            (
                Request::put("/images.json").body(Body::empty()).unwrap(),
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                Request::post("/images.json")
                    .body(Body::from(vec![b' '; MAX_BODY_BYTES + 1]))
                    .unwrap(),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
        ];
        for (request, want) in cases {
            let (status, headers, body) = send(app.clone(), request).await;
            assert_eq!(status, want);
            assert_eq!(headers["content-type"], "application/json");
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(body["error"].is_string(), "{body}");
        }
    }

    #[test]
    fn store_errors_map_to_generic_messages() {
        let busy = ApiError::Store(StoreError::Busy("database is locked".into())).into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()["retry-after"], "1");
        let broken = ApiError::Store(StoreError::Sqlite(rusqlite::Error::InvalidQuery));
        assert_eq!(
            broken.into_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    /// [`send`], with `content-length` as hyper sends it: the router sets
    /// it, an answer from the envelope leaves it to hyper, which takes the
    /// body's length.
    async fn send_as_sent(
        app: crate::http::App,
        request: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let (status, mut headers, body) = send(app, request).await;
        let length = headers.remove(header::CONTENT_LENGTH);
        assert!(
            length.is_none_or(|length| length == body.len().to_string().as_str()),
            "a content-length that is not the body's"
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        (status, headers, body)
    }

    #[tokio::test]
    async fn a_plain_list_request_is_answered_before_the_router_exactly_as_the_router_would() {
        let some_origin = HeaderValue::from_static("http://a.test");
        for policy in [
            CorsPolicy::AnyOrigin,
            CorsPolicy::Origins(vec![some_origin.clone()]),
        ] {
            let (_dir, state) = state();
            // Shares the router's cache, so it answers when the router's own
            // shortcut does.
            let shortcut = CachedListShortcut::new(&state, &cors_layer(policy.clone()))
                .expect("the CORS layer answers the header probe at once");
            let app = router(state, policy.clone());

            // Nothing is cached yet: the router answers, and fills the cache.
            assert!(shortcut.answer(&get("/images.json")).is_none());
            let routed = send_as_sent(app.clone(), get("/images.json")).await;
            assert_eq!(routed.0, StatusCode::OK);
            assert!(shortcut.answer(&get("/images.json")).is_some());
            let short = send_as_sent(app.clone(), get("/images.json")).await;
            assert_eq!(
                short, routed,
                "{policy:?}: the same status, headers and body"
            );

            // Only a plain GET: anything the router treats differently goes there.
            let with_origin = Request::get("/images.json")
                .header(header::ORIGIN, some_origin.clone())
                .body(Body::empty())
                .unwrap();
            let head = Request::head("/images.json").body(Body::empty()).unwrap();
            let post = Request::post("/images.json").body(Body::empty()).unwrap();
            for other in [
                get("/images.json?indent=0"),
                get("/images.json?limit=1"),
                get("/images.json/"),
                get("/health"),
                with_origin,
                head,
                post,
            ] {
                let what = format!("{} {}", other.method(), other.uri());
                assert!(shortcut.answer(&other).is_none(), "{what}");
            }

            // A write makes the cached body stale: the router answers the
            // next request, with the new row, and the shortcut the one after.
            let created = send(
                app.clone(),
                keyed_post("k1", r#"{"title":"Dog","alt_text":"","url":"/d.svg"}"#),
            )
            .await;
            assert_eq!(created.0, StatusCode::OK);
            assert!(shortcut.answer(&get("/images.json")).is_none());
            let routed = send_as_sent(app.clone(), get("/images.json")).await;
            assert!(routed.2.contains("Dog"), "{}", routed.2);
            let short = send_as_sent(app.clone(), get("/images.json")).await;
            assert_eq!(short, routed);
            assert!(shortcut.answer(&get("/images.json")).is_some());
        }
    }
}
