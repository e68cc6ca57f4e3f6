//! The account the API and static servers run as (`--user`).
//!
//! A supervisor started as root keeps only what needs root (binding ports,
//! signalling, nginx's master, which drops its own workers): the servers run
//! as `--user` (default `nobody`). Before anything starts, the supervisor
//! checks from the permission bits that this account can run both server
//! programs, read the assets and reach the database, so a path it cannot
//! reach is one clear line at start rather than a crash loop. The database
//! file and its `-wal` and `-shm` are then made the account's, at start and
//! whenever a good file is put back at the path (restored from a backup by
//! root, say).
//!
//! The account need not be able to create files beside the database (a
//! checkout owned by root, say): the supervisor holds the database the way
//! an open SQLite connection does ([`super::database::Companions`]), so
//! SQLite's `-wal` and `-shm` exist, the account's, for as long as the
//! stack runs, and no worker ever has to create them.
//!
//! A supervisor not started as root changes nobody: its servers run as it
//! does, and a `--user` naming anyone else is refused.
//!
//! Everything here about the database is about an SQLite file: a
//! PostgreSQL database is reached over the network, and the supervisor
//! skips these checks, the hold and the hand-over for it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Uid, User};

/// The account used when the supervisor runs as root and `--user` is absent.
pub const DEFAULT_USER: &str = "nobody";

/// An unprivileged account the servers are started as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Which account the servers run as, from `--user` and who the supervisor
/// runs as: `None` means "as the supervisor itself".
pub fn resolve(requested: Option<&str>) -> anyhow::Result<Option<ServerUser>> {
    resolve_as(requested, Uid::effective())
}

fn resolve_as(requested: Option<&str>, me: Uid) -> anyhow::Result<Option<ServerUser>> {
    let name = match requested {
        Some(name) => name,
        None if me.is_root() => DEFAULT_USER,
        None => return Ok(None),
    };
    let user = User::from_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| anyhow::anyhow!("--user {name}: no such user on this machine"))?;
    if user.uid == me {
        return Ok(None);
    }
    anyhow::ensure!(
        me.is_root(),
        "--user {name} needs the supervisor to run as root (it runs as uid {me}); \
         leave --user out to run the servers as yourself"
    );
    Ok(Some(ServerUser {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    }))
}

/// What an account must be able to do with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Run it (a program).
    Execute,
    /// List and read it (a directory).
    Read,
    /// Enter it (a directory) to reach the files it holds.
    Enter,
}

impl Need {
    /// The permission bits (as `rwx` for "other") this need takes.
    fn bits(self, is_dir: bool) -> u32 {
        match (self, is_dir) {
            (Need::Execute, _) => 0o1,
            (Need::Read, true) => 0o5,
            (Need::Read, false) => 0o4,
            (Need::Enter, _) => 0o1,
        }
    }
}

/// Whether `user` may do `need` with `path`, from the permission bits of
/// the path and of every directory above it (the supervisor is root, so
/// `access(2)` cannot answer for another account). Supplementary groups are
/// not counted: the servers are started with the account's own group only.
pub fn check(user: &ServerUser, path: &Path, need: Need, what: &str) -> anyhow::Result<()> {
    let path = path
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("{what} {}: {e}", path.display()))?;
    let mut steps: Vec<(PathBuf, u32)> = path
        .ancestors()
        .skip(1)
        .map(|dir| (dir.to_path_buf(), 0o1))
        .collect();
    steps.reverse();
    let is_dir = path.is_dir();
    steps.push((path.clone(), need.bits(is_dir)));
    for (step, bits) in steps {
        let metadata = std::fs::metadata(&step)?;
        if !allowed(user, &metadata, bits) {
            let stuck = if step == path {
                match need {
                    Need::Execute => "cannot run".to_string(),
                    Need::Read => "cannot read".to_string(),
                    Need::Enter => "cannot enter".to_string(),
                }
            } else {
                format!("cannot enter {} on the way to", step.display())
            };
            anyhow::bail!(
                "--user {name} {stuck} {what} {path} ({owner}: owner uid {uid}, mode {mode:04o}): \
                 give {name} access (e.g. keep the database in a directory it owns: \
                 install -d -o {name} /var/lib/gallery and --database /var/lib/gallery/gallery.db), \
                 choose another --user, or keep the servers root with --user root",
                name = user.name,
                path = path.display(),
                owner = step.display(),
                uid = metadata.uid(),
                mode = metadata.mode() & 0o7777,
            );
        }
    }
    Ok(())
}

fn allowed(user: &ServerUser, metadata: &std::fs::Metadata, bits: u32) -> bool {
    let mode = metadata.mode();
    let granted = if metadata.uid() == user.uid {
        mode >> 6
    } else if metadata.gid() == user.gid {
        mode >> 3
    } else {
        mode
    };
    granted & bits == bits
}

/// The database file and its `-wal` and `-shm`.
fn database_files(database: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut path = database.as_os_str().to_owned();
        path.push(suffix);
        PathBuf::from(path)
    };
    [database.to_path_buf(), with("-wal"), with("-shm")]
}

/// Makes the database file and its `-wal` and `-shm` (those present) the
/// account's.
pub fn make_database_theirs(user: &ServerUser, database: &Path) -> std::io::Result<()> {
    for file in database_files(database) {
        match std::os::unix::fs::chown(&file, Some(user.uid), Some(user.gid)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

/// Whether every database file present belongs to `user`.
pub fn owns_database(user: &ServerUser, database: &Path) -> bool {
    database_files(database).iter().all(|file| {
        std::fs::metadata(file).map_or(true, |m| m.uid() == user.uid && m.gid() == user.gid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn someone() -> ServerUser {
        ServerUser {
            name: "someone".into(),
            uid: 4242,
            gid: 4242,
        }
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn not_root_runs_the_servers_as_itself_and_refuses_anyone_else() {
        let me = Uid::from_raw(1000);
        assert_eq!(resolve_as(None, me).unwrap(), None);
        let error = resolve_as(Some("root"), me).unwrap_err().to_string();
        assert!(
            error.contains("--user root needs the supervisor to run as root"),
            "{error}"
        );
        let error = resolve_as(Some("no-such-user-here"), me)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "--user no-such-user-here: no such user on this machine"
        );
    }

    #[test]
    fn root_defaults_to_nobody_and_may_keep_root() {
        let root = Uid::from_raw(0);
        let nobody = resolve_as(None, root).unwrap().expect("an account");
        assert_eq!(nobody.name, DEFAULT_USER);
        assert_ne!(nobody.uid, 0);
        assert_eq!(resolve_as(Some("root"), root).unwrap(), None);
    }

    #[test]
    fn permission_bits_decide_and_the_refusal_names_the_directory_in_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        chmod(dir.path(), 0o755);
        chmod(&data, 0o755);
        let user = someone();
        check(&user, &data, Need::Read, "the assets").unwrap();
        chmod(&data, 0o700);
        let error = check(&user, &data, Need::Enter, "the database's directory")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("--user someone cannot enter the database's directory"),
            "{error}"
        );
        chmod(&data, 0o711);
        check(&user, &data, Need::Enter, "the database's directory").unwrap();
        chmod(dir.path(), 0o700);
        let error = check(&user, &data, Need::Enter, "the database's directory")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!(
                "cannot enter {}",
                dir.path().canonicalize().unwrap().display()
            )),
            "{error}"
        );
        assert!(error.contains("mode 0700"), "{error}");
    }
}
