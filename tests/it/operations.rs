//! Day-two operations end to end (SPEC §9, and §6 on restarts and output):
//! `reload`, `restart`, `scale` and `stop` over the control socket, the
//! signals that do the same, the health-check watchdog, the cool-down retry
//! of a failed child, and a supervisor that is stalled or paused — each
//! under load where it matters, counting every failed request.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::helpers::load::{Load, Mix, Retry, assert_stored_once};
use crate::helpers::supervisor::{
    Supervisor, api_names_in_status, quick_client, read_state, run_control,
};
use crate::helpers::{XorShift, bin, client, heavy, is_alive, wait_for, wait_until};

/// Connections of the load in every load test.
const CONNECTIONS: usize = 25;
/// The longest a control command may take (a rollout drains each child).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// Slack for state.json to catch up once a command has returned.
const SETTLE: Duration = Duration::from_secs(2);

fn kill(pid: i32, signal: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
}

/// Sends SIGCONT on drop, so a stopped process never outlives a failed test
/// in the stopped state (it would hold its port and confuse the next one).
struct ContinueOnDrop(i32);

impl Drop for ContinueOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

/// Sleeps until `at`: only for fault durations and measurement windows,
/// never to wait for something to happen.
fn sleep_until(at: Instant) {
    if let Some(left) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
}

/// Polls `condition` for at most `timeout`; whether it came true.
fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `condition` for all of `window`, panicking the first time it fails.
fn holds_for(window: Duration, what: &str, mut condition: impl FnMut() -> Result<(), String>) {
    let until = Instant::now() + window;
    while Instant::now() < until {
        if let Err(why) = condition() {
            panic!("{what} stopped holding: {why}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the load has completed `more` requests beyond now.
fn let_load_run(load: &Load, more: usize) {
    let target = load.done() + more;
    wait_until(
        Duration::from_secs(60),
        &format!("{more} more requests of the load"),
        || load.done() >= target,
    );
}

/// Writes an executable script at `path` through a rename, so a script
/// being executed is never written in place (ETXTBSY, or a shell reading a
/// half-new file).
fn install_script(path: &Path, text: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).unwrap();
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// A wrapper that runs the real `api-server`.
fn good_api_wrapper() -> String {
    format!("#!/bin/sh\nexec '{}' \"$@\"\n", bin("api-server").display())
}

/// Static and API children of `state` that still run under their pid in
/// `before`, or that are not `running`, described.
fn not_replaced(state: &Value, before: &BTreeMap<String, Option<i32>>) -> Vec<String> {
    let children = state["children"].as_array().cloned().unwrap_or_default();
    before
        .iter()
        .filter(|(name, _)| *name == "static" || name.starts_with("api-"))
        .filter_map(|(name, old)| {
            let Some(child) = children.iter().find(|c| c["name"] == name.as_str()) else {
                return Some(format!("{name} missing"));
            };
            let pid = child["pid"].as_i64().map(|p| p as i32);
            if pid.is_none() || pid == *old || child["state"] != "running" {
                Some(format!(
                    "{name}: pid {pid:?} (was {old:?}), state {}",
                    child["state"]
                ))
            } else {
                None
            }
        })
        .collect()
}

/// Waits (briefly, or up to `timeout`) until every static and API child of
/// `before` runs under a new pid; panics naming the ones that do not.
fn assert_all_replaced(
    stack: &Supervisor,
    before: &BTreeMap<String, Option<i32>>,
    timeout: Duration,
) {
    let mut left = Vec::new();
    let done = eventually(timeout, || {
        left = read_state(&stack.run_dir())
            .map(|state| not_replaced(&state, before))
            .unwrap_or_else(|| vec!["state.json unreadable".to_string()]);
        left.is_empty()
    });
    assert!(done, "not replaced after {timeout:?}: {left:?}");
}

fn api_name_set(n: usize) -> BTreeSet<String> {
    (1..=n).map(|k| format!("api-{k}")).collect()
}

#[test]
fn reload_three_times_under_mixed_load_fails_nothing() {
    let _heavy = heavy();
    let started = Instant::now();
    let stack = Supervisor::start(&[]);
    let nginx = stack.pid_of("nginx").unwrap();
    let load = Load::start(&stack, CONNECTIONS, Mix::Mixed);
    let_load_run(&load, 200);
    let mut rounds = Vec::new();
    for round in 1..=3 {
        let before = stack.pids();
        let done_before = load.done();
        let ran = stack.control(&["reload"], COMMAND_TIMEOUT);
        ran.expect_code(0);
        let during = load.done() - done_before;
        eprintln!(
            "reload {round} took {:.1?}, {during} requests meanwhile: {}",
            ran.took,
            ran.stdout.trim()
        );
        assert_all_replaced(&stack, &before, SETTLE);
        assert_eq!(
            stack.pid_of("nginx"),
            Some(nginx),
            "nginx is reloaded in place, not replaced"
        );
        rounds.push((ran.took, during));
        let_load_run(&load, 200);
    }
    let report = load.stop();
    let rows = assert_stored_once(&stack.dir.path().join("gallery.db"), &report.acknowledged);
    eprintln!(
        "3 reloads under load in {:.1?} (reload took, requests meanwhile: {rounds:?}): {}; {rows} rows",
        started.elapsed(),
        report.summary()
    );
    report.assert_no_failures();
    assert!(
        is_alive(stack.proc.pid()),
        "the supervisor is still running"
    );
}

#[test]
fn reload_with_a_broken_worker_program_fails_and_keeps_the_old_workers() {
    let _heavy = heavy();
    let dir = Supervisor::temp_dir();
    let wrapper = dir.path().join("api-server-wrapper");
    install_script(&wrapper, &good_api_wrapper());
    let wrapper_arg = wrapper.to_str().unwrap().to_string();
    let stack = Supervisor::start_in(dir, &["--api-server", &wrapper_arg]);
    let load = Load::start(&stack, CONNECTIONS, Mix::Gets);
    let_load_run(&load, 200);

    let before = stack.pids();
    install_script(
        &wrapper,
        "#!/bin/sh\necho 'broken build: refusing to start' >&2\nexit 1\n",
    );
    let broken = stack.control(&["reload"], COMMAND_TIMEOUT);
    broken.expect_code(1);
    eprintln!(
        "reload with a broken api-server: exit 1 after {:.1?}: {}",
        broken.took,
        broken.text().trim()
    );
    assert!(
        broken.text().contains("api-1"),
        "the failure names the child:\n{}",
        broken.text()
    );
    for name in stack.api_names() {
        let child = stack.child(&name);
        assert_eq!(
            child["pid"].as_i64().map(|p| p as i32),
            before[&name],
            "{name} keeps its old process"
        );
        assert_eq!(child["state"], "running", "{name}");
    }
    let_load_run(&load, 200);

    install_script(&wrapper, &good_api_wrapper());
    let fixed = stack.control(&["reload"], COMMAND_TIMEOUT);
    fixed.expect_code(0);
    let apis: BTreeMap<String, Option<i32>> = before
        .into_iter()
        .filter(|(name, _)| name.starts_with("api-"))
        .collect();
    assert_all_replaced(&stack, &apis, SETTLE);
    let_load_run(&load, 200);
    let report = load.stop();
    eprintln!(
        "failed reload then good reload (took {:.1?}) under GET load: {}",
        fixed.took,
        report.summary()
    );
    report.assert_no_failures();
}

#[test]
fn a_stopped_worker_is_killed_and_replaced_without_failed_gets() {
    let _heavy = heavy();
    let stack = Supervisor::start(&[]);
    let load = Load::start(&stack, CONNECTIONS, Mix::Gets);
    let_load_run(&load, 200);
    let old = stack.pid_of("api-2").unwrap();
    let stopped_at = Instant::now();
    kill(old, Signal::SIGSTOP);
    let _resume = ContinueOnDrop(old);
    let took = stack.wait_replaced("api-2", old, stopped_at, Duration::from_secs(20));
    let_load_run(&load, 500);
    let report = load.stop();
    eprintln!(
        "api-2 (pid {old}) SIGSTOPped, replaced after {took:.2?}: {}",
        report.summary()
    );
    // interval × misses + timeout + 1 s, with the defaults (1 s, 3, 1 s).
    assert!(
        took <= Duration::from_secs(5),
        "a stopped worker was replaced only after {took:?}"
    );
    report.assert_no_failures();
    assert!(
        report.max_get_latency <= Duration::from_secs(10),
        "a GET took {:?}",
        report.max_get_latency
    );
    let line = format!("api-2 (pid {old}) missed 3 health checks: killing");
    assert!(
        stack.proc.output.contains(&line),
        "{line:?} in\n{}",
        stack.proc.output.text()
    );
    wait_until(
        Duration::from_secs(2),
        "the stopped worker to be gone",
        || !is_alive(old),
    );
}

#[test]
fn scale_3_to_6_to_2_under_mixed_load() {
    let _heavy = heavy();
    let started = Instant::now();
    let stack = Supervisor::start(&[]);
    // Scaling reloads nginx, whose old workers close their idle client
    // keep-alive connections; the clients retry such a reset once, as
    // browsers do (POSTs with their Idempotency-Key).
    let load = Load::start_retrying(&stack, CONNECTIONS, Mix::Mixed, Retry::OnceAfterReset);
    let_load_run(&load, 200);
    // Every port an API worker ever had, by name.
    let mut ports: BTreeMap<String, u16> = stack
        .api_names()
        .into_iter()
        .map(|name| {
            let port = stack.port_of(&name);
            (name, port)
        })
        .collect();
    for n in [6, 2] {
        let ran = stack.control(&["scale", &n.to_string()], COMMAND_TIMEOUT);
        ran.expect_code(0);
        let expected = api_name_set(n);
        let mut names = Vec::new();
        let settled = eventually(SETTLE, || {
            names = stack.api_names();
            names.len() == n
                && names.iter().cloned().collect::<BTreeSet<_>>() == expected
                && stack.api_children().iter().all(|c| c["state"] == "running")
        });
        assert!(
            settled,
            "after scale {n}: state.json lists {names:?}, states {:?}",
            stack
                .api_children()
                .iter()
                .map(|c| c["state"].clone())
                .collect::<Vec<_>>()
        );
        for name in &names {
            ports.insert(name.clone(), stack.port_of(name));
        }
        let removed: BTreeMap<&String, &u16> = ports
            .iter()
            .filter(|(name, _)| !expected.contains(*name))
            .collect();

        let status = stack.control(&["status"], Duration::from_secs(20));
        status.expect_code(0);
        assert_eq!(
            api_names_in_status(&status.stdout),
            expected.iter().cloned().collect(),
            "after scale {n}, status says:\n{}",
            status.stdout
        );

        let conf_ports = stack.nginx_conf_ports();
        for name in &expected {
            assert!(
                conf_ports.contains(&ports[name]),
                "after scale {n}, {name}'s port {} is not in nginx.conf:\n{}",
                ports[name],
                stack.nginx_conf()
            );
        }
        for (name, port) in &removed {
            assert!(
                !conf_ports.contains(port),
                "after scale {n}, removed {name}'s port {port} is still in nginx.conf:\n{}",
                stack.nginx_conf()
            );
            assert!(
                std::net::TcpStream::connect(("127.0.0.1", **port)).is_err(),
                "after scale {n}, removed {name}'s port {port} still accepts connections"
            );
        }

        let seen = stack.workers_answering(&expected, Duration::from_secs(20));
        assert!(
            seen.is_subset(&expected),
            "after scale {n}, answers came from {seen:?}"
        );
        eprintln!(
            "scale {n} took {:.1?}: {}; answering through nginx: {seen:?}",
            ran.took,
            ran.stdout.trim()
        );
        let_load_run(&load, 200);
    }
    let report = load.stop();
    let rows = assert_stored_once(&stack.dir.path().join("gallery.db"), &report.acknowledged);
    eprintln!(
        "scale 3 → 6 → 2 under load in {:.1?}: {}; {rows} rows",
        started.elapsed(),
        report.summary()
    );
    report.assert_no_failures();
}

#[test]
fn supervisor_output_into_a_stalled_pipe_never_stops_the_site() {
    let _heavy = heavy();
    let mut stack = Supervisor::start_unread(&["--grace-period", "5"]);
    let pids = stack.all_pids();
    let load = Load::start(&stack, CONNECTIONS, Mix::Gets);
    let t0 = Instant::now();
    let at = |secs| {
        sleep_until(t0 + Duration::from_secs(secs));
        load.done()
    };
    let (d5, d20, d30) = (at(5), at(20), at(30));
    let first = d5 as f64 / 5.0;
    let last = (d30 - d20) as f64 / 10.0;
    let report = load.stop();
    eprintln!(
        "stalled output pipe: {first:.0} req/s in the first 5 s, {last:.0} req/s in the last 10 s; {}",
        report.summary()
    );
    report.assert_no_failures();
    assert!(
        last > first / 3.0,
        "the rate fell from {first:.0}/s to {last:.0}/s with nobody reading the supervisor's output"
    );
    // Supervision goes on: a killed worker is still replaced.
    let old = stack.pid_of("api-1").unwrap();
    let killed_at = Instant::now();
    kill(old, Signal::SIGKILL);
    let took = stack.wait_replaced("api-1", old, killed_at, Duration::from_secs(10));
    eprintln!("api-1 replaced after {took:.2?} with the output stalled");
    let pids: Vec<i32> = pids.into_iter().chain(stack.all_pids()).collect();
    // And signals: SIGTERM stops the stack within the grace period.
    let signalled = Instant::now();
    stack.proc.signal(Signal::SIGTERM);
    let status = stack
        .proc
        .wait_timeout(Duration::from_secs(5 + 5))
        .expect("the supervisor exits within the grace period and a few seconds");
    eprintln!("stopped after {:.1?}: {status}", signalled.elapsed());
    assert_eq!(status.code(), Some(0), "a clean stop exits 0");
    wait_until(Duration::from_secs(2), "every child to be gone", || {
        pids.iter().all(|&p| !is_alive(p))
    });
}

#[test]
fn a_paused_supervisor_does_not_pause_the_site() {
    let _heavy = heavy();
    const PAUSE: Duration = Duration::from_secs(10);
    let stack = Supervisor::start(&[]);
    let load = Load::start(&stack, CONNECTIONS, Mix::Gets);
    let_load_run(&load, 200);
    let (before_start, before_done) = (Instant::now(), load.done());
    sleep_until(before_start + Duration::from_secs(5));
    let rate_before = (load.done() - before_done) as f64 / before_start.elapsed().as_secs_f64();

    let supervisor = stack.proc.pid();
    let (paused_at, paused_done) = (Instant::now(), load.done());
    kill(supervisor, Signal::SIGSTOP);
    let resume = ContinueOnDrop(supervisor);
    sleep_until(paused_at + PAUSE);
    let during = load.done() - paused_done;
    let paused_for = paused_at.elapsed();
    drop(resume);
    let rate_during = during as f64 / paused_for.as_secs_f64();

    // The supervisor catches up on whatever piled up; the site goes on.
    let_load_run(&load, 500);
    let report = load.stop();
    eprintln!(
        "supervisor SIGSTOPped for {paused_for:.1?}: {during} requests meanwhile \
         ({rate_during:.0}/s against {rate_before:.0}/s before); {}",
        report.summary()
    );
    assert!(
        during > 0,
        "no request completed while the supervisor was paused"
    );
    assert!(
        rate_during > rate_before / 3.0,
        "the rate fell from {rate_before:.0}/s to {rate_during:.0}/s while the supervisor was paused"
    );
    report.assert_no_failures();
    assert!(
        is_alive(supervisor),
        "the supervisor survives SIGSTOP/SIGCONT"
    );
    wait_until(Duration::from_secs(10), "every child running", || {
        read_state(&stack.run_dir()).is_some_and(|s| {
            s["children"]
                .as_array()
                .is_some_and(|c| c.iter().all(|c| c["state"] == "running"))
        })
    });
    for path in ["/", "/api/images.json"] {
        assert_eq!(client().get(stack.url(path)).send().unwrap().status(), 200);
    }
}

#[test]
fn chaos_random_worker_kills_every_2s_for_50s() {
    let _heavy = heavy();
    const KILLS: u32 = 25;
    const EVERY: Duration = Duration::from_secs(2);
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("chaos seed {seed} (rerun with CHAOS_SEED={seed})");
    let mut random = XorShift(seed);
    let stack = Supervisor::start(&[]);

    // Watches state.json all along for a child marked failed.
    let watching = Arc::new(AtomicBool::new(true));
    let monitor = {
        let (watching, run_dir) = (watching.clone(), stack.run_dir());
        std::thread::spawn(move || {
            let mut failed = BTreeSet::new();
            let mut polls = 0usize;
            while watching.load(Ordering::SeqCst) {
                if let Some(state) = read_state(&run_dir) {
                    polls += 1;
                    for child in state["children"].as_array().into_iter().flatten() {
                        if child["state"] == "failed" {
                            failed.insert(child["name"].as_str().unwrap_or("?").to_string());
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (failed, polls)
        })
    };

    let load = Load::start(&stack, CONNECTIONS, Mix::Mixed);
    let_load_run(&load, 200);
    let started = Instant::now();
    let mut kills = Vec::new();
    for k in 0..KILLS {
        sleep_until(started + EVERY * k);
        let names = stack.api_names();
        let name = names[(random.next() % names.len() as u64) as usize].clone();
        let old = stack.pid_of(&name).unwrap();
        let killed_at = Instant::now();
        kill(old, Signal::SIGKILL);
        let took = stack.wait_replaced(&name, old, killed_at, Duration::from_secs(10));
        eprintln!(
            "kill {k} at {:.1?}: {name} (pid {old}) replaced in {took:.2?}; {} requests so far",
            killed_at.duration_since(started),
            load.done()
        );
        kills.push((name, took));
    }
    let_load_run(&load, 200);
    let report = load.stop();
    watching.store(false, Ordering::SeqCst);
    let (failed, polls) = monitor.join().unwrap();
    let rows = assert_stored_once(&stack.dir.path().join("gallery.db"), &report.acknowledged);
    let slowest = kills.iter().map(|(_, t)| *t).max().unwrap_or_default();
    eprintln!(
        "chaos (seed {seed}): {} SIGKILLs in {:.1?}, slowest recovery {slowest:.2?}; {}; {rows} rows; \
         {polls} state.json polls; recoveries: {kills:?}",
        kills.len(),
        started.elapsed(),
        report.summary()
    );
    assert!(
        failed.is_empty(),
        "marked failed during the chaos: {failed:?}"
    );
    let slow: Vec<_> = kills
        .iter()
        .filter(|(_, took)| *took > Duration::from_secs(1))
        .collect();
    assert!(slow.is_empty(), "replaced after more than 1 s: {slow:?}");
    report.assert_gets_never_fail_and_posts_only_502();
}

#[test]
fn a_worker_that_exits_at_start_is_failed_then_retried_after_the_cooldown() {
    let _heavy = heavy();
    let dir = Supervisor::temp_dir();
    let wrapper = dir.path().join("flaky-api-server");
    install_script(
        &wrapper,
        &format!(
            "#!/bin/sh\n\
             prev=\n\
             for arg in \"$@\"; do\n\
             \x20 if [ \"$prev\" = --name ] && [ \"$arg\" = api-2 ] || [ \"$arg\" = --name=api-2 ]; then\n\
             \x20   echo 'api-2: simulated crash at start' >&2\n\
             \x20   exit 3\n\
             \x20 fi\n\
             \x20 prev=$arg\n\
             done\n\
             exec '{}' \"$@\"\n",
            bin("api-server").display()
        ),
    );
    let wrapper_arg = wrapper.to_str().unwrap().to_string();
    let stack = Supervisor::start_in(dir, &["--api-server", &wrapper_arg, "--cooldown", "2"]);
    let load = Load::start(&stack, 4, Mix::Gets);

    let failed_at = wait_for(Duration::from_secs(30), "api-2 to be marked failed", || {
        (stack.child("api-2")["state"] == "failed").then(Instant::now)
    });
    let at_failure = stack.child("api-2");
    assert!(
        stack
            .proc
            .output
            .contains("api-2 exited 5 times within 30 s: marked failed"),
        "{}",
        stack.proc.output.text()
    );
    // The retry after the cool-down (2 s from the failure, which we saw
    // no earlier than it happened).
    let mut states = BTreeSet::new();
    let mut pids = BTreeSet::new();
    let retried = wait_for(
        Duration::from_secs(2 + 5),
        "api-2 to be tried again after the cool-down",
        || {
            let child = stack.child("api-2");
            states.insert(child["state"].as_str().unwrap_or("?").to_string());
            pids.insert(child["pid"].as_i64());
            (child["restarts"].as_u64().unwrap_or(0) > 4).then_some(child)
        },
    );
    eprintln!(
        "api-2 failed ({at_failure}), retried {:.1?} later ({retried}); states seen {states:?}, pids {pids:?}",
        failed_at.elapsed()
    );

    install_script(&wrapper, &good_api_wrapper());
    let ran = stack.control(&["restart", "api-2"], COMMAND_TIMEOUT);
    ran.expect_code(0);
    eprintln!("restart api-2: {}", ran.text().trim());
    let quick = quick_client();
    let mut child = Value::Null;
    let up = eventually(SETTLE, || {
        child = stack.child("api-2");
        child["state"] == "running"
            && child["port"].as_u64().is_some_and(|port| {
                quick
                    .get(format!("http://127.0.0.1:{port}/health"))
                    .send()
                    .is_ok_and(|r| r.status() == 200)
            })
    });
    assert!(up, "api-2 after restart: {child}");
    stack.workers_answering(&api_name_set(3), Duration::from_secs(10));
    let report = load.stop();
    eprintln!("GETs through nginx meanwhile: {}", report.summary());
    report.assert_no_failures();
}

#[test]
fn sighup_reloads_and_never_stops_the_stack() {
    let stack = Supervisor::start(&[]);
    let before = stack.pids();
    let nginx = stack.pid_of("nginx").unwrap();
    stack.proc.signal(Signal::SIGHUP);
    assert_all_replaced(&stack, &before, Duration::from_secs(30));
    assert!(
        is_alive(stack.proc.pid()),
        "SIGHUP stopped the supervisor:\n{}",
        stack.proc.output.text()
    );
    assert_eq!(
        stack.pid_of("nginx"),
        Some(nginx),
        "nginx reloaded in place"
    );
    for path in ["/", "/api/images.json"] {
        assert_eq!(client().get(stack.url(path)).send().unwrap().status(), 200);
    }
    stack.workers_answering(&api_name_set(3), Duration::from_secs(10));
}

#[test]
fn sigttin_adds_a_worker_and_sigttou_removes_one() {
    let stack = Supervisor::start(&["--api-workers", "2"]);
    let port2 = stack.port_of("api-2");

    stack.proc.signal(Signal::SIGTTIN);
    let port3 = wait_for(
        Duration::from_secs(30),
        "api-3 running and in nginx.conf",
        || {
            let state = read_state(&stack.run_dir())?;
            let child = state["children"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == "api-3" && c["state"] == "running")?
                .clone();
            let port = child["port"].as_u64()? as u16;
            stack.nginx_conf_ports().contains(&port).then_some(port)
        },
    );
    assert_eq!(stack.api_names(), ["api-1", "api-2", "api-3"]);
    stack.workers_answering(&api_name_set(3), Duration::from_secs(10));

    // One signal at a time: two pending SIGTTOUs would merge into one.
    for (gone, port, left) in [("api-3", port3, 2), ("api-2", port2, 1)] {
        stack.proc.signal(Signal::SIGTTOU);
        wait_until(
            Duration::from_secs(30),
            &format!("{gone} to be removed"),
            || {
                stack.api_names().len() == left
                    && !stack.nginx_conf_ports().contains(&port)
                    && std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            },
        );
        assert_eq!(
            stack.api_names().into_iter().collect::<BTreeSet<_>>(),
            api_name_set(left),
            "after removing {gone}"
        );
    }

    // Never below one worker.
    let api1 = stack.pid_of("api-1");
    stack.proc.signal(Signal::SIGTTOU);
    holds_for(
        Duration::from_secs(2),
        "api-1 serving alone after a SIGTTOU at one worker",
        || {
            let (names, pid, state) = (
                stack.api_names(),
                stack.pid_of("api-1"),
                stack.child("api-1")["state"].clone(),
            );
            if names == ["api-1"] && pid == api1 && state == "running" {
                Ok(())
            } else {
                Err(format!(
                    "workers {names:?}, api-1 pid {pid:?} state {state}"
                ))
            }
        },
    );
    assert!(is_alive(stack.proc.pid()));
    let response = client().get(stack.url("/api/health")).send().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-worker"], "api-1");
}

#[test]
fn restart_replaces_only_the_named_child() {
    let stack = Supervisor::start(&[]);
    let before = stack.pids();
    let ran = stack.control(&["restart", "api-2"], COMMAND_TIMEOUT);
    ran.expect_code(0);
    eprintln!("restart api-2 took {:.1?}: {}", ran.took, ran.text().trim());
    let only_api2: BTreeMap<String, Option<i32>> = before
        .iter()
        .filter(|(name, _)| *name == "api-2")
        .map(|(name, pid)| (name.clone(), *pid))
        .collect();
    assert_all_replaced(&stack, &only_api2, SETTLE);
    let after = stack.pids();
    for (name, pid) in &before {
        if name != "api-2" {
            assert_eq!(after.get(name), Some(pid), "{name} untouched");
        }
    }
    assert_eq!(
        client()
            .get(format!(
                "http://127.0.0.1:{}/health",
                stack.port_of("api-2")
            ))
            .send()
            .unwrap()
            .status(),
        200
    );

    let nope = stack.control(&["restart", "nope"], Duration::from_secs(20));
    nope.expect_code(1);
    assert!(
        nope.text().contains("nope"),
        "the error names the child:\n{}",
        nope.text()
    );
    assert_eq!(stack.pids(), after, "a bad name changes nothing");
}

#[test]
fn stop_subcommand_stops_like_sigterm() {
    let mut stack = Supervisor::start(&["--grace-period", "5"]);
    let socket = stack.run_dir().join("control.sock");
    wait_until(Duration::from_secs(5), "control.sock to exist", || {
        socket.exists()
    });
    let metadata = std::fs::symlink_metadata(&socket).unwrap();
    assert!(metadata.file_type().is_socket(), "{metadata:?}");
    assert_eq!(
        metadata.permissions().mode() & 0o777,
        0o600,
        "control.sock mode {:o}",
        metadata.permissions().mode() & 0o777
    );
    let pids = stack.all_pids();
    let ran = stack.control(&["stop"], Duration::from_secs(30));
    ran.expect_code(0);
    eprintln!("stop took {:.1?}: {}", ran.took, ran.text().trim());
    let status = stack
        .proc
        .wait_timeout(Duration::from_secs(5 + 5))
        .expect("the supervisor exits after stop");
    assert_eq!(status.code(), Some(0), "{}", stack.proc.output.text());
    wait_until(Duration::from_secs(2), "every child to be gone", || {
        pids.iter().all(|&p| !is_alive(p))
    });
    assert!(!stack.run_dir().join("state.json").exists());
    assert!(!socket.exists(), "control.sock removed on stop");
}

#[test]
fn control_commands_without_a_supervisor_exit_2() {
    let commands: [&[&str]; 4] = [
        &["reload"],
        &["restart", "api-1"],
        &["scale", "2"],
        &["stop"],
    ];
    let check = |dir: &Path, run_dir: &str, prefix: &[&str], case: &str| {
        for command in commands {
            let args: Vec<&str> = prefix.iter().chain(command).copied().collect();
            let ran = run_control(dir, &args, Duration::from_secs(20));
            ran.expect_code(2);
            assert!(
                !ran.stderr.trim().is_empty() && ran.stderr.contains(run_dir),
                "{case}: {args:?} says on stderr {:?}, mentioning {run_dir:?}",
                ran.stderr
            );
        }
    };
    let dir = tempfile::tempdir().unwrap();
    check(dir.path(), ".gallery", &[], "no run directory");
    check(
        dir.path(),
        "elsewhere",
        &["--run-dir", "elsewhere"],
        "--run-dir",
    );
    std::fs::create_dir(dir.path().join(".gallery")).unwrap();
    check(dir.path(), ".gallery", &[], "an empty run directory");
    // A socket left behind by a supervisor that was SIGKILLed.
    drop(std::os::unix::net::UnixListener::bind(dir.path().join(".gallery/control.sock")).unwrap());
    check(dir.path(), ".gallery", &[], "a stale control.sock");
}
