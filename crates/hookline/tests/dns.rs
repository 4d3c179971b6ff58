//! Endpoint names are resolved by real DNS queries, over UDP on loopback, to a name server
//! each test runs: answers are kept for their TTL and shared by lookups in flight, a name
//! server that never answers costs the attempts that need it a bounded wait and holds no
//! thread meanwhile, and what a name resolves to reaches the receiver signed as ever.

mod common;

use common::{Engine, Receiver, Reply, TestServer, eventually, verify_with_standardwebhooks};
use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hookline::dispatch::targets::{Lookup, Resolve, SystemResolver};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// A name server on 127.0.0.1 that knows a few names (IPv4 only; other names do not exist)
/// and counts the questions it gets, or never answers at all.
struct NameServer {
    addr: SocketAddr,
    /// The distinct questions asked (by message id: a resent query is not a new one).
    asked: Arc<Mutex<Questions>>,
}

/// By name and type, the message ids of the questions asked.
type Questions = HashMap<(String, RecordType), HashSet<u16>>;

impl NameServer {
    /// Answers `names` (each with its address and TTL in seconds).
    async fn start(names: &[(&str, Ipv4Addr, u32)]) -> Self {
        Self::run(Some(Self::table(names)), false, Duration::ZERO).await
    }

    /// Answers `names` like [`Self::start`], but only the questions that come once `deaf_for`
    /// has passed.
    async fn deaf_at_first(names: &[(&str, Ipv4Addr, u32)], deaf_for: Duration) -> Self {
        Self::run(Some(Self::table(names)), false, deaf_for).await
    }

    /// Takes every question and answers none.
    async fn silent() -> Self {
        Self::run(None, false, Duration::ZERO).await
    }

    /// Answers `names` like [`Self::start`], but never a question for IPv6 addresses, as
    /// some name servers and middleboxes do.
    async fn without_aaaa(names: &[(&str, Ipv4Addr, u32)]) -> Self {
        Self::run(Some(Self::table(names)), true, Duration::ZERO).await
    }

    fn table(names: &[(&str, Ipv4Addr, u32)]) -> HashMap<String, (Ipv4Addr, u32)> {
        names
            .iter()
            .map(|(n, ip, ttl)| (format!("{n}."), (*ip, *ttl)))
            .collect()
    }

    async fn run(
        names: Option<HashMap<String, (Ipv4Addr, u32)>>,
        drop_aaaa: bool,
        deaf_for: Duration,
    ) -> Self {
        let deaf_until = Instant::now() + deaf_for;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let asked: Arc<Mutex<Questions>> = Arc::default();
        let counts = asked.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(question) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                for q in &question.queries {
                    counts
                        .lock()
                        .unwrap()
                        .entry((q.name().to_ascii().to_lowercase(), q.query_type()))
                        .or_default()
                        .insert(question.metadata.id);
                }
                let Some(names) = &names else { continue };
                if Instant::now() < deaf_until {
                    continue;
                }
                if drop_aaaa
                    && question
                        .queries
                        .iter()
                        .any(|q| q.query_type() == RecordType::AAAA)
                {
                    continue;
                }
                let mut answer = Message::response(question.metadata.id, question.metadata.op_code);
                answer.metadata.recursion_desired = question.metadata.recursion_desired;
                answer.metadata.recursion_available = true;
                answer.add_queries(question.queries.clone());
                for q in &question.queries {
                    match names.get(&q.name().to_ascii().to_lowercase()) {
                        Some((ip, ttl)) if q.query_type() == RecordType::A => {
                            answer.add_answer(Record::from_rdata(
                                q.name().clone(),
                                *ttl,
                                RData::A(A(*ip)),
                            ));
                        }
                        Some(_) => {} // the name exists, without records of this type
                        None => answer.metadata.response_code = ResponseCode::NXDomain,
                    }
                }
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        NameServer { addr, asked }
    }

    /// How many times `name` was asked for its IPv4 addresses.
    fn asked_a(&self, name: &str) -> usize {
        self.asked
            .lock()
            .unwrap()
            .get(&(format!("{name}."), RecordType::A))
            .map_or(0, HashSet::len)
    }

    fn asked_in_all(&self) -> usize {
        self.asked.lock().unwrap().values().map(HashSet::len).sum()
    }
}

/// The lookup budget of the tests that count questions: each query gets a third of it
/// before it is asked again, far more than this machine's name server ever takes.
const PATIENT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn answers_are_kept_for_their_ttl_and_shared_in_flight() {
    let ns = NameServer::start(&[
        ("hooks.example.test", Ipv4Addr::new(192, 0, 2, 10), 300),
        ("brief.example.test", Ipv4Addr::new(192, 0, 2, 11), 2),
    ])
    .await;
    // A budget far over any wait of this name server's: a query that a busy test machine
    // answered late would be asked again (a second question), and this test counts them.
    let resolver = SystemResolver::with_servers(vec![ns.addr], PATIENT);

    // Sixteen lookups at once, as the lanes of an endpoint opening connections together.
    let together: Vec<_> = (0..16)
        .map(|_| resolver.resolve("hooks.example.test"))
        .collect();
    for found in futures_util::future::join_all(together).await {
        assert_eq!(found.unwrap(), vec![IpAddr::from([192, 0, 2, 10])]);
    }
    for _ in 0..16 {
        let found = resolver.resolve("hooks.example.test").await.unwrap();
        assert_eq!(found, vec![IpAddr::from([192, 0, 2, 10])]);
    }
    assert_eq!(
        ns.asked_a("hooks.example.test"),
        1,
        "32 lookups, one question"
    );

    // A record of two seconds is asked for again once it has run out.
    resolver.resolve("brief.example.test").await.unwrap();
    resolver.resolve("brief.example.test").await.unwrap();
    assert_eq!(ns.asked_a("brief.example.test"), 1);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        resolver.resolve("brief.example.test").await.unwrap(),
        vec![IpAddr::from([192, 0, 2, 11])]
    );
    assert_eq!(ns.asked_a("brief.example.test"), 2);

    // A name that does not exist is an error that names it.
    let e = resolver.resolve("nowhere.example.test").await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    assert_eq!(
        e.to_string(),
        "resolving \"nowhere.example.test\": no such name"
    );
}

/// Lookups from tasks on both worker threads, arriving while an answer comes back, ask
/// once: the moment between a query leaving the resolver's pool and its answer reaching
/// the cache is covered. Many names, so that the moment comes many times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_arriving_as_an_answer_lands_ask_no_second_time() {
    const NAMES: usize = 500;
    let names: Vec<String> = (0..NAMES).map(|i| format!("n{i}.example.test")).collect();
    let table: Vec<(&str, Ipv4Addr, u32)> = names
        .iter()
        .map(|n| (n.as_str(), Ipv4Addr::new(192, 0, 2, 30), 300))
        .collect();
    let ns = NameServer::start(&table).await;
    let resolver = SystemResolver::with_servers(vec![ns.addr], PATIENT);
    for name in &names {
        // Lookups begin one after another, on either thread, before and after the answer.
        let mut lookups = Vec::new();
        for _ in 0..48 {
            let resolver = resolver.clone();
            let name = name.clone();
            lookups.push(tokio::spawn(async move { resolver.resolve(&name).await }));
            tokio::task::yield_now().await;
        }
        for l in lookups {
            assert_eq!(
                l.await.unwrap().unwrap(),
                vec![IpAddr::from([192, 0, 2, 30])]
            );
        }
    }
    let asked_again: Vec<_> = names.iter().filter(|n| ns.asked_a(n) != 1).collect();
    assert!(
        asked_again.is_empty(),
        "asked more than once (or never): {asked_again:?}"
    );
}

/// A lookup given up on (the attempt that needed it ended first) still ends within the
/// resolver's timeout, so a later lookup of the name asks afresh and is not handed what is
/// left of it.
#[tokio::test]
async fn a_lookup_given_up_on_leaves_nothing_stale() {
    let ns = NameServer::deaf_at_first(
        &[("late.example.test", Ipv4Addr::new(192, 0, 2, 40), 300)],
        Duration::from_millis(1_500),
    )
    .await;
    let resolver = SystemResolver::with_servers(vec![ns.addr], Duration::from_millis(1_000));
    let given_up = tokio::time::timeout(
        Duration::from_millis(100),
        resolver.resolve("late.example.test"),
    )
    .await;
    assert!(
        given_up.is_err(),
        "the name server was to be deaf: {given_up:?}"
    );
    // Well past the first lookup's timeout, and the name server answers now.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert_eq!(
        resolver.resolve("late.example.test").await.unwrap(),
        vec![IpAddr::from([192, 0, 2, 40])]
    );
}

#[tokio::test]
async fn an_answer_for_one_family_is_not_lost_to_the_other() {
    let ns =
        NameServer::without_aaaa(&[("v4.example.test", Ipv4Addr::new(192, 0, 2, 20), 300)]).await;
    let resolver = SystemResolver::with_servers(vec![ns.addr], Duration::from_secs(3));
    assert_eq!(
        resolver.resolve("v4.example.test").await.unwrap(),
        vec![IpAddr::from([192, 0, 2, 20])]
    );
}

#[test]
fn a_name_server_that_never_answers_holds_no_thread() {
    // A runtime whose blocking pool has one thread: the store's reads run there, and so did
    // every `getaddrinfo`.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ns = NameServer::silent().await;
        let resolver = SystemResolver::with_servers(vec![ns.addr], Duration::from_secs(3));
        let lookups: Vec<_> = (0..64)
            .map(|i| tokio::spawn(resolver.resolve(&format!("host-{i}.example.test"))))
            .collect();
        eventually("the name server to be asked for every name", || async {
            (ns.asked_in_all() >= 64).then_some(())
        })
        .await;

        // Blocking work still runs at once while all 64 lookups wait.
        let ran = tokio::task::spawn_blocking(|| 42).await.unwrap();
        assert_eq!(ran, 42);
        assert!(
            lookups.iter().all(|l| !l.is_finished()),
            "a lookup came back before the timeout"
        );

        for (i, lookup) in lookups.into_iter().enumerate() {
            let e = lookup.await.unwrap().unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
            assert!(
                e.to_string().contains(&format!(
                    "resolving \"host-{i}.example.test\": no answer within "
                )),
                "{e}"
            );
        }
    });
}

/// The server's resolver, counting the lookups it is asked for (one per new connection).
#[derive(Debug)]
struct Counted {
    inner: SystemResolver,
    lookups: AtomicUsize,
}

impl Resolve for Counted {
    fn resolve(&self, host: &str) -> Lookup {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.resolve(host)
    }
}

async fn an_endpoint_by_name_is_resolved_once_for_its_connections(engine: Engine) {
    let rx = Receiver::start().await;
    // Slow answers, so that the endpoint's lanes each open a connection of their own.
    rx.always("named", Reply::SlowOk(Duration::from_millis(300)));
    let ns = NameServer::start(&[("hooks.example.test", Ipv4Addr::LOCALHOST, 300)]).await;
    let resolver = Arc::new(Counted {
        inner: SystemResolver::with_servers(vec![ns.addr], PATIENT),
        lookups: AtomicUsize::new(0),
    });
    let server_resolver: Arc<dyn Resolve> = resolver.clone();
    let s = TestServer::start_with(&engine, move |c| c.resolver = server_resolver).await;
    let url = format!("http://hooks.example.test:{}/r/named", rx.addr.port());
    let ep = s.endpoint(&url, &["open"]).await;
    let secret = ep["secret"].as_str().unwrap().to_owned();

    let events: Vec<_> = (0..8)
        .map(|i| json!({"type": "open", "data": common::valid("open", json!({"n": i}))}))
        .collect();
    let (status, body) = s.post("/v1/events/batch", json!({"events": events})).await;
    assert_eq!(status, 202, "{body}");
    let got = rx.wait_for("named", 8).await;
    for r in &got {
        verify_with_standardwebhooks(&secret, r);
        assert_eq!(
            r.header("host"),
            format!("hooks.example.test:{}", rx.addr.port())
        );
    }
    let lookups = resolver.lookups.load(Ordering::SeqCst);
    assert!(
        lookups >= 2,
        "{lookups} connections: the test wants several"
    );
    assert_eq!(
        ns.asked_a("hooks.example.test"),
        1,
        "{lookups} connections, one question to the name server"
    );
    s.stop().await;
}

async fn a_silent_name_server_fails_attempts_and_nothing_else(engine: Engine) {
    let ns = NameServer::silent().await;
    let resolver: Arc<dyn Resolve> = Arc::new(SystemResolver::with_servers(
        vec![ns.addr],
        Duration::from_millis(500),
    ));
    let s = TestServer::start_with(&engine, move |c| c.resolver = resolver).await;
    let ep = s
        .endpoint("http://quiet.example.test/hook", &["open"])
        .await;
    let ev = s.event("open", json!({})).await;
    let id = ev["deliveries"][0]["id"].as_str().unwrap().to_owned();
    let d = eventually("the first attempt to fail", || async {
        let (_, d) = s.get(&format!("/v1/deliveries/{id}")).await;
        d["attempts"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            .then_some(d)
    })
    .await;
    let error = d["attempts"][0]["error"].as_str().unwrap_or("");
    assert!(
        error.contains("resolving \"quiet.example.test\": no answer within "),
        "{d}"
    );
    assert!(d["attempts"][0]["status_code"].is_null(), "{d}");
    // The API reads and ingest go on meanwhile.
    let (status, list) = s
        .get(&format!(
            "/v1/endpoints/{}/deliveries",
            ep["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"][0]["id"], id, "{list}");
    s.event("open", json!({})).await;
    s.stop().await;
}

on_both_engines!(
    an_endpoint_by_name_is_resolved_once_for_its_connections,
    a_silent_name_server_fails_attempts_and_nothing_else,
);
