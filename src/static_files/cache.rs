//! The assets in memory: each file served once from disk, then from a
//! cached copy with its validators and its gzip form computed once.
//!
//! A site's assets are a few small files read on every page view; reading
//! them through `ServeDir` costs a canonicalisation, an open, a blocking-pool
//! hop and a read per request. Here a plain `GET`/`HEAD` (no `Range`) of a
//! file up to [`MAX_CACHED`] is answered from memory. Its canonical path is
//! checked with a `stat` at most every [`CHECK_INTERVAL`]: a changed size,
//! modification time or inode (a deploy that rewrote the file) drops the
//! entry and the next request reads the file again. So a change on disk is
//! served within that interval (nginx's own `open_file_cache_valid` is a
//! minute by default); a `stat` per request was a tenth of the server's
//! time on a small file. The canonical path holds no symlinks and was checked to lie
//! inside the root when the entry was made, so a cached entry never serves
//! anything outside it. Anything else (ranges, other methods, big files)
//! goes to `ServeDir` as before.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

/// The largest file kept in memory.
pub const MAX_CACHED: u64 = 1024 * 1024;
/// The most entries kept (request paths); beyond it nothing new is cached.
const MAX_ENTRIES: usize = 4096;

/// What identifies a file's content on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    device: u64,
    inode: u64,
    size: u64,
    modified_ns: i128,
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Stamp {
        Stamp {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.len(),
            modified_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
        }
    }
}

/// One file, ready to send.
struct Entry {
    real: PathBuf,
    stamp: Stamp,
    /// When the file last matched `stamp`, in ms since the cache's epoch.
    checked_ms: std::sync::atomic::AtomicU64,
    body: Bytes,
    gzipped: Option<Bytes>,
    content_type: HeaderValue,
    etag: HeaderValue,
    last_modified: HeaderValue,
    modified: std::time::SystemTime,
}

/// How long an entry is served without looking at its file again.
pub const CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// The cache, shared by every request of one server.
#[derive(Clone)]
pub struct Cache {
    entries: Arc<RwLock<HashMap<String, Arc<Entry>>>>,
    /// The time base of [`Entry::checked_ms`].
    epoch: std::time::Instant,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            entries: Arc::default(),
            epoch: std::time::Instant::now(),
        }
    }
}

impl Cache {
    /// The answer for `method path` from memory, if it can be given so.
    pub fn answer(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<Response> {
        let entry = self.fresh_entry(method, path, headers)?;
        Some(respond(&entry, method, headers))
    }

    /// [`Cache::answer`], but only when that is the final answer, so that
    /// it can skip the router and its layers: every answer but one whose
    /// client takes gzip that the entry has no gzipped copy of (the
    /// compression layer decides on those).
    pub fn final_answer(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<Response> {
        let entry = self.fresh_entry(method, path, headers)?;
        if entry.gzipped.is_none() && accepts_gzip(headers) {
            return None;
        }
        Some(respond(&entry, method, headers))
    }

    /// The entry for `path`, if the request can be answered from memory and
    /// the file on disk is still the one read (one `stat`).
    fn fresh_entry(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<Arc<Entry>> {
        if !cacheable_request(method, headers) {
            return None;
        }
        let entry = self.entries.read().ok()?.get(path).cloned()?;
        let now = self.now_ms();
        let checked = entry.checked_ms.load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(checked) < CHECK_INTERVAL.as_millis() as u64 {
            return Some(entry);
        }
        let fresh = std::fs::metadata(&entry.real).is_ok_and(|m| Stamp::of(&m) == entry.stamp);
        if !fresh {
            self.entries.write().ok()?.remove(path);
            return None;
        }
        entry
            .checked_ms
            .store(now, std::sync::atomic::Ordering::Relaxed);
        Some(entry)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Reads `real` (the checked canonical file for `path`, with its
    /// `metadata`) into the cache and answers from it; `None` when it is
    /// not worth caching (too big, unreadable, not a plain request).
    pub fn fill(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        real: &Path,
        metadata: &std::fs::Metadata,
    ) -> Option<Response> {
        if !cacheable_request(method, headers) || !metadata.is_file() || metadata.len() > MAX_CACHED
        {
            return None;
        }
        let body = Bytes::from(std::fs::read(real).ok()?);
        // Read after the content: a file changed meanwhile is not stamped fresh.
        let after = std::fs::metadata(real).ok()?;
        if Stamp::of(&after) != Stamp::of(metadata) || body.len() as u64 != metadata.len() {
            return None;
        }
        let mime = mime_guess::from_path(real).first_or_octet_stream();
        let content_type = HeaderValue::from_str(mime.as_ref()).ok()?;
        let modified = metadata.modified().ok()?;
        let entry = Arc::new(Entry {
            real: real.to_path_buf(),
            stamp: Stamp::of(metadata),
            checked_ms: self.now_ms().into(),
            gzipped: compressible(mime.essence_str())
                .then(|| gzip(&body))
                .flatten(),
            body,
            content_type,
            etag: super::weak_etag(metadata)?,
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified)).ok()?,
            modified,
        });
        let response = respond(&entry, method, headers);
        if let Ok(mut entries) = self.entries.write()
            && (entries.len() < MAX_ENTRIES || entries.contains_key(path))
        {
            entries.insert(path.to_string(), entry);
        }
        Some(response)
    }
}

fn cacheable_request(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD) && !headers.contains_key(header::RANGE)
}

fn compressible(essence: &str) -> bool {
    essence.starts_with("text/")
        || matches!(
            essence,
            "application/javascript" | "application/json" | "image/svg+xml"
        )
}

fn gzip(body: &[u8]) -> Option<Bytes> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(body).ok()?;
    let compressed = encoder.finish().ok()?;
    (compressed.len() < body.len()).then(|| compressed.into())
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// The entry as an answer: 304 when a validator matches, else the body
/// (gzipped when accepted), without it for `HEAD`.
fn respond(entry: &Entry, method: &Method, headers: &HeaderMap) -> Response {
    let not_modified = match headers.get(header::IF_NONE_MATCH) {
        Some(tags) => super::etag_matches(tags, &entry.etag),
        None => headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok())
            .is_some_and(|since| {
                entry
                    .modified
                    .duration_since(since)
                    .map_or(true, |ahead| ahead.as_secs() < 1)
            }),
    };
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let (body, gzipped) = match &entry.gzipped {
            Some(gz) if accepts_gzip(headers) => (gz.clone(), true),
            _ => (entry.body.clone(), false),
        };
        let length = body.len();
        let mut response = if method == Method::HEAD {
            Response::new(axum::body::Body::empty())
        } else {
            Response::new(axum::body::Body::from(body))
        };
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, entry.content_type.clone());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if gzipped {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        response
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, entry.etag.clone());
    h.insert(header::LAST_MODIFIED, entry.last_modified.clone());
    if entry.gzipped.is_some() {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    // What the router's layer sets on every answer it lets through (a
    // [`Cache::final_answer`] skips the router).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
