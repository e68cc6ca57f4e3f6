//! Is the file at the database path still the one this process opened?
//!
//! SQLite keeps working through its open descriptors whatever happens to the
//! path: a deleted file lives on, unlinked, until the last connection closes;
//! a file moved aside or replaced keeps taking writes that nobody will ever
//! read; a file made read-only keeps its old descriptors writable. So before
//! every operation the store compares the path with the file it opened
//! (device and inode), checks that it may still read and write there, and
//! that the file still starts like an SQLite database. Anything else is a
//! [`FileTrouble`]: the store answers "unavailable" rather than acknowledge a
//! write that would be lost, and reopens once a usable file is back.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A file, by device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    /// The identity of the file these are the metadata of.
    pub fn of(metadata: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            device: metadata.dev(),
            inode: metadata.ino(),
        }
    }
}

/// Why the file at the database path cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FileTrouble {
    #[error("the database file was removed")]
    Missing,
    #[error("the database file was replaced by another file")]
    Replaced,
    #[error("the database file is read-only")]
    ReadOnly,
    #[error("the database file cannot be read")]
    Unreadable,
    #[error("the file at the database path is not an SQLite database")]
    NotADatabase,
}

/// What every SQLite database file starts with.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// The identity of the file at `path` if it is usable: present, readable,
/// writable (a file without any write bit counts as read-only even for
/// root, who could write it anyway) and an SQLite database.
pub fn usable(path: &Path) -> Result<FileIdentity, FileTrouble> {
    let metadata = std::fs::metadata(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => FileTrouble::Missing,
        _ => FileTrouble::Unreadable,
    })?;
    if metadata.mode() & 0o222 == 0 {
        return Err(FileTrouble::ReadOnly);
    }
    use nix::unistd::{AccessFlags, access};
    if access(path, AccessFlags::W_OK).is_err() {
        return Err(FileTrouble::ReadOnly);
    }
    let identity = FileIdentity::of(&metadata);
    let mut header = [0; 16];
    read_header(path, identity, &mut header).map_err(|error| match error.kind() {
        std::io::ErrorKind::UnexpectedEof => FileTrouble::NotADatabase,
        _ => FileTrouble::Unreadable,
    })?;
    if &header != MAGIC {
        return Err(FileTrouble::NotADatabase);
    }
    Ok(identity)
}

/// Descriptors kept open for reading headers, by file. Never closed: on
/// Unix, closing *any* descriptor of a file drops every POSIX lock this
/// process holds on it, including the SHARED lock by which SQLite's open
/// connections tell other processes they are there. Without that lock, the
/// next process to close its last connection (a `sqlite3` shell, a backup
/// script, the supervisor) thinks it is the last one, checkpoints and
/// deletes `-wal` and `-shm` under the running workers. One descriptor per
/// file ever seen at the path, a handful in a process's life; beyond
/// [`MAX_HEADER_FILES`] a header is read with a fresh descriptor kept too.
static HEADER_FILES: std::sync::Mutex<Vec<(FileIdentity, std::fs::File)>> =
    std::sync::Mutex::new(Vec::new());

/// More files than this and the oldest descriptor is closed (its file has
/// long been replaced: no connection of ours is on it).
const MAX_HEADER_FILES: usize = 64;

fn read_header(path: &Path, identity: FileIdentity, header: &mut [u8; 16]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut files = HEADER_FILES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, file)) = files.iter().find(|(known, _)| *known == identity) {
        return file.read_exact_at(header, 0);
    }
    let file = std::fs::File::open(path)?;
    let opened = file.metadata()?;
    let result = file.read_exact_at(header, 0);
    // Kept under the identity it really has (a newer file may have taken
    // the path in between): it is never closed either.
    if files.len() >= MAX_HEADER_FILES {
        files.remove(0);
    }
    let real = FileIdentity::of(&opened);
    files.push((real, file));
    result
}

/// Checks that the file at `path` is still `opened`, and usable.
pub fn check(path: &Path, opened: FileIdentity) -> Result<(), FileTrouble> {
    if usable(path)? == opened {
        Ok(())
    } else {
        Err(FileTrouble::Replaced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn database(path: &Path) {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
    }

    #[test]
    fn the_same_file_passes_and_every_change_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        database(&path);
        let opened = usable(&path).unwrap();
        assert_eq!(check(&path, opened), Ok(()));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        assert_eq!(check(&path, opened), Err(FileTrouble::ReadOnly));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();

        let aside = dir.path().join("aside");
        std::fs::rename(&path, &aside).unwrap();
        assert_eq!(check(&path, opened), Err(FileTrouble::Missing));

        std::fs::write(&path, b"not a database at all, just some text").unwrap();
        assert_eq!(check(&path, opened), Err(FileTrouble::NotADatabase));

        let other = dir.path().join("other.db");
        database(&other);
        std::fs::rename(&other, &path).unwrap();
        assert_eq!(check(&path, opened), Err(FileTrouble::Replaced));
        let reopened = usable(&path).unwrap();
        assert_eq!(check(&path, reopened), Ok(()));

        std::fs::rename(&aside, &path).unwrap();
        assert_eq!(check(&path, opened), Ok(()), "the first file is back");
    }
}
