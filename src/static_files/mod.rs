//! Serving the assets directory (SPEC §4) safely.
//!
//! tower-http's `ServeDir` does the serving: `index.html` for directories,
//! content types, `HEAD`, `Last-Modified` with `304` on `If-Modified-Since`,
//! ranges. Around it this module adds what it lacks:
//!
//! Path-traversal defences, all answered with a plain 404 that reveals nothing:
//! - the percent-decoded path may not contain a `..` segment, a backslash or
//!   a NUL (`ServeDir` refuses `..` too; this check does not rely on it);
//! - the file that would be served is canonicalised (resolving every
//!   symlink) and must lie inside the canonical root, so a symlink pointing
//!   out of the directory is not followed.
//!
//! Plain `GET`s and `HEAD`s of small files are answered from memory after
//! the first (`cache.rs`), with one `stat` per request to notice changes,
//! and with the same headers, before the router and its layers (the
//! request [`Envelope`](crate::http::Envelope)'s shortcut).
//!
//! Validators: a weak `ETag` from the file's size and modification time
//! (cheap: the containment check has the metadata already), with `304` on a
//! matching `If-None-Match`. gzip comes from the compression layer when the
//! client accepts it.
//!
//! Browser protections (`Content-Security-Policy` naming the API origins
//! the page may call, `X-Frame-Options`, `Referrer-Policy`, `nosniff`) go on
//! every response; `headers.rs` says what they allow and why.

mod cache;
mod headers;

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

pub use headers::Origin;

use crate::cli::StaticServerArgs;

/// The canonical directory being served, and its files in memory.
#[derive(Clone)]
struct Root {
    dir: std::sync::Arc<Path>,
    cache: cache::Cache,
}

/// The static-file service for `root`, which must exist, for a page that
/// may call the API at its own origin and at `api_origins`.
pub fn router(root: &Path, api_origins: &[Origin]) -> anyhow::Result<crate::http::App> {
    let canonical = root
        .canonicalize()
        .with_context(|| format!("assets directory {} does not exist", root.display()))?;
    anyhow::ensure!(
        canonical.is_dir(),
        "assets path {} is not a directory",
        root.display()
    );
    let not_found = || async { (StatusCode::NOT_FOUND, "404 Not Found\n") };
    let serve_dir = ServeDir::new(&canonical).not_found_service(axum::routing::any(not_found));
    let cache = cache::Cache::default();
    let router = Router::new()
        .fallback_service(serve_dir)
        .layer(middleware::from_fn_with_state(
            Root {
                dir: canonical.into(),
                cache: cache.clone(),
            },
            contain_and_validate,
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        ));
    // Outside the containment check, so its 404s and 304s carry them too.
    // A file already in memory is answered before any of it, with the
    // same headers (see `cache::Cache::answer`).
    let envelope = crate::http::Envelope::new(headers::security_headers(api_origins))
        .with_shortcut(move |request| {
            cache.final_answer(request.method(), request.uri().path(), request.headers())
        });
    let router = router.layer(CompressionLayer::new());
    Ok(tower_layer::Layer::layer(&envelope, router))
}

/// The file a request path names inside `root`, if it stays inside it.
///
/// `Ok(None)` means "nothing there" (let `ServeDir` answer 404); `Err(())`
/// means the path is refused.
fn resolve(root: &Path, request_path: &str) -> Result<Option<(PathBuf, std::fs::Metadata)>, ()> {
    let decoded = percent_encoding::percent_decode_str(request_path)
        .decode_utf8()
        .map_err(|_| ())?;
    let mut candidate = root.to_path_buf();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err(()),
            s if s.contains('\\') || s.contains('\0') => return Err(()),
            s => candidate.push(s),
        }
    }
    let Ok(mut real) = candidate.canonicalize() else {
        return Ok(None);
    };
    if !real.starts_with(root) {
        return Err(());
    }
    if real.is_dir() {
        real = match real.join("index.html").canonicalize() {
            Ok(index) if index.starts_with(root) => index,
            Ok(_) => return Err(()),
            Err(_) => return Ok(None),
        };
    }
    let metadata = std::fs::metadata(&real).map_err(|_| ())?;
    Ok(Some((real, metadata)))
}

fn weak_etag(metadata: &std::fs::Metadata) -> Option<HeaderValue> {
    let modified = metadata.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    HeaderValue::from_str(&format!(
        "W/\"{:x}-{:x}\"",
        metadata.len(),
        modified.as_nanos()
    ))
    .ok()
}

fn etag_matches(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let strip = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    let ours = strip(etag.to_str().unwrap_or_default());
    list.split(',')
        .any(|tag| tag.trim() == "*" || strip(tag) == ours)
}

async fn contain_and_validate(State(root): State<Root>, request: Request, next: Next) -> Response {
    let (method, path, headers) = (request.method(), request.uri().path(), request.headers());
    if let Some(response) = root.cache.answer(method, path, headers) {
        return response;
    }
    let resolved = resolve(&root.dir, path);
    let file = match resolved {
        Err(()) => return (StatusCode::NOT_FOUND, "404 Not Found\n").into_response(),
        Ok(None) => return next.run(request).await,
        Ok(Some((real, metadata))) => {
            if let Some(response) = root.cache.fill(method, path, headers, &real, &metadata) {
                return response;
            }
            metadata
        }
    };
    let etag = weak_etag(&file);
    if let (Some(etag), Some(if_none_match)) = (&etag, request.headers().get(header::IF_NONE_MATCH))
        && etag_matches(if_none_match, etag)
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag.clone())]).into_response();
    }
    let mut response = next.run(request).await;
    if let Some(etag) = etag
        && response.status().is_success()
    {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// Serves `--path` until SIGTERM/SIGINT.
pub fn run(args: StaticServerArgs) -> anyhow::Result<()> {
    let app = router(&args.path, &args.api_origin)?;
    let listener = crate::listen::listener(args.bind, args.port)?;
    crate::http::serve(listener, app, "static", args.threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_refuses_parent_segments_even_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        assert!(resolve(&root, "/../etc/passwd").is_err());
        assert!(resolve(&root, "/%2e%2e/etc/passwd").is_err());
        assert!(resolve(&root, "/a/%2E%2E/%2e%2e/x").is_err());
        assert!(resolve(&root, "/a%5c..%5cx").is_err());
        assert!(matches!(resolve(&root, "/missing.txt"), Ok(None)));
    }

    #[test]
    fn etag_matching_ignores_weakness_and_accepts_lists() {
        let etag = HeaderValue::from_static("W/\"a-b\"");
        assert!(etag_matches(
            &HeaderValue::from_static("\"x\", W/\"a-b\""),
            &etag
        ));
        assert!(etag_matches(&HeaderValue::from_static("*"), &etag));
        assert!(!etag_matches(&HeaderValue::from_static("\"a-c\""), &etag));
    }
}
