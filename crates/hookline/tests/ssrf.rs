//! Endpoint URLs that point at this machine, its private networks or the cloud's metadata
//! service are refused at creation, in every spelling; `--allow-private-targets` accepts
//! them (development).

mod common;

use common::{Engine, TestServer};
use serde_json::json;

const HOSTILE: &[&str] = &[
    "http://127.0.0.1/hook",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://017700000001/",
    "http://0177.0.0.1/",
    "http://127.0.0.1:8080/",
    "http://localhost/",
    "http://LOCALHOST./",
    "http://api.localhost/",
    "http://ip6-localhost/",
    "http://0/",
    "http://0.0.0.0/",
    "http://[::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[2002:7f00:1::]/",
    "http://[fe80::1]/",
    "http://[fd00::1]/",
    "http://[fd00:ec2::254]/",
    "http://[ff02::1]/",
    "http://[2001:db8::1]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://0251.0376.0251.0376/",
    "http://0xa9fea9fe/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://172.31.255.255/",
    "http://192.168.0.1/",
    "http://100.64.0.1/",
    "http://198.18.0.1/",
    "http://192.0.2.1/",
    "http://198.51.100.7/",
    "http://203.0.113.9/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
];

async fn private_targets_are_refused_unless_allowed(engine: Engine) {
    let strict = TestServer::start_with(&engine, |c| {
        c.url_rules.allow_private_targets = false;
    })
    .await;
    for url in HOSTILE {
        let (status, body) = strict
            .post("/v1/endpoints", json!({"url": url, "event_types": ["*"]}))
            .await;
        assert_eq!(status, 422, "{url} was accepted: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("url:"),
            "{url}: {body}"
        );
    }
    // Nothing was created.
    let (_, list) = strict.get("/v1/endpoints").await;
    assert!(list["data"].as_array().unwrap().is_empty(), "{list}");
    // Changing a URL to a private one is refused too.
    let (status, ep) = strict
        .post(
            "/v1/endpoints",
            json!({"url": "https://hooks.example.com/x", "event_types": ["*"]}),
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    let (status, body) = strict
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/endpoints/{}", ep["id"].as_str().unwrap()),
            Some(json!({"url": "http://169.254.169.254/"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    // With private targets allowed (development), every one is taken.
    let open = TestServer::start(&engine).await;
    for url in HOSTILE {
        let (status, body) = open
            .post("/v1/endpoints", json!({"url": url, "event_types": ["*"]}))
            .await;
        assert_eq!(status, 201, "{url}: {body}");
    }
}

on_both_engines!(private_targets_are_refused_unless_allowed);
