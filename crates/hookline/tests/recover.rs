//! `POST /v1/endpoints/{id}/recover`, on both storage engines: every failed delivery of the
//! endpoint created since a time goes out again (older ones stay failed), bad input and a
//! disabled endpoint are refused and change nothing.

mod common;

use common::{Engine, Receiver, Reply, TestServer, eventually, verify_with_standardwebhooks};
use hookline::model::Timestamp;
use reqwest::Method;
use serde_json::json;

async fn failed_deliveries_since_a_time_go_out_again(engine: Engine) {
    let rx = Receiver::start().await;
    rx.always("r", Reply::Status(500));
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

    // A disabled endpoint: 409, nothing queued.
    let (status, _) = s
        .call(
            Method::PATCH,
            &format!("/v1/endpoints/{id}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, b) = s.post(&path, json!({"since": since})).await;
    assert_eq!(
        (status, &b["error"]["code"]),
        (409, &json!("endpoint_disabled")),
        "{b}"
    );
    let (status, _) = s
        .call(
            Method::PATCH,
            &format!("/v1/endpoints/{id}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, 200);

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

on_both_engines!(failed_deliveries_since_a_time_go_out_again);
