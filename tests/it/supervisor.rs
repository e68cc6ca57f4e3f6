//! `gallery-supervisor` end to end (SPEC §6, §7): the real binaries, a real
//! nginx, a temp database, free ports.
//!
//! The tests of the §3 contract through nginx run on each backend
//! (`supervisor::sqlite::*`, `supervisor::postgres::*`): the seeded list and
//! load balancing, nginx's own JSON errors beside the workers', a POST
//! stored once, large bodies, and POSTs through worker kills. The others are
//! about processes and signals, whatever the workers store in, and run on
//! the default SQLite file only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::helpers::database::{Backend, TestDatabase, on_both_backends};
use crate::helpers::supervisor::Supervisor;
use crate::helpers::{
    ORIGINAL_POST, client, get_json, is_alive, post_form, post_in_flight, wait_until,
};

on_both_backends! {
    the_stack_serves_the_page_and_the_api_and_announces_every_process,
    nginx_answers_its_own_errors_under_api_as_json,
    a_post_through_nginx_is_stored_once,
    large_bodies_pass_nginx_even_when_its_workers_cannot_reach_the_run_directory,
    posts_through_kills_are_never_lost_once_acknowledged_and_never_replayed,
}

fn kill(pid: i32, signal: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
}

/// Waits until `name` runs under a pid other than `old` and answers; returns the time taken.
fn wait_for_replacement(stack: &Supervisor, name: &str, old: i32, killed_at: Instant) -> Duration {
    let quick = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        &format!("{name} to come back"),
        || stack.is_replaced(name, old, &quick),
    );
    killed_at.elapsed()
}

fn the_stack_serves_the_page_and_the_api_and_announces_every_process(backend: Backend) {
    let db = TestDatabase::new(backend);
    let stack = Supervisor::start_on(&db, &[]);
    let page = client().get(stack.url("/")).send().unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().unwrap().contains("script.js"));
    let images: Vec<Value> = get_json(&stack.url("/api/images.json"));
    assert_eq!(images.len(), 3);
    let svg = client().get(stack.url("/images/cat.svg")).send().unwrap();
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    // state.json is written off the event loop: it may trail the log line.
    wait_until(Duration::from_secs(5), "state.json to say running", || {
        ["static", "api-1", "api-2", "api-3", "nginx"]
            .iter()
            .all(|name| stack.child(name)["state"] == "running")
    });
    let output = stack.proc.output.text();
    for name in ["static", "api-1", "api-2", "api-3", "nginx"] {
        let child = stack.child(name);
        let (pid, port) = (
            child["pid"].as_i64().unwrap(),
            child["port"].as_i64().unwrap(),
        );
        let line = format!("{name:<10}  pid {pid:>7}  port {port}");
        assert!(output.contains(&line), "{line:?} in\n{output}");
        assert_eq!(child["state"], "running");
    }
    // Load balancing: three workers answer in turn.
    let workers: std::collections::HashSet<String> = (0..12)
        .map(|_| {
            let r = client().get(stack.url("/api/health")).send().unwrap();
            r.headers()["x-worker"].to_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(workers.len(), 3, "{workers:?}");
}

#[test]
fn killed_worker_is_restarted_without_failed_requests() {
    let _heavy = crate::helpers::heavy();
    const REQUESTS: usize = 20_000;
    const CONNECTIONS: usize = 25;
    const KILLS: usize = 5;
    let stack = Arc::new(Supervisor::start(&[]));
    let sent = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (sent, url) = (sent.clone(), stack.url("/api/images.json"));
            std::thread::spawn(move || {
                let client = client();
                let mut failures = Vec::new();
                while sent.fetch_add(1, Ordering::SeqCst) < REQUESTS {
                    match client.get(&url).send() {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes();
                        }
                        Ok(r) => failures.push(format!("status {}", r.status())),
                        Err(e) => failures.push(format!("error {e}")),
                    }
                }
                failures
            })
        })
        .collect();
    let mut recoveries = Vec::new();
    for k in 0..KILLS {
        let target = (k + 1) * REQUESTS / (KILLS + 2);
        wait_until(Duration::from_secs(120), "requests to progress", || {
            sent.load(Ordering::SeqCst) >= target
        });
        let name = format!("api-{}", k % 3 + 1);
        let old = stack.pid_of(&name).unwrap();
        let killed_at = Instant::now();
        kill(old, Signal::SIGKILL);
        let took = wait_for_replacement(&stack, &name, old, killed_at);
        assert!(
            took < Duration::from_secs(1),
            "{name} took {took:?} to come back"
        );
        recoveries.push((name, took));
    }
    let mut failures = Vec::new();
    for thread in clients {
        failures.extend(thread.join().unwrap());
    }
    done.store(true, Ordering::SeqCst);
    let elapsed = started.elapsed();
    eprintln!(
        "{REQUESTS} GETs through nginx, {CONNECTIONS} connections, {KILLS} SIGKILLs in {elapsed:.1?}: {} failed; recoveries: {recoveries:?}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        failures.first()
    );
    for (name, _) in &recoveries {
        assert!(stack.child(name)["restarts"].as_u64().unwrap() >= 1);
    }
    assert!(stack.proc.output.contains("exited: signal 9 (SIGKILL)"));
}

#[test]
fn sigterm_stops_the_stack_with_exit_0_and_leaves_no_child() {
    let mut stack = Supervisor::start(&["--grace-period", "5"]);
    let pids = stack.all_pids();
    assert!(pids.len() >= 6, "children and nginx workers: {pids:?}");
    let signalled = Instant::now();
    stack.proc.signal(Signal::SIGTERM);
    let status = stack
        .proc
        .wait_timeout(Duration::from_secs(7))
        .expect("exit within the grace period");
    assert_eq!(status.code(), Some(0), "{}", stack.proc.output.text());
    assert!(signalled.elapsed() < Duration::from_secs(5));
    let left: Vec<i32> = pids.into_iter().filter(|&p| is_alive(p)).collect();
    assert!(left.is_empty(), "still running: {left:?}");
    assert!(!stack.run_dir().join("state.json").exists());
    let output = stack.proc.output.text();
    let stopped = |name: &str| {
        output
            .lines()
            .position(|l| l.contains(&format!("| {name} (pid")) && l.contains(") stopped: "))
            .unwrap_or_else(|| panic!("{name} stop logged in:\n{output}"))
    };
    let (nginx_stop, api_stop) = (stopped("nginx"), stopped("api-1"));
    assert!(nginx_stop < api_stop, "nginx stops first:\n{output}");
}

#[test]
fn a_sigkilled_supervisor_leaves_no_child_behind() {
    let mut stack = Supervisor::start(&[]);
    let pids = stack.all_pids();
    stack.proc.signal(Signal::SIGKILL);
    stack
        .proc
        .wait_timeout(Duration::from_secs(2))
        .expect("the supervisor died");
    let deadline = Instant::now() + Duration::from_secs(2);
    wait_until(Duration::from_secs(2), "every child to die", || {
        pids.iter().all(|&p| !is_alive(p))
    });
    assert!(Instant::now() <= deadline);
}

#[test]
fn killed_static_server_and_nginx_are_restarted() {
    let stack = Supervisor::start(&[]);
    for name in ["static", "nginx"] {
        let old = stack.pid_of(name).unwrap();
        let old_group = crate::helpers::group_members(old);
        kill(old, Signal::SIGKILL);
        let took = wait_for_replacement(&stack, name, old, Instant::now());
        eprintln!("{name} back in {took:?}");
        assert_eq!(
            client().get(stack.url("/")).send().unwrap().status(),
            200,
            "{name}"
        );
        assert_eq!(stack.get_status("/api/health"), 200);
        wait_until(
            Duration::from_secs(2),
            "the old process group to be gone",
            || old_group.iter().all(|&p| !is_alive(p)),
        );
        assert_eq!(stack.child(name)["restarts"], 1);
        assert_eq!(stack.child(name)["last_exit"], "signal 9 (SIGKILL)");
    }
}

#[test]
fn a_worker_that_crashes_on_start_is_marked_failed_and_the_site_keeps_serving() {
    let dir = Supervisor::temp_dir();
    let wrapper = dir.path().join("flaky-api-server");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$*\" in *'--name api-2 '*) echo 'api-2: simulated crash' >&2; exit 3;; esac\nexec {} \"$@\"\n",
            crate::helpers::bin("api-server").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrapper = wrapper.to_str().unwrap().to_string();
    let stack = Supervisor::start_in(dir, &["--api-server", &wrapper]);
    let failed = stack.child("api-2");
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["last_exit"], "exit code 3");
    assert_eq!(
        failed["restarts"], 4,
        "restarted until the limit of 5 exits"
    );
    assert!(
        stack
            .proc
            .output
            .contains("api-2 exited 5 times within 30 s: marked failed")
    );
    // Its socket is closed, so nginx skips it without waiting.
    let port = failed["port"].as_u64().unwrap() as u16;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let mut seen = std::collections::HashSet::new();
    for _ in 0..30 {
        let response = client().get(stack.url("/api/images.json")).send().unwrap();
        assert_eq!(response.status(), 200);
        seen.insert(response.headers()["x-worker"].to_str().unwrap().to_string());
    }
    assert_eq!(seen, ["api-1".to_string(), "api-3".to_string()].into());
}

#[test]
fn status_prints_a_table_and_the_raw_state() {
    let stack = Supervisor::start(&["--api-workers", "2"]);
    let run = |args: &[&str]| {
        let output = std::process::Command::new(crate::helpers::bin("gallery-supervisor"))
            .current_dir(stack.dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let table = run(&["status"]);
    for name in ["static", "api-1", "api-2", "nginx"] {
        let pid = stack.pid_of(name).unwrap().to_string();
        let row = table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(row.contains(&pid) && row.contains("running"), "{row}");
    }
    for args in [
        &["status", "--json"][..],
        &["--run-dir", ".gallery", "status", "--json"],
        &["status", "--json", "--run-dir", ".gallery"],
    ] {
        let state: Value = serde_json::from_str(&run(args)).unwrap();
        assert_eq!(state["supervisor_pid"], stack.proc.pid());
        let names: Vec<&str> = state["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["static", "api-1", "api-2", "nginx"]);
        // The §6 shape, plus the §9 additions (uptime and health).
        let child = state["children"][1].as_object().unwrap();
        for key in [
            "name",
            "role",
            "pid",
            "port",
            "state",
            "restarts",
            "last_exit",
            "started_at",
            "health",
        ] {
            assert!(child.contains_key(key), "{key} in {child:?}");
        }
    }
}

fn nginx_answers_its_own_errors_under_api_as_json(backend: Backend) {
    let db = TestDatabase::new(backend);
    let stack = Supervisor::start_on(&db, &["--api-workers", "1"]);
    let big = format!(
        r#"{{"title": "t", "alt_text": "a", "url": "/x", "pad": "{}"}}"#,
        "p".repeat(70_000)
    );
    let response = client()
        .post(stack.url("/api/images.json"))
        .body(big)
        .send()
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().unwrap();
    assert!(body["error"].as_str().unwrap().contains("64 KiB"));
    // A worker's own errors pass through untouched.
    let response = client()
        .get(stack.url("/api/images.json?indent=x"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.headers().get("x-worker").is_some());
    assert!(
        response
            .headers()
            .get("server")
            .is_none_or(|s| s == "nginx"),
        "server_tokens off"
    );
}

fn a_post_through_nginx_is_stored_once(backend: Backend) {
    let db = TestDatabase::new(backend);
    let stack = Supervisor::start_on(&db, &[]);
    let response = post_form(&stack.url("/api/images.json?indent=2"), ORIGINAL_POST);
    assert_eq!(response.status(), 200);
    let stored: Value = response.json().unwrap();
    let images: Vec<Value> = get_json(&stack.url("/api/images.json"));
    assert_eq!(images.len(), 4);
    assert_eq!(images.last(), Some(&stored));
    assert_eq!(db.count(), 4);
}

#[test]
fn a_second_signal_stops_at_once() {
    let mut stack = Supervisor::start(&["--api-workers", "1", "--grace-period", "30"]);
    let pids = stack.all_pids();
    // Keep a POST in flight (waiting on a database lock) so the graceful stop
    // has something to wait for.
    let api_port = stack.child("api-1")["port"].as_u64().unwrap() as u16;
    let db = stack.dir.path().join("gallery.db");
    let (holder, in_flight) = post_in_flight(&db, stack.url("/api/images.json"), api_port);
    stack.proc.signal(Signal::SIGTERM);
    let output = stack.proc.output.clone();
    wait_until(Duration::from_secs(5), "the graceful stop to begin", || {
        output.contains("SIGTERM received")
    });
    let second = Instant::now();
    stack.proc.signal(Signal::SIGINT);
    let status = stack
        .proc
        .wait_timeout(Duration::from_secs(5))
        .expect("stopped at once");
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "{:?}",
        second.elapsed()
    );
    assert_eq!(status.code(), Some(1));
    assert!(output.contains("stopped at once on a second signal"));
    wait_until(Duration::from_secs(2), "every child to be gone", || {
        pids.iter().all(|&p| !is_alive(p))
    });
    drop(holder);
    let _ = in_flight.join();
}

fn large_bodies_pass_nginx_even_when_its_workers_cannot_reach_the_run_directory(backend: Backend) {
    // A private (0700) run directory: when the tests run as root, nginx's
    // workers run as an unprivileged user that cannot enter it, so nothing
    // may depend on nginx's temp files.
    let private = tempfile::tempdir().unwrap();
    let run_dir = private.path().join("run");
    let db = TestDatabase::new(backend);
    let stack = Supervisor::start_on(
        &db,
        &["--api-workers", "1", "--run-dir", run_dir.to_str().unwrap()],
    );
    let alt_text = "a".repeat(1000);
    for n in 0..40 {
        let body = serde_json::json!({
            "title": format!("image {n}"), "alt_text": alt_text, "url": "/images/cat.svg",
            "pad": "p".repeat(50_000),
        });
        let response = post_form(&stack.url("/api/images.json"), &body.to_string());
        assert_eq!(response.status(), 200, "POST {n}");
    }
    let response = client()
        .get(stack.url("/api/images.json?indent=10"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let images: Vec<Value> = response.json().unwrap();
    assert_eq!(images.len(), 43);
    let output = stack.proc.output.text();
    assert!(
        !output.contains("temporary file"),
        "nginx used a temp file:\n{output}"
    );
}

fn posts_through_kills_are_never_lost_once_acknowledged_and_never_replayed(backend: Backend) {
    let _heavy = crate::helpers::heavy();
    const POSTS: usize = 1500;
    let db = TestDatabase::new(backend);
    let stack = Arc::new(Supervisor::start_on(&db, &[]));
    let next = Arc::new(AtomicUsize::new(0));
    let posters: Vec<_> = (0..8)
        .map(|_| {
            let (next, url) = (next.clone(), stack.url("/api/images.json"));
            std::thread::spawn(move || {
                let client = client();
                let (mut acknowledged, mut refused) = (Vec::new(), Vec::new());
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= POSTS {
                        break (acknowledged, refused);
                    }
                    let body = format!(r#"{{"title": "post {n}", "alt_text": "", "url": "/p"}}"#);
                    match client.post(&url).body(body).send() {
                        Ok(r) if r.status() == 200 => acknowledged.push(n),
                        Ok(r) => refused.push((n, r.status().as_u16())),
                        Err(e) => panic!("transport error through nginx: {e}"),
                    }
                }
            })
        })
        .collect();
    for k in 0..3 {
        wait_until(Duration::from_secs(60), "posts to progress", || {
            next.load(Ordering::SeqCst) >= (k + 1) * POSTS / 4
        });
        let name = format!("api-{}", k + 1);
        let old = stack.pid_of(&name).unwrap();
        kill(old, Signal::SIGKILL);
        wait_for_replacement(&stack, &name, old, Instant::now());
    }
    let (mut acknowledged, mut refused) = (Vec::new(), Vec::new());
    for poster in posters {
        let (a, r) = poster.join().unwrap();
        acknowledged.extend(a);
        refused.extend(r);
    }
    let stored = db.titles();
    for n in &acknowledged {
        assert_eq!(
            stored.get(&format!("post {n}")),
            Some(&1),
            "acknowledged post {n}"
        );
    }
    assert!(
        stored.values().all(|&count| count == 1),
        "a POST was stored twice"
    );
    assert!(
        refused.iter().all(|(_, status)| *status == 502),
        "{refused:?}"
    );
    eprintln!(
        "{POSTS} POSTs through nginx with 3 worker kills: {} acknowledged and stored once, {} answered 502 (in flight on a killed worker, not replayed)",
        acknowledged.len(),
        refused.len()
    );
}

/// The threads of process `pid` that serve requests: tokio's runtime
/// workers (a current-thread runtime serves on its main thread and has
/// none). Its blocking pool's threads bear the same name, so this counts
/// right only in a process that has used none yet: a static server that has
/// answered files from memory.
fn runtime_threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "tokio-rt-worker")
        .count()
}

#[test]
fn the_servers_share_the_cores_between_them() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let stack = Supervisor::start(&["--api-workers", "3"]);
    for path in ["/api/images.json", "/"] {
        let response = client().get(stack.url(path)).send().unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    // The static server and three workers: the cores shared out, at least
    // one thread each.
    let share = (cores / 4).max(1);
    for name in ["static", "api-1", "api-2", "api-3"] {
        let pid = stack.pid_of(name).unwrap();
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let argv: Vec<&[u8]> = argv.split(|&b| b == 0).collect();
        let threads = argv
            .iter()
            .position(|a| *a == b"--threads")
            .map(|i| argv[i + 1]);
        assert_eq!(
            threads,
            Some(share.to_string().as_bytes()),
            "{name} on {cores} cores"
        );
    }
    // One thread is a current-thread runtime: no runtime worker threads.
    let expected = if share == 1 { 0 } else { share };
    assert_eq!(runtime_threads(stack.pid_of("static").unwrap()), expected);
    // Alone, a server takes what it is told; by default one per core.
    let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    for (threads, expected) in [("1", 0), ("2", 2), ("0", cores)] {
        let mut command = std::process::Command::new(crate::helpers::bin("static-server"));
        command
            .args(["--port", "0", "--threads", threads])
            .arg("--assets")
            .arg(&assets);
        let mut server = crate::helpers::Proc::spawn("static", command);
        let port = server.wait_for_port();
        for _ in 0..2 {
            let url = format!("http://127.0.0.1:{port}/");
            assert_eq!(client().get(url).send().unwrap().status(), 200);
        }
        assert_eq!(
            runtime_threads(server.pid()),
            expected,
            "--threads {threads}"
        );
    }
}
