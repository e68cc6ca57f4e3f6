//! Operator errors at start: one clear line, a non-zero exit, no panic.

use std::process::Command;
use std::time::Duration;

use crate::helpers::{Proc, bin, temp_db};

fn run(binary: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut command = Command::new(bin(binary));
    command.args(args).env_remove("DATABASE_URL");
    for (key, value) in env {
        command.env(key, value);
    }
    let (status, output) = Proc::spawn(binary, command).finish(Duration::from_secs(20));
    assert!(
        !output.contains("panicked") && !output.contains("RUST_BACKTRACE"),
        "{output}"
    );
    (status.code().expect("exited, not killed"), output)
}

fn assert_one_error_line(output: &str, needles: &[&str]) {
    let errors: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line in:\n{output}");
    for needle in needles {
        assert!(errors[0].contains(needle), "{needle:?} in {:?}", errors[0]);
    }
}

#[test]
fn a_postgres_url_is_taken_and_a_server_that_cannot_be_reached_is_one_line_without_the_password() {
    // Nothing listens on this port: the URL is understood, and connecting
    // fails at once.
    let port = crate::helpers::free_port();
    let url = format!("postgres://user:pw-secret@127.0.0.1:{port}/gallery");
    let (code, output) = run("api-server", &["--port", "0"], &[("DATABASE_URL", &url)]);
    assert_eq!(code, 1);
    assert_one_error_line(
        &output,
        &[
            "DATABASE_URL (from the environment)",
            &format!("cannot connect to PostgreSQL at 127.0.0.1:{port}"),
            "database gallery, user user",
            "connection refused",
        ],
    );
    assert!(!output.contains("pw-secret"), "{output}");
    let url = format!("postgresql://user:pw-secret@127.0.0.1:{port}/gallery");
    let (code, output) = run("api-server", &["--port", "0", "--database", &url], &[]);
    assert_eq!(code, 1);
    assert_one_error_line(&output, &["--database: cannot connect to PostgreSQL"]);
    assert!(!output.contains("pw-secret"), "{output}");
    // Another scheme is refused naming what is supported.
    let (code, output) = run(
        "api-server",
        &["--port", "0", "--database", "mysql://localhost/gallery"],
        &[],
    );
    assert_eq!(code, 1);
    assert_one_error_line(
        &output,
        &["--database: unsupported", "sqlite://PATH", "postgres://"],
    );
}

#[test]
fn database_url_accepts_sqlite_urls() {
    let (dir, db) = temp_db();
    let url = format!("sqlite:{}", db.display());
    let mut command = Command::new(bin("api-server"));
    command.args(["--port", "0"]).env("DATABASE_URL", &url);
    let mut proc = Proc::spawn("api", command);
    proc.wait_for_port();
    assert!(db.is_file(), "created {}", db.display());
    drop(dir);
}

#[test]
fn a_file_that_is_not_a_database_is_named() {
    let (_dir, db) = temp_db();
    std::fs::write(
        &db,
        "hello, I am a text file and not a database at all".repeat(40),
    )
    .unwrap();
    let (code, output) = run(
        "api-server",
        &["--port", "0", "--database", db.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1);
    assert_one_error_line(&output, &["is not an SQLite database", "gallery.db"]);
}

#[test]
fn an_unwritable_database_location_is_named() {
    let (_dir, db) = temp_db();
    let missing = db.parent().unwrap().join("no-such-dir/gallery.db");
    let (code, output) = run(
        "api-server",
        &["--port", "0", "--database", missing.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1);
    assert_one_error_line(
        &output,
        &[
            "--database",
            "cannot open database",
            "no-such-dir does not exist",
        ],
    );
    assert_eq!(output.matches("gallery.db").count(), 1, "{output}");
    assert!(!output.contains("unable to open"), "{output}");
}

#[test]
fn a_port_in_use_is_named() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let (_dir, db) = temp_db();
    let (code, output) = run(
        "api-server",
        &["--port", &port, "--database", db.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1);
    assert_one_error_line(
        &output,
        &[&format!("port {port}"), "already in use", "--port"],
    );
    let (code, output) = run(
        "static-server",
        &[
            "--port",
            &port,
            "--path",
            crate::helpers::assets_dir().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert_one_error_line(
        &output,
        &[&format!("port {port}"), "already in use", "--port"],
    );
}

#[test]
fn a_missing_assets_directory_is_named() {
    let (code, output) = run(
        "static-server",
        &["--port", "0", "--path", "/nonexistent/assets"],
        &[],
    );
    assert_eq!(code, 1);
    assert_one_error_line(
        &output,
        &["assets directory /nonexistent/assets does not exist"],
    );
    let (code, output) = run(
        "static-server",
        &["--port", "0", "--assets", "/nonexistent/assets"],
        &[],
    );
    assert_eq!(code, 1);
    assert_one_error_line(
        &output,
        &[
            "--assets",
            "assets directory /nonexistent/assets does not exist",
        ],
    );
}

/// Starts `binary ARGS` on a free port and waits until it answers.
fn serve(binary: &str, args: &[&str], env: &[(&str, &str)]) -> (Proc, u16) {
    let port = crate::helpers::free_port();
    let mut command = Command::new(bin(binary));
    command
        .args(["--port", &port.to_string()])
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    let proc = Proc::spawn(binary, command);
    crate::helpers::wait_until(Duration::from_secs(20), "the server to answer", || {
        crate::helpers::client()
            .get(format!("http://localhost:{port}/"))
            .send()
            .is_ok()
    });
    (proc, port)
}

/// Stops a server and returns everything it printed.
fn stop(proc: Proc) -> String {
    proc.signal(nix::sys::signal::Signal::SIGTERM);
    let (_, output) = proc.finish(Duration::from_secs(20));
    output
}

#[test]
fn the_servers_bind_a_host_name_and_log_at_log_level_unless_rust_log_says_otherwise() {
    let (_dir, db) = temp_db();
    let db = db.to_str().unwrap();
    let assets = crate::helpers::assets_dir();
    let assets = assets.to_str().unwrap();
    let api = [
        "--bind",
        "localhost",
        "--database",
        db,
        "--log-level",
        "warn",
    ];
    let files = [
        "--bind",
        "localhost",
        "--assets",
        assets,
        "--log-level",
        "warn",
    ];
    for (binary, args) in [("api-server", &api), ("static-server", &files)] {
        let (quiet, _) = serve(binary, args, &[]);
        let output = stop(quiet);
        assert!(!output.contains("GET / "), "{binary} at warn:\n{output}");
        let (loud, _) = serve(binary, args, &[("RUST_LOG", "info")]);
        let output = stop(loud);
        assert!(
            output.contains("GET / "),
            "{binary} under RUST_LOG=info:\n{output}"
        );
    }
}

/// `--prepare-database` creates, migrates and seeds the file, then closes
/// every connection before it exits: nothing is opened in the background
/// and cut off at exit. With nobody else on the file, its close is the
/// last one, which checkpoints the WAL and removes `-wal` and `-shm` (the
/// supervisor's checkpoint at exit relies on it).
#[test]
fn prepare_database_closes_the_file_and_leaves_no_wal() {
    let (_dir, db) = temp_db();
    let database = db.to_str().unwrap();
    let companion = |suffix: &str| std::path::PathBuf::from(format!("{database}{suffix}"));
    // A pool connection opened in the background, still open at exit,
    // left -wal behind about one run in twelve.
    for round in 0..60 {
        let (code, output) = run(
            "api-server",
            &["--prepare-database", "--database", database],
            &[],
        );
        assert_eq!(code, 0, "{output}");
        assert!(
            !companion("-wal").exists() && !companion("-shm").exists(),
            "round {round}: -wal and -shm are removed"
        );
        let writer = rusqlite::Connection::open(&db).unwrap();
        writer
            .execute(
                "INSERT INTO images (title, alt_text, url) VALUES (?1, 'alt', 'https://example.com/a.png')",
                [format!("round {round}")],
            )
            .unwrap();
    }
}
