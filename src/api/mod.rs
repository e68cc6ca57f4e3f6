//! The JSON API of SPEC §3: `GET`/`POST /images.json` and `GET /health`.
//!
//! [`router`] builds the whole service from an [`ApiState`], so tests can
//! drive it in-process and [`run`] can serve it on any listener (a bound port
//! or a socket inherited from the supervisor). Handlers are short `?` lines;
//! failures are [`ApiError`]s, mapped to responses in `error.rs` only.
//! Database work runs on the blocking pool so a slow lock never stalls the
//! async workers.

mod body;
mod error;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, middleware};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

pub use body::{AnyJson, Indent, MAX_INDENT};
pub use error::{ApiError, Result};

use crate::cli::ApiServerArgs;
use crate::image::{Image, NewImage};
use crate::store::{Store, StoreError, StoreOptions};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The response header naming the worker that answered.
pub const WORKER_HEADER: HeaderName = HeaderName::from_static("x-worker");

/// Everything a handler needs.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub worker: Arc<str>,
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
                let plausible = origin.split_once("://").is_some_and(|(scheme, rest)| {
                    !scheme.is_empty()
                        && !rest.is_empty()
                        && origin
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || ".-:/[]".contains(c))
                });
                anyhow::ensure!(
                    plausible,
                    "bad --cors-origin {origin:?}: expected an origin such as http://127.0.0.1:8082, or *"
                );
                Ok(HeaderValue::from_str(origin)?)
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map(CorsPolicy::Origins)
    }
}

/// The complete API service.
pub fn router(state: ApiState, cors: CorsPolicy) -> Router {
    let worker_value =
        HeaderValue::from_str(&state.worker).unwrap_or_else(|_| HeaderValue::from_static("api"));
    let allow_origin = match cors {
        CorsPolicy::AnyOrigin => AllowOrigin::any(),
        CorsPolicy::Origins(list) => AllowOrigin::list(list),
    };
    let cors = CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE])
        .expose_headers([WORKER_HEADER])
        .max_age(std::time::Duration::from_secs(600));
    Router::new()
        .route("/images.json", get(list_images).post(create_image))
        .route("/health", get(health))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("handler panicked".into()).into_response()
        }))
        .layer(cors)
        .layer(crate::http::nosniff())
        .layer(middleware::from_fn(crate::http::log_request))
        .layer(SetResponseHeaderLayer::overriding(
            WORKER_HEADER,
            worker_value,
        ))
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
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        indent.render(value),
    )
        .into_response()
}

async fn list_images(State(state): State<ApiState>, indent: Indent) -> Result<Response> {
    let images: Vec<Image> = blocking(move || state.store.list_images()).await?;
    Ok(json_response(indent, &images))
}

async fn create_image(
    State(state): State<ApiState>,
    indent: Indent,
    AnyJson(body): AnyJson,
) -> Result<Response> {
    let new_image = NewImage::parse(&body)?;
    let stored = blocking(move || state.store.insert_image(&new_image)).await?;
    Ok(json_response(indent, &stored))
}

async fn health(State(state): State<ApiState>) -> Result<Response> {
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

/// Opens the store and serves the API until SIGTERM/SIGINT.
pub fn run(args: ApiServerArgs) -> anyhow::Result<()> {
    let path = crate::store::parse_database_location(&args.database)?;
    let listener = crate::listen::listener(args.bind, args.port)?;
    let options = StoreOptions {
        busy_timeout: std::time::Duration::from_millis(args.busy_timeout_ms),
        ..StoreOptions::default()
    };
    let store = Store::open(&path, &options)?;
    let cors = CorsPolicy::parse(&args.cors_origin)?;
    let state = ApiState {
        store,
        worker: Arc::from(args.name.as_str()),
    };
    crate::http::serve(listener, router(state, cors), &args.name)
}

#[cfg(test)]
mod tests {
    //! In-process router tests against a real temporary SQLite file.

    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn app() -> (tempfile::TempDir, Router) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("g.db"), &StoreOptions::default()).unwrap();
        let state = ApiState {
            store,
            worker: Arc::from("api-test"),
        };
        (dir, router(state, CorsPolicy::AnyOrigin))
    }

    async fn send(
        app: Router,
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
}
