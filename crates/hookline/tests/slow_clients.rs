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

/// A connection whose receive buffer is as small as the system allows, so that an answer
/// it does not read fills it (and the server's send buffer) quickly.
async fn small_window(addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads what the server sends on `conn` until it closes or `whole` bytes have come;
/// how many came, and whether the connection ended before all of them.
async fn read_up_to(conn: &mut TcpStream, whole: usize) -> (usize, bool) {
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    let read = tokio::time::timeout(PATIENCE, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => {
                    got += n;
                    if got >= whole {
                        return false;
                    }
                }
            }
        }
    })
    .await;
    let ended = read.unwrap_or_else(|_| {
        panic!(
            "neither the whole answer ({whole} bytes) nor its end within {PATIENCE:?}: {got} bytes"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_its_client_stops_reading_is_cut_off_at_the_write_time() {
    // Far more than the socket buffers on both sides hold.
    const SIZE: usize = 32 << 20;
    let (addr, stop, server) = big_answers(SIZE, Duration::from_secs(1)).await;

    let mut stalled = small_window(addr).await;
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    // Everyone else is answered meanwhile.
    let answer = reqwest::get(format!("http://{addr}/small")).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "ok");

    // Past the write time, the client starts reading again: the server gave up on it, so
    // the connection ends before the whole answer, with what the buffers held.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (got, ended) = read_up_to(&mut stalled, SIZE).await;
    assert!(ended, "the whole answer came: {got} bytes");
    assert!(got < SIZE / 2, "{got} of {SIZE} bytes came");

    // A client that reads gets the whole answer, however long it takes over the write time.
    let mut reader = TcpStream::connect(addr).await.unwrap();
    reader
        .write_all(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let (got, ended) = read_up_to(&mut reader, SIZE).await;
    assert!(!ended && got >= SIZE, "{got} of {SIZE} bytes, then the end");
    stop.cancel();
    tokio::time::timeout(PATIENCE, server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_no_shutdown() {
    const SIZE: usize = 32 << 20;
    let (addr, stop, server) = big_answers(SIZE, Duration::from_secs(1)).await;
    let mut stalled = small_window(addr).await;
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    // The answer has begun: its head has come.
    let mut head = [0u8; 12];
    stalled.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // A graceful shutdown waits for answers in progress, but not past the write time.
    stop.cancel();
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("the shutdown ended, the client never reading")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_its_client_stops_reading_is_cut_off_and_the_server_goes_on() {
    let s = TestServer::start_with(&Engine::Sqlite, |c| {
        c.write_timeout = Duration::from_secs(1);
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
    let head = format!(
        "GET /v1/events?limit=100 HTTP/1.1\r\nHost: hookline\r\nAuthorization: Bearer {}\r\n\r\n",
        s.key
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    // Others are served meanwhile.
    let (status, _) = s.get("/healthz").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (got, ended) = read_up_to(&mut stalled, 100 * 100_000).await;
    assert!(ended, "the whole page came: {got} bytes");
    assert!(got < 100 * 100_000, "{got} bytes came");

    // The same page, read, comes whole.
    let (status, page) = s.get("/v1/events?limit=100").await;
    assert_eq!(status, 200);
    assert_eq!(page["data"].as_array().unwrap().len(), 100);
    s.stop().await;
}
