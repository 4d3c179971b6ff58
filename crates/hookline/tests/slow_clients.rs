//! Clients of the API that are slow on purpose or by accident: a connection that sends its
//! headers a piece at a time, or nothing after its last request, is closed once the header
//! time is up; a body that stops arriving gets `408` and changes nothing; a request whose
//! body takes longer than the header time is not cut off. Meanwhile the server answers
//! everyone else.

mod common;

use common::{Engine, TestServer, valid};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far more than the limits below: the server must have closed by then.
const PATIENCE: Duration = Duration::from_secs(20);

async fn server(header: Duration, body: Duration) -> TestServer {
    TestServer::start_with(&Engine::Sqlite, |c| {
        c.header_read_timeout = header;
        c.body_read_timeout = body;
    })
    .await
}

/// The head of a single-event request with `key`, for a body of `len` bytes.
fn ingest_head(key: &str, len: usize) -> String {
    format!(
        "POST /v1/events HTTP/1.1\r\nHost: hookline\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
}

fn click_body() -> Vec<u8> {
    serde_json::to_vec(&json!({"type": "click", "data": valid("click", json!({}))})).unwrap()
}

/// Reads until the server closes the connection; what it sent meanwhile.
async fn until_closed(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "the server kept the connection open for {PATIENCE:?}; it sent {:?}",
        String::from_utf8_lossy(&got)
    );
    String::from_utf8_lossy(&got).into_owned()
}

/// The answer on `conn` is `202`, and the event it took is the only one `s` holds.
async fn accepted_alone(conn: &mut TcpStream, s: &TestServer) {
    let mut first = [0u8; 12];
    conn.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 202");
    let (_, list) = s.get("/v1/events").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
}

/// Whether the server leaves `conn` open (sends nothing, closes nothing) for `d`.
async fn still_open_after(conn: &mut TcpStream, d: Duration) -> bool {
    let mut byte = [0u8; 1];
    tokio::time::timeout(d, conn.read(&mut byte)).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_no_headers_in_time_are_closed() {
    let s = server(Duration::from_secs(2), Duration::from_secs(2)).await;

    // Half a request's headers, then nothing.
    let mut partial = TcpStream::connect(s.addr).await.unwrap();
    partial
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: hookline\r\nContent-Type: app")
        .await
        .unwrap();
    // Not at once: the limit is a time, not zero.
    assert!(still_open_after(&mut partial, Duration::from_millis(200)).await);
    // Connected and silent: no request at all.
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    // One request, answered, then idle.
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: hookline\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    // Everyone else is served meanwhile.
    let (status, _) = s.get("/v1/events").await;
    assert_eq!(status, 200);

    // Each is closed: nothing the server answers keeps them.
    until_closed(&mut partial).await;
    until_closed(&mut silent).await;
    let rest = until_closed(&mut idle).await;
    assert!(!rest.contains("HTTP/1.1"), "no second answer: {rest}");
    // And the server still takes new connections and requests.
    let (status, _) = s
        .post(
            "/v1/events",
            json!({"type": "click", "data": valid("click", json!({}))}),
        )
        .await;
    assert_eq!(status, 202);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_408_and_changes_nothing() {
    let s = server(Duration::from_secs(1), Duration::from_secs(1)).await;
    let body = click_body();
    let head = ingest_head(&s.key, body.len());
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    // All of the body but its last byte.
    conn.write_all(&body[..body.len() - 1]).await.unwrap();
    let answer = until_closed(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // It says the connection ends, before the client finds it closed.
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
    let json_at = answer.find("\r\n\r\n").map(|i| i + 4).unwrap_or(0);
    let error: Value = serde_json::from_str(&answer[json_at..]).unwrap_or_else(|e| {
        panic!("the answer's body is JSON ({e}): {answer}");
    });
    assert_eq!(error["error"]["code"], "request_timeout", "{error}");

    // Nothing was stored.
    let (status, list) = s.get("/v1/events").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");

    // The same request, whole, is taken.
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body).await.unwrap();
    accepted_alone(&mut conn, &s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slower_than_the_header_time_is_not_cut_off() {
    // Headers must come within 1 s, the body within 20.
    let s = server(Duration::from_secs(1), PATIENCE).await;
    let body = click_body();
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(ingest_head(&s.key, body.len()).as_bytes())
        .await
        .unwrap();
    // The body in five pieces over about 2.5 s: past the header time, which no longer runs.
    let started = Instant::now();
    for piece in body.chunks(body.len().div_ceil(5)) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        conn.write_all(piece).await.unwrap();
    }
    assert!(started.elapsed() > Duration::from_secs(1));
    accepted_alone(&mut conn, &s).await;
    s.stop().await;
}
