//! SPEC §11's status page in headless Chromium against a real stack: a row
//! per child with the pid state.json names, a killed worker's new pid and
//! restart count shown without a reload, a requests/s chart per worker
//! that fills as requests go through the front door, a layout that fits a
//! phone, and a plain message once the supervisor is gone.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::helpers::supervisor::{Supervisor, quick_client};
use crate::helpers::webdriver::Browser;
use crate::helpers::{heavy, wait_for, wait_until};

/// Every child's row as `{NAME: {FIELD: text}}`, read from the page's
/// `tr[data-child]` / `td[data-field]` hooks.
const ROWS: &str = "const rows = {};
     for (const tr of document.querySelectorAll('tr[data-child]')) {
         const row = {};
         for (const td of tr.querySelectorAll('td[data-field]')) row[td.dataset.field] = td.textContent;
         rows[tr.dataset.child] = row;
     }
     return rows;";

/// One worker's chart: the points it says it drew, the points its lines
/// really have, and its peak requests/s (`null` while there is no chart).
const CHART: &str = "const chart = document.querySelector(`[data-chart=\"${arguments[0]}\"]`);
     if (!chart) return null;
     const drawn = [...chart.querySelectorAll('svg polyline.req')]
         .reduce((n, line) => n + line.getAttribute('points').trim().split(/\\s+/).length, 0);
     return {points: Number(chart.dataset.points), drawn, peak: Number(chart.dataset.peakRps)};";

/// Whether the page scrolls sideways (it should fit any width).
const OVERFLOWS: &str =
    "return document.documentElement.scrollWidth > document.documentElement.clientWidth;";

fn rows(browser: &Browser) -> Value {
    browser.execute(ROWS, &[])
}

/// A row's pid, if it shows one.
fn shown_pid(row: &Value) -> Option<i32> {
    row["pid"].as_str()?.parse().ok()
}

fn kill(pid: i32, signal: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
}

#[test]
fn status_page_shows_a_killed_worker_restarted_and_charts_requests_without_a_reload() {
    let _heavy = heavy();
    let mut stack = Supervisor::start(&["--api-workers", "2"]);
    let browser = Browser::start();
    browser.set_window_size(1280, 900);
    browser.navigate(&stack.admin_url("/"));
    assert_eq!(
        browser.execute("return document.title;", &[]),
        json!("gallery — status")
    );

    // A row per child, each with the pid, port and state state.json has.
    wait_until(
        Duration::from_secs(10),
        "a running row per child with its pid",
        || {
            let shown = rows(&browser);
            let state = stack.state();
            let children = state["children"].as_array().unwrap();
            shown.as_object().map(|rows| rows.len()) == Some(children.len())
                && children.iter().all(|child| {
                    let row = &shown[child["name"].as_str().unwrap()];
                    child["pid"].as_i64().is_some()
                        && shown_pid(row).map(i64::from) == child["pid"].as_i64()
                        && row["port"].as_str().and_then(|p| p.parse().ok())
                            == child["port"].as_u64()
                        && row["state"] == "running"
                })
        },
    );
    let names: Vec<String> = stack.pids().into_keys().collect();
    assert_eq!(names, ["api-1", "api-2", "nginx", "static"]);
    let loaded_at = browser.execute("return window.__loadedAt;", &[]);
    assert!(loaded_at.is_number(), "no load marker: {loaded_at}");

    // SIGKILL api-1: its row follows, within a poll of state.json saying so.
    let old = stack.pid_of("api-1").unwrap();
    let killed_at = Instant::now();
    kill(old, Signal::SIGKILL);
    let mut in_state = None;
    let (new_pid, on_page) = wait_for(
        Duration::from_secs(10),
        "api-1's row to show a new pid and 1 restart",
        || {
            if in_state.is_none() && stack.pid_of("api-1").is_some_and(|pid| pid != old) {
                in_state = Some(killed_at.elapsed());
            }
            let row = &rows(&browser)["api-1"];
            let pid = shown_pid(row).filter(|&pid| pid != old)?;
            (row["restarts"] == "1").then(|| (pid, killed_at.elapsed()))
        },
    );
    let in_state = in_state.unwrap_or(on_page);
    assert!(
        on_page < Duration::from_secs(3),
        "the page showed api-1's new pid {:.2?} after the kill",
        on_page
    );
    assert!(
        on_page - in_state < Duration::from_secs(2),
        "the page showed api-1's new pid {:.2?} after state.json ({in_state:.2?} after the kill)",
        on_page - in_state
    );
    assert_eq!(stack.pid_of("api-1"), Some(new_pid));
    let row = &rows(&browser)["api-1"];
    assert!(
        row["last_exit"]
            .as_str()
            .unwrap_or_default()
            .contains("SIGKILL"),
        "{row}"
    );
    assert_eq!(
        browser.execute("return window.__loadedAt;", &[]),
        loaded_at,
        "the page was reloaded"
    );

    // Requests through the front door fill api-1's chart.
    let client = quick_client();
    let mut sent = 0;
    let chart = wait_for(
        Duration::from_secs(20),
        "api-1's chart to draw 2 points with requests",
        || {
            for _ in 0..10 {
                if client
                    .get(stack.url("/api/images.json"))
                    .send()
                    .is_ok_and(|r| r.status() == 200)
                {
                    sent += 1;
                }
            }
            let chart = browser.execute(CHART, &[json!("api-1")]);
            (chart["points"].as_u64() >= Some(2) && chart["peak"].as_f64() > Some(0.0))
                .then_some(chart)
        },
    );
    assert_eq!(chart["drawn"], chart["points"], "{chart}");
    let other = browser.execute(CHART, &[json!("api-2")]);
    assert!(other["points"].as_u64().is_some(), "no chart for api-2");
    assert_eq!(browser.find_all("[data-chart]").len(), 2);
    assert_eq!(
        browser.execute("return window.__loadedAt;", &[]),
        loaded_at,
        "the page was reloaded"
    );

    // It fits a desktop and a phone, with a clean console.
    assert_eq!(browser.execute(OVERFLOWS, &[]), json!(false));
    browser.set_window_size(390, 844);
    assert_eq!(
        browser.execute(OVERFLOWS, &[]),
        json!(false),
        "the page scrolls sideways at 390 px"
    );
    let severe: Vec<String> = browser
        .console_log()
        .into_iter()
        .filter(|entry| entry.level == "SEVERE")
        .map(|entry| entry.message)
        .collect();
    assert_eq!(severe, Vec::<String>::new());

    // The supervisor stops: the page says so and keeps the last values.
    stack.proc.signal(Signal::SIGTERM);
    assert!(
        stack.proc.wait_timeout(Duration::from_secs(20)).is_some(),
        "the supervisor did not stop on SIGTERM"
    );
    let stopped_at = Instant::now();
    let message = wait_for(Duration::from_secs(10), "the page to say so", || {
        let offline = browser.execute(
            "const alert = document.getElementById('offline');
             return alert.hidden ? null : alert.textContent;",
            &[],
        );
        offline
            .as_str()
            .map(|text| text.split_whitespace().collect::<Vec<_>>().join(" "))
    });
    assert!(message.contains("cannot be reached"), "{message}");
    assert_eq!(
        browser.execute(
            "return document.getElementById('connection').dataset.state;",
            &[]
        ),
        json!("error")
    );
    assert_eq!(
        rows(&browser).as_object().map(|rows| rows.len()),
        Some(names.len()),
        "the rows went with the supervisor"
    );

    eprintln!(
        "admin page: api-1 {old} -> {new_pid} in state.json after {in_state:.2?}, on the page after \
         {on_page:.2?}; chart {chart} after {sent} requests; stopped supervisor shown after {:.2?}: {message:?}",
        stopped_at.elapsed()
    );
}
