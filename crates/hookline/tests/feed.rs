//! The pull API (`GET /v1/events`), on both storage engines: a reader paging through the
//! feed while writers ingest sees every event exactly once; filters and `?after=` work; a
//! page of a rare type reads a bounded stretch of the feed and goes on from there.

mod common;

use common::{Data, Engine, TestServer, valid};
use hookline::model::{Plan, Timestamp, new_id};
use hookline::store::{EventFilter, FEED_TYPE_SCAN, NewEvent, Store};
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
    ] {
        let (status, body) = s.get(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = s.get("/v1/events?after=evt_unknown").await;
    assert_eq!(status, 404);
}

/// A page of one type reads at most `FEED_TYPE_SCAN` of the account's events: one of a rare
/// type stops there, short or empty, with a cursor from where it stopped, and paging on shows
/// every event of the type once, at any page size, those on and right after a stretch's last
/// event included; other accounts' events do not count; `since` and `until` filter too.
async fn a_page_of_a_rare_type_reads_a_bounded_stretch_and_goes_on_from_there(engine: Engine) {
    let scan = FEED_TYPE_SCAN;
    let data = Data::fresh(&engine).await;
    let store = Store::open(&data.location).await.unwrap();
    let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
    let other = store.create_account("b".into(), Plan::Pro).await.unwrap();
    // 3.5 scans' worth of the account's clicks, 1,000 a commit, each with 500 of another
    // account's events (the first a bounce); bounces as the account's 3rd, 4th, (scan)th,
    // (scan + 1)th and (3 scans + 5)th events. The event at index n is stamped n ms after
    // `base`.
    let event = |event_type: &str, at: i64| NewEvent {
        id: new_id("evt"),
        event_type: event_type.into(),
        data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        created_at: Timestamp(at),
        payload: Default::default(),
    };
    let base = Timestamp::now().0 - 3_600_000;
    let mut ids = Vec::new();
    let mut bounces = Vec::new();
    for start in (0..scan * 7 / 2).step_by(1_000) {
        let events: Vec<NewEvent> = (start..start + 1_000)
            .map(|n| {
                let bounce = [2, 3, scan - 1, scan, 3 * scan + 4].contains(&n);
                event(if bounce { "bounce" } else { "click" }, base + n as i64)
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
            .map(|i| event(if i == 0 { "bounce" } else { "click" }, base))
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
    // On PostgreSQL the feed shows a commit once every older transaction on the server has
    // ended: wait until it shows the last one.
    let before_last = position(&ids[ids.len() - 2]).await;
    common::eventually("the feed shows every event", || async {
        let (page, _) = store
            .list_events(
                account.id.clone(),
                EventFilter::default(),
                Some(before_last),
                1,
            )
            .await
            .unwrap();
        (page.len() == 1).then_some(())
    })
    .await;

    let filtered = |since, until| EventFilter {
        event_type: Some("bounce".into()),
        since,
        until,
    };
    let page = async |filter: EventFilter, after, limit| {
        let (events, next) = store
            .list_events(account.id.clone(), filter, after, limit)
            .await
            .unwrap();
        (events.into_iter().map(|e| e.id).collect::<Vec<_>>(), next)
    };
    // Pages of 10: each stretch holds three, one, none and one, and each stops at the
    // account's (scan)th, (2 scans)th and (3 scans)th events.
    let mut after = None;
    let mut pages = Vec::new();
    let mut cursors = Vec::new();
    loop {
        let (page_ids, next) = page(filtered(None, None), after, 10).await;
        pages.push(page_ids);
        match next {
            Some(pos) => cursors.push(pos),
            None => break,
        }
        after = next;
    }
    let want: Vec<Vec<String>> = vec![
        bounces[..3].to_vec(),
        bounces[3..4].to_vec(),
        vec![],
        bounces[4..].to_vec(),
    ];
    assert_eq!(pages, want);
    let mut stops = Vec::new();
    for n in [scan, 2 * scan, 3 * scan] {
        stops.push(position(&ids[n - 1]).await);
    }
    assert_eq!(cursors, stops);
    // Pages of 1, 2 and 3 (the 3rd bounce, the stretch's last event, is a full page's one
    // more, then a full page's last): every bounce once, in order.
    for limit in [1, 2, 3] {
        let mut after = None;
        let mut seen = Vec::new();
        loop {
            let (page_ids, next) = page(filtered(None, None), after, limit).await;
            seen.extend(page_ids);
            if next.is_none() {
                break;
            }
            after = next;
        }
        assert_eq!(seen, bounces, "pages of {limit}");
    }
    // A common type fills its page as before.
    let clicks = EventFilter {
        event_type: Some("click".into()),
        ..Default::default()
    };
    let (page_ids, more) = page(clicks, None, 100).await;
    assert_eq!((page_ids.len(), more.is_some()), (100, true));
    // `since` and `until` filter the events read by their stamps (both bounds' searches
    // start and stop a margin wide of them, here around the whole history).
    let first = async |since, until| page(filtered(since, until), None, 10).await.0;
    assert_eq!(first(Some(base + 3), None).await, bounces[1..3]);
    assert_eq!(first(None, Some(base + 3)).await, bounces[..1]);
    assert_eq!(first(Some(base + 2), Some(base + 4)).await, bounces[..2]);
}

on_both_engines!(
    a_reader_paging_while_writers_ingest_sees_every_event_once,
    a_page_of_a_rare_type_reads_a_bounded_stretch_and_goes_on_from_there,
);
