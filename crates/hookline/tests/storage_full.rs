//! The disk under a SQLite store fills up while a real `hookline serve` runs on it: writes
//! are refused with `503 storage_full` and store nothing, reads still answer, and once room
//! is made ingest goes on without a restart and every acknowledged event is delivered.
//!
//! The store lives on a small tmpfs mounted in a mount namespace of the server's own
//! (`unshare --mount`), so nothing is left mounted however the test ends; the test reaches
//! the files through `/proc/<pid>/root`. It needs the right to mount (root): without it the
//! test says it was skipped.

mod common;

use common::process::{BIN, Serve, free_port, get_json, post_endpoint, wait_healthy};
use common::{PATIENCE, Receiver, Reply, eventually, eventually_within, valid};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Whether this process may make a mount namespace and mount in it.
fn can_mount() -> bool {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("d=$(mktemp -d) && mount -t tmpfs -o size=1m t \"$d\"; r=$?; umount \"$d\" 2>/dev/null; rmdir \"$d\"; exit $r")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `unshare` without the `HOOKLINE_*` variables of the shell the tests run in (but
/// `HOOKLINE_LOG`), as `common::process::hookline` does for the binary itself.
fn unshare() -> Command {
    let mut cmd = Command::new("unshare");
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("HOOKLINE_") && text != "HOOKLINE_LOG" {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// Fills the filesystem holding `path` with one file there, until a write fails.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x55u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "ENOSPC expected: {e}");
                break;
            }
        }
    }
    // Whatever the page cache took is on the tmpfs already: nothing to flush.
}

async fn post(http: &reqwest::Client, url: String, key: &str, body: Value) -> (u16, Value, bool) {
    let resp = http
        .post(url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp.headers().contains_key("retry-after");
    (status, resp.json().await.unwrap_or_default(), retry_after)
}

/// Every event id the pull API lists.
async fn stored_ids(http: &reqwest::Client, base: &str, key: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/events?limit=1000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = get_json(http, url, key).await;
        for e in page["data"].as_array().unwrap() {
            ids.insert(e["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return ids,
        }
    }
}

#[tokio::test]
async fn a_full_disk_refuses_writes_with_503_and_ingest_resumes_once_room_is_made() {
    if !can_mount() {
        eprintln!("skipped: this process may not mount a tmpfs in a mount namespace of its own");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let key_file = tmp.path().join("key");
    let log_file = tmp.path().join("serve.log");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");

    // In the server's own mount namespace: a 16 MB tmpfs, an account on it (its key written
    // outside), then the server itself, as the same process.
    let script = "mount -t tmpfs -o size=16m hookline-test \"$1\" \
        && \"$2\" account create --name acme --plan pro --data-dir \"$1/data\" > \"$3\" \
        && exec \"$2\" serve --data-dir \"$1/data\" --listen \"$4\" --allow-insecure-urls \
           --allow-private-targets --retry-schedule 200ms,500ms,1s,1s,1s";
    let child = unshare()
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&mnt)
        .arg(BIN)
        .arg(&key_file)
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_file).unwrap())
        .spawn()
        .map(Serve)
        .unwrap();
    // The files as the server sees them.
    let inside: PathBuf = Path::new(&format!("/proc/{}/root", child.0.id())).join(
        mnt.strip_prefix("/")
            .expect("the temporary directory is an absolute path"),
    );
    let http = reqwest::Client::new();
    wait_healthy(&http, &base).await;
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    assert!(key.starts_with("hk_"), "{key}");
    let rx = Receiver::start().await;
    rx.always("sink", Reply::Status(204));
    let (status, ep) = post_endpoint(&http, &base, &key, &rx.url("sink"), &["*"]).await;
    assert_eq!(status, 201, "{ep}");

    let mut acked: BTreeSet<String> = BTreeSet::new();
    let (status, ev, _) = post(
        &http,
        format!("{base}/v1/events"),
        &key,
        json!({"type": "open", "data": valid("open", json!({}))}),
    )
    .await;
    assert_eq!(status, 202, "{ev}");
    acked.insert(ev["id"].as_str().unwrap().to_owned());

    // The disk fills up, but for half a megabyte: batches take that, and the store meets
    // the full disk with committed writes in its WAL that its checkpoints cannot fold
    // into a database file that can no longer grow. From then on writes are refused, and
    // said to be.
    let reserve = inside.join("reserve");
    std::fs::write(&reserve, vec![0x55u8; 512 * 1024]).unwrap();
    let filler = inside.join("filler");
    fill(&filler);
    std::fs::remove_file(&reserve).unwrap();
    let mut refused = None;
    for i in 0..400 {
        let events: Vec<Value> = (0..50)
            .map(|j| json!({"type": "open", "data": valid("open", json!({"i": i, "j": j}))}))
            .collect();
        let (status, body, retry_after) = post(
            &http,
            format!("{base}/v1/events/batch"),
            &key,
            json!({"events": events}),
        )
        .await;
        if status == 202 {
            for e in body["data"].as_array().unwrap() {
                acked.insert(e["id"].as_str().unwrap().to_owned());
            }
            continue;
        }
        refused = Some((status, body, retry_after));
        break;
    }
    let (status, body, retry_after) = refused.expect("20,000 events fit on a full 16 MB disk");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "storage_full", "{body}");
    assert!(retry_after, "a 503 says when to try again: {body}");
    // While the disk stays full, every write is either made (a small one may still find
    // room the refused one left in the WAL) or refused as this one was: never a 500, never
    // stored when refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut refusals = 0;
    for i in 0..500 {
        let (status, body, _) = post(
            &http,
            format!("{base}/v1/events"),
            &key,
            json!({"type": "open", "data": valid("open", json!({"late": i}))}),
        )
        .await;
        match status {
            202 => {
                acked.insert(body["id"].as_str().unwrap().to_owned());
            }
            _ => {
                assert_eq!(
                    (status, &body["error"]["code"]),
                    (503, &json!("storage_full")),
                    "{body}"
                );
                refusals += 1;
                break;
            }
        }
    }
    assert!(refusals > 0, "500 more events fit on a full disk");
    let (status, body) = post_endpoint(&http, &base, &key, &rx.url("other"), &["*"]).await;
    assert!(
        status == 201 || (status, &body["error"]["code"]) == (503, &json!("storage_full")),
        "{status} {body}"
    );
    // The node counts the groups the full disk refused.
    let refused_groups = common::metric(
        &http,
        &base,
        "hookline_sqlite_group_failures_total{reason=\"storage_full\"}",
    )
    .await;
    assert!(
        refused_groups.is_some_and(|n| n >= 1.0),
        "{refused_groups:?}"
    );
    // Reads still answer, and show only what was acknowledged.
    assert_eq!(stored_ids(&http, &base, &key).await, acked);

    // Room is made: ingest goes on, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let after = eventually("an event accepted once room is made", || async {
        let (status, body, _) = post(
            &http,
            format!("{base}/v1/events"),
            &key,
            json!({"type": "open", "data": valid("open", json!({"after": true}))}),
        )
        .await;
        (status == 202).then(|| body["id"].as_str().unwrap().to_owned())
    })
    .await;
    acked.insert(after);
    let (status, body) = post_endpoint(&http, &base, &key, &rx.url("another"), &["open"]).await;
    assert_eq!(status, 201, "{body}");

    // Nothing refused was stored, and everything acknowledged is delivered.
    assert_eq!(stored_ids(&http, &base, &key).await, acked);
    eventually_within(
        "every acknowledged event delivered",
        PATIENCE * 4,
        || async {
            let (_, ids) = rx.got_ids("sink");
            acked.is_subset(&ids).then_some(())
        },
    )
    .await;
    let (_, ids) = rx.got_ids("sink");
    assert!(ids.is_subset(&acked), "only acknowledged events are sent");

    // A checkpoint that keeps failing is logged once, not every half second, and its
    // recovery once room is made.
    let read = || std::fs::read_to_string(&log_file).unwrap();
    let log = if read().contains("WAL checkpoint failed") {
        eventually("the checkpoints' recovery logged", || async {
            let log = read();
            log.contains("WAL checkpoints succeed again").then_some(log)
        })
        .await
    } else {
        read()
    };
    drop(child);
    let failures = log.matches("WAL checkpoint failed").count();
    assert!(
        failures <= 1,
        "{failures} lines of failed checkpoints:\n{log}"
    );
    // The refused groups are said once (within a minute), and the end of it too.
    let said = log.matches("the disk under the database is full").count();
    assert_eq!(said, 1, "{log}");
    assert!(log.contains("the database takes writes again"), "{log}");
    assert!(!log.contains("group commit failed"), "{log}");
}
