//! Prometheus metrics: what Hookline counts, and the text served at `GET /metrics`.
//!
//! The `metrics` facade has one recorder per process; every server in the process reports
//! into it (tests run several). What is counted:
//!
//! | name | kind | labels |
//! | --- | --- | --- |
//! | `hookline_http_requests_total` | counter | `method`, `route` (the matched pattern, never an id), `status` |
//! | `hookline_http_request_duration_seconds` | histogram | `route` |
//! | `hookline_events_accepted_total` | counter | |
//! | `hookline_attempts_total` | counter | `outcome`: `succeeded`, `retry`, `failed`, `gone` |
//! | `hookline_attempt_duration_seconds` | histogram | |
//! | `hookline_deliveries_in_memory` | gauge | (this node's dispatcher) |
//! | `hookline_breakers_open` | gauge | (endpoints this node is not sending to) |
//!
//! Labels are bounded: no account, endpoint or event ids.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Seconds: from a fast loopback answer to the attempt timeout.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
];

/// The process's recorder, installed on first use.
pub fn handle() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .map_err(|e| format!("configuring metrics: {e}"))?
                .install_recorder()
                .map_err(|e| format!("installing the metrics recorder: {e}"))
        })
        .clone()
}

/// Counts and times every HTTP request by its route pattern.
pub async fn track_http(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| intern(p.as_str()));
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
    metrics::counter!("hookline_http_requests_total",
        "method" => method, "route" => route, "status" => status_label(resp.status().as_u16()))
    .increment(1);
    metrics::histogram!("hookline_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// A route pattern as a `'static` label: the patterns are the router's, a fixed set, each
/// kept once.
fn intern(pattern: &str) -> &'static str {
    static PATTERNS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let Ok(mut set) = PATTERNS.get_or_init(Default::default).lock() else {
        return "unmatched";
    };
    if let Some(p) = set.get(pattern) {
        return p;
    }
    let p: &'static str = Box::leak(pattern.to_owned().into_boxed_str());
    set.insert(p);
    p
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

/// Events committed by ingest.
pub fn events_accepted(n: usize) {
    metrics::counter!("hookline_events_accepted_total").increment(n as u64);
}

/// One finished attempt: what it decided, and how long the request took.
pub fn attempt(outcome: &'static str, seconds: f64) {
    metrics::counter!("hookline_attempts_total", "outcome" => outcome).increment(1);
    metrics::histogram!("hookline_attempt_duration_seconds").record(seconds);
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
