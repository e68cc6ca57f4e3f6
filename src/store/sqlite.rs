//! The SQLite implementation of the store: opening the file, its pragmas,
//! its connections and its SQL.
//!
//! Every connection — the one that migrates, every pooled one and the two
//! dedicated ones — gets the same pragmas (`busy_timeout` first, then WAL
//! and `synchronous=FULL`, or `NORMAL` on request), so several worker
//! processes can share one file and an acknowledged write survives a power
//! loss. Writes are committed in groups ([`Sqlite::commit_group`], driven by
//! `group.rs`): one transaction and one fsync for every write waiting.
//! Migrations are versioned on `PRAGMA user_version` and run inside
//! `BEGIN IMMEDIATE` (`schema.rs`), which makes the first start of many
//! processes on a fresh file create one schema and seed once. Inserts run in
//! `BEGIN IMMEDIATE` too, so a writer waits for the lock up front instead of
//! failing on upgrade.
//!
//! Reads stream: [`Sqlite::for_each_image`] hands rows to a callback one at
//! a time, so a caller that renders them never holds the table twice (once
//! as rows, once as text). Two statements bypass the pool on dedicated
//! connections (see `dedicated.rs`): `/health`'s round trip, so it never
//! queues behind list requests for a pooled connection, and
//! [`Sqlite::data_version`], which must be read on the same connection each
//! time to mean anything.
//!
//! Idempotent inserts ([`Sqlite::commit_group`] with a keyed write): the
//! key, the exact request body and the new image's id are written in the
//! image's own `BEGIN IMMEDIATE` transaction, so no crash can leave an image
//! without its key or a key without its image, and two requests with one key
//! — from any process — serialise on the write lock: the second sees the
//! first's row. The body is kept byte for byte rather than as a digest: the
//! comparison is exact, needs no hashing dependency, and costs at most 64 KiB
//! per key for the 24 h window (keys older than that are pruned by every
//! insert, through an index, so the work is spread over the writes that
//! create it).
//!
//! The file is checked before use against the one opened (`identity.rs`):
//! a removed, replaced, read-only or foreign file is
//! [`StoreError::Unavailable`], and a usable one put back is reopened.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use super::dedicated::{Dedicated, FileVersion};
use super::identity::{self, FileIdentity, FileTrouble};
use super::{IDEMPOTENCY_WINDOW, Keyed, Page, StoreError, StoreOptions, Synchronous, Write};
use super::{schema, unix_seconds};
use crate::image::{Image, NewImage};

/// Why a file could not be opened, said once: a missing directory by
/// name, else SQLite's reason without the path it appends.
pub(super) fn cannot_open_reason(path: &Path, cause: &rusqlite::Error) -> String {
    let directory = match path.parent() {
        Some(dir) if dir.as_os_str().is_empty() => Path::new("."),
        Some(dir) => dir,
        None => Path::new("/"),
    };
    if !directory.is_dir() {
        return format!("its directory {} does not exist", directory.display());
    }
    let reason = match cause {
        rusqlite::Error::SqliteFailure(e, _) => {
            rusqlite::ffi::code_to_str(e.extended_code).to_string()
        }
        other => other.to_string(),
    };
    format!("{reason} (is its directory writable?)")
}

pub(super) fn is_busy_code(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Classifies a rusqlite error from normal operation.
pub(super) fn classify(error: rusqlite::Error) -> StoreError {
    if is_busy_code(&error) {
        StoreError::Busy(error.to_string())
    } else {
        StoreError::Sqlite(error)
    }
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// A pool of configured connections to one SQLite file, and the two
/// dedicated ones, checked before every use against the file at the path
/// (see `identity.rs`) and reopened when a usable file is back.
#[derive(Clone)]
pub(super) struct Sqlite {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    options: StoreOptions,
    /// The file in use; `None` while there is no usable file at the path.
    opened: std::sync::RwLock<Option<Arc<Opened>>>,
    /// The trouble last logged, so each change is logged once.
    trouble: std::sync::Mutex<Option<FileTrouble>>,
    /// Counts openings, so data versions of different files never compare equal.
    generation: std::sync::atomic::AtomicU64,
    /// When the file at the path last passed its check, in ms since `epoch`
    /// (0: never), so reads may skip the check for [`READ_CHECK_INTERVAL`].
    checked_at_ms: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
}

/// How long a read may rely on the file's last check. Writes and `/health`
/// always check; a read in this window may at worst serve the list as it
/// was a moment before the file went wrong.
const READ_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Connections to one file, known by its identity.
struct Opened {
    pool: r2d2::Pool<SqliteConnectionManager>,
    health: Dedicated,
    versions: Dedicated,
    identity: FileIdentity,
    generation: u64,
}

/// Flags for every connection after the first open: never create the file,
/// so a removed database is an error and not a fresh empty one.
fn existing_file_flags() -> rusqlite::OpenFlags {
    rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
        | rusqlite::OpenFlags::SQLITE_OPEN_URI
}

/// How long one wait for another process's lock lasts ([`wait_for_lock`]).
const LOCK_POLL: Duration = Duration::from_micros(100);

/// The busy timeout in [`LOCK_POLL`]s: the process's `--busy-timeout-ms`
/// (one value per process; a busy handler is a plain function).
static LOCK_POLLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(50_000);

/// SQLite's busy handler: called while another process holds the lock, it
/// waits [`LOCK_POLL`] and tries again, until the busy timeout. SQLite's
/// own handler sleeps 1, 2, 5 … up to 100 ms between tries, so three
/// workers committing in turn would wait milliseconds for a lock held for
/// microseconds; short polls hand it over almost at once.
fn wait_for_lock(attempts: i32) -> bool {
    let polls = LOCK_POLLS.load(std::sync::atomic::Ordering::Relaxed);
    if u64::try_from(attempts).unwrap_or(u64::MAX) >= polls {
        return false;
    }
    std::thread::sleep(LOCK_POLL);
    true
}

/// Per-connection pragmas. WAL is a property of the file: it is switched on
/// only when not yet set, because the switch needs an exclusive lock.
pub(super) fn configure(
    conn: &Connection,
    busy_timeout: Duration,
    synchronous: Synchronous,
) -> rusqlite::Result<()> {
    let polls = (busy_timeout.as_micros() / LOCK_POLL.as_micros()).max(1) as u64;
    LOCK_POLLS.store(polls, std::sync::atomic::Ordering::Relaxed);
    conn.busy_handler(Some(wait_for_lock))?;
    let mode: String = conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "synchronous", synchronous.pragma())?;
    Ok(())
}

impl Sqlite {
    /// Opens (creating if needed) the database at `path`, migrates and seeds it.
    pub(super) fn open(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        Sqlite::migrate(path, options)?;
        let store = Sqlite::unopened(path, options);
        store.opened()?;
        Ok(store)
    }

    /// Creates (if needed), migrates and seeds the database at `path`, and
    /// checks the file left is usable, as [`Sqlite::open`] does, but opens
    /// no pool: its one connection is closed before this returns, so when
    /// no other process has the file open, that close is the last one and
    /// checkpoints the WAL into the file and removes `-wal` and `-shm`.
    pub(super) fn prepare(path: &Path, options: &StoreOptions) -> Result<(), StoreError> {
        Sqlite::migrate(path, options)?;
        identity::usable(path).map_err(StoreError::Unavailable)?;
        Ok(())
    }

    /// Creates (if needed), migrates and seeds the database at `path` on one
    /// connection, closed before this returns.
    fn migrate(path: &Path, options: &StoreOptions) -> Result<(), StoreError> {
        let (busy_timeout, synchronous) = (options.busy_timeout, options.synchronous);
        let opening_error = |source: rusqlite::Error| {
            if source.sqlite_error_code() == Some(ErrorCode::NotADatabase) {
                StoreError::NotADatabase {
                    path: path.to_path_buf(),
                }
            } else if is_busy_code(&source) {
                StoreError::Busy(source.to_string())
            } else {
                StoreError::CannotOpen {
                    path: path.to_path_buf(),
                    cause: source,
                }
            }
        };
        let open_and_migrate = || -> Result<(), StoreError> {
            let mut conn = Connection::open(path).map_err(opening_error)?;
            configure(&conn, busy_timeout, synchronous).map_err(opening_error)?;
            schema::migrate(&mut conn).map_err(|e| match e {
                schema::MigrateError::TooNew { found, supported } => {
                    StoreError::TooNew { found, supported }
                }
                schema::MigrateError::Sqlite(e) => opening_error(e),
                schema::MigrateError::Postgres(e) => StoreError::Postgres(e),
            })
        };
        // When several processes open a fresh file at once, SQLite may answer
        // SQLITE_BUSY without waiting (switching to WAL takes an exclusive
        // lock, and SQLite skips the busy handler where waiting could
        // deadlock), so the whole step is retried until the busy timeout.
        let deadline = std::time::Instant::now() + busy_timeout;
        loop {
            match open_and_migrate() {
                Err(StoreError::Busy(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                result => break result,
            }
        }
    }

    /// A store on a database that must already exist (a worker under the
    /// supervisor, which created it): it never creates, migrates or seeds
    /// one. While no usable file is at the path every operation is
    /// [`StoreError::Unavailable`]; the file is (re)opened once it is back.
    pub(super) fn open_existing(path: &Path, options: &StoreOptions) -> Sqlite {
        let store = Sqlite::unopened(path, options);
        let _ = store.opened();
        store
    }

    fn unopened(path: &Path, options: &StoreOptions) -> Sqlite {
        Sqlite {
            shared: Arc::new(Shared {
                path: path.to_path_buf(),
                options: options.clone(),
                opened: std::sync::RwLock::new(None),
                trouble: std::sync::Mutex::new(None),
                generation: std::sync::atomic::AtomicU64::new(0),
                checked_at_ms: std::sync::atomic::AtomicU64::new(0),
                epoch: std::time::Instant::now(),
            }),
        }
    }

    /// The connections to use now: the file opened before if it is still at
    /// the path and usable; a reopened one if a usable file has replaced it.
    fn opened(&self) -> Result<Arc<Opened>, StoreError> {
        let shared = &self.shared;
        let current = shared
            .opened
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let result = match &current {
            Some(opened) => match identity::check(&shared.path, opened.identity) {
                Ok(()) => Ok(opened.clone()),
                Err(FileTrouble::Replaced) => self.reopen(),
                Err(trouble) => Err(trouble),
            },
            None => self.reopen(),
        };
        self.note(result.as_ref().err().copied());
        let checked = match result {
            Ok(_) => shared.epoch.elapsed().as_millis() as u64 + 1,
            Err(_) => 0,
        };
        shared
            .checked_at_ms
            .store(checked, std::sync::atomic::Ordering::Relaxed);
        result.map_err(StoreError::Unavailable)
    }

    /// Drops the connections in use: the next operation opens new ones on
    /// the file at the path.
    fn forget_connections(&self) {
        *self
            .shared
            .opened
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        self.shared
            .checked_at_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// The connections for a read: as [`Sqlite::opened`], but without checking
    /// the file again if it passed a check in the last [`READ_CHECK_INTERVAL`]
    /// (the check costs a stat, an access and a read of the header).
    fn opened_for_read(&self) -> Result<Arc<Opened>, StoreError> {
        let shared = &self.shared;
        let checked = shared
            .checked_at_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let now = shared.epoch.elapsed().as_millis() as u64 + 1;
        if checked != 0 && now.saturating_sub(checked) < READ_CHECK_INTERVAL.as_millis() as u64 {
            let current = shared
                .opened
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if let Some(opened) = current {
                return Ok(opened);
            }
        }
        self.opened()
    }

    /// Opens the usable database file now at the path.
    fn reopen(&self) -> Result<Arc<Opened>, FileTrouble> {
        let shared = &self.shared;
        let identity = identity::usable(&shared.path)?;
        let (busy_timeout, synchronous) = (shared.options.busy_timeout, shared.options.synchronous);
        // It must be a database of ours, at a version this build knows.
        let conn = Connection::open_with_flags(&shared.path, existing_file_flags())
            .map_err(|_| FileTrouble::Unreadable)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|_| FileTrouble::NotADatabase)?;
        if !(1..=schema::MIGRATIONS.len() as i64).contains(&version) {
            return Err(FileTrouble::NotADatabase);
        }
        drop(conn);
        let manager = SqliteConnectionManager::file(&shared.path)
            .with_flags(existing_file_flags())
            .with_init(move |conn| configure(conn, busy_timeout, synchronous));
        let pool = r2d2::Pool::builder()
            .max_size(shared.options.pool_size)
            .min_idle(Some(1))
            .connection_timeout(busy_timeout)
            .build_unchecked(manager);
        let opened = Arc::new(Opened {
            pool,
            health: Dedicated::new(shared.path.clone(), busy_timeout),
            versions: Dedicated::for_versions(shared.path.clone(), busy_timeout),
            identity,
            generation: shared
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        });
        *shared
            .opened
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(opened.clone());
        Ok(opened)
    }

    /// Logs each change of the database file's state once.
    fn note(&self, trouble: Option<FileTrouble>) {
        let mut last = self
            .shared
            .trouble
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last == trouble {
            return;
        }
        let path = self.shared.path.display();
        match trouble {
            Some(trouble) => tracing::error!(
                "{trouble} ({path}): answering 503 to every request that needs it until a usable database is back"
            ),
            None => tracing::warn!("the database file {path} is usable again: serving"),
        }
        *last = trouble;
    }

    fn connection(&self) -> Result<r2d2::PooledConnection<SqliteConnectionManager>, StoreError> {
        self.opened()?
            .pool
            .get()
            .map_err(|e| StoreError::Busy(e.to_string()))
    }

    /// Hands each image to `each`, in id order: every one, or one [`Page`].
    /// All come from one read snapshot.
    pub(super) fn for_each_image(
        &self,
        page: Option<Page>,
        mut each: impl FnMut(&Image),
    ) -> Result<(), StoreError> {
        let conn = self
            .opened_for_read()?
            .pool
            .get()
            .map_err(|e| StoreError::Busy(e.to_string()))?;
        let (sql, after, limit) = match page {
            None => (
                "SELECT id, title, alt_text, url FROM images ORDER BY id",
                None,
                None,
            ),
            Some(page) => (
                "SELECT id, title, alt_text, url FROM images WHERE id > ?1 ORDER BY id LIMIT ?2",
                Some(page.after),
                Some(page.limit),
            ),
        };
        let mut statement = conn.prepare_cached(sql).map_err(classify)?;
        let mut rows = match (after, limit) {
            (Some(after), Some(limit)) => statement.query((after, limit)),
            _ => statement.query([]),
        }
        .map_err(classify)?;
        while let Some(row) = rows.next().map_err(classify)? {
            each(&image_from_row(row).map_err(classify)?);
        }
        Ok(())
    }

    /// The database's change counter; see [`FileVersion`]. Read on a
    /// dedicated connection, so it is cheap and never waits for the pool.
    pub(super) fn data_version(&self) -> Result<FileVersion, StoreError> {
        let opened = self.opened_for_read()?;
        Ok(opened
            .versions
            .data_version()?
            .of_generation(opened.generation))
    }

    /// Commits `writes` together: one `BEGIN IMMEDIATE` transaction and one
    /// commit (one fsync under `synchronous=FULL`) for all of them. Each
    /// write runs in its own savepoint, so one that fails is undone alone
    /// and gets its own error; a failed commit fails them all (nothing of
    /// theirs is stored). Expired keys are pruned once per group.
    ///
    /// Connections that opened while one of the files was not yet writable
    /// for this account (root's, say, before the supervisor handed it over)
    /// stay read-only for life, and so does the shared memory of every
    /// connection of this process while one of them is open. So a group
    /// refused as read-only at its start drops every connection and tries
    /// once more on fresh ones; still read-only, that is a 503.
    pub(super) fn commit_group(
        &self,
        writes: &[Write],
        now: SystemTime,
    ) -> Result<Vec<Result<Keyed, StoreError>>, StoreError> {
        match self.commit_group_once(writes, now)? {
            Some(results) => Ok(results),
            None => {
                self.forget_connections();
                self.commit_group_once(writes, now)?.ok_or_else(|| {
                    StoreError::Busy("the database files are read-only for this account".into())
                })
            }
        }
    }

    /// One try of [`Sqlite::commit_group`]; `None`: refused as read-only
    /// before anything was written.
    fn commit_group_once(
        &self,
        writes: &[Write],
        now: SystemTime,
    ) -> Result<Option<Vec<Result<Keyed, StoreError>>>, StoreError> {
        let mut conn = self.connection()?;
        let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ReadOnly) => return Ok(None),
            Err(e) => return Err(classify(e)),
        };
        prune_keys(&tx, now).map_err(classify)?;
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            let savepoint = tx.savepoint().map_err(classify)?;
            let result = match write {
                Write::Plain(image) => insert(&savepoint, image).map(Keyed::Stored),
                Write::Keyed { image, key, body } => insert_once(&savepoint, image, key, body, now),
            };
            match result {
                Ok(keyed) => {
                    savepoint.commit().map_err(classify)?;
                    results.push(Ok(keyed));
                }
                // Dropping the savepoint rolls it back.
                Err(e) => results.push(Err(classify(e))),
            }
        }
        tx.commit().map_err(classify)?;
        Ok(Some(results))
    }

    /// A real round trip: reads the schema and the images table, on the
    /// dedicated health connection.
    pub(super) fn ping(&self) -> Result<(), StoreError> {
        self.opened()?.health.ping()
    }
}

fn image_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Image> {
    Ok(Image {
        id: row.get(0)?,
        title: row.get(1)?,
        alt_text: row.get(2)?,
        url: row.get(3)?,
    })
}

/// Forgets keys whose window has closed by `now`.
fn prune_keys(tx: &Connection, now: SystemTime) -> rusqlite::Result<()> {
    let oldest_kept = unix_seconds(now) - IDEMPOTENCY_WINDOW.as_secs() as i64;
    tx.prepare_cached("DELETE FROM idempotency_keys WHERE created_at <= ?1")?
        .execute([oldest_kept])?;
    Ok(())
}

fn insert(tx: &Connection, image: &NewImage) -> rusqlite::Result<Image> {
    let id: i64 = tx
        .prepare_cached(
            "INSERT INTO images (title, alt_text, url) VALUES (?1, ?2, ?3) RETURNING id",
        )?
        .query_row((image.title(), image.alt_text(), image.url()), |row| {
            row.get(0)
        })?;
    Ok(Image {
        id,
        title: image.title().to_string(),
        alt_text: image.alt_text().to_string(),
        url: image.url().to_string(),
    })
}

fn insert_once(
    tx: &Connection,
    image: &NewImage,
    key: &str,
    body: &[u8],
    now: SystemTime,
) -> rusqlite::Result<Keyed> {
    prune_keys(tx, now)?;
    let previous: Option<(Vec<u8>, i64)> = tx
        .prepare_cached("SELECT request_body, image_id FROM idempotency_keys WHERE key = ?1")?
        .query_row([key], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    if let Some((first_body, id)) = previous {
        if first_body != body {
            return Ok(Keyed::Conflict);
        }
        let first = tx
            .prepare_cached("SELECT id, title, alt_text, url FROM images WHERE id = ?1")?
            .query_row([id], image_from_row)
            .optional()?;
        if let Some(first) = first {
            return Ok(Keyed::Replayed(first));
        }
        // The image was deleted behind the API's back (by an operator): the
        // client still wants it stored, so the key starts afresh.
        tx.prepare_cached("DELETE FROM idempotency_keys WHERE key = ?1")?
            .execute([key])?;
    }
    let stored = insert(tx, image)?;
    tx.prepare_cached(
        "INSERT INTO idempotency_keys (key, request_body, image_id, created_at)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute((key, body, stored.id, unix_seconds(now)))?;
    Ok(Keyed::Stored(stored))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use serde_json::json;

    fn open_temp() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("g.db"), &StoreOptions::default()).unwrap();
        (dir, store)
    }

    #[test]
    fn a_new_database_is_seeded_once() {
        let (dir, store) = open_temp();
        let titles: Vec<_> = store
            .list_images()
            .unwrap()
            .into_iter()
            .map(|i| i.title)
            .collect();
        assert_eq!(titles, ["Sunset", "Mountain", "Cat"]);
        drop(store);
        let again = Store::open(dir.path().join("g.db"), &StoreOptions::default()).unwrap();
        assert_eq!(again.list_images().unwrap().len(), 3);
    }

    #[test]
    fn inserts_come_back_in_order_with_ids() {
        let (_dir, store) = open_temp();
        let new =
            NewImage::parse(&json!({"title": "Dog", "alt_text": "", "url": "/d.svg"})).unwrap();
        let stored = store.insert_image(&new).unwrap();
        assert_eq!(stored.id, 4);
        assert_eq!(store.list_images().unwrap().last(), Some(&stored));
        store.ping().unwrap();
    }

    fn new_image(title: &str) -> NewImage {
        NewImage::parse(&json!({"title": title, "alt_text": "", "url": "/x.svg"})).unwrap()
    }

    fn ids(store: &Store, page: Option<Page>) -> Vec<i64> {
        let mut ids = Vec::new();
        store.for_each_image(page, |i| ids.push(i.id)).unwrap();
        ids
    }

    #[test]
    fn pages_hold_the_rows_after_the_cursor_in_id_order() {
        let (_dir, store) = open_temp();
        for n in 0..7 {
            store.insert_image(&new_image(&format!("n{n}"))).unwrap();
        }
        assert_eq!(ids(&store, None), (1..=10).collect::<Vec<_>>());
        let page = |after, limit| Some(Page { after, limit });
        assert_eq!(ids(&store, page(0, 4)), [1, 2, 3, 4]);
        assert_eq!(ids(&store, page(4, 4)), [5, 6, 7, 8]);
        assert_eq!(ids(&store, page(8, 4)), [9, 10]);
        assert_eq!(ids(&store, page(10, 4)), Vec::<i64>::new());
        assert_eq!(ids(&store, page(i64::MAX, 500)), Vec::<i64>::new());
        assert_eq!(ids(&store, page(3, 1)), [4]);
    }

    #[test]
    fn data_version_moves_on_every_commit_and_only_then() {
        let (_dir, store) = open_temp();
        let first = store.data_version().unwrap();
        assert_eq!(store.data_version().unwrap(), first);
        store.list_images().unwrap();
        assert_eq!(store.data_version().unwrap(), first, "a read is no change");
        store.insert_image(&new_image("a")).unwrap();
        let second = store.data_version().unwrap();
        assert!(second > first, "{second:?} after {first:?}");
        let other = rusqlite::Connection::open(_dir.path().join("g.db")).unwrap();
        other
            .execute("UPDATE images SET title = 'b' WHERE id = 4", [])
            .unwrap();
        assert!(store.data_version().unwrap() > second);
    }

    #[test]
    fn the_versions_fast_path_sees_every_commit_through_checkpoints_and_log_resets() {
        let (dir, store) = open_temp();
        let sqlite = Sqlite::open(&dir.path().join("g.db"), &StoreOptions::default()).unwrap();
        let other = rusqlite::Connection::open(dir.path().join("g.db")).unwrap();
        other.busy_timeout(Duration::from_secs(5)).unwrap();
        let statements = || sqlite.opened_for_read().unwrap().versions.statements();
        let rounds: i64 = 300;
        let mut last = sqlite.data_version().unwrap();
        let before = statements();
        for round in 0..rounds {
            // Unchanged: the same reading, from the fast path.
            for _ in 0..3 {
                assert_eq!(sqlite.data_version().unwrap(), last, "round {round}");
            }
            match round % 5 {
                // A checkpoint that empties the log: the next write starts
                // it again from frame 1, with new salts.
                0 => {
                    other
                        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                        .unwrap();
                    // SQLite may count the emptied log as a change: never less.
                    let checkpointed = sqlite.data_version().unwrap();
                    assert!(checkpointed >= last, "round {round}");
                    last = checkpointed;
                    other
                        .execute("UPDATE images SET title = ?1 WHERE id = 1", [round])
                        .unwrap();
                }
                1 => store.insert_image(&new_image("a")).map(drop).unwrap(),
                2 => other
                    .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
                    .and_then(|()| other.execute("DELETE FROM images WHERE id > 3", []))
                    .map(drop)
                    .unwrap(),
                _ => other
                    .execute("UPDATE images SET title = ?1 WHERE id = 2", [round])
                    .map(drop)
                    .unwrap(),
            }
            let now = sqlite.data_version().unwrap();
            assert!(now > last, "round {round}: {now:?} after {last:?}");
            last = now;
        }
        // One statement per change (a checkpoint is one, too), at most:
        // the unchanged reads peeked.
        let ran = statements() - before;
        let changes = rounds as u64 + rounds as u64 / 5;
        assert!(ran <= changes + 5, "{ran} statements for {changes} changes");
    }

    #[test]
    fn an_idempotency_key_stores_once_replays_the_same_body_and_refuses_another() {
        let (_dir, store) = open_temp();
        let now = SystemTime::now();
        let body = br#"{"title": "a"}"#;
        let Keyed::Stored(first) = store
            .insert_image_once(&new_image("a"), "k1", body, now)
            .unwrap()
        else {
            panic!("first use stores");
        };
        let later = now + Duration::from_secs(3600);
        assert_eq!(
            store
                .insert_image_once(&new_image("a"), "k1", body, later)
                .unwrap(),
            Keyed::Replayed(first.clone())
        );
        assert_eq!(
            store
                .insert_image_once(&new_image("a"), "k1", br#"{"title":"a"}"#, later)
                .unwrap(),
            Keyed::Conflict,
            "bytes, not meaning, are compared"
        );
        assert_eq!(store.list_images().unwrap().len(), 4, "one row stored");
        let Keyed::Stored(other) = store
            .insert_image_once(&new_image("a"), "k2", body, later)
            .unwrap()
        else {
            panic!("another key stores");
        };
        assert_eq!(other.id, first.id + 1);
    }

    #[test]
    fn an_idempotency_key_is_forgotten_after_the_window() {
        let (dir, store) = open_temp();
        let now = SystemTime::now();
        store
            .insert_image_once(&new_image("a"), "k", b"1", now)
            .unwrap();
        let just_inside = now + IDEMPOTENCY_WINDOW - Duration::from_secs(1);
        assert!(matches!(
            store
                .insert_image_once(&new_image("a"), "k", b"1", just_inside)
                .unwrap(),
            Keyed::Replayed(_)
        ));
        let after = now + IDEMPOTENCY_WINDOW;
        assert!(matches!(
            store
                .insert_image_once(&new_image("b"), "k", b"2", after)
                .unwrap(),
            Keyed::Stored(_)
        ));
        // Pruned by a plain insert once its window closes too.
        store.insert_image(&new_image("c")).unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("g.db")).unwrap();
        let keys: i64 = conn
            .query_row("SELECT count(*) FROM idempotency_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(keys, 1, "the expired row was replaced, the new one kept");
        let old = unix_seconds(now) - IDEMPOTENCY_WINDOW.as_secs() as i64;
        conn.execute("UPDATE idempotency_keys SET created_at = ?1", [old])
            .unwrap();
        store.insert_image(&new_image("d")).unwrap();
        let keys: i64 = conn
            .query_row("SELECT count(*) FROM idempotency_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(keys, 0, "pruned");
    }

    #[test]
    fn a_key_whose_image_was_deleted_stores_afresh() {
        let (dir, store) = open_temp();
        let now = SystemTime::now();
        let Keyed::Stored(first) = store
            .insert_image_once(&new_image("a"), "k", b"1", now)
            .unwrap()
        else {
            panic!()
        };
        let conn = rusqlite::Connection::open(dir.path().join("g.db")).unwrap();
        conn.execute("DELETE FROM images WHERE id = ?1", [first.id])
            .unwrap();
        assert!(matches!(
            store
                .insert_image_once(&new_image("a"), "k", b"1", now)
                .unwrap(),
            Keyed::Stored(_)
        ));
    }

    #[test]
    fn a_version_1_database_is_migrated_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
        conn.execute_batch(
            "INSERT INTO images (title, alt_text, url) VALUES ('Old', '', '/o'); PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        let store = Store::open(&path, &StoreOptions::default()).unwrap();
        assert_eq!(store.list_images().unwrap().len(), 4);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, schema::MIGRATIONS.len() as i64);
        store
            .insert_image_once(&new_image("a"), "k", b"1", SystemTime::now())
            .unwrap();
    }

    #[test]
    fn health_does_not_wait_for_a_pooled_connection() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            busy_timeout: Duration::from_secs(5),
            pool_size: 1,
            ..StoreOptions::default()
        };
        let store = Sqlite::open(&dir.path().join("g.db"), &options).unwrap();
        let _held = store.connection().unwrap();
        let started = std::time::Instant::now();
        store.ping().unwrap();
        store.data_version().unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_dedicated_connection_never_creates_the_file_and_reopens_after_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let health = Dedicated::new(path.clone(), Duration::from_secs(1));
        assert!(health.ping().is_err(), "no file yet");
        assert!(!path.exists(), "the dedicated connection created a file");
        // Once the file exists, the next call opens it afresh.
        drop(Store::open(&path, &StoreOptions::default()).unwrap());
        health.ping().unwrap();
        let first = health.data_version().unwrap();
        assert_eq!(health.data_version().unwrap(), first);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(
            &path,
            "this is not a database, it is a text file of some length",
        )
        .unwrap();
        let err = Store::open(&path, &StoreOptions::default()).err().unwrap();
        assert!(matches!(err, StoreError::NotADatabase { .. }), "{err}");
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(
            dir.path().join("no/such/dir/g.db"),
            &StoreOptions::default(),
        )
        .err()
        .unwrap();
        assert!(matches!(err, StoreError::CannotOpen { .. }), "{err}");
        // One line, each thing said once, whichever way it is printed.
        let text = format!("{:#}", anyhow::Error::from(err));
        assert!(text.contains("no/such/dir does not exist"), "{text}");
        assert_eq!(text.matches("g.db").count(), 1, "{text}");
        assert!(!text.contains("unable to open"), "{text}");
    }

    #[test]
    fn an_unopenable_file_is_one_line_with_the_reason_once() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: SQLite cannot open it.
        let path = dir.path().join("g.db");
        std::fs::create_dir(&path).unwrap();
        let err = Store::open(&path, &StoreOptions::default()).err().unwrap();
        let text = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(text.matches("unable to open").count(), 1, "{text}");
        assert_eq!(text.matches("g.db").count(), 1, "{text}");
        assert!(text.contains("writable"), "{text}");
    }
}
