//! SPEC §8: the Procfile under the real `foreman`, and the checked-in
//! top-level nginx.conf.

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
    for port in ["--port 8082", "--port 8083", "--port 8084", "--port 8085"] {
        assert!(procfile.contains(port), "{port}");
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

/// The Procfile's ports: nginx, static, three workers.
const PROCFILE_PORTS: [u16; 5] = [8080, 8082, 8083, 8084, 8085];

/// Runs the repository's Procfile under `runner` (its arguments before the
/// Procfile and app-root flags) in a fresh directory and checks the site.
fn procfile_serves_the_site(name: &str, mut command: Command) {
    for port in PROCFILE_PORTS {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "the Procfile's port {port} must be free for this test"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(repo().join("nginx.conf"), dir.path().join("nginx.conf")).unwrap();
    std::os::unix::fs::symlink(crate::helpers::assets_dir(), dir.path().join("assets")).unwrap();
    let bin_dir = bin("api-server").parent().unwrap().to_path_buf();
    let path = std::env::var("PATH").unwrap_or_default();
    command
        .arg("-f")
        .arg(repo().join("Procfile"))
        .arg("-d")
        .arg(dir.path())
        .current_dir(dir.path())
        .env("GALLERY_BIN", &bin_dir)
        .env("PATH", format!("{path}:/usr/sbin:/sbin"))
        .env_remove("DATABASE_URL");
    let mut runner = Proc::spawn(name, command);
    runner.terminate_on_drop = true;
    let images: Vec<Value> = wait_for(Duration::from_secs(30), "the site on port 8080", || {
        if let Some(status) = runner.child.try_wait().unwrap() {
            panic!("{name} exited with {status}:\n{}", runner.output.text());
        }
        let response = client()
            .get("http://127.0.0.1:8080/api/images.json")
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
        .get("http://127.0.0.1:8080/")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("script.js"));
    let workers: std::collections::HashSet<String> = (0..9)
        .map(|_| {
            let r = client()
                .get("http://127.0.0.1:8080/api/health")
                .send()
                .unwrap();
            r.headers()["x-worker"].to_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(workers.len(), 3, "{name}: {workers:?}");
    runner.signal(nix::sys::signal::Signal::SIGTERM);
    runner
        .wait_timeout(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("{name} stops"));
    crate::helpers::wait_until(
        Duration::from_secs(10),
        "the Procfile's ports to be released",
        || {
            PROCFILE_PORTS
                .iter()
                .all(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        },
    );
}

/// One test, so the two runners never compete for the Procfile's fixed ports.
#[test]
fn foreman_start_and_honcho_start_serve_the_same_site() {
    let mut foreman = Command::new("foreman");
    foreman.arg("start");
    procfile_serves_the_site("foreman", foreman);
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
