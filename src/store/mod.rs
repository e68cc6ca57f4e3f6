//! The database: one interface, [`Store`], over two implementations, and
//! the only SQL in the crate.
//!
//! - SQLite, one file shared by every worker (`sqlite.rs`; with
//!   `dedicated.rs`, its connections kept apart from the pool, and
//!   `identity.rs`, the check that the file at the path is still the one
//!   opened).
//! - PostgreSQL, one server (`postgres.rs`).
//!
//! Which one is the [`Location`] given to [`Store::open`], parsed from
//! `--database` / `DATABASE_URL` by `location.rs`. The rest of the crate
//! sees only [`Store`]: the same methods, the same [`Keyed`] outcomes, the
//! same [`StoreError`] kinds (so the API maps "busy" and "unavailable" to
//! 503 the same way for both), and a [`DataVersion`] that tells the list
//! cache whether anything committed since it last looked.
//!
//! Both keep the same versioned schema (`schema.rs`), seeded once however
//! many processes start together; commit writes in groups (`group.rs`,
//! [`Store::commit_group`]: one transaction for every write waiting, a
//! savepoint each); and store an `Idempotency-Key`'s image, key and exact
//! body in one transaction, serialised across processes, so a key stores
//! once on any worker.
//!
//! Errors keep their kind ([`StoreError`]) so the API can tell "busy, retry"
//! from "broken"; their text is for operators and logs, never for clients.

mod dedicated;
mod group;
pub mod identity;
mod location;
mod postgres;
mod schema;
mod sqlite;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::image::{Image, NewImage};
pub use group::{GroupWriter, Write};
pub use identity::FileTrouble;
pub use location::{
    Location, LocationError, PostgresUrl, SUPPORTED_FORMS, parse_database_location,
};

/// How long an `Idempotency-Key` is remembered (SPEC §13).
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// A slice of the table: rows with `id > after`, at most `limit`, in id order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub after: i64,
    pub limit: u32,
}

/// What a POST carrying an `Idempotency-Key` came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keyed {
    /// First use of the key (or first since it expired): stored now.
    Stored(Image),
    /// The key was used with the same body: the image stored then; nothing new.
    Replayed(Image),
    /// The key was used with another body: nothing stored.
    Conflict,
}

/// How long a statement waits for another process's lock before giving up.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong with the database, by kind.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{} is not an SQLite database (or is corrupt)", .path.display())]
    NotADatabase { path: PathBuf },
    /// One line: the path once and SQLite's reason in brief, not the
    /// error's chain (which repeats the path and the reason).
    #[error("cannot open database {}: {}", .path.display(), sqlite::cannot_open_reason(.path, .cause))]
    CannotOpen {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    /// The PostgreSQL server could not be reached or logged in to: one line
    /// naming where (`who`: the database and user, as ` (…)`, or empty;
    /// never the password) and the server's or the system's reason.
    #[error("cannot connect to PostgreSQL at {server}{who}: {reason}")]
    CannotConnect {
        server: String,
        who: String,
        reason: String,
    },
    #[error(
        "database schema version {found} is newer than this build understands ({supported}); upgrade gallery"
    )]
    TooNew { found: i64, supported: i64 },
    /// Waiting longer would not help now, retrying later may (a lock held
    /// too long, every pooled connection in use).
    #[error("database is busy: {0}")]
    Busy(String),
    #[error("{0}")]
    Unavailable(FileTrouble),
    /// The database server went away, is shutting down or refuses
    /// connections for now.
    #[error("the database server is unavailable: {0}")]
    Unreachable(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error: {}", postgres::describe(.0))]
    Postgres(#[from] ::postgres::Error),
    /// Another error, as text (one error shared by a group of writes).
    #[error("{0}")]
    Failed(String),
}

impl StoreError {
    /// The same error for another waiter: the kind kept where it decides
    /// the answer (busy, unavailable), else its text.
    pub fn for_another(&self) -> StoreError {
        match self {
            StoreError::Busy(text) => StoreError::Busy(text.clone()),
            StoreError::Unavailable(trouble) => StoreError::Unavailable(*trouble),
            StoreError::Unreachable(text) => StoreError::Unreachable(text.clone()),
            StoreError::CannotConnect {
                server,
                who,
                reason,
            } => StoreError::CannotConnect {
                server: server.clone(),
                who: who.clone(),
                reason: reason.clone(),
            },
            other => StoreError::Failed(other.to_string()),
        }
    }

    /// True when retrying later may succeed (lock contention, pool
    /// exhausted, the database file gone or unusable for now, the database
    /// server down or refusing connections).
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            StoreError::Busy(_)
                | StoreError::Unavailable(_)
                | StoreError::Unreachable(_)
                | StoreError::CannotConnect { .. }
        )
    }

    /// True when the database cannot be reached or used at all for now
    /// (rather than being busy with other work).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_)
                | StoreError::Unreachable(_)
                | StoreError::CannotConnect { .. }
        )
    }
}

/// When a commit is durable: SQLite's `PRAGMA synchronous`, PostgreSQL's
/// `synchronous_commit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Synchronous {
    /// Every commit is fsynced before it is acknowledged: it survives a
    /// power loss (as Postgres's `synchronous_commit=on`).
    #[default]
    Full,
    /// Commits survive a crash of any process but not a power loss; faster.
    Normal,
}

/// Tuning for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long to wait for a lock (and, on PostgreSQL, a connection).
    pub busy_timeout: Duration,
    pub pool_size: u32,
    pub synchronous: Synchronous,
    /// How the connections name themselves to a PostgreSQL server
    /// (`pg_stat_activity.application_name`).
    pub application_name: String,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            pool_size: 8,
            synchronous: Synchronous::default(),
            application_name: "gallery".into(),
        }
    }
}

/// The database, whichever kind: a cheap handle to share (clones share
/// the connections).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// When the database last changed, as far as this process can tell; read
/// by [`Store::data_version`]. A later reading is never older than an
/// earlier one, and a reading taken after a commit was acknowledged (by
/// any process) is newer than every reading taken before that commit.
///
/// Only a partial order: readings of different openings or servers do not
/// compare, and `a >= b` is false for them (so a cache rebuilds).
#[derive(Debug, Clone, PartialEq)]
pub struct DataVersion(Version);

#[derive(Debug, Clone, PartialEq)]
enum Version {
    File(dedicated::FileVersion),
    Server(postgres::ServerVersion),
}

impl PartialOrd for DataVersion {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        match (&self.0, &other.0) {
            (Version::File(a), Version::File(b)) => a.partial_cmp(b),
            (Version::Server(a), Version::Server(b)) => a.partial_cmp(b),
            _ => None,
        }
    }
}

impl Store {
    /// Opens the database at `location`, creating (an SQLite file),
    /// migrating and seeding it as needed. A PostgreSQL server that cannot
    /// be reached or logged in to is [`StoreError::CannotConnect`].
    pub fn open(location: impl Into<Location>, options: &StoreOptions) -> Result<Self, StoreError> {
        let backend = match location.into() {
            Location::Sqlite(path) => Backend::Sqlite(sqlite::Sqlite::open(&path, options)?),
            Location::Postgres(url) => Backend::Postgres(postgres::Postgres::open(&url, options)?),
        };
        Ok(Store { backend })
    }

    /// Creates (an SQLite file), migrates and seeds the database at
    /// `location` as [`Store::open`] does, then closes it: nothing is left
    /// open, even in the background, so an SQLite file nobody else has open
    /// is checkpointed and left without `-wal` and `-shm`.
    pub fn prepare(
        location: impl Into<Location>,
        options: &StoreOptions,
    ) -> Result<(), StoreError> {
        match location.into() {
            Location::Sqlite(path) => sqlite::Sqlite::prepare(&path, options),
            Location::Postgres(url) => postgres::Postgres::prepare(&url, options),
        }
    }

    /// A store on a database that must already exist (a worker under the
    /// supervisor, which created it): it never creates, migrates or seeds
    /// one. While the database cannot be used (no usable file at the path;
    /// the server down or refusing connections) every operation fails with
    /// an error that [`StoreError::is_unavailable`]; it is (re)opened once
    /// it is back.
    pub fn open_existing(location: impl Into<Location>, options: &StoreOptions) -> Store {
        let backend = match location.into() {
            Location::Sqlite(path) => {
                Backend::Sqlite(sqlite::Sqlite::open_existing(&path, options))
            }
            Location::Postgres(url) => {
                Backend::Postgres(postgres::Postgres::open_existing(&url, options))
            }
        };
        Store { backend }
    }

    /// Every image in insertion order.
    pub fn list_images(&self) -> Result<Vec<Image>, StoreError> {
        let mut images = Vec::new();
        self.for_each_image(None, |image| images.push(image.clone()))?;
        Ok(images)
    }

    /// Hands each image to `each`, in id order: every one, or one [`Page`].
    /// All come from one read snapshot.
    pub fn for_each_image(
        &self,
        page: Option<Page>,
        each: impl FnMut(&Image),
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => store.for_each_image(page, each),
            Backend::Postgres(store) => store.for_each_image(page, each),
        }
    }

    /// The database's change counter now; see [`DataVersion`]. Blocking:
    /// from async code use [`Store::data_version_async`].
    pub fn data_version(&self) -> Result<DataVersion, StoreError> {
        Ok(DataVersion(match &self.backend {
            Backend::Sqlite(store) => Version::File(store.data_version()?),
            Backend::Postgres(store) => Version::Server(store.data_version()?),
        }))
    }

    /// [`Store::data_version`] from async code: read inline on SQLite (an
    /// O(1) look at the WAL index on a dedicated connection, cheaper than a
    /// hop to the blocking pool), on the blocking pool on PostgreSQL (a
    /// round trip to the server).
    pub async fn data_version_async(&self) -> Result<DataVersion, StoreError> {
        if let Some(version) = self.data_version_inline() {
            return version;
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.data_version())
            .await
            .map_err(|e| StoreError::Failed(e.to_string()))?
    }

    /// [`Store::data_version`] where it is cheap enough to read on an async
    /// thread (SQLite: a look at the WAL index); `None` where it is a round
    /// trip (PostgreSQL).
    pub fn data_version_inline(&self) -> Option<Result<DataVersion, StoreError>> {
        match &self.backend {
            Backend::Sqlite(_) => Some(self.data_version()),
            Backend::Postgres(_) => None,
        }
    }

    /// Stores one image (a group of one; see [`Store::commit_group`]).
    pub fn insert_image(&self, image: &NewImage) -> Result<Image, StoreError> {
        match self.commit_one(Write::Plain(image.clone()), SystemTime::now())? {
            Keyed::Stored(image) | Keyed::Replayed(image) => Ok(image),
            Keyed::Conflict => unreachable!("a plain insert has no key"),
        }
    }

    /// Stores one image unless `key` was used in the last
    /// [`IDEMPOTENCY_WINDOW`] (as of `now`): then, if `body` is byte for byte
    /// the body that came with it, answers the image stored then, and
    /// otherwise [`Keyed::Conflict`]. The image and its key are committed
    /// together, in one transaction.
    pub fn insert_image_once(
        &self,
        image: &NewImage,
        key: &str,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Keyed, StoreError> {
        let write = Write::Keyed {
            image: image.clone(),
            key: key.to_string(),
            body: body.to_vec(),
        };
        self.commit_one(write, now)
    }

    fn commit_one(&self, write: Write, now: SystemTime) -> Result<Keyed, StoreError> {
        self.commit_group(std::slice::from_ref(&write), now)?
            .pop()
            .expect("one result per write")
    }

    /// Commits `writes` together: one transaction and one commit (one
    /// fsync) for all of them. Each write runs in its own savepoint, so one
    /// that fails is undone alone and gets its own error; a failed commit
    /// fails them all (nothing of theirs is stored). Expired keys are
    /// pruned once per group.
    pub fn commit_group(
        &self,
        writes: &[Write],
        now: SystemTime,
    ) -> Result<Vec<Result<Keyed, StoreError>>, StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => store.commit_group(writes, now),
            Backend::Postgres(store) => store.commit_group(writes, now),
        }
    }

    /// A real round trip to the database, on a connection of its own (so it
    /// never queues behind list requests).
    pub fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => store.ping(),
            Backend::Postgres(store) => store.ping(),
        }
    }
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
}
