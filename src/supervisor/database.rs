//! The supervisor's dealings with the database, without ever opening it as
//! a database: it links no database code at all, which keeps its own
//! process small (issue 9: most of its memory is its own code's pages).
//!
//! - [`prepare`]: the database is created, migrated and seeded before any
//!   worker starts, by the API server's own code in a short-lived process
//!   (`api-server --prepare-database`), whose one error line becomes the
//!   supervisor's.
//! - [`Companions`]: with a server account, the supervisor holds the SQLite
//!   file the way an open connection does, so that its `-wal` and `-shm`
//!   stay (the account may not be able to create them) and stay the
//!   account's.

use std::path::Path;

use anyhow::Context;

use crate::cli::ApiServerArgs;
use crate::store::Location;
use crate::store::identity::FileIdentity;

/// Why the database could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The database's own trouble, in the API server's one line: a file
    /// that is not a database, a directory missing, a server unreachable.
    #[error("{0}")]
    Database(String),
    /// The API server program could not do its part at all.
    #[error("the API server ({program}) cannot prepare the database: {why}")]
    Program { program: String, why: String },
}

/// Creates, migrates and seeds the database at `location` (an SQLite file:
/// in WAL mode) by running `api_program --prepare-database` as the
/// supervisor's own account, with the database passed as to a worker (a
/// PostgreSQL URL in the environment, never in the argument list).
pub fn prepare(api_program: &Path, location: &Location) -> Result<(), PrepareError> {
    let args = ApiServerArgs::try_parse_defaults().expect("api-server's defaults parse");
    run_prepare(api_program, location, args)
}

/// Checkpoints the SQLite file at `path` once nobody else has it open (the
/// stack stopped, the hold let go): a last connection, which checkpoints
/// the WAL into the file and removes `-wal` and `-shm`. It waits at most
/// half a second for another process's lock: a stop is never held up.
pub fn checkpoint_at_exit(api_program: &Path, path: &Path) -> Result<(), PrepareError> {
    let mut args = ApiServerArgs::try_parse_defaults().expect("api-server's defaults parse");
    args.busy_timeout_ms = 500;
    run_prepare(api_program, &Location::Sqlite(path.to_path_buf()), args)
}

fn run_prepare(
    api_program: &Path,
    location: &Location,
    mut args: ApiServerArgs,
) -> Result<(), PrepareError> {
    args.database = match location {
        Location::Sqlite(path) => path.to_string_lossy().into_owned(),
        Location::Postgres(url) => url.with_password().to_string(),
    };
    args.name = "gallery-supervisor".into();
    args.prepare_database = true;
    let program_error = |why: String| PrepareError::Program {
        program: api_program.display().to_string(),
        why,
    };
    let output = std::process::Command::new(api_program)
        .args(args.to_args())
        .env_remove("DATABASE_URL")
        .envs(args.to_env())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| program_error(e.to_string()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().rev().find(|line| !line.trim().is_empty());
    // Exit 1 with an `error:` line is the database's trouble; anything else
    // (a usage error from an older api-server: exit 2, a crash) is the
    // program's.
    match last.and_then(|line| line.strip_prefix("error: ")) {
        Some(line) if output.status.code() == Some(1) => {
            // The child names where it got the database; the supervisor
            // names where it did, instead.
            let line = ["--database: ", "DATABASE_URL (from the environment): "]
                .iter()
                .find_map(|origin| line.strip_prefix(origin))
                .unwrap_or(line);
            Err(PrepareError::Database(line.into()))
        }
        _ => Err(program_error(format!(
            "{} ({})",
            last.unwrap_or("no output").trim(),
            output.status
        ))),
    }
}

/// Where SQLite's unix VFS takes its locks on a database file (its file
/// format's "lock-byte page", at 1 GiB whatever the file's size): every
/// open connection in WAL mode holds a read lock on the SHARED range, and a
/// connection that closes checkpoints and deletes `-wal` and `-shm` only if
/// it can write-lock that range, that is, only if it is the last one.
const PENDING_BYTE: i64 = 0x4000_0000;
const SHARED_FIRST: i64 = PENDING_BYTE + 2;
const SHARED_SIZE: i64 = 510;

/// The supervisor's hold on the database file at the path: a read lock on
/// SQLite's SHARED range, exactly what an open connection holds, so that no
/// closing connection ever thinks it is the last and deletes `-wal` and
/// `-shm` (the servers' account may be unable to create them again in the
/// database's directory). It is an open-file-description lock, which
/// conflicts with SQLite's POSIX locks but, unlike them, is not dropped when
/// the supervisor closes some other descriptor of the file (its header
/// checks). Re-held on whichever usable file is at the path.
#[derive(Default)]
pub struct Companions {
    held: Option<(FileIdentity, std::fs::File)>,
}

impl Companions {
    /// Holds `identity`, the usable file now at `path`, unless already
    /// held: lets go of the file held before, prepares this one (`prepare`:
    /// WAL mode, which a file restored from a copy may lack and which needs
    /// the directory once; the newest schema), then locks it and creates an
    /// empty `-wal` and `-shm` where missing (what SQLite itself does when
    /// it opens a database in WAL mode). A failure (a busy database, a file
    /// replaced meanwhile) is retried on the next call.
    pub fn hold(
        &mut self,
        path: &Path,
        identity: FileIdentity,
        prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if self
            .held
            .as_ref()
            .is_some_and(|(held, _)| *held == identity)
        {
            return Ok(());
        }
        // Switching to WAL needs a lock this hold would conflict with.
        self.held = None;
        prepare(path)?;
        self.held = Some((identity, lock_with_companions(path, identity)?));
        Ok(())
    }

    /// Holds the usable file `identity` at `path` and makes it and its
    /// companions `user`'s; returns whether any of them changed hands.
    pub fn prepare(
        &mut self,
        user: &super::account::ServerUser,
        path: &Path,
        identity: FileIdentity,
        prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<bool> {
        use super::account::{make_database_theirs, owns_database};
        self.hold(path, identity, prepare)?;
        if owns_database(user, path) {
            return Ok(false);
        }
        make_database_theirs(user, path)?;
        Ok(true)
    }
}

/// Opens the file at `path`, checks it is still `identity`, takes SQLite's
/// shared lock on it and creates its missing companions with the file's
/// permission bits.
fn lock_with_companions(path: &Path, identity: FileIdentity) -> anyhow::Result<std::fs::File> {
    use nix::fcntl::{FcntlArg, fcntl};
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::File::open(path)?;
    let metadata = file.metadata()?;
    anyhow::ensure!(
        FileIdentity::of(&metadata) == identity,
        "it was replaced meanwhile"
    );
    let shared = nix::libc::flock {
        l_type: nix::libc::F_RDLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: SHARED_FIRST,
        l_len: SHARED_SIZE,
        l_pid: 0,
    };
    fcntl(&file, FcntlArg::F_OFD_SETLK(&shared))
        .context("cannot take a shared lock on it (another process has it locked exclusively)")?;
    // As SQLite makes them: the database file's exact mode (whatever the
    // umask) and, for root, its owner.
    let mode = metadata.permissions().mode() & 0o777;
    for suffix in ["-wal", "-shm"] {
        let mut companion = path.as_os_str().to_owned();
        companion.push(suffix);
        let created = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&companion)
        {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            other => other,
        };
        let named = || format!("cannot create {}", Path::new(&companion).display());
        let created = created.with_context(named)?;
        created
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(named)?;
        if nix::unistd::Uid::effective().is_root() {
            use std::os::unix::fs::MetadataExt;
            std::os::unix::fs::fchown(&created, Some(metadata.uid()), Some(metadata.gid()))
                .with_context(named)?;
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn companions_of(db: &Path) -> [bool; 2] {
        ["-wal", "-shm"].map(|suffix| Path::new(&format!("{}{suffix}", db.display())).exists())
    }

    /// A file SQLite has created and closed: WAL mode, no companions left.
    fn closed_wal_database(db: &Path) {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute("CREATE TABLE t (x)", []).unwrap();
        drop(conn);
        assert_eq!(
            companions_of(db),
            [false, false],
            "SQLite cleans up on close"
        );
    }

    #[test]
    fn a_held_database_keeps_its_companions_when_the_last_connection_closes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("g.db");
        closed_wal_database(&db);
        use std::os::unix::fs::PermissionsExt;
        // A group-writable database gets group-writable companions, as
        // SQLite makes them, whatever the umask (at least 022 here).
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o660)).unwrap();
        let identity = crate::store::identity::usable(&db).unwrap();
        let mut companions = Companions::default();
        let mut prepared = 0;
        companions
            .hold(&db, identity, |_| {
                prepared += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(companions_of(&db), [true, true], "created empty");
        for suffix in ["-wal", "-shm"] {
            let mode = std::fs::metadata(format!("{}{suffix}", db.display()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o660, "{suffix}");
        }
        for n in 0..3 {
            // A connection writes and closes, the only one: it would delete
            // both if it could tell nobody else holds the file.
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute("INSERT INTO t VALUES (?1)", [n]).unwrap();
            drop(conn);
            assert_eq!(companions_of(&db), [true, true], "close {n}");
            // The supervisor's header checks close descriptors of the file.
            let _ = crate::store::identity::usable(&db);
            drop(std::fs::File::open(&db).unwrap());
        }
        companions
            .hold(&db, identity, |_| unreachable!("held"))
            .unwrap();
        assert_eq!(prepared, 1);
        let conn = rusqlite::Connection::open(&db).unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 3, "every write is there");
        drop(conn);

        // Let go: the next last connection cleans up, as SQLite does.
        drop(companions);
        drop(rusqlite::Connection::open(&db).unwrap().query_row(
            "SELECT count(*) FROM t",
            [],
            |r| r.get::<_, i64>(0),
        ));
        assert_eq!(companions_of(&db), [false, false]);
    }

    #[test]
    fn a_file_replaced_before_the_lock_is_not_held_and_a_failed_prepare_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("g.db");
        closed_wal_database(&db);
        let identity = crate::store::identity::usable(&db).unwrap();
        let mut companions = Companions::default();
        let error = companions
            .hold(&db, identity, |_| anyhow::bail!("busy"))
            .unwrap_err();
        assert_eq!(error.to_string(), "busy");
        assert!(companions.held.is_none());
        // Another file takes the path between the check and the lock.
        let other = dir.path().join("other.db");
        closed_wal_database(&other);
        std::fs::rename(&other, &db).unwrap();
        let error = companions.hold(&db, identity, |_| Ok(())).unwrap_err();
        assert_eq!(error.to_string(), "it was replaced meanwhile");
        let now = crate::store::identity::usable(&db).unwrap();
        companions.hold(&db, now, |_| Ok(())).unwrap();
        assert_eq!(companions_of(&db), [true, true]);
    }
}
