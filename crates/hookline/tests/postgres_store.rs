//! The PostgreSQL store against a history it could not make quickly through its API:
//! - turning an endpoint off ends its open deliveries through the partial indexes of open
//!   rows, whatever the endpoint's history: with 49,500 delivered rows behind it, the planner
//!   reads neither the table nor the endpoint's index of every delivery;
//! - a recovery starts its walk about at its `since`, not at the endpoint's first delivery;
//! - the minute's sweep of deliveries that waited out the schedule reads about what it ends,
//!   not an outage's backlog; the hourly whole one ends the rest, and reads about as little
//!   (through the index of pending rows by age), with the plan made for the values and with
//!   the generic one a prepared statement may settle on;
//! - the lists of an event's and of an endpoint's deliveries read through their indexes,
//!   with either plan, not the account's deliveries from the newest back;
//! - a page of the feed with `since` or `until` starts and stops at about those times (a
//!   search over transaction ids), not at the account's first event, and misses none
//!   stamped in range;
//! - the poller's claim takes nothing of an endpoint a change holds;
//! - a write whose answer is lost with its connection (through a proxy that loses it) is
//!   answered by what the database did, not by a guess.
//!
//! Runs when `HOOKLINE_TEST_DATABASE_URL` is set (`.ci/run` sets it), like the PostgreSQL
//! half of the integration suite.

mod common;

use common::{Data, Engine, click, endpoint_of};
use hookline::model::DeliveryStatus;
use hookline::model::{Plan, PreviousSecret, Timestamp};
use hookline::store::postgres::{
    END_HELD, END_PENDING, ENDPOINT_DELIVERIES, EVENT_DELIVERIES, FAIL_STALE, FAIL_STALE_DUE, FEED,
    FEED_ENDS, FEED_FIRST_AFTER, FEED_TYPED, MIGRATIONS, feed_search,
};
use hookline::store::{
    DeliveryFilter, EventFilter, IdempotencyKey, Ingested, Location, Sealer, Store,
};
use sqlx::Connection as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A fresh schema on the test database (with the server's tables) and a connection to it;
/// `None` (said on stderr) when no database is given.
async fn fresh(test: &str) -> Option<(Data, sqlx::PgConnection)> {
    let Some(engine) = Engine::postgres() else {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr().lock(),
            "{test}: skipped on PostgreSQL: HOOKLINE_TEST_DATABASE_URL is not set"
        );
        return None;
    };
    let data = Data::fresh(&engine).await;
    let Location::Postgres(url) = &data.location else {
        unreachable!("a PostgreSQL engine gives a PostgreSQL location")
    };
    drop(Store::open(&data.location).await.unwrap());
    let db = sqlx::PgConnection::connect(url).await.unwrap();
    Some((data, db))
}

/// The plan PostgreSQL makes for `sql` (parameters of `types`) with the values `args`: prepared
/// as `name`, so that the plan is the one for those values (unless the connection's
/// `plan_cache_mode` asks for the generic one).
async fn plan_of(
    db: &mut sqlx::PgConnection,
    name: &str,
    types: &str,
    sql: &str,
    args: &str,
) -> String {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "PREPARE {name} ({types}) AS {sql}"
    )))
    .execute(&mut *db)
    .await
    .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN EXECUTE {name} ({args})"
    )))
    .fetch_all(&mut *db)
    .await
    .unwrap();
    plan.join("\n")
}

/// Makes the connection's prepared statements plan as `mode` says (`plan_cache_mode`): `auto`
/// plans for the values given, `force_generic_plan` for any values.
async fn plan_with(db: &mut sqlx::PgConnection, mode: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
        .execute(db)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_turned_off_endpoints_deliveries_reads_only_its_open_rows() {
    let Some((_data, mut db)) =
        fresh("ending_a_turned_off_endpoints_deliveries_reads_only_its_open_rows").await
    else {
        return;
    };

    // The endpoint: 49,500 delivered, 30 pending, 8 in flight; beside it another endpoint
    // with 16,500 pending.
    sqlx::raw_sql(
        "INSERT INTO deliveries (id, account_id, event_id, event_type, endpoint_id, status,
             next_attempt_at, node, created_at, updated_at)
         SELECT 'dlv_' || i, 'acc', 'evt_' || i, 'click',
             CASE WHEN i % 4 = 0 THEN 'ep_other' ELSE 'ep_off' END,
             CASE WHEN i > 66040 THEN 'delivering'
                  WHEN i > 66000 OR i % 4 = 0 THEN 'pending' ELSE 'succeeded' END,
             CASE WHEN i <= 66040 AND (i > 66000 OR i % 4 = 0) THEN i END,
             CASE WHEN i > 66040 THEN 'node_a' END,
             i, i
         FROM generate_series(1, 66050) AS i;
         ANALYZE deliveries;",
    )
    .execute(&mut db)
    .await
    .unwrap();

    // For the pending rows either partial index of them will do (by endpoint, or by due
    // time alone): the planner picks by how many it expects the endpoint to have.
    for (n, (sql, index)) in [
        (END_PENDING, "deliveries_due"),
        (END_HELD, "deliveries_held_by_node"),
    ]
    .into_iter()
    .enumerate()
    {
        let plan = plan_of(
            &mut db,
            &format!("ending_{n}"),
            "text, text, bigint",
            sql,
            "'ep_off', 'endpoint disabled', 0",
        )
        .await;
        assert!(plan.contains(index), "{sql}\n{plan}");
        assert!(!plan.contains("Seq Scan"), "{sql}\n{plan}");
        assert!(!plan.contains("deliveries_by_endpoint"), "{sql}\n{plan}");
    }

    // And they end what they should: the endpoint's open rows, no other.
    let mut ended = 0;
    for sql in [END_PENDING, END_HELD] {
        ended += sqlx::query(sql)
            .bind("ep_off")
            .bind("endpoint disabled")
            .bind(1_i64)
            .execute(&mut db)
            .await
            .unwrap()
            .rows_affected();
    }
    let open: Vec<(String, i64)> = sqlx::query_as(
        "SELECT endpoint_id, COUNT(*) FROM deliveries
         WHERE status IN ('pending', 'delivering') GROUP BY endpoint_id ORDER BY endpoint_id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    // Rows 66,001 to 66,050 are open; every fourth is the other endpoint's, as are its
    // 16,500 pending before them.
    assert_eq!(ended, 38);
    assert_eq!(open, vec![("ep_other".to_owned(), 16_512)]);
}

/// The poller's claim locks each endpoint key-share until it commits, as ingest does. While a
/// change of an endpoint is under way (its `FOR UPDATE` held), the claim takes none of that
/// endpoint's rows (it takes the others'), so the change's ending of the endpoint's open rows
/// cannot miss one the claim moved to `delivering` meanwhile: that row would have been sent
/// to the endpoint just turned off, or left `pending` for good behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_takes_nothing_of_an_endpoint_a_change_holds() {
    let Some((data, mut db)) = fresh("a_claim_takes_nothing_of_an_endpoint_a_change_holds").await
    else {
        return;
    };
    let store = Store::open(&data.location).await.unwrap();
    let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
    let busy = store
        .insert_endpoint(endpoint_of(&account.id, "https://example.com/busy"), 100)
        .await
        .unwrap();
    let free = store
        .insert_endpoint(endpoint_of(&account.id, "https://example.com/free"), 100)
        .await
        .unwrap();
    // One event for both, waiting (not taken at ingest): both rows `pending`, due now.
    let event = click();
    store
        .insert_events(account.id.clone(), vec![event], |_| false, |_| {})
        .await
        .unwrap();
    let later = Timestamp(Timestamp::now().0 + 60_000);

    // A change of `busy` under way on another connection: the claim takes `free`'s row only.
    let mut change = db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM endpoints WHERE id = $1 FOR UPDATE")
        .bind(&busy.id)
        .execute(&mut *change)
        .await
        .unwrap();
    let claimed = store.claim_due(later, |_| 10).await.unwrap();
    let taken: Vec<&str> = claimed.iter().map(|d| d.endpoint.id.as_str()).collect();
    assert_eq!(taken, vec![free.id.as_str()]);

    // The change turns `busy` off and ends its open rows, as the store's own change does.
    sqlx::query("UPDATE endpoints SET enabled = false WHERE id = $1")
        .bind(&busy.id)
        .execute(&mut *change)
        .await
        .unwrap();
    for sql in [END_HELD, END_PENDING] {
        sqlx::query(sql)
            .bind(&busy.id)
            .bind("endpoint disabled")
            .bind(Timestamp::now().0)
            .execute(&mut *change)
            .await
            .unwrap();
    }
    change.commit().await.unwrap();

    // Nothing of `busy` escaped: its delivery ended, and no later claim takes it.
    assert!(store.claim_due(later, |_| 10).await.unwrap().is_empty());
    let statuses: Vec<(String, String)> =
        sqlx::query_as("SELECT endpoint_id, status FROM deliveries ORDER BY endpoint_id")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let mut want = vec![
        (busy.id.clone(), "failed".to_owned()),
        (free.id.clone(), "delivering".to_owned()),
    ];
    want.sort();
    assert_eq!(statuses, want);
}

/// What a [`LossyProxy`] is to do to the next connection that shows its marker.
#[derive(Clone)]
enum Loss {
    /// Drop the first chunk from the server that holds this, with all after it, and close
    /// both sides a second later: the client never hears the outcome of what it sent.
    Answer(&'static [u8]),
    /// Once the client has sent a chunk that holds this, close both sides after the pause,
    /// whatever the server is doing meanwhile (waiting for a lock, say).
    CutAfterSending(Vec<u8>, Duration),
    /// As `Answer`, and the database is then out of reach for as long: every connection
    /// through the proxy is cut, and new ones are closed as soon as they are taken.
    AnswerThenDark(&'static [u8], Duration),
}

/// A TCP proxy in front of PostgreSQL that can lose one connection mid-write, as a
/// middlebox or a network can: the server carries on with what it was sent, or not, as it
/// would after such a loss.
struct LossyProxy {
    addr: std::net::SocketAddr,
    armed: Arc<Mutex<Option<Loss>>>,
    dark: Dark,
}

/// Until when the proxy is dark (see [`Loss::AnswerThenDark`]), and a signal that cuts
/// every connection when it goes dark.
#[derive(Clone)]
struct Dark {
    until: Arc<Mutex<Option<tokio::time::Instant>>>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Dark {
    fn now(&self) -> bool {
        self.until
            .lock()
            .unwrap()
            .is_some_and(|t| tokio::time::Instant::now() < t)
    }

    fn begin(&self, d: Duration) {
        *self.until.lock().unwrap() = Some(tokio::time::Instant::now() + d);
        self.cut.send_modify(|n| *n += 1);
    }
}

impl LossyProxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let armed: Arc<Mutex<Option<Loss>>> = Arc::default();
        let shared = armed.clone();
        let dark = Dark {
            until: Arc::default(),
            cut: tokio::sync::watch::channel(0).0,
        };
        let dark_too = dark.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if dark_too.now() {
                    continue; // closed as it drops
                }
                // Listening for the cut before the connection is let through: one that goes
                // dark right after is cut too.
                let cut = dark_too.cut.subscribe();
                if let Ok(server) = tokio::net::TcpStream::connect(upstream).await {
                    tokio::spawn(Self::pipe(
                        client,
                        server,
                        shared.clone(),
                        dark_too.clone(),
                        cut,
                    ));
                }
            }
        });
        LossyProxy { addr, armed, dark }
    }

    fn arm(&self, loss: Loss) {
        *self.armed.lock().unwrap() = Some(loss);
    }

    /// Whether the loss it was armed with happened.
    fn lost(&self) -> bool {
        self.armed.lock().unwrap().is_none()
    }

    /// Takes the armed loss if `chunk`, going `up` (to the server) or down, sets it off.
    fn fired(armed: &Mutex<Option<Loss>>, chunk: &[u8], up: bool) -> Option<Loss> {
        let holds = |m: &[u8]| chunk.windows(m.len()).any(|w| w == m);
        let mut a = armed.lock().unwrap();
        let hit = match a.as_ref() {
            Some(Loss::Answer(m) | Loss::AnswerThenDark(m, _)) => !up && holds(m),
            Some(Loss::CutAfterSending(m, _)) => up && holds(m),
            None => false,
        };
        if hit { a.take() } else { None }
    }

    async fn pipe(
        mut client: tokio::net::TcpStream,
        mut server: tokio::net::TcpStream,
        armed: Arc<Mutex<Option<Loss>>>,
        dark: Dark,
        mut cut: tokio::sync::watch::Receiver<u64>,
    ) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut up, mut down) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        // When set, both sides close then.
        let mut cut_at: Option<tokio::time::Instant> = None;
        let mut dropping = false;
        loop {
            tokio::select! {
                r = client.read(&mut up) => {
                    let n = match r { Ok(0) | Err(_) => break, Ok(n) => n };
                    if let Some(Loss::CutAfterSending(_, pause)) = Self::fired(&armed, &up[..n], true) {
                        cut_at = Some(tokio::time::Instant::now() + pause);
                    }
                    if server.write_all(&up[..n]).await.is_err() {
                        break;
                    }
                }
                r = server.read(&mut down) => {
                    let n = match r { Ok(0) | Err(_) => break, Ok(n) => n };
                    match Self::fired(&armed, &down[..n], false) {
                        Some(Loss::Answer(_)) => {
                            dropping = true;
                            cut_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                        }
                        Some(Loss::AnswerThenDark(_, d)) => {
                            dark.begin(d);
                            break;
                        }
                        _ => {}
                    }
                    if !dropping && client.write_all(&down[..n]).await.is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(cut_at.unwrap_or_else(tokio::time::Instant::now)), if cut_at.is_some() => break,
                _ = cut.changed() => break,
            }
        }
        // Both connections close as they drop.
    }
}

/// A store on `data`'s database and schema through a [`LossyProxy`], in plain text (so that
/// the proxy can see what it loses).
async fn through_proxy(data: &Data) -> (LossyProxy, Store) {
    let Location::Postgres(url) = &data.location else {
        unreachable!("a PostgreSQL engine gives a PostgreSQL location")
    };
    let mut through = reqwest::Url::parse(url).unwrap();
    let upstream = tokio::net::lookup_host((
        through.host_str().unwrap().to_owned(),
        through.port().unwrap_or(5432),
    ))
    .await
    .unwrap()
    .next()
    .unwrap();
    let proxy = LossyProxy::start(upstream).await;
    through.set_host(Some("127.0.0.1")).unwrap();
    through.set_port(Some(proxy.addr.port())).unwrap();
    through.query_pairs_mut().append_pair("sslmode", "disable");
    let store = Store::open(&Location::Postgres(through.to_string()))
        .await
        .unwrap();
    (proxy, store)
}

/// The status and holder of the delivery of event `id`, if the event is stored.
async fn stored(db: &mut sqlx::PgConnection, id: &str) -> Option<(String, Option<String>)> {
    sqlx::query_as(
        "SELECT d.status, d.node FROM events e JOIN deliveries d ON d.event_id = e.id
         WHERE e.id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
    .unwrap()
}

/// A write whose answer is lost with its connection may have committed. The caller hears what
/// happened, found out before it answers, never a guess: a `503` would tell a producer its
/// events were not accepted, and its retry would store them twice. Committed, the deliveries
/// the write handed to this node are given back `pending` (no caller takes them in hand),
/// so they are not left `delivering` with nobody holding them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_is_lost_is_answered_by_what_happened() {
    let Some((data, mut db)) =
        fresh("a_write_whose_answer_is_lost_is_answered_by_what_happened").await
    else {
        return;
    };
    let (proxy, store) = through_proxy(&data).await;
    let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
    let ep = store
        .insert_endpoint(endpoint_of(&account.id, "https://example.com/a"), 100)
        .await
        .unwrap();
    let event = click;
    let key = |k: &str| IdempotencyKey {
        key: k.into(),
        request_hash: k.into(),
        window_ms: 86_400_000,
    };
    // 1. The ingest statement commits (on its own, no key); its answer is lost.
    let ev = event();
    let id = ev.id.clone();
    proxy.arm(Loss::Answer(b"INSERT 0 "));
    let out = store
        .insert_events(account.id.clone(), vec![ev], |_| true, |_| {})
        .await
        .unwrap();
    assert!(proxy.lost());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].deliveries.len(), 1);
    assert!(!out[0].deliveries[0].claimed, "given back while settling");
    assert_eq!(
        stored(&mut db, &id).await,
        Some(("pending".to_owned(), None))
    );

    // 2. Under a key, the commit's answer is lost.
    let ev = event();
    let id = ev.id.clone();
    proxy.arm(Loss::Answer(b"COMMIT\0"));
    let once = store
        .insert_events_once(account.id.clone(), vec![ev], key("k2"), |_| true, |_| {})
        .await
        .unwrap();
    assert!(proxy.lost());
    let Ingested::New(out) = once else {
        panic!("a new write: {once:?}")
    };
    assert!(!out[0].deliveries[0].claimed);
    assert_eq!(
        stored(&mut db, &id).await,
        Some(("pending".to_owned(), None))
    );

    // 3. Under a key, the ingest statement's answer is lost, before the commit was sent:
    //    nothing was stored, and the caller hears so.
    let ev = event();
    let id = ev.id.clone();
    proxy.arm(Loss::Answer(b"dlv_"));
    let err = store
        .insert_events_once(account.id.clone(), vec![ev], key("k3"), |_| true, |_| {})
        .await
        .expect_err("not committed");
    assert!(proxy.lost());
    assert!(format!("{err}").contains("PostgreSQL"), "{err}");
    assert_eq!(stored(&mut db, &id).await, None);
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_keys WHERE key = 'k3'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(keys, 0);

    // 4. The ingest statement waits for its endpoint, which a change holds, when its
    //    connection is cut. The change then commits, and the statement after it, after the
    //    loss: the probe waits for the statement, and the caller hears it was stored.
    let ev = event();
    let id = ev.id.clone();
    let mut change = db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM endpoints WHERE id = $1 FOR UPDATE")
        .bind(&ep.id)
        .execute(&mut *change)
        .await
        .unwrap();
    proxy.arm(Loss::CutAfterSending(
        id.clone().into_bytes(),
        Duration::from_millis(300),
    ));
    let (written, ()) = tokio::join!(
        store.insert_events(account.id.clone(), vec![ev], |_| true, |_| {}),
        async {
            common::eventually("the statement to be sent", || async {
                proxy.lost().then_some(())
            })
            .await;
            // Past the cut, while the statement still waits for the change.
            tokio::time::sleep(Duration::from_millis(700)).await;
            change.commit().await.unwrap();
        }
    );
    let out = written.expect("committed after the loss, and heard so");
    assert!(!out[0].deliveries[0].claimed);
    assert_eq!(
        stored(&mut db, &id).await,
        Some(("pending".to_owned(), None))
    );

    // And the store goes on.
    store
        .insert_events(account.id.clone(), vec![event()], |_| true, |_| {})
        .await
        .unwrap();
}

/// A write whose answer is lost while the database then stays out of reach for longer than
/// the store asks about it: its caller hears neither that it was stored nor that it was not
/// (`OutcomeUnknown`; the API closes the connection without an answer), and once the
/// database is back the deliveries it handed to this node are given back `pending`, so
/// they go out rather than wait `delivering` for a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_outcome_cannot_be_told_is_answered_neither_way() {
    let Some((data, mut db)) =
        fresh("a_write_whose_outcome_cannot_be_told_is_answered_neither_way").await
    else {
        return;
    };
    let (proxy, store) = through_proxy(&data).await;
    let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
    store
        .insert_endpoint(endpoint_of(&account.id, "https://example.com/a"), 100)
        .await
        .unwrap();

    // The statement commits; its answer is lost, and the database is out of reach for
    // longer than the store asks (10 s), with room for a slow machine.
    let ev = click();
    let id = ev.id.clone();
    proxy.arm(Loss::AnswerThenDark(b"INSERT 0 ", Duration::from_secs(15)));
    let err = store
        .insert_events(account.id.clone(), vec![ev], |_| true, |_| {})
        .await
        .expect_err("no outcome to tell");
    assert!(proxy.lost());
    assert!(
        matches!(err, hookline::store::StoreError::OutcomeUnknown(_)),
        "{err}"
    );
    // It had committed, and its delivery was handed to this node (unless, on a slow
    // machine, the database is back already and it was given back).
    let (status, node) = stored(&mut db, &id).await.expect("committed");
    assert!(
        (status == "delivering" && node.is_some()) || (status == "pending" && node.is_none()),
        "{status} {node:?}"
    );
    // Once the database is back, the delivery is given back for the poller.
    let patience = tokio::time::Instant::now() + Duration::from_secs(60);
    while stored(&mut db, &id).await != Some(("pending".to_owned(), None)) {
        assert!(
            tokio::time::Instant::now() < patience,
            "the lost write's delivery was never given back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!proxy.dark.now());
    // And the store goes on.
    store
        .insert_events(account.id.clone(), vec![click()], |_| true, |_| {})
        .await
        .unwrap();
}

/// 1,000 deliveries of ten days ago, then 10 of now, with another account's endpoint's rows
/// between: a recovery since a day ago starts after the old ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_starts_at_its_since_not_at_the_first_delivery() {
    let Some((data, mut db)) =
        fresh("a_recovery_starts_at_its_since_not_at_the_first_delivery").await
    else {
        return;
    };
    let now = Timestamp::now().0;
    let day = 86_400_000_i64;
    sqlx::query(
        "INSERT INTO deliveries (id, account_id, event_id, event_type, endpoint_id, status,
             created_at, updated_at)
         SELECT 'dlv_' || i, CASE WHEN i % 2 = 0 THEN 'acc' ELSE 'acc_other' END, 'evt_' || i,
             'click', CASE WHEN i % 2 = 0 THEN 'ep' ELSE 'ep_other' END, 'failed',
             CASE WHEN i <= 2000 THEN $1 ELSE $2 END, $2
         FROM generate_series(1, 2020) AS i",
    )
    .bind(now - 10 * day)
    .bind(now)
    .execute(&mut db)
    .await
    .unwrap();
    let row = |id: &str| {
        sqlx::query_scalar::<_, i64>("SELECT seq FROM deliveries WHERE id = $1").bind(id.to_owned())
    };
    let old_last = row("dlv_2000").fetch_one(&mut db).await.unwrap();
    let new_last = row("dlv_2020").fetch_one(&mut db).await.unwrap();
    let store = Store::open(&data.location).await.unwrap();
    let from = |since: i64| store.recover_from("acc".into(), "ep".into(), Timestamp(since));
    assert_eq!(from(now - day).await.unwrap(), old_last);
    assert_eq!(
        from(now - 20 * day).await.unwrap(),
        0,
        "all of it is recent"
    );
    assert_eq!(from(now + day).await.unwrap(), new_last, "none of it is");
    let theirs = store.recover_from("acc_someone_else".into(), "ep".into(), Timestamp(now - day));
    assert_eq!(theirs.await.unwrap(), 0, "not that account's endpoint");
}

/// Behind an open breaker: 20,000 young deliveries, 100 that waited out the schedule, and one
/// retry set after the cutoff by an attempt before it. The minute's sweep reads the index of
/// pending rows by due time up to the cutoff and ends the 100; the whole one ends the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stale_sweep_reads_what_it_ends_and_the_whole_one_the_rest() {
    let Some((data, mut db)) =
        fresh("the_stale_sweep_reads_what_it_ends_and_the_whole_one_the_rest").await
    else {
        return;
    };
    let now = Timestamp::now().0;
    let day = 86_400_000_i64;
    let before = now - 5 * day;
    // Rows 1-100 waited out the schedule; 101-20,100 are young; 20,101 was tried before the
    // cutoff and is due again after it.
    sqlx::query(
        "INSERT INTO deliveries (id, account_id, event_id, event_type, endpoint_id, status,
             next_attempt_at, created_at, updated_at)
         SELECT 'dlv_' || i, 'acc', 'evt_' || i, 'click', 'ep_down', 'pending',
             CASE WHEN i <= 100 THEN $1 WHEN i <= 20100 THEN $2 ELSE $3 END,
             CASE WHEN i <= 100 THEN $1 WHEN i <= 20100 THEN $2 ELSE $1 END,
             CASE WHEN i <= 100 THEN $1 WHEN i <= 20100 THEN $2 ELSE $1 + 1000 END
         FROM generate_series(1, 20101) AS i;
         ",
    )
    .bind(before - day)
    .bind(now - 60_000)
    .bind(before + 3_600_000)
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::raw_sql("ANALYZE deliveries")
        .execute(&mut db)
        .await
        .unwrap();

    // Every plan below is made for the same endpoint, cutoff and time.
    let args = format!("'ep_down', {before}, {now}");
    let plan = plan_of(
        &mut db,
        "sweep",
        "text, bigint, bigint",
        FAIL_STALE_DUE,
        &args,
    )
    .await;
    assert!(
        plan.lines()
            .any(|l| l.contains("Index Cond") && l.contains("next_attempt_at <")),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "{plan}");
    // The whole sweep: a range of the endpoint's pending rows by age, up to the cutoff, not
    // the 20,000 young ones.
    let plan = plan_of(
        &mut db,
        "whole_sweep",
        "text, bigint, bigint",
        FAIL_STALE,
        &args,
    )
    .await;
    assert!(
        plan.lines()
            .any(|l| l.contains("deliveries_pending_by_age")),
        "{plan}"
    );
    assert!(
        plan.lines()
            .any(|l| l.contains("Index Cond") && l.contains("created_at <")),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "{plan}");
    // And the plan for any values, which a prepared statement may settle on after a few runs.
    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
        .execute(&mut db)
        .await
        .unwrap();
    let plan = plan_of(
        &mut db,
        "whole_sweep_generic",
        "text, bigint, bigint",
        FAIL_STALE,
        &args,
    )
    .await;
    assert!(
        plan.lines().any(|l| l.contains("Index Cond")
            && l.contains("endpoint_id = $1")
            && l.contains("created_at < $2")),
        "{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "{plan}");

    let store = Store::open(&data.location).await.unwrap();
    let sweep = |whole| store.fail_stale("ep_down".into(), Timestamp(before), whole);
    assert_eq!(sweep(false).await.unwrap(), 100);
    assert_eq!(
        sweep(false).await.unwrap(),
        0,
        "the retry is due after the cutoff"
    );
    assert_eq!(sweep(true).await.unwrap(), 1);
    let pending: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(pending, 20_000, "the young ones wait on");
}

/// Whether index `name` of `table` exists, and is valid.
async fn index_valid(db: &mut sqlx::PgConnection, table: &str, name: &str) -> Option<bool> {
    sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE i.indrelid = $1::regclass AND c.relname = $2",
    )
    .bind(table)
    .bind(name)
    .fetch_optional(db)
    .await
    .unwrap()
}

/// A build of index `name` of `table` made ahead of an upgrade (concurrently, as
/// ARCHITECTURE.md says) that failed leaves an invalid index of that name: the migration that
/// makes the index drops it and builds it, rather than keeping an index the planner never
/// uses. The database is taken back to before that migration (and those after it, which run
/// again); `rows` are two rows of `table` equal on `key`, over which `key`'s unique build
/// fails.
async fn an_index_built_ahead_that_failed_is_replaced(
    test: &str,
    table: &str,
    name: &str,
    rows: &str,
    key: &str,
) {
    let Some((data, mut db)) = fresh(test).await else {
        return;
    };
    assert_eq!(index_valid(&mut db, table, name).await, Some(true));
    let version = MIGRATIONS
        .iter()
        .position(|m| m.contains(&format!("CREATE INDEX IF NOT EXISTS {name} ")))
        .unwrap()
        + 1;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP INDEX {name};
         DELETE FROM hookline_schema WHERE version >= {version};
         INSERT INTO {table} {rows};"
    )))
    .execute(&mut db)
    .await
    .unwrap();
    let failed = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE UNIQUE INDEX CONCURRENTLY {name} ON {table} ({key})"
    )))
    .execute(&mut db)
    .await;
    assert!(failed.is_err(), "two equal keys");
    assert_eq!(index_valid(&mut db, table, name).await, Some(false));

    drop(Store::open(&data.location).await.unwrap());
    assert_eq!(
        index_valid(&mut db, table, name).await,
        Some(true),
        "dropped and built again by the migration"
    );
    let unique: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT indisunique FROM pg_index WHERE indexrelid = '{name}'::regclass"
    )))
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(!unique, "the migration's own index, not the failed one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_age_index_migration_replaces_an_invalid_index_left_by_a_failed_build() {
    an_index_built_ahead_that_failed_is_replaced(
        "the_age_index_migration_replaces_an_invalid_index_left_by_a_failed_build",
        "deliveries",
        "deliveries_pending_by_age",
        "(id, account_id, event_id, event_type, endpoint_id, status, created_at, updated_at)
         VALUES ('dlv_1', 'acc', 'evt_1', 'click', 'ep', 'pending', 1, 1),
                ('dlv_2', 'acc', 'evt_2', 'click', 'ep', 'pending', 1, 1)",
        "endpoint_id, created_at",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_type_index_migration_replaces_an_invalid_index_left_by_a_failed_build() {
    an_index_built_ahead_that_failed_is_replaced(
        "the_type_index_migration_replaces_an_invalid_index_left_by_a_failed_build",
        "events",
        "events_feed_by_type",
        "(id, account_id, type, data, created_at)
         VALUES ('evt_1', 'acc', 'click', '{}', 1), ('evt_2', 'acc', 'click', '{}', 1)",
        "account_id, type",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_lists_read_only_their_own_rows() {
    let Some((data, mut db)) = fresh("delivery_lists_read_only_their_own_rows").await else {
        return;
    };
    // 60,000 deliveries of 30,000 events (two each) to 300 endpoints, a third of them failed;
    // the first 20 are of an endpoint that had no other.
    sqlx::raw_sql(
        "INSERT INTO deliveries (id, account_id, event_id, event_type, endpoint_id, status,
             created_at, updated_at)
         SELECT 'dlv_' || i, 'acc', 'evt_' || ((i + 1) / 2), 'click',
             CASE WHEN i <= 20 THEN 'ep_rare' ELSE 'ep_' || (i % 300) END,
             CASE WHEN i % 3 = 0 THEN 'failed' ELSE 'succeeded' END,
             i, i
         FROM generate_series(1, 60000) AS i;
         ANALYZE deliveries;",
    )
    .execute(&mut db)
    .await
    .unwrap();

    // With the plan for the values, then with the one for any values.
    for mode in ["auto", "force_generic_plan"] {
        plan_with(&mut db, mode).await;
        for (name, types, sql, args, index) in [
            (
                "event_list",
                "text, text, bigint, text, text, bigint",
                EVENT_DELIVERIES.as_str(),
                "'evt_5', 'acc', 9223372036854775807, NULL, NULL, 51",
                "deliveries_by_event",
            ),
            (
                "endpoint_list",
                "text, text, bigint, text, bigint",
                ENDPOINT_DELIVERIES.as_str(),
                "'ep_rare', 'acc', 9223372036854775807, 'failed', 51",
                "deliveries_by_endpoint",
            ),
        ] {
            let plan = plan_of(&mut db, &format!("{name}_{mode}"), types, sql, args).await;
            assert!(plan.contains(index), "{mode}\n{plan}");
            assert!(!plan.contains("Seq Scan"), "{mode}\n{plan}");
        }
    }

    // And they list the right rows, newest first.
    let store = Store::open(&data.location).await.unwrap();
    let list = async |event: Option<&str>, endpoint: Option<&str>, status, before| {
        let filter = DeliveryFilter {
            event_id: event.map(str::to_owned),
            endpoint_id: endpoint.map(str::to_owned),
            status,
        };
        let page = store
            .list_deliveries("acc".into(), filter, before, 4)
            .await
            .unwrap();
        let ids: Vec<String> = page.items.into_iter().map(|d| d.id).collect();
        (ids, page.next)
    };
    let event = Some("evt_20000");
    assert_eq!(
        list(event, None, None, None).await.0,
        ["dlv_40000", "dlv_39999"]
    );
    assert_eq!(
        list(event, Some("ep_100"), None, None).await.0,
        ["dlv_40000"]
    );
    let failed = Some(DeliveryStatus::Failed);
    assert_eq!(list(event, None, failed, None).await.0, ["dlv_39999"]);
    assert!(list(event, Some("ep_100"), failed, None).await.0.is_empty());
    // The rare endpoint's failed ones (rows 3 to 18), four to a page.
    let (first, next) = list(None, Some("ep_rare"), failed, None).await;
    assert_eq!(first, ["dlv_18", "dlv_15", "dlv_12", "dlv_9"]);
    let (rest, next) = list(None, Some("ep_rare"), failed, next).await;
    assert_eq!(rest, ["dlv_6", "dlv_3"]);
    assert_eq!(next, None);
    // Of another account: nothing.
    let theirs = store
        .list_deliveries(
            "other".into(),
            DeliveryFilter {
                event_id: Some("evt_20000".into()),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert!(theirs.items.is_empty());
}

/// Commits one transaction of account `acc`'s events stamped `at`, in that order (ids
/// `evt_{name}_{i}`), and returns their ids.
async fn commit_events(db: &mut sqlx::PgConnection, name: &str, at: &[i64]) -> Vec<String> {
    sqlx::query_scalar(
        "INSERT INTO events (id, account_id, type, data, created_at)
         SELECT 'evt_' || $1 || '_' || i, 'acc', 'click', '{}', t
         FROM unnest($2::bigint[]) WITH ORDINALITY AS u(t, i) ORDER BY i
         RETURNING id",
    )
    .bind(name)
    .bind(at)
    .fetch_all(db)
    .await
    .unwrap()
}

/// Waits until the feed may show every event committed so far: until no transaction older
/// than the newest event's is still running anywhere on the server (the tests beside this
/// one share its transaction ids).
async fn until_the_feed_shows_all(db: &mut sqlx::PgConnection) {
    for _ in 0..600 {
        let shown: bool = sqlx::query_scalar(
            "SELECT COALESCE((SELECT xid FROM events ORDER BY xid DESC LIMIT 1)
                 < pg_snapshot_xmin(pg_current_snapshot()), true)",
        )
        .fetch_one(&mut *db)
        .await
        .unwrap();
        if shown {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("a transaction older than the last event's ran for a minute");
}

/// `since` and `until` pages of the feed start and stop at the positions of about their
/// times (a search over transaction ids), yet show every event stamped in range, those
/// committed out of the order of their stamps by less than the margin included; the page,
/// each probe and the ends read through the feed's index, with either plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_seeks_its_since_and_until_and_misses_nothing_in_range() {
    let Some((data, mut db)) =
        fresh("the_feed_seeks_its_since_and_until_and_misses_nothing_in_range").await
    else {
        return;
    };
    let since = Timestamp::now().0 - 3_600_000;
    // Ten days of history well before `since`: 2,000 transactions a second apart, each of
    // ten events of the account and ten of another, of three types (no `bounce`: the typed
    // page below asks for a type the history lacks). (A `DO` that commits must be a query of
    // its own.)
    sqlx::raw_sql("SET synchronous_commit = off")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DO $$ BEGIN FOR i IN 1..2000 LOOP
             INSERT INTO events (id, account_id, type, data, created_at)
             SELECT 'evt_' || a || '_' || i || '_' || j, a,
                 (ARRAY['click', 'open', 'delivery'])[1 + j % 3], '{{}}',
                 {base} + i * 1000 + j
             FROM unnest(ARRAY['acc', 'other']) AS a, generate_series(1, 10) AS j;
             COMMIT;
         END LOOP; END $$",
        base = since - 864_000_000
    )))
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::raw_sql("RESET synchronous_commit; ANALYZE events")
        .execute(&mut db)
        .await
        .unwrap();
    // Then, one transaction each, in this order: two hours before `since`; 10 s after it;
    // a hundred 30 s before it (after the one stamped after `since`: out of order within the
    // margin); 40 s after it.
    let a = commit_events(&mut db, "a", &[since - 7_200_000]).await;
    let b = commit_events(&mut db, "b", &[since + 10_000]).await;
    let c = commit_events(&mut db, "c", &[since - 30_000; 100]).await;
    let d = commit_events(&mut db, "d", &[since + 40_000]).await;
    until_the_feed_shows_all(&mut db).await;
    let store = Store::open(&data.location).await.unwrap();
    let feed = async |since, until, after, limit| {
        let filter = EventFilter {
            event_type: None,
            since,
            until,
        };
        let (events, next) = store
            .list_events("acc".into(), filter, after, limit)
            .await
            .unwrap();
        let ids: Vec<String> = events.into_iter().map(|e| e.id).collect();
        (ids, next)
    };
    assert_eq!(
        feed(Some(since), None, None, 10).await.0,
        [&b[..], &d[..]].concat()
    );
    // A page at a time.
    let (first, next) = feed(Some(since), None, None, 1).await;
    assert_eq!(first, b);
    let (rest, next) = feed(Some(since), None, next, 1).await;
    assert_eq!(rest, d);
    assert_eq!(next, None);
    // Up to `since`: the history, the one two hours before and the hundred.
    let (before, next) = feed(None, Some(since), None, 30_000).await;
    assert_eq!((before.len(), next), (20_101, None));
    assert_eq!(before[20_000..], [&a[..], &c[..]].concat());
    // A window of the three hours before `since`, a page of 10 at a time.
    let (window, next) = feed(Some(since - 10_800_000), Some(since), None, 10).await;
    assert_eq!(window, [&a[..], &c[..9]].concat());
    let (window, _) = feed(Some(since - 10_800_000), Some(since), next, 100).await;
    assert_eq!(window, c[9..]);

    // Around an `until` two hours on, the same in reverse: a hundred 10 s after it, then
    // three 30 s before it (out of order within the margin), then one well after.
    let until = since + 7_200_000;
    commit_events(&mut db, "e", &[until + 10_000; 100]).await;
    let f = commit_events(&mut db, "f", &[until - 30_000; 3]).await;
    commit_events(&mut db, "g", &[until + 7_200_000]).await;
    until_the_feed_shows_all(&mut db).await;
    let (up_to, next) = feed(None, Some(until), None, 30_000).await;
    assert_eq!((up_to.len(), next), (20_106, None));
    assert_eq!(up_to[20_103..], f[..]);
    let (first, next) = feed(Some(until - 60_000), Some(until), None, 2).await;
    assert_eq!(first, f[..2]);
    let (rest, next) = feed(Some(until - 60_000), Some(until), next, 2).await;
    assert_eq!(rest, f[2..]);
    assert_eq!(next, None);
    // Of another account: its own.
    let theirs = store
        .list_events(
            "other".into(),
            EventFilter {
                since: Some(since),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert!(theirs.0.is_empty());

    // The searches: `since` starts past the history and the one two hours before it (its
    // margin keeps the hundred), and without that one, past the history; `until` stops with
    // the three (its margin keeps them), past the hundred after it.
    let pos = async |db: &mut sqlx::PgConnection, id: &str| -> (i64, i64) {
        sqlx::query_as("SELECT xid::text::bigint, seq FROM events WHERE id = $1")
            .bind(id.to_owned())
            .fetch_one(db)
            .await
            .unwrap()
    };
    let margin = hookline::store::RECOVER_MARGIN_MS;
    let (a_pos, f_pos) = (pos(&mut db, &a[0]).await, pos(&mut db, &f[0]).await);
    // The history's last transaction's first event of the account.
    let last_old: (i64, i64) = sqlx::query_as(
        "SELECT xid::text::bigint, MIN(seq) FROM events
         WHERE account_id = 'acc' AND id LIKE 'evt_acc_2000_%' GROUP BY xid",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(
        feed_search(&mut db, "acc", since - margin).await.unwrap(),
        (Some(a_pos), a_pos.0)
    );
    assert_eq!(
        feed_search(&mut db, "acc", since - 10_800_000)
            .await
            .unwrap(),
        (Some(last_old), last_old.0),
    );
    assert_eq!(
        feed_search(&mut db, "acc", until + margin).await.unwrap().1,
        f_pos.0
    );
    let first_old = pos(&mut db, "evt_acc_1_1").await;
    assert_eq!(
        feed_search(&mut db, "acc", since - 900_000_000)
            .await
            .unwrap(),
        (None, first_old.0 - 1),
        "all of it is newer"
    );
    assert_eq!(
        feed_search(&mut db, "nobody", since).await.unwrap(),
        (None, 0)
    );

    // With the plan for the values, then with the one for any values.
    sqlx::raw_sql("ANALYZE events")
        .execute(&mut db)
        .await
        .unwrap();
    for mode in ["auto", "force_generic_plan"] {
        plan_with(&mut db, mode).await;
        let page_types = "text, text, bigint, bigint, bigint, bigint, text";
        let after_a = format!("'acc', '{}', {}", a_pos.0, a_pos.1);
        for (name, types, sql, args) in [
            (
                "page",
                page_types,
                FEED,
                format!("{after_a}, NULL, NULL, 11, '9223372036854775807'"),
            ),
            (
                "bounded_page",
                page_types,
                FEED,
                format!("{after_a}, NULL, {until}, 11, '{}'", f_pos.0),
            ),
            (
                "probe",
                "text, text",
                FEED_FIRST_AFTER,
                format!("'acc', '{}'", a_pos.0),
            ),
            ("ends", "text", FEED_ENDS, "'acc'".to_owned()),
            (
                "typed",
                "text, text, bigint, bigint, bigint, bigint, text, text",
                FEED_TYPED,
                // From the start, with the history ahead.
                "'acc', '0', 0, NULL, NULL, 11, '9223372036854775807', 'bounce'".to_owned(),
            ),
        ] {
            let plan = plan_of(&mut db, &format!("feed_{name}_{mode}"), types, sql, &args).await;
            let index = if name == "typed" {
                "events_feed_by_type"
            } else {
                "events_feed "
            };
            assert!(plan.contains(index), "{name} {mode}\n{plan}");
            assert!(!plan.contains("Seq Scan"), "{name} {mode}\n{plan}");
            assert!(!plan.contains("Sort"), "{name} {mode}\n{plan}");
        }
        // With `since` the planner may go by time instead: either way, not the history.
        let args = format!("{after_a}, {since}, NULL, 11, '9223372036854775807'");
        let plan = plan_of(
            &mut db,
            &format!("feed_since_{mode}"),
            page_types,
            FEED,
            &args,
        )
        .await;
        assert!(!plan.contains("Seq Scan"), "{mode}\n{plan}");
    }
}

/// A database whose endpoint row holds its rotated-out secret in the columns before
/// `previous_secrets` (one secret, and its end) gets it as the first of the list, still
/// sealed; the old columns are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_secret_of_the_schema_before_becomes_the_list() {
    let Some((data, mut db)) =
        fresh("the_previous_secret_of_the_schema_before_becomes_the_list").await
    else {
        return;
    };
    let sealer = Sealer::from_base64(&Sealer::generate_key()).unwrap();
    let store = Store::open_sealed(&data.location, sealer.clone())
        .await
        .unwrap();
    let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
    let ep = store
        .insert_endpoint(endpoint_of(&account.id, "https://example.com/a"), 100)
        .await
        .unwrap();
    let (first, now) = (ep.secret.clone(), Timestamp::now());
    let until = Timestamp(now.0 + 60_000);
    let second = hookline_signing::Secret::from_bytes(&[9; 32])
        .unwrap()
        .to_string();
    store
        .update_endpoint(account.id.clone(), ep.id.clone(), move |e| {
            e.rotate_secret(second, until, now)
        })
        .await
        .unwrap()
        .unwrap();
    drop(store);

    let before = MIGRATIONS
        .iter()
        .position(|m| m.contains("ADD COLUMN IF NOT EXISTS previous_secrets"))
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE endpoints ADD COLUMN previous_secret TEXT,
                               ADD COLUMN previous_secret_until BIGINT;
         UPDATE endpoints SET previous_secret = previous_secrets::json -> 0 ->> 'secret',
                              previous_secret_until = (previous_secrets::json -> 0 ->> 'until')::bigint;
         ALTER TABLE endpoints DROP COLUMN previous_secrets;
         DELETE FROM hookline_schema WHERE version > {before};"
    )))
    .execute(&mut db)
    .await
    .unwrap();
    let sealed: String = sqlx::query_scalar("SELECT previous_secret FROM endpoints")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(sealed.starts_with("hlenc1:"), "{sealed}");

    let store = Store::open_sealed(&data.location, sealer).await.unwrap();
    let read = store
        .get_endpoint(account.id.clone(), ep.id.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read.previous_secrets,
        vec![PreviousSecret {
            secret: first,
            until
        }]
    );
    assert_eq!(read.previous_secret_expires_at, Some(until));
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = 'endpoints'
           AND column_name LIKE 'previous%'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(columns, ["previous_secrets"], "the old columns are gone");
}
