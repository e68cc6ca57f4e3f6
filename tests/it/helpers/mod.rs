//! Shared fixtures for the black-box tests: temp directories, spawning the
//! real binaries on port 0 (the port is read back from their log, so tests
//! never race for ports), capturing their output, waiting on conditions with
//! a deadline, and killing and reaping every process on `Drop`.

#![allow(dead_code)]

pub mod database;
pub mod http;
pub mod load;
pub mod postgres;
pub mod supervisor;
pub mod webdriver;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use self::http::{ORIGINAL_POST, Seen, client, get_json, post_form, raw_request, read_request};

/// Path of one of the package's binaries, built by cargo for the tests.
pub fn bin(name: &str) -> PathBuf {
    match name {
        "api-server" => PathBuf::from(env!("CARGO_BIN_EXE_api-server")),
        "static-server" => PathBuf::from(env!("CARGO_BIN_EXE_static-server")),
        "gallery-supervisor" => PathBuf::from(env!("CARGO_BIN_EXE_gallery-supervisor")),
        other => panic!("unknown binary {other}"),
    }
}

/// The repository's `assets/` directory.
pub fn assets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets")
}

/// Held by every heavy test (sustained load, chaos, long waits) for its
/// whole run, so that no two of them share a small machine's cores and
/// skew each other's timings. A test that panicked while holding it leaves
/// nothing behind to protect, so a poisoned lock is simply taken over.
pub fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Polls `condition` until it holds or `timeout` passes; panics with `what`.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Like [`wait_until`] but yields the first `Some`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Lines a child printed, shared with the threads that read them.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<Vec<String>>>);

impl Output {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }
    pub fn contains(&self, needle: &str) -> bool {
        self.lines().iter().any(|line| line.contains(needle))
    }
    fn capture(&self, stream: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<()> {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    }
}

/// A running child process, killed and reaped on drop; its output is
/// printed with a prefix when the test fails.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub output: Output,
    readers: Vec<std::thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
    /// Send SIGTERM and wait before the SIGKILL on drop (for process
    /// managers such as foreman, whose children outlive a SIGKILL).
    pub terminate_on_drop: bool,
}

impl Proc {
    pub fn spawn(name: &str, mut command: Command) -> Proc {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let output = Output::default();
        let readers = vec![
            output.capture(child.stdout.take().unwrap()),
            output.capture(child.stderr.take().unwrap()),
        ];
        Proc {
            name: name.to_string(),
            child,
            output,
            readers,
            status: None,
            terminate_on_drop: false,
        }
    }

    /// Like [`Proc::spawn`] but with stdout and stderr going into pipes
    /// that nobody reads: once they fill, every write the child makes to
    /// them would block (a stalled `| less` or log shipper).
    pub fn spawn_unread(name: &str, mut command: Command) -> Proc {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The read ends stay open, unread, in `child` until it is dropped.
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            output: Output::default(),
            readers: Vec::new(),
            status: None,
            terminate_on_drop: false,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal);
    }

    /// Waits for exit within `timeout`; `None` if still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.status = Some(status);
                // Let the readers drain the pipes so output is complete.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs to completion (for commands expected to exit by themselves).
    pub fn finish(mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = self
            .wait_timeout(timeout)
            .unwrap_or_else(|| panic!("{} did not exit within {timeout:?}", self.name));
        (status, self.output.text())
    }

    /// Reads the port from the server's "listening on http://IP:PORT" line.
    pub fn wait_for_port(&mut self) -> u16 {
        let output = self.output.clone();
        let name = self.name.clone();
        wait_for(
            Duration::from_secs(20),
            &format!("{name} to listen"),
            || {
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!(
                        "{name} exited with {status} before listening:\n{}",
                        output.text()
                    );
                }
                output.lines().iter().find_map(|line| {
                    let (_, address) = line.split_once("listening on http://")?;
                    address.trim().rsplit(':').next()?.parse().ok()
                })
            },
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() && self.terminate_on_drop {
            self.signal(nix::sys::signal::Signal::SIGTERM);
            let _ = self.wait_timeout(Duration::from_secs(10));
        }
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            for line in self.output.lines() {
                eprintln!("[{}] {line}", self.name);
            }
        }
    }
}

/// A started `api-server` on a free port.
pub struct ApiServer {
    pub proc: Proc,
    pub port: u16,
}

impl ApiServer {
    /// Starts `api-server --port 0 --database DB --name NAME [extra...]`;
    /// `database` is a path, a URL or a [`database::TestDatabase`].
    pub fn start(database: impl AsRef<std::ffi::OsStr>, name: &str, extra: &[&str]) -> ApiServer {
        let mut command = Command::new(bin("api-server"));
        command
            .args(["--port", "0", "--name", name, "--database"])
            .arg(database)
            .args(extra)
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info");
        let mut proc = Proc::spawn(name, command);
        let port = proc.wait_for_port();
        ApiServer { proc, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// A started `static-server` serving `root` on a free port.
pub struct StaticServer {
    pub proc: Proc,
    pub port: u16,
}

impl StaticServer {
    pub fn start(root: &Path) -> StaticServer {
        let mut command = Command::new(bin("static-server"));
        command.args(["--port", "0", "--path"]).arg(root);
        let mut proc = Proc::spawn("static", command);
        let port = proc.wait_for_port();
        StaticServer { proc, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// A temporary directory holding a database path.
pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gallery.db");
    (dir, path)
}

/// Established TCP connections to a local listening `port` (from /proc).
pub fn established_connections(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let needle = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[1].ends_with(&needle) && fields[3] == "01"
        })
        .count()
}

/// A port that was free a moment ago (for nginx, which binds its own).
///
/// Picked below the kernel's ephemeral range (32768 and up), never twice
/// by this process: between this check and nginx's own bind, a port from
/// the ephemeral range could become another test's port-0 server or the
/// local end of one of a load's connections.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<(XorShift, std::collections::HashSet<u16>)>> = Mutex::new(None);
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (random, seen) = given.get_or_insert_with(|| {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            ^ u64::from(std::process::id()) << 32;
        (XorShift(seed | 1), Default::default())
    });
    loop {
        let port = 20_000 + (random.next() % 12_000) as u16;
        if seen.insert(port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

/// Every live process in process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let fields: Vec<&str> = stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                fields.first() != Some(&"Z")
                    && fields.get(2).and_then(|g| g.parse().ok()) == Some(pgid)
            })
        })
        .collect()
}

/// The nginx binary (Debian puts it in /usr/sbin, which may not be on PATH).
pub fn nginx() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nginx"))
}

/// A POST kept in flight: `db` is write-locked (`BEGIN EXCLUSIVE`), the POST
/// is sent to `url`, and this returns once a connection to `worker_port` is
/// established. Dropping or rolling back the returned connection lets the
/// POST finish; the thread yields its status.
pub fn post_in_flight(
    db: &Path,
    url: String,
    worker_port: u16,
) -> (
    rusqlite::Connection,
    std::thread::JoinHandle<reqwest::Result<reqwest::StatusCode>>,
) {
    let holder = rusqlite::Connection::open(db).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    (holder, send_in_flight(url, worker_port))
}

/// [`post_in_flight`] on either backend: the POST waits on `db`'s write
/// lock ([`database::TestDatabase::hold_write_lock`]) until the returned
/// guard is released or dropped.
pub fn post_in_flight_on(
    db: &database::TestDatabase,
    url: String,
    worker_port: u16,
) -> (
    database::WriteLock,
    std::thread::JoinHandle<reqwest::Result<reqwest::StatusCode>>,
) {
    let holder = db.hold_write_lock();
    (holder, send_in_flight(url, worker_port))
}

/// Sends a POST to `url` on a thread; returns once it reached `worker_port`.
fn send_in_flight(
    url: String,
    worker_port: u16,
) -> std::thread::JoinHandle<reqwest::Result<reqwest::StatusCode>> {
    let in_flight = std::thread::spawn(move || {
        client()
            .post(url)
            .body(r#"{"title": "In flight", "alt_text": "", "url": "/f"}"#)
            .send()
            .map(|r| r.status())
    });
    wait_until(
        Duration::from_secs(5),
        "the POST to reach the worker",
        || established_connections(worker_port) > 0,
    );
    in_flight
}

/// A tiny deterministic random number generator (xorshift64) for tests that
/// pick victims at random and print their seed so a run can be replayed.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
