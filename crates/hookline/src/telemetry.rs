//! Prometheus metrics: what Hookline counts, and the text served at `GET /metrics`; and
//! [`Repeating`], how a failure that lasts is said in the log.
//!
//! The `metrics` facade has one recorder per process; every server in the process reports
//! into it (tests run several). What is counted:
//!
//! | name | kind | labels |
//! | --- | --- | --- |
//! | `hookline_http_requests_total` | counter | `method`, `route` (the matched pattern, never an id), `status` |
//! | `hookline_http_request_duration_seconds` | histogram | `route` |
//! | `hookline_http_write_timeouts_total` | counter | (connections closed because their client stopped taking its answer) |
//! | `hookline_events_accepted_total` | counter | |
//! | `hookline_attempts_total` | counter | `outcome`: `succeeded`, `retry`, `failed`, `gone` |
//! | `hookline_attempt_duration_seconds` | histogram | |
//! | `hookline_deliveries_ended_total` | counter | `status`, `reason`: `succeeded`/`delivered`, `failed`/`attempt_failed`, `failed`/`held_back` (waited out the schedule behind a hold, mostly unattempted), `failed`/`endpoint_off` (disabled, removed, gone, or the plan lost webhooks; see `store::Ended`) |
//! | `hookline_deliveries_in_memory` | gauge | (this node's dispatcher) |
//! | `hookline_breakers_open` | gauge | (endpoints this node is not sending to) |
//! | `hookline_dispatch_polls_total` | counter | (the poller's looks for due deliveries: a few a second at most when nothing is due) |
//! | `hookline_sqlite_group_commit_duration_seconds` | histogram | (the SQLite writer's time on each group commit, its own checkpoint included) |
//! | `hookline_sqlite_commit_duration_seconds` | histogram | (each successful `COMMIT` of a group: WAL frames written and fsynced) |
//! | `hookline_sqlite_group_commit_jobs` | histogram | (write jobs per group commit) |
//! | `hookline_sqlite_group_failures_total` | counter | `reason`: `storage_full` (the disk is full: writes answer `503 storage_full` until room is made), `other` |
//! | `hookline_retention_events_removed_total` | counter | (expired events removed, with their deliveries and attempts) |
//! | `hookline_retention_sweeps_total` | counter | `outcome`: `completed`, `failed` |
//! | `hookline_retention_last_sweep_timestamp_seconds` | gauge | (Unix time of this node's last completed sweep, its start before the first; alert when it lags) |
//!
//! The `hookline_sqlite_*` ones are recorded by the SQLite writer thread through the
//! `metrics` facade (the store knows nothing of this module); a node on PostgreSQL has none.
//! The sum of the group commits' time over an interval is the time the one writer was busy:
//! near the whole interval, every write waits behind it.
//!
//! `hookline_deliveries_ended_total` is recorded through the facade too, by either engine's
//! store, once the write that ended the deliveries is committed, on the node that wrote it
//! (on SQLite even if the request that made the write went away meanwhile). It counts
//! endings, not deliveries: one that ends again counts again (a manual retry of an ended
//! one; on PostgreSQL, an attempt in flight when its endpoint was turned off that then
//! succeeds).
//!
//! Labels are bounded: no account, endpoint or event ids.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Seconds: from a fast loopback answer to the attempt timeout.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
];

/// Seconds: a SQLite group commit, from a page cache's write to a slow disk's flush.
const STORE_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Write jobs in one group commit (at most the store's 2,048, and the outcomes riding along).
const GROUP_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];

/// The process's recorder, installed on first use.
pub fn handle() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            // A full name's buckets take precedence over a suffix's.
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("hookline_sqlite_group_commit_duration_seconds".into()),
                        STORE_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("hookline_sqlite_commit_duration_seconds".into()),
                        STORE_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("hookline_sqlite_group_commit_jobs".into()),
                        GROUP_BUCKETS,
                    )
                })
                .map_err(|e| format!("configuring metrics: {e}"))?
                .install_recorder()
                .map_err(|e| format!("installing the metrics recorder: {e}"))
        })
        .clone()
}

/// `make`'s handles, registered with the process's recorder (installed first if need be):
/// a handle made before it would count nowhere, for good.
fn registered<T>(make: impl FnOnce() -> T) -> T {
    if let Err(e) = handle() {
        tracing::error!(error = %e, "metrics are unavailable");
    }
    make()
}

/// Counts and times every HTTP request by its route pattern.
pub async fn track_http(req: Request, next: Next) -> Response {
    let route = route_metrics(
        req.extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", |p| p.as_str()),
    );
    let method = match *req.method() {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PATCH => "PATCH",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        // Any other method a client invents counts as one.
        _ => "other",
    };
    let started = Instant::now();
    let resp = next.run(req).await;
    if let Some(route) = route {
        route.count(method, resp.status().as_u16());
        route.duration.record(started.elapsed().as_secs_f64());
    }
    resp
}

/// One route pattern's metrics, registered once: a lookup in the recorder's registry per
/// request (building the key and its labels) cost more than the request's own routing.
struct RouteMetrics {
    pattern: &'static str,
    duration: Histogram,
    requests: Mutex<HashMap<(&'static str, u16), Counter>>,
}

impl RouteMetrics {
    fn count(&self, method: &'static str, status: u16) {
        let Ok(mut requests) = self.requests.lock() else {
            return;
        };
        requests
            .entry((method, status))
            .or_insert_with(|| {
                registered(|| {
                    metrics::counter!("hookline_http_requests_total",
                        "method" => method, "route" => self.pattern, "status" => status_label(status))
                })
            })
            .increment(1);
    }
}

/// The metrics of a route pattern (the router's, a fixed set), each made once and kept.
fn route_metrics(pattern: &str) -> Option<&'static RouteMetrics> {
    static ROUTES: OnceLock<Mutex<HashMap<&'static str, &'static RouteMetrics>>> = OnceLock::new();
    let mut routes = ROUTES.get_or_init(Default::default).lock().ok()?;
    if let Some(r) = routes.get(pattern) {
        return Some(r);
    }
    let pattern: &'static str = Box::leak(pattern.to_owned().into_boxed_str());
    let route: &'static RouteMetrics = Box::leak(Box::new(RouteMetrics {
        pattern,
        duration: registered(
            || metrics::histogram!("hookline_http_request_duration_seconds", "route" => pattern),
        ),
        requests: Mutex::default(),
    }));
    routes.insert(pattern, route);
    Some(route)
}

/// A status code as a `'static` label.
fn status_label(code: u16) -> &'static str {
    static LABELS: OnceLock<Vec<String>> = OnceLock::new();
    let labels = LABELS.get_or_init(|| (0..600).map(|c| c.to_string()).collect());
    labels
        .get(usize::from(code))
        .map_or("other", String::as_str)
}

/// `GET /metrics`: the Prometheus text format.
pub async fn render() -> Response {
    match handle() {
        Ok(h) => (
            [(
                http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            h.render(),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics are unavailable");
            (
                http::StatusCode::SERVICE_UNAVAILABLE,
                "metrics are unavailable\n",
            )
                .into_response()
        }
    }
}

/// A connection closed because a write of its answer waited the write time for room.
pub fn write_timed_out() {
    static CUT: OnceLock<Counter> = OnceLock::new();
    CUT.get_or_init(|| registered(|| metrics::counter!("hookline_http_write_timeouts_total")))
        .increment(1);
}

/// One look of the poller for due deliveries.
pub fn poll() {
    static POLLS: OnceLock<Counter> = OnceLock::new();
    POLLS
        .get_or_init(|| registered(|| metrics::counter!("hookline_dispatch_polls_total")))
        .increment(1);
}

/// Events committed by ingest.
pub fn events_accepted(n: usize) {
    static ACCEPTED: OnceLock<Counter> = OnceLock::new();
    ACCEPTED
        .get_or_init(|| registered(|| metrics::counter!("hookline_events_accepted_total")))
        .increment(n as u64);
}

/// The outcomes an attempt counts under.
const OUTCOMES: [&str; 4] = ["succeeded", "retry", "failed", "gone"];

/// One finished attempt: what it decided (one of [`OUTCOMES`]), and how long the request
/// took.
pub fn attempt(outcome: &'static str, seconds: f64) {
    static COUNTS: OnceLock<[Counter; 4]> = OnceLock::new();
    static DURATION: OnceLock<Histogram> = OnceLock::new();
    let counts = COUNTS.get_or_init(|| {
        registered(|| {
            OUTCOMES.map(|o| metrics::counter!("hookline_attempts_total", "outcome" => o))
        })
    });
    match OUTCOMES.iter().position(|o| *o == outcome) {
        Some(i) => counts[i].increment(1),
        None => metrics::counter!("hookline_attempts_total", "outcome" => outcome).increment(1),
    }
    DURATION
        .get_or_init(|| registered(|| metrics::histogram!("hookline_attempt_duration_seconds")))
        .record(seconds);
}

/// The store's counts of ended deliveries, at zero from the start (an alert on a rate of
/// failures needs the series before the first one).
pub fn deliveries_ended_started() {
    registered(|| {
        for why in crate::store::Ended::ALL {
            let (status, reason) = why.labels();
            metrics::counter!("hookline_deliveries_ended_total", "status" => status, "reason" => reason)
                .increment(0);
        }
    });
}

/// Retention starts on this node: its counters at zero, and its last sweep at the start.
pub fn retention_started() {
    retention_removed(0);
    retention_counts();
    set_last_sweep();
}

fn retention_counts() -> &'static [Counter; 2] {
    static SWEEPS: OnceLock<[Counter; 2]> = OnceLock::new();
    SWEEPS.get_or_init(|| {
        registered(|| {
            ["completed", "failed"]
                .map(|o| metrics::counter!("hookline_retention_sweeps_total", "outcome" => o))
        })
    })
}

fn set_last_sweep() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!("hookline_retention_last_sweep_timestamp_seconds").set(now);
}

/// One retention sweep, completed or failed (what a failed one removed before it failed is
/// counted all the same, batch by batch, by [`retention_removed`]).
pub fn retention_sweep(completed: bool) {
    let [done, failed] = retention_counts();
    if completed {
        done.increment(1);
        set_last_sweep();
    } else {
        failed.increment(1);
    }
}

/// Expired events removed by retention.
pub fn retention_removed(events: usize) {
    static REMOVED: OnceLock<Counter> = OnceLock::new();
    REMOVED
        .get_or_init(|| registered(|| metrics::counter!("hookline_retention_events_removed_total")))
        .increment(events as u64);
}

/// This node's dispatcher, sampled.
pub fn dispatcher(in_memory: usize, breakers_open: usize) {
    metrics::gauge!("hookline_deliveries_in_memory").set(in_memory as f64);
    metrics::gauge!("hookline_breakers_open").set(breakers_open as f64);
}

/// Keeps the recorder's histograms compact (every few seconds).
pub fn upkeep() {
    if let Ok(h) = handle() {
        h.run_upkeep();
    }
}

/// A failure that repeats while its cause lasts (a full disk), for the log: said at its first
/// occurrence, then at most once every [`REPEAT_SAID_EVERY`] with how many came since, and
/// its end at most as often (a small write may fit where a larger one did not, so a run
/// can end and start again many times a minute).
#[derive(Default)]
pub(crate) struct Repeating {
    failing: bool,
    /// Failures since it was last said.
    unsaid: u64,
    said_failing: Option<std::time::Instant>,
    said_over: Option<std::time::Instant>,
}

/// How often a [`Repeating`] failure, or its end, is said again.
const REPEAT_SAID_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Repeating {
    /// One more failure: `Some(failures since it was last said, this one included)` when
    /// it is to be said.
    pub(crate) fn failed(&mut self) -> Option<u64> {
        self.failing = true;
        self.unsaid += 1;
        if self
            .said_failing
            .is_none_or(|t| t.elapsed() >= REPEAT_SAID_EVERY)
        {
            self.said_failing = Some(std::time::Instant::now());
            return Some(std::mem::take(&mut self.unsaid));
        }
        None
    }

    /// A success: whether the end of a run of failures is to be said.
    pub(crate) fn succeeded(&mut self) -> bool {
        if !std::mem::take(&mut self.failing) {
            return false;
        }
        let say = self
            .said_over
            .is_none_or(|t| t.elapsed() >= REPEAT_SAID_EVERY);
        if say {
            self.said_over = Some(std::time::Instant::now());
        }
        say
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeating_failure_is_said_once_a_minute_and_its_end_too() {
        let mut r = Repeating::default();
        assert!(!r.succeeded(), "no run of failures to end");
        assert_eq!(r.failed(), Some(1), "the first failure is said");
        assert_eq!(r.failed(), None);
        assert!(r.succeeded(), "its end is said");
        // A run that starts again within the minute is counted, not said; nor its end.
        assert_eq!(r.failed(), None);
        assert!(!r.succeeded());
        assert!(!r.succeeded());
    }
}
