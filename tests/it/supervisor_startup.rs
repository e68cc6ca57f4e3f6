//! Bad starts of `gallery-supervisor` (SPEC §6): each fails within seconds
//! with one clear line naming the problem and a non-zero exit.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::Proc;
use crate::helpers::supervisor::Supervisor;

/// Runs the supervisor expecting a fast failure; returns its error line.
fn fails(dir: &std::path::Path, extra: &[&str]) -> String {
    fails_command(Supervisor::command(dir, extra))
}

/// Runs `command` expecting a fast failure; returns its error line.
pub(crate) fn fails_command(command: Command) -> String {
    let started = Instant::now();
    let (status, output) = Proc::spawn("supervisor", command).finish(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(!output.contains("panicked"), "{output}");
    let errors: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line in:\n{output}");
    errors[0].to_string()
}

fn assert_mentions(line: &str, needles: &[&str]) {
    for needle in needles {
        assert!(line.contains(needle), "{needle:?} in {line:?}");
    }
}

#[test]
fn a_missing_nginx_says_how_to_install_it() {
    let dir = Supervisor::temp_dir();
    let line = fails(dir.path(), &["--nginx", "/nonexistent/sbin/nginx"]);
    assert_mentions(
        &line,
        &["nginx not found", "apt-get install nginx", "--nginx"],
    );
    let line = fails(dir.path(), &["--nginx", "no-such-nginx-binary"]);
    assert_mentions(&line, &["nginx not found on PATH", "--nginx"]);
}

#[test]
fn a_port_in_use_is_named() {
    let dir = Supervisor::temp_dir();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let line = fails(dir.path(), &["--static-port", &port]);
    assert_mentions(
        &line,
        &[
            "static",
            &format!("port {port}"),
            "already in use",
            "--static-port",
        ],
    );
    let line = fails(
        dir.path(),
        &["--api-base-port", &port, "--api-workers", "1"],
    );
    assert_mentions(
        &line,
        &[
            "api-1",
            &format!("port {port}"),
            "already in use",
            "--api-base-port",
        ],
    );
    let line = fails(dir.path(), &["--port", &port]);
    assert_mentions(
        &line,
        &["nginx", &format!("port {port}"), "already in use", "--port"],
    );
}

#[test]
fn an_nginx_that_does_not_work_fails_before_anything_starts() {
    let dir = Supervisor::temp_dir();
    for fake in ["/usr/bin/false", "/bin/true"] {
        let command = Supervisor::command(dir.path(), &["--nginx", fake]);
        let started = Instant::now();
        let (status, output) = Proc::spawn("supervisor", command).finish(Duration::from_secs(10));
        assert_eq!(status.code(), Some(1), "{output}");
        assert!(started.elapsed() < Duration::from_secs(5), "{output}");
        let errors: Vec<&str> = output
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "{output}");
        assert_mentions(
            errors[0],
            &[&format!("--nginx {fake}"), "not a working nginx"],
        );
        // Nothing was started: the one error line is all there is.
        assert_eq!(output.trim(), errors[0], "{fake}");
    }
}

#[test]
fn a_database_error_names_the_flag_or_the_environment_once() {
    let dir = Supervisor::temp_dir();
    let line = fails(dir.path(), &["--database", "/nonexistent/x.db"]);
    assert_mentions(
        &line,
        &["--database", "/nonexistent/x.db", "does not exist"],
    );
    assert_eq!(line.matches("x.db").count(), 1, "{line}");
    assert!(!line.contains("unable to open"), "{line}");

    let mut command = Supervisor::command(dir.path(), &[]);
    let port = crate::helpers::free_port();
    command.env(
        "DATABASE_URL",
        format!("postgres://user:secret@127.0.0.1:{port}/gallery"),
    );
    let line = fails_command(command);
    assert_mentions(
        &line,
        &[
            "DATABASE_URL",
            "environment",
            &format!("cannot connect to PostgreSQL at 127.0.0.1:{port}"),
        ],
    );
    assert!(
        !line.contains("--database") && !line.contains("secret"),
        "{line}"
    );

    let mut command = Supervisor::command(dir.path(), &[]);
    command.env("DATABASE_URL", "/nonexistent/y.db");
    let line = fails_command(command);
    assert_mentions(&line, &["DATABASE_URL", "/nonexistent/y.db"]);
}

#[test]
fn a_host_name_binds_and_the_servers_log_at_the_supervisors_level() {
    let dir = Supervisor::temp_dir();
    let mut command = Supervisor::command(
        dir.path(),
        &[
            "--api-workers",
            "1",
            "--bind",
            "localhost",
            "--log-level",
            "debug",
        ],
    );
    command.env_remove("RUST_LOG");
    let stack = Supervisor::start_command(dir, command);
    // The servers log the supervisor's checks at debug level only.
    crate::helpers::wait_until(Duration::from_secs(10), "a debug line from api-1", || {
        stack
            .proc
            .output
            .lines()
            .iter()
            .any(|l| l.starts_with("api-1") && l.contains("(supervisor check)"))
    });
}

#[test]
fn subcommands_show_and_take_only_their_flags() {
    let run = |args: &[&str]| {
        Command::new(crate::helpers::bin("gallery-supervisor"))
            .args(args)
            .output()
            .unwrap()
    };
    let help = String::from_utf8(run(&["status", "--help"]).stdout).unwrap();
    assert!(
        help.contains("--json") && help.contains("--run-dir"),
        "{help}"
    );
    for absent in [
        "--api-workers",
        "--port",
        "--database",
        "--nginx",
        "--log-level",
    ] {
        assert!(!help.contains(absent), "{absent} in {help}");
    }
    let help = String::from_utf8(run(&["nginx-config", "--help"]).stdout).unwrap();
    assert!(
        help.contains("--api-workers") && help.contains("(1-64)"),
        "{help}"
    );
    // The database decides where nginx sends POSTs (one SQLite writer, or
    // balanced over PostgreSQL), so nginx-config takes --database too.
    assert!(help.contains("--database"), "{help}");
    for absent in ["--nginx ", "--health-misses", "--run-dir"] {
        assert!(!help.contains(absent), "{absent} in {help}");
    }
    for args in [
        &["status", "--api-workers", "7"][..],
        &["--api-workers", "7", "status"],
    ] {
        let output = run(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--api-workers"), "{stderr}");
    }
}

#[test]
fn an_unusable_database_is_named() {
    let dir = Supervisor::temp_dir();
    let line = fails(dir.path(), &["--database", "missing-dir/gallery.db"]);
    assert_mentions(&line, &["cannot open database", "missing-dir/gallery.db"]);
    std::fs::write(
        dir.path().join("text.db"),
        "not a database, just text ".repeat(50),
    )
    .unwrap();
    let line = fails(dir.path(), &["--database", "text.db"]);
    assert_mentions(&line, &["text.db is not an SQLite database"]);
    let line = fails(dir.path(), &["--database", "mysql://localhost/gallery"]);
    assert_mentions(&line, &["unsupported", "sqlite://PATH", "postgres://"]);
}

/// The supervisor never opens the database as a database (an API server
/// prepares it, and the hold is a lock): it links no SQLite, which keeps its
/// own process small. SQLite's own error text marks its code in a binary.
#[test]
fn the_supervisor_links_no_sqlite_and_the_api_server_does() {
    const SQLITE_TEXT: &[u8] = b"unable to open database file";
    let links_sqlite = |program: &str| {
        let bytes = std::fs::read(crate::helpers::bin(program)).unwrap();
        bytes
            .windows(SQLITE_TEXT.len())
            .any(|window| window == SQLITE_TEXT)
    };
    assert!(links_sqlite("api-server"), "the marker is SQLite's");
    assert!(!links_sqlite("gallery-supervisor"));
}

#[test]
fn a_missing_assets_directory_is_named() {
    let dir = Supervisor::temp_dir();
    let line = fails(dir.path(), &["--assets", "no-such-assets"]);
    assert_mentions(
        &line,
        &["assets directory no-such-assets does not exist", "--assets"],
    );
}

#[test]
fn a_second_supervisor_on_the_same_run_directory_is_refused() {
    let first = Supervisor::start(&["--api-workers", "1"]);
    let line = fails(first.dir.path(), &["--api-workers", "1"]);
    assert_mentions(
        &line,
        &[
            &format!("another gallery-supervisor (pid {})", first.proc.pid()),
            "already running",
            ".gallery",
        ],
    );
}

#[test]
fn nginx_config_prints_the_config_for_the_given_flags() {
    let output = Command::new(crate::helpers::bin("gallery-supervisor"))
        .args([
            "nginx-config",
            "--port",
            "9000",
            "--api-workers",
            "2",
            "--api-base-port",
            "9100",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("listen 127.0.0.1:9000 backlog=4096;"));
    assert!(text.contains("server 127.0.0.1:9100 ") && text.contains("server 127.0.0.1:9101 "));
    assert!(!text.contains(":9102"));
}

#[test]
fn status_without_a_running_supervisor_says_so() {
    let dir = Supervisor::temp_dir();
    let output = Command::new(crate::helpers::bin("gallery-supervisor"))
        .current_dir(dir.path())
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim(),
        "error: no gallery-supervisor is running with run directory .gallery (no state.json)"
    );
}

#[test]
fn a_database_the_servers_account_cannot_reach_is_named_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Supervisor::temp_dir();
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // Open to all, but inside a directory only root may enter.
    let data = private.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let database = data.join("gallery.db");
    let database = database.to_str().unwrap();
    if nix::unistd::Uid::effective().is_root() {
        let line = fails(dir.path(), &["--database", database]);
        assert_mentions(
            &line,
            &["--user nobody cannot enter", "mode 0700", "--user root"],
        );
        // Kept root on request, the same stack starts.
        let stack = Supervisor::start(&[
            "--api-workers",
            "1",
            "--database",
            database,
            "--user",
            "root",
        ]);
        let pid = stack.pid_of("api-1").unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(status.contains("\nUid:\t0\t"), "{status}");
        assert!(
            stack
                .proc
                .output
                .text()
                .contains("warning: the API and static servers run as root"),
            "{}",
            stack.proc.output.text()
        );
    } else {
        let line = fails(dir.path(), &["--user", "root"]);
        assert_mentions(&line, &["--user root needs the supervisor to run as root"]);
    }
    let line = fails(dir.path(), &["--user", "no-such-account"]);
    assert_mentions(&line, &["--user no-such-account: no such user"]);
}
