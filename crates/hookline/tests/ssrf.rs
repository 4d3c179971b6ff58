//! Endpoint URLs that point at this machine, its private networks or the cloud's metadata
//! service are refused at creation, in every spelling, and again at connect time against
//! the address actually used (a name that resolves elsewhere later, DNS rebinding; a
//! literal address stored under laxer rules); `--allow-private-targets` accepts them
//! (development). Redirects are not followed.

mod common;

use common::{Engine, Receiver, Reply, TestServer};
use hookline::dispatch::targets::{Lookup, Resolve};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

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
    "http://[64:ff9b:1::a00:1]/",
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

/// A DNS whose answers the test changes as it goes; names it was not told of do not resolve.
#[derive(Debug, Default)]
struct SwitchableDns {
    answers: Mutex<HashMap<String, Vec<IpAddr>>>,
}

impl SwitchableDns {
    fn point(&self, host: &str, ip: &str) {
        self.answers
            .lock()
            .unwrap()
            .insert(host.to_owned(), vec![ip.parse().unwrap()]);
    }
}

impl Resolve for SwitchableDns {
    fn resolve(&self, host: &str) -> Lookup {
        let answer = self.answers.lock().unwrap().get(host).cloned();
        let host = host.to_owned();
        Box::pin(async move {
            answer.ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host}: no such name"),
                )
            })
        })
    }
}

const REBIND: &str = "rebind.hookline.test";
/// A public address (example.com's): the name's answer at creation. Nothing connects to it.
const PUBLIC: &str = "93.184.216.34";

/// A server whose names resolve through `dns`.
async fn server_with_dns(
    engine: &Engine,
    dns: &Arc<SwitchableDns>,
    allow_private: bool,
) -> TestServer {
    let resolver: Arc<dyn Resolve> = dns.clone();
    TestServer::start_with(engine, move |c| {
        c.url_rules.allow_private_targets = allow_private;
        c.resolver = resolver;
    })
    .await
}

/// Every attempt of a delivery: (status code, error).
fn attempts(d: &Value) -> Vec<(Value, Value)> {
    d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["status_code"].clone(), a["error"].clone()))
        .collect()
}

async fn a_name_rebound_to_a_private_address_is_refused_at_connect(engine: Engine) {
    let rx = Receiver::start().await;
    let dns = Arc::new(SwitchableDns::default());
    dns.point(REBIND, PUBLIC);
    let s = server_with_dns(&engine, &dns, false).await;
    let url = format!("http://{REBIND}:{}/r/rebind", rx.addr.port());
    let ep = s.endpoint(&url, &["*"]).await;
    let ep_id = ep["id"].as_str().unwrap();

    // The name now points at this machine, where the receiver listens.
    dns.point(REBIND, "127.0.0.1");
    let refusal = format!(
        "{REBIND:?} resolves to 127.0.0.1, a loopback address; webhooks go to public addresses"
    );
    // The API asks the same resolver: the URL would no longer be accepted.
    let (status, body) = s
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/endpoints/{ep_id}"),
            Some(json!({"url": url})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["error"]["message"],
        format!("url: {refusal}"),
        "{body}"
    );

    // A delivery: every attempt fails at connect with the refusal, and the schedule (three
    // retries) runs out.
    let ev = s.event("open", json!({})).await;
    let d = s
        .wait_delivery(ev["deliveries"][0]["id"].as_str().unwrap(), "failed")
        .await;
    assert_eq!(d["attempt_count"], 4, "{d}");
    for (code, error) in attempts(&d) {
        assert_eq!(code, Value::Null, "{d}");
        assert_eq!(error, refusal.as_str(), "{d}");
    }

    // The test ping goes through the same sender.
    let (status, t) = s
        .post(&format!("/v1/endpoints/{ep_id}/test"), json!({}))
        .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["delivered"], false, "{t}");
    assert_eq!(t["status_code"], Value::Null, "{t}");
    assert_eq!(t["error"], refusal.as_str(), "{t}");

    assert!(rx.all().is_empty(), "the receiver was reached");
}

async fn a_name_rebound_to_a_private_address_is_delivered_when_allowed(engine: Engine) {
    let rx = Receiver::start().await;
    let dns = Arc::new(SwitchableDns::default());
    dns.point(REBIND, PUBLIC);
    let s = server_with_dns(&engine, &dns, true).await;
    let url = format!("http://{REBIND}:{}/r/rebind", rx.addr.port());
    let ep = s.endpoint(&url, &["*"]).await;
    let secret = ep["secret"].as_str().unwrap();

    dns.point(REBIND, "127.0.0.1");
    let ev = s.event("open", json!({})).await;
    let d = s
        .wait_delivery(ev["deliveries"][0]["id"].as_str().unwrap(), "succeeded")
        .await;
    assert_eq!(attempts(&d), vec![(json!(200), Value::Null)], "{d}");
    let got = rx.wait_for("rebind", 1).await;
    assert_eq!(got[0].header("webhook-id"), ev["id"].as_str().unwrap());
    common::verify_with_standardwebhooks(secret, &got[0]);

    let (status, t) = s
        .post(
            &format!("/v1/endpoints/{}/test", ep["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["delivered"], true, "{t}");
}

async fn a_literal_private_address_is_refused_at_connect(engine: Engine) {
    // Endpoints stored while private targets were allowed, then a restart without.
    let rx = Receiver::start().await;
    let s = TestServer::start(&engine).await;
    s.endpoint(&rx.url("v4"), &["*"]).await;
    let mapped = format!("http://[::ffff:127.0.0.1]:{}/r/v6", rx.addr.port());
    s.endpoint(&mapped, &["*"]).await;
    let key = s.key.clone();
    let data = s.stop().await.unwrap();
    let mut config = common::test_config(&data.location);
    config.url_rules.allow_private_targets = false;
    let s = TestServer::launch(config, key).await;

    let ev = s.event("open", json!({})).await;
    let mut errors = Vec::new();
    for delivery in ev["deliveries"].as_array().unwrap() {
        let d = s
            .wait_delivery(delivery["id"].as_str().unwrap(), "failed")
            .await;
        assert_eq!(d["attempt_count"], 4, "{d}");
        let all = attempts(&d);
        assert!(all.iter().all(|a| a == &all[0]), "{d}");
        assert_eq!(all[0].0, Value::Null, "{d}");
        errors.push(all[0].1.as_str().unwrap().to_owned());
    }
    errors.sort();
    assert_eq!(
        errors,
        vec![
            "127.0.0.1 is a loopback address; webhooks go to public addresses",
            "::ffff:127.0.0.1 is a loopback address; webhooks go to public addresses",
        ]
    );
    assert!(rx.all().is_empty(), "the receiver was reached");
    s.stop().await;
    drop(data);
}

async fn an_http_endpoint_gets_nothing_from_a_server_without_insecure_urls(engine: Engine) {
    // An endpoint stored while `http://` was allowed, then a restart without: nothing goes
    // out in clear (its payload, its own headers), and each attempt says why.
    let rx = Receiver::start().await;
    let s = TestServer::start(&engine).await;
    s.endpoint(&rx.url("plain"), &["*"]).await;
    let key = s.key.clone();
    let data = s.stop().await.unwrap();
    let mut config = common::test_config(&data.location);
    config.url_rules.allow_insecure_urls = false;
    let s = TestServer::launch(config, key).await;

    let ev = s.event("open", json!({})).await;
    let d = s
        .wait_delivery(ev["deliveries"][0]["id"].as_str().unwrap(), "failed")
        .await;
    let all = attempts(&d);
    assert_eq!(all.len(), 4, "{d}");
    for (status, error) in &all {
        assert_eq!(*status, Value::Null, "{d}");
        assert!(
            error.as_str().unwrap().contains("--allow-insecure-urls"),
            "{d}"
        );
    }
    assert!(rx.all().is_empty(), "the receiver was reached in clear");
    s.stop().await;
    drop(data);
}

async fn redirects_are_not_followed(engine: Engine) {
    let rx = Receiver::start().await;
    rx.always("hop", Reply::Redirect(rx.url("landing")));
    let s = TestServer::start(&engine).await;
    s.endpoint(&rx.url("hop"), &["*"]).await;
    let ev = s.event("open", json!({})).await;
    let d = s
        .wait_delivery(ev["deliveries"][0]["id"].as_str().unwrap(), "failed")
        .await;
    // Each attempt says where the receiver pointed, and that it was not followed; so does
    // the delivery.
    let said = format!(
        "redirected to {:?}, which is not followed: a webhook goes only to its endpoint's URL \
         (change the endpoint's URL if the receiver moved)",
        rx.url("landing")
    );
    assert_eq!(attempts(&d), vec![(json!(302), json!(said)); 4], "{d}");
    assert_eq!(d["last_status_code"], 302, "{d}");
    assert_eq!(d["last_error"], json!(said), "{d}");
    assert_eq!(rx.got("hop").len(), 4);
    assert!(rx.got("landing").is_empty(), "the redirect was followed");
}

on_both_engines!(
    private_targets_are_refused_unless_allowed,
    a_name_rebound_to_a_private_address_is_refused_at_connect,
    a_name_rebound_to_a_private_address_is_delivered_when_allowed,
    a_literal_private_address_is_refused_at_connect,
    an_http_endpoint_gets_nothing_from_a_server_without_insecure_urls,
    redirects_are_not_followed,
);
