//! The store's hot operations on a real SQLite file (WAL, fsync on commit): ingest with
//! fan-out, recording attempts, the poller's claim, and what a poll costs per endpoint.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hookline::model::{Attempt, Endpoint, Plan, Timestamp, new_id};
use hookline::store::{AttemptRecord, NewEvent, Outcome, Store};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn endpoint(account_id: &str, n: usize) -> Endpoint {
    let now = Timestamp::now();
    Endpoint {
        id: new_id("ep"),
        account_id: account_id.to_owned(),
        url: format!("https://example.com/{n}"),
        description: String::new(),
        event_types: vec!["*".into()],
        headers: BTreeMap::new(),
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

fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent {
            id: new_id("evt"),
            event_type: "click".into(),
            data: RawValue::from_string(format!(
                r#"{{"message":{{"message_id":"m-{i}","recipient":"a@example.com"}},"url":"https://example.com","first_click":true}}"#
            ))
            .unwrap(),
            created_at: Timestamp::now(),
            payload: Default::default(),
            restamp: false,
        })
        .collect()
}

/// A successful first attempt.
fn success(delivery_id: String, row: i64, claim: i64, endpoint_id: String) -> AttemptRecord {
    AttemptRecord {
        delivery_id,
        row,
        endpoint_version: 0,
        claim,
        endpoint_id,
        attempt: Some(Attempt {
            attempt: 1,
            started_at: Timestamp::now(),
            duration_ms: 1,
            status_code: Some(200),
            error: None,
            response_body: None,
        }),
        outcome: Outcome::Succeeded,
    }
}

/// A successful first attempt for each delivery of `accepted`.
fn successes(accepted: &[hookline::store::AcceptedEvent]) -> Vec<AttemptRecord> {
    accepted
        .iter()
        .flat_map(|a| a.deliveries.iter())
        .map(|d| success(d.id.clone(), d.row, 1, d.endpoint.id.clone()))
        .collect()
}

/// A store with one account and `fanout` endpoints.
async fn setup(dir: &std::path::Path, fanout: usize) -> (Store, String) {
    let mut store = Store::sqlite(dir).unwrap();
    // Outcomes written alone, each in a commit of its own: what they cost, not the wait
    // for another write to ride with (nothing else writes here).
    store.set_rider_wait(Duration::ZERO);
    let account = store
        .create_account("bench".into(), Plan::Pro)
        .await
        .unwrap();
    for n in 0..fanout {
        store
            .insert_endpoint(endpoint(&account.id, n), u32::MAX)
            .await
            .unwrap();
    }
    (store, account.id)
}

/// `iters` rounds of: `events` events, left waiting for room, then a claim of 1,000 deliveries
/// (timed), then their outcomes, so that nothing is due for the next round.
async fn timed_claims(store: Store, account: String, events_n: usize, iters: u64) -> Duration {
    let mut timed = Duration::ZERO;
    for _ in 0..iters {
        store
            .insert_events(account.clone(), events(events_n), |_| false, |_| {})
            .await
            .unwrap();
        let start = Instant::now();
        let claimed = store.claim_due(Timestamp::now(), |_| 1000).await.unwrap();
        timed += start.elapsed();
        assert_eq!(claimed.len(), 1000);
        let released = claimed
            .into_iter()
            .map(|d| success(d.delivery_id, d.row, d.claim, d.endpoint.id.clone()))
            .collect();
        store.record_attempts(released).await.unwrap();
    }
    timed
}

fn store_ops(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("insert_events");
    for (fanout, batch) in [(1usize, 1usize), (10, 1), (1, 100)] {
        let dir = tempfile::tempdir().unwrap();
        let (store, account) = rt.block_on(setup(dir.path(), fanout));
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::new(format!("fanout {fanout}"), batch), |b| {
            b.to_async(&rt).iter(|| {
                let (store, account) = (store.clone(), account.clone());
                async move {
                    store
                        .insert_events(account, events(batch), |_| false, |_| {})
                        .await
                        .unwrap()
                }
            })
        });
    }
    group.finish();

    // Record 100 attempts per write, as the recorder does under load.
    let dir = tempfile::tempdir().unwrap();
    let (store, account) = rt.block_on(setup(dir.path(), 1));
    let mut group = c.benchmark_group("record_attempts");
    group.throughput(Throughput::Elements(100));
    group.bench_function("100 successes", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (store, account) = (store.clone(), account.clone());
            async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let accepted = store
                        .insert_events(account.clone(), events(100), |_| true, |_| {})
                        .await
                        .unwrap();
                    let records = successes(&accepted);
                    let start = Instant::now();
                    store.record_attempts(records).await.unwrap();
                    timed += start.elapsed();
                }
                timed
            }
        })
    });
    group.finish();

    // The poller's claim of 1,000 due deliveries.
    let mut group = c.benchmark_group("claim_due");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000 due", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| timed_claims(store.clone(), account.clone(), 1000, iters))
    });
    group.finish();

    // What every poll costs when many endpoints have nothing due: the claim looks at each
    // endpoint with room, and the next due time is one index seek per endpoint.
    let dir = tempfile::tempdir().unwrap();
    let (store, account) = rt.block_on(setup(dir.path(), 1000));
    let mut group = c.benchmark_group("poll, 1000 endpoints, nothing due");
    group.bench_function("claim_due", |b| {
        b.to_async(&rt).iter(|| {
            let store = store.clone();
            async move {
                let claimed = store.claim_due(Timestamp::now(), |_| 1000).await.unwrap();
                assert!(claimed.is_empty());
            }
        })
    });
    group.bench_function("next_due_at", |b| {
        b.to_async(&rt).iter(|| {
            let store = store.clone();
            async move { assert_eq!(store.next_due_at(Timestamp::now()).await.unwrap(), None) }
        })
    });
    group.finish();

    // A claim that finds one delivery at each of 1,000 endpoints (an event all of them take,
    // left waiting for room): one scan of each endpoint's rows.
    let mut group = c.benchmark_group("claim_due, 1000 endpoints");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("one waiting at each", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| timed_claims(store.clone(), account.clone(), 1, iters))
    });
    group.finish();

    // The poller's sweep, once a minute, of an endpoint that has been down (breaker open)
    // while 100,000 deliveries queued for it, none yet old enough to end.
    let dir = tempfile::tempdir().unwrap();
    let (store, account) = rt.block_on(setup(dir.path(), 1));
    let (store, down) = rt.block_on(async move {
        for _ in 0..100 {
            store
                .insert_events(account.clone(), events(1000), |_| false, |_| {})
                .await
                .unwrap();
        }
        let down = store
            .list_endpoints(account, None, 1)
            .await
            .unwrap()
            .items
            .remove(0)
            .id;
        (store, down)
    });
    let mut group = c.benchmark_group("stale sweep");
    group.bench_function("an endpoint down behind 100,000 young deliveries", |b| {
        b.to_async(&rt).iter(|| {
            let (store, down) = (store.clone(), down.clone());
            async move {
                let before = Timestamp(Timestamp::now().0 - 3 * 86_400_000);
                assert_eq!(store.fail_stale(down, before, true).await.unwrap(), 0);
            }
        })
    });
    group.finish();

    // Turning off (and on again) an endpoint with 100,000 delivered deliveries behind it.
    let dir = tempfile::tempdir().unwrap();
    let (store, account) = rt.block_on(setup(dir.path(), 1));
    let (store, busy) = rt.block_on(async move {
        for _ in 0..100 {
            let accepted = store
                .insert_events(account.clone(), events(1000), |_| true, |_| {})
                .await
                .unwrap();
            store.record_attempts(successes(&accepted)).await.unwrap();
        }
        let busy = store
            .list_endpoints(account.clone(), None, 1)
            .await
            .unwrap()
            .items
            .remove(0);
        (store, (account, busy.id))
    });
    let mut group = c.benchmark_group("turning an endpoint off");
    group.bench_function("and on, behind 100,000 delivered deliveries", |b| {
        b.to_async(&rt).iter(|| {
            let (store, (account, id)) = (store.clone(), busy.clone());
            async move {
                for enabled in [false, true] {
                    store
                        .update_endpoint(account.clone(), id.clone(), move |e| e.enabled = enabled)
                        .await
                        .unwrap();
                }
            }
        })
    });
    group.finish();

    // Turning off an endpoint that was down while 50,000 deliveries queued for it: the one
    // write of the change itself, which every ingest waits behind (the rest of the backlog
    // ends in writes of their own, untimed here, as is turning it on again).
    let dir = tempfile::tempdir().unwrap();
    let (store, account) = rt.block_on(setup(dir.path(), 1));
    let down = rt.block_on(async {
        store
            .list_endpoints(account.clone(), None, 1)
            .await
            .unwrap()
            .items
            .remove(0)
            .id
    });
    let mut group = c.benchmark_group("turning an endpoint off, a backlog behind it");
    group.sample_size(10);
    group.bench_function("its own write, behind 50,000 waiting deliveries", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (store, account, down) = (store.clone(), account.clone(), down.clone());
            async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    for _ in 0..50 {
                        store
                            .insert_events(account.clone(), events(1000), |_| false, |_| {})
                            .await
                            .unwrap();
                    }
                    let start = Instant::now();
                    store
                        .update_endpoint(account.clone(), down.clone(), |e| e.enabled = false)
                        .await
                        .unwrap();
                    timed += start.elapsed();
                    store.end_turned_off().await.unwrap();
                    store
                        .update_endpoint(account.clone(), down.clone(), |e| e.enabled = true)
                        .await
                        .unwrap();
                }
                timed
            }
        })
    });
    group.finish();
}

criterion_group!(benches, store_ops);
criterion_main!(benches);
