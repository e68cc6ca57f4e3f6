//! A single connection kept apart from the pool, for work that must never
//! queue behind requests: `/health`'s round trip, and the
//! `PRAGMA data_version` check that tells the list cache whether the file
//! changed.
//!
//! Each is one connection behind a mutex, held only for one short statement.
//! It opens lazily and never creates the file (a missing file is an error,
//! not a fresh empty database); after any error other than "busy" it is
//! closed and reopened by the next call, so a transient fault does not stick.
//! Every (re)opening starts a new *epoch*, which [`FileVersion`] carries,
//! because `data_version` is only comparable on one connection.
//!
//! `data_version` has a fast path that takes no lock and runs no statement:
//! a peek at the WAL index header in the `-shm` file (see [`WalIndexPeek`]).
//! It is asked on every `GET /images.json`, and the statement's cost (the
//! connection's mutex, two `fcntl` locks and an `fstat`) was a fifth of a
//! worker's time on the cached list.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::sqlite::{classify, configure, is_busy_code};
use super::{StoreError, Synchronous};

/// When the database last changed, as one connection sees it: equal values
/// mean no other connection (in any process) committed in between, and a
/// later reading is never smaller than an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct FileVersion {
    /// Which opening of the database file (see `Store`) it belongs to.
    generation: u64,
    /// Which opening of the dedicated connection read `version`.
    epoch: u64,
    /// `PRAGMA data_version` on that connection: it grows whenever another
    /// connection commits, and is meaningless on any other connection.
    version: i64,
}

pub(super) struct Dedicated {
    path: PathBuf,
    busy_timeout: Duration,
    /// Whether `data_version` may take the fast path (the connection that
    /// serves it; `/health`'s has no use for it).
    peeks: bool,
    slot: Mutex<Slot>,
    /// The last `data_version` read, with the WAL index header seen just
    /// before it; `None` until the first read and after any error.
    peek: std::sync::RwLock<Option<WalIndexPeek>>,
    /// How many `data_version` calls ran the statement (for tests).
    statements: std::sync::atomic::AtomicU64,
}

struct Slot {
    connection: Option<Connection>,
    epoch: u64,
    /// The `-shm` file of the open connection's database, opened after it
    /// (see [`WalIndexPeek`]); `None` if it could not be opened.
    shm: Option<Arc<ShmFile>>,
    /// The last one opened, kept after an error: reopening finds the same
    /// file again and reuses it, so a repeated error leaks no descriptor.
    last_shm: Option<Arc<ShmFile>>,
}

/// The WAL index's header as one process sees it: SQLite keeps two copies of
/// its 48 bytes at the start of the `-shm` file and rewrites them on every
/// commit (the frame count, a change counter, the salts and checksums of
/// the log; <https://www.sqlite.org/walformat.html>). A header equal to an
/// earlier one means no transaction committed in between; a checkpoint
/// that resets the log changes the salts, so the bytes never come back.
///
/// So a version read just *after* seeing a header is still the current one
/// for as long as the header is unchanged: had anything committed between
/// the header and the version, the header would have moved on since. The
/// fast path of [`Dedicated::data_version`] reads the header (one `pread`,
/// no lock) and compares.
struct WalIndexPeek {
    shm: Arc<ShmFile>,
    header: [u8; WAL_INDEX_HEADER_BYTES],
    version: FileVersion,
}

const WAL_INDEX_HEADER_BYTES: usize = 48;

/// A read-only descriptor of a `-shm` file that is never closed.
///
/// Closing *any* descriptor of a file drops every POSIX lock this process
/// holds on it, and SQLite's connections hold theirs on the `-shm` for as
/// long as they read or write: closing this one would let another process
/// reset the WAL index under them. So it is left open when dropped (one
/// descriptor per reopening of the dedicated connection, which happens only
/// after an error). While the dedicated connection that it was opened after
/// stays open, SQLite keeps that same `-shm` file in place: it deletes or
/// truncates it only when no connection in any process has it open.
struct ShmFile {
    file: std::mem::ManuallyDrop<std::fs::File>,
    /// Device and inode.
    identity: (u64, u64),
}

impl ShmFile {
    /// The file beside `database`, opened read-only (never created), or
    /// `known` if that is the same file.
    fn open(database: &std::path::Path, known: Option<&Arc<ShmFile>>) -> Option<Arc<ShmFile>> {
        use std::os::unix::fs::MetadataExt;
        let mut path = database.as_os_str().to_owned();
        path.push("-shm");
        let metadata = std::fs::metadata(&path).ok()?;
        let identity = (metadata.dev(), metadata.ino());
        if let Some(known) = known.filter(|known| known.identity == identity) {
            return Some(known.clone());
        }
        let file = std::fs::File::open(path).ok()?;
        let opened = file.metadata().ok()?;
        Some(Arc::new(ShmFile {
            file: std::mem::ManuallyDrop::new(file),
            identity: (opened.dev(), opened.ino()),
        }))
    }

    /// The header, if both copies agree (a writer updating them meanwhile
    /// leaves them different, and SQLite's readers retry on that too) and
    /// the index is initialised.
    fn header(&self) -> Option<[u8; WAL_INDEX_HEADER_BYTES]> {
        use std::os::unix::fs::FileExt;
        let mut both = [0u8; 2 * WAL_INDEX_HEADER_BYTES];
        self.file.read_exact_at(&mut both, 0).ok()?;
        let (first, second) = both.split_at(WAL_INDEX_HEADER_BYTES);
        // Byte 12 is `isInit`.
        (first == second && first[12] != 0).then(|| first.try_into().expect("48 bytes"))
    }
}

impl FileVersion {
    /// The same reading, as one of the file's `generation`th opening.
    pub(super) fn of_generation(self, generation: u64) -> Self {
        Self { generation, ..self }
    }
}

impl Dedicated {
    /// A connection for `/health`.
    pub(super) fn new(path: PathBuf, busy_timeout: Duration) -> Self {
        Self::opening(path, busy_timeout, false)
    }

    /// A connection for `data_version`, with its fast path.
    pub(super) fn for_versions(path: PathBuf, busy_timeout: Duration) -> Self {
        Self::opening(path, busy_timeout, true)
    }

    fn opening(path: PathBuf, busy_timeout: Duration, peeks: bool) -> Self {
        Self {
            path,
            busy_timeout,
            peeks,
            slot: Mutex::new(Slot {
                connection: None,
                epoch: 0,
                shm: None,
                last_shm: None,
            }),
            peek: std::sync::RwLock::new(None),
            statements: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Runs `work` on the connection, opening it first if needed.
    fn with<T>(
        &self,
        work: impl FnOnce(&Connection, u64, Option<&Arc<ShmFile>>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        // A panic under the lock leaves nothing half-done in a connection
        // that the next statement could trip over.
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.connection.is_none() {
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI;
            let connection = Connection::open_with_flags(&self.path, flags).map_err(classify)?;
            // Only reads run here: durability settings do not matter.
            configure(&connection, self.busy_timeout, Synchronous::Normal).map_err(classify)?;
            if self.peeks {
                // A first read maps the WAL index (creating the `-shm` file
                // if need be), so the file opened next is the one SQLite uses.
                connection
                    .query_row("PRAGMA data_version", [], |_| Ok(()))
                    .map_err(classify)?;
                slot.shm = ShmFile::open(&self.path, slot.last_shm.as_ref());
                slot.last_shm = slot.shm.clone();
            }
            slot.connection = Some(connection);
            slot.epoch += 1;
        }
        let epoch = slot.epoch;
        let connection = slot.connection.as_ref().expect("opened above");
        let result = work(connection, epoch, slot.shm.as_ref());
        if let Err(error) = &result {
            *self.peek.write().unwrap_or_else(PoisonError::into_inner) = None;
            if !is_busy_code(error) {
                slot.connection = None;
                slot.shm = None;
            }
        }
        result.map_err(classify)
    }

    /// `PRAGMA data_version`, read on this connection, or the last reading
    /// when the WAL index header shows that nothing committed since.
    pub(super) fn data_version(&self) -> Result<FileVersion, StoreError> {
        if let Ok(peek) = self.peek.try_read()
            && let Some(peek) = peek.as_ref()
            && peek.shm.header() == Some(peek.header)
        {
            return Ok(peek.version);
        }
        self.statements
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.with(|connection, epoch, shm| {
            let header = shm.and_then(|shm| shm.header());
            let version = connection
                .prepare_cached("PRAGMA data_version")?
                .query_row([], |row| row.get(0))?;
            let version = FileVersion {
                generation: 0,
                epoch,
                version,
            };
            if let (Some(shm), Some(header)) = (shm, header) {
                *self.peek.write().unwrap_or_else(PoisonError::into_inner) = Some(WalIndexPeek {
                    shm: shm.clone(),
                    header,
                    version,
                });
            }
            Ok(version)
        })
    }

    /// How many `data_version` calls ran the statement rather than the fast
    /// path.
    #[cfg(test)]
    pub(super) fn statements(&self) -> u64 {
        self.statements.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A real round trip: reads the schema and the images table.
    pub(super) fn ping(&self) -> Result<(), StoreError> {
        self.with(|connection, _, _| {
            connection.query_row(
                "SELECT count(*) FROM (SELECT 1 FROM images LIMIT 1)",
                [],
                |_| Ok(()),
            )
        })
    }
}
