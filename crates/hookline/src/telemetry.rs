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
use std::sync::OnceLock;
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
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics::counter!("hookline_http_requests_total",
        "method" => method, "route" => route.clone(), "status" => resp.status().as_u16().to_string())
    .increment(1);
    metrics::histogram!("hookline_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
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
