//! The supervisor's admin endpoint (SPEC §11): Prometheus metrics checked by
//! the real `promtool`, counters that follow what happened, and nothing of
//! it reachable through the front door.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::supervisor::Supervisor;
use crate::helpers::{client, wait_until};

fn metrics(stack: &Supervisor) -> String {
    let response = client().get(stack.admin_url("/metrics")).send().unwrap();
    assert_eq!(response.status(), 200);
    response.text().unwrap()
}

/// The sum of every sample of `name` whose labels contain all of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

pub fn promtool_accepts(text: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) runs");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn metrics_pass_promtool_and_count_requests_and_restarts() {
    const N: u64 = 37;
    let stack = Supervisor::start(&["--api-workers", "2"]);
    let first = metrics(&stack);
    promtool_accepts(&first);
    for family in [
        "gallery_child_up",
        "gallery_child_restarts_total",
        "gallery_worker_requests_total",
        "gallery_worker_request_duration_seconds_bucket",
        "gallery_nginx_connections_active",
    ] {
        assert!(first.contains(family), "{family} in\n{first}");
    }

    // N requests straight to api-2: its counter goes up by exactly N (the
    // supervisor's own health checks are not counted).
    let port = stack.port_of("api-2");
    let before = sum(
        &first,
        "gallery_worker_requests_total",
        &["worker=\"api-2\""],
    );
    for _ in 0..N {
        let r = client()
            .get(format!("http://127.0.0.1:{port}/images.json"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Checks like the supervisor's own (its probe header) are not counted.
    for _ in 0..5 {
        let r = client()
            .get(format!("http://127.0.0.1:{port}/health"))
            .header("x-gallery-probe", "1")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let after = metrics(&stack);
    let counted = sum(
        &after,
        "gallery_worker_requests_total",
        &["worker=\"api-2\""],
    );
    assert_eq!(counted - before, N, "\n{after}");
    let by_route = sum(
        &after,
        "gallery_worker_requests_total",
        &[
            "worker=\"api-2\"",
            "route=\"GET /images.json\"",
            "status=\"2xx\"",
        ],
    );
    assert!(by_route >= N);
    assert!(
        sum(
            &after,
            "gallery_worker_request_duration_seconds_count",
            &["worker=\"api-2\""]
        ) >= N
    );
    assert_eq!(sum(&after, "gallery_child_up", &["child=\"api-2\""]), 1);

    // A SIGKILL of api-1: its restart counter is one higher.
    let restarts = sum(&after, "gallery_child_restarts_total", &["child=\"api-1\""]);
    let old = stack.pid_of("api-1").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(
        Duration::from_secs(10),
        "api-1's restart in /metrics",
        || {
            let text = metrics(&stack);
            sum(&text, "gallery_child_restarts_total", &["child=\"api-1\""]) == restarts + 1
                && sum(&text, "gallery_child_up", &["child=\"api-1\""]) == 1
        },
    );
    let last = metrics(&stack);
    assert_eq!(
        sum(
            &last,
            "gallery_child_last_exit_signal",
            &["child=\"api-1\""]
        ),
        9,
        "\n{last}"
    );
    promtool_accepts(&last);
    // Prometheus itself asks for OpenMetrics, and gets it.
    let open = client()
        .get(stack.admin_url("/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .unwrap();
    assert!(
        open.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(open.text().unwrap().ends_with("# EOF\n"));
}

#[test]
fn nothing_of_the_admin_endpoint_is_reachable_through_the_front_door() {
    let stack = Supervisor::start(&["--api-workers", "1", "--bind", "0.0.0.0"]);
    for path in [
        "/metrics",
        "/api/metrics",
        "/_status",
        "/status.json",
        "/api/status.json",
        "/api/_gallery/stats",
        "/_gallery/stats",
        "/stub_status",
        "/api/stub_status",
    ] {
        let response = client().get(stack.url(path)).send().unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let body = response.text().unwrap();
        assert!(!body.contains("gallery_"), "{path}: {body}");
    }
    // The admin endpoint itself answers, on loopback only, although every
    // other server binds every interface.
    assert!(stack.admin_url("/").starts_with("http://127.0.0.1:"));
    assert_eq!(
        client()
            .get(stack.admin_url("/metrics"))
            .send()
            .unwrap()
            .status(),
        200
    );
    let port: u16 = stack
        .admin_url("")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let listening = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let entries: Vec<&str> = listening
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&format!(":{port:04X}")))
        })
        .filter(|l| l.split_whitespace().nth(3) == Some("0A"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let local = entries[0].split_whitespace().nth(1).unwrap();
    assert_eq!(local, format!("0100007F:{port:04X}"), "bound to 127.0.0.1");
    let front = stack.front_port;
    assert!(
        listening
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(&format!("00000000:{front:04X}"))),
        "the front door binds 0.0.0.0"
    );
}
