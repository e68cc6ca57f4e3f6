//! A load generator for the front door: N connections (one thread and one
//! blocking client each) sending requests until stopped, recording every
//! failure, the latency and the titles of acknowledged POSTs; and the check
//! that each acknowledged POST is stored exactly once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::client;
use super::supervisor::Supervisor;

/// How a connection treats a transport error (a reset or a connection closed
/// under a request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Counts it as a failure.
    Never,
    /// Sends the request once more, as browsers do for an idempotent request
    /// on a reused connection that the server closed (RFC 9110 §9.2.2). POSTs
    /// carry an `Idempotency-Key` (their title), so their retry is safe too.
    /// Only for what nginx itself does to idle client connections when it
    /// reloads its config.
    OnceAfterReset,
}

/// What the connections send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// `GET /api/images.json` only.
    Gets,
    /// Every 4th request of a connection a `POST /api/images.json` with a
    /// unique title, the others GETs.
    Mixed,
}

/// One request that did not get a 2xx answer.
#[derive(Clone, Debug)]
pub struct Failure {
    /// When, counted from the start of the load.
    pub at: Duration,
    /// The status, or `None` for a transport error (connect, reset, timeout,
    /// a truncated body).
    pub status: Option<u16>,
    pub content_type: Option<String>,
    /// The error text or the start of the body.
    pub detail: String,
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    get_failures: Vec<Failure>,
    post_failures: Vec<Failure>,
    max_get_latency: Duration,
    max_post_latency: Duration,
    acknowledged: Vec<String>,
    retried: usize,
}

/// Everything the load saw once stopped.
#[derive(Debug)]
pub struct LoadReport {
    pub connections: usize,
    pub elapsed: Duration,
    pub gets: usize,
    pub posts: usize,
    pub get_failures: Vec<Failure>,
    pub post_failures: Vec<Failure>,
    pub max_get_latency: Duration,
    pub max_post_latency: Duration,
    /// Titles of the POSTs answered 200.
    pub acknowledged: Vec<String>,
    /// Requests sent a second time after a transport error ([`Retry`]).
    pub retried: usize,
}

impl LoadReport {
    pub fn requests(&self) -> usize {
        self.gets + self.posts
    }

    pub fn max_latency(&self) -> Duration {
        self.max_get_latency.max(self.max_post_latency)
    }

    pub fn failures(&self) -> usize {
        self.get_failures.len() + self.post_failures.len()
    }

    /// One line of figures for the test log.
    pub fn summary(&self) -> String {
        format!(
            "{} requests ({} GETs, {} POSTs, {} acknowledged) on {} connections in {:.1?} \
             ({:.0}/s); failed: {} GETs, {} POSTs; retried after a reset: {}; max latency GET {:.0?}, POST {:.0?}",
            self.requests(),
            self.gets,
            self.posts,
            self.acknowledged.len(),
            self.connections,
            self.elapsed,
            self.requests() as f64 / self.elapsed.as_secs_f64().max(0.001),
            self.get_failures.len(),
            self.post_failures.len(),
            self.retried,
            self.max_get_latency,
            self.max_post_latency,
        )
    }

    /// Panics unless every request got a 2xx answer.
    pub fn assert_no_failures(&self) {
        assert!(
            self.get_failures.is_empty() && self.post_failures.is_empty(),
            "{}\nfailed GETs (first 5): {:#?}\nfailed POSTs (first 5): {:#?}",
            self.summary(),
            &self.get_failures[..self.get_failures.len().min(5)],
            &self.post_failures[..self.post_failures.len().min(5)],
        );
    }

    /// Panics unless no GET failed and every failed POST was a JSON 502 (a
    /// POST in flight on a killed worker, which nginx must not replay).
    pub fn assert_gets_never_fail_and_posts_only_502(&self) {
        assert!(
            self.get_failures.is_empty(),
            "{}\nfailed GETs (first 5): {:#?}",
            self.summary(),
            &self.get_failures[..self.get_failures.len().min(5)],
        );
        let other: Vec<&Failure> = self
            .post_failures
            .iter()
            .filter(|f| {
                f.status != Some(502)
                    || !f
                        .content_type
                        .as_deref()
                        .is_some_and(|t| t.starts_with("application/json"))
            })
            .collect();
        assert!(
            other.is_empty(),
            "{}\nPOST failures other than a JSON 502 (first 5): {:#?}",
            self.summary(),
            &other[..other.len().min(5)],
        );
    }
}

/// A running load; [`Load::stop`] ends it and yields the report. Dropping it
/// without `stop` also stops the threads (a failing test must not leave
/// them hammering the next test's stack).
pub struct Load {
    stop: Arc<AtomicBool>,
    gets: Arc<AtomicUsize>,
    posts: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<Tally>>,
    started: Instant,
    connections: usize,
}

/// Tells loads apart, so titles stay unique across loads on one database.
static LOADS: AtomicUsize = AtomicUsize::new(0);

impl Load {
    /// Starts `connections` connections against the stack's front door.
    pub fn start(stack: &Supervisor, connections: usize, mix: Mix) -> Load {
        Self::start_at(stack.url("/api/images.json"), connections, mix)
    }

    /// Starts `connections` connections against `url` (GET and POST target).
    pub fn start_at(url: String, connections: usize, mix: Mix) -> Load {
        Self::start_with(url, connections, mix, Retry::Never)
    }

    /// Like [`Load::start`], retrying as `retry` says.
    pub fn start_retrying(stack: &Supervisor, connections: usize, mix: Mix, retry: Retry) -> Load {
        Self::start_with(stack.url("/api/images.json"), connections, mix, retry)
    }

    fn start_with(url: String, connections: usize, mix: Mix, retry: Retry) -> Load {
        let load_id = LOADS.fetch_add(1, Ordering::SeqCst);
        let stop = Arc::new(AtomicBool::new(false));
        let gets = Arc::new(AtomicUsize::new(0));
        let posts = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let threads = (0..connections)
            .map(|connection| {
                let (stop, gets, posts, url) =
                    (stop.clone(), gets.clone(), posts.clone(), url.clone());
                std::thread::spawn(move || {
                    let client = client();
                    let mut tally = Tally::default();
                    let mut n = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let post = mix == Mix::Mixed && n.is_multiple_of(4);
                        let title = format!("load {load_id}.{connection}.{n}");
                        let request = if post {
                            let body = serde_json::json!({
                                "title": title, "alt_text": "", "url": "/p",
                            });
                            let post = client.post(&url).body(body.to_string());
                            match retry {
                                Retry::OnceAfterReset => post.header("idempotency-key", &title),
                                Retry::Never => post,
                            }
                        } else {
                            client.get(&url)
                        };
                        let again = request.try_clone();
                        let sent = Instant::now();
                        let mut outcome = send(request);
                        if let (Err(_), Retry::OnceAfterReset, Some(again)) =
                            (&outcome, retry, again)
                        {
                            tally.retried += 1;
                            outcome = send(again);
                        }
                        let latency = sent.elapsed();
                        let failed = |status, content_type, detail| Failure {
                            at: sent.duration_since(started),
                            status,
                            content_type,
                            detail,
                        };
                        let failure = match outcome {
                            Ok((status, _, _)) if (200..300).contains(&status) => None,
                            Ok((status, content_type, body)) => {
                                Some(failed(Some(status), content_type, body))
                            }
                            Err(error) => Some(failed(None, None, error)),
                        };
                        if post {
                            tally.max_post_latency = tally.max_post_latency.max(latency);
                            match failure {
                                Some(f) => tally.post_failures.push(f),
                                None => tally.acknowledged.push(title),
                            }
                            posts.fetch_add(1, Ordering::SeqCst);
                        } else {
                            tally.max_get_latency = tally.max_get_latency.max(latency);
                            tally.get_failures.extend(failure);
                            gets.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    tally
                })
            })
            .collect();
        Load {
            stop,
            gets,
            posts,
            threads,
            started,
            connections,
        }
    }

    /// Requests completed so far (answered or failed).
    pub fn done(&self) -> usize {
        self.gets.load(Ordering::SeqCst) + self.posts.load(Ordering::SeqCst)
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops every connection after its current request and reports.
    pub fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut report = LoadReport {
            connections: self.connections,
            elapsed: Duration::ZERO,
            gets: 0,
            posts: 0,
            get_failures: Vec::new(),
            post_failures: Vec::new(),
            max_get_latency: Duration::ZERO,
            max_post_latency: Duration::ZERO,
            acknowledged: Vec::new(),
            retried: 0,
        };
        for thread in self.threads.drain(..) {
            let tally = thread.join().expect("a load thread panicked");
            report.get_failures.extend(tally.get_failures);
            report.post_failures.extend(tally.post_failures);
            report.max_get_latency = report.max_get_latency.max(tally.max_get_latency);
            report.max_post_latency = report.max_post_latency.max(tally.max_post_latency);
            report.acknowledged.extend(tally.acknowledged);
            report.retried += tally.retried;
        }
        report.elapsed = self.started.elapsed();
        report.gets = self.gets.load(Ordering::SeqCst);
        report.posts = self.posts.load(Ordering::SeqCst);
        report.get_failures.sort_by_key(|f| f.at);
        report.post_failures.sort_by_key(|f| f.at);
        report
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Sends a request and reads the whole body: (status, content type, the
/// start of the body), or the transport error as text.
fn send(
    request: reqwest::blocking::RequestBuilder,
) -> Result<(u16, Option<String>, String), String> {
    let response = request.send().map_err(|e| format!("{e:#?}"))?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response
        .bytes()
        .map_err(|e| format!("status {status}, reading the body: {e:#?}"))?;
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).to_string();
    Ok((status, content_type, text))
}

/// Titles and how many rows carry each, from the SQLite file.
pub fn stored_titles(db: &Path) -> HashMap<String, i64> {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut statement = conn
        .prepare("SELECT title, count(*) FROM images GROUP BY title")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Panics unless every acknowledged title is stored exactly once and no
/// title at all is stored twice; returns how many rows there are.
pub fn assert_stored_once(db: &Path, acknowledged: &[String]) -> usize {
    assert_each_stored_once(&stored_titles(db), acknowledged)
}

/// Panics unless `stored` (title to rows, from either backend) holds every
/// acknowledged title exactly once and no title twice; returns how many
/// titles there are.
pub fn assert_each_stored_once(stored: &HashMap<String, i64>, acknowledged: &[String]) -> usize {
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|t| !stored.contains_key(*t))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged POSTs are not stored, first: {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
    let twice: Vec<(&String, &i64)> = stored.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "titles stored more than once: {:?}",
        &twice[..twice.len().min(5)]
    );
    stored.len()
}
