//! Test harness: a real Hookline server (in-process, port 0) on either storage engine — a
//! temporary SQLite data directory, or a fresh schema in the PostgreSQL database that
//! `HOOKLINE_TEST_DATABASE_URL` names — and a real HTTP receiver on 127.0.0.1 whose answers
//! each test scripts.
#![allow(dead_code)]

pub mod process;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hookline::model::Plan;
use hookline::server::{self, Config};
use hookline::store::{Location, Store};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen quickly, on a slow machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Some`, or panics after `PATIENCE`.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(what, PATIENCE, check).await
}

/// Polls `check` until it returns `Some`, or panics after `patience`: for a wait whose
/// length grows with a load the test makes, which a busy machine stretches more.
pub async fn eventually_within<T, F, Fut>(what: &str, patience: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > patience {
            panic!("timed out waiting for {what} ({patience:?})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- the receiver ------------------------------------------------------------------------

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    /// A status with `Retry-After: secs`.
    RetryAfter(u16, u64),
    /// Never answers (until the client gives up).
    Hang,
    /// `200` after a pause.
    SlowOk(Duration),
    /// This status after a pause.
    Slow(u16, Duration),
    /// `302 Found` with `Location` set to this URL.
    Redirect(String),
    /// This status with this body (any bytes).
    Body(u16, Bytes),
    /// This status with a header of this name and value, and this body.
    WithHeader(u16, &'static str, String, Bytes),
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("receiver got JSON")
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

#[derive(Default)]
struct ReceiverState {
    got: Vec<Received>,
    scripts: HashMap<String, VecDeque<Reply>>,
    defaults: HashMap<String, Reply>,
    /// Requests being answered right now, by path and `webhook-id`.
    open: HashMap<(String, String), usize>,
    /// `webhook-id`s that arrived while another request with the same id to the same path
    /// was still being answered: one delivery attempted twice at once.
    overlaps: Vec<String>,
}

/// Takes a request off the receiver's open list when its answer is done or abandoned (the
/// sender hung up or died).
struct OpenGuard {
    state: Arc<Mutex<ReceiverState>>,
    key: (String, String),
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock()
            && let Some(n) = s.open.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                s.open.remove(&self.key);
            }
        }
    }
}

/// A real HTTP server on 127.0.0.1 that records every request. Each endpoint gets its own
/// path (`/r/{name}`) with its own scripted answers; unscripted requests get `200`.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let state: Arc<Mutex<ReceiverState>> = Arc::default();
        let app = axum::Router::new()
            .route("/r/{name}", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, state }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/r/{name}", self.addr)
    }

    /// Answers the next requests to `name` with `replies`, in order.
    pub fn script(&self, name: &str, replies: Vec<Reply>) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .insert(format!("/r/{name}"), replies.into());
    }

    /// Answers every unscripted request to `name` with `reply`.
    pub fn always(&self, name: &str, reply: Reply) {
        self.state
            .lock()
            .unwrap()
            .defaults
            .insert(format!("/r/{name}"), reply);
    }

    /// Everything `name` got so far, and the distinct `webhook-id`s among it.
    pub fn got_ids(&self, name: &str) -> (Vec<Received>, std::collections::BTreeSet<String>) {
        let got = self.got(name);
        let ids = got
            .iter()
            .map(|r| r.header("webhook-id").to_owned())
            .collect();
        (got, ids)
    }

    /// Everything `name` got so far.
    pub fn got(&self, name: &str) -> Vec<Received> {
        let path = format!("/r/{name}");
        self.state
            .lock()
            .unwrap()
            .got
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Received> {
        self.state.lock().unwrap().got.clone()
    }

    /// `webhook-id`s some request arrived with while another with the same id (to the same
    /// path) was still being answered.
    pub fn overlaps(&self) -> Vec<String> {
        self.state.lock().unwrap().overlaps.clone()
    }

    /// Waits until `name` got at least `n` requests.
    pub async fn wait_for(&self, name: &str, n: usize) -> Vec<Received> {
        eventually(&format!("{n} requests at {name}"), || async {
            let got = self.got(name);
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/r/{name}");
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let key = (path.clone(), id.clone());
    let _open = OpenGuard {
        state: state.clone(),
        key: key.clone(),
    };
    let reply = {
        let mut s = state.lock().unwrap();
        let n = s.open.entry(key).or_default();
        *n += 1;
        if *n > 1 {
            s.overlaps.push(id);
        }
        s.got.push(Received {
            path: path.clone(),
            headers,
            body,
            at: Instant::now(),
        });
        let scripted = s.scripts.get_mut(&path).and_then(|q| q.pop_front());
        scripted
            .or_else(|| s.defaults.get(&path).cloned())
            .unwrap_or(Reply::Status(200))
    };
    match reply {
        Reply::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Reply::RetryAfter(code, secs) => (
            StatusCode::from_u16(code).unwrap(),
            [("retry-after", secs.to_string())],
        )
            .into_response(),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        Reply::SlowOk(pause) => {
            tokio::time::sleep(pause).await;
            StatusCode::OK.into_response()
        }
        Reply::Slow(code, pause) => {
            tokio::time::sleep(pause).await;
            StatusCode::from_u16(code).unwrap().into_response()
        }
        Reply::Redirect(to) => (StatusCode::FOUND, [("location", to)]).into_response(),
        Reply::Body(code, body) => (StatusCode::from_u16(code).unwrap(), body).into_response(),
        Reply::WithHeader(code, name, value, body) => {
            (StatusCode::from_u16(code).unwrap(), [(name, value)], body).into_response()
        }
    }
}

// ---- store-level values ------------------------------------------------------------------------

/// An endpoint of the account's, on, delivering every type to `url` (for the store directly).
pub fn endpoint_of(account_id: &str, url: &str) -> hookline::model::Endpoint {
    let now = hookline::model::Timestamp::now();
    hookline::model::Endpoint {
        id: hookline::model::new_id("ep"),
        account_id: account_id.to_owned(),
        url: url.into(),
        description: String::new(),
        event_types: vec!["*".into()],
        headers: Default::default(),
        rate_limit_per_sec: None,
        enabled: true,
        disabled_reason: None,
        previous_secrets: Vec::new(),
        previous_secret_expires_at: None,
        created_at: now,
        updated_at: now,
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
    }
}

/// A `click` with empty `data`, accepted now (for the store directly).
pub fn click() -> hookline::store::NewEvent {
    hookline::store::NewEvent::accepted(
        hookline::model::new_id("evt"),
        "click".into(),
        serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        hookline::model::Timestamp::now(),
    )
}

// ---- events ----------------------------------------------------------------------------------

/// A valid `data` of `event_type`: its catalogue example, with `extra`'s fields laid over it.
pub fn valid(event_type: &str, extra: Value) -> Value {
    let catalogue = hookline::catalogue::Catalogue::builtin().unwrap();
    let mut data = catalogue
        .types()
        .iter()
        .find(|t| t.name == event_type)
        .map(|t| t.example.clone())
        .unwrap_or_else(|| panic!("{event_type} is not a built-in type"));
    if let (Some(d), Some(e)) = (data.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            d.insert(k.clone(), v.clone());
        }
    }
    data
}

// ---- the engines --------------------------------------------------------------------------

/// Which storage engine a test runs on.
#[derive(Clone, Debug)]
pub enum Engine {
    Sqlite,
    /// The PostgreSQL database at this URL; each test gets a schema of its own in it.
    Postgres(String),
}

impl Engine {
    /// PostgreSQL, when `HOOKLINE_TEST_DATABASE_URL` is set.
    pub fn postgres() -> Option<Engine> {
        std::env::var("HOOKLINE_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .map(Engine::Postgres)
    }
}

/// Where one test's data lives; the SQLite directory goes away with it.
pub struct Data {
    pub location: Location,
    _tmp: Option<tempfile::TempDir>,
}

impl Data {
    /// A fresh, empty place on `engine`.
    pub async fn fresh(engine: &Engine) -> Data {
        match engine {
            Engine::Sqlite => {
                let tmp = tempfile::tempdir().unwrap();
                Data {
                    location: Location::Sqlite(tmp.path().to_path_buf()),
                    _tmp: Some(tmp),
                }
            }
            Engine::Postgres(url) => {
                use sqlx::Connection as _;
                let schema = format!("t_{}", ulid::Ulid::generate().to_string().to_lowercase());
                let mut conn = sqlx::PgConnection::connect(url)
                    .await
                    .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let sep = if url.contains('?') { '&' } else { '?' };
                Data {
                    location: Location::Postgres(format!(
                        "{url}{sep}options[search_path]={schema}"
                    )),
                    _tmp: None,
                }
            }
        }
    }
}

/// Runs each named `async fn(Engine)` as two tests, `sqlite::name` and `postgres::name`; the
/// PostgreSQL one says it was skipped when `HOOKLINE_TEST_DATABASE_URL` is unset.
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Engine::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    match $crate::common::Engine::postgres() {
                        Some(engine) => super::$name(engine).await,
                        // Straight to the file descriptor: the test harness captures
                        // `eprintln!` of passing tests, and this notice must be seen.
                        None => {
                            use std::io::Write as _;
                            let _ = writeln!(
                                std::io::stderr().lock(),
                                "{}: skipped on PostgreSQL: HOOKLINE_TEST_DATABASE_URL is not set",
                                stringify!($name)
                            );
                        }
                    }
                }
            )*
        }
    };
}

// ---- the server --------------------------------------------------------------------------

/// A Hookline server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub key: String,
    pub http: reqwest::Client,
    pub location: Location,
    data: Option<Data>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A test config: http:// and private targets allowed, a short retry schedule.
pub fn test_config(location: &Location) -> Config {
    let mut config = Config::at(location.clone());
    config.url_rules.allow_insecure_urls = true;
    config.url_rules.allow_private_targets = true;
    config.dispatch.retry =
        hookline::dispatch::retry::RetrySchedule::parse("100ms,100ms,100ms").unwrap();
    config.dispatch.timeout = Duration::from_secs(10);
    config.shutdown_grace = Duration::from_millis(200);
    // Load tests post as fast as they can; the ingest rate is tested on its own.
    config.limits.pro.ingest_per_sec = None;
    config
}

/// Creates an account in the store at `location`; returns its key.
pub async fn create_account(location: &Location, name: &str) -> String {
    let store = Store::open(location).await.unwrap();
    let (_, key) = hookline::accounts::create(&store, name, Plan::Pro)
        .await
        .unwrap();
    key
}

impl TestServer {
    /// A fresh server on `engine` with the test config and one account.
    pub async fn start(engine: &Engine) -> Self {
        Self::start_with(engine, |_| {}).await
    }

    /// A fresh server on `engine` whose config `tweak` adjusts.
    pub async fn start_with(engine: &Engine, tweak: impl FnOnce(&mut Config)) -> Self {
        let data = Data::fresh(engine).await;
        let key = create_account(&data.location, "acme").await;
        let mut config = test_config(&data.location);
        tweak(&mut config);
        let mut s = Self::launch(config, key).await;
        s.data = Some(data);
        s
    }

    /// A server on existing data.
    pub async fn launch(config: Config, key: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let location = config.location.clone();
        let task = tokio::spawn(server::run(config, listener, shutdown.clone()));
        let s = TestServer {
            addr,
            key,
            http: reqwest::Client::new(),
            location,
            data: None,
            shutdown,
            task: Some(task),
        };
        eventually("the server to answer", || async {
            if s.task.as_ref().is_some_and(|t| t.is_finished()) {
                panic!("the server stopped while starting (see its error above)");
            }
            s.http
                .get(s.url("/healthz"))
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
        })
        .await;
        s
    }

    /// Stops the server and waits for it; hands back its data (to launch on again).
    pub async fn stop(mut self) -> Option<Data> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self.data.take()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request with this server's API key.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.key)
    }

    /// Sends JSON with the key; returns status and JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_as(&self.key, method, path, body).await
    }

    /// Sends JSON with another key (another account's, or the admin token); returns status
    /// and JSON body.
    pub async fn call_as(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut rb = self.http.request(method, self.url(path)).bearer_auth(key);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Creates an endpoint; returns its JSON (with `secret`).
    pub async fn endpoint(&self, url: &str, types: &[&str]) -> Value {
        let (status, ep) = self
            .post("/v1/endpoints", json!({"url": url, "event_types": types}))
            .await;
        assert_eq!(status, 201, "{ep}");
        ep
    }

    /// Sends one event; returns the 202 body.
    /// (`data` is laid over the type's catalogue example, so it only needs the fields the
    /// test cares about.)
    pub async fn event(&self, event_type: &str, data: Value) -> Value {
        let (status, ev) = self
            .post(
                "/v1/events",
                json!({"type": event_type, "data": valid(event_type, data)}),
            )
            .await;
        assert_eq!(status, 202, "{ev}");
        ev
    }

    /// Waits until delivery `id` has status `status`; returns it.
    pub async fn wait_delivery(&self, id: &str, status: &str) -> Value {
        eventually(&format!("delivery {id} to be {status}"), || async {
            let (_, d) = self.get(&format!("/v1/deliveries/{id}")).await;
            (d["status"] == status).then_some(d)
        })
        .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Checks a received webhook with the independent `standardwebhooks` crate.
pub fn verify_with_standardwebhooks(secret: &str, r: &Received) {
    let wh = standardwebhooks::Webhook::new(secret).expect("secret accepted by standardwebhooks");
    wh.verify(&r.body, &r.headers)
        .expect("standardwebhooks verifies the signature");
}

/// Everything the database at `location` holds, as bytes to search: on SQLite the data
/// directory's files (database and write-ahead log), on PostgreSQL every row of every table
/// of the test's schema as text.
pub async fn database_bytes(location: &Location) -> Vec<u8> {
    match location {
        Location::Sqlite(dir) => {
            // Read by another process: closing a descriptor of the database (or of its
            // `-shm`) in this one would drop every POSIX lock this process holds on it, the
            // in-process server's SQLite locks among them. A command of another process
            // would then take itself for the database's only user, and its last close would
            // checkpoint and remove the write-ahead log under the server (a revocation by
            // `hookline account revoke` was lost so).
            let mut out = Vec::new();
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    let read = std::process::Command::new("cat")
                        .arg(&path)
                        .output()
                        .unwrap();
                    assert!(read.status.success(), "reading {}", path.display());
                    out.extend(read.stdout);
                }
            }
            out
        }
        Location::Postgres(url) => {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            assert!(tables.len() >= 5, "the schema has its tables: {tables:?}");
            let mut out = Vec::new();
            for t in tables {
                let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT t::text FROM \"{t}\" t"
                )))
                .fetch_all(&mut conn)
                .await
                .unwrap();
                for r in rows {
                    out.extend(r.into_bytes());
                    out.push(b'\n');
                }
            }
            out
        }
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The text of `GET {base}/metrics`.
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the metric `name` (one without labels) in `GET {base}/metrics`, if shown.
pub async fn metric(http: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = metrics_text(http, base).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
