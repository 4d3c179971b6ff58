//! `GET /metrics`: Prometheus text with what ingest, the dispatcher and the HTTP layer did,
//! labelled by route patterns and outcomes, never by an account's, endpoint's or event's id.

mod common;

use common::{Engine, Receiver, TestServer, eventually};
use serde_json::json;

async fn metrics_count_requests_events_and_attempts(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start(&engine).await;
    let ep = s.endpoint(&rx.url("m"), &["*"]).await;
    let ev = s.event("click", json!({})).await;
    let dlv = ev["deliveries"][0]["id"].as_str().unwrap().to_owned();
    s.wait_delivery(&dlv, "succeeded").await;
    let (status, _) = s.get("/v1/events/evt_nope").await;
    assert_eq!(status, 404);

    let text = eventually("the attempt to be counted", || async {
        let resp = s.http.get(s.url("/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/plain"), "{ct}");
        let text = resp.text().await.unwrap();
        text.contains("hookline_attempts_total{outcome=\"succeeded\"}")
            .then_some(text)
    })
    .await;
    for needle in [
        "hookline_events_accepted_total",
        "hookline_attempt_duration_seconds_bucket",
        "hookline_http_requests_total{method=\"POST\",route=\"/v1/events\",status=\"202\"}",
        "hookline_http_requests_total{method=\"GET\",route=\"/v1/events/{id}\",status=\"404\"}",
        "hookline_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    if matches!(engine, Engine::Sqlite) {
        // The writer's group commits, in buckets fine enough for a page cache's write.
        for needle in [
            "hookline_sqlite_group_commit_duration_seconds_bucket{le=\"0.00005\"}",
            "hookline_sqlite_commit_duration_seconds_bucket{le=\"0.0001\"}",
            "hookline_sqlite_group_commit_jobs_bucket{le=\"2048\"}",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
        };
        // At least the endpoint's and the event's commits; each commit is part of its
        // group's time.
        assert!(
            value("hookline_sqlite_commit_duration_seconds_count") >= 2.0,
            "{text}"
        );
        assert!(
            value("hookline_sqlite_group_commit_jobs_sum") >= 2.0,
            "{text}"
        );
        assert!(
            value("hookline_sqlite_group_commit_duration_seconds_sum")
                >= value("hookline_sqlite_commit_duration_seconds_sum"),
            "{text}"
        );
    }
    for id in [
        ep["id"].as_str().unwrap(),
        ev["id"].as_str().unwrap(),
        &dlv,
        "evt_nope",
    ] {
        assert!(!text.contains(id), "an id in the metrics: {id}");
    }
}

on_both_engines!(metrics_count_requests_events_and_attempts);
