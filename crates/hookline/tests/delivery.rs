//! End to end over real HTTP: subscriptions, the envelope and signature, retries,
//! Retry-After, 410 Gone, isolation of a hanging endpoint, manual retry.

mod common;

use common::{
    Data, Engine, Receiver, Reply, TestServer, click, endpoint_of, eventually,
    verify_with_standardwebhooks,
};
use hookline::model::{Attempt, DeliveryStatus, Plan, Timestamp};
use hookline::store::{AttemptRecord, DueDelivery, Location, Outcome, Store};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

fn ids(v: &serde_json::Value) -> BTreeSet<String> {
    v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["endpoint_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn subscriptions_filter_by_exact_type_and_star(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start(&engine).await;
    let clicks = s.endpoint(&rx.url("clicks"), &["click"]).await;
    let all = s.endpoint(&rx.url("all"), &["*"]).await;
    let opens = s.endpoint(&rx.url("opens"), &["open", "bounce"]).await;
    let (c, a, o) = (
        clicks["id"].as_str().unwrap().to_owned(),
        all["id"].as_str().unwrap().to_owned(),
        opens["id"].as_str().unwrap().to_owned(),
    );

    let e1 = s.event("click", json!({"n": 1})).await;
    let e2 = s.event("open", json!({"n": 2})).await;
    let e3 = s.event("delivery", json!({"n": 3})).await;
    assert_eq!(ids(&e1), BTreeSet::from([c.clone(), a.clone()]));
    assert_eq!(ids(&e2), BTreeSet::from([a.clone(), o.clone()]));
    assert_eq!(ids(&e3), BTreeSet::from([a.clone()]));

    let got_all = rx.wait_for("all", 3).await;
    let got_clicks = rx.wait_for("clicks", 1).await;
    let got_opens = rx.wait_for("opens", 1).await;
    // Let any stray delivery arrive before checking that none did.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let types = |name: &str| -> BTreeSet<String> {
        rx.got(name)
            .iter()
            .map(|r| r.json()["type"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(got_all.len(), 3);
    assert_eq!(
        types("all"),
        BTreeSet::from(["click".into(), "open".into(), "delivery".into()])
    );
    assert_eq!(rx.got("clicks").len(), 1, "{got_clicks:?}");
    assert_eq!(types("clicks"), BTreeSet::from(["click".into()]));
    assert_eq!(rx.got("opens").len(), 1, "{got_opens:?}");
    assert_eq!(types("opens"), BTreeSet::from(["open".into()]));
}

async fn envelope_headers_and_signature_follow_standard_webhooks(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start(&engine).await;
    let (status, ep) = s
        .post(
            "/v1/endpoints",
            json!({"url": rx.url("crm"), "event_types": ["click"],
                   "headers": {"X-Tenant": "acme"}, "description": "CRM"}),
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    let secret = ep["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    // The secret can be read again, and is not part of the endpoint's other answers.
    let (_, again) = s
        .get(&format!(
            "/v1/endpoints/{}/secret",
            ep["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(again["secret"], secret);
    let (_, read) = s
        .get(&format!("/v1/endpoints/{}", ep["id"].as_str().unwrap()))
        .await;
    assert!(read.get("secret").is_none(), "{read}");

    let data = json!({"message": {"message_id": "m1", "recipient": "a@example.com"},
                      "url": "https://example.com/x", "first_click": true});
    let accepted = s.event("click", data.clone()).await;
    let got = rx.wait_for("crm", 1).await;
    let r = &got[0];
    let body = r.json();
    assert_eq!(body["id"], accepted["id"]);
    assert_eq!(body["type"], "click");
    // Exactly the `data` that was sent (the helper lays it over the type's example).
    assert_eq!(body["data"], common::valid("click", data));
    assert_eq!(body["timestamp"], accepted["created_at"]);
    let ts = body["timestamp"].as_str().unwrap();
    assert!(
        ts.ends_with('Z') && ts.len() == "2026-11-26T17:43:35.123Z".len(),
        "{ts}"
    );
    assert_eq!(body.as_object().unwrap().len(), 4, "{body}");

    assert_eq!(r.header("webhook-id"), accepted["id"].as_str().unwrap());
    let sent_at: i64 = r.header("webhook-timestamp").parse().unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!((now - sent_at).abs() < 60, "{sent_at} vs {now}");
    assert!(r.header("webhook-signature").starts_with("v1,"));
    assert_eq!(r.header("content-type"), "application/json");
    assert!(r.header("user-agent").starts_with("Hookline/"));
    assert_eq!(r.header("x-tenant"), "acme");
    verify_with_standardwebhooks(&secret, r);
    let stranger =
        standardwebhooks::Webhook::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    assert!(stranger.verify(&r.body, &r.headers).is_err());

    let d = s
        .wait_delivery(
            accepted["deliveries"][0]["id"].as_str().unwrap(),
            "succeeded",
        )
        .await;
    assert_eq!(d["attempt_count"], 1);
    assert_eq!(d["attempts"][0]["status_code"], 200);
}

async fn two_500s_then_success_is_retried_with_every_attempt_recorded(engine: Engine) {
    let rx = Receiver::start().await;
    rx.script("flaky", vec![Reply::Status(500), Reply::Status(500)]);
    let s = TestServer::start(&engine).await;
    let ep = s.endpoint(&rx.url("flaky"), &["*"]).await;
    let secret = ep["secret"].as_str().unwrap();
    let ev = s.event("open", json!({"k": "v"})).await;
    let got = rx.wait_for("flaky", 3).await;
    for r in &got {
        assert_eq!(r.header("webhook-id"), ev["id"].as_str().unwrap());
        verify_with_standardwebhooks(secret, r);
    }
    let d = s
        .wait_delivery(ev["deliveries"][0]["id"].as_str().unwrap(), "succeeded")
        .await;
    assert_eq!(d["attempt_count"], 3);
    let codes: Vec<_> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, vec![500, 500, 200]);
    let numbers: Vec<_> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![1, 2, 3]);
}

/// A receiver may answer with any bytes. Its body is kept as text (invalid UTF-8 and NUL
/// read as U+FFFD), and recording it holds up no other outcome: on PostgreSQL a NUL in a
/// text column would fail the whole write of the outcomes riding with it, retried forever.
async fn a_response_body_of_any_bytes_is_recorded_and_holds_up_no_outcome(engine: Engine) {
    let rx = Receiver::start().await;
    rx.script(
        "odd",
        vec![Reply::Body(
            200,
            bytes::Bytes::from_static(b"ok\0bin\xff\x00end"),
        )],
    );
    let s = TestServer::start(&engine).await;
    s.endpoint(&rx.url("odd"), &["*"]).await;
    let first = s.event("open", json!({})).await;
    let d = s
        .wait_delivery(first["deliveries"][0]["id"].as_str().unwrap(), "succeeded")
        .await;
    assert_eq!(
        d["attempts"][0]["response_body"], "ok\u{FFFD}bin\u{FFFD}\u{FFFD}end",
        "{d}"
    );
    // Outcomes after it are recorded too.
    let second = s.event("click", json!({})).await;
    s.wait_delivery(second["deliveries"][0]["id"].as_str().unwrap(), "succeeded")
        .await;
}

/// An answer whose head is longer than a connection's read buffer (4 KiB) is read whole, and
/// its connection serves the next request.
async fn an_answer_with_a_long_head_is_read_whole(engine: Engine) {
    let rx = Receiver::start().await;
    let long = "x".repeat(12 * 1024);
    rx.script(
        "long",
        vec![
            Reply::WithHeader(200, "x-padding", long.clone(), bytes::Bytes::from("first")),
            Reply::WithHeader(200, "x-padding", long, bytes::Bytes::from("second")),
        ],
    );
    let s = TestServer::start(&engine).await;
    s.endpoint(&rx.url("long"), &["*"]).await;
    for body in ["first", "second"] {
        let ev = s.event("open", json!({})).await;
        let d = s
            .wait_delivery(ev["deliveries"][0]["id"].as_str().unwrap(), "succeeded")
            .await;
        assert_eq!(d["attempts"][0]["response_body"], body, "{d}");
    }
}

/// Only the first 4 KiB of a response body is kept, and a character the cut splits is left
/// out whole: it is not shown as a character the receiver never sent, nor does it take the
/// kept text past 4 KiB.
async fn a_long_response_body_is_kept_to_4_kib_of_whole_characters(engine: Engine) {
    let rx = Receiver::start().await;
    // 9,000 bytes of three-byte characters: 4,096 ends one byte into the 1,366th.
    rx.script(
        "euros",
        vec![Reply::Body(200, bytes::Bytes::from("€".repeat(3000)))],
    );
    let s = TestServer::start(&engine).await;
    s.endpoint(&rx.url("euros"), &["*"]).await;
    let ev = s.event("open", json!({})).await;
    let d = s
        .wait_delivery(ev["deliveries"][0]["id"].as_str().unwrap(), "succeeded")
        .await;
    let body = d["attempts"][0]["response_body"].as_str().unwrap();
    assert_eq!(body, "€".repeat(1365), "{d}");
    assert!(body.len() <= 4096);
}

/// An outcome the database refuses holds up no other. Here a rule added beside the server
/// refuses any kept response body that says "poison": the recorder cuts its writes down to
/// that outcome, and writes it without its texts; every other outcome, and that delivery's
/// success, is recorded. (Before, the recorder retried the whole write for good, and the
/// node recorded nothing again.)
async fn an_outcome_the_database_refuses_holds_up_no_other(engine: Engine) {
    let rx = Receiver::start().await;
    rx.always(
        "poison",
        Reply::Body(200, bytes::Bytes::from_static(b"poison")),
    );
    rx.always("fine", Reply::Body(200, bytes::Bytes::from_static(b"ok")));
    let s = TestServer::start(&engine).await;
    match &s.location {
        Location::Sqlite(dir) => {
            let c = rusqlite::Connection::open(dir.join("hookline.db")).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            c.execute_batch(
                "CREATE TRIGGER poison_kept BEFORE UPDATE ON deliveries
                    WHEN NEW.kept_response_body LIKE '%poison%'
                    BEGIN SELECT RAISE(ABORT, 'poison'); END;
                 CREATE TRIGGER poison_moved BEFORE INSERT ON attempts
                    WHEN NEW.response_body LIKE '%poison%'
                    BEGIN SELECT RAISE(ABORT, 'poison'); END;",
            )
            .unwrap();
        }
        Location::Postgres(url) => {
            use sqlx::Connection as _;
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::raw_sql(
                "ALTER TABLE attempts ADD CONSTRAINT no_poison
                    CHECK (response_body NOT LIKE '%poison%')",
            )
            .execute(&mut c)
            .await
            .unwrap();
        }
    }
    let poison = s.endpoint(&rx.url("poison"), &["*"]).await;
    s.endpoint(&rx.url("fine"), &["*"]).await;
    let mut events = Vec::new();
    for i in 0..5 {
        events.push(s.event("click", json!({"i": i})).await);
    }
    for ev in &events {
        for d in ev["deliveries"].as_array().unwrap() {
            let got = s
                .wait_delivery(d["id"].as_str().unwrap(), "succeeded")
                .await;
            let attempt = &got["attempts"][0];
            if d["endpoint_id"] == poison["id"] {
                assert!(attempt["response_body"].is_null(), "{got}");
                assert_eq!(
                    attempt["error"],
                    "the database refused this attempt's response body or error text",
                    "{got}"
                );
            } else {
                assert_eq!(attempt["response_body"], "ok", "{got}");
            }
        }
    }
}

/// Deliveries ended because their endpoint was held back (an open breaker, a long
/// `Retry-After`) until their schedule ran out say so in words that fit their attempts: never
/// attempted, or ended early after some, with what the last one got (a status or an error).
async fn a_delivery_ended_by_a_hold_says_what_its_attempts_got(engine: Engine) {
    let data = Data::fresh(&engine).await;
    let store = Store::open(&data.location).await.unwrap();
    let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
    let ep = store
        .insert_endpoint(endpoint_of(&account.id, "https://example.com/down"), 100)
        .await
        .unwrap();
    store
        .insert_events(
            account.id.clone(),
            vec![click(), click(), click()],
            |_| false,
            |_| {},
        )
        .await
        .unwrap();
    let later = Timestamp(Timestamp::now().0 + 60_000);
    let mut due = store.claim_due(later, |_| 10).await.unwrap();
    assert_eq!(due.len(), 3);
    due.sort_by_key(|d| d.row);
    let soon = Timestamp(Timestamp::now().0 + 1);
    let failed = |d: &DueDelivery, status_code: Option<u16>, error: Option<&str>| AttemptRecord {
        delivery_id: d.delivery_id.clone(),
        row: d.row,
        claim: d.claim,
        endpoint_version: d.endpoint.updated_at.0,
        endpoint_id: d.endpoint.id.clone(),
        attempt: Some(Attempt {
            attempt: 1,
            started_at: Timestamp::now(),
            duration_ms: 3,
            status_code,
            error: error.map(str::to_owned),
            response_body: None,
        }),
        outcome: Outcome::RetryAt(soon),
    };
    let released = AttemptRecord {
        attempt: None,
        outcome: Outcome::Released,
        ..failed(&due[2], None, None)
    };
    store
        .record_attempts(vec![
            failed(&due[0], Some(500), None),
            failed(&due[1], None, Some("timed out after 3000 ms")),
            released,
        ])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let ended = store
        .fail_stale(ep.id.clone(), Timestamp::now(), true)
        .await
        .unwrap();
    assert_eq!(ended, 3);
    let held = "the endpoint was held back for the rest of the retry schedule (it kept \
                failing, or asked to wait with Retry-After); the last attempt: ";
    let expected = [
        (Some(500), format!("ended after 1 attempt: {held}HTTP 500")),
        (
            None,
            format!("ended after 1 attempt: {held}timed out after 3000 ms"),
        ),
        (
            None,
            "not attempted: the endpoint was held back for the whole retry schedule (it kept \
             failing, or asked to wait with Retry-After)"
                .to_owned(),
        ),
    ];
    for (d, (code, reason)) in due.iter().zip(expected) {
        let (seen, _) = store
            .get_delivery(account.id.clone(), d.delivery_id.clone())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen.status, DeliveryStatus::Failed, "{seen:?}");
        assert_eq!(seen.last_status_code, code, "{seen:?}");
        assert_eq!(
            seen.last_error.as_deref(),
            Some(reason.as_str()),
            "{seen:?}"
        );
    }
}

/// A 410 disables the endpoint as it was when asked. One that comes back from an attempt made
/// before the endpoint changed (moved to a new URL while the attempt was out) leaves the
/// endpoint on and its other deliveries open, and its own delivery is tried again at the new
/// URL; a 410 from the endpoint as it is disables it.
async fn a_late_410_from_before_a_change_leaves_the_endpoint_on(engine: Engine) {
    let data = Data::fresh(&engine).await;
    let store = Store::open(&data.location).await.unwrap();
    let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
    let ep = store
        .insert_endpoint(endpoint_of(&account.id, "https://example.com/old"), 100)
        .await
        .unwrap();
    let event = click;
    let later = Timestamp(Timestamp::now().0 + 60_000);
    let gone = |due: &DueDelivery, version: i64| AttemptRecord {
        delivery_id: due.delivery_id.clone(),
        row: due.row,
        claim: due.claim,
        endpoint_version: version,
        endpoint_id: due.endpoint.id.clone(),
        attempt: Some(Attempt {
            attempt: due.attempts + 1,
            started_at: Timestamp::now(),
            duration_ms: 1,
            status_code: Some(410),
            error: None,
            response_body: None,
        }),
        outcome: Outcome::Gone,
    };

    store
        .insert_events(account.id.clone(), vec![event()], |_| false, |_| {})
        .await
        .unwrap();
    let out = store.claim_due(later, |_| 10).await.unwrap();
    assert_eq!(out.len(), 1);
    // The endpoint moves to a new URL while that attempt is out, and gets another event.
    let moved = store
        .update_endpoint(account.id.clone(), ep.id.clone(), |e| {
            e.url = "https://example.com/new".into()
        })
        .await
        .unwrap()
        .unwrap();
    assert!(moved.updated_at.0 > out[0].endpoint.updated_at.0);
    store
        .insert_events(account.id.clone(), vec![event()], |_| false, |_| {})
        .await
        .unwrap();
    // The old URL's 410 comes back.
    store
        .record_attempts(vec![gone(&out[0], out[0].endpoint.updated_at.0)])
        .await
        .unwrap();
    let still = store
        .get_endpoint(account.id.clone(), ep.id.clone())
        .await
        .unwrap()
        .unwrap();
    assert!(still.enabled, "{still:?}");
    assert_eq!(still.updated_at, moved.updated_at);
    let (first, _) = store
        .get_delivery(account.id.clone(), out[0].delivery_id.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.status,
        DeliveryStatus::Pending,
        "tried again, as it is now"
    );
    assert_eq!(first.attempt_count, 1, "the 410 is one of its attempts");
    // It and the other delivery go to the new URL.
    let next = store.claim_due(later, |_| 10).await.unwrap();
    assert_eq!(next.len(), 2);
    assert!(
        next.iter()
            .all(|d| d.endpoint.url == "https://example.com/new")
    );
    assert!(next.iter().any(|d| d.delivery_id == out[0].delivery_id));

    // A 410 from the endpoint as it is now disables it, and ends what it had open.
    store
        .insert_events(account.id.clone(), vec![event()], |_| false, |_| {})
        .await
        .unwrap();
    store
        .record_attempts(vec![gone(&next[0], moved.updated_at.0)])
        .await
        .unwrap();
    let off = store
        .get_endpoint(account.id.clone(), ep.id.clone())
        .await
        .unwrap()
        .unwrap();
    assert!(!off.enabled, "{off:?}");
    assert!(off.disabled_reason.is_some(), "{off:?}");
    assert!(store.claim_due(later, |_| 10).await.unwrap().is_empty());
}

/// Attempts of one delivery made at once (manual retries beside an attempt in flight) are
/// each recorded, even when they started in the same millisecond and took as long to the
/// millisecond: an attempt is known by the claim it was made under. The same outcome
/// written twice is still one attempt.
async fn attempts_made_at_once_are_each_recorded(engine: Engine) {
    let data = Data::fresh(&engine).await;
    let store = Store::open(&data.location).await.unwrap();
    let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
    store
        .insert_endpoint(endpoint_of(&account.id, "https://example.com/hook"), 100)
        .await
        .unwrap();
    store
        .insert_events(account.id.clone(), vec![click()], |_| false, |_| {})
        .await
        .unwrap();
    let later = Timestamp(Timestamp::now().0 + 60_000);
    let scheduled = store.claim_due(later, |_| 10).await.unwrap();
    assert_eq!(scheduled.len(), 1);
    let id = scheduled[0].delivery_id.clone();
    // Two manual retries while the first attempt is out: three claims, three attempts.
    let mut dues = vec![scheduled[0].clone()];
    for _ in 0..2 {
        let taken = store
            .claim_for_retry(account.id.clone(), id.clone())
            .await
            .unwrap()
            .unwrap_or_else(|r| panic!("refused: {r:?}"));
        dues.push(taken.due);
    }
    let started = Timestamp::now();
    let record = |due: &DueDelivery| AttemptRecord {
        delivery_id: due.delivery_id.clone(),
        row: due.row,
        claim: due.claim,
        endpoint_version: due.endpoint.updated_at.0,
        endpoint_id: due.endpoint.id.clone(),
        attempt: Some(Attempt {
            attempt: due.attempts + 1,
            started_at: started,
            duration_ms: 1000,
            status_code: Some(200),
            error: None,
            response_body: Some("ok".into()),
        }),
        outcome: Outcome::Succeeded,
    };
    // The outcomes come back in another order than the claims, one of them twice.
    for due in [&dues[1], &dues[0], &dues[2], &dues[1]] {
        store.record_attempts(vec![record(due)]).await.unwrap();
    }
    let (delivery, attempts) = store
        .get_delivery(account.id.clone(), id.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.status, DeliveryStatus::Succeeded);
    let numbers: Vec<u32> = attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, vec![1, 2, 3], "{attempts:?}");
    assert_eq!(delivery.attempt_count, 3, "{delivery:?}");
}

async fn retries_exhausted_end_as_failed_and_manual_retry_sends_again(engine: Engine) {
    let rx = Receiver::start().await;
    rx.always("down", Reply::Status(503));
    let s = TestServer::start(&engine).await;
    s.endpoint(&rx.url("down"), &["*"]).await;
    let ev = s.event("bounce", json!({})).await;
    let id = ev["deliveries"][0]["id"].as_str().unwrap().to_owned();
    // The schedule has three retries: four attempts, then failed.
    let d = s.wait_delivery(&id, "failed").await;
    assert_eq!(d["attempt_count"], 4);
    assert_eq!(rx.got("down").len(), 4);

    rx.always("down", Reply::Status(204));
    let (status, body) = s
        .post(&format!("/v1/deliveries/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let d = s.wait_delivery(&id, "succeeded").await;
    assert_eq!(d["attempt_count"], 5);
    assert_eq!(rx.got("down").len(), 5);
}

async fn retry_after_on_429_is_honoured(engine: Engine) {
    let rx = Receiver::start().await;
    rx.script("busy", vec![Reply::RetryAfter(429, 2)]);
    let s = TestServer::start(&engine).await;
    s.endpoint(&rx.url("busy"), &["*"]).await;
    let ev = s.event("click", json!({})).await;
    let got = rx.wait_for("busy", 2).await;
    let gap = got[1].at - got[0].at;
    // The schedule alone would retry after about 100 ms.
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?}");
    s.wait_delivery(ev["deliveries"][0]["id"].as_str().unwrap(), "succeeded")
        .await;
}

/// A long `Retry-After` holds the whole endpoint, not only its own delivery: events that
/// come meanwhile wait for the time it asked for, then every delivery goes.
async fn a_long_retry_after_holds_the_whole_endpoint(engine: Engine) {
    let rx = Receiver::start().await;
    rx.script("busy", vec![Reply::RetryAfter(503, 3)]);
    let s = TestServer::start(&engine).await;
    s.endpoint(&rx.url("busy"), &["*"]).await;
    let first = s.event("click", json!({})).await;
    let first_dlv = first["deliveries"][0]["id"].as_str().unwrap().to_owned();
    common::eventually("the 503 recorded", || async {
        let (_, d) = s.get(&format!("/v1/deliveries/{first_dlv}")).await;
        (d["attempt_count"] == 1).then_some(())
    })
    .await;
    let mut later = Vec::new();
    for _ in 0..5 {
        let ev = s.event("click", json!({})).await;
        later.push(ev["deliveries"][0]["id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        rx.got("busy").len(),
        1,
        "nothing went to the endpoint while it asked to wait"
    );
    // The endpoint says so, and until when.
    let ep_id = first["deliveries"][0]["endpoint_id"].as_str().unwrap();
    let (_, ep) = s.get(&format!("/v1/endpoints/{ep_id}")).await;
    let until = hookline::model::Timestamp::parse(ep["held_back_until"].as_str().unwrap())
        .unwrap_or_else(|| panic!("{ep}"));
    // (The 503 asked for 3 s, more than 1.2 s ago: nothing has gone since, as above.)
    let now = hookline::model::Timestamp::now().0;
    assert!(
        (now - 500..=now + 1800 + 500).contains(&until.0),
        "held back until {until}: {ep}"
    );
    // Its pending deliveries are due no sooner than that, read alone or listed.
    let due = |d: &Value| {
        hookline::model::Timestamp::parse(d["next_attempt_at"].as_str().unwrap_or(""))
            .unwrap_or_else(|| panic!("no next_attempt_at: {d}"))
    };
    let mut pending = 0;
    for id in &later {
        let (_, d) = s.get(&format!("/v1/deliveries/{id}")).await;
        if d["status"] == "pending" {
            pending += 1;
            assert!(due(&d) >= until, "due before the hold ends ({until}): {d}");
        }
    }
    let (_, listed) = s
        .get(&format!("/v1/endpoints/{ep_id}/deliveries?status=pending"))
        .await;
    for d in listed["data"].as_array().unwrap() {
        assert!(due(d) >= until, "listed due before {until}: {d}");
    }
    let (_, ep) = s.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert!(
        pending > 0 || ep["held_back_until"].is_null(),
        "the hold lasts, and none of its deliveries was pending: {ep}"
    );
    for id in later.iter().chain([&first_dlv]) {
        s.wait_delivery(id, "succeeded").await;
    }
    let got = rx.got("busy");
    assert_eq!(got.len(), 7, "the 503, then each of the six once");
    let (_, ep) = s.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert!(ep["held_back_until"].is_null(), "going as usual: {ep}");
    for r in &got[1..] {
        let after = r.at - got[0].at;
        assert!(
            after >= Duration::from_millis(2900),
            "sent {after:?} after the 503"
        );
    }
}

/// A `Retry-After` outlives a restart: an endpoint that asked to be left alone is not hit
/// again as the server comes back (the time is kept in the database). Once it answers again
/// (here a manual retry) the hold is forgotten there too, so the next restart holds nothing.
async fn a_retry_after_outlives_a_restart(engine: Engine) {
    let rx = Receiver::start().await;
    rx.script("busy", vec![Reply::RetryAfter(503, 60)]);
    let s = TestServer::start(&engine).await;
    let ep = s.endpoint(&rx.url("busy"), &["*"]).await;
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    let ev = s.event("click", json!({})).await;
    let id = ev["deliveries"][0]["id"].as_str().unwrap().to_owned();
    eventually("the 503 recorded", || async {
        let (_, d) = s.get(&format!("/v1/deliveries/{id}")).await;
        (d["attempt_count"] == 1).then_some(())
    })
    .await;
    let (_, held) = s.get(&format!("/v1/endpoints/{ep_id}")).await;
    let until = held["held_back_until"].clone();
    assert!(until.is_string(), "{held}");
    // Another event meanwhile: its delivery is due now, and held with the endpoint.
    let other = s.event("click", json!({})).await;
    let other_id = other["deliveries"][0]["id"].as_str().unwrap().to_owned();
    let key = s.key.clone();
    let data = s.stop().await.unwrap();

    // Back up: still held, until the same time, and nothing went, not even the delivery
    // that was due.
    let s = TestServer::launch(common::test_config(&data.location), key.clone()).await;
    let (_, again) = s.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert_eq!(again["held_back_until"], until, "the hold, kept: {again}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(rx.got("busy").len(), 1, "hit again at the restart");
    for held in [&id, &other_id] {
        let (_, d) = s.get(&format!("/v1/deliveries/{held}")).await;
        assert_eq!(d["status"], "pending", "{d}");
        assert_eq!(d["next_attempt_at"], until, "{d}");
    }

    // A manual retry goes at once, and its success ends the hold, in the database too.
    let (status, body) = s
        .post(&format!("/v1/deliveries/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    s.wait_delivery(&id, "succeeded").await;
    s.wait_delivery(&other_id, "succeeded").await;
    let (_, ep_now) = s.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert!(ep_now["held_back_until"].is_null(), "{ep_now}");
    s.stop().await;
    let s = TestServer::launch(common::test_config(&data.location), key).await;
    let (_, ep_now) = s.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert!(ep_now["held_back_until"].is_null(), "held again: {ep_now}");
    s.stop().await;
    drop(data);
}

/// Once a hold has run out and nothing is left to send, the endpoint holds nothing back:
/// `held_back_until` is `null`, not a time gone by (its next delivery goes at once, as the
/// probe).
async fn a_hold_run_out_with_nothing_to_send_reads_null(engine: Engine) {
    let rx = Receiver::start().await;
    // Two seconds: the shortest wait that holds the whole endpoint.
    rx.always("busy", Reply::RetryAfter(429, 2));
    let s = TestServer::start(&engine).await;
    let ep = s.endpoint(&rx.url("busy"), &["*"]).await;
    let ep_id = ep["id"].as_str().unwrap();
    let ev = s.event("click", json!({})).await;
    let d = s
        .wait_delivery(ev["deliveries"][0]["id"].as_str().unwrap(), "failed")
        .await;
    assert_eq!(d["attempts"][0]["status_code"], 429, "{d}");
    let (_, held) = s.get(&format!("/v1/endpoints/{ep_id}")).await;
    // The last 429 asked for two seconds more, at most: once over, nothing is held.
    let seen = common::eventually("the hold to end", || async {
        let (_, ep) = s.get(&format!("/v1/endpoints/{ep_id}")).await;
        ep["held_back_until"].is_null().then_some(ep)
    })
    .await;
    let now = hookline::model::Timestamp::now().0;
    if let Some(until) = held["held_back_until"].as_str() {
        let until = hookline::model::Timestamp::parse(until).unwrap();
        assert!(until.0 <= now + 2_500, "held too long: {held}");
    }
    // And it stays so: a time gone by never shows.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, ep) = s.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert!(ep["held_back_until"].is_null(), "{ep} (after {seen})");
    s.stop().await;
}

async fn gone_disables_the_endpoint_and_ends_its_deliveries(engine: Engine) {
    let rx = Receiver::start().await;
    rx.always("gone", Reply::Status(410));
    let s = TestServer::start(&engine).await;
    let ep = s.endpoint(&rx.url("gone"), &["*"]).await;
    let ep_id = ep["id"].as_str().unwrap();
    let ev = s.event("complaint", json!({})).await;
    let d = s
        .wait_delivery(ev["deliveries"][0]["id"].as_str().unwrap(), "failed")
        .await;
    assert_eq!(d["attempt_count"], 1);
    assert_eq!(d["attempts"][0]["status_code"], 410);
    let (_, ep) = s.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert_eq!(ep["enabled"], false);
    assert!(ep["disabled_reason"].as_str().unwrap().contains("410"));
    // A disabled endpoint gets no new deliveries.
    let later = s.event("complaint", json!({})).await;
    assert_eq!(later["deliveries"].as_array().unwrap().len(), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.got("gone").len(), 1);
}

async fn a_hanging_endpoint_does_not_delay_another(engine: Engine) {
    let rx = Receiver::start().await;
    rx.always("stuck", Reply::Hang);
    let s = TestServer::start_with(&engine, |c| {
        c.dispatch.timeout = Duration::from_secs(20);
        c.dispatch.concurrency_per_endpoint = 4;
    })
    .await;
    s.endpoint(&rx.url("stuck"), &["*"]).await;
    s.endpoint(&rx.url("fine"), &["*"]).await;
    let started = std::time::Instant::now();
    for i in 0..40 {
        s.event("open", json!({"i": i})).await;
    }
    rx.wait_for("fine", 40).await;
    // Every healthy delivery arrived while the hanging endpoint still held its first
    // requests open (the attempt timeout is 20 s), with at most 4 of them in flight.
    assert!(started.elapsed() < Duration::from_secs(20));
    let stuck = rx.got("stuck").len();
    assert!(
        (1..=4).contains(&stuck),
        "{stuck} requests to the hanging endpoint"
    );
}

/// An endpoint that answers nothing keeps little in memory: once every lane has hung for
/// `stall_after`, it holds at most twice its lanes (in flight and queued), and its further
/// deliveries wait `pending` in the database (rather than gather in memory, to be written
/// back all at once when its breaker opens). Every one is delivered once it answers again.
async fn a_stalled_endpoint_s_deliveries_wait_in_the_database_until_it_answers(engine: Engine) {
    let rx = Receiver::start().await;
    rx.always("stuck", Reply::Hang);
    let s = TestServer::start_with(&engine, |c| {
        // Long enough for the requests below on a slow machine: the stall must hold.
        c.dispatch.timeout = Duration::from_secs(8);
        c.dispatch.concurrency_per_endpoint = 2;
        c.dispatch.stall_after = Duration::from_millis(200);
        c.dispatch.retry = hookline::dispatch::retry::RetrySchedule::parse("1s,1s,1s").unwrap();
    })
    .await;
    s.endpoint(&rx.url("stuck"), &["*"]).await;
    let mut ids = Vec::new();
    let mut send = async |i: u32| {
        let ev = s.event("open", json!({"i": i})).await;
        ids.push(ev["deliveries"][0]["id"].as_str().unwrap().to_owned());
    };
    send(0).await;
    send(1).await;
    rx.wait_for("stuck", 2).await; // both lanes hang
    tokio::time::sleep(Duration::from_millis(400)).await; // past `stall_after`
    for i in 2..10 {
        send(i).await;
    }
    let mut held = 0;
    let mut waiting = 0;
    for id in &ids {
        let (_, d) = s.get(&format!("/v1/deliveries/{id}")).await;
        match d["status"].as_str() {
            Some("delivering") => held += 1,
            Some("pending") if d["attempt_count"] == 0 => waiting += 1,
            _ => panic!("{d}"),
        }
    }
    // Two in flight, at most two queued; the rest in the database, never attempted.
    assert!((2..=4).contains(&held), "{held} held in memory");
    assert_eq!(held + waiting, 10);
    assert_eq!(rx.got("stuck").len(), 2, "no attempt beyond the two lanes");

    // The endpoint answers again; the hanging attempts run into their timeout.
    rx.always("stuck", Reply::Status(200));
    for id in &ids {
        s.wait_delivery(id, "succeeded").await;
    }
    let (_, delivered) = rx.got_ids("stuck");
    assert_eq!(delivered.len(), 10, "every event arrived");
}

async fn batches_are_accepted_whole_and_delivered(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start(&engine).await;
    s.endpoint(&rx.url("sink"), &["click", "open"]).await;
    let events: Vec<_> = (0..200)
        .map(|i| {
            let ty = if i % 2 == 0 { "click" } else { "open" };
            json!({"type": ty, "data": common::valid(ty, json!({"i": i}))})
        })
        .collect();
    let (status, body) = s.post("/v1/events/batch", json!({"events": events})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 200);
    let got = rx.wait_for("sink", 200).await;
    let distinct: BTreeSet<_> = got
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert_eq!(distinct.len(), 200);
}

async fn pending_deliveries_resume_after_a_restart(engine: Engine) {
    let rx = Receiver::start().await;
    rx.always("later", Reply::Status(500));
    let s = TestServer::start_with(&engine, |c| {
        c.dispatch.retry = hookline::dispatch::retry::RetrySchedule::parse("1s,1s,1s,1s").unwrap();
    })
    .await;
    let ep = s.endpoint(&rx.url("later"), &["*"]).await;
    let ev = s.event("unsubscribe", json!({})).await;
    rx.wait_for("later", 1).await;
    let key = s.key.clone();
    let data = s.stop().await.unwrap();
    rx.always("later", Reply::Status(200));

    let s = TestServer::launch(common::test_config(&data.location), key).await;
    let d = s
        .wait_delivery(ev["deliveries"][0]["id"].as_str().unwrap(), "succeeded")
        .await;
    assert!(d["attempt_count"].as_u64().unwrap() >= 2);
    verify_with_standardwebhooks(
        ep["secret"].as_str().unwrap(),
        rx.got("later").last().unwrap(),
    );
}

/// A server whose endpoint `dead` answers 503 to `n` clicks: one lane, retries an hour apart,
/// a breaker that opens after three failures and probes at most `probe_max` apart.
async fn events_for_a_dead_endpoint(
    engine: &Engine,
    n: usize,
    probe_max: Duration,
) -> (Receiver, TestServer, Vec<serde_json::Value>) {
    let rx = Receiver::start().await;
    rx.always("dead", Reply::Status(503));
    let s = TestServer::start_with(engine, |c| {
        // Without the breaker's pull-forward, failed deliveries would wait an hour.
        c.dispatch.retry = hookline::dispatch::retry::RetrySchedule::parse("1h,1h,1h").unwrap();
        c.dispatch.concurrency_per_endpoint = 1;
        c.dispatch.breaker_threshold = 3;
        c.dispatch.breaker_probe_max = probe_max;
    })
    .await;
    s.endpoint(&rx.url("dead"), &["*"]).await;
    let mut events = Vec::new();
    for i in 0..n {
        events.push(s.event("click", json!({"i": i})).await);
    }
    (rx, s, events)
}

async fn a_dead_endpoint_trips_its_breaker_and_its_backlog_drains_when_it_is_back(engine: Engine) {
    let (rx, s, events) =
        events_for_a_dead_endpoint(&engine, 30, Duration::from_millis(1000)).await;
    rx.wait_for("dead", 4).await; // three failures, then at least one probe
    // The breaker is open: the dead endpoint is not hammered with every delivery.
    let hammered = rx.got("dead").len();
    assert!(
        hammered < 30,
        "{hammered} requests: every delivery was attempted"
    );
    let mut parked = 0;
    for ev in &events {
        let (_, d) = s
            .get(&format!(
                "/v1/deliveries/{}",
                ev["deliveries"][0]["id"].as_str().unwrap()
            ))
            .await;
        assert_ne!(d["status"], "failed", "{d}");
        if d["attempt_count"] == 0 {
            parked += 1;
        }
    }
    assert!(parked > 0, "no delivery was held back by the breaker");

    rx.always("dead", Reply::Status(200));
    let got = eventually(
        "every event to arrive once the endpoint is back",
        || async {
            let ids: BTreeSet<String> = rx
                .got("dead")
                .iter()
                .filter(|r| !r.body.is_empty())
                .map(|r| r.header("webhook-id").to_owned())
                .collect();
            (ids.len() == 30).then_some(ids)
        },
    )
    .await;
    assert_eq!(got.len(), 30);
    for ev in &events {
        s.wait_delivery(ev["deliveries"][0]["id"].as_str().unwrap(), "succeeded")
            .await;
    }
}

/// A manual retry is one attempt now, whatever the endpoint's breaker says. Behind an open
/// breaker whose next probe is seconds away, the retried delivery goes at once, and its
/// success closes the breaker, so the rest of the backlog follows.
async fn a_manual_retry_goes_at_once_behind_an_open_breaker(engine: Engine) {
    let (rx, s, events) = events_for_a_dead_endpoint(&engine, 10, Duration::from_secs(3600)).await;
    // Three failures open the breaker; its probes then come 1 s and 2 s after, and fail:
    // the next one is 4 s away.
    rx.wait_for("dead", 5).await;
    let last = events[9]["deliveries"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, d) = s.get(&format!("/v1/deliveries/{last}")).await;
    assert_eq!(d["attempt_count"], 0, "held back by the breaker: {d}");

    rx.always("dead", Reply::Status(200));
    let (status, body) = s
        .post(&format!("/v1/deliveries/{last}/retry"), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    s.wait_delivery(&last, "succeeded").await;
    // It went at once, before the next probe (which would have come 4 s after the last one,
    // and may well have taken this very delivery).
    let got = rx.got("dead");
    assert_eq!(
        got[5].header("webhook-id"),
        events[9]["id"].as_str().unwrap()
    );
    let after_last_probe = got[5].at - got[4].at;
    assert!(
        after_last_probe < Duration::from_secs(3),
        "the retry waited {after_last_probe:?}, as for the next probe"
    );
    // Its success closed the breaker: the backlog drains.
    for ev in &events {
        s.wait_delivery(ev["deliveries"][0]["id"].as_str().unwrap(), "succeeded")
            .await;
    }
}

/// A manual retry goes before the endpoint's queue and its pace: with twenty deliveries
/// queued behind a limit of two a second (ten seconds of them), the retried one arrives
/// while most of them still wait.
async fn a_manual_retry_goes_before_the_endpoints_queue(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start(&engine).await;
    let (status, ep) = s
        .post(
            "/v1/endpoints",
            json!({"url": rx.url("slow"), "event_types": ["*"], "rate_limit_per_sec": 2}),
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    let first = s.event("open", json!({})).await;
    let first_dlv = first["deliveries"][0]["id"].as_str().unwrap().to_owned();
    s.wait_delivery(&first_dlv, "succeeded").await;

    let queued: Vec<Value> = (0..20)
        .map(|_| json!({"type": "click", "data": common::valid("click", json!({}))}))
        .collect();
    let (status, b) = s.post("/v1/events/batch", json!({"events": queued})).await;
    assert_eq!(status, 202, "{b}");
    rx.wait_for("slow", 2).await;
    let (status, body) = s
        .post(&format!("/v1/deliveries/{first_dlv}/retry"), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let first_id = first["id"].as_str().unwrap();
    let got = common::eventually("the retried delivery", || async {
        let got = rx.got("slow");
        got.iter()
            .filter(|r| r.header("webhook-id") == first_id)
            .nth(1)
            .is_some()
            .then_some(got)
    })
    .await;
    let at = got
        .iter()
        .enumerate()
        .filter(|(_, r)| r.header("webhook-id") == first_id)
        .map(|(i, _)| i)
        .nth(1)
        .unwrap();
    // Before it: the first delivery and the queued ones sent so far (two a second).
    assert!(at <= 8, "the retry came after {} of the queue", at - 1);
    common::eventually("the retry recorded", || async {
        let (_, d) = s.get(&format!("/v1/deliveries/{first_dlv}")).await;
        (d["attempt_count"] == 2 && d["status"] == "succeeded").then_some(())
    })
    .await;
}

/// A manual retry of a delivery this node holds already, queued behind its endpoint's pace,
/// takes it over: it goes before the queue, and the queued attempt is not made, so the
/// receiver gets it once, not twice.
async fn a_manual_retry_of_a_queued_delivery_goes_first_and_once(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start(&engine).await;
    let (status, ep) = s
        .post(
            "/v1/endpoints",
            json!({"url": rx.url("paced"), "event_types": ["*"], "rate_limit_per_sec": 2}),
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    let queued: Vec<Value> = (0..20)
        .map(|_| json!({"type": "click", "data": common::valid("click", json!({}))}))
        .collect();
    let (status, b) = s.post("/v1/events/batch", json!({"events": queued})).await;
    assert_eq!(status, 202, "{b}");
    let last = &b["data"][19];
    let last_dlv = last["deliveries"][0]["id"].as_str().unwrap().to_owned();
    let last_id = last["id"].as_str().unwrap().to_owned();
    rx.wait_for("paced", 2).await;
    // Held by the dispatcher, waiting for its turn.
    let (_, d) = s.get(&format!("/v1/deliveries/{last_dlv}")).await;
    assert_eq!(d["status"], "delivering", "{d}");
    let (status, body) = s
        .post(&format!("/v1/deliveries/{last_dlv}/retry"), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let got = rx.wait_for("paced", 20).await;
    let at = got
        .iter()
        .position(|r| r.header("webhook-id") == last_id)
        .expect("the retried delivery arrived");
    // Before it: the queued ones sent so far (two a second), not the other 17.
    assert!(at <= 8, "the retry came after {at} of the queue");
    common::eventually("the queue to end", || async {
        let (_, d) = s.get(&format!("/v1/deliveries/{last_dlv}")).await;
        let all_done = (rx.got("paced").len() >= 20).then_some(());
        (d["status"] == "succeeded").then_some(()).and(all_done)
    })
    .await;
    // The queue's pace leaves room for a stray second copy to show: it never comes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = rx.got("paced");
    let copies = got
        .iter()
        .filter(|r| r.header("webhook-id") == last_id)
        .count();
    assert_eq!(copies, 1, "sent once");
    assert_eq!(got.len(), 20);
    let (_, d) = s.get(&format!("/v1/deliveries/{last_dlv}")).await;
    assert_eq!(d["attempt_count"], 1, "{d}");
    assert_eq!(d["status"], "succeeded", "{d}");
}

/// A manual retry of a delivery whose attempt is in flight sends beside it, and both
/// attempts are in its history under numbers of their own, whichever is recorded first and
/// whatever each came to: the receiver got both requests.
async fn a_manual_retry_beside_an_attempt_in_flight_keeps_both_attempts(engine: Engine) {
    let rx = Receiver::start().await;
    // A failed retry waits an hour for its next attempt, past the end of the test.
    let s = TestServer::start_with(&engine, |c| {
        c.dispatch.retry = hookline::dispatch::retry::RetrySchedule::parse("1h").unwrap();
    })
    .await;
    // `first`: the attempt in flight ends last; `second`: the retry's does. `third`: as
    // `first`, the attempt in flight failing (its outcome no longer moves the delivery);
    // `fourth`: as `second`, the attempt in flight failing; `fifth`: the retry failing, the
    // attempt in flight then succeeding (a success counts, whatever its claim).
    let cases = [
        (
            "first",
            "click",
            Reply::SlowOk(Duration::from_secs(3)),
            Reply::Status(200),
        ),
        (
            "second",
            "open",
            Reply::SlowOk(Duration::from_millis(1500)),
            Reply::SlowOk(Duration::from_secs(3)),
        ),
        (
            "third",
            "bounce",
            Reply::Slow(500, Duration::from_secs(3)),
            Reply::Status(200),
        ),
        (
            "fourth",
            "complaint",
            Reply::Slow(500, Duration::from_millis(1500)),
            Reply::SlowOk(Duration::from_secs(3)),
        ),
        (
            "fifth",
            "unsubscribe",
            Reply::SlowOk(Duration::from_secs(3)),
            Reply::Status(503),
        ),
    ];
    let mut deliveries = Vec::new();
    for (name, event_type, in_flight, retried) in cases {
        rx.script(name, vec![in_flight, retried]);
        let (status, ep) = s
            .post(
                "/v1/endpoints",
                json!({"url": rx.url(name), "event_types": [event_type]}),
            )
            .await;
        assert_eq!(status, 201, "{ep}");
        let ev = s.event(event_type, json!({})).await;
        let dlv = ev["deliveries"][0]["id"].as_str().unwrap().to_owned();
        rx.wait_for(name, 1).await;
        let (status, body) = s
            .post(&format!("/v1/deliveries/{dlv}/retry"), json!({}))
            .await;
        assert_eq!(status, 202, "{body}");
        deliveries.push((name, dlv, ev["id"].as_str().unwrap().to_owned()));
    }
    for (name, dlv, event_id) in deliveries {
        let d = common::eventually("both attempts to be recorded", || async {
            let (_, d) = s.get(&format!("/v1/deliveries/{dlv}")).await;
            (d["attempts"].as_array().unwrap().len() == 2).then_some(d)
        })
        .await;
        let got = rx.got(name);
        assert_eq!(got.len(), 2, "{name}: the receiver got both");
        assert!(got.iter().all(|r| r.header("webhook-id") == event_id));
        let attempts = d["attempts"].as_array().unwrap();
        let numbers: Vec<u64> = attempts
            .iter()
            .map(|a| a["attempt"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, [1, 2], "{name}: {d}");
        assert_ne!(attempts[0]["started_at"], attempts[1]["started_at"], "{d}");
        let mut codes: Vec<u64> = attempts
            .iter()
            .map(|a| a["status_code"].as_u64().unwrap())
            .collect();
        codes.sort_unstable();
        let want: &[u64] = match name {
            "third" | "fourth" => &[200, 500],
            "fifth" => &[200, 503],
            _ => &[200, 200],
        };
        assert_eq!(codes, want, "{name}: {d}");
        assert_eq!(d["attempt_count"], 2, "{name}: {d}");
        assert_eq!(d["status"], "succeeded", "{name}: {d}");
    }
}

async fn an_endpoint_turned_back_on_gets_new_deliveries_again(engine: Engine) {
    let rx = Receiver::start().await;
    rx.script("flip", vec![Reply::Status(410)]);
    let s = TestServer::start(&engine).await;
    let ep = s.endpoint(&rx.url("flip"), &["*"]).await;
    let path = format!("/v1/endpoints/{}", ep["id"].as_str().unwrap());
    let first = s.event("open", json!({"n": 1})).await;
    s.wait_delivery(first["deliveries"][0]["id"].as_str().unwrap(), "failed")
        .await;

    // Turned back on after 410: new events are delivered (the worker that saw the 410 is
    // still alive and must not drop them).
    let (status, body) = s
        .call(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let second = s.event("open", json!({"n": 2})).await;
    s.wait_delivery(second["deliveries"][0]["id"].as_str().unwrap(), "succeeded")
        .await;

    // Off and on again by hand, with events in between.
    s.call(
        reqwest::Method::PATCH,
        &path,
        Some(json!({"enabled": false})),
    )
    .await;
    let none = s.event("open", json!({"n": 3})).await;
    assert_eq!(none["deliveries"].as_array().unwrap().len(), 0);
    s.call(
        reqwest::Method::PATCH,
        &path,
        Some(json!({"enabled": true})),
    )
    .await;
    let third = s.event("open", json!({"n": 4})).await;
    s.wait_delivery(third["deliveries"][0]["id"].as_str().unwrap(), "succeeded")
        .await;
    let ids: BTreeSet<String> = rx
        .got("flip")
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert!(ids.contains(second["id"].as_str().unwrap()));
    assert!(ids.contains(third["id"].as_str().unwrap()));
    assert!(!ids.contains(none["id"].as_str().unwrap()));
}

/// A delivery that was waiting for its endpoint's one free slot when the endpoint was
/// turned off is not sent once the slot frees: it ends `failed`, and the endpoint receives
/// nothing after it was turned off.
async fn a_delivery_waiting_for_a_slot_is_not_sent_once_its_endpoint_is_off(engine: Engine) {
    let rx = Receiver::start().await;
    rx.always("slow", Reply::SlowOk(Duration::from_millis(1500)));
    let s = TestServer::start_with(&engine, |c| c.dispatch.concurrency_per_endpoint = 1).await;
    let ep = s.endpoint(&rx.url("slow"), &["*"]).await;
    let first = s.event("open", json!({"n": 1})).await;
    let second = s.event("open", json!({"n": 2})).await;
    // The first holds the slot; the second waits for it.
    rx.wait_for("slow", 1).await;
    let path = format!("/v1/endpoints/{}", ep["id"].as_str().unwrap());
    let (status, _) = s
        .call(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    s.wait_delivery(second["deliveries"][0]["id"].as_str().unwrap(), "failed")
        .await;
    s.wait_delivery(first["deliveries"][0]["id"].as_str().unwrap(), "succeeded")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.got("slow").len(), 1);
}

/// A retry goes at its time while another endpoint's deliveries are due but held back (a
/// long `Retry-After`). The poller used to take the earliest due time of all, which such a
/// delivery holds in the past, and then slept its whole cap (5 s): a retry of 300 ms went
/// up to 5 s late, for as long as any endpoint was held.
async fn a_retry_is_not_put_off_by_deliveries_held_back_elsewhere(engine: Engine) {
    let rx = Receiver::start().await;
    rx.always("held", Reply::RetryAfter(503, 3600));
    let s = TestServer::start_with(&engine, |c| {
        c.dispatch.retry =
            hookline::dispatch::retry::RetrySchedule::parse("300ms,300ms,300ms").unwrap();
    })
    .await;
    s.endpoint(&rx.url("held"), &["complaint"]).await;
    s.endpoint(&rx.url("flaky"), &["click"]).await;
    // The first is attempted and holds the endpoint for an hour (once its attempt is
    // recorded, the hold is on); the next ones wait, due.
    let first = s.event("complaint", json!({})).await;
    let first = first["deliveries"][0]["id"].as_str().unwrap().to_owned();
    eventually("the first attempt to be recorded", || async {
        let (_, d) = s.get(&format!("/v1/deliveries/{first}")).await;
        (d["attempt_count"] == 1).then_some(())
    })
    .await;
    let held: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..2 {
            let ev = s.event("complaint", json!({})).await;
            ids.push(ev["deliveries"][0]["id"].as_str().unwrap().to_owned());
        }
        ids
    };
    // A failure, then its retry, three times over: each retry comes about 300 ms after.
    for round in 1..=3 {
        rx.script("flaky", vec![Reply::Status(500)]);
        let ev = s.event("click", json!({})).await;
        let dlv = ev["deliveries"][0]["id"].as_str().unwrap().to_owned();
        s.wait_delivery(&dlv, "succeeded").await;
        let got = rx.got("flaky");
        assert_eq!(got.len(), 2 * round);
        let gap = got[2 * round - 1].at - got[2 * round - 2].at;
        assert!(
            gap < Duration::from_millis(2_000),
            "round {round}: the retry came {gap:?} after the failure (300 ms due)"
        );
    }
    // The held ones were still held: sent nothing, and due.
    assert_eq!(rx.got("held").len(), 1);
    for id in held {
        let (_, d) = s.get(&format!("/v1/deliveries/{id}")).await;
        assert_eq!(d["status"], "pending", "{d}");
    }
}

on_both_engines!(
    an_answer_with_a_long_head_is_read_whole,
    a_retry_is_not_put_off_by_deliveries_held_back_elsewhere,
    a_delivery_waiting_for_a_slot_is_not_sent_once_its_endpoint_is_off,
    subscriptions_filter_by_exact_type_and_star,
    envelope_headers_and_signature_follow_standard_webhooks,
    two_500s_then_success_is_retried_with_every_attempt_recorded,
    a_response_body_of_any_bytes_is_recorded_and_holds_up_no_outcome,
    a_long_response_body_is_kept_to_4_kib_of_whole_characters,
    a_late_410_from_before_a_change_leaves_the_endpoint_on,
    an_outcome_the_database_refuses_holds_up_no_other,
    retries_exhausted_end_as_failed_and_manual_retry_sends_again,
    retry_after_on_429_is_honoured,
    a_long_retry_after_holds_the_whole_endpoint,
    a_hold_run_out_with_nothing_to_send_reads_null,
    a_retry_after_outlives_a_restart,
    a_delivery_ended_by_a_hold_says_what_its_attempts_got,
    gone_disables_the_endpoint_and_ends_its_deliveries,
    a_hanging_endpoint_does_not_delay_another,
    a_stalled_endpoint_s_deliveries_wait_in_the_database_until_it_answers,
    batches_are_accepted_whole_and_delivered,
    pending_deliveries_resume_after_a_restart,
    a_dead_endpoint_trips_its_breaker_and_its_backlog_drains_when_it_is_back,
    a_manual_retry_goes_at_once_behind_an_open_breaker,
    a_manual_retry_goes_before_the_endpoints_queue,
    a_manual_retry_of_a_queued_delivery_goes_first_and_once,
    a_manual_retry_beside_an_attempt_in_flight_keeps_both_attempts,
    attempts_made_at_once_are_each_recorded,
    an_endpoint_turned_back_on_gets_new_deliveries_again,
);

/// `POST /v1/endpoints/{id}/test` sends that endpoint alone a signed `ping` and answers with
/// what came back; nothing is stored.
async fn test_sends_a_signed_ping_to_that_endpoint_alone(engine: Engine) {
    let rx = Receiver::start().await;
    rx.always("broken", Reply::Status(500));
    let s = TestServer::start(&engine).await;
    let ok = s.endpoint(&rx.url("ok"), &["*"]).await;
    let _other = s.endpoint(&rx.url("other"), &["*"]).await;
    let broken = s.endpoint(&rx.url("broken"), &["*"]).await;
    let ok_id = ok["id"].as_str().unwrap();

    let (status, result) = s
        .post(&format!("/v1/endpoints/{ok_id}/test"), json!({}))
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["delivered"], true, "{result}");
    assert_eq!(result["status_code"], 200, "{result}");
    let got = rx.got("ok");
    assert_eq!(got.len(), 1);
    let body = got[0].json();
    assert_eq!(body["type"], "ping");
    assert_eq!(body["data"], json!({}));
    assert_eq!(body["id"], result["event_id"]);
    verify_with_standardwebhooks(ok["secret"].as_str().unwrap(), &got[0]);
    assert!(rx.got("other").is_empty(), "the other endpoint got nothing");

    let (status, result) = s
        .post(
            &format!("/v1/endpoints/{}/test", broken["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["delivered"], false, "{result}");
    assert_eq!(result["status_code"], 500, "{result}");

    let (status, _) = s.post("/v1/endpoints/ep_nope/test", json!({})).await;
    assert_eq!(status, 404);
    // Nothing was stored: no deliveries, no events in the feed.
    let (_, list) = s.get(&format!("/v1/endpoints/{ok_id}/deliveries")).await;
    assert!(list["data"].as_array().unwrap().is_empty(), "{list}");
    let (_, feed) = s.get("/v1/events").await;
    assert!(feed["data"].as_array().unwrap().is_empty(), "{feed}");
}

/// A loop on `/test` gets `429`s with `Retry-After` once past the endpoint's share of test
/// pings, and its receiver gets only the pings let through; another endpoint's tests are
/// not counted against it.
async fn test_pings_are_limited_per_endpoint(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start(&engine).await;
    let a = s.endpoint(&rx.url("a"), &["*"]).await;
    let b = s.endpoint(&rx.url("b"), &["*"]).await;
    let path = |ep: &Value| format!("/v1/endpoints/{}/test", ep["id"].as_str().unwrap());
    let (mut sent, mut refused) = (0, 0);
    for _ in 0..10 {
        let resp = s
            .req(reqwest::Method::POST, &path(&a))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => sent += 1,
            429 => {
                refused += 1;
                let wait: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=2).contains(&wait), "Retry-After: {wait}");
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["error"]["code"], "rate_limited", "{body}");
            }
            other => panic!("status {other}"),
        }
    }
    assert!(refused > 0, "ten pings in a row were all sent");
    assert_eq!(
        rx.got("a").len(),
        sent,
        "only the pings let through reached the receiver"
    );
    let (status, result) = s.post(&path(&b), json!({})).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(rx.got("b").len(), 1);
}

mod ping {
    use super::*;
    on_both_engines!(
        test_sends_a_signed_ping_to_that_endpoint_alone,
        test_pings_are_limited_per_endpoint
    );
}

/// How long a recovered endpoint may wait for its next probe is the operator's to choose,
/// within bounds: out of them the server refuses to start, saying why, and creates nothing.
#[test]
fn a_probe_interval_out_of_range_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = |flag: &str| -> Vec<String> {
        let mut args: Vec<String> = ["serve", "--listen", "127.0.0.1:0", "--data-dir"]
            .map(String::from)
            .to_vec();
        args.push(data.display().to_string());
        if !flag.is_empty() {
            args.extend(["--breaker-probe-max".to_owned(), flag.to_owned()]);
        }
        args
    };
    for bad in ["500ms", "0s", "2h"] {
        let (ok, _, err) = common::process::cli(&serve(bad), &[]);
        assert!(!ok, "{bad} is refused");
        assert!(
            err.contains("--breaker-probe-max must be from 1s to 1h"),
            "{err}"
        );
    }
    let (ok, _, err) = common::process::cli(&serve(""), &[("HOOKLINE_BREAKER_PROBE_MAX", "100ms")]);
    assert!(!ok && err.contains("--breaker-probe-max must be"), "{err}");
    let (ok, _, err) = common::process::cli(&serve("soon"), &[]);
    assert!(!ok && err.contains("--breaker-probe-max"), "{err}");
    assert!(!data.exists(), "nothing was created");
}

/// How many deliveries a node holds in memory is the operator's to choose: a bad pair of
/// limits is refused at start, saying why, and creates nothing.
#[test]
fn memory_limits_out_of_range_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = |flags: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["serve", "--listen", "127.0.0.1:0", "--data-dir"]
            .map(String::from)
            .to_vec();
        args.push(data.display().to_string());
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        args
    };
    for bad in [
        &["--max-in-memory", "0"][..],
        &["--max-per-endpoint", "0"],
        &["--max-in-memory", "10", "--max-per-endpoint", "11"],
        &["--max-in-memory", "1", "--max-per-endpoint", "2"],
    ] {
        let (ok, _, err) = common::process::cli(&serve(bad), &[]);
        assert!(!ok, "{bad:?} is refused");
        assert!(err.contains("--max-"), "{bad:?}: {err}");
    }
    let (ok, _, err) = common::process::cli(&serve(&[]), &[("HOOKLINE_MAX_PER_ENDPOINT", "0")]);
    assert!(!ok && err.contains("must be at least 1"), "{err}");
    let (ok, _, err) = common::process::cli(&serve(&["--max-in-memory", "many"]), &[]);
    assert!(!ok && err.contains("--max-in-memory"), "{err}");
    assert!(!data.exists(), "nothing was created");
}

/// `--max-in-memory` bounds what a real `hookline serve` holds, and each endpoint half of it
/// unless `--max-per-endpoint` says otherwise: two endpoints that never answer get only that
/// many requests at once, every other delivery waits `pending` in the database, and the
/// in-memory gauge stays at the total.
#[tokio::test]
async fn the_memory_limits_given_at_start_bound_what_is_held() {
    use common::process::{Serve, cli_account, free_port, wait_healthy};
    use std::process::Stdio;

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_arg = data.display().to_string();
    let key = cli_account(&["--data-dir", &data_arg]);
    let rx = Receiver::start().await;
    rx.always("a", Reply::Hang);
    rx.always("b", Reply::Hang);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _serve = common::process::hookline()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", &data_arg])
        .args(["--allow-insecure-urls", "--allow-private-targets"])
        .args(["--max-in-memory", "4"])
        .args(["--endpoint-concurrency", "8", "--timeout", "60s"])
        .env_remove("HOOKLINE_DATABASE_URL")
        .env_remove("HOOKLINE_DATA_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Serve)
        .unwrap();
    let http = reqwest::Client::new();
    wait_healthy(&http, &base).await;
    let mut endpoints = Vec::new();
    for name in ["a", "b"] {
        let resp = http
            .post(format!("{base}/v1/endpoints"))
            .bearer_auth(&key)
            .json(&json!({"url": rx.url(name), "event_types": ["click"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let ep: serde_json::Value = resp.json().await.unwrap();
        endpoints.push(ep["id"].as_str().unwrap().to_owned());
    }
    for n in 0..5 {
        let resp = http
            .post(format!("{base}/v1/events"))
            .bearer_auth(&key)
            .json(&json!({"type": "click", "data": common::valid("click", json!({"n": n}))}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    // Four requests in all, two to each endpoint.
    eventually("four hanging requests", || async {
        (rx.all().len() >= 4).then_some(())
    })
    .await;
    let gauge = || common::metric(&http, &base, "hookline_deliveries_in_memory");
    eventually("the gauge to show the four", || async {
        (gauge().await == Some(4.0)).then_some(())
    })
    .await;
    // Long enough for the poller to have taken more, had there been room.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (a, b) = (rx.got("a").len(), rx.got("b").len());
    assert_eq!((a, b), (2, 2));
    assert_eq!(gauge().await, Some(4.0));
    // The other six of the ten deliveries wait in the database.
    let mut pending = 0;
    for id in &endpoints {
        let resp = http
            .get(format!(
                "{base}/v1/endpoints/{id}/deliveries?status=pending"
            ))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let list: serde_json::Value = resp.json().await.unwrap();
        pending += list["data"].as_array().map_or(0, Vec::len);
    }
    assert_eq!(pending, 6);
}
