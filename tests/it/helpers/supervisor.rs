//! A running `gallery-supervisor` in a temp directory, on free ports.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{Proc, assets_dir, bin, free_port, wait_for};

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

    pub fn temp_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        // nginx's workers run unprivileged when the tests run as root.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    /// Starts the stack and waits for "gallery is up".
    pub fn start(extra: &[&str]) -> Supervisor {
        let dir = Self::temp_dir();
        Self::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Supervisor {
        let mut proc = Proc::spawn("supervisor", Self::command(dir.path(), extra));
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

    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join(".gallery")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.front_port)
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
