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
        (
            json!({"name": "order.paid", "schema": {"type": "not-a-type"}}),
            "schema",
        ),
        (json!({"name": "order.paid", "schema": [1]}), "schema"),
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

mod custom {
    use super::*;
    on_both_engines!(custom_event_types_end_to_end);
}
