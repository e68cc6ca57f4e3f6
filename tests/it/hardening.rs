//! SPEC §13 from outside: nginx's own errors as JSON, a run directory that
//! is never world-writable, and thousands of slow clients that never stop
//! the others from being served.
//!
//! All on SQLite only. Four are about the SQLite file itself: a removed,
//! replaced or read-only file, the file made the servers' own when run as
//! root, a worker that opened it before it was made its own, and another
//! process opening it (its `-wal` and `-shm`). The others
//! never reach a database (nginx's own answers, the run directory's modes,
//! slow clients held at the connection limits).

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
    assert_eq!(stack.get_status("/api/health"), 200);
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

/// One POST: when it was sent, its title, its status (None: no answer),
/// and when the answer came.
type Posted = (Instant, String, Option<u16>, Instant);

/// POSTs through the front door from a few threads until stopped, recording
/// when each was sent and answered and what came back.
struct Posters {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acknowledged: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Vec<Posted>>>,
}

impl Posters {
    fn start(url: String, threads: usize) -> Posters {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        static ROUNDS: AtomicUsize = AtomicUsize::new(0);
        let round = ROUNDS.fetch_add(1, Ordering::SeqCst);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let acknowledged = std::sync::Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|t| {
                let (stop, url, acked) = (stop.clone(), url.clone(), acknowledged.clone());
                std::thread::spawn(move || {
                    let client = client();
                    let mut seen = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let title = format!("post {round}.{t}.{n}");
                        let body = serde_json::json!({"title": title, "alt_text": "", "url": "/p"});
                        let sent = Instant::now();
                        let status = client
                            .post(&url)
                            .body(body.to_string())
                            .send()
                            .ok()
                            .map(|r| r.status().as_u16());
                        if status == Some(200) {
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        seen.push((sent, title, status, Instant::now()));
                    }
                    seen
                })
            })
            .collect();
        Posters {
            stop,
            acknowledged,
            threads,
        }
    }

    fn stop(self) -> Vec<Posted> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

#[test]
fn a_removed_replaced_or_read_only_database_refuses_writes_then_serves_again() {
    let _heavy = heavy();
    let stack = Supervisor::start(&[]);
    let db = stack.dir.path().join("gallery.db");
    let aside = stack.dir.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    let companions = |base: &std::path::Path| -> Vec<std::path::PathBuf> {
        ["", "-wal", "-shm"]
            .iter()
            .map(|suffix| std::path::PathBuf::from(format!("{}{suffix}", base.display())))
            .collect()
    };
    type Fault = (&'static str, Box<dyn Fn()>, Box<dyn Fn()>);
    let (db1, db2, db3, db4, aside1, aside2) = (
        db.clone(),
        db.clone(),
        db.clone(),
        db.clone(),
        aside.clone(),
        aside.clone(),
    );
    let companions2 = companions;
    let faults: Vec<Fault> = vec![
        (
            "removed",
            Box::new(move || {
                for file in companions(&db1) {
                    let name = file.file_name().unwrap().to_owned();
                    let _ = std::fs::rename(&file, aside1.join(name));
                }
            }),
            Box::new(move || {
                for file in companions2(&aside2.join("gallery.db")) {
                    let name = file.file_name().unwrap().to_owned();
                    let _ = std::fs::rename(&file, db2.with_file_name(name));
                }
            }),
        ),
        (
            "replaced with garbage",
            Box::new({
                let db = db3.clone();
                move || {
                    std::fs::hard_link(&db, db.with_extension("kept")).unwrap();
                    let garbage = db.with_extension("garbage");
                    std::fs::write(&garbage, "this is not a database ".repeat(500)).unwrap();
                    std::fs::rename(&garbage, &db).unwrap();
                }
            }),
            Box::new({
                let db = db3.clone();
                move || std::fs::rename(db.with_extension("kept"), &db).unwrap()
            }),
        ),
        (
            "made read-only",
            Box::new({
                let db = db4.clone();
                move || {
                    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap()
                }
            }),
            Box::new({
                let db = db4.clone();
                move || {
                    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap()
                }
            }),
        ),
    ];
    let quick = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let health = || {
        quick
            .get(stack.url("/api/health"))
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let mut acknowledged = Vec::new();
    for (name, break_it, mend_it) in faults {
        let posters = Posters::start(stack.url("/api/images.json"), 4);
        crate::helpers::wait_until(Duration::from_secs(10), "POSTs to flow", || {
            posters
                .acknowledged
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 200
        });
        let broken_at = Instant::now();
        break_it();
        crate::helpers::wait_until(Duration::from_secs(2), "/health to say 503", || {
            health() == 503
        });
        let detected = broken_at.elapsed();
        // Let the load run against the broken file for a while.
        let hold_until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < hold_until {
            assert_eq!(health(), 503, "{name}: /health while broken");
        }
        let mended_at = Instant::now();
        mend_it();
        crate::helpers::wait_until(Duration::from_secs(5), "the site to serve again", || {
            health() == 200
        });
        let back = mended_at.elapsed();
        let seen = posters.stop();
        // Nothing sent once /health said 503 was acknowledged before the mend.
        let detected_at = broken_at + detected;
        let while_broken: Vec<_> = seen
            .iter()
            .filter(|(sent, _, status, answered)| {
                *sent > detected_at && *answered < mended_at && *status == Some(200)
            })
            .collect();
        assert!(
            while_broken.is_empty(),
            "{name}: acknowledged while broken (detected after {detected:?}): {:?}",
            while_broken
                .iter()
                .map(|(sent, title, _, _)| (sent.duration_since(broken_at), title))
                .collect::<Vec<_>>()
        );
        let refused = seen
            .iter()
            .filter(|(sent, _, status, _)| *sent > broken_at && *status == Some(503))
            .count();
        let after: Vec<_> = seen
            .iter()
            .filter(|(sent, _, _, _)| *sent > mended_at + back)
            .collect();
        assert!(
            after.iter().all(|(_, _, status, _)| *status == Some(200)),
            "{name}: after the mend: {:?}",
            after
                .iter()
                .filter(|(_, _, s, _)| *s != Some(200))
                .take(3)
                .collect::<Vec<_>>()
        );
        acknowledged.extend(
            seen.iter()
                .filter(|(_, _, status, _)| *status == Some(200))
                .map(|(_, title, _, _)| title.clone()),
        );
        eprintln!(
            "database {name}: /health 503 after {detected:.0?}, {refused} POSTs refused with 503, serving again {back:.0?} after the mend; {} acknowledged in this round",
            seen.iter().filter(|(_, _, s, _)| *s == Some(200)).count()
        );
        for child in stack.state()["children"].as_array().unwrap() {
            assert_ne!(child["state"], "failed", "{name}: {child}");
        }
    }
    let stored = crate::helpers::load::assert_stored_once(&db, &acknowledged);
    eprintln!(
        "{} acknowledged POSTs all in the file at the path, once each ({stored} rows)",
        acknowledged.len()
    );
    assert!(stack.proc.output.contains("the database file was removed"));
}

/// `(real, effective, saved, filesystem)` uids of a process.
fn uids(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
    line.split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect()
}

#[test]
fn run_as_root_the_servers_run_as_nobody_and_a_restored_copy_is_made_theirs() {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::Uid::effective().is_root() {
        // Not root: nobody can be switched to, and the supervisor says so.
        let dir = Supervisor::temp_dir();
        let command = Supervisor::command(dir.path(), &["--user", "nobody"]);
        let (status, output) =
            crate::helpers::Proc::spawn("supervisor", command).finish(Duration::from_secs(10));
        assert_eq!(status.code(), Some(1), "{output}");
        assert!(
            output.contains("--user nobody needs the supervisor to run as root"),
            "{output}"
        );
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let nobody = nobody.uid.as_raw();
    let stack = Supervisor::start(&["--api-workers", "2"]);
    let mut servers = vec!["static".to_string()];
    servers.extend(stack.api_names());
    for name in &servers {
        let pid = stack.pid_of(name).unwrap();
        assert_eq!(uids(pid), vec![nobody; 4], "{name} (pid {pid})");
    }
    let nginx = stack.pid_of("nginx").unwrap();
    assert_eq!(uids(nginx)[1], 0, "nginx's master binds as root");
    assert!(
        stack
            .proc
            .output
            .text()
            .contains("the API and static servers run as nobody"),
        "{}",
        stack.proc.output.text()
    );
    let post = |title: &str| stack.post_image(title);
    assert_eq!(post("written by nobody"), 200);
    let db = stack.dir.path().join("gallery.db");
    assert_eq!(std::fs::metadata(&db).unwrap().uid(), nobody);

    // root restores a backup: a root-owned copy put in place of a lost file.
    let backup = stack.dir.path().join("backup.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
        .unwrap();
    drop(conn);
    assert_eq!(std::fs::metadata(&backup).unwrap().uid(), 0);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let health = || {
        client()
            .get(stack.url("/api/health"))
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    crate::helpers::wait_until(Duration::from_secs(2), "/health to say 503", || {
        health() == 503
    });
    std::fs::rename(&backup, &db).unwrap();
    crate::helpers::wait_until(Duration::from_secs(5), "writes to be taken again", || {
        post("after the restore") == 200
    });
    assert_eq!(std::fs::metadata(&db).unwrap().uid(), nobody);
    let images: Vec<serde_json::Value> = client()
        .get(stack.url("/api/images.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let titles: Vec<&str> = images
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    assert!(titles.contains(&"written by nobody"), "{titles:?}");
    assert_eq!(titles.last(), Some(&"after the restore"), "{titles:?}");
    assert!(
        stack.proc.output.text().contains("made nobody's"),
        "{}",
        stack.proc.output.text()
    );
}

/// Run as root, the supervisor holds the database as a connection would
/// (so its -wal and -shm stay while the servers' account could not make
/// them again); once the stack has stopped, the file alone is complete:
/// the last connection has checkpointed the WAL into it, as SQLite's last
/// connection always does.
#[test]
fn a_stopped_stack_leaves_a_database_file_complete_without_its_wal() {
    if !nix::unistd::Uid::effective().is_root() {
        // Not root: no hold; the workers' last connection checkpoints.
        return;
    }
    let stack = Supervisor::start(&["--api-workers", "2"]);
    for n in 0..5 {
        assert_eq!(stack.post_image(&format!("kept {n}")), 200);
    }
    let db = stack.dir.path().join("gallery.db");
    let wal = stack.dir.path().join("gallery.db-wal");
    assert!(wal.exists(), "the hold keeps -wal while the stack runs");
    let Supervisor { proc, dir, .. } = stack;
    proc.signal(nix::sys::signal::Signal::SIGTERM);
    let (status, output) = proc.finish(Duration::from_secs(20));
    assert!(status.success(), "{output}");
    assert!(!wal.exists(), "-wal is checkpointed and removed:\n{output}");
    // A copy of the file alone, as a backup would take it, has every row.
    let copy = dir.path().join("copy.db");
    std::fs::copy(&db, &copy).unwrap();
    let conn = rusqlite::Connection::open(&copy).unwrap();
    let kept: i64 = conn
        .query_row(
            "SELECT count(*) FROM images WHERE title LIKE 'kept %'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kept, 5);
}

#[test]
fn another_process_opening_and_closing_the_database_takes_nothing_from_the_stack() {
    // SQLite deletes -wal and -shm when the last connection closes; it knows
    // others are there by their locks, which a process loses if it ever
    // closes any descriptor of the file (as a header check would).
    let stack = Supervisor::start(&["--api-workers", "2"]);
    let db = stack.dir.path().join("gallery.db");
    let post = |title: &str| stack.post_image(title);
    assert_eq!(post("before"), 200);
    // Let every process run its file checks (each request, the supervisor's
    // watch every 500 ms) with connections open.
    for _ in 0..20 {
        client().get(stack.url("/api/images.json")).send().unwrap();
    }
    std::thread::sleep(Duration::from_millis(600)); // two watch ticks: pacing, not sync
    let companions = |suffix: &str| std::path::PathBuf::from(format!("{}{suffix}", db.display()));
    // Another program on the same file: Python's sqlite3, as a script or an
    // operator's backup would (the system's SQLite, not the tests' own).
    for _ in 0..3 {
        let script = "import sqlite3, sys\n\
                      c = sqlite3.connect(sys.argv[1])\n\
                      print(c.execute('SELECT count(*) FROM images').fetchone()[0])\n\
                      c.close()\n";
        let output = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&db)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        for suffix in ["-wal", "-shm"] {
            assert!(
                companions(suffix).exists(),
                "{suffix} was deleted under the stack"
            );
        }
    }
    for n in 0..10 {
        assert_eq!(post(&format!("after {n}")), 200);
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let titles: Vec<String> = conn
        .prepare("SELECT title FROM images ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(titles.len(), 3 + 1 + 10, "{titles:?}");
}

/// A worker whose connections opened while the database's `-shm` was not
/// yet its account's (root's, as when the supervisor creates the file and
/// hands it over a moment later) cannot write through them, ever. It must
/// answer 503 meanwhile, never a 500, and write again once the file is its
/// own, without a restart.
#[test]
fn a_worker_that_opened_before_the_handover_writes_once_the_files_are_its_own() {
    if !nix::unistd::Uid::effective().is_root() {
        // Not root: there is no other account to hand the files over to.
        return;
    }
    let dir = Supervisor::temp_dir();
    let db = dir.path().join("gallery.db");
    // Created, migrated and seeded by a worker of root's, then left.
    drop(crate::helpers::ApiServer::start(&db, "api-root", &[]));
    // Root holds it open (so -wal and -shm stay), as the supervisor does.
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder
        .query_row("SELECT count(*) FROM images", [], |row| {
            row.get::<_, i64>(0)
        })
        .unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let shm = dir.path().join("gallery.db-shm");
    for file in [db.clone(), dir.path().join("gallery.db-wal")] {
        std::os::unix::fs::chown(&file, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw()))
            .unwrap();
    }
    std::fs::set_permissions(&shm, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(bin("api-server"))
        .args([
            "--port",
            "0",
            "--name",
            "api-1",
            "--existing-database",
            "--database",
        ])
        .arg(&db)
        .env_remove("DATABASE_URL");
    let mut worker = crate::helpers::Proc::spawn("api-1", command);
    let port = worker.wait_for_port();
    let post = |title: &str| {
        client()
            .post(format!("http://127.0.0.1:{port}/images.json"))
            .body(format!(
                r#"{{"title": "{title}", "alt_text": "", "url": "/x"}}"#
            ))
            .send()
            .unwrap()
    };
    // Its connections are open (a read), while -shm is still root's.
    assert_eq!(
        client()
            .get(format!("http://127.0.0.1:{port}/images.json"))
            .send()
            .unwrap()
            .status(),
        200
    );
    let refused = post("before the handover");
    assert_eq!(refused.status(), 503, "busy, not broken");
    assert!(refused.headers().contains_key("retry-after"));

    std::os::unix::fs::chown(&shm, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw())).unwrap();
    for title in ["after the handover", "and again"] {
        let response = post(title);
        assert_eq!(response.status(), 200, "{title}: {:?}", response.text());
    }
    let stored: i64 = holder
        .query_row(
            "SELECT count(*) FROM images WHERE title LIKE '%handover' OR title = 'and again'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(
        stored, 2,
        "the refused POST stored nothing; the others once"
    );
    drop(worker);
}
