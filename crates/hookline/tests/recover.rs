//! `POST /v1/endpoints/{id}/recover`, on both storage engines: every failed delivery of the
//! endpoint created since a time goes out again (older ones stay failed), bad input and a
//! disabled endpoint are refused and change nothing.

mod common;

use common::{Engine, Receiver, Reply, TestServer, eventually, verify_with_standardwebhooks};
use hookline::model::Timestamp;
use serde_json::json;

async fn failed_deliveries_since_a_time_go_out_again(engine: Engine) {
    let rx = Receiver::start().await;
    rx.always("r", Reply::Status(500));
    // The circuit breaker opens on the way (12 failures in a row): recovery must get past it.
    let s = TestServer::start(&engine).await;
    let ep = s.endpoint(&rx.url("r"), &["*"]).await;
    let id = ep["id"].as_str().unwrap().to_owned();
    let secret = ep["secret"].as_str().unwrap().to_owned();
    let path = format!("/v1/endpoints/{id}/recover");

    let old = s.event("click", json!({})).await;
    let old_dlv = old["deliveries"][0]["id"].as_str().unwrap().to_owned();
    s.wait_delivery(&old_dlv, "failed").await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let since = Timestamp::now().to_string();
    let mut recent = Vec::new();
    for _ in 0..3 {
        let ev = s.event("open", json!({})).await;
        recent.push(ev["deliveries"][0]["id"].as_str().unwrap().to_owned());
    }
    for d in &recent {
        s.wait_delivery(d, "failed").await;
    }

    // Bad input changes nothing.
    for body in [
        json!({"since": "yesterday"}),
        json!({}),
        json!({"since": since, "x": 1}),
    ] {
        let (status, b) = s.post(&path, body).await;
        assert_eq!(status, 422, "{b}");
    }
    let (status, _) = s
        .post("/v1/endpoints/ep_nope/recover", json!({"since": since}))
        .await;
    assert_eq!(status, 404);
    let (_, d) = s.get(&format!("/v1/deliveries/{}", recent[0])).await;
    assert_eq!(d["status"], "failed");

    // A disabled endpoint: 409. (Another one: this one's breaker stays open for the
    // recovery below, which resets it.)
    let (status, off) = s
        .post(
            "/v1/endpoints",
            json!({"url": rx.url("off"), "event_types": ["*"], "enabled": false}),
        )
        .await;
    assert_eq!(status, 201, "{off}");
    let off_path = format!("/v1/endpoints/{}/recover", off["id"].as_str().unwrap());
    let (status, b) = s.post(&off_path, json!({"since": since})).await;
    assert_eq!(
        (status, &b["error"]["code"]),
        (409, &json!("endpoint_disabled")),
        "{b}"
    );

    // The receiver is back: the three recent ones go out again and succeed; the old one
    // stays failed.
    rx.always("r", Reply::Status(200));
    let before = rx.got("r").len();
    let (status, b) = s.post(&path, json!({"since": since})).await;
    assert_eq!((status, &b["recovered"]), (202, &json!(3)), "{b}");
    for d in &recent {
        let done = s.wait_delivery(d, "succeeded").await;
        let attempts = done["attempts"].as_array().unwrap();
        assert_eq!(attempts.last().unwrap()["status_code"], 200, "{done}");
        assert!(attempts.len() >= 2, "{done}");
    }
    let got = eventually("the three to arrive", || async {
        let got = rx.got("r");
        let ok: Vec<_> = got[before..].to_vec();
        (ok.len() >= 3).then_some(ok)
    })
    .await;
    for r in &got {
        verify_with_standardwebhooks(&secret, r);
    }
    let (_, d) = s.get(&format!("/v1/deliveries/{old_dlv}")).await;
    assert_eq!(d["status"], "failed", "{d}");
    // Nothing is left to recover.
    let (status, b) = s.post(&path, json!({"since": since})).await;
    assert_eq!((status, &b["recovered"]), (202, &json!(0)), "{b}");
}

/// The store's recovery steps walk the endpoint's deliveries once, in row order, whatever
/// the batch: a delivery queued again is not looked at twice, and the walk ends.
async fn recovery_steps_look_at_each_delivery_once(engine: Engine) {
    let rx = Receiver::start().await;
    rx.always("r", Reply::Status(500));
    // No circuit breaker in the way: every attempt happens on the schedule.
    let s = TestServer::start_with(&engine, |c| c.dispatch.breaker_threshold = 1000).await;
    let ep = s.endpoint(&rx.url("r"), &["*"]).await;
    let id = ep["id"].as_str().unwrap().to_owned();
    let ok = s.endpoint(&rx.url("ok"), &["open"]).await;
    let mut failed = Vec::new();
    for _ in 0..3 {
        let ev = s.event("click", json!({})).await;
        failed.push(ev["deliveries"][0]["id"].as_str().unwrap().to_owned());
    }
    // A delivery that succeeds (to another endpoint) is never touched.
    let ev = s.event("open", json!({})).await;
    let good = ev["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["endpoint_id"] == ok["id"])
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let both = ev["deliveries"].as_array().unwrap().len();
    assert_eq!(both, 2, "{ev}");
    for d in &failed {
        s.wait_delivery(d, "failed").await;
    }
    s.wait_delivery(&good, "succeeded").await;
    let on_r = ev["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["endpoint_id"] == ep["id"])
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.wait_delivery(&on_r, "failed").await;

    // The receiver is back before the walk: a delivery it queues may go out at once.
    rx.always("r", Reply::Status(200));
    let store = hookline::store::Store::open(&s.location).await.unwrap();
    let account = store.account_by_name("acme".into()).await.unwrap().unwrap();
    let (mut after, mut steps, mut queued) = (0, 0, 0);
    loop {
        let (n, next) = store
            .recover(
                account.id.clone(),
                id.clone(),
                Timestamp(0),
                Timestamp::now(),
                after,
                1,
            )
            .await
            .unwrap()
            .unwrap();
        steps += 1;
        queued += n;
        assert!(steps <= 10, "the walk ends");
        match next {
            Some(seq) => after = seq,
            None => break,
        }
    }
    assert_eq!(queued, 4, "three clicks and the open, each once");
    assert!(
        steps <= 5,
        "one step per delivery, and one that finds the end: {steps}"
    );
    for d in failed.iter().chain([&on_r]) {
        s.wait_delivery(d, "succeeded").await;
    }
    let (_, g) = s.get(&format!("/v1/deliveries/{good}")).await;
    assert_eq!(g["attempts"].as_array().unwrap().len(), 1, "{g}");
    // Another account's endpoint is not found, whatever the step.
    let refused = store
        .recover(
            "acc_other".into(),
            id.clone(),
            Timestamp(0),
            Timestamp::now(),
            0,
            10,
        )
        .await
        .unwrap();
    assert!(matches!(
        refused,
        Err(hookline::store::RetryRefusal::NotFound)
    ));
}

on_both_engines!(
    failed_deliveries_since_a_time_go_out_again,
    recovery_steps_look_at_each_delivery_once
);
