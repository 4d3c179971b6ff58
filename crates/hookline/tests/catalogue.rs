//! The event catalogue over HTTP, on both storage engines: `GET /v1/event-types` serves the
//! nine built-in types with their schemas and examples; every example is accepted; broken
//! `data` is refused with a `422` that names every failing field by its path, and nothing of
//! a refused request is stored.

mod common;

use common::{Engine, Receiver, TestServer};
use serde_json::{Value, json};

/// `example` with the value at `pointer` replaced (`Some`) or removed (`None`).
fn edit(example: &Value, pointer: &str, value: Option<Value>) -> Value {
    let mut v = example.clone();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = if parent.is_empty() {
        &mut v
    } else {
        v.pointer_mut(parent).unwrap()
    };
    let obj = target.as_object_mut().unwrap();
    match value {
        Some(x) => {
            obj.insert(key.to_owned(), x);
        }
        None => {
            obj.remove(key);
        }
    }
    v
}

/// For each type: two broken variants of its example, and the path each must be refused at.
fn broken(name: &str, ex: &Value) -> Vec<(Value, &'static str)> {
    match name {
        "delivery" => vec![
            (edit(ex, "/smtp", None), "data.smtp"),
            (edit(ex, "/smtp/code", Some(json!("250"))), "data.smtp.code"),
        ],
        "open" => vec![
            (
                edit(ex, "/first_open", Some(json!("yes"))),
                "data.first_open",
            ),
            (
                edit(ex, "/message/recipient", Some(json!("not-an-address"))),
                "data.message.recipient",
            ),
        ],
        "click" => vec![
            (edit(ex, "/url", None), "data.url"),
            (
                edit(ex, "/geo/country", Some(json!("Portugal"))),
                "data.geo.country",
            ),
        ],
        "bounce" => vec![
            (
                edit(ex, "/bounce_class", Some(json!("medium"))),
                "data.bounce_class",
            ),
            (edit(ex, "/final", None), "data.final"),
        ],
        "complaint" => vec![
            (edit(ex, "/source", Some(json!("robot"))), "data.source"),
            (
                edit(ex, "/message/message_id", None),
                "data.message.message_id",
            ),
        ],
        "unsubscribe" => vec![
            // A list unsubscribe names its lists.
            (edit(ex, "/list_ids", None), "data.list_ids"),
            (
                edit(ex, "/method", Some(json!("carrier_pigeon"))),
                "data.method",
            ),
        ],
        "form_submit" => vec![
            (
                edit(ex, "/fields/age", Some(json!({"years": 3}))),
                "data.fields.age",
            ),
            (edit(ex, "/submission_id", None), "data.submission_id"),
        ],
        "trigger_action" => vec![
            (edit(ex, "/trigger/name", None), "data.trigger.name"),
            (edit(ex, "/run_id", Some(json!(5))), "data.run_id"),
        ],
        "workflow_step" => vec![
            // A failed step says why.
            (edit(ex, "/outcome", Some(json!("failed"))), "data.error"),
            (
                edit(ex, "/started_at", Some(json!("yesterday"))),
                "data.started_at",
            ),
        ],
        other => panic!("no broken variants for {other}"),
    }
}

fn paths(body: &Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|e| e["path"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn every_type_accepts_its_example_and_refuses_broken_data_by_path(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start(&engine).await;
    let ep = s.endpoint(&rx.url("all"), &["*"]).await;
    let ep_id = ep["id"].as_str().unwrap().to_owned();

    let (status, catalogue) = s.get("/v1/event-types").await;
    assert_eq!(status, 200, "{catalogue}");
    let types = catalogue["data"].as_array().unwrap().clone();
    let names: Vec<&str> = types.iter().map(|t| t["name"].as_str().unwrap()).collect();
    let builtin: Vec<&str> = hookline::model::BUILTIN_EVENT_TYPES
        .iter()
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(names, builtin, "the nine built-in types, in order");

    let mut refused = 0;
    for t in &types {
        let name = t["name"].as_str().unwrap();
        assert!(!t["description"].as_str().unwrap().is_empty(), "{name}");
        assert_eq!(
            t["schema"]["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        let example = &t["example"];
        for (data, path) in broken(name, example) {
            let (status, body) = s
                .post("/v1/events", json!({"type": name, "data": data}))
                .await;
            assert_eq!(status, 422, "{name} {path}: {body}");
            assert_eq!(body["error"]["code"], "invalid_field", "{body}");
            assert!(
                paths(&body).iter().any(|p| p == path),
                "{name}: expected {path} among {:?}",
                paths(&body)
            );
            assert!(
                body["error"]["message"].as_str().unwrap().contains(path),
                "{body}"
            );
            refused += 1;
        }
        // The example itself is accepted.
        let (status, body) = s
            .post("/v1/events", json!({"type": name, "data": example}))
            .await;
        assert_eq!(status, 202, "{name}: {body}");
    }
    assert_eq!(refused, 18);

    // A batch is refused whole, naming every failing field of every event.
    let click = types.iter().find(|t| t["name"] == "click").unwrap();
    let open = types.iter().find(|t| t["name"] == "open").unwrap();
    let (status, body) = s
        .post(
            "/v1/events/batch",
            json!({"events": [
                {"type": "click", "data": click["example"]},
                {"type": "click", "data": edit(&click["example"], "/url", None)},
                {"type": "open", "data": edit(&open["example"], "/first_open", Some(json!(1)))},
            ]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        paths(&body),
        ["events[1].data.url", "events[2].data.first_open"],
        "{body}"
    );

    // Only the nine accepted examples made deliveries: nothing refused was stored.
    common::eventually("the nine examples to be delivered", || async {
        (rx.got("all").len() >= 9).then_some(())
    })
    .await;
    let (_, list) = s
        .get(&format!("/v1/endpoints/{ep_id}/deliveries?limit=100"))
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 9, "{list}");
    assert_eq!(rx.got("all").len(), 9);
}

on_both_engines!(every_type_accepts_its_example_and_refuses_broken_data_by_path);

/// An account's own event type, end to end: created with a schema, subscribed to, its
/// events checked and delivered, changed, removed; invisible to other accounts.
async fn custom_event_types_end_to_end(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start(&engine).await;
    let schema = json!({
        "type": "object",
        "required": ["order_id", "total"],
        "properties": {"order_id": {"type": "string"}, "total": {"type": "number", "minimum": 0}}
    });

    // Bad names and schemas are refused; nothing is created.
    for (body, why) in [
        (json!({"name": "Order Paid", "schema": schema}), "name"),
        (json!({"name": "click"}), "name"),
        // "." and ".." are path segments that clients fold away: the type's own routes
        // could never be reached. No name starts with a dot.
        (json!({"name": "."}), "name"),
        (json!({"name": ".."}), "name"),
        (json!({"name": ".order.paid"}), "name"),
        (
            json!({"name": "order.paid", "schema": {"type": "not-a-type"}}),
            "schema",
        ),
        (json!({"name": "order.paid", "schema": [1]}), "schema"),
        // Valid schemas that no object passes by their type: no event could be sent.
        (
            json!({"name": "order.paid", "schema": {"type": "array"}}),
            "schema: its \"type\" must allow \"object\"",
        ),
        (
            json!({"name": "order.paid", "schema": {"type": ["string", "null"]}}),
            "schema: its \"type\" must allow \"object\"",
        ),
        (
            json!({"name": "order.paid", "description": "a\u{0}b"}),
            "description",
        ),
    ] {
        let (status, b) = s.post("/v1/event-types", body).await;
        assert_eq!(status, 422, "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().starts_with(why),
            "{b}"
        );
    }
    // An endpoint cannot subscribe to a type that does not exist yet.
    let (status, b) = s
        .post(
            "/v1/endpoints",
            json!({"url": rx.url("shop"), "event_types": ["order.paid"]}),
        )
        .await;
    assert_eq!(status, 422, "{b}");

    let (status, created) = s
        .post(
            "/v1/event-types",
            json!({"name": "order.paid", "description": "An order was paid.", "schema": schema}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let (status, again) = s
        .post("/v1/event-types", json!({"name": "order.paid"}))
        .await;
    assert_eq!(status, 409, "{again}");
    let (_, catalogue) = s.get("/v1/event-types").await;
    assert!(
        catalogue["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "order.paid" && t["schema"] == schema),
        "{catalogue}"
    );

    s.endpoint(&rx.url("shop"), &["order.paid"]).await;
    let (status, ev) = s
        .post(
            "/v1/events",
            json!({"type": "order.paid", "data": {"order_id": "A-1042", "total": 99.5}}),
        )
        .await;
    assert_eq!(status, 202, "{ev}");
    let got = rx.wait_for("shop", 1).await;
    assert_eq!(got[0].json()["type"], "order.paid");
    let (status, bad) = s
        .post(
            "/v1/events",
            json!({"type": "order.paid", "data": {"order_id": 7, "total": -1}}),
        )
        .await;
    assert_eq!(status, 422, "{bad}");
    assert_eq!(paths(&bad), ["data.order_id", "data.total"], "{bad}");

    // A new schema applies at once; without one, any object goes.
    let (status, changed) = s
        .call(
            reqwest::Method::PATCH,
            "/v1/event-types/order.paid",
            Some(json!({"schema": null})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert!(changed["schema"].is_null(), "{changed}");
    let (status, _) = s
        .post(
            "/v1/events",
            json!({"type": "order.paid", "data": {"anything": true}}),
        )
        .await;
    assert_eq!(status, 202);

    // Another account sees none of it.
    let other = common::create_account(&s.location, "globex").await;
    let resp = s
        .http
        .get(s.url("/v1/event-types/order.paid"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = s
        .http
        .post(s.url("/v1/events"))
        .bearer_auth(&other)
        .json(&json!({"type": "order.paid", "data": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);

    // Removed: its events are refused again.
    let (status, _) = s
        .call(reqwest::Method::DELETE, "/v1/event-types/order.paid", None)
        .await;
    assert_eq!(status, 204);
    let (status, gone) = s
        .post("/v1/events", json!({"type": "order.paid", "data": {}}))
        .await;
    assert_eq!(status, 422, "{gone}");
    let (status, _) = s.get("/v1/event-types/order.paid").await;
    assert_eq!(status, 404);
}

/// Every page of `path` (a query string of its own included) walked by `next_cursor`; the
/// names of the items of each page.
async fn walk(s: &TestServer, path: &str, key: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_owned(),
        };
        let (status, page) = s.get(&url).await;
        assert_eq!(status, 200, "{url}: {page}");
        pages.push(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t[key].as_str().unwrap().to_owned())
                .collect(),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => {
                assert!(page["next_cursor"].is_null(), "{page}");
                return pages;
            }
        }
        assert!(pages.len() < 100, "a walk that does not end: {pages:?}");
    }
}

/// The catalogue is a list like any other: cursor-paginated, the built-in types first, then
/// the account's own by name in byte order (the same on both engines, whatever PostgreSQL's
/// collation), each exactly once, and a `null` cursor on the last page only.
async fn the_catalogue_is_paged(engine: Engine) {
    let s = TestServer::start(&engine).await;
    let builtin: Vec<String> = hookline::model::BUILTIN_EVENT_TYPES
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();

    // No types of its own: the default page holds the nine, and it is the last.
    let (status, all) = s.get("/v1/event-types").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(
        all["data"].as_array().unwrap().len(),
        builtin.len(),
        "{all}"
    );
    assert!(all["next_cursor"].is_null(), "{all}");
    assert_eq!(
        walk(
            &s,
            &format!("/v1/event-types?limit={}", builtin.len()),
            "name"
        )
        .await,
        vec![builtin.clone()],
        "a page exactly as long as the list is its last"
    );

    // Names that sort differently by byte and by a language's rules ('.' < digits < '_' <
    // letters in bytes; a locale ignores the punctuation).
    let own = [
        "ab",
        "a_b",
        "a.c",
        "a.b",
        "z9",
        "a0",
        "order.paid",
        "zz_top",
    ];
    for name in own {
        let (status, b) = s.post("/v1/event-types", json!({"name": name})).await;
        assert_eq!(status, 201, "{b}");
    }
    let mut by_bytes: Vec<String> = own.iter().map(|n| (*n).to_owned()).collect();
    by_bytes.sort();
    let expected: Vec<String> = builtin.iter().cloned().chain(by_bytes.clone()).collect();

    for limit in [1, 4, 9, 10, 16, 17, 1000] {
        let pages = walk(&s, &format!("/v1/event-types?limit={limit}"), "name").await;
        let flat: Vec<String> = pages.concat();
        assert_eq!(flat, expected, "limit {limit}: {pages:?}");
        assert_eq!(pages.len(), expected.len().div_ceil(limit), "limit {limit}");
        assert!(pages.iter().all(|p| !p.is_empty() && p.len() <= limit));
    }

    // A cursor after a type since removed still resumes after its name.
    let (_, first) = s
        .get(&format!("/v1/event-types?limit={}", builtin.len() + 2))
        .await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    assert_eq!(first["data"][builtin.len() + 1]["name"], by_bytes[1]);
    let (status, _) = s
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/event-types/{}", by_bytes[1]),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, rest) = s.get(&format!("/v1/event-types?cursor={cursor}")).await;
    assert_eq!(status, 200, "{rest}");
    let rest: Vec<&str> = rest["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(rest, by_bytes[2..], "resumed after the removed type");

    // Bad paging is a 400 that names the problem; a cursor of another list is refused.
    let (_, endpoints) = s.get("/v1/endpoints?limit=1").await;
    assert!(endpoints["next_cursor"].is_null());
    for (query, code) in [
        ("limit=0", "invalid_query"),
        ("limit=1001", "invalid_query"),
        ("limit=ten", "invalid_query"),
        ("cursor=not-a-cursor", "invalid_cursor"),
        ("cursor=cDU", "invalid_cursor"), // "p5": a position of the endpoint list
    ] {
        let (status, b) = s.get(&format!("/v1/event-types?{query}")).await;
        assert_eq!(status, 400, "{query}: {b}");
        assert_eq!(b["error"]["code"], code, "{query}: {b}");
    }

    // Another account sees the nine alone.
    let other = common::create_account(&s.location, "other-co").await;
    let (_, theirs) = s
        .call_as(&other, reqwest::Method::GET, "/v1/event-types", None)
        .await;
    assert_eq!(theirs["data"].as_array().unwrap().len(), builtin.len());
    assert!(theirs["next_cursor"].is_null());
}

mod custom {
    use super::*;
    on_both_engines!(custom_event_types_end_to_end, the_catalogue_is_paged);
}
