//! Tenancy and secrets, on both storage engines: plans gate webhooks, API keys are stored as
//! hashes and revocable, every `/v1` route hides other accounts' ids, the admin API is off
//! without its token, the ingest rate is limited per account, a rotated secret signs beside
//! the new one for the overlap, and endpoint secrets are sealed at rest under a key.

mod common;

use common::process::{cli, storage_args};
use common::{
    Engine, Receiver, TestServer, contains, database_bytes, eventually, valid,
    verify_with_standardwebhooks,
};
use hookline::store::Sealer;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const ADMIN: &str = "admin-token-for-tests-0123456789";

/// Creates an account through the admin API; returns its id and key.
async fn admin_account(s: &TestServer, name: &str, plan: &str) -> (String, String) {
    let (status, b) = s
        .call_as(
            ADMIN,
            Method::POST,
            "/admin/v1/accounts",
            Some(json!({"name": name, "plan": plan})),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    let key = b["api_key"]["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("hk_"), "{b}");
    (b["account"]["id"].as_str().unwrap().to_owned(), key)
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn plans_gate_webhooks_and_limit_endpoints(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start_with(&engine, |c| {
        c.admin_token = hookline::api::admin::AdminToken::new(Some(ADMIN));
        c.limits.pro.max_endpoints = 2;
    })
    .await;

    // Free: no endpoints, but events are stored and served by the pull API.
    let (_, free) = admin_account(&s, "free-co", "free").await;
    let (status, b) = s
        .call_as(
            &free,
            Method::POST,
            "/v1/endpoints",
            Some(json!({"url": rx.url("free"), "event_types": ["*"]})),
        )
        .await;
    assert_eq!(status, 403, "{b}");
    assert_eq!(b["error"]["code"], "plan_required", "{b}");
    let (status, ev) = s
        .call_as(
            &free,
            Method::POST,
            "/v1/events",
            Some(json!({"type": "open", "data": valid("open", json!({}))})),
        )
        .await;
    assert_eq!(status, 202, "{ev}");
    assert_eq!(ev["deliveries"], json!([]), "{ev}");
    // (On PostgreSQL the feed shows an event once every older transaction has ended.)
    eventually("the Free account's event in its feed", || async {
        let (_, feed) = s.call_as(&free, Method::GET, "/v1/events", None).await;
        (feed["data"][0]["id"] == ev["id"]).then_some(())
    })
    .await;
    let (status, list) = s.call_as(&free, Method::GET, "/v1/endpoints", None).await;
    assert_eq!((status, list["data"].as_array().unwrap().len()), (200, 0));
    // Each account can read its plan and what the plan allows.
    let (status, me) = s.call_as(&free, Method::GET, "/v1/account", None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (&me["name"], &me["plan"], &me["webhooks"]),
        (&json!("free-co"), &json!("free"), &json!(false)),
        "{me}"
    );
    let (_, me) = s.get("/v1/account").await;
    assert_eq!(
        (&me["plan"], &me["webhooks"]),
        (&json!("pro"), &json!(true))
    );
    assert_eq!(me["max_endpoints"], 2, "this server's Pro limit: {me}");
    let retention = hookline::model::Limits::default().pro.retention.as_secs();
    assert_eq!(me["retention_seconds"], retention, "{me}");
    let (status, _) = s.call_as("hk_nope", Method::GET, "/v1/account", None).await;
    assert_eq!(status, 401);

    // Pro: at most `max_endpoints` at once; a removed one frees its place.
    let a = s.endpoint(&rx.url("a"), &["*"]).await;
    s.endpoint(&rx.url("b"), &["*"]).await;
    let (status, b) = s
        .post(
            "/v1/endpoints",
            json!({"url": rx.url("c"), "event_types": ["*"]}),
        )
        .await;
    assert_eq!(status, 403, "{b}");
    assert_eq!(b["error"]["code"], "plan_limit_reached", "{b}");
    let a_id = a["id"].as_str().unwrap();
    let (status, _) = s
        .call(Method::DELETE, &format!("/v1/endpoints/{a_id}"), None)
        .await;
    assert_eq!(status, 204);
    let c = s.endpoint(&rx.url("c"), &["click"]).await;
    let c_id = c["id"].as_str().unwrap();

    // A plan that is not one of the names is valid JSON of the wrong shape: `422`, though
    // serde's JSON parser calls a number where a name is expected a syntax error.
    for plan in [json!(5), json!("platinum")] {
        let (status, b) = s
            .call_as(
                ADMIN,
                Method::POST,
                "/admin/v1/accounts",
                Some(json!({"name": "odd", "plan": plan})),
            )
            .await;
        assert_eq!(status, 422, "{plan}: {b}");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("plan: "),
            "{b}"
        );
    }

    // Down to Free: the endpoints are disabled and cannot be changed, tested or rotated;
    // events are still accepted, with no deliveries. Removing stays possible.
    let (_, accounts) = s
        .call_as(ADMIN, Method::GET, "/admin/v1/accounts", None)
        .await;
    let acme = accounts["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "acme")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, b) = s
        .call_as(
            ADMIN,
            Method::PATCH,
            &format!("/admin/v1/accounts/{acme}"),
            Some(json!({"plan": "free"})),
        )
        .await;
    assert_eq!((status, &b["plan"]), (200, &json!("free")), "{b}");
    let (_, ep) = s.get(&format!("/v1/endpoints/{c_id}")).await;
    assert_eq!(ep["enabled"], false, "{ep}");
    assert!(
        ep["disabled_reason"].as_str().unwrap().contains("plan"),
        "{ep}"
    );
    for (method, path, body) in [
        (
            Method::PATCH,
            format!("/v1/endpoints/{c_id}"),
            Some(json!({"enabled": true})),
        ),
        (Method::POST, format!("/v1/endpoints/{c_id}/test"), None),
        (
            Method::POST,
            format!("/v1/endpoints/{c_id}/secret/rotate"),
            None,
        ),
    ] {
        let (status, b) = s.call(method, &path, body).await;
        assert_eq!(status, 403, "{path}: {b}");
        assert_eq!(b["error"]["code"], "plan_required", "{b}");
    }
    let ev = s.event("click", json!({})).await;
    assert_eq!(ev["deliveries"], json!([]), "{ev}");

    // Back to Pro: the endpoint can be enabled again and delivers.
    let (status, _) = s
        .call_as(
            ADMIN,
            Method::PATCH,
            &format!("/admin/v1/accounts/{acme}"),
            Some(json!({"plan": "pro"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, b) = s
        .call(
            Method::PATCH,
            &format!("/v1/endpoints/{c_id}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, 200, "{b}");
    let ev = s.event("click", json!({})).await;
    assert_eq!(ev["deliveries"].as_array().unwrap().len(), 1, "{ev}");
    rx.wait_for("c", 1).await;
}

async fn api_keys_are_stored_as_hashes_and_revocable(engine: Engine) {
    let s = TestServer::start_with(&engine, |c| {
        c.admin_token = hookline::api::admin::AdminToken::new(Some(ADMIN))
    })
    .await;
    let k1 = s.key.clone();
    let (status, issued) = s.post("/v1/api-keys", json!({})).await;
    assert_eq!(status, 201, "{issued}");
    let k2 = issued["key"].as_str().unwrap().to_owned();
    assert!(
        k2.starts_with("hk_") && k2.len() >= 3 + 43,
        "32 random bytes: {k2}"
    );
    let (_, other) = admin_account(&s, "other", "pro").await;

    // Listings show ids and prefixes, never keys.
    let (status, keys) = s.get("/v1/api-keys").await;
    assert_eq!(status, 200);
    let keys = keys["data"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in &keys {
        assert!(k.get("key").is_none(), "{k}");
        assert!(
            k1.starts_with(k["prefix"].as_str().unwrap())
                || k2.starts_with(k["prefix"].as_str().unwrap())
        );
    }
    let id_of = |key: &str| {
        keys.iter()
            .find(|k| key.starts_with(k["prefix"].as_str().unwrap()))
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (id1, id2) = (id_of(&k1), id_of(&k2));

    // No raw key anywhere in the database; their hashes are there (the dump sees the keys).
    let db = database_bytes(&s.location).await;
    for key in [&k1, &k2, &other] {
        assert!(!contains(&db, key), "a raw API key is stored");
        assert!(contains(&db, &sha256_hex(key)), "the key's hash is stored");
    }
    assert!(!contains(&db, ADMIN), "the admin token is not stored");

    // Another account's key id is not found; the last live key is kept.
    let (status, _) = s
        .call_as(&other, Method::DELETE, &format!("/v1/api-keys/{id1}"), None)
        .await;
    assert_eq!(status, 404);
    // Revoking k1 with k2: k1 stops at once, k2 goes on.
    let (status, b) = s
        .call_as(&k2, Method::DELETE, &format!("/v1/api-keys/{id1}"), None)
        .await;
    assert_eq!(status, 200, "{b}");
    assert!(b["revoked_at"].is_string(), "{b}");
    let (status, b) = s.call_as(&k1, Method::GET, "/v1/endpoints", None).await;
    assert_eq!(status, 401, "{b}");
    let (status, b) = s
        .call_as(&k2, Method::DELETE, &format!("/v1/api-keys/{id2}"), None)
        .await;
    assert_eq!(status, 409, "the last live key: {b}");
    let (status, _) = s.call_as(&k2, Method::GET, "/v1/endpoints", None).await;
    assert_eq!(status, 200);

    // The CLI revokes too; the running server stops taking the key within its key cache's
    // lifetime. A string that only starts like a key names none, and changes nothing.
    let (status, issued) = s
        .call_as(&k2, Method::POST, "/v1/api-keys", Some(json!({})))
        .await;
    assert_eq!(status, 201, "{issued}");
    let k3 = issued["key"].as_str().unwrap().to_owned();
    let revoke = |key: &str, more: &[&str]| {
        let mut args: Vec<String> = ["account", "revoke", "acme", key]
            .iter()
            .chain(more)
            .map(|s| s.to_string())
            .collect();
        args.extend(storage_args(&s.location));
        cli(&args, &[])
    };
    let forged = format!("{}{}", &k2[..12], "x".repeat(34));
    // (Another account's whole key is not a key of this one.)
    for not_a_key in [&k2[..12], &forged[..], &k2[..9], &other[..]] {
        let (ok, out, err) = revoke(not_a_key, &[]);
        assert!(!ok, "{not_a_key:?} revoked a key: {out}");
        assert!(
            err.contains("has no key") && err.contains("nothing was changed"),
            "{err}"
        );
        // What was given as a key is not printed whole.
        assert!(not_a_key.len() <= 10 || !err.contains(not_a_key), "{err}");
    }
    // By the whole key.
    let (ok, out, err) = revoke(&k2, &[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&id2), "{out}");
    eventually("the revoked key to be refused", || async {
        let (status, _) = s.call_as(&k2, Method::GET, "/v1/endpoints", None).await;
        (status == 401).then_some(())
    })
    .await;
    let (status, _) = s.call_as(&k3, Method::GET, "/v1/endpoints", None).await;
    assert_eq!(status, 200);
    // Revoking it again, by what `account keys` shows, says that it was revoked already,
    // and changes nothing.
    for again in [format!("{}…", &k2[..10]), k2.clone()] {
        let (ok, out, err) = revoke(&again, &[]);
        assert!(ok, "{out}{err}");
        assert!(
            out.contains(&format!("{id2} (")) && out.contains("was revoked already, at "),
            "{out}"
        );
    }
    // The last live key is kept unless --allow-last says otherwise.
    let (ok, out, err) = revoke(&k3[..10], &[]);
    assert!(!ok, "the last live key was revoked: {out}");
    assert!(
        err.contains("is the last live key of \"acme\"") && err.contains("--allow-last"),
        "{err}"
    );
    let (status, _) = s.call_as(&k3, Method::GET, "/v1/endpoints", None).await;
    assert_eq!(status, 200, "k3 still works");
    let (ok, out, err) = revoke(&k3[..10], &["--allow-last"]);
    assert!(ok, "{out}{err}");
    eventually("the last key to be refused", || async {
        let (status, _) = s.call_as(&k3, Method::GET, "/v1/endpoints", None).await;
        (status == 401).then_some(())
    })
    .await;
    let (ok, out, _) = cli(
        &[
            ["account", "keys", "acme"].map(String::from).to_vec(),
            storage_args(&s.location),
        ]
        .concat(),
        &[],
    );
    assert!(ok);
    assert_eq!(out.matches("revoked").count(), 3, "{out}");
    assert!(!out.contains(&k3), "the CLI never shows a key again: {out}");
}

/// The list of keys is paged like every list, on the account's route and the admin's: every
/// key once, oldest first, in pages of `limit`, `null` after the last. Keys issued within one
/// millisecond still have an order (their ids).
async fn key_lists_are_paged(engine: Engine) {
    let s = TestServer::start_with(&engine, |c| {
        c.admin_token = hookline::api::admin::AdminToken::new(Some(ADMIN))
    })
    .await;
    let (account_id, key) = admin_account(&s, "paged-co", "pro").await;
    let issues = (0..6).map(|_| s.call_as(&key, Method::POST, "/v1/api-keys", Some(json!({}))));
    for (status, b) in futures_util::future::join_all(issues).await {
        assert_eq!(status, 201, "{b}");
    }
    // Every key of the account in one millisecond: the order, and the pages, are the ids'.
    execute_sql(
        &s.location,
        &format!(
            "UPDATE api_keys SET created_at = (SELECT MIN(created_at) FROM api_keys)
             WHERE account_id = '{account_id}'"
        ),
    )
    .await;
    let (_, all) = s
        .call_as(&key, Method::GET, "/v1/api-keys?limit=1000", None)
        .await;
    assert!(all["next_cursor"].is_null(), "{all}");
    let all: Vec<Value> = all["data"].as_array().unwrap().clone();
    assert_eq!(all.len(), 7, "the first key and six more");
    let order: Vec<(String, String)> = all
        .iter()
        .map(|k| {
            (
                k["created_at"].as_str().unwrap().to_owned(),
                k["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "oldest first, then by id");
    assert!(order.iter().all(|(at, _)| *at == order[0].0));
    let ids: Vec<String> = order.into_iter().map(|(_, id)| id).collect();

    for base in [
        "/v1/api-keys".to_owned(),
        format!("/admin/v1/accounts/{account_id}/keys"),
    ] {
        for limit in [1, 2, 3, 7] {
            let mut seen: Vec<String> = Vec::new();
            let mut pages = 0;
            let mut cursor: Option<String> = None;
            loop {
                let mut path = format!("{base}?limit={limit}");
                if let Some(c) = &cursor {
                    path.push_str(&format!("&cursor={c}"));
                }
                let (status, page) = s
                    .call_as(credential_for(&base, &key), Method::GET, &path, None)
                    .await;
                assert_eq!(status, 200, "{path}: {page}");
                let data = page["data"].as_array().unwrap();
                assert!(!data.is_empty() && data.len() <= limit, "{path}: {page}");
                seen.extend(data.iter().map(|k| k["id"].as_str().unwrap().to_owned()));
                pages += 1;
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
                assert!(pages <= 7, "{base}: a walk that does not end");
            }
            assert_eq!(seen, ids, "{base}, limit {limit}");
            assert_eq!(pages, ids.len().div_ceil(limit), "{base}, limit {limit}");
        }
        let (status, b) = s
            .call_as(
                credential_for(&base, &key),
                Method::GET,
                &format!("{base}?cursor=bm9wZQ"),
                None,
            )
            .await;
        assert_eq!(status, 400, "{b}");
        assert_eq!(b["error"]["code"], "invalid_cursor", "{b}");
    }
}

/// Runs `sql` on the test's database, beside the server.
async fn execute_sql(location: &hookline::store::Location, sql: &str) {
    match location {
        hookline::store::Location::Sqlite(dir) => {
            let db = rusqlite::Connection::open(dir.join("hookline.db")).unwrap();
            db.busy_timeout(Duration::from_secs(10)).unwrap();
            db.execute_batch(sql).unwrap();
        }
        hookline::store::Location::Postgres(url) => {
            use sqlx::Connection as _;
            let mut db = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut db)
                .await
                .unwrap();
        }
    }
}

/// The admin's routes take the admin token; the account's, its key.
fn credential_for<'a>(path: &str, key: &'a str) -> &'a str {
    if path.starts_with("/admin/") {
        ADMIN
    } else {
        key
    }
}

async fn every_v1_route_hides_other_accounts_ids(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start_with(&engine, |c| {
        c.admin_token = hookline::api::admin::AdminToken::new(Some(ADMIN))
    })
    .await;
    // Account A (the server's own) owns one of everything.
    let ep = s.endpoint(&rx.url("a"), &["*"]).await;
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    let (status, t) = s
        .post("/v1/event-types", json!({"name": "order.paid"}))
        .await;
    assert_eq!(status, 201, "{t}");
    let ev = s.event("click", json!({})).await;
    let ev_id = ev["id"].as_str().unwrap().to_owned();
    let dlv_id = ev["deliveries"][0]["id"].as_str().unwrap().to_owned();
    s.wait_delivery(&dlv_id, "succeeded").await;
    let (_, keys) = s.get("/v1/api-keys").await;
    let key_id = keys["data"][0]["id"].as_str().unwrap().to_owned();

    // Account B (Pro, so only isolation can refuse it) and C (Free: the 404 comes before
    // the plan's 403, which would reveal that the id exists).
    let (_, b) = admin_account(&s, "b-co", "pro").await;
    let (_, c) = admin_account(&s, "c-co", "free").await;

    let (_, doc) = s.get("/openapi.json").await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") || !path.contains('{') {
            continue;
        }
        let concrete = if path.starts_with("/v1/endpoints/{id}") {
            path.replace("{id}", &ep_id)
        } else if path.starts_with("/v1/events/{id}") {
            path.replace("{id}", &ev_id)
        } else if path.starts_with("/v1/deliveries/{id}") {
            path.replace("{id}", &dlv_id)
        } else if path.starts_with("/v1/event-types/{name}") {
            path.replace("{name}", "order.paid")
        } else if path.starts_with("/v1/api-keys/{id}") {
            path.replace("{id}", &key_id)
        } else {
            panic!("{path}: a route with an id this test does not cover yet");
        };
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            // A body that would be valid for the owner, so only ownership can refuse it.
            let body = match (method.as_str(), path.as_str()) {
                ("PATCH", "/v1/endpoints/{id}") => Some(json!({"description": "taken over"})),
                ("PATCH", "/v1/event-types/{name}") => Some(json!({"description": "taken over"})),
                ("POST", "/v1/endpoints/{id}/secret/rotate") => Some(json!({})),
                ("POST", "/v1/endpoints/{id}/recover") => {
                    Some(json!({"since": "2020-01-01T00:00:00Z"}))
                }
                _ => None,
            };
            for (who, key) in [("pro", &b), ("free", &c)] {
                let (status, resp) = s
                    .call_as(key, method.clone(), &concrete, body.clone())
                    .await;
                assert_eq!(status, 404, "{method} {path} as {who}: {resp}");
                assert_eq!(resp["error"]["code"], "not_found", "{resp}");
                let text = resp.to_string();
                assert!(!text.contains(&ep_id) && !text.contains(&ev_id), "{text}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 14, "only {checked} routes with ids were found");

    // Lists show B nothing of A's.
    for path in ["/v1/endpoints", "/v1/events", "/v1/api-keys"] {
        let (status, list) = s.call_as(&b, Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}");
        let text = list.to_string();
        assert!(
            !text.contains(&ep_id) && !text.contains(&ev_id) && !text.contains(&key_id),
            "{path}: {text}"
        );
    }
    let (_, types) = s.call_as(&b, Method::GET, "/v1/event-types", None).await;
    assert!(!types.to_string().contains("order.paid"), "{types}");

    // And A's things are as they were: nothing was changed, rotated or revoked.
    let (_, now) = s.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert_eq!(now["description"], ep["description"], "{now}");
    assert_eq!(now["updated_at"], ep["updated_at"], "{now}");
    let (_, secret) = s.get(&format!("/v1/endpoints/{ep_id}/secret")).await;
    assert_eq!(secret["secret"], ep["secret"]);
    let (_, t) = s.get("/v1/event-types/order.paid").await;
    assert!(t["description"] != "taken over", "{t}");
    let (status, _) = s.get("/v1/endpoints").await;
    assert_eq!(status, 200, "A's key still works");
}

async fn the_admin_api_is_off_without_its_token(engine: Engine) {
    let off = TestServer::start(&engine).await;
    for key in [None, Some(ADMIN), Some(off.key.as_str())] {
        let mut rb = off.http.get(off.url("/admin/v1/accounts"));
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        assert_eq!(rb.send().await.unwrap().status(), 404);
    }
    let (status, _) = off
        .call_as(
            ADMIN,
            Method::POST,
            "/admin/v1/accounts",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, 404);
    drop(off);

    let s = TestServer::start_with(&engine, |c| {
        c.admin_token = hookline::api::admin::AdminToken::new(Some(ADMIN))
    })
    .await;
    let (status, _) = s.get("/admin/v1/accounts").await;
    assert_eq!(status, 401, "an account's key is not the admin token");
    let (status, _) = s
        .call_as("wrong", Method::GET, "/admin/v1/accounts", None)
        .await;
    assert_eq!(status, 401);
    let status = s
        .http
        .get(s.url("/admin/v1/accounts"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);

    // Bad input is refused and creates nothing.
    for (body, code) in [
        (json!({"name": ""}), 422),
        (json!({"name": "x", "plan": "gold"}), 422),
        (json!({"name": "acme"}), 409),
        (json!({"nom": "x"}), 422),
    ] {
        let (status, b) = s
            .call_as(
                ADMIN,
                Method::POST,
                "/admin/v1/accounts",
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, code, "{body}: {b}");
    }
    let (id, key) = admin_account(&s, "beta", "business").await;
    let (_, page) = s
        .call_as(ADMIN, Method::GET, "/admin/v1/accounts?limit=1", None)
        .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, page2) = s
        .call_as(
            ADMIN,
            Method::GET,
            &format!("/admin/v1/accounts?limit=1&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(page2["data"][0]["id"], id, "{page2}");
    let (status, acc) = s
        .call_as(
            ADMIN,
            Method::GET,
            &format!("/admin/v1/accounts/{id}"),
            None,
        )
        .await;
    assert_eq!((status, &acc["plan"]), (200, &json!("business")));
    let (status, _) = s
        .call_as(ADMIN, Method::GET, "/admin/v1/accounts/acc_nope", None)
        .await;
    assert_eq!(status, 404);

    // Keys: issue, list, revoke (the operator may revoke the last one: it locks the account).
    let (status, issued) = s
        .call_as(
            ADMIN,
            Method::POST,
            &format!("/admin/v1/accounts/{id}/keys"),
            None,
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let (_, keys) = s
        .call_as(
            ADMIN,
            Method::GET,
            &format!("/admin/v1/accounts/{id}/keys"),
            None,
        )
        .await;
    let keys = keys["data"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2);
    for k in keys {
        let kid = k["id"].as_str().unwrap();
        let (status, _) = s
            .call_as(
                ADMIN,
                Method::DELETE,
                &format!("/admin/v1/accounts/{id}/keys/{kid}"),
                None,
            )
            .await;
        assert_eq!(status, 200);
    }
    let (status, _) = s.call_as(&key, Method::GET, "/v1/endpoints", None).await;
    assert_eq!(status, 401);
    let (status, _) = s
        .call_as(
            issued["key"].as_str().unwrap(),
            Method::GET,
            "/v1/endpoints",
            None,
        )
        .await;
    assert_eq!(status, 401);
}

async fn ingest_is_rate_limited_per_account(engine: Engine) {
    let s = TestServer::start_with(&engine, |c| {
        c.admin_token = hookline::api::admin::AdminToken::new(Some(ADMIN));
        c.limits.pro.ingest_per_sec = Some(2);
    })
    .await;
    let (_, other) = admin_account(&s, "other", "pro").await;
    let batch = |n: usize| json!({"events": (0..n).map(|_| json!({"type": "open", "data": valid("open", json!({}))})).collect::<Vec<_>>()});
    // A full bucket lets a batch of more than a second's worth in; the debt refuses the next.
    let (status, b) = s.post("/v1/events/batch", batch(3)).await;
    assert_eq!(status, 202, "{b}");
    let resp = s
        .req(Method::POST, "/v1/events/batch")
        .json(&batch(1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 1, "one token of debt at 2 a second");
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "rate_limited", "{b}");
    // Nothing of the refused request was stored: the feed holds the three. (On PostgreSQL
    // the feed shows an event once every older transaction has ended.)
    eventually("the three accepted events in the feed", || async {
        let (_, feed) = s.get("/v1/events").await;
        (feed["data"].as_array().unwrap().len() == 3).then_some(())
    })
    .await;
    // Another account has a bucket of its own.
    let (status, _) = s
        .call_as(&other, Method::POST, "/v1/events/batch", Some(batch(2)))
        .await;
    assert_eq!(status, 202);
    // After the wait it is accepted again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let (status, b) = s.post("/v1/events/batch", batch(1)).await;
    assert_eq!(status, 202, "{b}");

    // An invalid request keeps its cost (validation is metered too): an invalid batch of
    // three at a full bucket leaves the account in debt.
    let (_, fresh) = admin_account(&s, "fresh", "pro").await;
    let invalid = json!({"events": [{"type": "open", "data": {}}, {"type": "open", "data": {}}, {"type": "open", "data": {}}]});
    let (status, b) = s
        .call_as(&fresh, Method::POST, "/v1/events/batch", Some(invalid))
        .await;
    assert_eq!(status, 422, "{b}");
    let (status, b) = s
        .call_as(&fresh, Method::POST, "/v1/events/batch", Some(batch(2)))
        .await;
    assert_eq!(status, 429, "{b}");
}

async fn a_rotated_secret_signs_beside_the_new_one_for_the_overlap(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start(&engine).await;
    let ep = s.endpoint(&rx.url("r"), &["*"]).await;
    let id = ep["id"].as_str().unwrap();
    let old = ep["secret"].as_str().unwrap().to_owned();

    // Bad input changes nothing.
    let path = format!("/v1/endpoints/{id}/secret/rotate");
    for body in [json!({"secret": "nope"}), json!({"secrett": "x"})] {
        let (status, b) = s.post(&path, body).await;
        assert_eq!(status, 422, "{b}");
    }
    let big = json!({"secret": "a".repeat(300 * 1024)});
    let (status, b) = s.post(&path, big).await;
    assert_eq!(
        (status, &b["error"]["code"]),
        (413, &json!("payload_too_large")),
        "{b}"
    );
    let resp = s
        .req(Method::POST, &path)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (_, cur) = s.get(&format!("/v1/endpoints/{id}/secret")).await;
    assert_eq!(cur["secret"], old.as_str());

    // An empty body rotates to a generated secret.
    let resp = s.req(Method::POST, &path).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let rotated: Value = resp.json().await.unwrap();
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old, "{rotated}");
    let (_, cur) = s.get(&format!("/v1/endpoints/{id}/secret")).await;
    assert_eq!(cur["secret"], new.as_str());
    let (_, shown) = s.get(&format!("/v1/endpoints/{id}")).await;
    assert_eq!(
        shown["previous_secret_expires_at"],
        rotated["previous_secret_expires_at"]
    );

    // During the overlap: two signatures; a receiver with only the old secret and one
    // with only the new one both verify.
    s.event("click", json!({})).await;
    let got = rx.wait_for("r", 1).await;
    let sig = got[0].header("webhook-signature").to_owned();
    assert_eq!(sig.split(' ').count(), 2, "{sig}");
    verify_with_standardwebhooks(&old, &got[0]);
    verify_with_standardwebhooks(&new, &got[0]);

    // A chosen secret. Rotating again within the overlap cuts no earlier secret short: a
    // receiver that never saw `new` (the answer to that rotation was lost, say) still
    // verifies with the original.
    let chosen = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (status, b) = s.post(&path, json!({"secret": chosen})).await;
    assert_eq!(status, 200, "{b}");
    s.event("click", json!({})).await;
    let got = rx.wait_for("r", 2).await;
    let last = got.last().unwrap();
    assert_eq!(last.header("webhook-signature").split(' ').count(), 3);
    for secret in [chosen, new.as_str(), old.as_str()] {
        verify_with_standardwebhooks(secret, last);
    }

    // At most ten rotated-out secrets sign: the eleventh rotation within the overlap ends
    // the oldest (the original) at once.
    let mut secrets = vec![old.clone(), new.clone(), chosen.to_owned()];
    for _ in 0..9 {
        let (status, b) = s.post(&path, json!({})).await;
        assert_eq!(status, 200, "{b}");
        secrets.push(b["secret"].as_str().unwrap().to_owned());
    }
    s.event("click", json!({})).await;
    let got = rx.wait_for("r", 3).await;
    let last = got.last().unwrap();
    assert_eq!(last.header("webhook-signature").split(' ').count(), 11);
    for secret in &secrets[1..] {
        verify_with_standardwebhooks(secret, last);
    }
    let wh = standardwebhooks::Webhook::new(&old).unwrap();
    assert!(
        wh.verify(&last.body, &last.headers).is_err(),
        "the oldest of eleven is gone"
    );
}

/// Each secret rotated out signs until its own overlap ends: a second rotation neither
/// cuts the first one's short nor stretches it.
async fn each_rotated_secret_keeps_its_own_overlap(engine: Engine) {
    // Times are taken around each request, so a slow request moves the checks with it; a
    // delivery has `GAP - 300 ms` to arrive before the second overlap ends.
    const OVERLAP: Duration = Duration::from_millis(3000);
    const GAP: Duration = Duration::from_millis(2500);
    let rx = Receiver::start().await;
    let s = TestServer::start_with(&engine, |c| c.secret_overlap = OVERLAP).await;
    let ep = s.endpoint(&rx.url("r"), &["*"]).await;
    let id = ep["id"].as_str().unwrap();
    let first = ep["secret"].as_str().unwrap().to_owned();
    let path = format!("/v1/endpoints/{id}/secret/rotate");
    let (status, b) = s.post(&path, json!({})).await;
    assert_eq!(status, 200, "{b}");
    let first_done = tokio::time::Instant::now();
    let second = b["secret"].as_str().unwrap().to_owned();
    tokio::time::sleep(GAP).await;
    let second_sent = tokio::time::Instant::now();
    let (status, b) = s.post(&path, json!({})).await;
    assert_eq!(status, 200, "{b}");
    let second_done = tokio::time::Instant::now();
    let third = b["secret"].as_str().unwrap().to_owned();
    let (_, shown) = s.get(&format!("/v1/endpoints/{id}")).await;
    assert_eq!(
        shown["previous_secret_expires_at"], b["previous_secret_expires_at"],
        "the endpoint shows the latest overlap's end"
    );

    // Past the first overlap, inside the second: `second` and `third` sign, `first` not.
    tokio::time::sleep_until(first_done + OVERLAP + Duration::from_millis(300)).await;
    s.event("click", json!({})).await;
    let got = rx.wait_for("r", 1).await;
    assert!(
        second_sent.elapsed() < OVERLAP,
        "the delivery came after the second overlap too; the machine is too slow for this check"
    );
    assert_eq!(got[0].header("webhook-signature").split(' ').count(), 2);
    verify_with_standardwebhooks(&third, &got[0]);
    verify_with_standardwebhooks(&second, &got[0]);
    let wh = standardwebhooks::Webhook::new(&first).unwrap();
    assert!(wh.verify(&got[0].body, &got[0].headers).is_err());

    // Past both: the current secret alone.
    tokio::time::sleep_until(second_done + OVERLAP + Duration::from_millis(300)).await;
    s.event("click", json!({})).await;
    let got = rx.wait_for("r", 2).await;
    assert_eq!(got[1].header("webhook-signature").split(' ').count(), 1);
    verify_with_standardwebhooks(&third, &got[1]);
    // … and the endpoint no longer shows an overlap's end, now in the past.
    let (_, shown) = s.get(&format!("/v1/endpoints/{id}")).await;
    assert!(shown["previous_secret_expires_at"].is_null(), "{shown}");
    let (_, listed) = s.get("/v1/endpoints").await;
    assert!(
        listed["data"][0]["previous_secret_expires_at"].is_null(),
        "{listed}"
    );
}

async fn after_the_overlap_only_the_new_secret_signs(engine: Engine) {
    let rx = Receiver::start().await;
    let s =
        TestServer::start_with(&engine, |c| c.secret_overlap = Duration::from_millis(300)).await;
    let ep = s.endpoint(&rx.url("r"), &["*"]).await;
    let id = ep["id"].as_str().unwrap();
    let old = ep["secret"].as_str().unwrap().to_owned();
    let (status, rotated) = s
        .post(&format!("/v1/endpoints/{id}/secret/rotate"), json!({}))
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.event("click", json!({})).await;
    let got = rx.wait_for("r", 1).await;
    assert_eq!(got[0].header("webhook-signature").split(' ').count(), 1);
    verify_with_standardwebhooks(&new, &got[0]);
    let wh = standardwebhooks::Webhook::new(&old).unwrap();
    assert!(wh.verify(&got[0].body, &got[0].headers).is_err());
}

async fn endpoint_secrets_are_sealed_at_rest_under_a_key(engine: Engine) {
    let rx = Receiver::start().await;
    let key1 = Sealer::generate_key();
    let key2 = Sealer::generate_key();
    // Before any key: one endpoint whose secret is stored in clear.
    let s = TestServer::start(&engine).await;
    let (status, clear) = s
        .post(
            "/v1/endpoints",
            json!({"url": rx.url("clear"), "event_types": ["*"],
                   "headers": {"x-api-key": "clear-credential-0815"}}),
        )
        .await;
    assert_eq!(status, 201, "{clear}");
    let clear_secret = clear["secret"].as_str().unwrap().to_owned();
    assert!(contains(&database_bytes(&s.location).await, &clear_secret));
    let api_key = s.key.clone();
    let data = s.stop().await.unwrap();

    // With a key: the clear secret is sealed at start; new and rotated secrets are sealed.
    let mut config = common::test_config(&data.location);
    config.sealer = Sealer::from_base64(&key1).unwrap();
    let s = TestServer::launch(config.clone(), api_key.clone()).await;
    let chosen = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let (status, sealed) = s
        .post(
            "/v1/endpoints",
            json!({"url": rx.url("sealed"), "event_types": ["*"], "secret": chosen,
                   "headers": {"authorization": "Bearer receiver-credential-4711"}}),
        )
        .await;
    assert_eq!(status, 201, "{sealed}");
    let sealed_id = sealed["id"].as_str().unwrap().to_owned();
    let (_, rotated) = s
        .post(
            &format!("/v1/endpoints/{sealed_id}/secret/rotate"),
            json!({}),
        )
        .await;
    let rotated_secret = rotated["secret"].as_str().unwrap().to_owned();
    let db = database_bytes(&s.location).await;
    for secret in [&clear_secret, chosen, &rotated_secret] {
        let body = secret.trim_start_matches("whsec_");
        assert!(
            !contains(&db, secret) && !contains(&db, body),
            "a secret is stored in clear"
        );
    }
    assert!(!contains(&db, "clear-credential-0815"), "sealed at start");
    assert!(
        !contains(&db, "receiver-credential-4711"),
        "an endpoint header value is stored in clear"
    );
    assert!(!contains(&db, &key1), "the encryption key is not stored");
    assert!(contains(&db, "hlenc1:"), "sealed values are there");
    // The API and deliveries see them in clear.
    let (_, shown) = s.get(&format!("/v1/endpoints/{sealed_id}/secret")).await;
    assert_eq!(shown["secret"], rotated_secret.as_str());
    s.event("click", json!({})).await;
    let got = rx.wait_for("sealed", 1).await;
    assert_eq!(
        got[0].header("authorization"),
        "Bearer receiver-credential-4711"
    );
    verify_with_standardwebhooks(&rotated_secret, &got[0]);
    verify_with_standardwebhooks(chosen, &got[0]);
    verify_with_standardwebhooks(&clear_secret, &rx.wait_for("clear", 1).await[0]);
    s.stop().await;

    // A wrong key or none: the server refuses to start, saying why; nothing changes.
    for sealer in [Sealer::from_base64(&key2).unwrap(), Sealer::none()] {
        let mut c = common::test_config(&data.location);
        c.sealer = sealer;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let started = tokio::time::timeout(
            Duration::from_secs(60),
            hookline::server::run(c, listener, Default::default()),
        )
        .await
        .expect("the server gives up at once");
        let err = format!("{:#}", started.expect_err("the start is refused"));
        assert!(err.contains("encrypted under key"), "{err}");
    }

    // The CLI re-encrypts everything under a new key (and refuses a wrong current key).
    let mut args: Vec<String> = ["secrets", "reencrypt"].map(String::from).to_vec();
    args.extend(storage_args(&data.location));
    let (ok, _, err) = cli(
        &args,
        &[
            ("HOOKLINE_ENCRYPTION_KEY", &key2),
            ("HOOKLINE_NEW_ENCRYPTION_KEY", &Sealer::generate_key()),
        ],
    );
    assert!(!ok && err.contains("encrypted under key"), "{err}");
    let (ok, _, err) = cli(
        &args,
        &[
            ("HOOKLINE_ENCRYPTION_KEY", &key1),
            ("HOOKLINE_NEW_ENCRYPTION_KEY", ""),
        ],
    );
    assert!(
        !ok && err.contains("32 bytes"),
        "an empty new key is refused: {err}"
    );
    let (ok, out, err) = cli(
        &args,
        &[
            ("HOOKLINE_ENCRYPTION_KEY", &key1),
            ("HOOKLINE_NEW_ENCRYPTION_KEY", &key2),
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("2 endpoints re-encrypted"), "{out}");
    let mut c = common::test_config(&data.location);
    c.sealer = Sealer::from_base64(&key2).unwrap();
    let s = TestServer::launch(c, api_key).await;
    s.event("click", json!({})).await;
    let got = rx.wait_for("sealed", 2).await;
    verify_with_standardwebhooks(&rotated_secret, got.last().unwrap());
    verify_with_standardwebhooks(chosen, got.last().unwrap());
    s.stop().await;
    drop(data);
}

async fn endpoint_headers_cannot_smuggle_anything(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start(&engine).await;
    let ep = s
        .post(
            "/v1/endpoints",
            json!({"url": rx.url("h"), "event_types": ["*"], "headers": {"X-Tenant": "t1"}}),
        )
        .await
        .1;
    let id = ep["id"].as_str().unwrap().to_owned();
    let hostile: Vec<Value> = vec![
        json!({"Host": "internal.example"}),
        json!({"content-length": "0"}),
        json!({"Transfer-Encoding": "chunked"}),
        json!({"connection": "close"}),
        json!({"webhook-signature": "v1,forged"}),
        json!({"Webhook-Id": "evt_forged"}),
        json!({"webhook-timestamp": "0"}),
        json!({"X-A": "a\r\nX-Injected: 1"}),
        json!({"X-A": "a\nX-Injected: 1"}),
        json!({"X-A": "a\u{0}b"}),
        json!({"X-A\r\nX-Injected": "1"}),
        json!({"bad name": "x"}),
        json!({"": "x"}),
        json!({"X-A": "hlenc1:0a1b2c3d:AAAA"}),
        // One name twice (names are case-insensitive): one would silently replace the other.
        json!({"X-Tenant": "t2", "x-tenant": "t3"}),
        // Two values of 7,000 bytes: each fits a line, together more than a receiver's head.
        json!({"X-A": "a".repeat(7000), "X-B": "b".repeat(7000)}),
    ];
    for headers in hostile {
        let (status, b) = s
            .post(
                "/v1/endpoints",
                json!({"url": rx.url("h"), "event_types": ["*"], "headers": headers}),
            )
            .await;
        assert_eq!(status, 422, "create {headers}: {b}");
        let (status, b) = s
            .call(
                Method::PATCH,
                &format!("/v1/endpoints/{id}"),
                Some(json!({"headers": headers})),
            )
            .await;
        assert_eq!(status, 422, "change {headers}: {b}");
    }
    // Nothing changed: the endpoint sends its own header, and only Hookline's signature.
    let (_, list) = s.get("/v1/endpoints").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    s.event("click", json!({})).await;
    let got = rx.wait_for("h", 1).await;
    assert_eq!(got[0].header("x-tenant"), "t1");
    assert!(got[0].headers.get("x-injected").is_none());
    assert_eq!(
        got[0].headers.get_all("webhook-signature").iter().count(),
        1
    );
    verify_with_standardwebhooks(ep["secret"].as_str().unwrap(), &got[0]);
}

async fn plan_rules_hold_under_concurrency_and_a_stale_key_cache(engine: Engine) {
    let rx = Receiver::start().await;
    let s = TestServer::start_with(&engine, |c| c.limits.pro.max_endpoints = 2).await;
    // Twenty creations at once against a limit of two: exactly two pass.
    let creations = (0..20).map(|i| {
        let body = json!({"url": rx.url(&format!("c{i}")), "event_types": ["*"]});
        s.req(Method::POST, "/v1/endpoints").json(&body).send()
    });
    let statuses: Vec<u16> = futures_status(creations).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 403).count(),
        18,
        "{statuses:?}"
    );
    let (_, list) = s.get("/v1/endpoints").await;
    let eps = list["data"].as_array().unwrap().clone();
    assert_eq!(eps.len(), 2);

    // The plan changes behind the server's back (its key cache still says Pro): the store
    // itself refuses to create or enable an endpoint for a Free account.
    let (status, _) = s.get("/v1/endpoints").await;
    assert_eq!(status, 200, "the key is cached as Pro");
    let other = hookline::store::Store::open(&s.location).await.unwrap();
    let account = other.account_by_name("acme".into()).await.unwrap().unwrap();
    let (_, disabled) = other
        .set_plan(account.id.clone(), hookline::model::Plan::Free)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        disabled.len(),
        2,
        "both endpoints disabled with the plan change"
    );
    let id = eps[0]["id"].as_str().unwrap();
    let (status, b) = s
        .call(
            Method::PATCH,
            &format!("/v1/endpoints/{id}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(
        (status, &b["error"]["code"]),
        (403, &json!("plan_required")),
        "{b}"
    );
    let (_, ep) = s.get(&format!("/v1/endpoints/{id}")).await;
    assert_eq!(ep["enabled"], false, "{ep}");
    drop(other);
}

/// The statuses of concurrent requests.
async fn futures_status<F>(requests: impl Iterator<Item = F>) -> Vec<u16>
where
    F: std::future::Future<Output = reqwest::Result<reqwest::Response>> + Send + 'static,
{
    let tasks: Vec<_> = requests.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap().unwrap().status().as_u16());
    }
    out
}

on_both_engines!(
    plan_rules_hold_under_concurrency_and_a_stale_key_cache,
    endpoint_headers_cannot_smuggle_anything,
    plans_gate_webhooks_and_limit_endpoints,
    api_keys_are_stored_as_hashes_and_revocable,
    key_lists_are_paged,
    every_v1_route_hides_other_accounts_ids,
    the_admin_api_is_off_without_its_token,
    ingest_is_rate_limited_per_account,
    a_rotated_secret_signs_beside_the_new_one_for_the_overlap,
    each_rotated_secret_keeps_its_own_overlap,
    after_the_overlap_only_the_new_secret_signs,
    endpoint_secrets_are_sealed_at_rest_under_a_key,
);
