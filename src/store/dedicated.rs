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

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
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
    slot: Mutex<Slot>,
}

struct Slot {
    connection: Option<Connection>,
    epoch: u64,
}

impl FileVersion {
    /// The same reading, as one of the file's `generation`th opening.
    pub(super) fn of_generation(self, generation: u64) -> Self {
        Self { generation, ..self }
    }
}

impl Dedicated {
    pub(super) fn new(path: PathBuf, busy_timeout: Duration) -> Self {
        Self {
            path,
            busy_timeout,
            slot: Mutex::new(Slot {
                connection: None,
                epoch: 0,
            }),
        }
    }

    /// Runs `work` on the connection, opening it first if needed.
    fn with<T>(
        &self,
        work: impl FnOnce(&Connection, u64) -> rusqlite::Result<T>,
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
            slot.connection = Some(connection);
            slot.epoch += 1;
        }
        let epoch = slot.epoch;
        let connection = slot.connection.as_ref().expect("opened above");
        let result = work(connection, epoch);
        if let Err(error) = &result
            && !is_busy_code(error)
        {
            slot.connection = None;
        }
        result.map_err(classify)
    }

    /// `PRAGMA data_version`, read on this connection.
    pub(super) fn data_version(&self) -> Result<FileVersion, StoreError> {
        self.with(|connection, epoch| {
            let version = connection
                .prepare_cached("PRAGMA data_version")?
                .query_row([], |row| row.get(0))?;
            Ok(FileVersion {
                generation: 0,
                epoch,
                version,
            })
        })
    }

    /// A real round trip: reads the schema and the images table.
    pub(super) fn ping(&self) -> Result<(), StoreError> {
        self.with(|connection, _| {
            connection.query_row(
                "SELECT count(*) FROM (SELECT 1 FROM images LIMIT 1)",
                [],
                |_| Ok(()),
            )
        })
    }
}
