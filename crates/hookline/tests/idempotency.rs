//! Idempotent ingest, on both storage engines: a repeat under the same key answers the first
//! request's `202` and creates nothing — after a restart too, and (PostgreSQL) through another
//! node; a different request under the key is a `409` that changes nothing.

mod common;

use common::{Engine, Receiver, TestServer, valid};
use hookline::store::Location;
use serde_json::{Value, json};

async fn post_with_key(s: &TestServer, path: &str, key: &str, body: Value) -> (u16, Value) {
    let resp = s
        .req(reqwest::Method::POST, path)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn deliveries_of(s: &TestServer, endpoint_id: &str) -> usize {
    let (_, list) = s
        .get(&format!(
            "/v1/endpoints/{endpoint_id}/deliveries?limit=1000"
        ))
        .await;
    list["data"].as_array().unwrap().len()
}

async fn a_repeat_answers_the_first_202_and_a_different_body_is_409(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start(&engine).await;
    let ep = s.endpoint(&rx.url("crm"), &["*"]).await;
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    let click = json!({"type": "click", "data": valid("click", json!({})),
                       "idempotency_key": "order-1042-click"});

    // The key in the body; the repeat answers the same event and deliveries.
    let (status, first) = s.post("/v1/events", click.clone()).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = s.post("/v1/events", click.clone()).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again, first);
    // The same key in the header is the same key.
    let mut no_field = click.clone();
    no_field.as_object_mut().unwrap().remove("idempotency_key");
    let (status, by_header) =
        post_with_key(&s, "/v1/events", "order-1042-click", no_field.clone()).await;
    assert_eq!(status, 202, "{by_header}");
    assert_eq!(by_header, first);

    // A different request under the key: 409, nothing created.
    let other =
        json!({"type": "click", "data": valid("click", json!({"url": "https://other.example/"}))});
    let (status, body) = post_with_key(&s, "/v1/events", "order-1042-click", other).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused", "{body}");

    // Header and field disagreeing, or a key that is not a key: 422, naming where the key
    // came from.
    let (status, body) = post_with_key(&s, "/v1/events", "something-else", click.clone()).await;
    assert_eq!(status, 422, "{body}");
    for bad in ["k".repeat(256), "two words".into()] {
        let (status, body) = post_with_key(&s, "/v1/events", &bad, no_field.clone()).await;
        assert_eq!(status, 422, "{body}");
        let said = body["error"]["message"].as_str().unwrap();
        assert!(said.starts_with("Idempotency-Key header: "), "{body}");
        assert_eq!(
            body["error"]["details"][0]["path"], "Idempotency-Key header",
            "{body}"
        );
        let mut in_body = no_field.clone();
        in_body["idempotency_key"] = json!(bad);
        let (status, body) = s.post("/v1/events", in_body).await;
        assert_eq!(status, 422, "{body}");
        let said = body["error"]["message"].as_str().unwrap();
        assert!(said.contains("idempotency_key"), "{body}");
        assert!(!said.contains("header"), "{body}");
    }

    // A batch under one key (the header).
    let batch = json!({"events": [
        {"type": "open", "data": valid("open", json!({}))},
        {"type": "delivery", "data": valid("delivery", json!({}))},
    ]});
    let (status, b1) = post_with_key(&s, "/v1/events/batch", "import-7", batch.clone()).await;
    assert_eq!(status, 202, "{b1}");
    let (status, b2) = post_with_key(&s, "/v1/events/batch", "import-7", batch.clone()).await;
    assert_eq!(status, 202, "{b2}");
    assert_eq!(b2, b1);
    // … or in the batch's own field: the same key, the same answer.
    let mut keyed = batch.clone();
    keyed["idempotency_key"] = json!("import-7");
    let (status, b3) = s.post("/v1/events/batch", keyed.clone()).await;
    assert_eq!(status, 202, "{b3}");
    assert_eq!(b3, b1);
    // The field and the header disagreeing: 422; a key on an event of a batch: 422.
    let (status, body) = post_with_key(&s, "/v1/events/batch", "import-8", keyed).await;
    assert_eq!(status, 422, "{body}");
    let mut per_event = batch.clone();
    per_event["events"][0]["idempotency_key"] = json!("k");
    let (status, body) = s.post("/v1/events/batch", per_event).await;
    assert_eq!(status, 422, "{body}");

    // One click and two batch events were created, each delivered once.
    common::eventually("the three events to arrive", || async {
        (rx.got("crm").len() >= 3).then_some(())
    })
    .await;
    assert_eq!(deliveries_of(&s, &ep_id).await, 3);

    // After a restart the key still answers the first 202.
    let key = s.key.clone();
    let data = s.stop().await.unwrap();
    let s = TestServer::launch(common::test_config(&data.location), key).await;
    let (status, after) = s.post("/v1/events", click.clone()).await;
    assert_eq!(status, 202, "{after}");
    assert_eq!(after, first);

    // PostgreSQL: through another node sharing the database, too.
    if let Location::Postgres(_) = &data.location {
        let other_node =
            TestServer::launch(common::test_config(&data.location), s.key.clone()).await;
        let (status, via_other) = other_node.post("/v1/events", click.clone()).await;
        assert_eq!(status, 202, "{via_other}");
        assert_eq!(via_other, first);
        let (status, b3) =
            post_with_key(&other_node, "/v1/events/batch", "import-7", batch.clone()).await;
        assert_eq!(status, 202, "{b3}");
        assert_eq!(b3, b1);
    }
    assert_eq!(
        deliveries_of(&s, &ep_id).await,
        3,
        "repeats created nothing"
    );
    assert_eq!(rx.got("crm").len(), 3);
}

async fn repeats_are_answered_whatever_the_ingest_rate_and_cost_none_of_it(engine: Engine) {
    // A plan that ingests ten events a second: one batch of ten spends the whole second.
    let s = TestServer::start_with(&engine, |c| c.limits.pro.ingest_per_sec = Some(10)).await;
    let ten = |kind: &str| {
        let list: Vec<_> = (0..10)
            .map(|i| json!({"type": kind, "data": valid(kind, json!({"i": i}))}))
            .collect();
        json!({ "events": list })
    };
    let (status, first) = post_with_key(&s, "/v1/events/batch", "import-9", ten("open")).await;
    assert_eq!(status, 202, "{first}");

    // A client that lost the answer asks again, and again: each gets the first answer at
    // once, not a 429, and takes nothing of the rate.
    for _ in 0..5 {
        let (status, again) = post_with_key(&s, "/v1/events/batch", "import-9", ten("open")).await;
        assert_eq!(status, 202, "{again}");
        assert_eq!(again, first);
    }
    // A different request under the key is refused before it is metered, too.
    let (status, body) = post_with_key(&s, "/v1/events/batch", "import-9", ten("click")).await;
    assert_eq!(status, 409, "{body}");

    // New events are still metered: ten more need the second the repeats did not spend
    // again, so they wait for it.
    let (status, body) = s.post("/v1/events/batch", ten("delivery")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
}

async fn key_reads_have_a_rate_of_their_own(engine: Engine) {
    // Ten events a second, so ten reads of keys a second.
    let s = TestServer::start_with(&engine, |c| c.limits.pro.ingest_per_sec = Some(10)).await;
    let one = json!({"events": [{"type": "open", "data": valid("open", json!({}))}]});
    let (status, first) = post_with_key(&s, "/v1/events/batch", "loop", one.clone()).await;
    assert_eq!(status, 202, "{first}");
    // A client looping its repeat: the nine reads left of the second are answered, and
    // beyond them (and what the rate brings back while they run) it is told to wait.
    let repeats = (0..30).map(|_| post_with_key(&s, "/v1/events/batch", "loop", one.clone()));
    let (mut answered, mut refused) = (0, 0);
    for (status, body) in futures_util::future::join_all(repeats).await {
        match status {
            202 => {
                assert_eq!(body, first);
                answered += 1;
            }
            429 => {
                let message = body["error"]["message"].as_str().unwrap_or("");
                assert!(message.contains("idempotency keys a second"), "{body}");
                refused += 1;
            }
            _ => panic!("{status} {body}"),
        }
    }
    assert!(answered >= 9, "only {answered} of 30 answered");
    assert!(refused >= 15, "only {refused} of 30 refused");
}

async fn a_repeat_within_the_rate_costs_none_of_it(engine: Engine) {
    // Two events a second: one event spends half of it.
    let s = TestServer::start_with(&engine, |c| c.limits.pro.ingest_per_sec = Some(2)).await;
    let one = |kind: &str| json!({"events": [{"type": kind, "data": valid(kind, json!({}))}]});
    let (status, first) = post_with_key(&s, "/v1/events/batch", "half", one("open")).await;
    assert_eq!(status, 202, "{first}");
    // The repeat is answered from the key's record, before the rate is looked at.
    let (status, again) = post_with_key(&s, "/v1/events/batch", "half", one("open")).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again, first);
    // So the other half of the second is still there for a new event. (Had the repeat
    // cost an event, the new one would wait for the rate to bring one back: half a
    // second.)
    let (status, body) = s.post("/v1/events/batch", one("click")).await;
    assert_eq!(status, 202, "{body}");
}

on_both_engines!(
    a_repeat_answers_the_first_202_and_a_different_body_is_409,
    repeats_are_answered_whatever_the_ingest_rate_and_cost_none_of_it,
    key_reads_have_a_rate_of_their_own,
    a_repeat_within_the_rate_costs_none_of_it,
);
