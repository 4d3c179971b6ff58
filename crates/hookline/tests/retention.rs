//! Retention, on both storage engines: with a short period, an event whose deliveries have
//! ended goes (with its deliveries and attempts); one with a delivery still open stays; and
//! each account keeps its events for its own plan's period. `/metrics` counts what it did.

mod common;

use common::{Engine, Receiver, Reply, TestServer, eventually};
use serde_json::json;
use std::time::Duration;

async fn expired_events_go_and_open_ones_stay(engine: Engine) {
    let rx = Receiver::start().await;
    rx.always("down", Reply::Status(500));
    let s = TestServer::start_with(&engine, |c| {
        c.limits.pro.retention = Duration::from_secs(1);
        c.admin_token = hookline::api::admin::AdminToken::new(Some("admin"));
        c.retention_sweep = Duration::from_millis(200);
        // A failed attempt waits an hour: that delivery stays open through the test.
        c.dispatch.retry = hookline::dispatch::retry::RetrySchedule::parse("1h").unwrap();
    })
    .await;
    // A Business account's event, older than all the others, is kept for Business's period.
    let (_, created) = s
        .call_as(
            "admin",
            reqwest::Method::POST,
            "/admin/v1/accounts",
            Some(json!({"name": "big", "plan": "business"})),
        )
        .await;
    let big_key = created["api_key"]["key"].as_str().unwrap().to_owned();
    let (_, kept) = s
        .call_as(
            &big_key,
            reqwest::Method::POST,
            "/v1/events",
            Some(json!({"type": "open", "data": common::valid("open", json!({}))})),
        )
        .await;
    let kept_id = kept["id"].as_str().unwrap().to_owned();
    s.endpoint(&rx.url("up"), &["open"]).await;
    s.endpoint(&rx.url("down"), &["click"]).await;

    let done = s.event("open", json!({})).await;
    let open = s.event("click", json!({})).await;
    let done_delivery = done["deliveries"][0]["id"].as_str().unwrap().to_owned();
    let open_delivery = open["deliveries"][0]["id"].as_str().unwrap().to_owned();
    s.wait_delivery(&done_delivery, "succeeded").await;
    rx.wait_for("down", 1).await;

    let done_id = done["id"].as_str().unwrap().to_owned();
    eventually("the ended event to expire", || async {
        let (status, _) = s.get(&format!("/v1/events/{done_id}")).await;
        (status == 404).then_some(())
    })
    .await;
    let (status, _) = s.get(&format!("/v1/deliveries/{done_delivery}")).await;
    assert_eq!(status, 404, "its delivery (and attempts) went with it");
    // A consumer that resumes after it is told how to go on, and from when.
    let (status, b) = s.get(&format!("/v1/events?after={done_id}")).await;
    assert_eq!(status, 404, "{b}");
    let made = ulid::Ulid::from_string(&done_id["evt_".len()..])
        .unwrap()
        .timestamp_ms();
    let made = hookline::model::Timestamp(made as i64).to_string();
    let message = b["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("resume from a time with ?since=") && message.contains(&made),
        "{message}"
    );
    // `/metrics` tells what retention did, and when it last went through.
    let base = s.url("");
    let removed = common::metric(&s.http, &base, "hookline_retention_events_removed_total").await;
    assert!(removed.is_some_and(|n| n >= 1.0), "{removed:?}");
    let completed = common::metric(
        &s.http,
        &base,
        "hookline_retention_sweeps_total{outcome=\"completed\"}",
    )
    .await;
    assert!(completed.is_some_and(|n| n >= 1.0), "{completed:?}");
    let last = common::metric(
        &s.http,
        &base,
        "hookline_retention_last_sweep_timestamp_seconds",
    )
    .await
    .unwrap_or(0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 60.0..=now + 1.0).contains(&last),
        "{last} against {now}"
    );

    // The event with an open delivery outlives the period.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, ev) = s
        .get(&format!("/v1/events/{}", open["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200, "{ev}");
    let (status, d) = s.get(&format!("/v1/deliveries/{open_delivery}")).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["status"], "pending", "{d}");
    // The Business account's ended event, older than both, is still there.
    let status = s
        .http
        .get(s.url(&format!("/v1/events/{kept_id}")))
        .bearer_auth(&big_key)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

on_both_engines!(expired_events_go_and_open_ones_stay);
