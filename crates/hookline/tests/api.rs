//! Bad input gets the contract's status and a JSON error, and changes nothing; another
//! account's ids are not found.

mod common;

use common::{Engine, Receiver, TestServer, create_account};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

fn assert_error(status: u16, body: &Value, want: u16) {
    assert_eq!(status, want, "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

/// Everything the account can see: endpoints and the deliveries of each.
async fn snapshot(s: &TestServer) -> Value {
    let (_, eps) = s.get("/v1/endpoints?limit=1000").await;
    let mut out = vec![eps.clone()];
    for ep in eps["data"].as_array().unwrap() {
        let (_, d) = s
            .get(&format!(
                "/v1/endpoints/{}/deliveries",
                ep["id"].as_str().unwrap()
            ))
            .await;
        out.push(d);
    }
    Value::Array(out)
}

/// POSTs `body` as it is, labelled JSON; the status and the JSON answer.
async fn post_raw(s: &TestServer, path: &str, body: &[u8]) -> (u16, Value) {
    let resp = s
        .req(Method::POST, path)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn malformed_oversized_and_invalid_events_change_nothing(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start(&engine).await;
    let ep = s.endpoint(&rx.url("sink"), &["*"]).await;
    let rotate = format!("/v1/endpoints/{}/secret/rotate", ep["id"].as_str().unwrap());
    let before = snapshot(&s).await;

    // Malformed JSON, also where a value of the wrong type comes before the break (serde
    // meets the type first), and a body that is not UTF-8: still `400`, not `422`.
    let malformed: [(&str, &[u8]); 8] = [
        ("/v1/events", br#"{"type": "click", "data": {"#),
        ("/v1/events", br#"{"type":5"#),
        ("/v1/events", b"[1,2"),
        (
            "/v1/events",
            br#"{"type":"click","data":{"a":1},"idempotency_key":7"#,
        ),
        ("/v1/events/batch", br#"{"events":5"#),
        ("/v1/endpoints", b"[1,2"),
        ("/v1/events", br#"{"type":5} trailing"#),
        ("/v1/events", b"{\"type\":5,\"data\":{},\"x\":\"\xff\"}"),
    ];
    for (path, body) in malformed {
        let (status, answer) = post_raw(&s, path, body).await;
        assert_error(status, &answer, 400);
        assert_eq!(answer["error"]["code"], "malformed_json", "{answer}");
    }
    // Well-formed JSON of the wrong shape is told so without the names of Hookline's types;
    // an array is not taken in an object's place (serde would take its items as the fields
    // in order); valid JSON that serde counts as a syntax error (a number out of range) is
    // of the wrong shape too.
    let wrong_shape: [(&str, &str, &str); 7] = [
        ("/v1/events", "5", "the body must be a JSON object"),
        (
            "/v1/events/batch",
            "[1,2]",
            "the body must be a JSON object",
        ),
        (
            "/v1/events",
            r#"["click", {"a": 1}, null]"#,
            "the body must be a JSON object",
        ),
        (&rotate, "[]", "the body must be a JSON object"),
        (
            "/v1/events/batch",
            r#"{"events":[5]}"#,
            "events[0]: invalid type: integer `5`, expected a JSON object",
        ),
        (
            "/v1/events/batch",
            r#"{"events":[{"type": "open", "data": {}}, ["click", {"a": 1}, null]]}"#,
            "events[1]: invalid type: sequence, expected a JSON object",
        ),
        (
            "/v1/endpoints",
            r#"{"url": "https://example.com/", "event_types": ["*"], "rate_limit_per_sec": 1e400}"#,
            "rate_limit_per_sec: ",
        ),
    ];
    for (path, body, said) in wrong_shape {
        let (status, answer) = post_raw(&s, path, body.as_bytes()).await;
        assert_error(status, &answer, 422);
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(said), "{body}: {answer}");
        assert!(!message.contains("struct"), "{body}: {answer}");
    }

    // 300 KB event: over the 256 KiB limit.
    let big = "x".repeat(300 * 1024);
    let (status, body) = s
        .post(
            "/v1/events",
            json!({"type": "click", "data": {"blob": big}}),
        )
        .await;
    assert_error(status, &body, 413);
    let (status, body) = s
        .post(
            "/v1/events/batch",
            json!({"events": [{"type": "click", "data": {"blob": big}}]}),
        )
        .await;
    assert_error(status, &body, 413);

    // Valid JSON, wrong shape.
    for bad in [
        json!({"type": "click"}),
        json!({"type": "nonsense", "data": {}}),
        json!({"type": "ping", "data": {}}),
        json!({"type": "click", "data": [1, 2]}),
        json!({"type": 7, "data": {}}),
        json!([]),
    ] {
        let (status, body) = s.post("/v1/events", bad.clone()).await;
        assert_error(status, &body, 422);
    }
    // `data` naming a key twice (JSON leaves its meaning to the reader: the schema would
    // judge one value, a receiver of the raw bytes could read the other), at its top or
    // deeper, alone or in a batch.
    // An `open` event's `data`, its closing brace left off.
    let open = r#"{"message":{"message_id":"m","recipient":"a@example.com"},"first_open":true"#;
    for (path, body, said) in [
        (
            "/v1/events",
            format!(r#"{{"type":"open","data":{open},"first_open":"no"}}}}"#),
            r#"data: names the key "first_open" twice"#,
        ),
        (
            "/v1/events",
            r#"{"type":"open","data":{"message":{"message_id":"m","message_id":"n","recipient":"a@example.com"},"first_open":true}}"#.to_owned(),
            r#"data: names the key "message_id" twice"#,
        ),
        (
            "/v1/events/batch",
            format!(
                r#"{{"events":[{{"type":"open","data":{open}}}}},{{"type":"open","data":{open},"x":1,"x":2}}}}]}}"#
            ),
            r#"events[1].data: names the key "x" twice"#,
        ),
    ] {
        let (status, answer) = post_raw(&s, path, body.as_bytes()).await;
        assert_error(status, &answer, 422);
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(said), "{body}: {answer}");
    }
    // A batch with one bad event is refused whole, naming it.
    let (status, body) = s
        .post(
            "/v1/events/batch",
            json!({"events": [{"type": "click", "data": {}}, {"type": "nope", "data": {}}]}),
        )
        .await;
    assert_error(status, &body, 422);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("events[1].type"),
        "{body}"
    );
    // One of the wrong shape (a field missing, a field of the wrong type): named by its
    // place, not by a line and column of the body.
    for (third, at) in [
        (json!({"type": "click"}), "events[2]: missing field `data`"),
        (
            json!({"type": 7, "data": {}}),
            "events[2].type: invalid type",
        ),
    ] {
        let events = json!([{"type": "click", "data": {}}, {"type": "open", "data": {}}, third]);
        let (status, body) = s
            .post("/v1/events/batch", json!({ "events": events }))
            .await;
        assert_error(status, &body, 422);
        let said = body["error"]["message"].as_str().unwrap();
        assert!(said.starts_with(at), "{body}");
    }
    let (status, body) = s.post("/v1/events/batch", json!({"events": []})).await;
    assert_error(status, &body, 422);
    let too_many: Vec<_> = (0..1001)
        .map(|_| json!({"type": "open", "data": {}}))
        .collect();
    let (status, body) = s
        .post("/v1/events/batch", json!({"events": too_many}))
        .await;
    assert_error(status, &body, 422);

    // A refusal says what was wrong without repeating a long input whole: a value the
    // type's schema refuses, an unknown type, an unknown field, a header's name.
    let long = "y".repeat(5000);
    for (path, bad) in [
        (
            "/v1/events",
            json!({"type": "open", "data": {"message": long}}),
        ),
        ("/v1/events", json!({"type": long, "data": {}})),
        (
            "/v1/events",
            json!({"type": "open", "data": {}, long.as_str(): 1}),
        ),
        (
            "/v1/endpoints",
            json!({"url": "https://example.com/", "event_types": ["click"],
                   "headers": {long.as_str(): "x"}}),
        ),
    ] {
        let (status, body) = s.post(path, bad).await;
        assert_error(status, &body, 422);
        let said = body.to_string();
        assert!(!said.contains(&long), "{path}: {said:.300}");
        assert!(said.len() < 2000, "{path}: {said:.300}");
    }

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(snapshot(&s).await, before);
    assert!(rx.all().is_empty());
}

async fn bad_endpoints_are_refused_and_change_nothing(engine: Engine) {
    let s = TestServer::start_with(&engine, |c| c.url_rules.allow_insecure_urls = false).await;
    let before = snapshot(&s).await;
    let cases = [
        json!({"url": "http://example.com/hook", "event_types": ["click"]}),
        json!({"url": "ftp://example.com/hook", "event_types": ["click"]}),
        json!({"url": "not a url", "event_types": ["click"]}),
        json!({"url": "https://", "event_types": ["click"]}),
        json!({"url": "https://user:pw@example.com/", "event_types": ["click"]}),
        json!({"url": "https://example.com/", "event_types": []}),
        json!({"url": "https://example.com/", "event_types": ["clicks"]}),
        json!({"url": "https://example.com/", "event_types": ["*", "click"]}),
        json!({"url": "https://example.com/", "event_types": ["click"], "secret": "short"}),
        json!({"url": "https://example.com/", "event_types": ["click"], "secret": "whsec_AAAA"}),
        json!({"url": "https://example.com/", "event_types": ["click"], "headers": {"Host": "x"}}),
        json!({"url": "https://example.com/", "event_types": ["click"], "headers": {"webhook-id": "x"}}),
        json!({"url": "https://example.com/", "event_types": ["click"], "headers": {"X-A": "a\r\nB: c"}}),
        json!({"url": "https://example.com/", "event_types": ["click"], "headers": {"bad name": "x"}}),
        json!({"url": "https://example.com/", "event_types": ["click"], "headers": {"x".repeat(129): "x"}}),
        json!({"url": "https://example.com/", "event_types": ["click"], "headers": {"X-A": "x".repeat(8001)}}),
        json!({"url": "https://example.com/", "event_types": ["click"], "rate_limit_per_sec": 0}),
        json!({"url": "https://example.com/", "event_types": ["click"], "surprise": true}),
        json!({"event_types": ["click"]}),
    ];
    for case in cases {
        let (status, body) = s.post("/v1/endpoints", case.clone()).await;
        assert_error(status, &body, 422);
    }
    let resp = s
        .req(Method::POST, "/v1/endpoints")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(snapshot(&s).await, before);

    // A good one, then a bad change to it changes nothing.
    let (status, ep) = s
        .post(
            "/v1/endpoints",
            json!({"url": "https://example.com/ok", "event_types": ["open"]}),
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    let path = format!("/v1/endpoints/{}", ep["id"].as_str().unwrap());
    let (_, before) = s.get(&path).await;
    for bad in [
        json!({"url": "ftp://x"}),
        json!({"event_types": []}),
        json!({"headers": {"content-length": "1"}}),
        json!({"enabled": "yes"}),
        // `null` for what an endpoint always has is refused, not read as "no change".
        json!({"url": null}),
        json!({"event_types": null}),
        json!({"enabled": null}),
    ] {
        let (status, body) = s.call(Method::PATCH, &path, Some(bad)).await;
        assert_error(status, &body, 422);
    }
    let (_, after) = s.get(&path).await;
    assert_eq!(before, after);
    // And a good change applies.
    let (status, changed) = s
        .call(
            Method::PATCH,
            &path,
            Some(json!({"description": "new", "event_types": ["open", "click"], "rate_limit_per_sec": 5})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["description"], "new");
    assert_eq!(changed["event_types"], json!(["open", "click"]));
    assert_eq!(changed["rate_limit_per_sec"], 5);
    let (_, cleared) = s
        .call(
            Method::PATCH,
            &path,
            Some(json!({"rate_limit_per_sec": null})),
        )
        .await;
    assert_eq!(cleared["rate_limit_per_sec"], Value::Null);
    assert_eq!(cleared["description"], "new");
    // `null` removes the headers too, as it removes the limit.
    let (status, with) = s
        .call(
            Method::PATCH,
            &path,
            Some(json!({"headers": {"x-team": "crm"}})),
        )
        .await;
    assert_eq!(status, 200, "{with}");
    assert_eq!(with["headers"], json!({"x-team": "crm"}));
    let (status, without) = s
        .call(Method::PATCH, &path, Some(json!({"headers": null})))
        .await;
    assert_eq!(status, 200, "{without}");
    assert_eq!(without["headers"], json!({}));
    for field in [
        "url",
        "event_types",
        "description",
        "rate_limit_per_sec",
        "enabled",
    ] {
        assert_eq!(without[field], with[field], "{field}");
    }
    // A refused null names its field.
    let (status, body) = s
        .call(Method::PATCH, &path, Some(json!({"url": null})))
        .await;
    assert_error(status, &body, 422);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("url: must not be null"), "{message}");
}

async fn missing_or_wrong_keys_get_401_and_change_nothing(engine: Engine) {
    let s = TestServer::start(&engine).await;
    let before = snapshot(&s).await;
    let routes = [
        (Method::POST, "/v1/events"),
        (Method::POST, "/v1/events/batch"),
        (Method::POST, "/v1/endpoints"),
        (Method::GET, "/v1/endpoints"),
        (Method::GET, "/v1/deliveries/dlv_x"),
    ];
    for (method, path) in routes {
        let body = json!({"type": "click", "data": {}, "url": "https://example.com", "event_types": ["*"]});
        let none = s
            .http
            .request(method.clone(), s.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), 401, "{path}");
        let v: Value = none.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
        for key in ["hk_wrong", "", "Basic abc"] {
            let wrong = s
                .http
                .request(method.clone(), s.url(path))
                .header("authorization", format!("Bearer {key}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(wrong.status(), 401, "{path} with {key:?}");
        }
    }
    assert_eq!(snapshot(&s).await, before);
    // The scheme's name is case-insensitive (RFC 9110): any spelling of it is a bearer.
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let resp = s
            .http
            .get(s.url("/v1/endpoints"))
            .header("authorization", format!("{scheme} {}", s.key))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{scheme}");
    }
}

async fn unknown_and_foreign_ids_are_404(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start(&engine).await;
    let ep = s.endpoint(&rx.url("a"), &["*"]).await;
    let ev = s.event("click", json!({})).await;
    let ep_id = ep["id"].as_str().unwrap();
    let ev_id = ev["id"].as_str().unwrap();
    let dlv_id = ev["deliveries"][0]["id"].as_str().unwrap();
    rx.wait_for("a", 1).await;

    // Another account on the same server.
    let other_key = create_account(&s.location, "globex").await;
    let other = |method: Method, path: String| {
        s.http
            .request(method, s.url(&path))
            .bearer_auth(&other_key)
            .json(&json!({"description": "taken"}))
    };
    let foreign = [
        (Method::GET, format!("/v1/endpoints/{ep_id}")),
        (Method::PATCH, format!("/v1/endpoints/{ep_id}")),
        (Method::DELETE, format!("/v1/endpoints/{ep_id}")),
        (Method::GET, format!("/v1/endpoints/{ep_id}/secret")),
        (Method::GET, format!("/v1/endpoints/{ep_id}/deliveries")),
        (Method::GET, format!("/v1/events/{ev_id}")),
        (Method::GET, format!("/v1/events/{ev_id}/deliveries")),
        (Method::GET, format!("/v1/deliveries/{dlv_id}")),
        (Method::POST, format!("/v1/deliveries/{dlv_id}/retry")),
    ];
    for (method, path) in foreign {
        let resp = other(method.clone(), path.clone()).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{method} {path}");
        let body = resp.text().await.unwrap();
        assert!(!body.contains(ep_id) && !body.contains("whsec_"), "{body}");
    }
    let resp = other(Method::GET, "/v1/endpoints".into())
        .send()
        .await
        .unwrap();
    let list: Value = resp.json().await.unwrap();
    assert_eq!(list["data"], json!([]));
    // The owner still sees it all, unchanged.
    let (status, mine) = s.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(mine["description"], "");
    assert_eq!(rx.got("a").len(), 1);

    for path in [
        "/v1/endpoints/ep_nope",
        "/v1/events/evt_nope",
        "/v1/deliveries/dlv_nope",
        "/v1/events/evt_nope/deliveries",
        "/v1/nothing-here",
    ] {
        let (status, body) = s.get(path).await;
        assert_error(status, &body, 404);
    }
    let (status, body) = s.post("/v1/deliveries/dlv_nope/retry", json!({})).await;
    assert_error(status, &body, 404);

    // An id with a NUL in it names nothing (and reaches no database, whose text it would
    // break): `404` on both engines, for ids in the path and for `?after=`.
    for path in [
        format!("/v1/endpoints/{ep_id}%00"),
        "/v1/endpoints/%00/deliveries".into(),
        "/v1/events/%00".into(),
        "/v1/events/evt_%00/deliveries".into(),
        "/v1/deliveries/%00".into(),
        "/v1/event-types/%00".into(),
        "/v1/events?after=evt_%00".into(),
    ] {
        let (status, body) = s.get(&path).await;
        assert_error(status, &body, 404);
    }
    for (method, path) in [
        (Method::DELETE, "/v1/endpoints/%00"),
        (Method::POST, "/v1/deliveries/%00/retry"),
        (Method::DELETE, "/v1/api-keys/%00"),
    ] {
        let (status, body) = s.call(method.clone(), path, None).await;
        assert_error(status, &body, 404);
    }
    // A path that is not UTF-8 is malformed: a `400` in the API's error shape.
    let (status, body) = s.get("/v1/events/%FF").await;
    assert_error(status, &body, 400);
    assert_eq!(body["error"]["code"], "invalid_path", "{body}");
    // A route asked with a method it does not take: `405`, JSON, with `Allow`.
    let resp = s
        .req(Method::PUT, &format!("/v1/endpoints/{ep_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let allow = resp.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("PATCH"), "{allow}");
    let body: Value = resp.json().await.unwrap();
    assert_error(405, &body, 405);
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    // The owner's endpoint is untouched by all of it.
    let (status, _) = s.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert_eq!(status, 200);
}

async fn lists_paginate_with_opaque_cursors(engine: Engine) {
    let s = TestServer::start(&engine).await;
    for i in 0..7 {
        s.post(
            "/v1/endpoints",
            json!({"url": format!("https://example.com/{i}"), "event_types": ["*"]}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/endpoints?limit=3&cursor={c}"),
            None => "/v1/endpoints?limit=3".into(),
        };
        let (status, page) = s.get(&path).await;
        assert_eq!(status, 200);
        for ep in page["data"].as_array().unwrap() {
            seen.push(ep["url"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let want: Vec<_> = (0..7).map(|i| format!("https://example.com/{i}")).collect();
    assert_eq!(seen, want);
    for bad in [
        "/v1/endpoints?limit=0",
        "/v1/endpoints?limit=1001",
        "/v1/endpoints?limit=x",
        "/v1/endpoints?cursor=zzz",
    ] {
        let (status, body) = s.get(bad).await;
        assert_error(status, &body, 400);
    }
}

async fn deleting_an_endpoint_ends_its_open_deliveries(engine: Engine) {
    let rx = Receiver::start().await;
    rx.always("down", common::Reply::Status(500));
    let s = TestServer::start_with(&engine, |c| {
        c.dispatch.retry = hookline::dispatch::retry::RetrySchedule::parse("1h").unwrap();
    })
    .await;
    let ep = s.endpoint(&rx.url("down"), &["*"]).await;
    let ev = s.event("open", json!({})).await;
    let dlv = ev["deliveries"][0]["id"].as_str().unwrap();
    s.wait_delivery(dlv, "pending").await;
    let path = format!("/v1/endpoints/{}", ep["id"].as_str().unwrap());
    let (status, _) = s.call(Method::DELETE, &path, None).await;
    assert_eq!(status, 204);
    let (status, _) = s.get(&path).await;
    assert_eq!(status, 404);
    let (_, d) = s.get(&format!("/v1/deliveries/{dlv}")).await;
    assert_eq!(d["status"], "failed");
    let (status, body) = s
        .post(&format!("/v1/deliveries/{dlv}/retry"), json!({}))
        .await;
    assert_error(status, &body, 409);
    let (status, _) = s.call(Method::DELETE, &path, None).await;
    assert_eq!(status, 404);
    // A removed endpoint gets no new deliveries.
    let after = s.event("open", json!({})).await;
    assert_eq!(after["deliveries"], json!([]), "{after}");
}

async fn openapi_document_lists_every_route(engine: Engine) {
    let s = TestServer::start(&engine).await;
    let resp = s.http.get(s.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/endpoints",
        "/v1/endpoints/{id}",
        "/v1/endpoints/{id}/secret",
        "/v1/endpoints/{id}/deliveries",
        "/v1/events",
        "/v1/events/batch",
        "/v1/events/{id}",
        "/v1/events/{id}/deliveries",
        "/v1/deliveries/{id}",
        "/v1/deliveries/{id}/retry",
        "/healthz",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["schemas"]["Endpoint"].is_object());
    // Every operation lists what any of its kind can answer, each an error body.
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    for (path, method, statuses) in [
        (
            "/v1/events",
            "post",
            &[
                "202", "400", "401", "408", "409", "413", "422", "429", "500", "503",
            ][..],
        ),
        (
            "/v1/endpoints",
            "post",
            &[
                "201", "400", "401", "403", "408", "413", "422", "500", "503",
            ],
        ),
        ("/v1/endpoints", "get", &["200", "400", "401", "500", "503"]),
        (
            "/v1/deliveries/{id}/retry",
            "post",
            &["202", "400", "401", "403", "404", "409", "500", "503"],
        ),
        ("/healthz", "get", &["200"]),
    ] {
        let responses = doc["paths"][path][method]["responses"].as_object().unwrap();
        let mut listed: Vec<&str> = responses.keys().map(String::as_str).collect();
        listed.sort_unstable();
        assert_eq!(listed, statuses, "{method} {path}");
        for (status, answer) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    answer["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
}

/// Every `$ref` of `v` names a schema of the document's components.
fn refs_resolve(doc: &Value, v: &Value, at: &str) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "$ref" {
                    let name = child
                        .as_str()
                        .and_then(|r| r.strip_prefix("#/components/schemas/"))
                        .unwrap_or_else(|| panic!("{at}: a $ref outside the schemas: {child}"));
                    assert!(
                        doc["components"]["schemas"][name].is_object(),
                        "{at}: $ref to {name}, which the document does not hold"
                    );
                } else {
                    refs_resolve(doc, child, &format!("{at}/{k}"));
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                refs_resolve(doc, child, &format!("{at}/{i}"));
            }
        }
        _ => {}
    }
}

/// The document holds what OpenAPI 3.1 requires of it and what tools that generate
/// clients from it rely on: an `operationId` per operation, none twice; a description of
/// every answer; every `$ref` resolving; `Retry-After` declared where it is sent; the
/// routes served beside the API's own.
async fn openapi_document_is_whole(engine: Engine) {
    let s = TestServer::start(&engine).await;
    let (status, doc) = s.get("/openapi.json").await;
    assert_eq!(status, 200);
    refs_resolve(&doc, &doc, "#");
    let text = doc.to_string();
    assert!(
        !text.contains("[`"),
        "a rustdoc link leaked into the document"
    );
    let mut ids = std::collections::BTreeSet::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path}");
            for (status, answer) in responses {
                assert!(
                    answer["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{method} {path} {status}: no description"
                );
                if status == "429" || status == "503" {
                    assert!(
                        answer["headers"]["Retry-After"]["schema"].is_object(),
                        "{method} {path} {status}: no Retry-After"
                    );
                }
            }
            // A body the request may leave out is not required, and is never `null`.
            if let Some(body) = op.get("requestBody") {
                let schema = &body["content"]["application/json"]["schema"];
                assert!(
                    !schema.to_string().contains(r#"{"type":"null"}"#),
                    "{method} {path}: a null body: {schema}"
                );
            }
        }
    }
    assert!(operations >= 36, "{operations} operations");
    for path in ["/metrics", "/openapi.json", "/ui/"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} missing");
    }
    let rotate = &doc["paths"]["/v1/endpoints/{id}/secret/rotate"]["post"]["requestBody"];
    assert_eq!(rotate["required"], false, "{rotate}");
    assert_eq!(
        rotate["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/RotateSecret"
    );
    // The bounds the server enforces are in the document.
    let create = &doc["components"]["schemas"]["CreateEndpoint"]["properties"];
    assert_eq!(create["rate_limit_per_sec"]["minimum"], 1, "{create}");
    assert_eq!(create["rate_limit_per_sec"]["maximum"], 100000, "{create}");
    assert_eq!(create["event_types"]["minItems"], 1, "{create}");
    let batch = &doc["components"]["schemas"]["CreateBatch"]["properties"]["events"];
    assert_eq!(
        (&batch["minItems"], &batch["maxItems"]),
        (&json!(1), &json!(1000))
    );
    let limit = doc["paths"]["/v1/events"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(
        (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
        (&json!(1), &json!(1000))
    );
    assert!(
        doc["paths"]["/admin/v1/accounts/{id}/keys"]["post"]["responses"]["409"].is_object(),
        "an account's key limit answers 409"
    );
}

/// Checks `value` against the document's own schema `name` (its `$ref`s resolved within
/// the document).
fn conforms(doc: &Value, name: &str, value: &Value) {
    let mut root = doc.clone();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["$ref"] = json!(format!("#/components/schemas/{name}"));
    let validator = jsonschema::validator_for(&root).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:?} in {value}");
}

/// Real answers of the main operations match the schemas the document declares for them.
async fn answers_match_the_documents_schemas(engine: Engine) {
    let s = TestServer::start(&engine).await;
    let receiver = Receiver::start().await;
    receiver.always("ok", common::Reply::Status(200));
    let (_, doc) = s.get("/openapi.json").await;

    let (status, custom) = s
        .post(
            "/v1/event-types",
            json!({"name": "order.paid", "schema": {"type": "object"}}),
        )
        .await;
    assert_eq!(status, 201, "{custom}");
    conforms(&doc, "CustomEventType", &custom);
    let (_, types) = s.get("/v1/event-types?limit=1000").await;
    conforms(&doc, "EventTypes", &types);
    assert!(
        types["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "order.paid"),
        "{types}"
    );

    let (status, created) = s
        .post(
            "/v1/endpoints",
            json!({"url": receiver.url("ok"), "event_types": ["*"], "rate_limit_per_sec": 50}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    conforms(&doc, "CreatedEndpoint", &created);
    let ep = created["id"].as_str().unwrap().to_owned();
    let (_, one) = s.get(&format!("/v1/endpoints/{ep}")).await;
    conforms(&doc, "EndpointDetail", &one);
    assert!(one["held_back_until"].is_null(), "{one}");

    let accepted = s.event("click", json!({})).await;
    conforms(&doc, "Accepted", &accepted);
    let dlv = accepted["deliveries"][0]["id"].as_str().unwrap().to_owned();
    let delivery = s.wait_delivery(&dlv, "succeeded").await;
    conforms(&doc, "DeliveryDetail", &delivery);
    let (_, rotated) = s
        .call(
            Method::POST,
            &format!("/v1/endpoints/{ep}/secret/rotate"),
            None,
        )
        .await;
    conforms(&doc, "RotatedSecret", &rotated);

    let (status, account) = s.get("/v1/account").await;
    assert_eq!(status, 200, "{account}");
    conforms(&doc, "AccountView", &account);

    let (status, error) = s.get("/v1/deliveries/dlv_01ARZ3NDEKTSV4RRFFQ69G5FAV").await;
    assert_eq!(status, 404);
    conforms(&doc, "ErrorBody", &error);
}

on_both_engines!(
    malformed_oversized_and_invalid_events_change_nothing,
    bad_endpoints_are_refused_and_change_nothing,
    missing_or_wrong_keys_get_401_and_change_nothing,
    unknown_and_foreign_ids_are_404,
    lists_paginate_with_opaque_cursors,
    deleting_an_endpoint_ends_its_open_deliveries,
    openapi_document_lists_every_route,
    openapi_document_is_whole,
    answers_match_the_documents_schemas,
);

/// One SQLite data directory has one serving process: a second `hookline serve` on it is
/// refused with a clear error, and the first one keeps working. (PostgreSQL is shared by
/// several nodes: `tests/cluster.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_sqlite_data_is_refused() {
    let s = TestServer::start(&Engine::Sqlite).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = hookline::server::run(
        common::test_config(&s.location),
        listener,
        tokio_util::sync::CancellationToken::new(),
    )
    .await;
    let err = format!("{:#}", second.expect_err("a second server must not start"));
    assert!(err.contains("in use by another hookline process"), "{err}");
    let (status, _) = s.get("/v1/endpoints").await;
    assert_eq!(status, 200);
}

/// On SQLite, concurrent requests are written in one transaction, and ingest's inserts run
/// without a savepoint of their own. A request whose insert fails after writing takes its
/// whole group down: it gets its own error, the others of the group `503` with `Retry-After`,
/// and none of them is stored. A request that fails before writing anything costs the others
/// nothing. Every request is all or nothing: answered 202 and stored whole, with its delivery,
/// or refused and stored not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_ingest_write_leaves_nothing_half_written() {
    use std::collections::BTreeSet;
    let s = TestServer::start(&Engine::Sqlite).await;
    let rx = Receiver::start().await;
    s.endpoint(&rx.url("hook"), &["*"]).await;
    // Another account whose endpoint's secret cannot be opened: its ingest fails before it
    // writes anything.
    let broken_key = create_account(&s.location, "globex").await;
    let (status, _) = s
        .call_as(
            &broken_key,
            Method::POST,
            "/v1/endpoints",
            Some(json!({"url": rx.url("broken"), "event_types": ["*"]})),
        )
        .await;
    assert_eq!(status, 201);
    let hookline::store::Location::Sqlite(dir) = &s.location else {
        unreachable!("a SQLite server")
    };
    let db = rusqlite::Connection::open(dir.join("hookline.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute(
        "UPDATE endpoints SET secret = 'hlenc1:k1:AAAA' WHERE account_id =
            (SELECT id FROM accounts WHERE name = 'globex')",
        [],
    )
    .unwrap();
    // The row of an `open` event cannot be inserted, after its delivery's row was (an
    // event's deliveries are inserted right before it).
    db.execute_batch(
        "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.type = 'open'
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
    )
    .unwrap();

    let mut accepted = BTreeSet::new();
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let key = s.key.clone();

    // A failure before any write: the broken account's request fails alone.
    let mut requests = vec![(broken_key.as_str(), "click")];
    requests.extend(std::iter::repeat_n((key.as_str(), "click"), 5));
    let (leader, results) = in_one_group(&s, &db, &requests).await;
    assert_eq!(leader.0, 202, "{:?}", leader);
    accepted.insert(id(&leader.2));
    assert_eq!(results[0].0, 500, "{:?}", results[0]);
    for (status, _, body) in &results[1..] {
        assert_eq!(*status, 202, "{body}");
        accepted.insert(id(body));
    }

    // A failure after a write: the whole group is refused, and may simply try again.
    let mut requests = vec![(key.as_str(), "open")];
    requests.extend(std::iter::repeat_n((key.as_str(), "click"), 5));
    let (leader, results) = in_one_group(&s, &db, &requests).await;
    assert_eq!(results[0].0, 500, "{:?}", results[0]);
    let mut refused = 0;
    // The leader was alone in its group, or in the failed one.
    for (status, retry_after, body) in std::iter::once(&leader).chain(&results[1..]) {
        if *status == 202 {
            accepted.insert(id(body));
        } else {
            assert_eq!(*status, 503, "{body}");
            assert!(retry_after, "{body}");
            refused += 1;
        }
    }
    assert!(refused > 0, "no click shared the failed group: {results:?}");
    for _ in 0..refused {
        let (status, _, body) = send_event(&s, &key, "click").await.await.unwrap();
        assert_eq!(status, 202, "{body}");
        accepted.insert(id(&body));
    }

    // Exactly the accepted events are stored, each with its delivery, and delivered.
    let stored: BTreeSet<String> = db
        .prepare("SELECT id FROM events")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored, accepted);
    // No event without its delivery, nor a delivery without its event (an event's
    // deliveries are written right before it).
    let orphans: (i64, i64) = db
        .query_row(
            "SELECT
                (SELECT COUNT(*) FROM events e
                 WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)),
                (SELECT COUNT(*) FROM deliveries d
                 WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id))",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(orphans, (0, 0));
    let got = rx.wait_for("hook", accepted.len()).await;
    let delivered: BTreeSet<String> = got
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered, accepted);

    // Once the fault is gone, the same request goes through.
    db.execute_batch("DROP TRIGGER poison").unwrap();
    s.event("open", json!({})).await;
    rx.wait_for("hook", accepted.len() + 1).await;
}

/// Sends one event of type `ty` with `key`, in a task of its own: (status, whether
/// `Retry-After` came, body).
async fn send_event(
    s: &TestServer,
    key: &str,
    ty: &'static str,
) -> tokio::task::JoinHandle<(u16, bool, Value)> {
    let req = s
        .http
        .post(s.url("/v1/events"))
        .bearer_auth(key)
        .json(&json!({"type": ty, "data": common::valid(ty, json!({}))}));
    tokio::spawn(async move {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let retry_after = r.headers().contains_key("retry-after");
        (status, retry_after, r.json::<Value>().await.unwrap())
    })
}

/// Sends a leading click, then `requests` (key, type), while `db` holds the write lock: the
/// SQLite writer takes one job (the leader, or a job of the dispatcher's) and waits for the
/// lock; everything else queues behind it and makes the next group, together. Returns the
/// leader's answer and each request's.
async fn in_one_group(
    s: &TestServer,
    db: &rusqlite::Connection,
    requests: &[(&str, &'static str)],
) -> ((u16, bool, Value), Vec<(u16, bool, Value)>) {
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let leader = send_event(s, &s.key, "click").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sent = Vec::new();
    for (key, ty) in requests {
        sent.push(send_event(s, key, ty).await);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    db.execute_batch("COMMIT").unwrap();
    let leader = leader.await.unwrap();
    let mut answers = Vec::new();
    for r in sent {
        answers.push(r.await.unwrap());
    }
    (leader, answers)
}

/// A request whose outcome nobody can tell gets no answer at all: its connection is closed,
/// so no status claims an outcome (a `5xx` would say "not accepted"). The server goes on
/// answering other requests, on other connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_unknown_outcome_gets_its_connection_closed_not_an_answer() {
    use hookline::api::error::ApiError;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = axum::Router::new()
        .route(
            "/unknown",
            axum::routing::post(|| async { ApiError::outcome_unknown() }),
        )
        .route("/known", axum::routing::post(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let server = tokio::spawn(hookline::server::serve_http(
        listener,
        app,
        hookline::server::HttpTimeouts {
            header_read: Duration::from_secs(60),
            write: Duration::from_secs(60),
        },
        async move { stopped.cancelled().await },
    ));

    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"POST /unknown HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut got))
        .await
        .expect("the connection is closed")
        .ok();
    assert!(
        got.is_empty(),
        "no answer: {}",
        String::from_utf8_lossy(&got)
    );

    // Through a client library: an error of its connection, not a status.
    let http = reqwest::Client::new();
    let err = http
        .post(format!("http://{addr}/unknown"))
        .send()
        .await
        .expect_err("no status");
    assert!(!err.is_status(), "{err}");
    let ok = http
        .post(format!("http://{addr}/known"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    stop.cancel();
    server.await.unwrap();
}
