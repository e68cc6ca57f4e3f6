//! Several `api-server` processes on one database (SPEC §3, §10), on each
//! backend (`concurrency::sqlite::*`, `concurrency::postgres::*`). None is
//! SQLite-only.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use crate::helpers::database::{Backend, TestDatabase, on_both_backends};
use crate::helpers::{ApiServer, Proc, bin, client, get_json, heavy};

on_both_backends! {
    four_workers_take_2000_concurrent_posts_without_an_error_or_a_lost_row,
    three_workers_started_together_on_a_fresh_database_seed_once_with_one_schema,
}

fn four_workers_take_2000_concurrent_posts_without_an_error_or_a_lost_row(backend: Backend) {
    let _heavy = heavy();
    const POSTS: usize = 2000;
    const CONNECTIONS: usize = 40;
    let db = TestDatabase::new(backend);
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

    let rows = db.count();
    let distinct: usize = db
        .value("SELECT count(DISTINCT title) FROM images WHERE alt_text = 'load'")
        .parse()
        .unwrap();
    assert_eq!(
        (rows, distinct),
        (2003, 2000),
        "nothing lost, nothing stored twice"
    );
    eprintln!(
        "{backend:?}, 4 workers, {CONNECTIONS} connections: {POSTS} POSTs all 200, table holds {rows} rows"
    );
}

/// Starts three workers on `database_url` (through `DATABASE_URL`) at the
/// same moment and checks each serves the three seeded images.
fn start_three_at_once(database_url: &str, round: usize) -> Vec<Proc> {
    let mut procs: Vec<Proc> = (1..=3)
        .map(|k| {
            let mut command = std::process::Command::new(bin("api-server"));
            command
                .args(["--port", "0", "--name", &format!("api-{k}")])
                .env("DATABASE_URL", database_url);
            Proc::spawn(&format!("api-{k}"), command)
        })
        .collect();
    let ports: Vec<u16> = procs.iter_mut().map(|p| p.wait_for_port()).collect();
    for port in &ports {
        let images: Vec<Value> = get_json(&format!("http://127.0.0.1:{port}/images.json"));
        assert_eq!(images.len(), 3, "round {round}, port {port}");
    }
    procs
}

fn three_workers_started_together_on_a_fresh_database_seed_once_with_one_schema(backend: Backend) {
    // What one worker alone makes of a fresh database.
    let alone = {
        let db = TestDatabase::new(backend);
        drop(ApiServer::start(&db, "api-1", &[]));
        db.schema()
    };
    for round in 0..10 {
        let db = TestDatabase::new(backend);
        let _workers = start_three_at_once(&db.url(), round);
        assert_eq!(db.count(), 3, "round {round}: seeded once");
        assert_eq!(
            db.schema(),
            alone,
            "round {round}: the schema of one worker"
        );
        // Version 2: the images, then the Idempotency-Key table (SPEC §13).
        assert_eq!(db.schema_version(), 2, "round {round}: one version");
    }
}
