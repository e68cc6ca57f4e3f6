//! `state.json`: what the supervisor tells the world about its children,
//! rewritten atomically (write a temp file, then rename) on every change,
//! and read back by `gallery-supervisor status`.
//!
//! Workers of other hosts in nginx's upstream (`--upstream`) are listed
//! too, after the children, as entries nobody here supervises: `"remote":
//! true`, state `remote`, their address and weight, never a pid.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::plan::Role;

pub const STATE_FILE: &str = "state.json";

/// A child's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting,
    Running,
    Backoff,
    Failed,
    Stopping,
    /// Another host's worker in nginx's upstream: not supervised here.
    Remote,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Backoff => "backoff",
            Phase::Failed => "failed",
            Phase::Stopping => "stopping",
            Phase::Remote => "remote",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildState {
    pub name: String,
    pub role: Role,
    pub pid: Option<u32>,
    pub port: u16,
    pub state: Phase,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// When the current process started (Unix seconds), if one runs.
    #[serde(default)]
    pub started_at: Option<u64>,
    /// The watchdog's view of the current process, once it has checked it.
    #[serde(default)]
    pub health: Option<Health>,
    /// Another host's worker in nginx's upstream (`--upstream`): nobody
    /// here supervises it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remote: bool,
    /// Where nginx reaches a remote worker: HOST:PORT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// A remote worker's weight in the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
}

impl ChildState {
    /// The entry of `upstream`, the `n`th remote worker (1-based).
    pub fn remote(n: usize, upstream: &crate::plan::Upstream) -> ChildState {
        ChildState {
            name: format!("remote-{n}"),
            role: Role::Api,
            pid: None,
            port: upstream.port,
            state: Phase::Remote,
            restarts: 0,
            last_exit: None,
            started_at: None,
            health: None,
            remote: true,
            address: Some(upstream.address()),
            weight: Some(upstream.weight),
        }
    }
}

/// The watchdog's last word on a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Health checks missed in a row (0: the last one answered).
    pub misses: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackState {
    pub supervisor_pid: u32,
    pub children: Vec<ChildState>,
}

pub fn path(run_dir: &Path) -> PathBuf {
    run_dir.join(STATE_FILE)
}

/// Replaces `state.json` so that readers never see a half-written file.
pub fn write(run_dir: &Path, state: &StackState) -> std::io::Result<()> {
    let temp = run_dir.join(".state.json.tmp");
    let mut text = serde_json::to_string_pretty(state).map_err(std::io::Error::other)?;
    text.push('\n');
    std::fs::write(&temp, text)?;
    std::fs::rename(&temp, path(run_dir))
}

pub fn remove(run_dir: &Path) {
    let _ = std::fs::remove_file(path(run_dir));
}

/// An uptime as a person reads it: `42s`, `5m03s`, `2h07m`, `3d04h`.
fn uptime(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

/// The table `gallery-supervisor status` prints; `now` is Unix seconds.
pub fn table(state: &StackState, now: u64) -> String {
    let mut out = format!("supervisor pid {}\n", state.supervisor_pid);
    let _ = writeln!(
        out,
        "{:<8} {:<7} {:>8} {:>6}  {:<9} {:>7}  {:<8} {:>8}  LAST EXIT",
        "NAME", "ROLE", "PID", "PORT", "STATE", "UPTIME", "HEALTH", "RESTARTS"
    );
    for child in state.children.iter().filter(|c| !c.remote) {
        let role = serde_json::to_value(child.role).unwrap_or_default();
        let health = match child.health {
            None => "-".to_string(),
            Some(Health { misses: 0 }) => "ok".to_string(),
            Some(Health { misses }) => format!("{misses} missed"),
        };
        let _ = writeln!(
            out,
            "{:<8} {:<7} {:>8} {:>6}  {:<9} {:>7}  {:<8} {:>8}  {}",
            child.name,
            role.as_str().unwrap_or("?"),
            child.pid.map_or("-".to_string(), |p| p.to_string()),
            child.port,
            child.state.as_str(),
            child
                .started_at
                .map_or("-".to_string(), |t| uptime(now.saturating_sub(t))),
            health,
            child.restarts,
            child.last_exit.as_deref().unwrap_or("-"),
        );
    }
    let remote: Vec<&ChildState> = state.children.iter().filter(|c| c.remote).collect();
    if !remote.is_empty() {
        out.push_str("\nother hosts' workers in nginx's upstream (not supervised here):\n");
        let _ = writeln!(out, "{:<8} {:<24} {:>6}", "NAME", "ADDRESS", "WEIGHT");
        for child in remote {
            let _ = writeln!(
                out,
                "{:<8} {:<24} {:>6}",
                child.name,
                child.address.as_deref().unwrap_or("?"),
                child.weight.unwrap_or(1),
            );
        }
    }
    out
}

/// `gallery-supervisor status [--json]`.
pub fn print_status(run_dir: &Path, json: bool) -> anyhow::Result<()> {
    let file = path(run_dir);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "no gallery-supervisor is running with run directory {} (no {STATE_FILE})",
            run_dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let state: StackState = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a gallery state file", file.display()))?;
    let alive = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(state.supervisor_pid as i32),
        None,
    )
    .is_ok();
    anyhow::ensure!(
        alive,
        "the supervisor (pid {}) that wrote {} is no longer running",
        state.supervisor_pid,
        file.display()
    );
    if json {
        print!("{text}");
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        print!("{}", table(&state, now));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StackState {
        StackState {
            supervisor_pid: 41,
            children: vec![ChildState {
                name: "api-1".into(),
                role: Role::Api,
                pid: Some(42),
                port: 8083,
                state: Phase::Running,
                restarts: 0,
                last_exit: None,
                started_at: Some(1_000),
                health: Some(Health { misses: 0 }),
                remote: false,
                address: None,
                weight: None,
            }],
        }
    }

    #[test]
    fn serialises_in_the_documented_shape() {
        let value = serde_json::to_value(sample()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"supervisor_pid": 41, "children": [{"name": "api-1", "role": "api",
                "pid": 42, "port": 8083, "state": "running", "restarts": 0, "last_exit": null,
                "started_at": 1000, "health": {"misses": 0}}]})
        );
    }

    #[test]
    fn writes_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &sample()).unwrap();
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert_eq!(serde_json::from_str::<StackState>(&text).unwrap(), sample());
        assert!(!dir.path().join(".state.json.tmp").exists());
    }

    #[test]
    fn the_table_has_a_row_per_child() {
        let text = table(&sample(), 1_000 + 3_723);
        assert!(
            text.contains(
                "api-1    api           42   8083  running     1h02m  ok              0  -"
            ),
            "{text}"
        );
    }

    #[test]
    fn uptimes_read_naturally() {
        assert_eq!(uptime(42), "42s");
        assert_eq!(uptime(303), "5m03s");
        assert_eq!(uptime(7_620), "2h07m");
        assert_eq!(uptime(273_600), "3d04h");
    }

    #[test]
    fn remote_workers_are_entries_nobody_supervises() {
        let mut state = sample();
        let upstream = "127.0.0.2:9001,weight=3".parse().unwrap();
        state.children.push(ChildState::remote(1, &upstream));
        let value = serde_json::to_value(&state).unwrap();
        assert_eq!(
            value["children"][1],
            serde_json::json!({"name": "remote-1", "role": "api", "pid": null, "port": 9001,
                "state": "remote", "restarts": 0, "last_exit": null, "started_at": null,
                "health": null, "remote": true, "address": "127.0.0.2:9001", "weight": 3})
        );
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<StackState>(&text).unwrap(), state);
        let table = table(&state, 1_000);
        let (children, remote) = table.split_once("\nother hosts'").unwrap();
        assert!(!children.contains("remote-1"), "{table}");
        assert!(
            remote.contains(&format!("remote-1 {:<24} {:>6}", "127.0.0.2:9001", 3)),
            "{table}"
        );
    }
}
