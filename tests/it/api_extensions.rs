//! SPEC §13's API extensions against the real `api-server`, on each backend
//! (`api_extensions::sqlite::*` and `api_extensions::postgres::*`, one body
//! each): pagination, `Idempotency-Key` (across workers, under concurrency
//! and through SIGKILLs behind the supervisor), the early 413, and an
//! unpaged list of a large table served in bounded memory while `/health`
//! stays fast. None of them is about the SQLite file, so none is SQLite-only.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::database::{Backend, TestDatabase, on_both_backends};
use crate::helpers::supervisor::Supervisor;
use crate::helpers::{
    ApiServer, XorShift, client, established_connections, get_json, heavy, wait_until,
};

on_both_backends! {
    pages_hold_exactly_the_rows_after_the_cursor_in_id_order,
    bad_limits_and_cursors_are_refused_with_400,
    walking_every_page_while_posts_arrive_skips_and_repeats_nothing,
    a_worker_s_cached_list_shows_a_post_made_on_another_at_once,
    an_idempotency_key_stores_once_on_any_worker_and_refuses_another_body,
    twenty_concurrent_requests_with_one_key_store_one_row,
    keyed_posts_retried_through_worker_sigkills_are_stored_exactly_once,
    a_declared_body_over_64_kib_is_refused_with_413_at_once,
    an_unpaged_list_of_a_60_mb_table_stays_in_bounded_memory_and_health_stays_fast,
}

/// Asserts a JSON error body `{"error": ...}` and returns the message.
fn error_message(response: reqwest::blocking::Response, status: StatusCode) -> String {
    assert_eq!(response.status(), status, "{:?}", response.url().query());
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().unwrap();
    let object = body.as_object().expect("an error object");
    assert_eq!(object.len(), 1, "only an error field: {body}");
    body["error"].as_str().expect("a string error").to_string()
}

fn ids(images: &[Value]) -> Vec<i64> {
    images.iter().map(|i| i["id"].as_i64().unwrap()).collect()
}

/// An image as the API writes it, compactly, fields in contract order.
fn compact_row(image: &Value) -> String {
    let text = |field: &str| serde_json::to_string(image[field].as_str().unwrap()).unwrap();
    format!(
        "{{\"id\":{},\"title\":{},\"alt_text\":{},\"url\":{}}}",
        image["id"],
        text("title"),
        text("alt_text"),
        text("url")
    )
}

fn post_keyed(
    client: &reqwest::blocking::Client,
    url: &str,
    key: &str,
    body: &str,
) -> reqwest::Result<reqwest::blocking::Response> {
    client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("idempotency-key", key)
        .body(body.to_string())
        .send()
}

fn replayed(response: &reqwest::blocking::Response) -> bool {
    response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true")
}

fn pages_hold_exactly_the_rows_after_the_cursor_in_id_order(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = ApiServer::start(&db, "api-1", &[]);
    let client = client();
    for n in 0..7 {
        let body = format!(r#"{{"title": "page {n}", "alt_text": "é \" {n}", "url": "/p/{n}"}}"#);
        let response = client
            .post(server.url("/images.json"))
            .body(body)
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let unpaged = client
        .get(server.url("/images.json"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let all: Vec<Value> = serde_json::from_str(&unpaged).unwrap();
    assert_eq!(ids(&all), (1..=10).collect::<Vec<_>>());
    // Without limit and after, §3 holds byte for byte: a compact array.
    let rows: Vec<String> = all.iter().map(compact_row).collect();
    assert_eq!(unpaged, format!("[{}]\n", rows.join(",")));

    let page = |query: &str| -> (String, Vec<Value>) {
        let response = client
            .get(server.url(&format!("/images.json?{query}")))
            .send()
            .unwrap();
        assert_eq!(response.status(), 200, "{query}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let text = response.text().unwrap();
        let images = serde_json::from_str(&text).unwrap();
        (text, images)
    };
    let cases: &[(&str, &[i64])] = &[
        ("limit=3", &[1, 2, 3]),
        ("limit=3&after=0", &[1, 2, 3]),
        ("limit=3&after=3", &[4, 5, 6]),
        ("after=3&limit=3", &[4, 5, 6]),
        ("limit=3&after=8", &[9, 10]),
        ("limit=3&after=10", &[]),
        ("limit=1&after=5", &[6]),
        ("limit=500", &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        ("limit=010&after=007", &[8, 9, 10]),
        ("limit=2&after=99999999999999999999", &[]),
        ("limit=2&after=2&indent=0", &[3, 4]),
    ];
    for (query, want) in cases {
        let (text, images) = page(query);
        assert_eq!(ids(&images), *want, "{query}");
        // The same rows, byte for byte, as the unpaged list carries them.
        let expected: Vec<&str> = want
            .iter()
            .map(|id| rows[*id as usize - 1].as_str())
            .collect();
        assert_eq!(text, format!("[{}]\n", expected.join(",")), "{query}");
    }
    // `indent` works on a page too.
    let (text, images) = page("limit=2&after=1&indent=3");
    assert_eq!(ids(&images), [2, 3]);
    assert_eq!(text.lines().nth(1), Some("   {"), "{text}");
    assert_eq!(text.lines().nth(2), Some("      \"id\": 2,"), "{text}");
    // Walking pages of 4 yields the whole list, once.
    let (mut walked, mut after) = (Vec::new(), 0);
    loop {
        let (_, images) = page(&format!("limit=4&after={after}"));
        walked.extend(images.iter().cloned());
        if images.len() < 4 {
            break;
        }
        after = images.last().unwrap()["id"].as_i64().unwrap();
    }
    assert_eq!(walked, all);
}

fn bad_limits_and_cursors_are_refused_with_400(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = ApiServer::start(&db, "api-1", &[]);
    let client = client();
    for query in [
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=",
        "limit=abc",
        "limit=2.5",
        "limit=%2B3",
        "limit=%203",
        "limit=4294967297",
        "limit=3&after=-1",
        "limit=3&after=",
        "limit=3&after=abc",
        "limit=3&after=1.0",
        "limit=3&after=0x10",
        "limit=3&limit=4",
        "limit=3&indent=11",
        "after=3",
        "after=0",
    ] {
        let response = client
            .get(server.url(&format!("/images.json?{query}")))
            .send()
            .unwrap();
        let message = error_message(response, StatusCode::BAD_REQUEST);
        let names_the_parameter = ["limit", "after", "indent", "query"]
            .iter()
            .any(|p| message.contains(p));
        assert!(names_the_parameter, "{query}: {message}");
    }
    let message = error_message(
        client
            .get(server.url("/images.json?after=3"))
            .send()
            .unwrap(),
        StatusCode::BAD_REQUEST,
    );
    assert!(message.contains("needs a `limit`"), "{message}");
}

fn walking_every_page_while_posts_arrive_skips_and_repeats_nothing(backend: Backend) {
    const LIMIT: usize = 37;
    let db = TestDatabase::new(backend);
    let server = ApiServer::start(&db, "api-1", &[]);
    db.bulk_insert(3000, 50, 20);
    let at_start: Vec<Value> = get_json(&server.url("/images.json"));
    let at_start = ids(&at_start);

    let stop = Arc::new(AtomicBool::new(false));
    let posted = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, posted, url) = (stop.clone(), posted.clone(), server.url("/images.json"));
        std::thread::spawn(move || {
            let client = client();
            while !stop.load(Ordering::SeqCst) {
                let n = posted.load(Ordering::SeqCst);
                let body = format!(r#"{{"title": "during {n}", "alt_text": "", "url": "/d"}}"#);
                let response = client.post(&url).body(body).send().unwrap();
                assert_eq!(response.status(), 200);
                posted.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    wait_until(Duration::from_secs(10), "the writer to store a row", || {
        posted.load(Ordering::SeqCst) > 0
    });
    let posted_before_walk = posted.load(Ordering::SeqCst);
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut walked, mut after, mut pages) = (Vec::<i64>::new(), 0i64, 0);
    loop {
        assert!(Instant::now() < deadline, "the walk never reached the end");
        let response = client
            .get(server.url(&format!("/images.json?limit={LIMIT}&after={after}")))
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
        let page: Vec<Value> = response.json().unwrap();
        pages += 1;
        assert!(page.len() <= LIMIT, "page of {} rows", page.len());
        for id in ids(&page) {
            assert!(
                id > after,
                "id {id} after {after}: out of order or repeated"
            );
            walked.push(id);
            after = id;
        }
        if page.len() < LIMIT {
            break;
        }
    }
    let posted_during_walk = posted.load(Ordering::SeqCst) - posted_before_walk;
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();

    let walked_set: BTreeSet<i64> = walked.iter().copied().collect();
    assert_eq!(walked_set.len(), walked.len(), "no row twice");
    let missing: Vec<i64> = at_start
        .iter()
        .filter(|id| !walked_set.contains(id))
        .copied()
        .collect();
    assert!(missing.is_empty(), "rows skipped: {missing:?}");
    assert!(
        posted_during_walk > 0,
        "no POST landed during the walk, so it proved nothing"
    );
    eprintln!(
        "walked {} rows in {pages} pages of {LIMIT}: all {} rows present at the start once, \
         ids strictly increasing, while {posted_during_walk} POSTs landed",
        walked.len(),
        at_start.len()
    );
}

fn a_worker_s_cached_list_shows_a_post_made_on_another_at_once(backend: Backend) {
    let db = TestDatabase::new(backend);
    let one = ApiServer::start(&db, "api-1", &[]);
    let two = ApiServer::start(&db, "api-2", &[]);
    let client = client();
    for n in 0..20 {
        // Both bodies are now cached on `two`; a POST on `one` must show in
        // the very next GET on `two`, with no delay or retry.
        for indent in ["0", "4"] {
            let list: Vec<Value> = get_json(&two.url(&format!("/images.json?indent={indent}")));
            assert_eq!(list.len(), 3 + n, "indent {indent}");
        }
        let body = format!(r#"{{"title": "seen {n}", "alt_text": "", "url": "/s"}}"#);
        let response = client
            .post(one.url("/images.json"))
            .body(body)
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
        let posted: Value = response.json().unwrap();
        for indent in ["0", "4"] {
            let list: Vec<Value> = get_json(&two.url(&format!("/images.json?indent={indent}")));
            assert_eq!(
                list.last(),
                Some(&posted),
                "after POST {n}, indent {indent}"
            );
        }
    }
}

fn an_idempotency_key_stores_once_on_any_worker_and_refuses_another_body(backend: Backend) {
    let db = TestDatabase::new(backend);
    let one = ApiServer::start(&db, "api-1", &[]);
    let two = ApiServer::start(&db, "api-2", &[]);
    let client = client();
    let body = r#"{"title": "Keyed", "alt_text": "idem", "url": "/k.svg"}"#;

    let first = post_keyed(&client, &one.url("/images.json"), "key-1", body).unwrap();
    assert_eq!(first.status(), 200);
    assert!(!replayed(&first));
    let first: Value = first.json().unwrap();

    let again = post_keyed(&client, &two.url("/images.json"), "key-1", body).unwrap();
    assert_eq!(again.status(), 200);
    assert!(replayed(&again), "a replay says so");
    assert_eq!(again.headers()["x-worker"], "api-2");
    let again: Value = again.json().unwrap();
    assert_eq!(again, first, "the image first stored, same id");

    // indent still applies to the replayed answer.
    let pretty = client
        .post(two.url("/images.json?indent=2"))
        .header("idempotency-key", "key-1")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(pretty.status(), 200);
    let text = pretty.text().unwrap();
    assert!(text.starts_with("{\n  \"id\": "), "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), first);

    // The same key with another body, even one byte off, is a 422.
    for other in [
        r#"{"title": "Other", "alt_text": "idem", "url": "/k.svg"}"#,
        &format!("{body} "),
    ] {
        let response = post_keyed(&client, &two.url("/images.json"), "key-1", other).unwrap();
        let message = error_message(response, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(message.contains("Idempotency-Key"), "{message}");
    }
    // Keys of 1..=200 characters only.
    for key in ["".to_string(), "k".repeat(201), "é".repeat(201)] {
        let response = post_keyed(&client, &one.url("/images.json"), &key, body).unwrap();
        let message = error_message(response, StatusCode::BAD_REQUEST);
        assert!(message.contains("Idempotency-Key"), "{message}");
    }
    let longest = post_keyed(&client, &one.url("/images.json"), &"k".repeat(200), body).unwrap();
    assert_eq!(longest.status(), 200);
    assert!(!replayed(&longest));
    // Another key, or none, stores as usual.
    let other_key = post_keyed(&client, &one.url("/images.json"), "key-2", body).unwrap();
    assert!(!replayed(&other_key));
    let unkeyed = client
        .post(one.url("/images.json"))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(unkeyed.status(), 200);

    let rows = db.ids_by_title("idem");
    let first_id = first["id"].as_i64().unwrap();
    assert_eq!(
        rows["Keyed"].len(),
        4,
        "key-1 once, the 200-char key, key-2, unkeyed"
    );
    assert_eq!(rows["Keyed"][0], first_id);
}

fn twenty_concurrent_requests_with_one_key_store_one_row(backend: Backend) {
    const REQUESTS: usize = 20;
    let db = TestDatabase::new(backend);
    // The lock is held until all twenty requests are in, which on a loaded
    // machine can take longer than the default 5 s busy timeout.
    let workers = Arc::new([
        ApiServer::start(&db, "api-1", &["--busy-timeout-ms", "30000"]),
        ApiServer::start(&db, "api-2", &["--busy-timeout-ms", "30000"]),
    ]);
    let connected = || {
        workers
            .iter()
            .map(|w| established_connections(w.port))
            .sum::<usize>()
    };
    for round in 0..5 {
        // The write lock is held while the requests arrive, so they are all
        // in flight together and race for it when it is let go.
        let holder = db.hold_write_lock();
        let threads: Vec<_> = (0..REQUESTS)
            .map(|i| {
                let workers = workers.clone();
                std::thread::spawn(move || {
                    let client = client();
                    let url = workers[i % 2].url("/images.json");
                    let body =
                        format!(r#"{{"title": "race {round}", "alt_text": "race", "url": "/r"}}"#);
                    let response =
                        post_keyed(&client, &url, &format!("race-key-{round}"), &body).unwrap();
                    let status = response.status();
                    let was_replayed = replayed(&response);
                    let text = response.text().unwrap();
                    assert_eq!(status, 200, "round {round}: {text}");
                    let image: Value = serde_json::from_str(&text).unwrap();
                    (image["id"].as_i64().unwrap(), was_replayed)
                })
            })
            .collect();
        wait_until(
            Duration::from_secs(10),
            "every request to reach a worker",
            || connected() >= REQUESTS,
        );
        holder.release();
        let answers: Vec<(i64, bool)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let ids: BTreeSet<i64> = answers.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids.len(), 1, "round {round}: every answer names one image");
        let stored_now = answers.iter().filter(|(_, replayed)| !replayed).count();
        assert_eq!(stored_now, 1, "round {round}: exactly one answer stored");
        let rows = db.ids_by_title("race");
        assert_eq!(
            rows[&format!("race {round}")],
            ids.into_iter().collect::<Vec<_>>(),
            "round {round}: one row"
        );
        wait_until(
            Duration::from_secs(10),
            "the round's connections to close",
            || connected() == 0,
        );
    }
}

fn keyed_posts_retried_through_worker_sigkills_are_stored_exactly_once(backend: Backend) {
    let _heavy = heavy();
    const CLIENTS: usize = 6;
    const KILLS: usize = 10;
    // More kills, up to this, until one has cut a POST short: whether a
    // kill finds a POST in flight is chance, and a slow machine has fewer.
    const MAX_KILLS: usize = 40;
    let db = TestDatabase::new(backend);
    let stack = Arc::new(Supervisor::start_on(&db, &[]));
    let workers = stack.api_names();
    let url = stack.url("/api/images.json");
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let failed_attempts = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, next, url) = (stop.clone(), next.clone(), url.clone());
            let failed_attempts = failed_attempts.clone();
            std::thread::spawn(move || {
                let client = client();
                // (n, id answered, replayed, failed attempts before it)
                let mut acknowledged = Vec::new();
                let mut failures: Vec<String> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let key = format!("chaos-key-{n}");
                    let body =
                        format!(r#"{{"title": "chaos {n}", "alt_text": "chaos", "url": "/c"}}"#);
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut failed = 0;
                    loop {
                        assert!(
                            Instant::now() < deadline,
                            "POST {n} failed for a minute: {failures:?}"
                        );
                        match post_keyed(&client, &url, &key, &body) {
                            Ok(r) if r.status() == 200 => {
                                let was_replayed = replayed(&r);
                                let image: Value = r.json().unwrap();
                                let id = image["id"].as_i64().unwrap();
                                acknowledged.push((n, id, was_replayed, failed));
                                break;
                            }
                            Ok(r) if r.status() == 502 || r.status() == 503 => {
                                failures.push(format!("{n}: {}", r.status()));
                            }
                            Ok(r) => panic!("POST {n}: {} {}", r.status(), r.text().unwrap()),
                            Err(e) => failures.push(format!("{n}: {e}")),
                        }
                        failed += 1;
                        failed_attempts.fetch_add(1, Ordering::SeqCst);
                    }
                }
                (acknowledged, failures)
            })
        })
        .collect();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = XorShift(seed);
    let started = Instant::now();
    let mut kills = Vec::new();
    for k in 1..=MAX_KILLS {
        if kills.len() >= KILLS && failed_attempts.load(Ordering::SeqCst) > 0 {
            break;
        }
        // Pacing, not synchronisation: one kill about every second.
        let at = started + Duration::from_secs(k as u64);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let name = &workers[rng.next() as usize % workers.len()];
        // A worker being restarted has no pid yet: take the next kill.
        if let Some(pid) = stack.pid_of(name) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            kills.push(name.clone());
        }
    }
    // Let the last restart finish under load before stopping the clients.
    let done_at_last_kill = next.load(Ordering::SeqCst);
    wait_until(
        Duration::from_secs(30),
        "POSTs to go on after the last kill",
        || next.load(Ordering::SeqCst) >= done_at_last_kill + 50,
    );
    stop.store(true, Ordering::SeqCst);
    let (mut acknowledged, mut failures) = (Vec::new(), Vec::new());
    for client in clients {
        let (a, f) = client.join().unwrap();
        acknowledged.extend(a);
        failures.extend(f);
    }

    let rows = db.ids_by_title("chaos");
    for (n, id, _, _) in &acknowledged {
        assert_eq!(
            rows.get(&format!("chaos {n}")),
            Some(&vec![*id]),
            "POST {n}: stored exactly once, as the image answered"
        );
    }
    assert_eq!(
        rows.len(),
        acknowledged.len(),
        "nothing stored that was not acknowledged"
    );
    let retried = acknowledged.iter().filter(|a| a.3 > 0).count();
    let replays = acknowledged.iter().filter(|a| a.2).count();
    eprintln!(
        "seed {seed}: {} keyed POSTs from {CLIENTS} clients through {} SIGKILLs ({kills:?}) in {:.1?}: \
         {} failed attempts ({} POSTs retried, {replays} answered by a replay of a row the killed \
         worker had stored), every POST stored exactly once",
        acknowledged.len(),
        kills.len(),
        started.elapsed(),
        failures.len(),
        retried,
    );
    assert!(
        kills.len() >= KILLS / 2,
        "only {} kills landed",
        kills.len()
    );
    assert!(
        retried > 0,
        "no POST failed, so the kills proved nothing: {failures:?}"
    );
}

/// Sends a POST head declaring `length` body bytes, then `body`; returns
/// (status, head, body) and how long the answer took from the head's end.
fn raw_post(
    port: u16,
    length: u64,
    extra_headers: &str,
    body: &[u8],
) -> (u16, String, String, Duration) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    write!(
        stream,
        "POST /images.json HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n{extra_headers}\r\n"
    )
    .unwrap();
    let sent = Instant::now();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..split]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("a content-length on the answer");
            if response.len() >= split + 4 + length {
                let took = sent.elapsed();
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                let body = String::from_utf8_lossy(&response[split + 4..split + 4 + length]);
                return (status, head, body.to_string(), took);
            }
        }
        let n = stream
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("no complete answer after {:?}: {e}", sent.elapsed()));
        assert!(n > 0, "closed before a complete answer: {response:?}");
        response.extend_from_slice(&chunk[..n]);
    }
}

fn a_declared_body_over_64_kib_is_refused_with_413_at_once(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = ApiServer::start(&db, "api-1", &[]);
    for extra in ["", "Expect: 100-continue\r\n", "Idempotency-Key: big\r\n"] {
        let (status, head, body, took) = raw_post(server.port, 1_000_000_000_000, extra, b"");
        assert_eq!(status, 413, "{extra:?}: {head}");
        assert!(
            took < Duration::from_secs(1),
            "{extra:?}: 413 after {took:?}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        let error: Value = serde_json::from_str(&body).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("64 KiB"),
            "{body}"
        );
        eprintln!("Content-Length: 1000000000000 ({extra:?}) answered 413 in {took:?}");
    }
    // One byte over is refused the same way; exactly the limit is read.
    let (status, ..) = raw_post(server.port, 64 * 1024 + 1, "", b"");
    assert_eq!(status, 413);
    let mut exact = br#"{"title": "Exact", "alt_text": "", "url": "/e"}"#.to_vec();
    exact.resize(64 * 1024, b' ');
    let (status, _, body, _) = raw_post(server.port, exact.len() as u64, "", &exact);
    assert_eq!(status, 200, "{body}");
}

/// The resident set of `pid`, in bytes.
fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

fn an_unpaged_list_of_a_60_mb_table_stays_in_bounded_memory_and_health_stays_fast(
    backend: Backend,
) {
    let _heavy = heavy();
    const ROWS: usize = 20_000;
    const READERS: usize = 25;
    /// The shortest run; the phases below may make it longer.
    const RUN: Duration = Duration::from_secs(20);
    const PHASE_DEADLINE: Duration = Duration::from_secs(60);
    const MARGIN: u64 = 20 * 1024 * 1024;
    const HEALTH_LIMIT: Duration = Duration::from_millis(100);
    const WATCHDOG_TIMEOUT: Duration = Duration::from_secs(1);
    let db = TestDatabase::new(backend);
    // A first worker makes the schema; the rows go in once it is gone.
    drop(ApiServer::start(&db, "api-schema", &[]));
    let filled = Instant::now();
    db.bulk_insert(ROWS, 1000, 1880);
    let filled = filled.elapsed();
    let server = ApiServer::start(&db, "api-big", &[]);
    let pid = server.proc.pid();
    let url = server.url("/images.json");

    let first_started = Instant::now();
    let first = client().get(&url).send().unwrap();
    assert_eq!(first.status(), 200);
    let first = first.bytes().unwrap();
    let first_took = first_started.elapsed();
    let body_len = first.len() as u64;
    let rows = first.windows(6).filter(|w| w == b"{\"id\":").count();
    assert_eq!(rows, ROWS + 3);
    drop(first);
    let baseline = rss_bytes(pid);
    eprintln!(
        "{ROWS} rows inserted in {filled:.1?}; first GET: {:.1} MB in {first_took:.1?}; \
         worker RSS after it {:.1} MB",
        body_len as f64 / 1e6,
        baseline as f64 / 1e6
    );

    // The readers are the test's own load generator on the same small
    // machine: they run at the lowest priority (nice 19, inherited by their
    // client's I/O thread) so that they compete with each other, not with
    // the server and the /health client being measured.
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    // Each reader counts the responses it finished that it started after
    // `invalidated_at` (ms since `epoch`): once every reader has one, no
    // reader still holds a body from before the invalidation.
    let invalidated_at = Arc::new(AtomicU64::new(0));
    let fresh_responses = Arc::new(Mutex::new(vec![0usize; READERS]));
    let bytes_read = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(Barrier::new(READERS + 1));
    let readers: Vec<_> = (0..READERS)
        .map(|reader| {
            let (stop, url, bytes_read) = (stop.clone(), url.clone(), bytes_read.clone());
            let (invalidated_at, fresh) = (invalidated_at.clone(), fresh_responses.clone());
            let ready = ready.clone();
            std::thread::spawn(move || {
                let tid = nix::unistd::gettid().to_string();
                let _ = std::process::Command::new("renice")
                    .args(["-n", "19", "-p", &tid])
                    .output();
                let client = client();
                ready.wait();
                let (mut responses, mut failures) = (0, Vec::new());
                let mut chunk = vec![0u8; 256 * 1024];
                while !stop.load(Ordering::SeqCst) {
                    let started_ms = epoch.elapsed().as_millis() as u64;
                    let mut response = match client.get(&url).send() {
                        Ok(r) if r.status() == 200 => r,
                        Ok(r) => {
                            failures.push(format!(
                                "{} {}",
                                r.status(),
                                r.text().unwrap_or_default()
                            ));
                            continue;
                        }
                        Err(e) => {
                            failures.push(e.to_string());
                            continue;
                        }
                    };
                    let mut n = 0u64;
                    loop {
                        match response.read(&mut chunk) {
                            Ok(0) => break,
                            Ok(k) => n += k as u64,
                            Err(e) => {
                                failures.push(e.to_string());
                                break;
                            }
                        }
                    }
                    if n < body_len {
                        failures.push(format!("a short body: {n} bytes"));
                        continue;
                    }
                    bytes_read.fetch_add(n, Ordering::SeqCst);
                    responses += 1;
                    if started_ms > invalidated_at.load(Ordering::SeqCst) {
                        fresh.lock().unwrap()[reader] += 1;
                    }
                }
                (responses, failures)
            })
        })
        .collect();
    ready.wait();
    let run_started = Instant::now();
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            let mut samples = 0;
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(rss_bytes(pid), Ordering::SeqCst);
                samples += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            samples
        })
    };
    let health = {
        let (stop, url) = (stop.clone(), server.url("/health"));
        std::thread::spawn(move || {
            let client = client();
            // (when, how long)
            let mut latencies = Vec::new();
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                next += Duration::from_millis(100);
                let started = Instant::now();
                let response = client.get(&url).send().unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().unwrap();
                latencies.push((started - run_started, started.elapsed()));
            }
            latencies
        })
    };

    // Phases on conditions: every reader has a body in flight; then each of
    // two POSTs makes the cached body stale while 25 readers ask for it (one
    // rebuild each, not one per reader), and the next phase starts once no
    // reader can hold the body before it.
    let every_reader_fresh = |what: &str| {
        wait_until(PHASE_DEADLINE, what, || {
            fresh_responses.lock().unwrap().iter().all(|&n| n > 0)
        });
    };
    every_reader_fresh("every reader to finish a first response");
    let post_client = client();
    let mut posted_at = Vec::new();
    for marker in 1..=2 {
        let body = format!(r#"{{"title": "marker {marker}", "alt_text": "", "url": "/m"}}"#);
        let response = post_client.post(&url).body(body).send().unwrap();
        assert_eq!(response.status(), 200);
        invalidated_at.store(epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
        fresh_responses.lock().unwrap().fill(0);
        posted_at.push(run_started.elapsed());
        every_reader_fresh(&format!(
            "every reader to finish a response started after POST {marker}"
        ));
    }
    // The length of the run, not a synchronisation.
    std::thread::sleep((run_started + RUN).saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::SeqCst);
    let (mut responses, mut failures) = (0, Vec::new());
    for reader in readers {
        let (r, f) = reader.join().unwrap();
        responses += r;
        failures.extend(f);
    }
    let latencies = health.join().unwrap();
    let samples = sampler.join().unwrap();
    let elapsed = run_started.elapsed();

    let last = client().get(&url).send().unwrap().text().unwrap();
    assert!(
        last.ends_with("\"title\":\"marker 2\",\"alt_text\":\"\",\"url\":\"/m\"}]\n"),
        "the list after the run holds the last POST"
    );
    let peak = peak.load(Ordering::SeqCst);
    let growth = peak.saturating_sub(baseline);
    let mut sorted: Vec<Duration> = latencies.iter().map(|(_, took)| *took).collect();
    sorted.sort();
    let slowest = *sorted.last().unwrap();
    let median = sorted[sorted.len() / 2];
    let slow: Vec<String> = latencies
        .iter()
        .filter(|(_, took)| *took > HEALTH_LIMIT)
        .map(|(at, took)| format!("{took:.1?} at {at:.1?}"))
        .collect();
    eprintln!(
        "{READERS} readers for {elapsed:.1?}: {responses} unpaged GETs of {:.1} MB ({:.0} MB/s), \
         {} failed; worker RSS baseline {:.1} MB, peak {:.1} MB (+{:.1} MB, allowed +{:.1} MB) \
         over {samples} samples; POSTs at {posted_at:.1?}; /health x{}: median {median:.1?}, \
         slowest {slowest:.1?}, {} over {HEALTH_LIMIT:?}",
        body_len as f64 / 1e6,
        bytes_read.load(Ordering::SeqCst) as f64 / 1e6 / elapsed.as_secs_f64(),
        failures.len(),
        baseline as f64 / 1e6,
        peak as f64 / 1e6,
        growth as f64 / 1e6,
        (body_len + MARGIN) as f64 / 1e6,
        latencies.len(),
        slow.len(),
    );
    assert!(failures.is_empty(), "failed GETs: {failures:?}");
    assert!(
        growth <= body_len + MARGIN,
        "RSS grew by {growth} bytes, more than one body ({body_len}) + 20 MB"
    );
    assert!(
        latencies.len() as u128 >= elapsed.as_millis() / 100 / 2,
        "only {} health checks ran",
        latencies.len()
    );
    // The watchdog's default --health-timeout: a check slower than this
    // would count as missed and, three in a row, get the worker killed.
    assert!(
        slowest < WATCHDOG_TIMEOUT,
        "/health took {slowest:?}, past the watchdog's {WATCHDOG_TIMEOUT:?}"
    );
    // Fast, not just alive: the typical check does not wait for the list.
    // On two shared cores a check may wait for the CPU, the more so while
    // the hypervisor takes a third of it (CI once saw 5 of 201 over the
    // limit, median 7 ms, at 30-50 % steal): not more than one in twenty.
    assert!(
        median * 4 <= HEALTH_LIMIT,
        "/health's median answer took {median:?}, over a quarter of {HEALTH_LIMIT:?}"
    );
    assert!(
        slow.len() * 20 <= latencies.len(),
        "/health answers over {HEALTH_LIMIT:?}: {slow:?} of {}",
        latencies.len()
    );
}
