//! SPEC §13 from outside: nginx's own errors as JSON, a run directory that
//! is never world-writable, and thousands of slow clients that never stop
//! the others from being served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::supervisor::Supervisor;
use crate::helpers::{bin, client, heavy};

/// Sends `request` verbatim to `port` and reads the whole answer.
fn raw(port: u16, request: &[u8]) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_string();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (head.to_string(), body.to_string())
}

#[test]
fn nginx_answers_malformed_and_overlong_requests_as_json() {
    let stack = Supervisor::start(&["--api-workers", "1"]);
    let long = format!(
        "GET /api/{} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "x".repeat(10_000)
    );
    let cases: [(&[u8], &str); 3] = [
        (
            b"GET /api/images.json HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
            "400",
        ),
        (b"NOT-HTTP\r\n\r\n", "400"),
        (long.as_bytes(), "414"),
    ];
    for (request, status) in cases {
        let (head, body) = raw(stack.front_port, request);
        let first = head.lines().next().unwrap_or_default();
        assert!(first.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
        assert!(!body.contains("nginx"), "{body}");
    }
}

/// Every path under `dir`, with its mode.
fn modes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        found.push((path.clone(), metadata.permissions().mode()));
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap().flatten() {
                pending.push(entry.path());
            }
        }
    }
    found
}

#[test]
fn under_umask_000_nothing_in_the_run_directory_is_world_writable() {
    let dir = Supervisor::temp_dir();
    let inner = Supervisor::command(dir.path(), &["--api-workers", "1"]);
    let mut command = Command::new("sh");
    command
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(bin("gallery-supervisor"))
        .args(inner.get_args());
    let stack = Supervisor::start_command(dir, command);
    // The stack has served and written what it writes.
    assert_eq!(
        client()
            .get(stack.url("/api/health"))
            .send()
            .unwrap()
            .status(),
        200
    );
    let mut checked = modes(&stack.run_dir());
    checked.extend(
        modes(stack.dir.path())
            .into_iter()
            .filter(|(p, _)| p.to_string_lossy().contains("gallery.db")),
    );
    assert!(checked.len() > 5, "{checked:?}");
    let writable: Vec<_> = checked
        .iter()
        .filter(|(path, mode)| mode & 0o002 != 0 && !path.ends_with("control.sock"))
        .collect();
    assert!(writable.is_empty(), "world-writable: {writable:?}");
    let socket = stack.run_dir().join("control.sock");
    let mode = std::fs::metadata(socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Opens `count` connections to `port` that send half a request head and
/// then nothing more.
fn slow_clients(port: u16, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|i| {
            let mut stream = TcpStream::connect(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("connection {i} to {port}: {e}"));
            let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\n");
            stream
        })
        .collect()
}

/// Waits until every stream has been closed by the server; returns how
/// long the last one took.
fn all_cut(streams: &mut [TcpStream], limit: Duration) -> Duration {
    let started = Instant::now();
    for stream in streams.iter_mut() {
        let left = limit
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left)).unwrap();
        let mut buffer = [0; 1024];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("a slow client was still connected after {limit:?}: {e}"),
            }
        }
    }
    started.elapsed()
}

#[test]
fn thousands_of_slow_clients_never_stop_the_site() {
    const SLOW: usize = 2_500;
    let _heavy = heavy();
    gallery::http::raise_open_file_limit();
    let stack = Supervisor::start(&[]);
    let targets = [
        (
            "api-1",
            stack.child("api-1")["port"].as_u64().unwrap() as u16,
        ),
        (
            "static",
            stack.child("static")["port"].as_u64().unwrap() as u16,
        ),
        ("nginx", stack.front_port),
    ];
    let timeout = gallery::http::HEADER_READ_TIMEOUT;
    let quick = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for (name, port) in targets {
        let opened = Instant::now();
        let mut slow = slow_clients(port, SLOW);
        let opening = opened.elapsed();
        let mut worst = Duration::ZERO;
        for path in ["/api/images.json", "/", "/api/health"] {
            let started = Instant::now();
            let response = quick.get(stack.url(path)).send().unwrap();
            assert_eq!(
                response.status(),
                200,
                "{path} with {SLOW} slow clients on {name}"
            );
            response.bytes().unwrap();
            worst = worst.max(started.elapsed());
        }
        assert!(
            worst < Duration::from_secs(1),
            "a normal request took {worst:?} with {SLOW} slow clients on {name}"
        );
        let cut = all_cut(&mut slow, timeout + Duration::from_secs(5));
        let since_opened = opened.elapsed();
        eprintln!(
            "{SLOW} slow clients on {name} (opened in {opening:.1?}): normal requests answered in at most {worst:.1?}; every slow client cut {since_opened:.1?} after the first was opened (timeout {timeout:?}; waited {cut:.1?})"
        );
        assert!(since_opened < timeout + Duration::from_secs(5));
    }
}
