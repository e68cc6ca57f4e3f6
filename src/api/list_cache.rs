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
//! the store's dedicated connection, or learns from a peek at the WAL index
//! header that it has not changed (inline: it is cheaper than a hop to the
//! blocking pool; see `store/dedicated.rs`). It changes whenever any other
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
//! A fresh body is read under a plain read lock, held only to clone the
//! `Bytes`: the common case waits for nobody. Single flight: each slot also
//! has an async mutex. The first request to find the body stale builds
//! while holding it; the others wait on the lock, not on their own copy,
//! and then find the new body. The build runs on the blocking pool and owns
//! the lock guard, so a client that hangs up mid-build neither wastes the
//! build nor lets a second one start beside it. The stale body is
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
    slots: Arc<[Slot; MAX_INDENT + 1]>,
}

#[derive(Default)]
struct Slot {
    /// The body last built; read under a plain lock, held for a clone.
    current: std::sync::RwLock<Option<Cached>>,
    /// Held while a new body is built, so only one build runs.
    building: Arc<Mutex<()>>,
}

struct Cached {
    version: DataVersion,
    body: Bytes,
}

impl Slot {
    /// The body, if it was built at `wanted` or later. Versions only grow,
    /// so a body built since we looked is fresh enough; one whose version
    /// does not compare is not.
    fn fresh(&self, wanted: &DataVersion) -> Option<Bytes> {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        current
            .as_ref()
            .filter(|cached| cached.version >= *wanted)
            .map(|cached| cached.body.clone())
    }

    fn set(&self, cached: Option<Cached>) -> Option<Cached> {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut current, cached)
    }
}

impl ListCache {
    /// The unindented body, when it is known to be current without waiting
    /// (SQLite: the WAL index says nothing changed since it was built);
    /// `None` when it is stale, when telling would mean a round trip
    /// (PostgreSQL), or on any error: [`ListCache::body`] then decides.
    pub fn current_now(&self, store: &Store) -> Option<Bytes> {
        let wanted = store.data_version_inline()?.ok()?;
        self.slots[0].fresh(&wanted)
    }

    /// The whole table as JSON with `indent`, current as of this call.
    pub async fn body(&self, store: &Store, indent: Indent) -> Result<Bytes> {
        // On SQLite inline, not on the blocking pool: a look at the WAL
        // index (the file check behind it runs at most every 100 ms),
        // cheaper than the hop. On PostgreSQL a round trip, on the
        // blocking pool.
        let wanted = store.data_version_async().await?;
        let slot = &self.slots[indent.0];
        if let Some(body) = slot.fresh(&wanted) {
            return Ok(body);
        }
        let building = slot.building.clone().lock_owned().await;
        if let Some(body) = slot.fresh(&wanted) {
            return Ok(body);
        }
        let last_size = slot.set(None).map_or(0, |stale| stale.body.len());
        let slots = self.slots.clone();
        let store = store.clone();
        blocking(move || {
            // Read again just before the rows, so the body is filed under the
            // newest version it certainly includes.
            let version = store.data_version()?;
            let body = Bytes::from(render(&store, indent, None, last_size + last_size / 16)?);
            slots[indent.0].set(Some(Cached {
                version: version.clone(),
                body: body.clone(),
            }));
            drop(building);
            for other in slots.iter() {
                if let Ok(mut other) = other.current.try_write()
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
