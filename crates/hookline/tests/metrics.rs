//! `GET /metrics`: Prometheus text with what ingest, the dispatcher and the HTTP layer did,
//! labelled by route patterns and outcomes, never by an account's, endpoint's or event's id.

mod common;

use common::{Engine, Receiver, Reply, TestServer, eventually};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

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

/// `hookline_deliveries_ended_total{status,reason}`, read from `GET /metrics`: each series'
/// value (0 for one not shown).
async fn ended_counts(s: &TestServer) -> BTreeMap<String, f64> {
    let text = common::metrics_text(&s.http, &s.url("")).await;
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("hookline_deliveries_ended_total{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").unwrap();
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .unwrap()
                .trim_end_matches('"')
                .to_owned()
        };
        let (status, reason) = (label("status"), label("reason"));
        let expected = if reason == "delivered" {
            "succeeded"
        } else {
            "failed"
        };
        assert_eq!(status, expected, "{line}");
        counts.insert(reason, value.trim().parse().unwrap());
    }
    counts
}

/// What each reason gained since `before`.
fn gained(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, reason: &str) -> f64 {
    after.get(reason).copied().unwrap_or(0.0) - before.get(reason).copied().unwrap_or(0.0)
}

/// Posts `n` events of `event_type`; returns their deliveries' ids.
async fn deliveries_of(s: &TestServer, event_type: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let ev = s.event(event_type, json!({})).await;
        ids.push(ev["deliveries"][0]["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Every delivery's ending is counted once, by why: an attempt's `2xx`, a failed attempt
/// that ended it (the schedule spent, a `410`), a hold that outlasted the schedule, or its
/// endpoint turned off. The last two show nowhere else in the metrics. Every series is
/// there from the start, at zero.
///
/// One test runs both engines in turn (the counts are the process's, and the other test
/// here only delivers): the failure counts must move by exactly what this test ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_ended_are_counted_by_why() {
    let mut engines = vec![Engine::Sqlite];
    engines.extend(Engine::postgres());
    for engine in engines {
        ended_by_attempts_and_holds(&engine).await;
        ended_by_turning_off(&engine).await;
    }
}

/// While events keep coming for an endpoint held back (a `Retry-After` of an hour), the
/// poller does not look for due work at each of them: they have no room, and it rests
/// until the next time something falls due (or its cap of 5 s). On PostgreSQL ingest
/// writes them `pending`, due at once: a poller that looked again at once for work that
/// fell due since its claim looked went on looking, every few milliseconds, for as long
/// as they came. (In this binary because the count of looks is the process's: the other
/// test here adds an idle server's few.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poller_rests_while_a_held_endpoint_s_events_keep_coming() {
    let mut engines = vec![Engine::Sqlite];
    engines.extend(Engine::postgres());
    for engine in engines {
        let rx = Receiver::start().await;
        rx.always("held", Reply::RetryAfter(503, 3600));
        let s = TestServer::start(&engine).await;
        s.endpoint(&rx.url("held"), &["complaint"]).await;
        let first = deliveries_of(&s, "complaint", 1).await;
        // Its attempt recorded: the hold is on.
        eventually("the first attempt to be recorded", || async {
            let (_, d) = s.get(&format!("/v1/deliveries/{}", first[0])).await;
            (d["attempt_count"] == 1).then_some(())
        })
        .await;
        let base = s.url("");
        let polls = || common::metric(&s.http, &base, "hookline_dispatch_polls_total");
        let before = polls().await.unwrap();
        // Eight senders for 4 s: an event every few milliseconds, so that a look is likely
        // to find one that fell due since its claim looked. (This machine did not make the
        // poller go on without the rest it now takes after a second look that took
        // nothing: 2 looks in 6 s with 13,000 events on PostgreSQL. Its commits come too
        // late for the window; a faster disk's would not.)
        let started = std::time::Instant::now();
        let mut senders = tokio::task::JoinSet::new();
        let body = json!({"type": "complaint", "data": common::valid("complaint", json!({}))});
        for _ in 0..8 {
            let (http, url, key) = (s.http.clone(), s.url("/v1/events"), s.key.clone());
            let body = body.clone();
            senders.spawn(async move {
                let mut sent = 0;
                while started.elapsed() < Duration::from_secs(4) {
                    let resp = http
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 202);
                    sent += 1;
                }
                sent
            });
        }
        let mut sent = 0;
        while let Some(n) = senders.join_next().await {
            sent += n.unwrap();
        }
        let after = polls().await.unwrap();
        assert_eq!(rx.got("held").len(), 1, "{engine:?}: the hold was not kept");
        // A few looks (one or two per cap of 5 s, and the other test's idle server), not one
        // every few milliseconds.
        assert!(
            after - before < 40.0,
            "{engine:?}: {} looks for due work in {:?} while {sent} held events came",
            after - before,
            started.elapsed()
        );
    }
}

async fn ended_by_attempts_and_holds(engine: &Engine) {
    let rx = Receiver::start().await;
    rx.always("fail", Reply::Status(500));
    rx.always("gone", Reply::Status(410));
    rx.always("held", Reply::RetryAfter(503, 3600));
    // The sweep of deliveries behind holds every 100 ms, not every minute (on PostgreSQL a
    // hold of an hour is passed only by a whole sweep, one in 60: every 6 s here).
    let s = TestServer::start_with(engine, |c| {
        c.dispatch.stale_sweep = Duration::from_millis(100);
    })
    .await;
    let before = ended_counts(&s).await;
    for reason in ["delivered", "attempt_failed", "held_back", "endpoint_off"] {
        assert!(
            before.contains_key(reason),
            "{reason} not shown at start: {before:?}"
        );
    }
    s.endpoint(&rx.url("ok"), &["open"]).await;
    s.endpoint(&rx.url("fail"), &["click"]).await;
    s.endpoint(&rx.url("gone"), &["bounce"]).await;
    s.endpoint(&rx.url("held"), &["complaint"]).await;
    let ok = deliveries_of(&s, "open", 2).await;
    let fail = deliveries_of(&s, "click", 1).await;
    let gone = deliveries_of(&s, "bounce", 1).await;
    let held = deliveries_of(&s, "complaint", 2).await;
    for id in ok {
        s.wait_delivery(&id, "succeeded").await;
    }
    for id in fail.iter().chain(&gone).chain(&held) {
        s.wait_delivery(id, "failed").await;
    }
    // The schedule (three steps) spent on one, a 410 on the other.
    let (_, d) = s.get(&format!("/v1/deliveries/{}", fail[0])).await;
    assert_eq!(d["attempts"].as_array().unwrap().len(), 4, "{d}");
    for id in &held {
        let (_, d) = s.get(&format!("/v1/deliveries/{id}")).await;
        assert!(
            d["last_error"].as_str().unwrap().contains("held back"),
            "{d}"
        );
    }
    let after = eventually("the endings to be counted", || async {
        let after = ended_counts(&s).await;
        (gained(&before, &after, "held_back") >= 2.0).then_some(after)
    })
    .await;
    assert!(gained(&before, &after, "delivered") >= 2.0, "{after:?}");
    assert_eq!(gained(&before, &after, "attempt_failed"), 2.0, "{after:?}");
    assert_eq!(gained(&before, &after, "held_back"), 2.0, "{after:?}");
    assert_eq!(gained(&before, &after, "endpoint_off"), 0.0, "{after:?}");
}

async fn ended_by_turning_off(engine: &Engine) {
    let rx = Receiver::start().await;
    rx.always("removed", Reply::RetryAfter(503, 3600));
    rx.always("disabled", Reply::RetryAfter(503, 3600));
    // The default sweep (a minute): what waits behind the holds stays `pending`.
    let s = TestServer::start(engine).await;
    let before = ended_counts(&s).await;
    let removed = s.endpoint(&rx.url("removed"), &["delivery"]).await;
    let disabled = s.endpoint(&rx.url("disabled"), &["unsubscribe"]).await;
    let mut waiting = deliveries_of(&s, "delivery", 3).await;
    waiting.extend(deliveries_of(&s, "unsubscribe", 2).await);
    rx.wait_for("removed", 1).await;
    rx.wait_for("disabled", 1).await;
    let (status, _) = s
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/endpoints/{}", removed["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = s
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/endpoints/{}", disabled["id"].as_str().unwrap()),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    for id in &waiting {
        s.wait_delivery(id, "failed").await;
    }
    let after = eventually("the endings to be counted", || async {
        let after = ended_counts(&s).await;
        (gained(&before, &after, "endpoint_off") >= 5.0).then_some(after)
    })
    .await;
    assert_eq!(gained(&before, &after, "endpoint_off"), 5.0, "{after:?}");
    assert_eq!(gained(&before, &after, "held_back"), 0.0, "{after:?}");
    assert_eq!(gained(&before, &after, "attempt_failed"), 0.0, "{after:?}");
}
