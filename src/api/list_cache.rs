//! The unpaged `GET /images.json` body, cached per worker so that its memory
//! stays bounded however large the table and however many clients ask.
//!
//! One shared [`Bytes`] per `indent` value (0..=10) is kept with the
//! [`DataVersion`] it was built at; every response is a reference to it, and
//! hyper writes it to the socket without copying (the connection's writes
//! are vectored, so the body is queued, not flattened into a buffer). So N
//! concurrent readers cost one body, not N.
//!
//! Freshness: before answering, a request reads `PRAGMA data_version` on
//! the store's dedicated connection (inline: it is cheaper than a hop to the
//! blocking pool). It changes whenever any other
//! connection, in this process or another worker, commits, and it is O(1): a
//! look at the WAL index, not a scan. The alternatives were worse: a
//! fingerprint such as `max(id)` + `count(*)` is a full scan of a large table
//! on every request, and misses an update or delete that keeps both. The
//! version is read *before* the rows, so a body is never older than the
//! version it is filed under; a POST acknowledged by any worker before a GET
//! starts is in that GET's answer.
//!
//! On PostgreSQL the version is the server's MVCC snapshot (which
//! transactions had finished), one round trip on the blocking pool and no
//! scan; a body is fresh while its snapshot sees every transaction the
//! request's own does. Unlike `max(id)`, that is exact when workers commit
//! rows out of id order, and it sees updates and deletes too (see
//! `store/postgres.rs`). The comparison is a partial order: a version that
//! is not comparable counts as stale.
//!
//! Single flight: each slot is an async mutex. The first request to find it
//! stale builds while holding it; the others wait on the lock, not on their
//! own copy, and then find the new body. The build runs on the blocking pool
//! and owns the lock guard, so a client that hangs up mid-build neither
//! wastes the build nor lets a second one start beside it. The stale body is
//! let go before the new one is built, and a build also drops the bodies of
//! other indents it finds stale, so the steady state is at most one body per
//! indent in use, all current, plus the old ones still being written to slow
//! clients.
//!
//! The build streams rows from the database straight into the JSON text (no
//! `Vec<Image>` of the whole table), in a buffer sized from the last build.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Mutex;

use super::body::{Indent, MAX_INDENT};
use super::{Result, blocking};
use crate::image::Image;
use crate::store::{DataVersion, Page, Store, StoreError};

/// The cached bodies of one worker, one slot per `indent` value.
#[derive(Default)]
pub struct ListCache {
    slots: [Arc<Mutex<Option<Cached>>>; MAX_INDENT + 1],
}

struct Cached {
    version: DataVersion,
    body: Bytes,
}

impl ListCache {
    /// The whole table as JSON with `indent`, current as of this call.
    pub async fn body(&self, store: &Store, indent: Indent) -> Result<Bytes> {
        // On SQLite inline, not on the blocking pool: an O(1) look at the
        // WAL index on a dedicated connection (the file check behind it runs
        // at most every 100 ms), cheaper than the hop. On PostgreSQL a round
        // trip, on the blocking pool.
        let wanted = store.data_version_async().await?;
        let slot = self.slots[indent.0].clone();
        let mut cached = slot.lock_owned().await;
        // Versions only grow, so a body built since we looked is fresh
        // enough; one whose version does not compare is not.
        if let Some(current) = cached.as_ref().filter(|c| c.version >= wanted) {
            return Ok(current.body.clone());
        }
        let last_size = cached.take().map_or(0, |stale| stale.body.len());
        let others = self.slots.clone();
        let store = store.clone();
        blocking(move || {
            // Read again just before the rows, so the body is filed under the
            // newest version it certainly includes.
            let version = store.data_version()?;
            let body = Bytes::from(render(&store, indent, None, last_size + last_size / 16)?);
            *cached = Some(Cached {
                version: version.clone(),
                body: body.clone(),
            });
            drop(cached);
            for other in &others {
                if let Ok(mut other) = other.try_lock()
                    && other.as_ref().is_some_and(|c| c.version < version)
                {
                    *other = None;
                }
            }
            Ok(body)
        })
        .await
    }
}

/// Renders images (all, or one page) as a JSON array, row by row.
pub fn render(
    store: &Store,
    indent: Indent,
    page: Option<Page>,
    capacity: usize,
) -> std::result::Result<Vec<u8>, StoreError> {
    indent.render_each(capacity, |push: &mut dyn FnMut(&Image)| {
        store.for_each_image(page, |image| push(image))
    })
}
