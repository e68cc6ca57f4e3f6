//! SPEC §8: the Procfile under the real `foreman`, and the checked-in
//! top-level nginx.conf.
//!
//! On SQLite only: the Procfile names the default `gallery.db`, and the JSON
//! 502 under `/api/` is nginx's own, with no worker and no database behind
//! it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Proc, bin, client, wait_for};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_top_level_nginx_conf_is_what_nginx_config_prints_for_the_procfile_ports() {
    let generated = Command::new(bin("gallery-supervisor"))
        .arg("nginx-config")
        .output()
        .unwrap();
    assert!(generated.status.success());
    let checked_in = std::fs::read_to_string(repo().join("nginx.conf")).unwrap();
    assert_eq!(
        String::from_utf8(generated.stdout).unwrap(),
        checked_in,
        "regenerate with: gallery-supervisor nginx-config > nginx.conf"
    );
    let procfile = std::fs::read_to_string(repo().join("Procfile")).unwrap();
    for port in [
        "${GALLERY_STATIC_PORT:-8082}",
        "${GALLERY_API_PORT_1:-8083}",
        "${GALLERY_API_PORT_2:-8084}",
        "${GALLERY_API_PORT_3:-8085}",
    ] {
        assert!(procfile.contains(&format!("--port {port}")), "{port}");
    }
}

#[test]
fn the_top_level_nginx_conf_passes_nginx_t() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    let prefix = format!("{}/", dir.path().display());
    let output = Command::new(crate::helpers::nginx())
        .args(["-t", "-e", "stderr", "-p", &prefix, "-c"])
        .arg(repo().join("nginx.conf"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.contains("test is successful"),
        "{stderr}"
    );
}

/// Free ports for the Procfile: the front door, the static server, and a
/// base for three workers on consecutive ports (as `--api-base-port` wants).
struct ProcfilePorts {
    front: u16,
    static_port: u16,
    api_base: u16,
}

impl ProcfilePorts {
    /// Three consecutive ports are looked for below the ephemeral range
    /// (32768 and up on Linux): there, a burst of outgoing connections from
    /// another test (which take ephemeral ports and leave them in
    /// TIME_WAIT) cannot be in the way.
    fn pick() -> ProcfilePorts {
        let mut random = crate::helpers::XorShift(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1,
        );
        let api_base = wait_for(Duration::from_secs(30), "3 consecutive free ports", || {
            let base = 20_000 + (random.next() % 12_000) as u16;
            let held: Vec<_> = (0..3)
                .map_while(|k| base.checked_add(k))
                .map_while(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
                .collect();
            (held.len() == 3).then_some(base)
        });
        ProcfilePorts {
            front: crate::helpers::free_port(),
            static_port: crate::helpers::free_port(),
            api_base,
        }
    }

    fn all(&self) -> Vec<u16> {
        let mut all = vec![self.front, self.static_port];
        all.extend((0..3).map(|k| self.api_base + k));
        all
    }
}

/// Runs the repository's Procfile under `runner` (its arguments before the
/// Procfile and app-root flags) in a fresh directory, on free ports (the
/// Procfile's port variables, and an nginx.conf rendered for them), with a
/// PATH that lacks the sbin directories as a normal user's does, and checks
/// the site.
fn procfile_serves_the_site(name: &str, mut command: Command) {
    let ports = ProcfilePorts::pick();
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = Command::new(bin("gallery-supervisor"))
        .arg("nginx-config")
        .args(["--port", &ports.front.to_string()])
        .args(["--static-port", &ports.static_port.to_string()])
        .args(["--api-base-port", &ports.api_base.to_string()])
        .output()
        .unwrap();
    assert!(config.status.success(), "{config:?}");
    std::fs::write(dir.path().join("nginx.conf"), config.stdout).unwrap();
    std::os::unix::fs::symlink(crate::helpers::assets_dir(), dir.path().join("assets")).unwrap();
    let bin_dir = bin("api-server").parent().unwrap().to_path_buf();
    let path = std::env::var("PATH").unwrap_or_default();
    let path: Vec<&str> = path.split(':').filter(|p| !p.contains("sbin")).collect();
    command
        .arg("-f")
        .arg(repo().join("Procfile"))
        .arg("-d")
        .arg(dir.path())
        .current_dir(dir.path())
        .env("GALLERY_BIN", &bin_dir)
        .env("GALLERY_STATIC_PORT", ports.static_port.to_string())
        .env("PATH", path.join(":"))
        .env_remove("DATABASE_URL");
    for k in 0..3 {
        let port = (ports.api_base + k).to_string();
        command.env(format!("GALLERY_API_PORT_{}", k + 1), port);
    }
    let mut runner = Proc::spawn(name, command);
    runner.terminate_on_drop = true;
    let front = format!("http://127.0.0.1:{}", ports.front);
    let images: Vec<Value> = wait_for(Duration::from_secs(30), "the site", || {
        if let Some(status) = runner.child.try_wait().unwrap() {
            panic!("{name} exited with {status}:\n{}", runner.output.text());
        }
        let response = client()
            .get(format!("{front}/api/images.json"))
            .send()
            .ok()?;
        (response.status() == 200)
            .then(|| response.json().ok())
            .flatten()
    });
    assert_eq!(images.len(), 3, "{name}");
    assert!(
        dir.path().join("gallery.db").is_file(),
        "gallery.db in the working directory"
    );
    let page: String = client()
        .get(format!("{front}/"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("script.js"));
    let workers: std::collections::HashSet<String> = (0..9)
        .map(|_| {
            let r = client().get(format!("{front}/api/health")).send().unwrap();
            r.headers()["x-worker"].to_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(workers.len(), 3, "{name}: {workers:?}");
    runner.signal(nix::sys::signal::Signal::SIGTERM);
    runner
        .wait_timeout(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("{name} stops"));
    crate::helpers::wait_until(Duration::from_secs(10), "the ports to be released", || {
        ports
            .all()
            .iter()
            .all(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
    });
}

#[test]
fn foreman_start_serves_the_site_on_free_ports_without_sbin_on_path() {
    let mut foreman = Command::new("foreman");
    foreman.arg("start");
    procfile_serves_the_site("foreman", foreman);
}

#[test]
fn honcho_start_serves_the_same_site() {
    let mut honcho = Command::new("python3");
    honcho.args(["-m", "honcho", "start"]);
    procfile_serves_the_site("honcho", honcho);
}

#[test]
fn nginx_errors_under_api_are_json_when_no_worker_answers() {
    // The generated config, run by the real nginx, with nothing behind it.
    let closed = crate::helpers::free_port().to_string();
    let front = crate::helpers::free_port();
    let config = Command::new(bin("gallery-supervisor"))
        .args([
            "nginx-config",
            "--port",
            &front.to_string(),
            "--static-port",
            &closed,
        ])
        .args(["--api-base-port", &closed, "--api-workers", "1"])
        .output()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    std::fs::write(dir.path().join("nginx.conf"), config.stdout).unwrap();
    let mut command = Command::new(crate::helpers::nginx());
    command
        .args(["-e", "stderr", "-c", "nginx.conf", "-p"])
        .arg(format!("{}/", dir.path().display()));
    let mut nginx = Proc::spawn("nginx", command);
    nginx.terminate_on_drop = true;
    let response = wait_for(Duration::from_secs(10), "nginx to answer", || {
        client()
            .get(format!("http://127.0.0.1:{front}/api/images.json"))
            .send()
            .ok()
    });
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("no API worker"),
        "{body}"
    );
}
