//! Clients of the API that are slow on purpose or by accident: a connection that sends its
//! headers a piece at a time, or nothing after its last request, is closed once the header
//! time is up; a body that stops arriving gets `408` and changes nothing; a request whose
//! body takes longer than the header time is not cut off; an answer its client stops
//! reading is cut off once a write has waited the write time, and holds no shutdown.
//! Meanwhile the server answers everyone else.

mod common;

use common::{Engine, TestServer, valid};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far more than the limits below: the server must have closed by then.
const PATIENCE: Duration = Duration::from_secs(20);

async fn server(header: Duration, body: Duration) -> TestServer {
    let mut s = TestServer::start_with(&Engine::Sqlite, |c| {
        c.header_read_timeout = header;
        c.body_read_timeout = body;
    })
    .await;
    // The tests' own requests each on a new connection: with header times this short, a
    // pooled connection left idle is closed by the server while the tests wait, and a
    // request sent on it just as it closes fails (as it would for any client; the default
    // time, 75 s, outlasts common clients' idle pools).
    s.http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    s
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

/// A connection with a small receive buffer (the system makes 4 KiB twice that), so that
/// an answer it does not read fills it (and the server's send buffer) quickly.
async fn small_window(addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends `request` on `conn` and reads the answer's head: its status line, and the length
/// of its body.
async fn ask(conn: &mut TcpStream, request: &str) -> (String, usize) {
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(PATIENCE, conn.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(1))), "the answer's head: {read:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("a length: {head}"));
    (head.lines().next().unwrap().to_owned(), length)
}

/// Reads the body on `conn` until the server closes or `whole` bytes have come, `burst`
/// bytes at a time with `pause` between; how many came, and whether the connection ended
/// before all of them.
async fn read_body(
    conn: &mut TcpStream,
    whole: usize,
    burst: usize,
    pause: Duration,
) -> (usize, bool) {
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    let read = tokio::time::timeout(PATIENCE, async {
        let mut since_pause = 0;
        loop {
            if since_pause >= burst {
                tokio::time::sleep(pause).await;
                since_pause = 0;
            }
            let want = buf.len().min(whole - got);
            match conn.read(&mut buf[..want]).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => {
                    got += n;
                    since_pause += n;
                    if got == whole {
                        return false;
                    }
                }
            }
        }
    })
    .await;
    let ended = read.unwrap_or_else(|_| {
        panic!(
            "neither the whole body ({whole} bytes) nor its end within {PATIENCE:?}: {got} bytes"
        )
    });
    (got, ended)
}

/// Serves an app whose `/big` answer is `size` bytes, with a write time of `write`; the
/// address, the trigger of a graceful shutdown, and the server's task.
async fn big_answers(
    size: usize,
    write: Duration,
) -> (
    std::net::SocketAddr,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let big = axum::body::Bytes::from(vec![b'x'; size]);
    let app = axum::Router::new()
        .route(
            "/big",
            axum::routing::get(move || async move { big.clone() }),
        )
        .route("/small", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let timeouts = hookline::server::HttpTimeouts {
        header_read: PATIENCE,
        write,
    };
    let server = tokio::spawn(hookline::server::serve_http(
        listener,
        app,
        timeouts,
        async move { stopped.cancelled().await },
    ));
    (addr, stop, server)
}

/// Stops a server of [`big_answers`] and waits for it to end.
async fn shut_down(stop: tokio_util::sync::CancellationToken, server: tokio::task::JoinHandle<()>) {
    stop.cancel();
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("the server ended")
        .unwrap();
}

/// Far more than the socket buffers on both sides hold (some MiB on loopback).
const BIG: usize = 32 << 20;
const GET_BIG: &str = "GET /big HTTP/1.1\r\nHost: h\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_its_client_stops_reading_is_cut_off_after_the_write_time() {
    let write = Duration::from_millis(500);
    let (addr, stop, server) = big_answers(BIG, write).await;

    let mut stalled = small_window(addr).await;
    let (status, length) = ask(&mut stalled, GET_BIG).await;
    assert_eq!((status.as_str(), length), ("HTTP/1.1 200 OK", BIG));
    // Everyone else is answered meanwhile.
    let answer = reqwest::get(format!("http://{addr}/small")).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "ok");

    // Long past the write time, the client reads again: the server gave up on it, so the
    // connection ends with what the buffers held, far from the whole answer.
    tokio::time::sleep(write * 6).await;
    let (got, ended) = read_body(&mut stalled, BIG, usize::MAX, Duration::ZERO).await;
    assert!(ended, "the whole answer came: {got} bytes");
    assert!(got < BIG / 2, "{got} of {BIG} bytes came");
    shut_down(stop, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_with_pauses_gets_its_answer_whole_past_the_write_time() {
    // Each pause is an eighth of the write time; all of them together, longer than it.
    let write = Duration::from_secs(2);
    let (addr, stop, server) = big_answers(BIG, write).await;
    let mut reader = small_window(addr).await;
    let started = Instant::now();
    let (_, length) = ask(&mut reader, GET_BIG).await;
    // 3 MiB at a time: more than the third of the server's send buffer that lets its next
    // write through.
    let (got, ended) = read_body(&mut reader, length, 3 << 20, write / 8).await;
    assert!(!ended && got == BIG, "{got} of {BIG} bytes, then the end");
    assert!(
        started.elapsed() > write,
        "the answer took {:?}: not past the write time",
        started.elapsed()
    );
    // The connection is still open, and answers its next request.
    let (status, _) = ask(&mut reader, "GET /small HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    shut_down(stop, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_no_shutdown() {
    let (addr, stop, server) = big_answers(BIG, Duration::from_secs(1)).await;
    let mut stalled = small_window(addr).await;
    let (status, _) = ask(&mut stalled, GET_BIG).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    // A graceful shutdown waits for answers in progress, but not past the write time.
    stop.cancel();
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("the shutdown ended, the client never reading")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_waits_for_an_answer_in_progress_as_long_as_the_write_time() {
    let write = Duration::from_secs(2);
    let (addr, stop, server) = big_answers(BIG, write).await;
    // A client that keeps up with the write time, but whose answer takes some 5 s (ten
    // pauses of a quarter of it).
    let (begun, answering) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut conn = small_window(addr).await;
        let (_, length) = ask(&mut conn, GET_BIG).await;
        begun.send(()).unwrap();
        read_body(&mut conn, length, 3 << 20, write / 4).await
    });
    answering.await.unwrap();
    stop.cancel();
    let cancelled = Instant::now();
    tokio::time::timeout(PATIENCE, server)
        .await
        .unwrap()
        .unwrap();
    // It waited for the answer, for the write time, then closed the connection.
    let waited = cancelled.elapsed();
    assert!(waited >= write, "the shutdown waited {waited:?}");
    let (got, ended) = reader.await.unwrap();
    assert!(
        ended && got < BIG,
        "{got} of {BIG} bytes came, the end: {ended}"
    );
    assert!(
        got > 3 << 20,
        "only {got} bytes came: the answer went on during the wait"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_its_client_stops_reading_is_cut_off_and_the_server_goes_on() {
    let write = Duration::from_millis(500);
    let s = TestServer::start_with(&Engine::Sqlite, |c| {
        c.write_timeout = write;
        c.max_body_bytes = 32 << 20;
    })
    .await;
    // 100 events of some 100 KB each: a page of them is about 10 MB.
    let filler = "x".repeat(100_000);
    let events: Vec<Value> = (0..100)
        .map(|_| json!({"type": "click", "data": valid("click", json!({"user_agent": filler}))}))
        .collect();
    let (status, body) = s.post("/v1/events/batch", json!({"events": events})).await;
    assert_eq!(status, 202, "{body}");

    let mut stalled = small_window(s.addr).await;
    let request = format!(
        "GET /v1/events?limit=100 HTTP/1.1\r\nHost: hookline\r\nAuthorization: Bearer {}\r\n\r\n",
        s.key
    );
    let (status, length) = ask(&mut stalled, &request).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(length > 100 * 100_000, "{length}");
    tokio::time::sleep(write * 6).await;
    let (got, ended) = read_body(&mut stalled, length, usize::MAX, Duration::ZERO).await;
    assert!(ended, "the whole page came: {got} bytes");
    assert!(got < length / 2, "{got} of {length} bytes came");

    // The server goes on, and counted the connection it cut off (at least this one: the
    // metrics are the process's).
    let (status, page) = s.get("/v1/events?limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    let base = s.url("");
    let cut = common::metric(&s.http, &base, "hookline_http_write_timeouts_total").await;
    assert!(cut.is_some_and(|n| n >= 1.0), "{cut:?}");
    s.stop().await;
}
