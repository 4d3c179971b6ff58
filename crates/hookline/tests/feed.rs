//! The pull API (`GET /v1/events`), on both storage engines: a reader paging through the
//! feed while writers ingest sees every event exactly once; filters and `?after=` work; a
//! page of a rare type is full however far apart its events are, and resumes across any gap.

mod common;

use common::{Data, Engine, TestServer, valid};
use hookline::model::{Plan, Timestamp, new_id};
use hookline::store::{EventFilter, NewEvent, Store};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;

async fn a_reader_paging_while_writers_ingest_sees_every_event_once(engine: Engine) {
    let s = Arc::new(TestServer::start(&engine).await);

    // Four writers: single events and batches, concurrently.
    let mut writers = Vec::new();
    for w in 0..4 {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..40 {
                if w % 2 == 0 {
                    let (status, ev) = s
                        .post(
                            "/v1/events",
                            json!({"type": "open", "data": valid("open", json!({"w": w, "i": i}))}),
                        )
                        .await;
                    assert_eq!(status, 202, "{ev}");
                    ids.push(ev["id"].as_str().unwrap().to_owned());
                } else {
                    let events: Vec<Value> = (0..3)
                        .map(|j| json!({"type": "click", "data": valid("click", json!({"w": w, "i": i, "j": j}))}))
                        .collect();
                    let (status, b) = s.post("/v1/events/batch", json!({"events": events})).await;
                    assert_eq!(status, 202, "{b}");
                    for e in b["data"].as_array().unwrap() {
                        ids.push(e["id"].as_str().unwrap().to_owned());
                    }
                }
            }
            ids
        }));
    }

    // The reader: small pages; at the end of the feed it resumes after the last event seen.
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut writing = true;
    let mut idle_pages_after_writers = 0;
    while idle_pages_after_writers < 3 {
        let path = match (&cursor, seen.last()) {
            (Some(c), _) => format!("/v1/events?limit=7&cursor={c}"),
            (None, Some(last)) => format!("/v1/events?limit=7&after={last}"),
            (None, None) => "/v1/events?limit=7".to_owned(),
        };
        let (status, page) = s.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let items = page["data"].as_array().unwrap();
        seen.extend(items.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if writing {
            writing = !writers.iter().all(|w| w.is_finished());
        } else if items.is_empty() {
            idle_pages_after_writers += 1;
        }
        if items.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let mut written = BTreeSet::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    let distinct: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(distinct.len(), seen.len(), "an event was seen twice");
    assert_eq!(
        distinct, written,
        "the reader saw exactly the events written"
    );
    assert_eq!(written.len(), 2 * 40 + 2 * 40 * 3);

    // Filters: by type, and by time.
    let (_, opens) = s.get("/v1/events?type=open&limit=1000").await;
    assert_eq!(opens["data"].as_array().unwrap().len(), 80);
    assert!(
        opens["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] == "open")
    );
    let (_, none) = s.get("/v1/events?until=2000-01-01T00:00:00Z").await;
    assert_eq!(none["data"].as_array().unwrap().len(), 0);
    let (_, all) = s
        .get("/v1/events?since=2000-01-01T00:00:00Z&limit=1000")
        .await;
    assert_eq!(all["data"].as_array().unwrap().len(), written.len());

    // Bad queries change nothing and say why.
    for bad in [
        "/v1/events?since=yesterday",
        "/v1/events?cursor=nonsense",
        "/v1/events?limit=0",
        "/v1/events?type=",
        "/v1/events?type=Open%20Events",
    ] {
        let (status, body) = s.get(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // What a bad query said is echoed in part, however long it was.
    let long = "x".repeat(5000);
    for (bad, said) in [
        (format!("/v1/events?type={long}"), "type: "),
        (format!("/v1/events?since={long}"), "since must be"),
    ] {
        let (status, body) = s.get(&bad).await;
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(said), "{message}");
        assert!(message.contains("(5000 bytes)"), "{message}");
        assert!(message.len() < 400, "{message}");
    }
    let (status, body) = s.get("/v1/events?after=evt_unknown").await;
    assert_eq!(status, 404);
    assert_eq!(
        body["error"]["message"], "after: no event \"evt_unknown\"",
        "no time to tell for an id that holds none"
    );
    // What is not even shaped like an event id is malformed, as a bad cursor is.
    for bad in ["garbage", "ep_01J0000000000000000000000", ""] {
        let (status, body) = s.get(&format!("/v1/events?after={bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{body}");
    }
    // A name an account's own type could have, with no events: an empty page, the end. So
    // is `ping`, the type of `/test`'s deliveries, which are never kept as events.
    let rx = common::Receiver::start().await;
    let ep = s.endpoint(&rx.url("r"), &["*"]).await;
    let test = format!("/v1/endpoints/{}/test", ep["id"].as_str().unwrap());
    let (status, body) = s.post(&test, json!({})).await;
    assert!((200..300).contains(&status), "{body}");
    rx.wait_for("r", 1).await;
    for typed in ["/v1/events?type=crm.synced", "/v1/events?type=ping"] {
        let (status, page) = s.get(typed).await;
        assert_eq!(status, 200, "{typed}: {page}");
        assert_eq!(page["data"].as_array().unwrap().len(), 0, "{typed}");
        assert!(page["next_cursor"].is_null(), "{page}");
    }
}

/// A page of one type holds only that type's events and is full unless it is the feed's end,
/// however many of the account's other events lie between them; a consumer of the type that
/// resumes after the last one it saw (`after`) gets the next across any gap; other accounts'
/// events do not count; `since` and `until` filter too.
async fn a_page_of_a_rare_type_is_full_and_resumes_across_any_gap(engine: Engine) {
    let data = Data::fresh(&engine).await;
    let store = Store::open(&data.location).await.unwrap();
    let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
    let other = store.create_account("b".into(), Plan::Pro).await.unwrap();
    // 24,000 of the account's events, 1,000 a commit, each commit followed by 500 of another
    // account's events (the first a bounce). The account's bounces are its events 2, 3,
    // 11,999, 12,000 and 23,997 (from 0): two pairs with 12,000 clicks between them. The
    // event at index n is stamped n ms after `base`.
    let base = Timestamp::now().0 - 3_600_000;
    let mut ids = Vec::new();
    let mut bounces = Vec::new();
    for start in (0..24_000).step_by(1_000) {
        let events: Vec<NewEvent> = (start..start + 1_000)
            .map(|n| {
                let bounce = [2, 3, 11_999, 12_000, 23_997].contains(&n);
                given(if bounce { "bounce" } else { "click" }, base + n as i64)
            })
            .collect();
        for ev in &events {
            if ev.event_type == "bounce" {
                bounces.push(ev.id.clone());
            }
            ids.push(ev.id.clone());
        }
        store
            .insert_events(account.id.clone(), events, |_| true, |_| {})
            .await
            .unwrap();
        let theirs = (0..500)
            .map(|i| given(if i == 0 { "bounce" } else { "click" }, base))
            .collect();
        store
            .insert_events(other.id.clone(), theirs, |_| true, |_| {})
            .await
            .unwrap();
    }
    let position = async |id: &str| {
        store
            .feed_position(account.id.clone(), id.to_owned())
            .await
            .unwrap()
            .unwrap()
    };
    until_the_feed_shows_the_last(&store, &account.id, &ids[ids.len() - 2]).await;

    let filtered = |since, until| EventFilter {
        event_type: Some("bounce".into()),
        since,
        until,
    };
    let page = async |filter: EventFilter, after, limit| {
        let wanted = filter.event_type.clone();
        let (events, next) = store
            .list_events(account.id.clone(), filter, after, limit)
            .await
            .unwrap();
        assert!(
            events
                .iter()
                .all(|e| Some(&e.event_type) == wanted.as_ref()),
            "only events of the type asked for"
        );
        (events.into_iter().map(|e| e.id).collect::<Vec<_>>(), next)
    };
    // One page of 10 holds all five, and is the end.
    assert_eq!(
        page(filtered(None, None), None, 10).await,
        (bounces.clone(), None)
    );
    // Pages of 1 to 5: each page but the last is full, the last is not empty, and together
    // they hold every bounce once, in order.
    for limit in 1..=5 {
        let mut after = None;
        let mut pages = Vec::new();
        loop {
            let (page_ids, next) = page(filtered(None, None), after, limit).await;
            pages.push(page_ids);
            if next.is_none() {
                break;
            }
            after = next;
        }
        let (last, full) = pages.split_last().unwrap();
        assert!(
            full.iter().all(|p| p.len() == limit),
            "pages of {limit}: {pages:?}"
        );
        assert!(!last.is_empty(), "pages of {limit}: {pages:?}");
        assert_eq!(pages.concat(), bounces, "pages of {limit}");
    }
    // A consumer of bounces that resumes after the last one it saw gets the next one,
    // across the 12,000 clicks between them, and nothing after the last.
    for (k, seen) in bounces.iter().enumerate() {
        let (page_ids, next) = page(filtered(None, None), Some(position(seen).await), 1).await;
        assert_eq!(
            page_ids,
            bounces[k + 1..].iter().take(1).cloned().collect::<Vec<_>>()
        );
        assert_eq!(next.is_some(), k + 2 < bounces.len(), "after bounce {k}");
    }
    // A type with no events: an empty page, and the end.
    let none = EventFilter {
        event_type: Some("complaint".into()),
        ..Default::default()
    };
    assert_eq!(page(none, None, 10).await, (vec![], None));
    // A common type fills its page as before.
    let clicks = EventFilter {
        event_type: Some("click".into()),
        ..Default::default()
    };
    let (page_ids, more) = page(clicks, None, 100).await;
    assert_eq!((page_ids.len(), more.is_some()), (100, true));
    assert_eq!(page_ids[..2], ids[..2]);
    // `since` and `until` filter the events read by their stamps (both bounds' searches
    // start and stop a margin wide of them, here around the whole history).
    let first = async |since, until| page(filtered(since, until), None, 10).await.0;
    assert_eq!(first(Some(base + 3), None).await, bounces[1..]);
    assert_eq!(first(None, Some(base + 3)).await, bounces[..1]);
    assert_eq!(first(Some(base + 2), Some(base + 4)).await, bounces[..2]);
    assert_eq!(
        first(Some(base + 3), Some(base + 12_000)).await,
        bounces[1..3]
    );
}

/// An event of `event_type` given a time of its own, `at` (ms), and empty data.
fn given(event_type: &str, at: i64) -> NewEvent {
    NewEvent {
        id: new_id("evt"),
        event_type: event_type.into(),
        data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        created_at: Timestamp(at),
        payload: Default::default(),
        restamp: false,
    }
}

/// On PostgreSQL the feed shows a commit once every older transaction on the server has ended:
/// waits until the account's feed shows the event after `before_last`, the last one written.
async fn until_the_feed_shows_the_last(store: &Store, account_id: &str, before_last: &str) {
    let position = store
        .feed_position(account_id.to_owned(), before_last.to_owned())
        .await
        .unwrap()
        .unwrap();
    common::eventually("the feed shows every event", || async {
        let (page, _) = store
            .list_events(
                account_id.to_owned(),
                EventFilter::default(),
                Some(position),
                1,
            )
            .await
            .unwrap();
        (page.len() == 1).then_some(())
    })
    .await;
}

/// Events stamped while the clock ran two minutes ahead (given those stamps), then a
/// restart on a clock set right: new events are stamped no earlier than the stored ones
/// (stamps never go back), so a page with `since` still finds every event of its time.
/// Without that, the search by time (which seeks by row order) would land among the later
/// rows stamped two minutes earlier, and skip the events it was asked for. And an event
/// whose write starts long after ingest stamped it is stamped again, its envelope too; one
/// given a time of its own keeps it.
async fn stamps_that_ran_ahead_before_a_restart_hide_no_event_from_a_search_by_time(
    engine: Engine,
) {
    let data = Data::fresh(&engine).await;
    let store = Store::open(&data.location).await.unwrap();
    let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
    let now = Timestamp::now().0;
    let ahead = now + 120_000;
    // Ten commits of an hour ago, then ten while the clock ran ahead.
    let mut ahead_ids = Vec::new();
    for at in [now - 3_600_000, ahead] {
        for _ in 0..10 {
            let events: Vec<NewEvent> = (0..10).map(|_| given("click", at)).collect();
            if at == ahead {
                ahead_ids.extend(events.iter().map(|e| e.id.clone()));
            }
            store
                .insert_events(account.id.clone(), events, |_| true, |_| {})
                .await
                .unwrap();
        }
    }
    drop(store);

    // Restarted with the clock set right: ingest's stamps hold at the newest stored one.
    let store = Store::open(&data.location).await.unwrap();
    let stamped = |at: Timestamp| {
        NewEvent::accepted(
            new_id("evt"),
            "click".into(),
            serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            at,
        )
    };
    let accepted = async |at: Timestamp| {
        let mut out = store
            .insert_events(account.id.clone(), vec![stamped(at)], |_| true, |_| {})
            .await
            .unwrap();
        out.remove(0)
    };
    // Four times as many as before the restart, so that the search's first probes land
    // among them.
    let mut later = Vec::new();
    for _ in 0..40 {
        let events: Vec<NewEvent> = (0..10)
            .map(|_| {
                let stamp = store.stamp();
                assert!(
                    stamp.0 >= ahead,
                    "{} ms behind the newest stored",
                    ahead - stamp.0
                );
                stamped(stamp)
            })
            .collect();
        later.extend(events.iter().map(|e| e.id.clone()));
        store
            .insert_events(account.id.clone(), events, |_| true, |_| {})
            .await
            .unwrap();
    }
    until_the_feed_shows_the_last(&store, &account.id, &later[later.len() - 2]).await;
    // Since a time after the restart by the clock set right, before the events of the clock
    // that ran ahead: those events first, then all the later ones.
    let since = EventFilter {
        since: Some(now + 100_000),
        ..Default::default()
    };
    let (page, _) = store
        .list_events(account.id.clone(), since, None, 1_000)
        .await
        .unwrap();
    let ids: Vec<String> = page.into_iter().map(|e| e.id).collect();
    assert_eq!(ids, [ahead_ids, later].concat());

    // A write that starts long after ingest's stamp stamps the event again, and builds its
    // envelope from the new stamp; an event given a time of its own keeps it.
    let stale = Timestamp(Timestamp::now().0 - 30_000);
    let ev = accepted(stale).await;
    assert!(
        ev.event.created_at.0 >= ahead,
        "stamped again, by the clock of stamps"
    );
    let envelope: Value = serde_json::from_slice(&ev.payload).unwrap();
    let mut stamped = Vec::new();
    ev.event.created_at.push_rfc3339(&mut stamped);
    assert_eq!(
        envelope["timestamp"],
        String::from_utf8(stamped).unwrap(),
        "the envelope carries the new stamp"
    );
    let stored = store
        .get_event(account.id.clone(), ev.event.id.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.created_at, ev.event.created_at);
    let own = store
        .insert_events(
            account.id.clone(),
            vec![given("click", stale.0)],
            |_| true,
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(own[0].event.created_at, stale);
}

on_both_engines!(
    a_reader_paging_while_writers_ingest_sees_every_event_once,
    a_page_of_a_rare_type_is_full_and_resumes_across_any_gap,
    stamps_that_ran_ahead_before_a_restart_hide_no_event_from_a_search_by_time,
);
