//! The delivery client's connections, as a receiver sees them: one keep-alive connection
//! carries a run of deliveries; a connection the receiver closed, said so or not, or dropped
//! with a request unanswered, never costs a failed attempt; the request line and `Host` are
//! what an origin server expects.
//!
//! The receiver here is a plain TCP server speaking just enough HTTP/1.1, so that it can
//! count connections and close them behind the sender's back.

mod common;

use common::{Engine, TestServer, eventually};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the receiver ends each exchange.
#[derive(Clone, Copy)]
enum Close {
    /// Keeps the connection for the next request.
    Never,
    /// Answers with `Connection: close` and closes.
    Announced,
    /// Answers as if it kept the connection, then closes it a moment later.
    Silently,
    /// Sends `200` and the start of a longer body, then holds the connection, silent.
    StallsMidBody,
    /// Sends `200` and the start of a longer body, then closes the connection.
    CutsMidBody,
    /// Keeps the connection after its first answer, then reads the next request on it and
    /// closes with no answer (its idle time ran out as the request came).
    DropsTheNext,
}

/// One request as the receiver read it.
#[derive(Clone, Debug)]
struct Seen {
    connection: usize,
    request_line: String,
    host: String,
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

#[derive(Clone)]
struct RawReceiver {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<Mutex<usize>>,
    /// Answers written (whole, or as far as the behaviour goes).
    answered: Arc<Mutex<usize>>,
}

impl RawReceiver {
    async fn start(bind: &str, close: Close) -> Self {
        let listener = TcpListener::bind(bind).await.unwrap();
        let rx = RawReceiver {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            connections: Arc::default(),
            answered: Arc::default(),
        };
        let me = rx.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let n = {
                    let mut c = me.connections.lock().unwrap();
                    *c += 1;
                    *c
                };
                let me = me.clone();
                tokio::spawn(async move { me.serve(stream, n, close).await });
            }
        });
        rx
    }

    async fn serve(&self, mut stream: TcpStream, connection: usize, close: Close) {
        let mut buf = Vec::new();
        for exchange in 0.. {
            // The head, then a body of `content-length`.
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let mut lines = head.split("\r\n");
            let request_line = lines.next().unwrap_or_default().to_owned();
            let header = |name: &str| {
                head.split("\r\n")
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_owned())
            };
            let len: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
            buf.drain(..head_end + len);
            self.seen.lock().unwrap().push(Seen {
                connection,
                request_line,
                host: header("host").unwrap_or_default(),
                id: header("webhook-id").unwrap_or_default(),
                timestamp: header("webhook-timestamp").unwrap_or_default(),
                signature: header("webhook-signature").unwrap_or_default(),
                body,
            });
            if matches!(close, Close::DropsTheNext) && exchange > 0 {
                return;
            }
            let answer: &[u8] = match close {
                Close::Announced => {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                }
                Close::StallsMidBody | Close::CutsMidBody => {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nreceived, now"
                }
                _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            };
            if stream.write_all(answer).await.is_err() {
                return;
            }
            *self.answered.lock().unwrap() += 1;
            match close {
                Close::Never | Close::DropsTheNext => {}
                Close::Announced => return,
                Close::Silently => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return;
                }
                Close::StallsMidBody => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                Close::CutsMidBody => {
                    let _ = stream.flush().await;
                    return;
                }
            }
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }

    /// Waits until `n` requests arrived.
    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        eventually(&format!("{n} requests at the receiver"), || async {
            let seen = self.seen();
            (seen.len() >= n).then_some(seen)
        })
        .await
    }
}

/// Sends `count` events one after the other, each once the previous one arrived, pausing
/// `pause` in between; returns their deliveries as stored at the end.
async fn one_by_one(
    s: &TestServer,
    rx: &RawReceiver,
    count: usize,
    pause: Duration,
) -> Vec<serde_json::Value> {
    let mut ids = Vec::new();
    for i in 0..count {
        let ev = s.event("open", json!({})).await;
        ids.push(ev["deliveries"][0]["id"].as_str().unwrap().to_owned());
        rx.wait_for(i + 1).await;
        tokio::time::sleep(pause).await;
    }
    let mut out = Vec::new();
    for id in ids {
        out.push(s.wait_delivery(&id, "succeeded").await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keep_alive_connection_carries_a_run_of_deliveries() {
    let rx = RawReceiver::start("127.0.0.1:0", Close::Never).await;
    let s = TestServer::start(&Engine::Sqlite).await;
    let url = format!("http://{}/hooks/in?tenant=acme", rx.addr);
    s.endpoint(&url, &["*"]).await;

    let deliveries = one_by_one(&s, &rx, 5, Duration::ZERO).await;
    for d in &deliveries {
        assert_eq!(d["attempt_count"], 1, "{d}");
    }
    let seen = rx.seen();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(rx.connections(), 1, "{seen:?}");
    for r in &seen {
        // Origin form, as to a server and not a proxy, and the URL's host and port.
        assert_eq!(r.request_line, "POST /hooks/in?tenant=acme HTTP/1.1");
        assert_eq!(r.host, rx.addr.to_string());
        assert!(r.body.starts_with('{'), "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_the_receiver_is_not_a_failed_attempt() {
    for close in [Close::Announced, Close::Silently] {
        let rx = RawReceiver::start("127.0.0.1:0", close).await;
        let s = TestServer::start(&Engine::Sqlite).await;
        s.endpoint(&format!("http://{}/", rx.addr), &["*"]).await;
        // The pause lets a silent close reach the sender before its next request.
        let deliveries = one_by_one(&s, &rx, 4, Duration::from_millis(100)).await;
        for d in &deliveries {
            assert_eq!(d["attempt_count"], 1, "{d}");
            assert_eq!(d["attempts"][0]["status_code"], 200, "{d}");
        }
        let seen = rx.seen();
        assert_eq!(seen.len(), 4, "{seen:?}");
        // Every request on a connection of its own: none went on a closed one.
        assert_eq!(rx.connections(), 4, "{seen:?}");
        let conns: std::collections::BTreeSet<usize> = seen.iter().map(|r| r.connection).collect();
        assert_eq!(conns.len(), 4, "{seen:?}");
        assert!(seen.iter().all(|r| r.request_line == "POST / HTTP/1.1"));
    }
}

/// A request that went on a kept connection which the receiver then closed without an
/// answer (its idle time ran out just as the request came) goes once more on a new one,
/// within the same attempt: no failed attempt for a request the receiver never answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_a_kept_connection_dropped_unanswered_goes_again_on_a_new_one() {
    let rx = RawReceiver::start("127.0.0.1:0", Close::DropsTheNext).await;
    let s = TestServer::start(&Engine::Sqlite).await;
    let ep = s.endpoint(&format!("http://{}/", rx.addr), &["*"]).await;
    let secret = ep["secret"].as_str().unwrap();
    let mut ids = Vec::new();
    for n in 1..=3 {
        let ev = s.event("open", json!({})).await;
        let id = ev["deliveries"][0]["id"].as_str().unwrap().to_owned();
        // The first event opens a connection; each next one goes on it, is dropped, and
        // goes again on a new connection, which it is then the first on. (Its success is
        // recorded once its connection is back among the idle ones.)
        rx.wait_for(2 * n - 1).await;
        s.wait_delivery(&id, "succeeded").await;
        ids.push(id);
    }
    for id in &ids {
        let d = s.wait_delivery(id, "succeeded").await;
        assert_eq!(d["attempt_count"], 1, "{d}");
        assert_eq!(d["attempts"][0]["status_code"], 200, "{d}");
        assert!(d["attempts"][0]["error"].is_null(), "{d}");
    }
    let seen = rx.seen();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(rx.connections(), 3, "{seen:?}");
    // The one dropped and the one sent again are the same request, signed alike.
    for pair in [(1, 2), (3, 4)] {
        let (dropped, again) = (&seen[pair.0], &seen[pair.1]);
        assert_eq!(dropped.body, again.body);
        assert_ne!(dropped.connection, again.connection);
        assert_eq!(dropped.signature, again.signature);
        let wh = standardwebhooks::Webhook::new(secret).unwrap();
        let mut headers = http::HeaderMap::new();
        for (k, v) in [
            ("webhook-id", &again.id),
            ("webhook-timestamp", &again.timestamp),
            ("webhook-signature", &again.signature),
        ] {
            headers.insert(k, v.parse().unwrap());
        }
        wh.verify(again.body.as_bytes(), &headers).unwrap();
    }
}

/// A `200` whose head arrived within the timeout is a success, even when its body then
/// stalls past the timeout or breaks off: the delivery is not sent again. The connection is
/// not reused (what is left of its answer would be read as the next one's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_whose_body_stalls_or_breaks_off_is_a_success() {
    for close in [Close::StallsMidBody, Close::CutsMidBody] {
        let rx = RawReceiver::start("127.0.0.1:0", close).await;
        let s = TestServer::start_with(&Engine::Sqlite, |c| {
            c.dispatch.timeout = Duration::from_millis(700)
        })
        .await;
        s.endpoint(&format!("http://{}/", rx.addr), &["*"]).await;
        let deliveries = one_by_one(&s, &rx, 2, Duration::ZERO).await;
        for d in &deliveries {
            assert_eq!(d["attempt_count"], 1, "{d}");
            let attempt = &d["attempts"][0];
            assert_eq!(attempt["status_code"], 200, "{d}");
            assert!(attempt["error"].is_null(), "{d}");
            assert_eq!(attempt["response_body"], "received, now", "{d}");
        }
        // Well past the timeout and the test schedule's retries: nothing was sent again.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(rx.seen().len(), 2, "{:?}", rx.seen());
        assert_eq!(rx.connections(), 2, "a connection of its own each");
    }
}

/// A shutdown does not wait out the body of an answer whose `2xx` has come: the attempt is
/// a success, recorded before the server stops, and the delivery is not sent again at the
/// next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_records_a_2xx_whose_body_is_still_coming() {
    let rx = RawReceiver::start("127.0.0.1:0", Close::StallsMidBody).await;
    // Far longer than the shutdown's grace (200 ms in tests): the body would still be read.
    let s = TestServer::start_with(&Engine::Sqlite, |c| {
        c.dispatch.timeout = Duration::from_secs(30)
    })
    .await;
    s.endpoint(&format!("http://{}/", rx.addr), &["*"]).await;
    let ev = s.event("open", json!({})).await;
    let id = ev["deliveries"][0]["id"].as_str().unwrap().to_owned();
    // The head and the start of the body are on their way (the sender, once it has read the
    // head, within the grace at the latest, waits for the rest).
    eventually("the answer to be written", || async {
        (*rx.answered.lock().unwrap() == 1).then_some(())
    })
    .await;
    let key = s.key.clone();
    let data = s.stop().await.unwrap();

    let s = TestServer::launch(common::test_config(&data.location), key).await;
    let (_, d) = s.get(&format!("/v1/deliveries/{id}")).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(d["attempt_count"], 1, "{d}");
    assert_eq!(d["attempts"][0]["status_code"], 200, "{d}");
    assert_eq!(d["attempts"][0]["response_body"], "received, now", "{d}");
    // Nothing went again after the restart.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.seen().len(), 1, "{:?}", rx.seen());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_endpoint_gets_its_bracketed_host() {
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        // Straight to the file descriptor: the harness hides a passing test's output.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "no IPv6 loopback here: test skipped");
        return;
    };
    drop(probe);
    let rx = RawReceiver::start("[::1]:0", Close::Never).await;
    let s = TestServer::start(&Engine::Sqlite).await;
    s.endpoint(&format!("http://[::1]:{}/v6", rx.addr.port()), &["*"])
        .await;
    one_by_one(&s, &rx, 1, Duration::ZERO).await;
    let seen = rx.seen();
    assert_eq!(seen[0].host, format!("[::1]:{}", rx.addr.port()));
    assert_eq!(seen[0].request_line, "POST /v6 HTTP/1.1");
}
