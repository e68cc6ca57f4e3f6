//! A running `gallery-supervisor` in a temp directory, on free ports.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Proc, assets_dir, bin, free_port, wait_for, wait_until};

pub struct Supervisor {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub front_port: u16,
}

impl Supervisor {
    /// The command line every test starts from: free ports, temp files.
    pub fn command(dir: &Path, extra: &[&str]) -> Command {
        let mut command = Command::new(bin("gallery-supervisor"));
        command.current_dir(dir).env_remove("DATABASE_URL");
        let defaults = [
            ("--port", free_port().to_string()),
            ("--static-port", "0".to_string()),
            ("--api-base-port", "0".to_string()),
            ("--admin-port", "0".to_string()),
            ("--assets", assets_dir().display().to_string()),
        ];
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                command.args([flag, &value]);
            }
        }
        command.args(extra);
        command
    }

    /// A directory for a stack's files (its database, its run directory),
    /// root's and 0755 like a checkout: when the tests run as root, the
    /// servers run as `nobody`, who can enter it but not create files in it.
    pub fn temp_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    /// Starts the stack and waits for "gallery is up".
    pub fn start(extra: &[&str]) -> Supervisor {
        let dir = Self::temp_dir();
        Self::start_in(dir, extra)
    }

    /// Starts the stack on `db` (`--database`, before `extra`) and waits
    /// for "gallery is up".
    pub fn start_on(db: &super::database::TestDatabase, extra: &[&str]) -> Supervisor {
        let database = db.arg();
        let args: Vec<&str> = ["--database", database.as_str()]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        Self::start(&args)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Supervisor {
        let command = Self::command(dir.path(), extra);
        Self::start_command(dir, command)
    }

    /// Starts the stack from `command` (e.g. a shell wrapping
    /// [`Supervisor::command`]) and waits for "gallery is up".
    pub fn start_command(dir: tempfile::TempDir, command: Command) -> Supervisor {
        let mut proc = Proc::spawn("supervisor", command);
        let output = proc.output.clone();
        let front_port = wait_for(Duration::from_secs(30), "the stack to come up", || {
            if let Some(status) = proc.child.try_wait().unwrap() {
                panic!("supervisor exited with {status}:\n{}", output.text());
            }
            output.lines().iter().find_map(|line| {
                let (_, url) = line.split_once("gallery is up: open http://")?;
                url.trim()
                    .trim_end_matches('/')
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()
            })
        });
        Supervisor {
            proc,
            dir,
            front_port,
        }
    }

    /// Starts the stack with the supervisor's stdout and stderr going into
    /// pipes nobody reads; readiness is seen from outside (state.json and
    /// the front door), since its "gallery is up" line may never be read.
    pub fn start_unread(extra: &[&str]) -> Supervisor {
        let dir = Self::temp_dir();
        let command = Self::command(dir.path(), extra);
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let front_port: u16 = args
            .iter()
            .position(|a| a == "--port")
            .and_then(|i| args.get(i + 1))
            .and_then(|p| p.parse().ok())
            .expect("a --port on the command line");
        let mut proc = Proc::spawn_unread("supervisor", command);
        let run_dir = dir.path().join(".gallery");
        let quick = quick_client();
        wait_until(Duration::from_secs(30), "the stack to come up", || {
            if let Some(status) = proc.child.try_wait().unwrap() {
                panic!("supervisor exited with {status} (its output was not read)");
            }
            let Some(state) = read_state(&run_dir) else {
                return false;
            };
            let all_running = state["children"]
                .as_array()
                .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c["state"] == "running"));
            all_running
                && ["/", "/api/health"].iter().all(|path| {
                    quick
                        .get(format!("http://127.0.0.1:{front_port}{path}"))
                        .send()
                        .is_ok_and(|r| r.status() == 200)
                })
        });
        Supervisor {
            proc,
            dir,
            front_port,
        }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join(".gallery")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.front_port)
    }

    /// The status of `GET path` through the front door.
    pub fn get_status(&self, path: &str) -> u16 {
        super::client()
            .get(self.url(path))
            .send()
            .unwrap()
            .status()
            .as_u16()
    }

    /// The status of a POST of an image titled `title` through the front
    /// door (0 when no answer came).
    pub fn post_image(&self, title: &str) -> u16 {
        super::client()
            .post(self.url("/api/images.json"))
            .body(format!(
                r#"{{"title": "{title}", "alt_text": "", "url": "/x"}}"#
            ))
            .send()
            .map_or(0, |r| r.status().as_u16())
    }

    /// A URL on the supervisor's admin endpoint (from its `admin:` line).
    pub fn admin_url(&self, path: &str) -> String {
        let base = self
            .proc
            .output
            .lines()
            .iter()
            .find_map(|line| {
                let (_, rest) = line.split_once("admin: http://")?;
                Some(
                    rest.split_whitespace()
                        .next()?
                        .trim_end_matches('/')
                        .to_string(),
                )
            })
            .expect("the supervisor's admin: line");
        format!("http://{base}{path}")
    }

    pub fn state(&self) -> Value {
        let text = std::fs::read_to_string(self.run_dir().join("state.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The state.json entry of one child.
    pub fn child(&self, name: &str) -> Value {
        self.state()["children"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no child {name}"))
    }

    pub fn pid_of(&self, name: &str) -> Option<i32> {
        self.child(name)["pid"].as_i64().map(|p| p as i32)
    }

    /// pids of every child and of nginx's workers.
    pub fn all_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for child in self.state()["children"].as_array().unwrap() {
            if let Some(pid) = child["pid"].as_i64() {
                pids.extend(super::group_members(pid as i32));
                pids.push(pid as i32);
            }
        }
        pids.sort();
        pids.dedup();
        pids
    }
}

/// state.json of `run_dir`, or `None` while it is absent or unreadable.
pub fn read_state(run_dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(run_dir.join("state.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// A client for probes: short timeout, no redirects.
pub fn quick_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(500))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The outcome of one `gallery-supervisor SUBCOMMAND` run.
#[derive(Debug)]
pub struct Ran {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Ran {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    /// stdout and stderr together.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
    /// Panics unless it exited `code`.
    pub fn expect_code(&self, code: i32) -> &Ran {
        assert_eq!(
            self.code(),
            Some(code),
            "gallery-supervisor {:?} exited {} after {:.1?}\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.status,
            self.took,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `command` with its output captured and waits at most `timeout` for
/// it to exit: its status (`None`: killed at the deadline), stdout, stderr
/// and how long it took.
pub fn run_to_exit(
    command: &mut Command,
    timeout: Duration,
) -> (Option<ExitStatus>, String, String, Duration) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read = |mut stream: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (
        status,
        stdout.join().unwrap(),
        stderr.join().unwrap(),
        started.elapsed(),
    )
}

/// Runs `gallery-supervisor ARGS` in `dir` (so the run directory is the
/// default `.gallery` there) and waits at most `timeout` for it to exit.
pub fn run_control(dir: &Path, args: &[&str], timeout: Duration) -> Ran {
    let (status, stdout, stderr, took) = run_to_exit(
        Command::new(bin("gallery-supervisor"))
            .current_dir(dir)
            .args(args)
            .env_remove("DATABASE_URL"),
        timeout,
    );
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let Some(status) = status else {
        panic!(
            "gallery-supervisor {args:?} did not exit within {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    };
    Ran {
        args,
        status,
        stdout,
        stderr,
        took,
    }
}

impl Supervisor {
    /// Runs a control subcommand against this stack.
    pub fn control(&self, args: &[&str], timeout: Duration) -> Ran {
        run_control(self.dir.path(), args, timeout)
    }

    /// The state.json entries of the API workers, in file order.
    pub fn api_children(&self) -> Vec<Value> {
        self.state()["children"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["role"] == "api")
            .cloned()
            .collect()
    }

    /// Names of the API workers in state.json, in file order.
    pub fn api_names(&self) -> Vec<String> {
        self.api_children()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Every child's pid by name (`None` while it has none).
    pub fn pids(&self) -> BTreeMap<String, Option<i32>> {
        self.state()["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["pid"].as_i64().map(|p| p as i32),
                )
            })
            .collect()
    }

    pub fn port_of(&self, name: &str) -> u16 {
        self.child(name)["port"].as_u64().unwrap() as u16
    }

    /// The generated nginx config.
    pub fn nginx_conf(&self) -> String {
        std::fs::read_to_string(self.run_dir().join("nginx.conf")).unwrap()
    }

    /// Every PORT of a `server 127.0.0.1:PORT` line of the generated config.
    pub fn nginx_conf_ports(&self) -> BTreeSet<u16> {
        self.nginx_conf()
            .lines()
            .filter_map(|line| {
                let rest = line.trim().strip_prefix("server ")?;
                let rest = rest.trim().strip_prefix("127.0.0.1:")?;
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .collect()
    }

    /// Whether `name` runs under a pid other than `old`, is `running` and
    /// answers its readiness check directly on its port.
    pub fn is_replaced(&self, name: &str, old: i32, quick: &reqwest::blocking::Client) -> bool {
        let Some(state) = read_state(&self.run_dir()) else {
            return false;
        };
        let Some(child) = state["children"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
        else {
            return false;
        };
        let (Some(pid), Some(port)) = (child["pid"].as_i64(), child["port"].as_u64()) else {
            return false;
        };
        if pid as i32 == old || child["state"] != "running" {
            return false;
        }
        let path = if name.starts_with("api") {
            "/health"
        } else {
            "/"
        };
        quick
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .is_ok_and(|r| r.status() == 200)
    }

    /// Waits (at most `timeout`) until `name` is replaced (see
    /// [`Supervisor::is_replaced`]); returns the time since `since`.
    pub fn wait_replaced(
        &self,
        name: &str,
        old: i32,
        since: Instant,
        timeout: Duration,
    ) -> Duration {
        let quick = quick_client();
        let deadline = Instant::now() + timeout;
        while !self.is_replaced(name, old, &quick) {
            if Instant::now() >= deadline {
                let child = read_state(&self.run_dir())
                    .and_then(|s| {
                        s["children"]
                            .as_array()?
                            .iter()
                            .find(|c| c["name"] == name)
                            .cloned()
                    })
                    .unwrap_or_default();
                panic!("{name} (was pid {old}) not replaced within {timeout:?}; now: {child}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        since.elapsed()
    }

    /// Asks `/api/health` through the front door until every name in
    /// `expected` has answered (X-Worker); returns every name that did.
    pub fn workers_answering(
        &self,
        expected: &BTreeSet<String>,
        timeout: Duration,
    ) -> BTreeSet<String> {
        let quick = quick_client();
        let mut seen = BTreeSet::new();
        wait_until(
            timeout,
            &format!("every one of {expected:?} to answer through nginx"),
            || {
                if let Ok(response) = quick.get(self.url("/api/health")).send()
                    && let Some(worker) = response.headers().get("x-worker")
                {
                    seen.insert(worker.to_str().unwrap_or("?").to_string());
                }
                expected.iter().all(|name| seen.contains(name))
            },
        );
        seen
    }
}

/// Names of the API workers in a `status` table (rows starting `api-`).
pub fn api_names_in_status(table: &str) -> HashSet<String> {
    table
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with("api-"))
        .map(str::to_string)
        .collect()
}
