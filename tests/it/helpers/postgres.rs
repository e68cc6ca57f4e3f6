//! A throwaway PostgreSQL for the tests: one cluster per test process,
//! `initdb`'d in a temp directory and started on a free port the first time
//! a test asks for a database, and a fresh database per test.
//!
//! The cluster is real and private: nothing shared with other runs, no
//! mock. When the tests run as root it runs as `nobody` (PostgreSQL refuses
//! root). It is stopped when the test process ends, whichever way it ends:
//! a small `sh` keeper started with it waits on a pipe whose write end only
//! this process holds, and when that pipe closes (the process exited) the
//! keeper stops the server with a fast shutdown and removes its directory.
//!
//! TCP clients (the workers) authenticate with a password
//! (`scram-sha-256`) as the superuser [`USER`]; the tests' own `psql` uses
//! the unix socket, which trusts local users.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The cluster's superuser, the role the workers connect as.
pub const USER: &str = "gallery";
/// Its password (a throwaway cluster on loopback).
pub const PASSWORD: &str = "s3cret-pw";

/// The running cluster.
pub struct Cluster {
    pub port: u16,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    /// Held only to keep the keeper's stdin open for the process's life.
    _keeper: Child,
}

/// The cluster of this test process, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}

/// A fresh, empty database on the cluster (dropped when this is dropped).
pub fn database() -> Database {
    cluster().database()
}

/// Where the PostgreSQL server programs are: `PG_BIN` if set, else the
/// newest `/usr/lib/postgresql/N/bin` (Debian), else wherever `initdb` is
/// on PATH.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let initdb = which_initdb().expect(
        "PostgreSQL's server programs are needed (initdb, postgres): \
         apt-get install postgresql, or set PG_BIN",
    );
    initdb.parent().unwrap().to_path_buf()
}

fn which_initdb() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("initdb"))
            .find(|candidate| candidate.exists())
    })
}

/// Runs `program` as `nobody` when the tests run as root.
fn as_server_user(program: &Path) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn give_to_server_user(path: &Path) {
    if nix::unistd::geteuid().is_root() {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        nix::unistd::chown(path, Some(nobody.uid), Some(nobody.gid)).unwrap();
    }
}

impl Cluster {
    fn start() -> Cluster {
        let bin_dir = bin_dir();
        let top = tempfile::Builder::new()
            .prefix("gallery-pg-")
            .tempdir()
            .unwrap()
            .keep();
        std::fs::set_permissions(&top, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let data = top.join("data");
        let socket_dir = top.join("socket");
        for dir in [&data, &socket_dir] {
            std::fs::create_dir(dir).unwrap();
            give_to_server_user(dir);
        }
        let password_file = top.join("password");
        std::fs::write(&password_file, PASSWORD).unwrap();
        give_to_server_user(&password_file);

        let initdb = as_server_user(&bin_dir.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", password_file.display()))
            .output()
            .expect("initdb runs");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );

        let port = super::free_port();
        let mut server = as_server_user(&bin_dir.join("postgres"));
        server
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&socket_dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=500"])
            // A throwaway cluster: durability is not what these tests measure.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"]);
        let server_line = shell_words(&server);
        // The keeper: starts the server, waits for its stdin to close (this
        // process ended), then stops it fast and removes the directory.
        let script = format!(
            "{server_line} >'{log}' 2>&1 &\n\
             pid=$!\n\
             cat >/dev/null\n\
             kill -INT $pid 2>/dev/null\n\
             wait $pid\n\
             rm -rf '{top}'\n",
            log = top.join("server.log").display(),
            top = top.display(),
        );
        let keeper = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh starts");
        let cluster = Cluster {
            port,
            socket_dir,
            bin_dir,
            _keeper: keeper,
        };
        super::wait_until(Duration::from_secs(60), "PostgreSQL to accept", || {
            cluster
                .psql("postgres")
                .arg("-c")
                .arg("SELECT 1")
                .output()
                .is_ok_and(|out| out.status.success())
        });
        cluster
    }

    /// `psql` on the unix socket as the superuser, quiet and unaligned.
    pub fn psql(&self, database: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join("psql"));
        command
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", USER, "-d", database])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
        command
    }

    /// Runs `sql` in `database` and returns what it printed (trimmed);
    /// panics with psql's message on failure.
    pub fn query(&self, database: &str, sql: &str) -> String {
        run_sql(self.psql(database), sql).trim().to_string()
    }

    /// A URL for `database` on this cluster as `user` with `password`.
    pub fn url_for(&self, database: &str, user: &str, password: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{port}/{database}",
            port = self.port
        )
    }

    /// Creates a fresh, empty database.
    pub fn database(&'static self) -> Database {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.query("postgres", &format!("CREATE DATABASE {name}"));
        Database {
            url: self.url_for(&name, USER, PASSWORD),
            name,
            cluster: self,
        }
    }
}

/// Runs `sql` with `psql` (a [`Cluster::psql`] command, with any output
/// options added) and returns what it printed, as printed; panics with
/// psql's message on failure.
pub fn run_sql(mut psql: Command, sql: &str) -> String {
    let out = psql.arg("-c").arg(sql).output().expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("psql prints UTF-8")
}

/// One test's database; dropped (connections and all) with this.
pub struct Database {
    /// `postgres://gallery:PASSWORD@127.0.0.1:PORT/NAME`.
    pub url: String,
    pub name: String,
    cluster: &'static Cluster,
}

impl Database {
    /// Runs `sql` in this database; what psql printed, trimmed.
    pub fn query(&self, sql: &str) -> String {
        self.cluster.query(&self.name, sql)
    }

    /// The cluster it lives on.
    pub fn cluster(&self) -> &'static Cluster {
        self.cluster
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // Not query(): a failed drop must not panic inside a panic.
        let _ = self
            .cluster
            .psql("postgres")
            .arg("-c")
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

/// `command` as one line for `sh`, each word single-quoted.
fn shell_words(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| format!("'{}'", word.to_string_lossy().replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_quote_each_word() {
        let mut command = Command::new("echo");
        command.args(["a b", "it's"]);
        assert_eq!(shell_words(&command), r"'echo' 'a b' 'it'\''s'");
    }
}
