//! The SQLite file: opening it, its pragmas, its schema and the only SQL.
//!
//! Every connection — the one that migrates and every pooled one — gets the
//! same pragmas (`busy_timeout` first, then WAL and `synchronous=NORMAL`), so
//! several worker processes can share one file. Migrations are versioned on
//! `PRAGMA user_version` and run inside `BEGIN IMMEDIATE`, which makes the
//! first start of many processes on a fresh file create one schema and seed
//! once. Inserts run in `BEGIN IMMEDIATE` too, so a writer waits for the lock
//! up front instead of failing on upgrade.
//!
//! Errors keep their kind ([`StoreError`]) so the API can tell "busy, retry"
//! from "broken"; their text is for operators and logs, never for clients.

mod location;
mod schema;

use std::path::{Path, PathBuf};
use std::time::Duration;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, ErrorCode, TransactionBehavior};

use crate::image::{Image, NewImage};
pub use location::{LocationError, SUPPORTED_FORMS, parse_database_location};

/// How long a statement waits for another process's lock before giving up.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong with the database, by kind.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{} is not an SQLite database (or is corrupt)", .path.display())]
    NotADatabase { path: PathBuf },
    #[error(
        "cannot open database {}: {source} (does the directory exist and is it writable?)",
        .path.display()
    )]
    CannotOpen {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "database schema version {found} is newer than this build understands ({supported}); upgrade gallery"
    )]
    TooNew { found: i64, supported: i64 },
    #[error("database is busy: {0}")]
    Busy(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl StoreError {
    /// True when retrying later may succeed (lock contention, pool exhausted).
    pub fn is_busy(&self) -> bool {
        matches!(self, StoreError::Busy(_))
    }
}

fn is_busy_code(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Classifies a rusqlite error from normal operation.
fn classify(error: rusqlite::Error) -> StoreError {
    if is_busy_code(&error) {
        StoreError::Busy(error.to_string())
    } else {
        StoreError::Sqlite(error)
    }
}

/// Tuning for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub busy_timeout: Duration,
    pub pool_size: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            pool_size: 8,
        }
    }
}

/// A pool of configured connections to one SQLite file.
#[derive(Clone)]
pub struct Store {
    pool: r2d2::Pool<SqliteConnectionManager>,
}

/// Per-connection pragmas. WAL is a property of the file: it is switched on
/// only when not yet set, because the switch needs an exclusive lock.
fn configure(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy_timeout)?;
    let mode: String = conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database at `path`, migrates and seeds it.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let busy_timeout = options.busy_timeout;
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
                    source,
                }
            }
        };
        let open_and_migrate = || -> Result<(), StoreError> {
            let mut conn = Connection::open(path).map_err(opening_error)?;
            configure(&conn, busy_timeout).map_err(opening_error)?;
            schema::migrate(&mut conn).map_err(|e| match e {
                schema::MigrateError::TooNew { found, supported } => {
                    StoreError::TooNew { found, supported }
                }
                schema::MigrateError::Sqlite(e) => opening_error(e),
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
                result => break result?,
            }
        }

        let manager = SqliteConnectionManager::file(path)
            .with_init(move |conn| configure(conn, busy_timeout));
        let pool = r2d2::Pool::builder()
            .max_size(options.pool_size)
            .min_idle(Some(1))
            .connection_timeout(busy_timeout)
            .build_unchecked(manager);
        Ok(Self { pool })
    }

    fn connection(&self) -> Result<r2d2::PooledConnection<SqliteConnectionManager>, StoreError> {
        self.pool.get().map_err(|e| StoreError::Busy(e.to_string()))
    }

    /// Every image in insertion order.
    pub fn list_images(&self) -> Result<Vec<Image>, StoreError> {
        let conn = self.connection()?;
        let mut statement = conn
            .prepare_cached("SELECT id, title, alt_text, url FROM images ORDER BY id")
            .map_err(classify)?;
        let rows = statement
            .query_map([], |row| {
                Ok(Image {
                    id: row.get(0)?,
                    title: row.get(1)?,
                    alt_text: row.get(2)?,
                    url: row.get(3)?,
                })
            })
            .map_err(classify)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(classify)
    }

    /// Stores one image in its own `BEGIN IMMEDIATE` transaction.
    pub fn insert_image(&self, image: &NewImage) -> Result<Image, StoreError> {
        let mut conn = self.connection()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(classify)?;
        let id: i64 = tx
            .prepare_cached(
                "INSERT INTO images (title, alt_text, url) VALUES (?1, ?2, ?3) RETURNING id",
            )
            .and_then(|mut statement| {
                statement.query_row((image.title(), image.alt_text(), image.url()), |row| {
                    row.get(0)
                })
            })
            .map_err(classify)?;
        tx.commit().map_err(classify)?;
        Ok(Image {
            id,
            title: image.title().to_string(),
            alt_text: image.alt_text().to_string(),
            url: image.url().to_string(),
        })
    }

    /// A real round trip: reads the schema and the images table.
    pub fn ping(&self) -> Result<(), StoreError> {
        let conn = self.connection()?;
        conn.query_row(
            "SELECT count(*) FROM (SELECT 1 FROM images LIMIT 1)",
            [],
            |_| Ok(()),
        )
        .map_err(classify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn open_temp() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("g.db"), &StoreOptions::default()).unwrap();
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
        let again = Store::open(&dir.path().join("g.db"), &StoreOptions::default()).unwrap();
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
            &dir.path().join("no/such/dir/g.db"),
            &StoreOptions::default(),
        )
        .err()
        .unwrap();
        assert!(matches!(err, StoreError::CannotOpen { .. }), "{err}");
        assert!(err.to_string().contains("writable"));
    }
}
