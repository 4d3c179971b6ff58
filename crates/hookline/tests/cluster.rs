//! Three real `hookline serve` processes share one PostgreSQL database. Producers send to all
//! three at once; one node is killed with SIGKILL midway. Every event that got a 202 is
//! delivered, duplicates come only from deliveries the dead node held, and no delivery is
//! ever being answered for two senders at once.
//!
//! Runs when `HOOKLINE_TEST_DATABASE_URL` is set (`.ci/run` sets it), like the PostgreSQL
//! half of the integration suite.

mod common;

use common::process::{Serve, cli_account, free_port, post_click, post_endpoint, wait_healthy};
use common::{Data, Engine, Receiver, Reply, eventually, valid, verify_with_standardwebhooks};
use hookline::store::Location;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NODES: usize = 3;

/// The tests of this file run one at a time: each starts several servers, and together they
/// would crowd a small machine (and PostgreSQL's connection limit).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn spawn_node(url: &str, port: u16, log: &Path) -> Serve {
    // A short lease, so that the takeover happens within the test: attempts of at most 2 s,
    // heartbeats every 750 ms.
    spawn_node_with(url, port, log, "2s", "6s")
}

/// A node with this attempt timeout and lease.
fn spawn_node_with(url: &str, port: u16, log: &Path, timeout: &str, lease: &str) -> Serve {
    let log = std::fs::File::create(log).unwrap();
    common::process::hookline()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--database-url", url])
        .args([
            "--allow-insecure-urls",
            "--allow-private-targets",
            // The producers here load the server on purpose; no ingest rate.
            "--plan-pro",
            "ingest=none",
            "--retry-schedule",
            "200ms,500ms,1s,1s,1s",
            "--timeout",
            timeout,
            "--lease",
            lease,
            "--endpoint-concurrency",
            "16",
        ])
        .env_remove("HOOKLINE_DATA_DIR")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Serve)
        .unwrap()
}

/// The PostgreSQL engine, or `None` after saying that `test` was skipped (straight to the
/// file descriptor: the harness captures `eprintln!` of passing tests).
fn postgres_or_skip(test: &str) -> Option<Engine> {
    let engine = Engine::postgres();
    if engine.is_none() {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr().lock(),
            "{test}: skipped on PostgreSQL: HOOKLINE_TEST_DATABASE_URL is not set"
        );
    }
    engine
}

/// The deliveries the survivors took over from dead nodes, from their logs.
fn taken_over(logs: &[&Path]) -> usize {
    logs.iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .flat_map(|text| {
            text.lines()
                .filter(|l| l.contains("took over the deliveries of a dead node"))
                .filter_map(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("count="))
                        .and_then(|n| n.parse::<usize>().ok())
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

/// A fresh PostgreSQL database whose schema and account come from the real CLI: the data
/// (to keep), its URL, and the account's key.
async fn migrated(engine: &Engine) -> (Data, String, String) {
    let data = Data::fresh(engine).await;
    let Location::Postgres(url) = data.location.clone() else {
        unreachable!("a PostgreSQL engine gives a PostgreSQL location")
    };
    let out = common::process::hookline()
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = cli_account(&["--database-url", &url]);
    (data, url, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_the_work_and_a_killed_one_loses_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(engine) =
        postgres_or_skip("three_nodes_share_the_work_and_a_killed_one_loses_nothing")
    else {
        return;
    };
    let (_data, url, key) = migrated(&engine).await;
    let tmp = tempfile::tempdir().unwrap();

    let rx = Receiver::start().await;
    rx.always("sink", Reply::SlowOk(Duration::from_millis(5)));
    let http = reqwest::Client::new();
    let mut nodes = Vec::new();
    let mut bases = Vec::new();
    let logs: Vec<_> = (0..NODES)
        .map(|i| tmp.path().join(format!("node-{i}.log")))
        .collect();
    for log in &logs {
        let port = free_port();
        nodes.push(spawn_node(&url, port, log));
        bases.push(format!("http://127.0.0.1:{port}"));
    }
    for base in &bases {
        wait_healthy(&http, base).await;
    }
    let resp = http
        .post(format!("{}/v1/endpoints", bases[0]))
        .bearer_auth(&key)
        .json(&json!({"url": rx.url("sink"), "event_types": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let ep: Value = resp.json().await.unwrap();
    let secret = ep["secret"].as_str().unwrap().to_owned();

    // Six producers, two per node, single events and batches of ten, until told to stop (or
    // their node is gone).
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut producers = Vec::new();
    for p in 0..2 * NODES {
        let base = bases[p % NODES].clone();
        let (http, key, acked, stop) = (http.clone(), key.clone(), acked.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            for i in 0..100_000u32 {
                if stop.is_cancelled() {
                    return;
                }
                let batch = p >= NODES;
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
                    return; // its node is gone
                };
                if resp.status() != 202 {
                    // A moment's 503 (the database busy): try the next one a little later.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
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
    eventually("1,500 acknowledged events", || async {
        (acked.lock().unwrap().len() >= 1500).then_some(())
    })
    .await;
    // SIGKILL the second node, mid-ingest and mid-delivery; the others go on.
    nodes[1].sigkill();
    let at_kill = acked.lock().unwrap().len();
    eventually("500 more acknowledged events after the kill", || async {
        (acked.lock().unwrap().len() >= at_kill + 500).then_some(())
    })
    .await;
    stop.cancel();
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    // The survivors declare the dead node dead once its lease (4 s) runs out, and take over
    // what it held; then every delivery in the database ends `succeeded` — acknowledged
    // events, and those committed whose 202 the kill swallowed.
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    eventually("the survivors to declare the killed node dead", || async {
        let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM nodes WHERE dead")
            .fetch_one(&db)
            .await
            .ok()?;
        (dead >= 1).then_some(())
    })
    .await;
    eventually("every delivery to succeed", || async {
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE status <> 'succeeded'")
                .fetch_one(&db)
                .await
                .ok()?;
        (open == 0).then_some(())
    })
    .await;
    let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db)
        .await
        .unwrap();
    let got = eventually("every acknowledged event to arrive", || async {
        let (got, ids) = rx.got_ids("sink");
        (acked.is_subset(&ids) && ids.len() as i64 == committed).then_some(got)
    })
    .await;
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for r in &got {
        *per_id.entry(r.header("webhook-id").to_owned()).or_default() += 1;
        verify_with_standardwebhooks(&secret, r);
    }
    let duplicates: usize = per_id.values().map(|n| n - 1).sum();
    let survivors = [logs[0].as_path(), logs[2].as_path()];
    let taken = taken_over(&survivors);
    println!(
        "cluster test: {} events acknowledged ({} before the kill of node 2 of {NODES}), {} \
         committed; {} requests received; {} duplicate deliveries; {} deliveries taken over \
         from the dead node; 0 lost",
        acked.len(),
        at_kill,
        committed,
        got.len(),
        duplicates,
        taken
    );
    assert!(
        rx.overlaps().is_empty(),
        "deliveries attempted by two senders at once: {:?}",
        rx.overlaps()
    );
    assert!(
        duplicates <= taken,
        "{duplicates} duplicates, more than the {taken} deliveries the dead node held"
    );
    for mut node in nodes {
        node.sigkill();
    }
}

/// A server restarted after a crash is a new node: what its previous life held waits for
/// that life's lease to run out. The new node says so at start: which node, how many
/// deliveries, and the most it will take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_says_what_waits_for_its_previous_life_and_how_long() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(engine) =
        postgres_or_skip("a_restarted_node_says_what_waits_for_its_previous_life_and_how_long")
    else {
        return;
    };
    let (_data, url, key) = migrated(&engine).await;
    let tmp = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    rx.always("stuck", Reply::Hang);
    let http = reqwest::Client::new();

    // Attempts that hang for their whole 10 s: the deliveries stay held meanwhile.
    let (first_log, second_log) = (tmp.path().join("first.log"), tmp.path().join("second.log"));
    let port = free_port();
    let mut first = spawn_node_with(&url, port, &first_log, "10s", "30s");
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&http, &base).await;
    let (status, ep) = post_endpoint(&http, &base, &key, &rx.url("stuck"), &["*"]).await;
    assert_eq!(status, 201, "{ep}");
    for _ in 0..5 {
        assert_eq!(post_click(&http, &base, &key).await, 202);
    }
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let held = "SELECT count(*) FROM deliveries WHERE status = 'delivering' AND node IS NOT NULL";
    eventually("the first node to hold all five deliveries", || async {
        let n: i64 = sqlx::query_scalar(held).fetch_one(&db).await.ok()?;
        (n == 5).then_some(())
    })
    .await;
    first.sigkill();
    let node: String =
        sqlx::query_scalar("SELECT node FROM deliveries WHERE status = 'delivering' LIMIT 1")
            .fetch_one(&db)
            .await
            .unwrap();

    let port = free_port();
    let mut second = spawn_node_with(&url, port, &second_log, "10s", "30s");
    wait_healthy(&http, &format!("http://127.0.0.1:{port}")).await;
    let said = eventually("the new node to say what waits", || async {
        std::fs::read_to_string(&second_log)
            .ok()?
            .lines()
            .find(|l| l.contains("a silent node holds deliveries"))
            .map(str::to_owned)
    })
    .await;
    assert!(said.contains(&format!("node={node}")), "{said}");
    assert!(said.contains("deliveries=5"), "{said}");
    assert!(
        said.contains("silent for the whole lease (30 s), in at most "),
        "{said}"
    );
    // Not taken over yet: the lease has not run out.
    let n: i64 = sqlx::query_scalar(held).fetch_one(&db).await.unwrap();
    assert_eq!(n, 5);
    second.sigkill();
}

/// A TCP forwarder to PostgreSQL that can cut a node off from the database: `cut` drops every
/// connection through it and refuses new ones until `mend`.
struct Proxy {
    port: u16,
    /// Whether it is cut, and the connections through it: one lock, so that no connection
    /// accepted while cutting survives the cut.
    state: Arc<Mutex<(bool, Vec<tokio::task::JoinHandle<()>>)>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state: Arc<Mutex<(bool, Vec<tokio::task::JoinHandle<()>>)>> = Arc::default();
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut guard = st.lock().unwrap();
                if guard.0 {
                    continue; // dropped: refused
                }
                guard.1.push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Proxy { port, state }
    }

    fn cut(&self) {
        let mut guard = self.state.lock().unwrap();
        guard.0 = true;
        for c in guard.1.drain(..) {
            c.abort();
        }
    }

    fn mend(&self) {
        self.state.lock().unwrap().0 = false;
    }
}

/// A node cut off from the database is alive but cannot renew its lease. The other node takes
/// its deliveries over once the lease runs out; the cut-off node must have stopped sending by
/// then (its lease gate), so nothing is sent by both at once and every duplicate is a delivery
/// it sent before the takeover. When the database is back, it finds itself declared dead and
/// stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_database_stops_sending_before_its_work_is_taken_over() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(engine) = postgres_or_skip(
        "a_node_cut_off_from_the_database_stops_sending_before_its_work_is_taken_over",
    ) else {
        return;
    };
    let data = Data::fresh(&engine).await;
    let Location::Postgres(url) = data.location.clone() else {
        unreachable!("a PostgreSQL engine gives a PostgreSQL location")
    };
    let parsed = url::Url::parse(&url).unwrap();
    let upstream = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(upstream).await;
    let mut via_proxy = parsed.clone();
    via_proxy.set_host(Some("127.0.0.1")).unwrap();
    via_proxy.set_port(Some(proxy.port)).unwrap();
    let via_proxy = via_proxy.to_string();

    let tmp = tempfile::tempdir().unwrap();
    let key = cli_account(&["--database-url", &url]);

    // A slow receiver (300 ms a request, 16 at a time per node): 600 deliveries keep the
    // cut-off node busy for about 11 s, well past the 4 s lease.
    let rx = Receiver::start().await;
    rx.always("sink", Reply::SlowOk(Duration::from_millis(300)));
    let http = reqwest::Client::new();
    let logs: Vec<_> = (0..2)
        .map(|i| tmp.path().join(format!("node-{i}.log")))
        .collect();
    let (port_a, port_b) = (free_port(), free_port());
    let mut node_a = spawn_node(&url, port_a, &logs[0]);
    let mut node_b = spawn_node(&via_proxy, port_b, &logs[1]);
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    wait_healthy(&http, &base_a).await;
    wait_healthy(&http, &base_b).await;
    let (status, ep) = post_endpoint(&http, &base_a, &key, &rx.url("sink"), &["*"]).await;
    assert_eq!(status, 201, "{ep}");
    let secret = ep["secret"].as_str().unwrap().to_owned();

    // In three batches of 200 (a body stays under the 256 KiB limit).
    let mut acked: BTreeSet<String> = BTreeSet::new();
    for part in 0..3 {
        let events: Vec<_> = (part * 200..(part + 1) * 200)
            .map(|i| json!({"type": "click", "data": valid("click", json!({"i": i}))}))
            .collect();
        let resp = http
            .post(format!("{base_b}/v1/events/batch"))
            .bearer_auth(&key)
            .json(&json!({"events": events}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        acked.extend(
            resp.json::<Value>().await.unwrap()["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned()),
        );
    }
    rx.wait_for("sink", 1).await;
    proxy.cut();

    // Node A declares B dead once B's lease runs out, and takes its deliveries over.
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    eventually("node A to declare node B dead", || async {
        let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM nodes WHERE dead")
            .fetch_one(&db)
            .await
            .ok()?;
        (dead >= 1).then_some(())
    })
    .await;
    let before_takeover = rx.got("sink").len();

    // Everything arrives (node A sends what B held).
    let got = eventually("every acknowledged event to arrive", || async {
        let (got, ids) = rx.got_ids("sink");
        acked.is_subset(&ids).then_some(got)
    })
    .await;

    // The database is back: B finds itself declared dead and stops, with an error.
    proxy.mend();
    let exited = {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = node_b.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < common::PATIENCE,
                "the cut-off node did not stop once the database was back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert!(
        !exited.success(),
        "a node that lost its lease exits with an error"
    );
    let log = std::fs::read_to_string(&logs[1]).unwrap();
    assert!(log.contains("declared dead"), "{log}");

    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for r in &got {
        *per_id.entry(r.header("webhook-id").to_owned()).or_default() += 1;
        verify_with_standardwebhooks(&secret, r);
    }
    let duplicates: usize = per_id.values().map(|n| n - 1).sum();
    let taken = taken_over(&[logs[0].as_path()]);
    println!(
        "cut-off test: 600 events through node B, cut off from the database after its first \
         delivery; {before_takeover} requests before node A took over {taken} deliveries; {} in \
         all; {duplicates} duplicates; 0 lost",
        got.len()
    );
    assert!(
        rx.overlaps().is_empty(),
        "deliveries attempted by two senders at once: {:?}",
        rx.overlaps()
    );
    assert!(taken > 0, "node A took nothing over from node B");
    // After the takeover only node A sends, each delivery once: every duplicate is one that
    // node B sent before.
    assert!(
        duplicates <= before_takeover,
        "{duplicates} duplicates, more than the {before_takeover} requests sent before the \
         takeover: the cut-off node went on sending deliveries it no longer held"
    );
    node_a.sigkill();
}

/// `secrets reencrypt` on PostgreSQL refuses while a server runs on the database (its
/// heartbeat is fresh) and changes nothing: a server running with the old key would fail
/// on every secret sealed under the new one. Once the server has left, it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_waits_for_no_server_on_postgres() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(engine) = postgres_or_skip("reencrypt_waits_for_no_server_on_postgres") else {
        return;
    };
    let data = Data::fresh(&engine).await;
    let Location::Postgres(url) = data.location.clone() else {
        unreachable!("a PostgreSQL engine gives a PostgreSQL location")
    };
    let tmp = tempfile::tempdir().unwrap();
    let key = cli_account(&["--database-url", &url]);
    let rx = Receiver::start().await;
    rx.always("sink", Reply::Status(200));
    let http = reqwest::Client::new();
    let port = free_port();
    let mut node = spawn_node(&url, port, &tmp.path().join("node.log"));
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&http, &base).await;
    let (status, ep) = post_endpoint(&http, &base, &key, &rx.url("sink"), &["*"]).await;
    assert_eq!(status, 201, "{ep}");
    let secret = ep["secret"].as_str().unwrap().to_owned();

    let new_key = {
        let out = common::process::hookline().arg("keygen").output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let reencrypt = || {
        common::process::hookline()
            .args(["secrets", "reencrypt", "--database-url", &url])
            .args(["--new-key", &new_key])
            .env_remove("HOOKLINE_ENCRYPTION_KEY")
            .output()
            .unwrap()
    };
    let out = reencrypt();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("1 hookline server(s) on this database sent a heartbeat")
            && err.contains("nothing was changed"),
        "{err}"
    );
    // Nothing changed: the running server still reads the secret and takes events.
    let got: Value = http
        .get(format!(
            "{base}/v1/endpoints/{}/secret",
            ep["id"].as_str().unwrap()
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["secret"], secret.as_str());
    assert_eq!(post_click(&http, &base, &key).await, 202);

    // The server leaves (SIGTERM, to the PID this test started): now it runs.
    let pid = node.0.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    node.0.wait().unwrap();
    let out = reencrypt();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 endpoints re-encrypted under key"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
