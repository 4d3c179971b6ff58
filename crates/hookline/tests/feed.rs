//! The pull API (`GET /v1/events`), on both storage engines: a reader paging through the
//! feed while writers ingest sees every event exactly once; filters and `?after=` work.

mod common;

use common::{Engine, TestServer, valid};
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

on_both_engines!(a_reader_paging_while_writers_ingest_sees_every_event_once);
