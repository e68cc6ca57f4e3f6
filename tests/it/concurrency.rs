//! Several `api-server` processes on one SQLite file (SPEC §3, SQLite).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use crate::helpers::{ApiServer, Proc, bin, client, get_json, temp_db};

#[test]
fn four_workers_take_2000_concurrent_posts_without_an_error_or_a_lost_row() {
    const POSTS: usize = 2000;
    const CONNECTIONS: usize = 40;
    let (_dir, db) = temp_db();
    let workers: Vec<ApiServer> = (1..=4)
        .map(|k| ApiServer::start(&db, &format!("api-{k}"), &[]))
        .collect();
    let urls: Arc<Vec<String>> = Arc::new(workers.iter().map(|w| w.url("/images.json")).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (urls, next) = (urls.clone(), next.clone());
            std::thread::spawn(move || {
                let client = client();
                let mut failures = Vec::new();
                let mut ids = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= POSTS {
                        break;
                    }
                    let body = format!(
                        r#"{{"title": "post {n}", "alt_text": "load", "url": "/images/cat.svg"}}"#
                    );
                    match client.post(&urls[n % urls.len()]).body(body).send() {
                        Ok(r) if r.status() == 200 => {
                            ids.push(r.json::<Value>().unwrap()["id"].as_i64().unwrap())
                        }
                        Ok(r) => failures.push(format!(
                            "{} {}",
                            r.status(),
                            r.text().unwrap_or_default()
                        )),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                (ids, failures)
            })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut failures = Vec::new();
    for thread in threads {
        let (thread_ids, thread_failures) = thread.join().unwrap();
        ids.extend(thread_ids);
        failures.extend(thread_failures);
    }
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(ids.len(), POSTS, "every acknowledged row has its own id");

    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM images", [], |r| r.get(0))
        .unwrap();
    let distinct: i64 = conn
        .query_row(
            "SELECT count(DISTINCT title) FROM images WHERE alt_text = 'load'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        (rows, distinct),
        (2003, 2000),
        "nothing lost, nothing stored twice"
    );
    eprintln!(
        "4 workers, {CONNECTIONS} connections: {POSTS} POSTs all 200, table holds {rows} rows"
    );
}

#[test]
fn three_workers_started_together_on_a_fresh_file_seed_once_with_one_schema() {
    for round in 0..10 {
        let (_dir, db) = temp_db();
        let mut procs: Vec<Proc> = (1..=3)
            .map(|k| {
                let mut command = std::process::Command::new(bin("api-server"));
                command
                    .args(["--port", "0", "--name", &format!("api-{k}")])
                    .env("DATABASE_URL", format!("sqlite://{}", db.display()));
                Proc::spawn(&format!("api-{k}"), command)
            })
            .collect();
        let ports: Vec<u16> = procs.iter_mut().map(|p| p.wait_for_port()).collect();
        for port in &ports {
            let images: Vec<Value> = get_json(&format!("http://127.0.0.1:{port}/images.json"));
            assert_eq!(images.len(), 3, "round {round}, port {port}");
        }
        let conn = rusqlite::Connection::open(&db).unwrap();
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM images", [], |r| r.get(0))
            .unwrap();
        // Two tables at version 2 (images, idempotency keys), seeded once.
        assert_eq!((tables, version, rows), (2, 2, 3), "round {round}");
    }
}
