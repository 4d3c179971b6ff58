//! A real `hookline serve` process, under concurrent ingest, is killed with SIGKILL and
//! started again on the same data (SQLite directory, or PostgreSQL schema): every event that
//! got a 202 is delivered, and is in the pull API's pages of its type.

mod common;

use common::process::{Serve, cli_account, free_port, get_json, post_endpoint, wait_healthy};
use common::{
    Data, Engine, Receiver, Reply, eventually, eventually_within, valid,
    verify_with_standardwebhooks,
};
use hookline::store::Location;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The waits whose length grows with the events the test sends.
const LOAD_PATIENCE: Duration = Duration::from_secs(120);

/// The storage flags for `location`.
fn storage(location: &Location) -> Vec<String> {
    match location {
        Location::Sqlite(dir) => vec!["--data-dir".into(), dir.display().to_string()],
        // The restarted process is a new node: a short lease, so that it takes over what the
        // killed one held within the test.
        Location::Postgres(url) => vec![
            "--database-url".into(),
            url.clone(),
            "--lease".into(),
            "4s".into(),
            "--timeout".into(),
            "1s".into(),
        ],
    }
}

fn spawn_serve(location: &Location, logs: &Path, port: u16, log: &str) -> Serve {
    let log = std::fs::File::create(logs.join(log)).unwrap();
    common::process::hookline()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(storage(location))
        .args([
            "--allow-insecure-urls",
            "--allow-private-targets",
            // The producers here load the server on purpose; no ingest rate.
            "--plan-pro",
            "ingest=none",
            "--retry-schedule",
            "200ms,500ms,1s,1s,1s",
        ])
        .env_remove("HOOKLINE_DATABASE_URL")
        .env_remove("HOOKLINE_DATA_DIR")
        // Some tests read what it logs at `info`.
        .env("HOOKLINE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Serve)
        .unwrap()
}

async fn every_acknowledged_event_is_delivered_after_sigkill(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = Data::fresh(&engine).await;
    let location = data.location.clone();
    let account_storage: Vec<String> = storage(&location).into_iter().take(2).collect();

    // The account comes from the real CLI.
    let account_storage: Vec<&str> = account_storage.iter().map(String::as_str).collect();
    let key = cli_account(&account_storage);

    let rx = Receiver::start().await;
    rx.always("sink", Reply::SlowOk(Duration::from_millis(5)));
    let http = reqwest::Client::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_serve(&location, dir, port, "serve-1.log");
    wait_healthy(&http, &base).await;
    let (status, ep) = post_endpoint(&http, &base, &key, &rx.url("sink"), &["*"]).await;
    assert_eq!(status, 201, "{ep}");
    let secret = ep["secret"].as_str().unwrap().to_owned();

    // Eight concurrent producers, single events and batches of ten, until the kill.
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut producers = Vec::new();
    for p in 0..8 {
        let (http, base, key, acked) = (http.clone(), base.clone(), key.clone(), acked.clone());
        producers.push(tokio::spawn(async move {
            for i in 0..10_000u32 {
                let batch = p % 2 == 1;
                let req = if batch {
                    let events: Vec<_> = (0..10)
                        .map(|j| json!({"type": "click", "data": valid("click", json!({"p": p, "i": i, "j": j}))}))
                        .collect();
                    http.post(format!("{base}/v1/events/batch"))
                        .json(&json!({"events": events}))
                } else {
                    http.post(format!("{base}/v1/events"))
                        .json(&json!({"type": "open", "data": valid("open", json!({"p": p, "i": i}))}))
                };
                let Ok(resp) = req.bearer_auth(&key).send().await else {
                    return; // the server is gone
                };
                if resp.status() != 202 {
                    return;
                }
                let Ok(body) = resp.json::<Value>().await else {
                    return;
                };
                let mut a = acked.lock().unwrap();
                if batch {
                    for e in body["data"].as_array().unwrap() {
                        a.insert(e["id"].as_str().unwrap().to_owned());
                    }
                } else {
                    a.insert(body["id"].as_str().unwrap().to_owned());
                }
            }
        }));
    }
    // A load-bound wait: on a busy machine (a debug build, both cores shared) 1,500 events
    // can take longer than `PATIENCE`. Producers that all stopped (the server refused
    // something) fail at once, with what they got.
    eventually_within("1,500 acknowledged events", LOAD_PATIENCE, || async {
        let n = acked.lock().unwrap().len();
        if n < 1500 && producers.iter().all(|p| p.is_finished()) {
            panic!("every producer stopped after {n} acknowledged events");
        }
        (n >= 1500).then_some(())
    })
    .await;
    // SIGKILL, mid-ingest and mid-delivery.
    child.sigkill();
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let before_restart = rx.got("sink").len();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_serve(&location, dir, port, "serve-2.log");
    wait_healthy(&http, &base).await;

    let got = eventually_within(
        "every acknowledged event to arrive",
        LOAD_PATIENCE,
        || async {
            let (got, ids) = rx.got_ids("sink");
            acked.is_subset(&ids).then_some(got)
        },
    )
    .await;
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for r in &got {
        *per_id.entry(r.header("webhook-id").to_owned()).or_default() += 1;
        verify_with_standardwebhooks(&secret, r);
    }
    let duplicates: usize = per_id.values().map(|n| n - 1).sum();
    let unacked_delivered = per_id.keys().filter(|id| !acked.contains(*id)).count();
    println!(
        "crash test ({engine:?}): {} events acknowledged before SIGKILL; {} requests received before the \
         restart, {} in all; {} duplicate deliveries; {} events delivered that the client never \
         saw acknowledged (committed, answer lost in the kill); 0 lost",
        acked.len(),
        before_restart,
        got.len(),
        duplicates,
        unacked_delivered
    );
    // The pull API by type shows every acknowledged event as well: what lets a page of one
    // type find an event (SQLite's stretch, PostgreSQL's index entry) was committed with it.
    let mut pulled = BTreeSet::new();
    for event_type in ["open", "click"] {
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{base}/v1/events?type={event_type}&limit=1000");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let resp = http.get(url).bearer_auth(&key).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let page: Value = resp.json().await.unwrap();
            for e in page["data"].as_array().unwrap() {
                assert_eq!(e["type"], event_type);
                assert!(pulled.insert(e["id"].as_str().unwrap().to_owned()), "{e}");
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
    }
    let missing = acked.difference(&pulled).count();
    assert_eq!(
        missing, 0,
        "acknowledged events missing from the feed by type"
    );
    child.sigkill();
}

on_both_engines!(every_acknowledged_event_is_delivered_after_sigkill);

/// Sends `signal` (`TERM`, `INT`) to the process this test started.
fn signal(child: &Serve, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// A shutdown with an attempt hanging: it says what it waits for, answers a second signal,
/// says that it cut the attempt, and the next start sends that delivery again.
#[tokio::test]
async fn a_shutdown_says_what_it_waits_for_and_what_it_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let location = Location::Sqlite(dir.join("data"));
    let key = cli_account(&["--data-dir", &dir.join("data").display().to_string()]);
    let rx = Receiver::start().await;
    rx.always("stuck", Reply::Hang);
    let http = reqwest::Client::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_serve(&location, dir, port, "serve-1.log");
    wait_healthy(&http, &base).await;
    let (status, ep) = post_endpoint(&http, &base, &key, &rx.url("stuck"), &["*"]).await;
    assert_eq!(status, 201, "{ep}");
    let resp = http
        .post(format!("{base}/v1/events"))
        .bearer_auth(&key)
        .json(&json!({"type": "open", "data": valid("open", json!({}))}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let ev: Value = resp.json().await.unwrap();
    let dlv = ev["deliveries"][0]["id"].as_str().unwrap().to_owned();
    rx.wait_for("stuck", 1).await;

    signal(&child, "TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&child, "INT");
    // Bounded: the API's requests (none here), then the 5-s grace for attempts.
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < LOAD_PATIENCE, "the server did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(dir.join("serve-1.log")).unwrap();
    for said in [
        "waiting for the attempts in flight to end attempts=1",
        "already shutting down",
        "attempts still running at shutdown were cut",
    ] {
        assert!(log.contains(said), "{said:?} not in:\n{log}");
    }

    // The next start sends the cut attempt's delivery again.
    rx.always("stuck", Reply::Status(204));
    let _child = spawn_serve(&location, dir, port, "serve-2.log");
    wait_healthy(&http, &base).await;
    eventually("the cut delivery sent again", || async {
        let d = get_json(&http, format!("{base}/v1/deliveries/{dlv}"), &key).await;
        (d["status"] == "succeeded").then_some(())
    })
    .await;
    let (got, ids) = rx.got_ids("stuck");
    assert_eq!(
        got.len(),
        2,
        "the cut attempt, then the one after the start"
    );
    assert_eq!(ids.len(), 1, "the same event both times");
}
