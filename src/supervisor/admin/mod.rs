//! The supervisor's admin endpoint (SPEC §11): `GET /metrics` for
//! Prometheus, `GET /status.json` and a status page at `GET /`.
//!
//! It listens on `--admin-port` on 127.0.0.1 only, whatever `--bind` says,
//! and nginx never proxies to it. What it shows:
//! - every child, from the core's latest snapshot (the same data as
//!   `state.json`): up, restarts, last exit, uptime, health-check misses;
//!   other hosts' workers in nginx's upstream are no children: only their
//!   weight is shown, labelled with their address;
//! - each worker's request counts and latency histogram, read from the
//!   worker at `/_gallery/stats` when scraped (see `crate::api::stats`);
//! - nginx's connection counters from `stub_status`, on a unix socket in the
//!   run directory that only the generated config's extra server listens on.
//!
//! The exposition format is `prometheus-client`'s: the values are gathered
//! per scrape and handed to its encoder through a [`Collector`].
//! A sampler keeps each worker's totals every [`SAMPLE_EVERY`] for the last
//! [`HISTORY`], for the page's charts.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde_json::json;

use super::state::{ChildState, Phase, StackState};
use crate::api::stats::{BUCKETS, CLASSES, ROUTES, STATS_PATH, StatsSnapshot};
use crate::plan::Role;

/// How often the page's history is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How much history the page gets.
pub const HISTORY: Duration = Duration::from_secs(300);
/// How long a scrape waits for one worker or nginx.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the admin endpoint knows, shared with the executor.
pub struct AdminView {
    pub state: Option<StackState>,
    /// Per worker: (Unix seconds, requests so far, 5xx so far).
    history: HashMap<String, VecDeque<(u64, u64, u64)>>,
    /// Where the servers are reached (the bind address, or loopback).
    connect_ip: IpAddr,
    /// nginx's `stub_status` socket.
    nginx_status: PathBuf,
}

pub type SharedView = Arc<Mutex<AdminView>>;

impl AdminView {
    pub fn shared(connect_ip: IpAddr, nginx_status: PathBuf) -> SharedView {
        Arc::new(Mutex::new(AdminView {
            state: None,
            history: HashMap::new(),
            connect_ip,
            nginx_status,
        }))
    }
}

/// The unix socket nginx answers `stub_status` on.
pub fn nginx_status_socket(run_dir: &std::path::Path) -> PathBuf {
    run_dir.join("nginx-status.sock")
}

/// Serves the endpoint on `listener` (bound by the caller on 127.0.0.1).
pub async fn serve(listener: std::net::TcpListener, view: SharedView) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tokio::spawn(sample(view.clone()));
    let app = Router::new()
        .route("/", get(page))
        .route("/status.json", get(status_json))
        .route("/metrics", get(metrics))
        .with_state(view);
    axum::serve(listener, app).await
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("status.html"),
    )
        .into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn status_json(State(view): State<SharedView>) -> Response {
    let view = view
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (supervisor_pid, children) = match &view.state {
        Some(state) => (state.supervisor_pid, state.children.clone()),
        None => (std::process::id(), Vec::new()),
    };
    let workers: serde_json::Map<String, serde_json::Value> = view
        .history
        .iter()
        .map(|(name, samples)| {
            let samples: Vec<[u64; 3]> = samples.iter().map(|&(t, r, e)| [t, r, e]).collect();
            (name.clone(), json!(samples))
        })
        .collect();
    let body = json!({
        "supervisor_pid": supervisor_pid,
        "now": unix_now(),
        "children": children,
        "history": {"interval_seconds": SAMPLE_EVERY.as_secs(), "workers": workers},
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// The running workers: (name, address).
fn workers(view: &AdminView) -> Vec<(String, SocketAddr)> {
    view.state
        .iter()
        .flat_map(|state| &state.children)
        .filter(|c| c.role == Role::Api && c.pid.is_some() && c.state != Phase::Failed)
        .map(|c| (c.name.clone(), SocketAddr::new(view.connect_ip, c.port)))
        .collect()
}

/// Each worker's counts, asked of every worker at once.
async fn scrape_workers(targets: Vec<(String, SocketAddr)>) -> Vec<(String, StatsSnapshot)> {
    let mut asks = tokio::task::JoinSet::new();
    for (name, address) in targets {
        asks.spawn(async move {
            let body = super::probe::get_body(address, STATS_PATH, SCRAPE_TIMEOUT).await?;
            let stats: StatsSnapshot = serde_json::from_slice(&body).ok()?;
            Some((name, stats))
        });
    }
    let mut found: Vec<(String, StatsSnapshot)> =
        asks.join_all().await.into_iter().flatten().collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Samples every worker's totals for the page's charts.
async fn sample(view: SharedView) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    let keep = (HISTORY.as_secs() / SAMPLE_EVERY.as_secs()) as usize;
    loop {
        ticks.tick().await;
        let targets = workers(
            &view
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let scraped = scrape_workers(targets).await;
        let now = unix_now();
        let mut view = view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let live: Vec<String> = workers(&view).into_iter().map(|(name, _)| name).collect();
        view.history.retain(|name, _| live.contains(name));
        for (name, stats) in scraped {
            let samples = view.history.entry(name).or_default();
            samples.push_back((now, stats.total(), stats.errors()));
            while samples.len() > keep {
                samples.pop_front();
            }
        }
    }
}

/// nginx's `stub_status` counters.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct NginxStatus {
    active: u64,
    accepted: u64,
    handled: u64,
    requests: u64,
    reading: u64,
    writing: u64,
    waiting: u64,
}

/// Parses `stub_status` text: "Active connections: 1 \n server accepts
/// handled requests\n 5 5 9 \nReading: 0 Writing: 1 Waiting: 0 \n".
fn parse_stub_status(text: &str) -> Option<NginxStatus> {
    let numbers: Vec<u64> = text
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    let [
        active,
        accepted,
        handled,
        requests,
        reading,
        writing,
        waiting,
    ] = numbers[..]
    else {
        return None;
    };
    Some(NginxStatus {
        active,
        accepted,
        handled,
        requests,
        reading,
        writing,
        waiting,
    })
}

/// Everything one scrape found, encoded by `prometheus-client`.
#[derive(Debug)]
struct Scrape {
    now: u64,
    children: Vec<ChildState>,
    workers: Vec<(String, StatsSnapshot)>,
    nginx: Option<NginxStatus>,
}

type Labels = Vec<(&'static str, String)>;

/// One family of constant values, each with its labels.
fn family<V: Copy, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    values: &[(Labels, V)],
    metric: impl Fn(V) -> M,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in values {
        metric(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        (name, help, MetricType::Gauge),
        values,
        ConstGauge::new,
    )
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        (name, help, MetricType::Counter),
        values,
        ConstCounter::new,
    )
}

/// "exit code 3" → 3; "signal 9 (SIGKILL)" → the signal.
fn exit_code_and_signal(last_exit: Option<&str>) -> (Option<i64>, Option<i64>) {
    let Some(text) = last_exit else {
        return (None, None);
    };
    let number = |prefix: &str| {
        text.strip_prefix(prefix)?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    (number("exit code "), number("signal "))
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let child = |c: &ChildState| vec![("child", c.name.clone())];
        let supervised = || self.children.iter().filter(|c| !c.remote);
        let each = |value: &dyn Fn(&ChildState) -> Option<i64>| -> Vec<(Labels, i64)> {
            supervised()
                .filter_map(|c| Some((child(c), value(c)?)))
                .collect()
        };
        gauge(
            &mut encoder,
            "gallery_child_up",
            "1 when the child runs and has answered, else 0",
            &each(&|c| Some(i64::from(c.state == Phase::Running && c.pid.is_some()))),
        )?;
        let restarts: Vec<(Labels, u64)> = supervised()
            .map(|c| (child(c), u64::from(c.restarts)))
            .collect();
        counter(
            &mut encoder,
            "gallery_child_restarts",
            "Times the supervisor started the child again",
            &restarts,
        )?;
        gauge(
            &mut encoder,
            "gallery_child_uptime_seconds",
            "How long the child's current process has run",
            &each(&|c| Some(self.now.saturating_sub(c.started_at?) as i64)),
        )?;
        gauge(
            &mut encoder,
            "gallery_child_health_check_misses",
            "Health checks missed in a row by the child's current process",
            &each(&|c| Some(i64::from(c.health?.misses))),
        )?;
        gauge(
            &mut encoder,
            "gallery_child_last_exit_code",
            "Exit code of the child's last exit, when it exited with one",
            &each(&|c| exit_code_and_signal(c.last_exit.as_deref()).0),
        )?;
        gauge(
            &mut encoder,
            "gallery_child_last_exit_signal",
            "Signal that ended the child's last process, when one did",
            &each(&|c| exit_code_and_signal(c.last_exit.as_deref()).1),
        )?;
        let remote: Vec<(Labels, i64)> = self
            .children
            .iter()
            .filter(|c| c.remote)
            .map(|c| {
                let address = c.address.clone().unwrap_or_default();
                let labels = vec![("worker", c.name.clone()), ("address", address)];
                (labels, i64::from(c.weight.unwrap_or(1)))
            })
            .collect();
        gauge(
            &mut encoder,
            "gallery_remote_worker_weight",
            "Weight in nginx's upstream of another host's worker (--upstream; not supervised here)",
            &remote,
        )?;

        let mut requests = Vec::new();
        for (worker, stats) in &self.workers {
            for (route, by_class) in ROUTES.iter().zip(&stats.requests) {
                for (class, count) in CLASSES.iter().zip(by_class) {
                    let labels = vec![
                        ("worker", worker.clone()),
                        ("route", route.to_string()),
                        ("status", class.to_string()),
                    ];
                    requests.push((labels, *count));
                }
            }
        }
        counter(
            &mut encoder,
            "gallery_worker_requests",
            "Requests a worker answered, by route and status class (not the supervisor's checks)",
            &requests,
        )?;
        let mut latency = encoder.encode_descriptor(
            "gallery_worker_request_duration_seconds",
            "Time a worker took to answer a request",
            None,
            MetricType::Histogram,
        )?;
        for (worker, stats) in &self.workers {
            let mut buckets: Vec<(f64, u64)> = BUCKETS
                .iter()
                .copied()
                .zip(stats.latency_buckets.iter().copied())
                .collect();
            buckets.push((
                f64::INFINITY,
                stats.latency_buckets.last().copied().unwrap_or(0),
            ));
            let labels = vec![("worker", worker.clone())];
            latency
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    stats.latency_sum_seconds,
                    stats.latency_buckets.iter().sum(),
                    &buckets,
                    None,
                )?;
        }

        if let Some(nginx) = self.nginx {
            let none = Vec::new();
            gauge(
                &mut encoder,
                "gallery_nginx_connections_active",
                "Client connections nginx holds, including waiting ones",
                &[(none.clone(), nginx.active as i64)],
            )?;
            for (state, value) in [
                ("reading", nginx.reading),
                ("writing", nginx.writing),
                ("waiting", nginx.waiting),
            ] {
                gauge(
                    &mut encoder,
                    &format!("gallery_nginx_connections_{state}"),
                    &format!("Client connections nginx is {state} on"),
                    &[(none.clone(), value as i64)],
                )?;
            }
            counter(
                &mut encoder,
                "gallery_nginx_connections_accepted",
                "Client connections nginx accepted",
                &[(none.clone(), nginx.accepted)],
            )?;
            counter(
                &mut encoder,
                "gallery_nginx_connections_handled",
                "Client connections nginx handled",
                &[(none.clone(), nginx.handled)],
            )?;
            counter(
                &mut encoder,
                "gallery_nginx_http_requests",
                "Client requests nginx received",
                &[(none, nginx.requests)],
            )?;
        }
        Ok(())
    }
}

/// The classic Prometheus text format (0.0.4) from OpenMetrics text, for
/// clients that do not ask for OpenMetrics (`promtool`, `curl`): a counter
/// family `x` is named `x_total` there, and there is no `# EOF`/`# UNIT`.
fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

async fn metrics(State(view): State<SharedView>, headers: axum::http::HeaderMap) -> Response {
    let (children, targets, nginx_status) = {
        let view = view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let children = view
            .state
            .as_ref()
            .map(|s| s.children.clone())
            .unwrap_or_default();
        (children, workers(&view), view.nginx_status.clone())
    };
    let (workers, nginx) = tokio::join!(
        scrape_workers(targets),
        super::probe::get_body_unix(&nginx_status, "/stub_status", SCRAPE_TIMEOUT)
    );
    let nginx = nginx.and_then(|body| parse_stub_status(&String::from_utf8_lossy(&body)));
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        now: unix_now(),
        children,
        workers,
        nginx,
    }));
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let (content_type, text) = if wants_openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            openmetrics_to_prometheus(&text),
        )
    };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_status_and_exits_are_read() {
        let text = "Active connections: 3 \nserver accepts handled requests\n 10 10 42 \nReading: 0 Writing: 1 Waiting: 2 \n";
        assert_eq!(
            parse_stub_status(text),
            Some(NginxStatus {
                active: 3,
                accepted: 10,
                handled: 10,
                requests: 42,
                reading: 0,
                writing: 1,
                waiting: 2
            })
        );
        assert_eq!(parse_stub_status("nonsense"), None);
        assert_eq!(exit_code_and_signal(Some("exit code 3")), (Some(3), None));
        assert_eq!(
            exit_code_and_signal(Some("signal 9 (SIGKILL)")),
            (None, Some(9))
        );
        assert_eq!(exit_code_and_signal(None), (None, None));
    }

    #[test]
    fn counters_get_their_total_name_in_the_classic_format() {
        let open = "# HELP a_x Things.\n# TYPE a_x counter\na_x_total 3\n# HELP b Level.\n# TYPE b gauge\nb 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(open),
            "# HELP a_x_total Things.\n# TYPE a_x_total counter\na_x_total 3\n# HELP b Level.\n# TYPE b gauge\nb 1\n"
        );
    }
}
