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
fn a_postgres_database_url_is_refused_naming_the_supported_forms() {
    let (code, output) = run(
        "api-server",
        &["--port", "0"],
        &[("DATABASE_URL", "postgres://user:pw@localhost/gallery")],
    );
    assert_eq!(code, 1);
    assert_one_error_line(&output, &["PostgreSQL", "sqlite://PATH"]);
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
        &["cannot open database", "no-such-dir", "writable"],
    );
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
    assert_one_error_line(&output, &[&format!("port {port}"), "already in use"]);
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
    assert_one_error_line(&output, &[&format!("port {port}"), "already in use"]);
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
}
