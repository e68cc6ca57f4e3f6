//! SPEC §10 "Many hosts": `--role workers|front|all`, `--upstream
//! HOST:PORT[,weight=N]` and `--lb-method`, with the real binaries and the
//! real nginx. Two "hosts" are two loopback addresses of this machine
//! (127.0.0.1 and 127.0.0.2), each with its own supervisor and run
//! directory, sharing one database.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::helpers::database::{Backend, TestDatabase};
use crate::helpers::load::{Load, Mix};
use crate::helpers::supervisor::Supervisor;
use crate::helpers::{Proc, bin, client, heavy, is_alive, wait_for, wait_until};

/// The one database every host's workers share: one PostgreSQL, as real
/// hosts would share it (a throwaway cluster, `helpers::postgres`).
fn shared_database() -> TestDatabase {
    TestDatabase::new(Backend::Postgres)
}

/// Starts `gallery-supervisor --role workers` (on 127.0.0.2, names `b-…`)
/// and waits for its "gallery workers are up" line. It needs neither nginx
/// nor the assets: both flags point nowhere.
fn start_workers(extra: &[&str]) -> Supervisor {
    let dir = Supervisor::temp_dir();
    let mut args = vec![
        "--role",
        "workers",
        "--bind",
        "127.0.0.2",
        "--name-prefix",
        "b-",
        "--nginx",
        "/nonexistent/sbin/nginx",
        "--assets",
        "/nonexistent/assets",
    ];
    args.extend(extra);
    let mut proc = Proc::spawn("host-b", Supervisor::command(dir.path(), &args));
    let output = proc.output.clone();
    wait_until(
        Duration::from_secs(30),
        "host B's workers to come up",
        || {
            if let Some(status) = proc.child.try_wait().unwrap() {
                panic!(
                    "host B's supervisor exited with {status}:\n{}",
                    output.text()
                );
            }
            output.contains("gallery workers are up: b-api-1 on 127.0.0.2:")
        },
    );
    Supervisor {
        proc,
        dir,
        front_port: 0,
    }
}

/// `--upstream` flags for every worker of `host` (a `--role workers` stack).
fn upstreams_of(host: &Supervisor) -> Vec<String> {
    host.api_children()
        .iter()
        .flat_map(|c| ["--upstream".to_string(), format!("127.0.0.2:{}", c["port"])])
        .collect()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// How long each connection of [`answers_by_worker`] keeps sending.
#[derive(Clone, Copy)]
enum Each {
    Requests(usize),
    For(Duration),
}

/// How many answers to GETs of `url` came from each worker (X-Worker),
/// from `connections` clients each sending its next request when the last
/// is answered; every answer must be a 200.
fn answers_by_worker(url: &str, connections: usize, each: Each) -> BTreeMap<String, usize> {
    let started = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let url = url.to_string();
            std::thread::spawn(move || {
                let client = client();
                let mut seen = BTreeMap::new();
                let mut sent = 0;
                while match each {
                    Each::Requests(n) => sent < n,
                    Each::For(run) => started.elapsed() < run,
                } {
                    sent += 1;
                    let response = client.get(&url).send().unwrap();
                    assert_eq!(response.status(), 200, "{url}");
                    let worker = response.headers()["x-worker"].to_str().unwrap().to_string();
                    *seen.entry(worker).or_insert(0usize) += 1;
                }
                seen
            })
        })
        .collect();
    let mut total = BTreeMap::new();
    for thread in threads {
        for (worker, n) in thread.join().unwrap() {
            *total.entry(worker).or_insert(0) += n;
        }
    }
    total
}

#[test]
fn two_hosts_share_the_load_and_a_dead_host_costs_no_get() {
    let _heavy = heavy();
    let shared = shared_database();
    let database = shared.arg();
    let host_b = start_workers(&["--api-workers", "2", "--database", &database]);
    assert_eq!(host_b.api_names(), ["b-api-1", "b-api-2"]);
    assert!(
        !host_b.run_dir().join("nginx.conf").exists(),
        "no nginx on B"
    );
    let b_pids: Vec<i32> = host_b.pids().values().flatten().copied().collect();
    assert_eq!(b_pids.len(), 2, "only the workers run on B");
    let upstreams = upstreams_of(&host_b);

    // Host A: the whole stack, its one worker beside B's two.
    let mut a_args = vec!["--api-workers", "1", "--database", &database];
    a_args.extend(strs(&upstreams));
    let host_a = Supervisor::start(&a_args);
    // A front with no worker of its own, over B's two (and no database).
    let mut c_args = vec!["--role", "front"];
    c_args.extend(strs(&upstreams));
    let front = Supervisor::start(&c_args);
    assert!(!front.dir.path().join("gallery.db").exists());

    // state.json and status list B's workers as remote, unsupervised.
    let remote: Vec<Value> = host_a.state()["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["remote"] == true)
        .cloned()
        .collect();
    assert_eq!(remote.len(), 2, "{remote:?}");
    for (i, entry) in remote.iter().enumerate() {
        assert_eq!(entry["name"], format!("remote-{}", i + 1));
        assert_eq!(entry["pid"], Value::Null);
        assert_eq!(entry["state"], "remote");
        assert_eq!(entry["address"], upstreams[2 * i + 1]);
        assert_eq!(entry["weight"], 1);
    }
    let status = host_a.control(&["status"], Duration::from_secs(10));
    status.expect_code(0);
    assert!(
        status.stdout.contains("not supervised here") && status.stdout.contains(&upstreams[1]),
        "{}",
        status.stdout
    );
    let status = host_b.control(&["status"], Duration::from_secs(10));
    status.expect_code(0);
    assert!(status.stdout.contains("\nb-api-2 "), "{}", status.stdout);
    // /metrics still passes promtool with remote entries in the state.
    let metrics = client()
        .get(host_a.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    crate::admin::promtool_accepts(&metrics);
    assert!(
        metrics.contains(&format!(
            "gallery_remote_worker_weight{{worker=\"remote-2\",address=\"{}\"}} 1",
            upstreams[3]
        )),
        "{metrics}"
    );
    assert!(
        !metrics.contains("gallery_child_up{child=\"remote-1\""),
        "{metrics}"
    );

    // One database: a POST through the front (to B's workers) is read by
    // A's own worker, asked directly.
    assert_eq!(front.post_image("Written on B"), 200);
    let list: Value = client()
        .get(format!(
            "http://127.0.0.1:{}/images.json",
            host_a.port_of("api-1")
        ))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(list.to_string().contains("Written on B"), "{list}");

    // Under a GET load through A, all three workers answer.
    let load = Load::start(&host_a, 4, Mix::Gets);
    let everyone: BTreeSet<String> = ["api-1", "b-api-1", "b-api-2"].map(String::from).into();
    host_a.workers_answering(&everyone, Duration::from_secs(10));
    let b_only: BTreeSet<String> = ["b-api-1", "b-api-2"].map(String::from).into();
    front.workers_answering(&b_only, Duration::from_secs(10));

    wait_until(Duration::from_secs(10), "the load to get going", || {
        load.done() >= 500
    });
    // Host B dies whole: its supervisor SIGKILLed, its workers with it.
    let before = load.done();
    let killed_at = load.elapsed();
    host_b.proc.signal(Signal::SIGKILL);
    wait_until(
        Duration::from_secs(10),
        "B's workers to die with it",
        || b_pids.iter().all(|&pid| !is_alive(pid)),
    );
    // A goes on serving from its own worker; give it a good while of load.
    wait_until(
        Duration::from_secs(30),
        "1,000 more requests after B died",
        || load.done() >= before + 1000 && load.elapsed() > killed_at + Duration::from_secs(2),
    );
    let report = load.stop();
    eprintln!(
        "two hosts, B SIGKILLed at {killed_at:.1?}: {}",
        report.summary()
    );
    report.assert_no_failures();
    let after = answers_by_worker(&host_a.url("/api/images.json"), 2, Each::Requests(20));
    assert_eq!(after.keys().collect::<Vec<_>>(), ["api-1"], "{after:?}");

    // With every worker gone, the front answers nginx's own JSON 502, and
    // its page still loads.
    let response = wait_for(Duration::from_secs(10), "the front's 502", || {
        let response = client().get(front.url("/api/images.json")).send().ok()?;
        (response.status() == 502).then_some(response)
    });
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("no API worker"),
        "{body}"
    );
    assert_eq!(front.get_status("/"), 200);
}

#[test]
fn a_workers_host_scales_restarts_and_stops_without_nginx() {
    let shared = shared_database();
    let database = shared.arg();
    let mut host = start_workers(&["--api-workers", "1", "--database", &database]);
    let output = host.proc.output.text();
    assert!(
        output.contains("the API workers run as") || output.contains("warning: the API workers"),
        "{output}"
    );
    let scaled = host.control(&["scale", "2"], Duration::from_secs(30));
    scaled.expect_code(0);
    assert!(scaled.stdout.contains("added b-api-2"), "{}", scaled.stdout);
    let port = host.port_of("b-api-2");
    let health: Value = client()
        .get(format!("http://127.0.0.2:{port}/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["worker"], "b-api-2");
    let old = host.pid_of("b-api-1").unwrap();
    host.control(&["restart", "b-api-1"], Duration::from_secs(30))
        .expect_code(0);
    assert_ne!(host.pid_of("b-api-1"), Some(old));
    host.proc.signal(Signal::SIGTERM);
    let status = host.proc.wait_timeout(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{}", host.proc.output.text());
}

/// Runs the supervisor expecting a start refused at once; its error line.
fn refused(extra: &[&str]) -> String {
    let dir = Supervisor::temp_dir();
    crate::supervisor_startup::fails_command(Supervisor::command(dir.path(), extra))
}

#[test]
fn a_front_without_upstreams_is_refused_with_one_line() {
    let line = refused(&["--role", "front"]);
    assert!(
        line.contains("--role front runs no API workers") && line.contains("--upstream HOST:PORT"),
        "{line}"
    );
    let line = refused(&["--role", "workers", "--upstream", "127.0.0.2:9000"]);
    assert!(line.contains("--role workers runs no nginx"), "{line}");
    // A malformed --upstream is clap's usage error, naming the flag.
    let output = Command::new(bin("gallery-supervisor"))
        .args(["--upstream", "127.0.0.2:9000,weight=0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--upstream")
            && stderr.contains("weight \"0\" is not a number from 1 to 1000"),
        "{stderr}"
    );
}

const METHODS: [&str; 3] = ["round-robin", "least-conn", "ip-hash"];

/// `nginx -t` on `config`, in a prefix of its own.
fn nginx_accepts(config: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
    let output = Command::new(crate::helpers::nginx())
        .args(["-t", "-e", "stderr", "-c", "nginx.conf", "-p"])
        .arg(format!("{}/", dir.path().display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.contains("test is successful"),
        "{stderr}\n{}",
        String::from_utf8_lossy(config)
    );
}

#[test]
fn every_lb_method_passes_nginx_t_and_serves() {
    for method in METHODS {
        // Local and remote workers, weights, a host name; a front; a
        // PostgreSQL database (balanced POSTs).
        for extra in [
            &[][..],
            &[
                "--upstream",
                "127.0.0.2:9001",
                "--upstream",
                "localhost:9002,weight=7",
            ],
            &["--role", "front", "--upstream", "[::1]:9003,weight=2"],
            &["--database", "postgres://gallery@db.invalid/gallery"],
        ] {
            let output = Command::new(bin("gallery-supervisor"))
                .args(["nginx-config", "--lb-method", method])
                .args(extra)
                .env_remove("DATABASE_URL")
                .output()
                .unwrap();
            assert!(output.status.success(), "{method} {extra:?}: {output:?}");
            let text = String::from_utf8_lossy(&output.stdout);
            let directive = match method {
                "least-conn" => Some("least_conn;"),
                "ip-hash" => Some("ip_hash;"),
                _ => None,
            };
            let per_upstream = if extra.is_empty() { 1 } else { 2 };
            match directive {
                Some(directive) => assert_eq!(
                    text.matches(directive).count(),
                    per_upstream,
                    "{method} {extra:?}"
                ),
                None => assert!(!text.contains("least_conn") && !text.contains("ip_hash;")),
            }
            nginx_accepts(&output.stdout);
        }
        // And a stack runs with it: GETs and a POST through nginx.
        let stack = Supervisor::start(&["--api-workers", "2", "--lb-method", method]);
        // nginx refuses backup servers beside ip_hash (the POSTs' upstream
        // has one writer and no method, so it keeps its backups).
        let conf = stack.nginx_conf();
        let reads = conf.split("upstream gallery_api {").nth(1).unwrap();
        let reads = &reads[..reads.find('}').unwrap()];
        assert_eq!(
            reads.contains(" backup max_fails=0;"),
            method != "ip-hash",
            "{method}: backups\n{conf}"
        );
        let seen = answers_by_worker(&stack.url("/api/images.json"), 2, Each::Requests(10));
        assert_eq!(seen.values().sum::<usize>(), 20, "{method}: {seen:?}");
        assert_eq!(stack.post_image(&format!("Balanced by {method}")), 200);
        eprintln!("{method}: GETs answered by {seen:?}");
    }
}

/// A test-owned upstream that answers every request with `[]` and
/// `X-Worker: slow`, but only after holding it for `hold`; keep-alive, as
/// nginx's upstream connections are.
struct SlowUpstream {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl SlowUpstream {
    fn start(hold: Duration) -> SlowUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let stopping = stopping.clone();
                std::thread::spawn(move || serve_slowly(stream, hold, &stopping));
            }
        });
        SlowUpstream { port, stop }
    }
}

impl Drop for SlowUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_slowly(mut stream: TcpStream, hold: Duration, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut pending = Vec::new();
    let mut buffer = [0; 4096];
    while !stop.load(Ordering::SeqCst) {
        // One response per complete request head (nginx sends GETs without a body).
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            std::thread::sleep(hold);
            let response = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                            X-Worker: slow\r\nContent-Length: 3\r\n\r\n[]\n";
            if stream.write_all(response.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

#[test]
fn least_conn_sends_fewer_requests_to_a_worker_that_holds_them() {
    let _heavy = heavy();
    // Held long next to a fast worker's few milliseconds, so that even a
    // loaded machine's slower answers keep the two far apart.
    let slow = SlowUpstream::start(Duration::from_millis(600));
    let upstream = format!("127.0.0.1:{}", slow.port);
    // The slow worker's requests relative to the mean of the two fast ones.
    let mut share = BTreeMap::new();
    for method in ["round-robin", "least-conn"] {
        let stack = Supervisor::start(&[
            "--api-workers",
            "2",
            "--lb-method",
            method,
            "--upstream",
            &upstream,
        ]);
        let seen = answers_by_worker(
            &stack.url("/api/images.json"),
            8,
            Each::For(Duration::from_secs(3)),
        );
        let count = |name: &str| seen.get(name).copied().unwrap_or(0) as f64;
        let fast = (count("api-1") + count("api-2")) / 2.0;
        assert!(fast > 0.0, "{method}: {seen:?}");
        let ratio = count("slow") / fast;
        eprintln!("{method}: requests per worker {seen:?}; slow/fast = {ratio:.3}");
        share.insert(method, ratio);
    }
    // Round-robin gives the slow worker its turn whatever it holds;
    // least_conn passes it over while it holds more than the others.
    assert!(share["round-robin"] > 0.5, "{share:?}");
    assert!(share["least-conn"] < 0.25, "{share:?}");
    assert!(
        share["least-conn"] * 4.0 < share["round-robin"],
        "{share:?}"
    );
}
