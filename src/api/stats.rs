//! The worker's own request counts, for the supervisor's `/metrics`
//! (SPEC §11): requests by route and status class, and a latency histogram.
//!
//! Plain atomics bumped from the request log ([`count_into`]), so counting
//! costs a few relaxed increments per request and no layer of its own. The supervisor reads them as JSON at
//! `GET /_gallery/stats`, which answers only requests carrying the
//! supervisor's probe header: nginx blanks that header, so through the front
//! door the path is a 404 like any unknown one. The supervisor's own checks
//! (which carry the header) are not counted: the counts are what clients
//! asked for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::Method;
use serde::{Deserialize, Serialize};

/// Where the supervisor reads a worker's counts.
pub const STATS_PATH: &str = "/_gallery/stats";

/// The routes counted apart; anything else is `other`.
pub const ROUTES: [&str; 4] = [
    "GET /images.json",
    "POST /images.json",
    "GET /health",
    "other",
];
/// Status classes, `1xx` to `5xx`.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Upper bounds of the latency buckets, in seconds (then +Inf).
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// One worker's counters since it started.
#[derive(Default)]
pub struct RequestStats {
    requests: [[AtomicU64; CLASSES.len()]; ROUTES.len()],
    /// Per bucket (not cumulative), the last one for +Inf.
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_ns: AtomicU64,
}

/// The counters as read at one moment (the JSON the supervisor reads).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// `[route][class]`, in the order of [`ROUTES`] and [`CLASSES`].
    pub requests: Vec<Vec<u64>>,
    /// Per bucket of [`BUCKETS`], then +Inf; not cumulative.
    pub latency_buckets: Vec<u64>,
    pub latency_sum_seconds: f64,
}

impl StatsSnapshot {
    pub fn total(&self) -> u64 {
        self.requests.iter().flatten().sum()
    }

    /// Requests answered with a 5xx.
    pub fn errors(&self) -> u64 {
        self.requests
            .iter()
            .filter_map(|by_class| by_class.get(4))
            .sum()
    }
}

impl RequestStats {
    fn record(&self, route: usize, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[route][class].fetch_add(1, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self
                .requests
                .iter()
                .map(|row| row.iter().map(|c| c.load(Ordering::Relaxed)).collect())
                .collect(),
            latency_buckets: self
                .latency
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            latency_sum_seconds: self.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

fn route_index(method: &Method, path: &str) -> usize {
    match (method, path) {
        (&Method::GET, "/images.json") => 0,
        (&Method::POST, "/images.json") => 1,
        (&Method::GET, "/health") => 2,
        _ => 3,
    }
}

/// Counts every client request in `stats` (through the request log, which
/// leaves out the supervisor's own checks).
pub fn count_into(stats: std::sync::Arc<RequestStats>) {
    crate::http::observe_requests(Box::new(move |method, path, status, took| {
        stats.record(route_index(method, path), status, took);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_fall_into_their_route_class_and_bucket() {
        let stats = RequestStats::default();
        let quick = Duration::from_micros(300);
        stats.record(0, 200, quick);
        stats.record(0, 200, quick);
        stats.record(1, 422, quick);
        stats.record(3, 503, Duration::from_secs(5));
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.requests[0], [0, 2, 0, 0, 0]);
        assert_eq!(snapshot.requests[1], [0, 0, 0, 1, 0]);
        assert_eq!(snapshot.requests[3], [0, 0, 0, 0, 1]);
        assert_eq!((snapshot.total(), snapshot.errors()), (4, 1));
        assert_eq!(
            *snapshot.latency_buckets.last().unwrap(),
            1,
            "5 s is past every bound"
        );
        assert_eq!(snapshot.latency_buckets.iter().sum::<u64>(), 4);
        assert!(snapshot.latency_sum_seconds >= 5.0);
    }
}
