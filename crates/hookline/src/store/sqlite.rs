//! The embedded SQLite engine.
//!
//! - One **writer thread** owns the only write connection. Callers hand it closures; it runs
//!   every closure that is waiting, each in its own savepoint, inside one transaction, commits
//!   once (WAL, `synchronous=FULL`: the commit is fsynced) and only then answers each caller.
//!   Concurrent requests therefore share one fsync (group commit), and a caller that got `Ok`
//!   knows its rows are on disk.
//! - Attempt outcomes are **riders**: they join the next group that commits anyway (after
//!   its other jobs) and cause a commit of their own only when none comes within
//!   [`RIDER_WAIT`]. Under light load that spares the disk a flush per delivery, which every
//!   event's commit would otherwise queue behind; under heavy load the next group forms at
//!   once, so they wait only for it.
//! - The **WAL stays bounded** under a load that never pauses: past a threshold the writer
//!   checkpoints the rest between two groups, so the WAL starts over (`WalKeeper`).
//! - A delivery that **waits for room** (ingest did not admit it) is `pending` with no due
//!   time, so it is in no index of due work: its endpoint's `waiting_from` marks where the
//!   claim looks for such rows, in row order (`mark_waiting` holds the invariant). An
//!   endpoint that is down while its events keep coming then costs each commit one index
//!   entry of its own (`deliveries_by_endpoint`), not two.
//! - Each group reports to the process's metrics: how long the writer spent on it, from its
//!   first job to its answers and the writer's own checkpoint if one followed
//!   (`hookline_sqlite_group_commit_duration_seconds`); how long of that its successful
//!   `COMMIT` took, writing the WAL frames and the fsync every caller waits for
//!   (`hookline_sqlite_commit_duration_seconds`); and how many write jobs it held
//!   (`hookline_sqlite_group_commit_jobs`). Their sums over an interval tell how busy the
//!   one writer is, and how much of that is its commits.
//! - A small pool of **read connections** serves queries on blocking threads; WAL lets them
//!   read while the writer writes.
//! - `hookline serve` holds an exclusive lock on `serve.lock` in the data directory: one
//!   SQLite database has one dispatcher, so a delivery marked `delivering` belongs to the
//!   running process, and at start every `delivering` row is put back to `pending` (or
//!   ended, its endpoint turned off or removed meanwhile).

use super::sealing::{SealedColumns, Sealer, check_recorded_key, reseal_row};
use super::stamps::Stamps;
use super::{
    AcceptedEvent, AcceptedSummary, AttemptRecord, Context, DeliveryFilter, DueDelivery,
    EventFilter, FeedPos, GONE_REASON, IdempotencyKey, Ingested, NewDelivery, NewEvent,
    OFF_DISABLED, OFF_GONE, OFF_REMOVED, Outcome, Page, RetryClaim, RetryRefusal, StoreError,
    off_reason, recorded_answer,
};
use crate::model::{
    Account, ApiKey, Attempt, CustomEventType, Delivery, DeliveryStatus, Endpoint, Event, Plan,
    Timestamp, envelope, new_id,
};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use tokio::sync::{Semaphore, mpsc, oneshot};

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A write: run against the open transaction (or `None` when it could not be opened),
/// returning what to do once the commit is known, and whether it failed with changes of its
/// own left in the transaction (then the whole group must be rolled back).
type WriteJob = Box<dyn FnOnce(Option<&Connection>) -> (Completion, bool) + Send>;

/// How a write job is kept apart from the others of its group.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// In a savepoint of its own: a failure undoes the job alone. Costs a copy of every page
    /// the job touches into the savepoint's journal.
    Savepoint,
    /// In the group's transaction directly: a failure after the job's first write rolls the
    /// whole group back, and every job of the group reports it; one before any write costs
    /// the others nothing. Only for jobs that cannot fail after writing but on a database
    /// error (which mostly aborts the transaction anyway): ingest's inserts.
    Group,
}

/// The database file in the data directory.
const DB_FILE: &str = "hookline.db";

/// The writer thread's name: at most 15 bytes, so that Linux keeps it whole
/// (`/proc/PID/task/TID/comm`), where `hookline bench` tells the threads apart.
pub const WRITER_THREAD: &str = "sqlite-writer";
/// The checkpointer thread's name, likewise.
pub const CHECKPOINT_THREAD: &str = "sqlite-checkpt";
/// The writer connection's page cache, in KiB (the readers keep 16 MB each). What the writer
/// touches is the right edge of each B-tree and the rows it inserted moments before, so 4 MB
/// holds it. A larger cache cost the writer at the end of about every other transaction: a
/// B-tree rebalance leaves a page numbered far past the end of the file in the cache, and
/// the cache then walks every one of its hash slots to drop it (`pcache1TruncateUnsafe`,
/// 2.4 % of the server's CPU with 16 MB). With 4 MB the writer spent about 7 % less CPU per
/// single event, relative to the runtime's, and the backlog drained as fast (BENCHMARKS.md,
/// the twenty-first host).
const WRITER_CACHE_KIB: u32 = 4000;
/// How many queued writes one transaction takes at most.
const MAX_GROUP: usize = 2048;
const READERS: usize = 4;
/// Prepared statements each connection keeps (rusqlite keeps 16 unless told): the store has
/// some fifty it prepares and keeps, and one pushed out is parsed and planned again the next
/// time it runs.
const STATEMENT_CACHE: usize = 96;
/// The most deliveries one claim takes, so that it never holds the writer for long.
pub const MAX_CLAIM: usize = 2000;
/// How often the checkpointer folds the WAL back into the database file when nothing
/// nudges it sooner.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// WAL frames the writer commits between two nudges of the checkpointer (about 2 MiB): the
/// closer the checkpointer keeps behind, the less is left for the writer's own checkpoint
/// (1.4-1.6 ms at 512 frames, 4-5 ms at 2,048, single-event requests at full load).
const CHECKPOINT_NUDGE_FRAMES: i32 = 512;
/// WAL frames after which the writer checkpoints the rest itself, between two groups, so
/// that its next commit starts the WAL over from its first frame (about 34 MB, under
/// `journal_size_limit`).
const WAL_RESTART_FRAMES: i32 = 8192;
/// WAL frames after a writer's checkpoint that did not lead to a restart before the next try.
const WAL_RETRY_FRAMES: i32 = 2048;
/// How long a writer's second try at restarting the WAL waits for readers to leave it.
const WAL_RESTART_WAIT: std::time::Duration = std::time::Duration::from_millis(20);
/// How long any connection waits for a lock before it fails busy.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A group commit slower than this is logged as a warning.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(100);
/// A group commit slower than this is logged at debug level
/// (`HOOKLINE_LOG=hookline::store=debug`): enough to line a latency tail up with the disk.
const NOTED_COMMIT: std::time::Duration = std::time::Duration::from_millis(10);
/// The longest a rider waits for a group to join before it asks for a commit of its own.
pub const RIDER_WAIT: std::time::Duration = std::time::Duration::from_millis(25);

/// Writes that wait to join the writer's next group (see the module's head).
#[derive(Clone, Default)]
struct Riders(Arc<Mutex<Vec<WriteJob>>>);

impl Riders {
    /// The waiting jobs. Only pushes and drains happen under the lock, so a poisoned lock
    /// still holds a sound list.
    fn slot(&self) -> std::sync::MutexGuard<'_, Vec<WriteJob>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    writer: mpsc::Sender<WriteJob>,
    riders: Riders,
    rider_wait: std::time::Duration,
    /// The most rows one job reads when it ends a turned-off endpoint's waiting deliveries
    /// ([`END_BATCH`] but in tests).
    end_batch: usize,
    readers: Arc<ReadPool>,
    path: Arc<PathBuf>,
    subscribers: Subscribers,
    /// Seals endpoint secrets on the way in and opens them on the way out.
    sealer: Arc<Sealer>,
    /// Dropped with the last clone of the store (and the writer thread's copy): stops the
    /// checkpointer.
    checkpointer: Checkpointer,
    /// The clock of event stamps, started at the newest one stored.
    stamps: Arc<Stamps>,
    /// The schema's versions before and after the open.
    schema: super::SchemaVersions,
}

/// Each account's enabled endpoints, as ingest needs them, cached for the writer thread.
/// Only the writer thread reads or changes it: every endpoint write clears the account's
/// entry inside its job, and a failed commit clears everything, so the cache never holds
/// what the database does not.
#[derive(Clone)]
struct Subscribers(Arc<Mutex<HashMap<String, EndpointList>>>, Arc<Sealer>);

type EndpointList = Arc<Vec<Arc<Endpoint>>>;

impl Subscribers {
    fn forget(&self, account_id: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(account_id);
        }
    }
    fn forget_all(&self) {
        if let Ok(mut m) = self.0.lock() {
            m.clear();
        }
    }
    fn get_or_load(
        &self,
        c: &Connection,
        account_id: &str,
    ) -> Result<Arc<Vec<Arc<Endpoint>>>, StoreError> {
        if let Some(hit) = self.0.lock().ok().and_then(|m| m.get(account_id).cloned()) {
            return Ok(hit);
        }
        let mut stmt = c
            .prepare_cached(&format!(
                "SELECT {ENDPOINT_COLS} FROM endpoints
                 WHERE account_id = ?1 AND enabled = 1 AND deleted_at IS NULL"
            ))
            .ctx("preparing the subscriber lookup")?;
        let list: Vec<Arc<Endpoint>> = stmt
            .query_map([account_id], endpoint_from_row)
            .ctx("finding subscribers")?
            .map(|r| {
                r.ctx("finding subscribers")
                    .and_then(|ep| opened(&self.1, ep))
                    .map(Arc::new)
            })
            .collect::<Result<_, _>>()?;
        let list = Arc::new(list);
        if let Ok(mut m) = self.0.lock() {
            m.insert(account_id.to_owned(), list.clone());
        }
        Ok(list)
    }
}

struct ReadPool {
    conns: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    plan        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE TABLE endpoints (
    seq                 INTEGER PRIMARY KEY,
    id                  TEXT NOT NULL UNIQUE,
    account_id          TEXT NOT NULL,
    url                 TEXT NOT NULL,
    description         TEXT NOT NULL,
    event_types         TEXT NOT NULL,
    headers             TEXT NOT NULL,
    secret              TEXT NOT NULL,
    rate_limit_per_sec  INTEGER,
    enabled             INTEGER NOT NULL,
    disabled_reason     TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    deleted_at          INTEGER
);
CREATE INDEX endpoints_by_account ON endpoints (account_id, seq);
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    account_id  TEXT NOT NULL,
    type        TEXT NOT NULL,
    data        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX events_by_account ON events (account_id, seq);
CREATE TABLE deliveries (
    seq               INTEGER PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    account_id        TEXT NOT NULL,
    event_id          TEXT NOT NULL,
    event_type        TEXT NOT NULL,
    endpoint_id       TEXT NOT NULL,
    status            TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   INTEGER,
    last_attempt_at   INTEGER,
    last_status_code  INTEGER,
    last_error        TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE INDEX deliveries_by_event ON deliveries (event_id);
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, seq);
CREATE INDEX deliveries_due_by_endpoint ON deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE TABLE attempts (
    delivery_id    TEXT NOT NULL,
    attempt        INTEGER NOT NULL,
    started_at     INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    status_code    INTEGER,
    error          TEXT,
    response_body  TEXT,
    PRIMARY KEY (delivery_id, attempt)
) WITHOUT ROWID;
"#,
    // Every claim of a delivery (by ingest, the poller or a manual retry) gets a number; an
    // outcome only moves the delivery on if it belongs to the current claim.
    r#"
ALTER TABLE deliveries ADD COLUMN claim INTEGER NOT NULL DEFAULT 0;
"#,
    // Idempotency keys: what the first request under a key was accepted as.
    r#"
CREATE TABLE idempotency_keys (
    account_id    TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    accepted      TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (account_id, key)
) WITHOUT ROWID;
"#,
    // Retention finds expired keys by time.
    r#"
CREATE INDEX idempotency_keys_by_time ON idempotency_keys (created_at);
"#,
    // Each account's own event types.
    r#"
CREATE TABLE event_types (
    account_id   TEXT NOT NULL,
    name         TEXT NOT NULL,
    description  TEXT NOT NULL,
    schema       TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (account_id, name)
) WITHOUT ROWID;
"#,
    // Secret rotation: the previous secret signs beside the new one until a time. Keys are
    // listed per account.
    r#"
ALTER TABLE endpoints ADD COLUMN previous_secret TEXT;
ALTER TABLE endpoints ADD COLUMN previous_secret_until INTEGER;
CREATE INDEX api_keys_by_account ON api_keys (account_id);
"#,
    // Settings: which key the endpoint secrets are sealed under.
    r#"
CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
"#,
    // The earliest due time is found per endpoint, in `deliveries_due_by_endpoint`: a second
    // index of every pending row by due time alone cost each pending insert, claim and retry
    // one more index write.
    r#"
DROP INDEX IF EXISTS deliveries_due;
"#,
    // A delivery's latest attempt is kept in its own row (`kept_*`) until a later attempt
    // moves it to `attempts`: a delivery that succeeds at its first try writes no `attempts`
    // row at all, one B-tree insert (and its pages in the WAL) less per delivery.
    r#"
ALTER TABLE deliveries ADD COLUMN kept_attempt INTEGER;
ALTER TABLE deliveries ADD COLUMN kept_started_at INTEGER;
ALTER TABLE deliveries ADD COLUMN kept_duration_ms INTEGER;
ALTER TABLE deliveries ADD COLUMN kept_status_code INTEGER;
ALTER TABLE deliveries ADD COLUMN kept_error TEXT;
ALTER TABLE deliveries ADD COLUMN kept_response_body TEXT;
"#,
    // Deliveries that wait for room (not admitted at ingest) have no due time and stay out
    // of the due index: they are found from their endpoint's `waiting_from`, in row order.
    // An endpoint that is down while its events keep coming then writes one index entry per
    // event (`deliveries_by_endpoint`), not two.
    r#"
ALTER TABLE endpoints ADD COLUMN waiting_from INTEGER;
ALTER TABLE endpoints ADD COLUMN waiting_since INTEGER;
UPDATE deliveries SET next_attempt_at = updated_at
    WHERE status = 'pending' AND next_attempt_at IS NULL;
DROP INDEX IF EXISTS deliveries_due_by_endpoint;
CREATE INDEX deliveries_due_by_endpoint ON deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending' AND next_attempt_at IS NOT NULL;
"#,
    // An event's deliveries are inserted in the event's own write job, one after another, so
    // their row numbers are one run, kept in the event's row (`deliveries_from`, up to
    // `deliveries_until`): an event's deliveries are read by row number, and no index of
    // deliveries by event is written for every delivery (it was about an eighth of the WAL
    // each single-event commit wrote). Rows from before keep theirs, found while the index
    // still stands.
    r#"
ALTER TABLE events ADD COLUMN deliveries_from INTEGER;
ALTER TABLE events ADD COLUMN deliveries_until INTEGER;
UPDATE events SET (deliveries_from, deliveries_until) =
    (SELECT MIN(d.seq), MAX(d.seq) + 1 FROM deliveries d WHERE d.event_id = events.id)
    WHERE EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id);
DROP INDEX IF EXISTS deliveries_by_event;
"#,
    // The pull API by type: which stretches of `TYPE_STRETCH_ROWS` (256) row numbers hold an
    // account's events of a type. A page of one type reads only those stretches, so it is
    // full, or the feed's end, however rare the type. An index of events by type would cost
    // every event one more index entry (batches 6 % slower, BENCHMARKS, the twenty-eighth
    // host); this costs a write job one row per type and stretch it writes into, most of them
    // there already. (`IF NOT EXISTS`, like the fill, so that it can run again.)
    r#"
CREATE TABLE IF NOT EXISTS event_type_stretches (
    account_id  TEXT NOT NULL,
    type        TEXT NOT NULL,
    stretch     INTEGER NOT NULL,
    PRIMARY KEY (account_id, type, stretch)
) WITHOUT ROWID;
INSERT OR IGNORE INTO event_type_stretches (account_id, type, stretch)
    SELECT account_id, type, seq / 256 FROM events;
"#,
    // Every secret rotated out keeps signing until its own overlap ends, not only the last
    // one: `previous_secrets` holds them all (JSON, newest first, each secret sealed as the
    // column it replaces was).
    r#"
ALTER TABLE endpoints ADD COLUMN previous_secrets TEXT;
UPDATE endpoints
   SET previous_secrets = json_array(json_object('secret', previous_secret,
                                                 'until', previous_secret_until))
 WHERE previous_secret IS NOT NULL AND previous_secret_until IS NOT NULL;
ALTER TABLE endpoints DROP COLUMN previous_secret;
ALTER TABLE endpoints DROP COLUMN previous_secret_until;
"#,
    // A delivery's count of attempts is never less than any number it holds, which the
    // recorder relies on to tell a fresh number at once (`FRESH_NUMBER`). An outcome of an
    // old claim was written to `attempts` without raising the count; this raises it.
    r#"
UPDATE deliveries
   SET attempts = held.top
  FROM (SELECT delivery_id, MAX(attempt) AS top FROM attempts GROUP BY delivery_id) AS held
 WHERE deliveries.id = held.delivery_id AND deliveries.attempts < held.top;
"#,
    // An attempt is known by the claim it was made under (one attempt a claim): two made at
    // once (manual retries beside one in flight) can share their start and duration to the
    // millisecond, which is how an attempt was known before. Rows written before keep no
    // claim and are still known that way.
    r#"
ALTER TABLE attempts ADD COLUMN claim INTEGER;
ALTER TABLE deliveries ADD COLUMN kept_claim INTEGER;
"#,
    // Until when an endpoint asked to be left alone (a long `Retry-After`), ms: a restart
    // keeps to it.
    r#"
ALTER TABLE endpoints ADD COLUMN held_until INTEGER;
"#,
];

/// How many row numbers one stretch of `event_type_stretches` covers (the migration that made
/// the table divides by the same number).
const TYPE_STRETCH_ROWS: i64 = 256;

/// The record of an idempotency key: its request's digest, the answer, when it was taken.
fn key_record(
    c: &Connection,
    account_id: &str,
    key: &IdempotencyKey,
) -> Result<Option<(String, String, i64)>, StoreError> {
    c.prepare_cached(
        "SELECT request_hash, accepted, created_at FROM idempotency_keys
         WHERE account_id = ?1 AND key = ?2",
    )
    .ctx("preparing the idempotency key lookup")?
    .query_row(params![account_id, key.key], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .optional()
    .ctx("looking up an idempotency key")
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).ctx("opening the SQLite database")?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .ctx("setting the SQLite busy timeout")?;
    // Plans that depend on the schema alone. Otherwise SQLite plans `LIMIT ?n` with the
    // number bound to it, and so compiles such a statement again each time a number is bound:
    // every page of a list, every claim scan, cached or not. (Nothing here relies on plans
    // from bound values: there are no `LIKE` patterns, and no `ANALYZE` statistics. Nor can
    // a bound value now match a partial index's condition: the conditions on `status` are
    // written as literals, as the partial indexes need.)
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .ctx("asking SQLite for plans that stay")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // `temp_store = MEMORY` keeps each write job's savepoint journal in memory: on disk it
    // cost a file write per page a job touched (a fifth of the writer's time, by profile).
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = OFF;
         PRAGMA cache_size = -16000;
         PRAGMA temp_store = MEMORY;",
    )
    .ctx("setting SQLite pragmas")?;
    Ok(conn)
}

/// A connection of the read pool: it cannot write.
fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let c = open_connection(path)?;
    c.execute_batch("PRAGMA query_only = ON;")
        .ctx("opening a read connection")?;
    Ok(c)
}

/// Inserts a new account named `name`, unless one has that name already.
fn insert_account(c: &Connection, name: String, plan: Plan) -> Result<Account, StoreError> {
    let exists: Option<String> = c
        .query_row("SELECT id FROM accounts WHERE name = ?1", [&name], |r| {
            r.get(0)
        })
        .optional()
        .ctx("looking up an account name")?;
    if exists.is_some() {
        return Err(StoreError::Conflict(format!(
            "an account named {name:?} exists already"
        )));
    }
    let account = Account {
        id: new_id("acc"),
        name,
        plan,
        created_at: Timestamp::now(),
    };
    c.execute(
        "INSERT INTO accounts (id, name, plan, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![
            account.id,
            account.name,
            plan.as_str(),
            account.created_at.0
        ],
    )
    .ctx("inserting an account")?;
    Ok(account)
}

/// Inserts a new key of `account_id`, stored as its hash and the prefix it is shown by.
fn insert_api_key(
    c: &Connection,
    account_id: &str,
    key_hash: &str,
    prefix: String,
) -> Result<ApiKey, StoreError> {
    let key = ApiKey {
        id: new_id("key"),
        prefix,
        created_at: Timestamp::now(),
        revoked_at: None,
    };
    c.execute(
        "INSERT INTO api_keys (id, account_id, key_hash, prefix, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![key.id, account_id, key_hash, key.prefix, key.created_at.0],
    )
    .ctx("inserting an API key")?;
    Ok(key)
}

/// Brings the schema of the database in `data_dir` up to date; the schema versions before
/// and after. A database newer than this build is refused untouched: this build would not
/// know its tables. The schema changes only under the data directory's serve lock (`held`
/// when the caller has it, else taken here for the migration): a server of an older build
/// running on the directory would fail on the new schema, and answer `500`s while its
/// health check says all is well.
fn migrate(
    conn: &Connection,
    data_dir: &Path,
    held: bool,
) -> Result<super::SchemaVersions, StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .ctx("reading the schema version")?;
    let known = MIGRATIONS.len();
    let before = usize::try_from(version).unwrap_or(usize::MAX);
    if before > known {
        return Err(newer_than_known(version, known));
    }
    if before == known {
        return Ok(super::SchemaVersions {
            before,
            after: known,
        });
    }
    let _lock = if held {
        None
    } else {
        Some(SqliteStore::lock_dir(data_dir).map_err(|e| match e {
            StoreError::Locked(path) => StoreError::Conflict(format!(
                "the database is at schema version {before} and this build needs {known}, \
                 but another hookline process holds {path}: a server (of an older build?), \
                 or a command migrating it; stop the server, or run this again once the \
                 command is done (nothing was changed)"
            )),
            other => other,
        })?)
    };
    // Read again under the lock: another process may have migrated since the first read.
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .ctx("reading the schema version")?;
    let now = usize::try_from(version).unwrap_or(usize::MAX);
    if now > known {
        return Err(newer_than_known(version, known));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(now) {
        let next = i as i64 + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {next}; COMMIT;"
        ))
        .ctx("applying a schema migration")?;
    }
    Ok(super::SchemaVersions {
        before: now,
        after: known,
    })
}

fn newer_than_known(version: i64, known: usize) -> StoreError {
    StoreError::Conflict(format!(
        "the database is at schema version {version}, newer than this build knows ({known}); \
         run a newer hookline"
    ))
}

/// An exclusive lock on a data directory, held while a `hookline serve` runs on it.
pub struct DirLock {
    _file: std::fs::File,
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir`, applies migrations and starts
    /// the writer thread. Migrations take the directory's serve lock while they run, so they
    /// are refused while a server runs on it.
    pub fn open(data_dir: &Path, sealer: Sealer) -> Result<Self, StoreError> {
        Self::open_inner(data_dir, sealer, false)
    }

    /// Whether `data_dir` holds a database (opening one creates it).
    pub fn exists(data_dir: &Path) -> bool {
        data_dir.join(DB_FILE).is_file()
    }

    /// Like [`SqliteStore::open`], by the holder of the directory's serve lock.
    pub fn open_locked(
        data_dir: &Path,
        sealer: Sealer,
        _lock: &DirLock,
    ) -> Result<Self, StoreError> {
        Self::open_inner(data_dir, sealer, true)
    }

    fn open_inner(data_dir: &Path, sealer: Sealer, held: bool) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            context: "creating the data directory",
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let conn = open_connection(&path)?;
        let schema = migrate(&conn, data_dir, held)?;
        let stamps = Arc::new(Stamps::local(newest_stamp(&conn)?));
        // Checkpoints run on their own thread, but for the writer's own when the WAL must
        // start over (`WalKeeper`, made after this pragma: the pragma would replace its hook).
        // The writer's own page cache is small (see `WRITER_CACHE_KIB`).
        conn.execute_batch(&format!("PRAGMA cache_size = -{WRITER_CACHE_KIB}"))
            .ctx("sizing the writer's page cache")?;
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 67108864;")
            .ctx("configuring checkpoints")?;
        let checkpointer = start_checkpointer(&path)?;
        let for_writer = checkpointer.clone();
        let (tx, rx) = mpsc::channel::<WriteJob>(8192);
        let sealer = Arc::new(sealer);
        let subscribers = Subscribers(Arc::default(), sealer.clone());
        let on_rollback = subscribers.clone();
        let riders = Riders::default();
        let boarding = riders.clone();
        std::thread::Builder::new()
            .name(WRITER_THREAD.into())
            .spawn(move || {
                let wal = WalKeeper::new(&conn, for_writer);
                writer_loop(conn, rx, boarding, wal, move || on_rollback.forget_all())
            })
            .map_err(|source| StoreError::Io {
                context: "starting the writer thread",
                source,
            })?;
        let mut conns = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            conns.push(open_reader(&path)?);
        }
        Ok(SqliteStore {
            writer: tx,
            riders,
            rider_wait: RIDER_WAIT,
            end_batch: END_BATCH,
            readers: Arc::new(ReadPool {
                conns: Mutex::new(conns),
                permits: Arc::new(Semaphore::new(READERS)),
            }),
            path: Arc::new(path),
            subscribers,
            sealer,
            checkpointer,
            stamps,
            schema,
        })
    }

    /// The schema's versions before and after this store was opened.
    pub fn schema_versions(&self) -> super::SchemaVersions {
        self.schema
    }

    /// Returns once the writer has taken every job queued before this one: the writer
    /// takes jobs in order, and this empty one commits with them or after.
    pub async fn settle(&self) -> Result<(), StoreError> {
        self.write(|_| Ok(())).await
    }

    /// The clock of event stamps ([`super::stamps`]).
    pub fn stamps(&self) -> &Stamps {
        &self.stamps
    }

    /// Takes the data directory's exclusive serve lock, or says who holds it.
    pub fn lock_dir(data_dir: &Path) -> Result<DirLock, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            context: "creating the data directory",
            source,
        })?;
        let lock_path = data_dir.join("serve.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StoreError::Io {
                context: "opening serve.lock",
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(_) => Err(StoreError::Locked(lock_path.display().to_string())),
        }
    }

    /// Runs `f` in the next group commit and returns its result once committed.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_then(f, |_| {}).await
    }

    /// Like `write`, and runs `on_done` on the writer thread once the outcome is known (after
    /// the commit, or the failure). It runs even if the caller has stopped waiting, so work
    /// that must follow a commit cannot be lost to a dropped request.
    async fn write_then<T, F, D>(&self, f: F, on_done: D) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        D: FnOnce(Result<&T, &StoreError>) + Send + 'static,
    {
        self.write_isolated(Isolation::Savepoint, f, on_done).await
    }

    /// Like `write_then`, with the job's isolation chosen (see [`Isolation`]).
    async fn write_isolated<T, F, D>(
        &self,
        isolation: Isolation,
        f: F,
        on_done: D,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        D: FnOnce(Result<&T, &StoreError>) + Send + 'static,
    {
        let (job, rx) = write_job(isolation, f, on_done);
        self.writer
            .send(job)
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Like `write`, as a rider: the job joins the next group that commits anyway, and asks
    /// for a commit of its own only if none has taken it after `rider_wait`.
    /// `on_done` as for [`Self::write_then`].
    async fn write_riding<T, F, D>(&self, f: F, on_done: D) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        D: FnOnce(Result<&T, &StoreError>) + Send + 'static,
    {
        if self.writer.is_closed() {
            return Err(StoreError::WriterGone); // nothing would ever take it
        }
        let (job, mut rx) = write_job(Isolation::Savepoint, f, on_done);
        self.riders.slot().push(job);
        if let Ok(done) = tokio::time::timeout(self.rider_wait, &mut rx).await {
            return done.map_err(|_| StoreError::WriterGone)?;
        }
        // No group came by: an empty job makes one, and the waiting riders join it. Unless a
        // group took them meanwhile; and a queue too full to take the empty job at once has
        // groups coming anyway, so the answer is not kept waiting behind it.
        let waiting = !self.riders.slot().is_empty();
        if waiting {
            let empty: WriteJob = Box::new(|_| (Box::new(|_| {}), false));
            tokio::select! {
                done = &mut rx => return done.map_err(|_| StoreError::WriterGone)?,
                sent = self.writer.send(empty) => sent.map_err(|_| StoreError::WriterGone)?,
            }
        }
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// How long an outcome waits to ride with another write before it commits on its own
    /// ([`RIDER_WAIT`] by default). Zero gives every outcome a commit of its own, as when it
    /// is measured alone.
    pub fn set_rider_wait(&mut self, wait: std::time::Duration) {
        self.rider_wait = wait;
    }

    /// How many rows one job reads when it ends a turned-off endpoint's waiting deliveries.
    #[cfg(test)]
    pub(crate) fn set_end_batch(&mut self, batch: usize) {
        self.end_batch = batch.max(1);
    }

    /// Runs `f` on a read connection on a blocking thread.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = self
            .readers
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::WriterGone)?;
        let pool = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = match pool.conns.lock().map(|mut c| c.pop()) {
                Ok(Some(c)) => c,
                _ => open_reader(&path)?,
            };
            let result = f(&conn);
            if let Ok(mut conns) = pool.conns.lock() {
                conns.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Commit(format!("a read task failed: {e}")))?
    }

    // ---- accounts and keys ---------------------------------------------------------------

    pub async fn create_account(&self, name: String, plan: Plan) -> Result<Account, StoreError> {
        self.write(move |c| insert_account(c, name, plan)).await
    }

    /// Creates an account and its first key in one transaction: either both or neither.
    pub async fn create_account_with_key(
        &self,
        name: String,
        plan: Plan,
        key_hash: String,
        prefix: String,
    ) -> Result<(Account, ApiKey), StoreError> {
        self.write(move |c| {
            let account = insert_account(c, name, plan)?;
            let key = insert_api_key(c, &account.id, &key_hash, prefix)?;
            Ok((account, key))
        })
        .await
    }

    pub async fn account_by_name(&self, name: String) -> Result<Option<Account>, StoreError> {
        self.read(move |c| {
            c.query_row(
                "SELECT id, name, plan, created_at FROM accounts WHERE name = ?1",
                [&name],
                account_from_row,
            )
            .optional()
            .ctx("reading an account")
        })
        .await
    }

    pub async fn get_account(&self, id: String) -> Result<Option<Account>, StoreError> {
        self.read(move |c| {
            c.query_row(
                "SELECT id, name, plan, created_at FROM accounts WHERE id = ?1",
                [&id],
                account_from_row,
            )
            .optional()
            .ctx("reading an account")
        })
        .await
    }

    /// Accounts, oldest first.
    pub async fn list_accounts(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Page<Account>, StoreError> {
        self.read(move |c| {
            let rows = c
                .prepare_cached(
                    "SELECT id, name, plan, created_at, rowid FROM accounts
                     WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                )
                .ctx("preparing the account list")?
                .query_map(params![after.unwrap_or(0), limit as i64 + 1], |r| {
                    Ok((account_from_row(r)?, r.get::<_, i64>(4)?))
                })
                .ctx("listing accounts")?
                .collect::<Result<Vec<_>, _>>()
                .ctx("listing accounts")?;
            Ok(super::page(rows, limit))
        })
        .await
    }

    pub async fn set_plan(
        &self,
        id: String,
        plan: Plan,
    ) -> Result<Option<(Account, Vec<Endpoint>)>, StoreError> {
        let (subscribers, sealer) = (self.subscribers.clone(), self.sealer.clone());
        let batch = self.end_batch;
        self.write_then(
            move |c| {
                c.execute(
                    "UPDATE accounts SET plan = ?2 WHERE id = ?1",
                    params![id, plan.as_str()],
                )
                .ctx("changing a plan")?;
                let mut ended = 0;
                let Some(account) = c
                    .query_row(
                        "SELECT id, name, plan, created_at FROM accounts WHERE id = ?1",
                        [&id],
                        account_from_row,
                    )
                    .optional()
                    .ctx("reading an account")?
                else {
                    return Ok((None, 0));
                };
                let mut disabled = Vec::new();
                if !plan.includes_webhooks() {
                    subscribers.forget(&id);
                    let ids: Vec<String> = c
                        .prepare(
                            "SELECT id FROM endpoints
                         WHERE account_id = ?1 AND enabled = 1 AND deleted_at IS NULL",
                        )
                        .ctx("preparing the endpoint scan")?
                        .query_map([&id], |r| r.get(0))
                        .ctx("finding enabled endpoints")?
                        .collect::<Result<Vec<String>, _>>()
                        .ctx("finding enabled endpoints")?;
                    // One batch of waiting rows for the job, shared by the endpoints; the ender
                    // ends the rest.
                    let share = (batch / ids.len().max(1)).max(1);
                    for ep_id in ids {
                        let now = Timestamp::now().0;
                        c.execute(
                            "UPDATE endpoints SET enabled = 0, disabled_reason = ?2,
                            updated_at = MAX(updated_at + 1, ?3)
                         WHERE id = ?1",
                            params![ep_id, super::PLAN_DISABLED, now],
                        )
                        .ctx("disabling an endpoint")?;
                        ended += fail_open_deliveries(c, &ep_id, super::PLAN_DISABLED, share)?.0;
                        if let Some(ep) = load_endpoint(c, &sealer, Some(&id), &ep_id)? {
                            disabled.push(ep);
                        }
                    }
                }
                Ok((Some((account, disabled)), ended))
            },
            super::count_ended_off,
        )
        .await
        .map(|(out, _)| out)
    }

    /// Stores the hash of a new API key for `account_id`.
    pub async fn add_api_key(
        &self,
        account_id: String,
        key_hash: String,
        prefix: String,
        max_live: usize,
    ) -> Result<ApiKey, StoreError> {
        self.write(move |c| {
            let live: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM api_keys WHERE account_id = ?1 AND revoked_at IS NULL",
                    [&account_id],
                    |r| r.get(0),
                )
                .ctx("counting live keys")?;
            if live as usize >= max_live {
                return Err(super::too_many_keys(max_live));
            }
            insert_api_key(c, &account_id, &key_hash, prefix)
        })
        .await
    }

    /// Up to `limit` of the account's keys, revoked ones included, after `after` (a key's `created_at` and id), in
    /// that order.
    pub async fn list_api_keys(
        &self,
        account_id: String,
        after: Option<(Timestamp, String)>,
        limit: usize,
    ) -> Result<Vec<ApiKey>, StoreError> {
        let (after_at, after_id) = after.unwrap_or((Timestamp(i64::MIN), String::new()));
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, prefix, created_at, revoked_at FROM api_keys
                 WHERE account_id = ?1 AND (created_at, id) > (?2, ?3)
                 ORDER BY created_at, id LIMIT ?4",
            )
            .ctx("preparing the key list")?
            .query_map(
                params![account_id, after_at.0, after_id, limit as i64],
                api_key_from_row,
            )
            .ctx("listing keys")?
            .collect::<Result<Vec<_>, _>>()
            .ctx("listing keys")
        })
        .await
    }

    /// Revokes key `key_id` of `account_id` (again: no change). With `keep_one`, the
    /// account's last live key is not revoked ([`StoreError::Conflict`]).
    pub async fn revoke_api_key(
        &self,
        account_id: String,
        key_id: String,
        keep_one: bool,
    ) -> Result<Option<ApiKey>, StoreError> {
        self.write(move |c| {
            let select = "SELECT id, prefix, created_at, revoked_at FROM api_keys
                          WHERE id = ?1 AND account_id = ?2";
            let Some(key) = c
                .query_row(select, params![key_id, account_id], api_key_from_row)
                .optional()
                .ctx("reading a key")?
            else {
                return Ok(None);
            };
            if key.revoked_at.is_some() {
                return Ok(Some(key));
            }
            if keep_one {
                let live: i64 = c
                    .query_row(
                        "SELECT COUNT(*) FROM api_keys
                         WHERE account_id = ?1 AND revoked_at IS NULL",
                        [&account_id],
                        |r| r.get(0),
                    )
                    .ctx("counting live keys")?;
                if live <= 1 {
                    return Err(StoreError::Conflict(
                        "this is the account's last live key: issue another one first".into(),
                    ));
                }
            }
            c.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1",
                params![key_id, Timestamp::now().0],
            )
            .ctx("revoking a key")?;
            c.query_row(select, params![key_id, account_id], api_key_from_row)
                .optional()
                .ctx("reading a key")
        })
        .await
    }

    /// Rewrites every endpoint secret (removed endpoints' too) sealed under `to`, opening
    /// it with this store's sealer; values already sealed under `to` are only checked.
    /// All or nothing. Returns how many values were rewritten.
    pub async fn reseal_secrets(&self, to: Sealer) -> Result<usize, StoreError> {
        let from = self.sealer.clone();
        let rewritten = self
            .write(move |c| {
                // The rows' old bytes are zeroed as they are rewritten, not left in free space.
                c.execute_batch("PRAGMA secure_delete = ON")
                    .ctx("turning secure delete on")?;
                let result = reseal_rows(c, &from, &to);
                c.execute_batch("PRAGMA secure_delete = OFF")
                    .ctx("turning secure delete off")?;
                result
            })
            .await?;
        if rewritten > 0 {
            // The write-ahead log still holds the pages as they were: fold it into the
            // database and truncate it.
            let path = self.path.clone();
            let checkpointer = self.checkpointer.clone();
            tokio::task::spawn_blocking(move || {
                let conn = open_connection(&path)?;
                // Taking turns with the other checkpoints, neither fails busy on the other.
                let _turn = checkpointer.turn();
                let busy: i64 = conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                    .ctx("truncating the write-ahead log")?;
                if busy != 0 {
                    tracing::warn!(
                        "the write-ahead log could not be truncated after rewriting secrets; \
                         it is overwritten as the database is used"
                    );
                }
                Ok::<_, StoreError>(())
            })
            .await
            .map_err(|e| StoreError::Commit(format!("the checkpoint task failed: {e}")))??;
        }
        Ok(rewritten)
    }

    /// The key of `account_id` whose hash is `key_hash`, live or revoked.
    pub async fn api_key_by_hash(
        &self,
        account_id: String,
        key_hash: String,
    ) -> Result<Option<ApiKey>, StoreError> {
        self.read(move |c| {
            c.query_row(
                "SELECT id, prefix, created_at, revoked_at FROM api_keys
                 WHERE account_id = ?1 AND key_hash = ?2",
                params![account_id, key_hash],
                api_key_from_row,
            )
            .optional()
            .ctx("looking up an API key")
        })
        .await
    }

    /// The account whose live key hashes to `key_hash`.
    pub async fn account_by_key_hash(
        &self,
        key_hash: String,
    ) -> Result<Option<Account>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT a.id, a.name, a.plan, a.created_at FROM api_keys k
                 JOIN accounts a ON a.id = k.account_id
                 WHERE k.key_hash = ?1 AND k.revoked_at IS NULL",
            )
            .ctx("preparing the key lookup")?
            .query_row([&key_hash], account_from_row)
            .optional()
            .ctx("looking up an API key")
        })
        .await
    }

    // ---- endpoints -----------------------------------------------------------------------

    /// Inserts `ep`, unless its account has `max_endpoints` already
    /// ([`StoreError::LimitReached`]).
    pub async fn insert_endpoint(
        &self,
        ep: Endpoint,
        max_endpoints: u32,
    ) -> Result<Endpoint, StoreError> {
        let subscribers = self.subscribers.clone();
        let secret = self.sealer.seal(&ep.id, &ep.secret)?;
        let headers = self.sealer.seal_headers(&ep.id, &ep.headers)?;
        self.write(move |c| {
            subscribers.forget(&ep.account_id);
            require_webhooks(c, &ep.account_id)?;
            let count: i64 = c
                .prepare_cached(
                    "SELECT COUNT(*) FROM endpoints WHERE account_id = ?1 AND deleted_at IS NULL",
                )
                .and_then(|mut st| st.query_row([&ep.account_id], |r| r.get(0)))
                .ctx("counting endpoints")?;
            if count >= i64::from(max_endpoints) {
                return Err(StoreError::LimitReached(format!(
                    "the account's plan allows {max_endpoints} endpoints and it has {count}"
                )));
            }
            c.execute(
                "INSERT INTO endpoints (id, account_id, url, description, event_types, headers,
                    secret, rate_limit_per_sec, enabled, disabled_reason, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    ep.id,
                    ep.account_id,
                    ep.url,
                    ep.description,
                    serde_json::to_string(&ep.event_types).ctx("encoding event types")?,
                    headers,
                    secret,
                    ep.rate_limit_per_sec,
                    ep.enabled,
                    ep.disabled_reason,
                    ep.created_at.0,
                    ep.updated_at.0,
                ],
            )
            .ctx("inserting an endpoint")?;
            Ok(ep)
        })
        .await
    }

    pub async fn list_endpoints(
        &self,
        account_id: String,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Page<Endpoint>, StoreError> {
        let sealer = self.sealer.clone();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ENDPOINT_COLS}, seq FROM endpoints
                     WHERE account_id = ?1 AND deleted_at IS NULL AND seq > ?2
                     ORDER BY seq LIMIT ?3"
                ))
                .ctx("preparing the endpoint list")?;
            let rows = stmt
                .query_map(
                    params![account_id, after.unwrap_or(0), limit as i64 + 1],
                    |r| Ok((endpoint_from_row(r)?, r.get::<_, i64>(ENDPOINT_COL_COUNT)?)),
                )
                .ctx("listing endpoints")?
                .map(|r| {
                    let (ep, seq) = r.ctx("listing endpoints")?;
                    Ok((opened(&sealer, ep)?, seq))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(super::page(rows, limit))
        })
        .await
    }

    pub async fn get_endpoint(
        &self,
        account_id: String,
        id: String,
    ) -> Result<Option<Endpoint>, StoreError> {
        let sealer = self.sealer.clone();
        self.read(move |c| load_endpoint(c, &sealer, Some(&account_id), &id))
            .await
    }

    /// Changes an endpoint with `change` (already validated). Disabling it ends its open
    /// deliveries as `failed`. Returns `None` when there is no such endpoint.
    pub async fn update_endpoint<F>(
        &self,
        account_id: String,
        id: String,
        change: F,
    ) -> Result<Option<Endpoint>, StoreError>
    where
        F: FnOnce(&mut Endpoint) + Send + 'static,
    {
        let subscribers = self.subscribers.clone();
        let sealer = self.sealer.clone();
        let batch = self.end_batch;
        self.write_then(
            move |c| {
                subscribers.forget(&account_id);
                let Some(mut ep) = load_endpoint(c, &sealer, Some(&account_id), &id)? else {
                    return Ok((None, 0));
                };
                let was_enabled = ep.enabled;
                change(&mut ep);
                if ep.enabled && !was_enabled {
                    require_webhooks(c, &account_id)?;
                    // What its turning off left waiting ends before it is on again, or it would be
                    // delivered: the last of it here, a longer backlog by the ender first (then
                    // the job, and what it ended, is undone).
                    if let Some(why) = turned_off_reason(c, &ep.id)?
                        && end_waiting_rows(c, &ep.id, why, Timestamp::now().0, batch)?.1
                    {
                        return Err(StoreError::Conflict(
                        "the endpoint is still ending the deliveries that waited for it when it \
                         was turned off (a long backlog ends a few thousand at a time); turn it \
                         on again in a moment"
                            .into(),
                    ));
                    }
                    ep.disabled_reason = None;
                }
                ep.updated_at = Timestamp(Timestamp::now().0.max(ep.updated_at.0 + 1));
                c.execute(
                "UPDATE endpoints SET url = ?2, description = ?3, event_types = ?4, headers = ?5,
                    secret = ?6, rate_limit_per_sec = ?7, enabled = ?8, disabled_reason = ?9,
                    updated_at = ?10, previous_secrets = ?11, held_until = NULL
                 WHERE id = ?1",
                params![
                    ep.id,
                    ep.url,
                    ep.description,
                    serde_json::to_string(&ep.event_types).ctx("encoding event types")?,
                    sealer.seal_headers(&ep.id, &ep.headers)?,
                    sealer.seal(&ep.id, &ep.secret)?,
                    ep.rate_limit_per_sec,
                    ep.enabled,
                    ep.disabled_reason,
                    ep.updated_at.0,
                    sealer.seal_previous(&ep.id, &ep.previous_secrets)?,
                ],
            )
            .ctx("updating an endpoint")?;
                let ended = if was_enabled && !ep.enabled {
                    fail_open_deliveries(c, &ep.id, OFF_DISABLED, batch)?.0
                } else {
                    0
                };
                Ok((Some(ep), ended))
            },
            super::count_ended_off,
        )
        .await
        .map(|(out, _)| out)
    }

    /// Removes an endpoint (kept, marked deleted, so its delivery history stays readable) and
    /// ends its open deliveries as `failed`. Returns the endpoint as removed (disabled, at its
    /// new version), or `None` when there is no such endpoint.
    pub async fn delete_endpoint(
        &self,
        account_id: String,
        id: String,
    ) -> Result<Option<Endpoint>, StoreError> {
        let subscribers = self.subscribers.clone();
        let sealer = self.sealer.clone();
        let batch = self.end_batch;
        self.write_then(
            move |c| {
                let Some(mut ep) = load_endpoint(c, &sealer, Some(&account_id), &id)? else {
                    return Ok((None, 0));
                };
                subscribers.forget(&account_id);
                let now = Timestamp(Timestamp::now().0.max(ep.updated_at.0 + 1));
                c.execute(
                "UPDATE endpoints SET deleted_at = ?2, enabled = 0, updated_at = ?2 WHERE id = ?1",
                params![id, now.0],
            )
            .ctx("deleting an endpoint")?;
                let (ended, _) = fail_open_deliveries(c, &id, OFF_REMOVED, batch)?;
                ep.enabled = false;
                ep.updated_at = now;
                Ok((Some(ep), ended))
            },
            super::count_ended_off,
        )
        .await
        .map(|(out, _)| out)
    }

    // ---- events --------------------------------------------------------------------------

    /// Commits `events` and one delivery per subscribed, enabled endpoint of `account_id`, all
    /// or nothing. `admit(endpoint_id)` says whether the dispatcher takes a delivery at once.
    pub async fn insert_events<A, D>(
        &self,
        account_id: String,
        events: Vec<NewEvent>,
        mut admit: A,
        on_done: D,
    ) -> Result<Vec<AcceptedEvent>, StoreError>
    where
        A: FnMut(&str) -> bool + Send + 'static,
        D: FnOnce(Result<&Vec<AcceptedEvent>, &StoreError>) + Send + 'static,
    {
        let (subscribers, stamps) = (self.subscribers.clone(), self.stamps.clone());
        // The most frequent write of all, outside a savepoint (see `Isolation::Group`): once
        // it has written, only a database error can fail it, and that takes its group down.
        self.write_isolated(
            Isolation::Group,
            move |c| insert_rows(c, &subscribers, &stamps, &account_id, events, &mut admit),
            on_done,
        )
        .await
    }

    /// [`SqliteStore::insert_events`] under an idempotency key, checked and recorded in the
    /// same job (the writer thread orders concurrent requests with one key).
    pub async fn insert_events_once<A, D>(
        &self,
        account_id: String,
        events: Vec<NewEvent>,
        key: IdempotencyKey,
        mut admit: A,
        on_done: D,
    ) -> Result<Ingested, StoreError>
    where
        A: FnMut(&str) -> bool + Send + 'static,
        D: FnOnce(Result<&Vec<AcceptedEvent>, &StoreError>) + Send + 'static,
    {
        let (subscribers, stamps) = (self.subscribers.clone(), self.stamps.clone());
        self.write_then(
            move |c| {
                let now = Timestamp::now().0;
                // Within its window the key answers; past it, this request takes it over.
                if let Some(first) = recorded_answer(key_record(c, &account_id, &key)?, &key, now)?
                {
                    return Ok(Ingested::Repeat(first));
                }
                let out = insert_rows(c, &subscribers, &stamps, &account_id, events, &mut admit)?;
                let summary: Vec<AcceptedSummary> = out.iter().map(AcceptedSummary::from).collect();
                c.execute(
                    "INSERT OR REPLACE INTO idempotency_keys
                        (account_id, key, request_hash, accepted, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        account_id,
                        key.key,
                        key.request_hash,
                        serde_json::to_string(&summary).ctx("recording an idempotency key")?,
                        now
                    ],
                )
                .ctx("recording an idempotency key")?;
                Ok(Ingested::New(out))
            },
            move |r: Result<&Ingested, &StoreError>| {
                let none = Vec::new();
                on_done(r.map(|i| match i {
                    Ingested::New(v) => v,
                    Ingested::Repeat(_) => &none,
                }))
            },
        )
        .await
    }

    pub async fn repeat_of(
        &self,
        account_id: String,
        key: IdempotencyKey,
    ) -> Result<Option<Vec<AcceptedSummary>>, StoreError> {
        self.read(move |c| {
            let now = Timestamp::now().0;
            recorded_answer(key_record(c, &account_id, &key)?, &key, now)
        })
        .await
    }

    pub async fn get_event(
        &self,
        account_id: String,
        id: String,
    ) -> Result<Option<Event>, StoreError> {
        self.read(move |c| {
            c.query_row(
                "SELECT id, type, created_at, data FROM events WHERE id = ?1 AND account_id = ?2",
                params![id, account_id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get(2)?,
                        r.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()
            .ctx("reading an event")?
            .map(|(id, event_type, created_at, data)| {
                Ok(Event {
                    id,
                    event_type,
                    created_at: Timestamp(created_at),
                    data: serde_json::value::RawValue::from_string(data)
                        .ctx("reading event data")?,
                })
            })
            .transpose()
        })
        .await
    }

    /// The event feed, oldest first. The writer commits in `seq` order, so a page that ends
    /// at `seq` has seen every event below it that will ever exist.
    ///
    /// `since` and `until` bound the rows read, not only the rows shown: the feed starts at
    /// the account's events of about `since` and stops past those of about `until`
    /// ([`feed_row_before`]), so a page of the last hour does not read months of history
    /// first. A page of one type reads only the stretches of rows that hold events of the type
    /// (`event_type_stretches`), so it is full unless it is the feed's end.
    pub async fn list_events(
        &self,
        account_id: String,
        filter: EventFilter,
        after: Option<FeedPos>,
        limit: usize,
    ) -> Result<(Vec<Event>, Option<FeedPos>), StoreError> {
        self.read(move |c| {
            // The search and the page read one snapshot.
            let c = &c.unchecked_transaction().ctx("starting the feed's read")?;
            let mut from = after.map(|p| p.1).unwrap_or(0);
            if let Some(since) = filter.since {
                let start = feed_row_before(
                    c,
                    &account_id,
                    since.saturating_sub(super::RECOVER_MARGIN_MS),
                )?;
                from = from.max(start);
            }
            let to = match filter.until {
                Some(until) => feed_row_before(
                    c,
                    &account_id,
                    until.saturating_add(super::RECOVER_MARGIN_MS),
                )?,
                None => i64::MAX,
            };
            let read = |sql: &str, args: &[&dyn rusqlite::ToSql]| {
                c.prepare_cached(sql)
                    .ctx("preparing the event feed")?
                    .query_map(args, |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                    .ctx("reading the event feed")?
                    .collect::<Result<Vec<(String, String, i64, String, i64)>, _>>()
                    .ctx("reading the event feed")
            };
            let (since, until, rows_wanted) = (filter.since, filter.until, limit as i64 + 1);
            let rows = match &filter.event_type {
                None => read(
                    FEED,
                    params![account_id, from, since, until, rows_wanted, to],
                )?,
                // One type: only the stretches that hold events of it, in order, each read
                // through the account's index, until the page and one more are found.
                Some(wanted) => {
                    let mut rows = Vec::new();
                    let mut stretches = c
                        .prepare_cached(TYPE_STRETCHES)
                        .ctx("preparing the event feed")?;
                    let mut next = from.saturating_add(1) / TYPE_STRETCH_ROWS;
                    'stretches: loop {
                        let found = stretches
                            .query_map(
                                params![account_id, wanted, next, to / TYPE_STRETCH_ROWS],
                                |r| r.get::<_, i64>(0),
                            )
                            .ctx("finding where events of a type are")?
                            .collect::<Result<Vec<_>, _>>()
                            .ctx("finding where events of a type are")?;
                        let Some(&last) = found.last() else { break };
                        for stretch in found {
                            let start = from.max(stretch * TYPE_STRETCH_ROWS - 1);
                            let end = to.min(stretch * TYPE_STRETCH_ROWS + TYPE_STRETCH_ROWS - 1);
                            let wanted_rows = rows_wanted - rows.len() as i64;
                            rows.extend(read(
                                FEED_TYPED,
                                params![account_id, start, since, until, wanted_rows, end, wanted],
                            )?);
                            if rows.len() > limit {
                                break 'stretches;
                            }
                        }
                        next = last + 1;
                    }
                    rows
                }
            };
            let more = rows.len() > limit;
            let mut events = Vec::with_capacity(rows.len().min(limit));
            let mut last = None;
            for (id, event_type, created_at, data, seq) in rows.into_iter().take(limit) {
                events.push(Event {
                    id,
                    event_type,
                    created_at: Timestamp(created_at),
                    data: serde_json::value::RawValue::from_string(data)
                        .ctx("reading event data")?,
                });
                last = Some((0, seq));
            }
            Ok((events, if more { last } else { None }))
        })
        .await
    }

    pub async fn create_event_type(
        &self,
        account_id: String,
        t: CustomEventType,
    ) -> Result<CustomEventType, StoreError> {
        self.write(move |c| {
            let schema = t
                .schema
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .ctx("encoding a schema")?;
            let n = c
                .execute(
                    "INSERT OR IGNORE INTO event_types
                        (account_id, name, description, schema, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                    params![account_id, t.name, t.description, schema, t.created_at.0],
                )
                .ctx("inserting an event type")?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "an event type named {:?} exists already",
                    t.name
                )));
            }
            Ok(t)
        })
        .await
    }

    /// Up to `limit` of the account's own event types named after `after`, by name (in byte
    /// order).
    pub async fn list_event_types(
        &self,
        account_id: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<CustomEventType>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT name, description, schema, created_at, updated_at FROM event_types
                 WHERE account_id = ?1 AND name > ?2 ORDER BY name LIMIT ?3",
            )
            .ctx("preparing the event type list")?
            .query_map(
                params![account_id, after.unwrap_or_default(), limit as i64],
                event_type_from_row,
            )
            .ctx("listing event types")?
            .collect::<Result<Vec<_>, _>>()
            .ctx("listing event types")
        })
        .await
    }

    pub async fn get_event_type(
        &self,
        account_id: String,
        name: String,
    ) -> Result<Option<CustomEventType>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT name, description, schema, created_at, updated_at FROM event_types
                 WHERE account_id = ?1 AND name = ?2",
            )
            .ctx("preparing the event type lookup")?
            .query_row(params![account_id, name], event_type_from_row)
            .optional()
            .ctx("reading an event type")
        })
        .await
    }

    pub async fn update_event_type(
        &self,
        account_id: String,
        t: CustomEventType,
        read_at: Timestamp,
    ) -> Result<Option<CustomEventType>, StoreError> {
        self.write(move |c| {
            let schema = t
                .schema
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .ctx("encoding a schema")?;
            let n = c
                .execute(
                    "UPDATE event_types SET description = ?3, schema = ?4, updated_at = ?5
                     WHERE account_id = ?1 AND name = ?2 AND updated_at = ?6",
                    params![
                        account_id,
                        t.name,
                        t.description,
                        schema,
                        t.updated_at.0,
                        read_at.0
                    ],
                )
                .ctx("updating an event type")?;
            if n == 1 {
                return Ok(Some(t));
            }
            let exists: Option<i64> = c
                .query_row(
                    "SELECT updated_at FROM event_types WHERE account_id = ?1 AND name = ?2",
                    params![account_id, t.name],
                    |r| r.get(0),
                )
                .optional()
                .ctx("reading an event type")?;
            match exists {
                Some(_) => Err(StoreError::Conflict(format!(
                    "the event type {:?} changed meanwhile; read it again",
                    t.name
                ))),
                None => Ok(None),
            }
        })
        .await
    }

    pub async fn delete_event_type(
        &self,
        account_id: String,
        name: String,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            c.execute(
                "DELETE FROM event_types WHERE account_id = ?1 AND name = ?2",
                params![account_id, name],
            )
            .ctx("deleting an event type")
            .map(|n| n == 1)
        })
        .await
    }

    pub async fn oldest_event_at(
        &self,
        account_id: String,
    ) -> Result<Option<Timestamp>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT created_at FROM events WHERE account_id = ?1 ORDER BY seq LIMIT 1",
            )
            .ctx("preparing the oldest event lookup")?
            .query_row([&account_id], |r| r.get::<_, i64>(0))
            .optional()
            .ctx("finding the oldest event")
            .map(|t| t.map(Timestamp))
        })
        .await
    }

    /// Retention, one small job at a time (see [`super::Store::purge`]).
    pub async fn purge(
        &self,
        account_id: String,
        before: Timestamp,
        batch: usize,
    ) -> Result<usize, StoreError> {
        self.write(move |c| {
            // The oldest `batch` events whose deliveries have all ended (seq follows creation),
            // of which the expired prefix goes: the scan is bounded whatever the table's size.
            // The newest event always stays, so `seq` (max + 1) never hands out a number again
            // and the feed never skips.
            // Each with its deliveries' run of rows (none if it had none), its type and row.
            type Expired = (String, i64, Option<i64>, Option<i64>, String, i64);
            let oldest: Vec<Expired> = c
                .prepare_cached(OLDEST_ENDED_EVENTS)
                .ctx("preparing the retention scan")?
                .query_map(params![batch as i64, account_id], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .ctx("finding expired events")?
                .collect::<Result<_, _>>()
                .ctx("finding expired events")?;
            let expired: Vec<Expired> = oldest
                .into_iter()
                .take_while(|(_, created_at, ..)| *created_at < before.0)
                .collect();
            let mut stretches: Vec<(&str, i64)> = Vec::new();
            for (id, _, from, until, event_type, seq) in &expired {
                c.prepare_cached(
                    "DELETE FROM attempts WHERE delivery_id IN
                        (SELECT id FROM deliveries
                         WHERE seq >= ?2 AND seq < ?3 AND event_id = ?1)",
                )
                .and_then(|mut s| s.execute(params![id, from, until]))
                .ctx("deleting expired attempts")?;
                c.prepare_cached(
                    "DELETE FROM deliveries WHERE seq >= ?2 AND seq < ?3 AND event_id = ?1",
                )
                .and_then(|mut s| s.execute(params![id, from, until]))
                .ctx("deleting expired deliveries")?;
                c.prepare_cached("DELETE FROM events WHERE id = ?1")
                    .and_then(|mut s| s.execute([id]))
                    .ctx("deleting an expired event")?;
                let stretch = seq / TYPE_STRETCH_ROWS;
                if !stretches.contains(&(event_type.as_str(), stretch)) {
                    stretches.push((event_type.as_str(), stretch));
                }
            }
            // The stretches these events were in go too, unless the account still has events
            // of the type there (which ones go first follows their deliveries, not their rows).
            let mut forget = c
                .prepare_cached(FORGET_EMPTY_STRETCH)
                .ctx("preparing to forget where expired events were")?;
            for (event_type, stretch) in stretches {
                forget
                    .execute(params![
                        account_id,
                        event_type,
                        stretch,
                        stretch * TYPE_STRETCH_ROWS,
                        (stretch + 1) * TYPE_STRETCH_ROWS
                    ])
                    .ctx("forgetting where expired events were")?;
            }
            Ok(expired.len())
        })
        .await
    }

    pub async fn purge_keys(&self, before: Timestamp, batch: usize) -> Result<usize, StoreError> {
        self.write(move |c| {
            c.execute(
                "DELETE FROM idempotency_keys WHERE (account_id, key) IN (
                    SELECT account_id, key FROM idempotency_keys WHERE created_at < ?1 LIMIT ?2)",
                params![before.0, batch as i64],
            )
            .ctx("deleting expired idempotency keys")
        })
        .await
    }

    pub async fn feed_position(
        &self,
        account_id: String,
        event_id: String,
    ) -> Result<Option<FeedPos>, StoreError> {
        self.read(move |c| {
            c.query_row(
                "SELECT seq FROM events WHERE id = ?1 AND account_id = ?2",
                params![event_id, account_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .ctx("finding an event's position")
            .map(|s| s.map(|seq| (0, seq)))
        })
        .await
    }

    // ---- deliveries ----------------------------------------------------------------------

    /// Deliveries, newest first.
    ///
    /// Each filter reads only its own rows: an event's run of row numbers (kept in its row),
    /// or an endpoint's deliveries through `deliveries_by_endpoint`.
    pub async fn list_deliveries(
        &self,
        account_id: String,
        filter: DeliveryFilter,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Page<Delivery>, StoreError> {
        self.read(move |c| {
            use rusqlite::types::Value;
            let before = before.unwrap_or(i64::MAX);
            let status = Value::from(filter.status.map(|s| s.as_str().to_owned()));
            let fetch = Value::from(limit as i64 + 1);
            // Each filter's statement and its parameters, in their order.
            let (sql, args): (&str, Vec<Value>) = match (filter.event_id, filter.endpoint_id) {
                (Some(event_id), endpoint_id) => {
                    let run: Option<(Option<i64>, Option<i64>)> = c
                        .prepare_cached(
                            "SELECT deliveries_from, deliveries_until FROM events
                             WHERE id = ?1 AND account_id = ?2",
                        )
                        .and_then(|mut st| {
                            st.query_row(params![event_id, account_id], |r| {
                                Ok((r.get(0)?, r.get(1)?))
                            })
                            .optional()
                        })
                        .ctx("reading where an event's deliveries are")?;
                    let Some((Some(from), Some(until))) = run else {
                        return Ok(super::page(Vec::new(), limit));
                    };
                    let args = vec![
                        account_id.into(),
                        before.min(until).into(),
                        event_id.into(),
                        endpoint_id.into(),
                        status,
                        fetch,
                        from.into(),
                    ];
                    (&EVENT_DELIVERIES, args)
                }
                (None, Some(endpoint_id)) => {
                    let args = vec![
                        account_id.into(),
                        before.into(),
                        endpoint_id.into(),
                        status,
                        fetch,
                    ];
                    (&ENDPOINT_DELIVERIES, args)
                }
                (None, None) => (
                    &ACCOUNT_DELIVERIES,
                    vec![account_id.into(), before.into(), status, fetch],
                ),
            };
            let rows = c
                .prepare_cached(sql)
                .ctx("preparing the delivery list")?
                .query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((delivery_from_row(r)?, r.get::<_, i64>(12)?))
                })
                .ctx("listing deliveries")?
                .collect::<Result<Vec<_>, _>>()
                .ctx("listing deliveries")?;
            Ok(super::page(rows, limit))
        })
        .await
    }

    /// One delivery with all its attempts, oldest attempt first.
    pub async fn get_delivery(
        &self,
        account_id: String,
        id: String,
    ) -> Result<Option<(Delivery, Vec<Attempt>)>, StoreError> {
        self.read(move |c| {
            // One snapshot for the row and its attempts, so that the count, the kept attempt
            // and the list agree (a write may commit between two reads).
            let c = &c
                .unchecked_transaction()
                .ctx("starting a delivery's read")?;
            let Some((d, kept)) = c
                .query_row(
                    &format!(
                        "SELECT {DELIVERY_COLS}, kept_attempt, kept_started_at, kept_duration_ms,
                            kept_status_code, kept_error, kept_response_body
                         FROM deliveries WHERE id = ?1 AND account_id = ?2"
                    ),
                    params![id, account_id],
                    |r| {
                        let kept = match r.get::<_, Option<u32>>(12)? {
                            Some(_) => Some(attempt_from_row(r, 12)?),
                            None => None,
                        };
                        Ok((delivery_from_row(r)?, kept))
                    },
                )
                .optional()
                .ctx("reading a delivery")?
            else {
                return Ok(None);
            };
            let mut attempts = c
                .prepare_cached(
                    "SELECT attempt, started_at, duration_ms, status_code, error, response_body
                     FROM attempts WHERE delivery_id = ?1 ORDER BY attempt",
                )
                .ctx("preparing the attempt list")?
                .query_map([&id], |r| attempt_from_row(r, 0))
                .ctx("listing attempts")?
                .collect::<Result<Vec<_>, _>>()
                .ctx("listing attempts")?;
            // The latest attempt, kept in the row (see `record_attempts`). A row of the same
            // number in `attempts` is the same attempt (`record_attempts` gives another of
            // that number the next one): listed once, as the kept one.
            if let Some(k) = kept {
                attempts.retain(|a| a.attempt != k.attempt);
                let at = attempts.partition_point(|a| a.attempt < k.attempt);
                attempts.insert(at, k);
            }
            Ok(Some((d, attempts)))
        })
        .await
    }

    // ---- the dispatcher's side -----------------------------------------------------------

    /// At start: deliveries a previous process had taken go back to `pending`, due now (or
    /// end `failed`, their endpoint turned off or removed meanwhile). Returns how many.
    pub async fn release_all_claims(&self) -> Result<usize, StoreError> {
        self.write_then(
            |c| {
                // Those of an endpoint turned off or removed meanwhile end (see
                // `fail_open_deliveries`).
                let ended: i64 = c
                    .prepare_cached(&format!(
                        "SELECT COUNT(*) FROM deliveries
                     WHERE status = 'delivering' AND NOT {ENDPOINT_LIVE}"
                    ))
                    .and_then(|mut st| st.query_row([], |r| r.get(0)))
                    .ctx("counting claims whose endpoint was turned off")?;
                let released = c
                    .execute(
                        &format!(
                            "UPDATE deliveries SET
                        status = CASE WHEN {ENDPOINT_LIVE} THEN 'pending' ELSE 'failed' END,
                        last_error = CASE WHEN {ENDPOINT_LIVE} THEN last_error
                            ELSE COALESCE(last_error, ?2) END,
                        next_attempt_at = CASE WHEN {ENDPOINT_LIVE}
                            THEN COALESCE(next_attempt_at, ?1) END
                     WHERE status = 'delivering'"
                        ),
                        params![Timestamp::now().0, ENDPOINT_GONE],
                    )
                    .ctx("releasing claims of a previous process")?;
                Ok((released, usize::try_from(ended).unwrap_or(0)))
            },
            super::count_ended_off,
        )
        .await
        .map(|(released, _)| released)
    }

    /// Takes up to `room(endpoint_id)` due deliveries of each enabled endpoint, and at most
    /// [`MAX_CLAIM`] in all, and marks them `delivering`.
    pub async fn claim_due<R>(
        &self,
        now: Timestamp,
        room: R,
    ) -> Result<Vec<DueDelivery>, StoreError>
    where
        R: Fn(&str) -> usize + Send + 'static,
    {
        let sealer = self.sealer.clone();
        self.write(move |c| {
            // Only endpoints with due or waiting work are read whole (their JSON parsed,
            // their secrets opened): an idle endpoint costs a poll one index seek.
            let due_endpoints: Vec<(String, Option<i64>)> = c
                .prepare_cached(ENDPOINTS_WITH_WORK)
                .ctx("preparing the endpoint scan")?
                .query_map([now.0], |r| Ok((r.get(0)?, r.get(1)?)))
                .ctx("finding endpoints with due work")?
                .collect::<Result<_, _>>()
                .ctx("finding endpoints with due work")?;
            // Waiting rows (no due time) in row order, from the endpoint's mark on.
            let mut select_waiting = c
                .prepare_cached(WAITING_SCAN)
                .ctx("preparing the waiting scan")?;
            let mut select = c
                .prepare_cached(DUE_SCAN)
                .ctx("preparing the due scan")?;
            let mut mark = c
                .prepare_cached(
                    "UPDATE deliveries SET status = 'delivering', claim = claim + 1 WHERE seq = ?1",
                )
                .ctx("preparing the claim")?;
            let mut out = Vec::new();
            let mut payloads: HashMap<String, bytes::Bytes> = HashMap::new();
            for (ep_id, waiting_from) in due_endpoints {
                // One claim holds the writer: keep it short, the poller comes back at once.
                let left = MAX_CLAIM.saturating_sub(out.len());
                if left == 0 {
                    break;
                }
                let n = room(&ep_id).min(left);
                if n == 0 {
                    continue;
                }
                let read = |r: &Row<'_>| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, i64>(7)?,
                    ))
                };
                // Due retries first, then the rows waiting for room, oldest first.
                let mut rows = select
                    .query_map(params![ep_id, now.0, n as i64], read)
                    .ctx("scanning due deliveries")?
                    .collect::<Result<Vec<_>, _>>()
                    .ctx("scanning due deliveries")?;
                // Where the endpoint's waiting mark moves once its rows are taken.
                let mut moved_mark = None;
                if let Some(from) = waiting_from
                    && rows.len() < n
                {
                    let asked = n - rows.len();
                    let waiting = select_waiting
                        .query_map(params![ep_id, from, asked as i64], read)
                        .ctx("scanning waiting deliveries")?
                        .collect::<Result<Vec<_>, _>>()
                        .ctx("scanning waiting deliveries")?;
                    // Fewer than asked: none is left past the mark. Otherwise the rest are
                    // past the last one taken (the scan is in row order).
                    moved_mark = Some(match waiting.last() {
                        Some(last) if waiting.len() == asked => Some(last.6 + 1),
                        _ => None,
                    });
                    rows.extend(waiting);
                }
                if rows.is_empty() {
                    // A stale mark, if any: nothing of the endpoint waits.
                    if let Some(next) = moved_mark {
                        move_waiting_mark(c, &ep_id, next)?;
                    }
                    continue;
                }
                // An endpoint that cannot be read or whose secret cannot be opened keeps its
                // deliveries pending (and says why) rather than stopping the rest.
                let ep = match load_endpoint(c, &sealer, None, &ep_id) {
                    Ok(Some(ep)) => Arc::new(ep),
                    Ok(None) => continue, // not in this transaction: the scan just found it
                    Err(e) => {
                        tracing::error!(endpoint = %ep_id, error = %e, "an endpoint's deliveries wait: it cannot be read or its secret opened");
                        continue;
                    }
                };
                // Only now that the rows will be taken does the mark move past them.
                if let Some(next) = moved_mark {
                    move_waiting_mark(c, &ep_id, next)?;
                }
                for (delivery_id, attempts, event_id, event_type, created_at, data, row, claim) in
                    rows
                {
                    mark.execute([row]).ctx("claiming a delivery")?;
                    let payload = payloads
                        .entry(event_id.clone())
                        .or_insert_with(|| {
                            envelope(&event_id, &event_type, Timestamp(created_at), &data).into()
                        })
                        .clone();
                    out.push(DueDelivery {
                        delivery_id,
                        row,
                        claim,
                        attempts,
                        event_id,
                        payload,
                        endpoint: ep.clone(),
                        manual_after_end: false,
                        manual: false,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    /// When the earliest `pending` delivery is due.
    pub async fn next_due_at(&self, after: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        // One seek into `deliveries_due_by_endpoint` per endpoint the claim looks at (turning
        // an endpoint off or removing it ends its due deliveries in the same write, and the
        // ones it held as their outcomes come, so no other endpoint has due ones; what it left
        // waiting, the ender ends); rows waiting for room are due since their endpoint's
        // `waiting_since`.
        self.read(move |c| {
            c.query_row(NEXT_DUE, [after.0], |r| r.get::<_, Option<i64>>(0))
                .ctx("finding the next due delivery")
                .map(|t| t.map(Timestamp))
        })
        .await
    }

    /// Records attempts and moves their deliveries on, in one job that rides with the next
    /// group commit (see the module's head).
    ///
    /// A delivery's latest attempt is kept in its own row (`kept_*`); the attempt it
    /// replaces moves to `attempts` first. So a delivery that succeeds at its first try writes
    /// only its row. An attempt whose outcome no longer moves the delivery on (an old claim's)
    /// goes to `attempts` directly.
    pub async fn record_attempts(&self, records: Vec<AttemptRecord>) -> Result<(), StoreError> {
        let subscribers = self.subscribers.clone();
        let batch = self.end_batch;
        let job = move |c: &Connection| {
            let mut ended = super::EndedTally::default();
            let mut insert = c
                .prepare_cached(
                    "INSERT OR REPLACE INTO attempts (delivery_id, attempt, started_at,
                    duration_ms, status_code, error, response_body, claim)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .ctx("preparing the attempt insert")?;
            // The kept attempt moves out only if the update below will apply (same guard).
            let mut move_kept = c
                .prepare_cached(
                    "INSERT OR REPLACE INTO attempts (delivery_id, attempt, started_at,
                    duration_ms, status_code, error, response_body, claim)
                 SELECT id, kept_attempt, kept_started_at, kept_duration_ms,
                    kept_status_code, kept_error, kept_response_body, kept_claim
                 FROM deliveries
                 WHERE seq = ?1 AND kept_attempt IS NOT NULL AND kept_attempt <> ?2
                   AND (?3 = 0 OR (status = 'delivering' AND claim = ?4))
                   AND (?5 = 0 OR attempts < ?2)",
                )
                .ctx("preparing the kept attempt's move")?;
            // The usual case, in one statement: the row keeps no other attempt.
            let mut update_fresh = c
                .prepare_cached(&RECORD_FRESH)
                .ctx("preparing the delivery update")?;
            let mut update = c
                .prepare_cached(&RECORD)
                .ctx("preparing the delivery update")?;
            let mut release = c.prepare_cached(&RELEASE).ctx("preparing the release")?;
            let now = Timestamp::now().0;
            // Whether each endpoint is on, read once a job, for what an outcome that leaves
            // its delivery `pending` does when it is not: ends it (`RECORD`, `RELEASE`).
            let mut live: HashMap<String, bool> = HashMap::new();
            for rec in &records {
                // Given back unsent: due now. (Not a waiting row: it may be old, a retry or a
                // row of a drained backlog, and a mark that far back would send the next
                // claims through every row of the endpoint since.)
                let Some(a) = &rec.attempt else {
                    let released = release
                        .execute(params![rec.row, now, rec.claim])
                        .ctx("releasing a delivery")?;
                    if released > 0 && !endpoint_on(c, &mut live, &rec.endpoint_id)? {
                        ended.add(super::Ended::EndpointOff, 1);
                    }
                    continue;
                };
                // A 410 from a version of the endpoint since changed (a new URL, turned off
                // and on) says nothing of the endpoint as it is: its delivery is tried again
                // at once, as the endpoint is now (`RECORD` ends it if that is off).
                let outcome = match rec.outcome {
                    Outcome::Gone if !is_version(c, &rec.endpoint_id, rec.endpoint_version)? => {
                        Outcome::RetryAt(Timestamp(now))
                    }
                    _ => rec.outcome.clone(),
                };
                // A failure moves a delivery on only while it is still ours (`delivering`):
                // one whose endpoint was turned off meanwhile ends `failed` (`RECORD`).
                let (status, next, only_if_delivering) = match outcome {
                    Outcome::Succeeded => ("succeeded", None, false),
                    Outcome::RetryAt(t) => ("pending", Some(t.0), true),
                    Outcome::Failed | Outcome::Gone => ("failed", None, true),
                    Outcome::Released => ("pending", Some(now), true),
                };
                // Writes the outcome under `number`, the number checked (`FRESH_NUMBER`) when
                // `guarded`; the rows it changed.
                let mut write = |number: u32, guarded: bool| -> Result<usize, StoreError> {
                    let fields = params![
                        rec.row,
                        status,
                        number,
                        next,
                        a.started_at.0,
                        a.status_code,
                        a.error,
                        now,
                        only_if_delivering,
                        rec.claim,
                        a.duration_ms as i64,
                        a.response_body,
                        guarded
                    ];
                    let updated = update_fresh.execute(fields).ctx("updating a delivery")?;
                    if updated > 0 {
                        return Ok(updated);
                    }
                    // The row keeps another attempt (or the outcome does not apply, or the
                    // number is taken): that attempt moves to `attempts` first, if the update
                    // is to apply.
                    move_kept
                        .execute(params![
                            rec.row,
                            number,
                            only_if_delivering,
                            rec.claim,
                            guarded
                        ])
                        .ctx("moving a kept attempt")?;
                    update.execute(fields).ctx("updating a delivery")
                };
                let mut number = a.attempt;
                let mut updated = Some(write(number, true)?);
                if updated == Some(0) {
                    // Not written: the outcome does not move the row on, or the number was not
                    // surely free (see `FRESH_NUMBER`). If another attempt holds it, this one
                    // takes the next; if not, it is written under its own, unchecked.
                    updated = match number_taken(c, rec, number, a)? {
                        Numbered::Taken(next_free) => {
                            number = next_free;
                            Some(write(number, true)?)
                        }
                        Numbered::Free => Some(write(number, false)?),
                        Numbered::Written => None,
                    };
                }
                if updated.is_some_and(|n| n > 0) {
                    if status != "pending" {
                        ended.outcome(&outcome);
                    } else if !endpoint_on(c, &mut live, &rec.endpoint_id)? {
                        ended.add(super::Ended::EndpointOff, 1);
                    }
                }
                if updated == Some(0) {
                    insert
                        .execute(params![
                            rec.delivery_id,
                            number,
                            a.started_at.0,
                            a.duration_ms as i64,
                            a.status_code,
                            a.error,
                            a.response_body,
                            rec.claim
                        ])
                        .ctx("inserting an attempt")?;
                    // The row counts every attempt it holds, this one too.
                    c.prepare_cached(
                        "UPDATE deliveries SET attempts = MAX(attempts, ?2) WHERE seq = ?1",
                    )
                    .and_then(|mut st| st.execute(params![rec.row, number]))
                    .ctx("counting an attempt")?;
                }
                // A 410 disables the endpoint it came from: the version the attempt was made
                // with. One from before a change (a new URL, turned off and on) says nothing
                // of the endpoint as it is now, and the next attempt asks it again.
                if matches!(outcome, Outcome::Gone)
                    && c.execute(
                        "UPDATE endpoints SET enabled = 0, disabled_reason = ?2,
                        updated_at = MAX(updated_at + 1, ?3), held_until = NULL
                     WHERE id = ?1 AND updated_at = ?4 AND deleted_at IS NULL",
                        params![rec.endpoint_id, GONE_REASON, now, rec.endpoint_version],
                    )
                    .ctx("disabling a gone endpoint")?
                        > 0
                {
                    let (off, _) = fail_open_deliveries(c, &rec.endpoint_id, OFF_GONE, batch)?;
                    ended.add(super::Ended::EndpointOff, off);
                    live.insert(rec.endpoint_id.clone(), false);
                    subscribers.forget_all();
                }
            }
            Ok(ended)
        };
        self.write_riding(job, |done| {
            if let Ok(ended) = done {
                ended.count();
            }
        })
        .await?;
        Ok(())
    }

    /// A step of a recovery (see [`super::Store::recover`]).
    pub async fn recover(
        &self,
        account_id: String,
        endpoint_id: String,
        since: Timestamp,
        started: Timestamp,
        after: i64,
        batch: usize,
    ) -> Result<Result<(usize, Option<i64>), RetryRefusal>, StoreError> {
        self.write(move |c| {
            let live: Option<bool> = c
                .query_row(
                    "SELECT enabled FROM endpoints
                     WHERE id = ?1 AND account_id = ?2 AND deleted_at IS NULL",
                    params![endpoint_id, account_id],
                    |r| r.get(0),
                )
                .optional()
                .ctx("reading an endpoint")?;
            match live {
                None => return Ok(Err(RetryRefusal::NotFound)),
                Some(false) => return Ok(Err(RetryRefusal::EndpointDisabled)),
                Some(true) => {}
            }
            let rows: Vec<(i64, String, i64)> = c
                .prepare_cached(
                    "SELECT seq, status, created_at FROM deliveries
                     WHERE endpoint_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )
                .ctx("preparing the recovery scan")?
                .query_map(params![endpoint_id, after, batch as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .ctx("scanning deliveries to recover")?
                .collect::<Result<_, _>>()
                .ctx("scanning deliveries to recover")?;
            // The walk ends where deliveries created after the recovery began start.
            let newer = rows.iter().position(|r| r.2 > started.0);
            let rows = &rows[..newer.unwrap_or(rows.len())];
            let now = Timestamp::now().0;
            let mut queued = 0;
            for (seq, status, created_at) in rows {
                if status == "failed" && *created_at >= since.0 {
                    c.prepare_cached(
                        "UPDATE deliveries SET status = 'pending', next_attempt_at = ?2,
                            claim = claim + 1, updated_at = ?2
                         WHERE seq = ?1",
                    )
                    .and_then(|mut st| st.execute(params![seq, now]))
                    .ctx("queueing a failed delivery again")?;
                    queued += 1;
                }
            }
            let next = (newer.is_none() && rows.len() == batch)
                .then(|| rows.last().map(|r| r.0))
                .flatten();
            Ok(Ok((queued, next)))
        })
        .await
    }

    /// The account's endpoint's last delivery's row number (0 if none).
    pub async fn last_delivery_row(
        &self,
        account_id: String,
        endpoint_id: String,
    ) -> Result<i64, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT COALESCE(MAX(seq), 0) FROM deliveries
                 WHERE endpoint_id = ?1 AND account_id = ?2",
            )
            .and_then(|mut st| st.query_row([endpoint_id, account_id], |r| r.get(0)))
            .ctx("finding an endpoint's last delivery")
        })
        .await
    }

    /// The row number and creation time of the account's endpoint's first delivery after row
    /// `after`.
    pub async fn first_delivery_after(
        &self,
        account_id: String,
        endpoint_id: String,
        after: i64,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(FIRST_DELIVERY_AFTER)
                .and_then(|mut st| {
                    st.query_row(params![endpoint_id, after, account_id], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()
                })
                .ctx("finding where a recovery starts")
        })
        .await
    }

    /// Keeps until when an endpoint asked to be left alone (the later of this and what is
    /// kept), or with `forget` forgets it if it is no later than `until`.
    pub async fn endpoint_hold(
        &self,
        endpoint_id: String,
        until: Timestamp,
        forget: bool,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let sql = if forget {
                "UPDATE endpoints SET held_until = NULL WHERE id = ?1 AND held_until <= ?2"
            } else {
                "UPDATE endpoints SET held_until = MAX(COALESCE(held_until, 0), ?2) WHERE id = ?1"
            };
            c.prepare_cached(sql)
                .ctx("preparing an endpoint's hold")?
                .execute(params![endpoint_id, until.0])
                .ctx("keeping an endpoint's hold")?;
            Ok(())
        })
        .await
    }

    /// The endpoints (enabled, not removed) that asked to be left alone until after `now`,
    /// and until when.
    pub async fn endpoint_holds(
        &self,
        now: Timestamp,
    ) -> Result<Vec<(String, Timestamp)>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, held_until FROM endpoints
                 WHERE held_until > ?1 AND enabled = 1 AND deleted_at IS NULL",
            )
            .ctx("preparing the endpoints' holds")?
            .query_map([now.0], |r| Ok((r.get(0)?, Timestamp(r.get(1)?))))
            .ctx("reading the endpoints' holds")?
            .collect::<Result<_, _>>()
            .ctx("reading the endpoints' holds")
        })
        .await
    }

    /// Makes every `pending` delivery of an endpoint due now (the endpoint is back).
    pub async fn pull_forward(&self, endpoint_id: String) -> Result<usize, StoreError> {
        self.write(move |c| {
            let now = Timestamp::now().0;
            c.execute(
                "UPDATE deliveries SET next_attempt_at = ?2
                 WHERE endpoint_id = ?1 AND status = 'pending' AND next_attempt_at > ?2",
                params![endpoint_id, now],
            )
            .ctx("making an endpoint's deliveries due")
        })
        .await
    }

    /// Ends as `failed` the `pending` deliveries of an endpoint created, and last changed,
    /// before `before` (they waited out the whole retry schedule while the endpoint was
    /// unreachable).
    pub async fn fail_stale(
        &self,
        endpoint_id: String,
        before: Timestamp,
    ) -> Result<usize, StoreError> {
        self.fail_stale_in(endpoint_id, before, SWEEP_BATCH).await
    }

    /// [`Self::fail_stale`] in jobs that each read at most `batch` rows.
    async fn fail_stale_in(
        &self,
        endpoint_id: String,
        before: Timestamp,
        batch: usize,
    ) -> Result<usize, StoreError> {
        let mut ended = 0;
        let mut walk = None;
        loop {
            let id = endpoint_id.clone();
            let done = self
                .write_then(
                    move |c| {
                        let walk = match walk {
                            Some(w) => w,
                            None => SweepWalk {
                                from: i64::MIN,
                                until: c
                                    .prepare_cached(
                                        "SELECT COALESCE(MAX(seq), 0) FROM deliveries
                                     WHERE endpoint_id = ?1",
                                    )
                                    .and_then(|mut st| st.query_row([&id], |r| r.get(0)))
                                    .ctx("finding an endpoint's last delivery")?,
                            },
                        };
                        fail_stale_rows(c, &id, before, Timestamp::now(), walk, batch)
                    },
                    |done: Result<&(usize, Option<SweepWalk>), &StoreError>| {
                        if let Ok((n, _)) = done {
                            super::count_ended(super::Ended::HeldBack, *n);
                        }
                    },
                )
                .await;
            let (n, next) = match done {
                Ok(done) => done,
                Err(e) => {
                    if ended > 0 {
                        tracing::warn!(endpoint = %endpoint_id, count = ended,
                            "deliveries waited out the retry schedule (the sweep stopped early)");
                    }
                    return Err(e);
                }
            };
            ended += n;
            match next {
                Some(w) => walk = Some(w),
                None => return Ok(ended),
            }
        }
    }

    /// Ends, in jobs of [`END_BATCH`] rows, the deliveries that endpoints turned off (or
    /// removed) left waiting: a turning off ends the first batch itself
    /// ([`fail_open_deliveries`]). Returns how many it ended.
    pub async fn end_turned_off(&self) -> Result<usize, StoreError> {
        let ids: Vec<String> = self
            .read(|c| {
                c.prepare_cached(
                    "SELECT id FROM endpoints
                     WHERE waiting_from IS NOT NULL AND (enabled = 0 OR deleted_at IS NOT NULL)",
                )
                .and_then(|mut st| {
                    st.query_map([], |r| r.get(0))
                        .and_then(|rows| rows.collect::<Result<_, _>>())
                })
                .ctx("finding endpoints turned off with deliveries left")
            })
            .await?;
        let mut ended = 0;
        for id in ids {
            ended += self.end_turned_off_endpoint(id).await?;
        }
        Ok(ended)
    }

    /// [`Self::end_turned_off`] for one endpoint (nothing if it is on, or has none left).
    async fn end_turned_off_endpoint(&self, endpoint_id: String) -> Result<usize, StoreError> {
        let batch = self.end_batch;
        let mut ended = 0;
        loop {
            let id = endpoint_id.clone();
            let (n, more) = self
                .write_then(
                    move |c| match turned_off_reason(c, &id)? {
                        None => Ok((0, false)),
                        Some(why) => end_waiting_rows(c, &id, why, Timestamp::now().0, batch),
                    },
                    |done| {
                        if let Ok((n, _)) = done {
                            super::count_ended(super::Ended::EndpointOff, *n);
                        }
                    },
                )
                .await?;
            ended += n;
            if !more {
                return Ok(ended);
            }
        }
    }

    /// Takes one delivery for a manual retry, whatever its state. One already
    /// `delivering` is this process's (the only one on the database): it is taken over under
    /// a new claim, and the old one is named in the answer.
    pub async fn claim_for_retry(
        &self,
        account_id: String,
        delivery_id: String,
    ) -> Result<Result<RetryClaim, RetryRefusal>, StoreError> {
        let sealer = self.sealer.clone();
        self.write(move |c| {
            let row = c
                .query_row(
                    "SELECT d.status, d.attempts, d.endpoint_id, e.id, e.type, e.created_at, e.data,
                        d.seq, d.claim + 1
                     FROM deliveries d JOIN events e ON e.id = d.event_id
                     WHERE d.id = ?1 AND d.account_id = ?2",
                    params![delivery_id, account_id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, u32>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, i64>(5)?,
                            r.get::<_, String>(6)?,
                            r.get::<_, i64>(7)?,
                            r.get::<_, i64>(8)?,
                        ))
                    },
                )
                .optional()
                .ctx("reading a delivery to retry")?;
            let Some((
                status,
                attempts,
                endpoint_id,
                event_id,
                event_type,
                created_at,
                data,
                row,
                claim,
            )) = row
            else {
                return Ok(Err(RetryRefusal::NotFound));
            };
            let status = DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending);
            let replaces = (status == DeliveryStatus::Delivering).then_some(claim - 1);
            let Some(ep) = load_endpoint(c, &sealer, Some(&account_id), &endpoint_id)? else {
                return Ok(Err(RetryRefusal::EndpointDisabled));
            };
            if !ep.enabled {
                return Ok(Err(RetryRefusal::EndpointDisabled));
            }
            c.execute(
                "UPDATE deliveries SET status = 'delivering', claim = claim + 1, updated_at = ?2,
                    next_attempt_at = ?2
                 WHERE id = ?1",
                params![delivery_id, Timestamp::now().0],
            )
            .ctx("claiming a delivery to retry")?;
            let payload = envelope(&event_id, &event_type, Timestamp(created_at), &data).into();
            let due = DueDelivery {
                delivery_id,
                row,
                claim,
                attempts,
                event_id,
                payload,
                endpoint: Arc::new(ep),
                manual_after_end: status.is_terminal(),
                manual: true,
            };
            Ok(Ok(RetryClaim { due, replaces }))
        })
        .await
    }
}

/// The handle on the checkpoint thread: dropping every clone (the store's and the writer
/// thread's) stops it.
#[derive(Clone)]
struct Checkpointer {
    nudge: std::sync::mpsc::SyncSender<()>,
    /// Held by whoever checkpoints (the checkpointer, the writer, `reseal_secrets`): two
    /// checkpoints at once would make one of them fail busy.
    turn: Arc<Mutex<()>>,
}

impl Checkpointer {
    /// Asks for a checkpoint soon. A nudge already waiting is enough.
    fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }

    /// Waits for a checkpoint in progress to end, and keeps the next one from starting.
    fn turn(&self) -> std::sync::MutexGuard<'_, ()> {
        take_turn(&self.turn)
    }
}

/// The lock guards nothing but the turn: a poisoned one still gives it.
fn take_turn(turn: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    turn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Folds the WAL back into the database every [`CHECKPOINT_EVERY`], and whenever the
/// writer nudges it (passive: it never waits for readers or the writer's transactions, only
/// for its turn while another checkpoint runs), until the store and its writer thread are
/// gone.
fn start_checkpointer(path: &Path) -> Result<Checkpointer, StoreError> {
    use std::sync::mpsc::RecvTimeoutError;
    let conn = open_connection(path)?;
    let (nudge, nudged) = std::sync::mpsc::sync_channel::<()>(1);
    let handle = Checkpointer {
        nudge,
        turn: Arc::default(),
    };
    let turn = handle.turn.clone();
    std::thread::Builder::new()
        .name(CHECKPOINT_THREAD.into())
        .spawn(move || {
            // A checkpoint that fails goes on failing while its cause lasts (a full disk).
            let mut failing = crate::telemetry::Repeating::default();
            while let Ok(()) | Err(RecvTimeoutError::Timeout) =
                nudged.recv_timeout(CHECKPOINT_EVERY)
            {
                let _turn = take_turn(&turn);
                match conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                    Err(e) => {
                        if let Some(failures) = failing.failed() {
                            tracing::warn!(error = %e, failures, "WAL checkpoint failed");
                        }
                    }
                    Ok(()) => {
                        if failing.succeeded() {
                            tracing::info!("WAL checkpoints succeed again");
                        }
                    }
                }
            }
        })
        .map_err(|source| StoreError::Io {
            context: "starting the checkpoint thread",
            source,
        })?;
    Ok(handle)
}

/// A write job running `f` under `isolation`, and where its result will arrive; `on_done`
/// runs on the writer thread once the outcome is known (see `write_then`).
fn write_job<T, F, D>(
    isolation: Isolation,
    f: F,
    on_done: D,
) -> (WriteJob, oneshot::Receiver<Result<T, StoreError>>)
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    D: FnOnce(Result<&T, &StoreError>) + Send + 'static,
{
    let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
    let job: WriteJob = Box::new(move |conn| {
        let (result, spoiled) = match conn {
            Some(conn) => {
                // Outside a savepoint, a failure spoils the group only if the job had
                // changed rows by then (a failed statement undoes its own changes): a job
                // that fails before writing — say, on an endpoint whose secret cannot be
                // opened — costs the others nothing.
                let changes_before = conn.total_changes();
                let wrote = || conn.total_changes() != changes_before;
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match isolation {
                    Isolation::Savepoint => in_savepoint(conn, f),
                    Isolation::Group => f(conn),
                })) {
                    Ok(result) => {
                        let spoiled = isolation == Isolation::Group && result.is_err() && wrote();
                        (result, spoiled)
                    }
                    Err(_) => {
                        // A bug, not a data problem: undo the job (or the group), keep
                        // the writer, and still run `on_done` so that nothing it guards
                        // leaks.
                        tracing::error!("a write job panicked; its changes were rolled back");
                        if isolation == Isolation::Savepoint {
                            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
                        }
                        let failed =
                            Err(StoreError::Commit("a write job failed unexpectedly".into()));
                        (failed, isolation == Isolation::Group && wrote())
                    }
                }
            }
            None => (
                Err(StoreError::Commit("could not begin a transaction".into())),
                false,
            ),
        };
        if let Err(e) = &result
            && e.is_full()
        {
            GROUP_FULL.with(|f| f.set(true));
        }
        let done: Completion = Box::new(move |commit: Result<(), StoreError>| {
            // A job shares the commit's fate, unless it failed on its own (then it says
            // why) or took the group down (then its own failure is the reason). A job
            // refused in a group that was rolled back reports the rollback: what it
            // was refused for may not hold once the others are retried.
            let out = match (result, commit) {
                (Ok(v), commit) => commit.map(|()| v),
                (Err(own), Ok(())) => Err(own),
                (Err(own), Err(_)) if spoiled => Err(own),
                (Err(_), Err(group)) => Err(group),
            };
            on_done(out.as_ref());
            let _ = tx.send(out);
        });
        (done, spoiled)
    });
    (job, rx)
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // Cached statements: every write job opens and releases one, so skip the re-parse.
    conn.prepare_cached("SAVEPOINT job")
        .and_then(|mut s| s.execute([]))
        .ctx("opening a savepoint")?;
    match f(conn) {
        Ok(v) => {
            conn.prepare_cached("RELEASE job")
                .and_then(|mut s| s.execute([]))
                .ctx("releasing a savepoint")?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(e)
        }
    }
}

fn writer_loop(
    conn: Connection,
    mut rx: mpsc::Receiver<WriteJob>,
    riders: Riders,
    mut wal: WalKeeper,
    on_rollback: impl Fn(),
) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(MAX_GROUP);
    // While the disk stays full every group fails alike.
    let mut full_disk = crate::telemetry::Repeating::default();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Whatever rides along commits with this group, after its other jobs. (An outcome
        // cannot precede its delivery's insert: a delivery is attempted only once that
        // insert committed.)
        batch.append(&mut riders.slot());
        let started = std::time::Instant::now();
        let jobs = batch.len();
        // A transaction left open by a rollback that failed would make every BEGIN fail.
        if !conn.is_autocommit() {
            tracing::error!("a write transaction was left open; rolling it back");
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "rolling back a transaction left open failed");
            }
        }
        GROUP_FULL.with(|f| f.set(false));
        let began = conn.execute_batch("BEGIN IMMEDIATE");
        let mut open = began.is_ok();
        // The group was rolled back for one job's failure: the others may simply retry.
        let mut spoiled_group = false;
        let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            let conn_ref = open.then_some(&conn);
            // `write_isolated` catches a job's own panic; this is the last line of defence.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn_ref))) {
                Ok((done, spoiled)) => {
                    completions.push(done);
                    // A job outside a savepoint failed halfway: none of the group may commit.
                    // The jobs after it see no transaction and fail; every job's completion
                    // gets the rollback.
                    if spoiled && open {
                        tracing::error!("a write job failed; its whole group is rolled back");
                        if !conn.is_autocommit()
                            && let Err(e) = conn.execute_batch("ROLLBACK")
                        {
                            tracing::error!(error = %e, "rolling a group back failed");
                        }
                        open = false;
                        spoiled_group = true;
                    }
                }
                Err(_) => tracing::error!("a write job panicked outside its savepoint guard"),
            }
            // SQLite itself may roll the whole transaction back (disk full, I/O error): the
            // jobs after that must not run in autocommit mode, each committing on its own.
            if open && conn.is_autocommit() {
                if !group_full() {
                    tracing::error!("SQLite rolled the group transaction back");
                }
                open = false;
            }
        }
        let mut commit_took = None;
        let committed = match began {
            Ok(()) if !open => {
                on_rollback();
                Err(if spoiled_group {
                    "another write of the same transaction failed, so none of it was committed"
                } else {
                    "the transaction was rolled back by the database"
                }
                .to_owned())
            }
            Ok(()) => match timed(|| conn.execute_batch("COMMIT")) {
                (Ok(()), took) => {
                    commit_took = Some(took);
                    Ok(())
                }
                (Err(e), _) => {
                    note_full(&e);
                    if !group_full() {
                        tracing::error!(error = %e, "group commit failed");
                    }
                    let _ = conn.execute_batch("ROLLBACK");
                    on_rollback();
                    Err(e.to_string())
                }
            },
            Err(e) => {
                note_full(&e);
                if !group_full() {
                    tracing::error!(error = %e, "could not begin a write transaction");
                }
                Err(e.to_string())
            }
        };
        let took = started.elapsed();
        if took > SLOW_COMMIT {
            tracing::warn!(ms = took.as_millis() as u64, jobs, "slow group commit");
        } else if took > NOTED_COMMIT {
            tracing::debug!(
                ms = took.as_millis() as u64,
                jobs,
                "group commit over 10 ms"
            );
        }
        // A full disk is said as such, whichever write met it: the callers answer `503`,
        // and a caller that retries succeeds once room is made.
        let full = GROUP_FULL.with(|f| f.replace(false));
        if committed.is_err() {
            let reason = if full { "storage_full" } else { "other" };
            metrics::counter!("hookline_sqlite_group_failures_total", "reason" => reason)
                .increment(1);
        }
        if full && committed.is_err() {
            if let Some(groups_refused) = full_disk.failed() {
                tracing::error!(
                    groups_refused,
                    "the disk under the database is full: writes are refused (503 \
                     storage_full) until room is made"
                );
            }
        } else if committed.is_ok() && full_disk.succeeded() {
            tracing::info!("the database takes writes again");
        }
        let failure = if full {
            StoreError::Full
        } else if spoiled_group {
            StoreError::Unavailable
        } else {
            StoreError::Commit
        };
        for done in completions {
            let outcome = committed.clone().map_err(failure);
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| done(outcome))).is_err() {
                tracing::error!("a write job's completion panicked");
            }
        }
        // After the answers: this group's callers do not wait for it (the next group may).
        wal.after_commit(&conn);
        // Per group, not per write: a few hundred nanoseconds at most a few thousand times
        // a second.
        metrics::histogram!("hookline_sqlite_group_commit_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("hookline_sqlite_group_commit_jobs").record(jobs as f64);
        if let Some(took) = commit_took {
            metrics::histogram!("hookline_sqlite_commit_duration_seconds")
                .record(took.as_secs_f64());
        }
    }
}

/// Runs `f`; what it returned, and how long it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, std::time::Duration) {
    let started = std::time::Instant::now();
    let out = f();
    (out, started.elapsed())
}

thread_local! {
    /// Frames in the WAL after the writer thread's last commit, as SQLite's WAL hook reports
    /// them (it runs on the committing thread; only the writer thread commits).
    static WAL_FRAMES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
    /// Whether a write of the writer thread's current group met a full disk (its jobs run
    /// on that thread).
    static GROUP_FULL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a write of the writer's current group met a full disk (see [`GROUP_FULL`]).
fn group_full() -> bool {
    GROUP_FULL.with(|f| f.get())
}

/// Notes a statement of the writer's current group that met a full disk.
fn note_full(e: &rusqlite::Error) {
    if let rusqlite::Error::SqliteFailure(f, _) = e
        && f.code == rusqlite::ErrorCode::DiskFull
    {
        GROUP_FULL.with(|g| g.set(true));
    }
}

fn note_wal_frames(_wal: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(frames));
    Ok(())
}

/// Keeps the WAL from growing without end under a steady write load.
///
/// SQLite starts the WAL over from its first frame only when a write transaction begins
/// after a checkpoint has copied *every* frame back into the database, and no reader still
/// reads from the WAL. The checkpointer's passive checkpoints never get there while commits
/// keep coming (each one appends frames while it copies), so the WAL would grow for as long
/// as the load lasts, every commit appending to fresh, uncached blocks of a growing file
/// (more work for the kernel on each write and fsync, and the disk filled at the rate of the
/// load). So the writer:
/// - nudges the checkpointer every [`CHECKPOINT_NUDGE_FRAMES`] frames, so that it keeps
///   close behind;
/// - past [`WAL_RESTART_FRAMES`], checkpoints the short rest itself between two groups
///   (after the checkpointer's pass in progress), where no commit can slip in, and its next
///   commit starts the WAL over;
/// - if that did not happen (a reader held the copy or the restart back), tries again
///   [`WAL_RETRY_FRAMES`] later, this time waiting up to [`WAL_RESTART_WAIT`] for the
///   readers to leave the WAL.
///
/// It relies on SQLite's WAL hook, which `PRAGMA wal_autocheckpoint` would replace: that
/// pragma runs on the writer's connection before the keeper is made, never after.
struct WalKeeper {
    checkpointer: Checkpointer,
    /// Frames in the WAL after the commit before (it only grows until the WAL starts over).
    last_frames: i32,
    /// Frame count at which the checkpointer is nudged next.
    next_nudge: i32,
    /// Frame count at which the writer checkpoints next.
    next_restart: i32,
    /// The writer checkpointed since the WAL last started over: the next try waits for
    /// readers.
    tried: bool,
}

impl WalKeeper {
    fn new(conn: &Connection, checkpointer: Checkpointer) -> Self {
        conn.wal_hook(Some(note_wal_frames));
        WalKeeper {
            checkpointer,
            last_frames: 0,
            next_nudge: CHECKPOINT_NUDGE_FRAMES,
            next_restart: WAL_RESTART_FRAMES,
            tried: false,
        }
    }

    fn after_commit(&mut self, conn: &Connection) {
        let frames = WAL_FRAMES.with(|f| f.get());
        if frames < self.last_frames {
            // The WAL started over (after the writer's checkpoint, or the checkpointer's
            // while the writer was idle).
            self.next_nudge = CHECKPOINT_NUDGE_FRAMES;
            self.next_restart = WAL_RESTART_FRAMES;
            self.tried = false;
        }
        self.last_frames = frames;
        if frames >= self.next_restart {
            // No nudge now: the writer takes the rest itself, and a pass started just
            // before would only make it wait.
            self.checkpoint(conn);
            self.next_restart = frames.saturating_add(WAL_RETRY_FRAMES);
            self.next_nudge = frames.saturating_add(CHECKPOINT_NUDGE_FRAMES);
        } else if frames >= self.next_nudge {
            self.checkpointer.nudge();
            self.next_nudge = frames.saturating_add(CHECKPOINT_NUDGE_FRAMES);
        }
    }

    /// Copies what is left of the WAL into the database, so that the next commit can start
    /// it over. The first try never waits; a later one (the first did not lead to a restart)
    /// waits up to [`WAL_RESTART_WAIT`] for readers still in the WAL.
    fn checkpoint(&mut self, conn: &Connection) {
        let started = std::time::Instant::now();
        // After the checkpointer's pass in progress, if any: what that leaves is short.
        let _turn = self.checkpointer.turn();
        let retry = std::mem::replace(&mut self.tried, true);
        let mode = if retry { "RESTART" } else { "PASSIVE" };
        if retry && let Err(e) = conn.busy_timeout(WAL_RESTART_WAIT) {
            tracing::warn!(error = %e, "shortening the writer's busy timeout");
        }
        let result = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        if retry && let Err(e) = conn.busy_timeout(BUSY_TIMEOUT) {
            tracing::error!(error = %e, "restoring the writer's busy timeout");
        }
        let us = started.elapsed().as_micros() as u64;
        match result {
            Ok((0, log, copied)) if log == copied => {
                tracing::debug!(
                    mode,
                    frames = log,
                    us,
                    "WAL checkpointed whole; the next commit should start it over"
                )
            }
            Ok((_, -1, _)) => tracing::info!(
                mode,
                us,
                "another checkpoint was running; the WAL's restart is tried again later"
            ),
            Ok((busy, log, copied)) => tracing::info!(
                mode,
                busy,
                frames = log,
                copied,
                us,
                "a reader held the WAL's restart back; it is tried again later"
            ),
            Err(e) => tracing::warn!(mode, error = %e, "WAL checkpoint on the writer failed"),
        }
        if started.elapsed() > SLOW_COMMIT {
            tracing::warn!(mode, us, "slow WAL checkpoint on the writer");
        }
    }
}

/// The enabled endpoints with work due at `?1` or deliveries waiting for room, and where
/// their waiting ones start.
const ENDPOINTS_WITH_WORK: &str = "SELECT e.id, e.waiting_from FROM endpoints e
     WHERE e.enabled = 1 AND e.deleted_at IS NULL
       AND (e.waiting_from IS NOT NULL
            OR EXISTS (SELECT 1 FROM deliveries d
                       WHERE d.endpoint_id = e.id AND d.status = 'pending'
                         AND d.next_attempt_at <= ?1))";

/// Up to `?3` deliveries of endpoint `?1` waiting for room, from row `?2` on, in row order.
const WAITING_SCAN: &str =
    "SELECT d.id, d.attempts, e.id, e.type, e.created_at, e.data, d.seq, d.claim + 1
     FROM deliveries d JOIN events e ON e.id = d.event_id
     WHERE d.endpoint_id = ?1 AND d.seq >= ?2
       AND d.status = 'pending' AND d.next_attempt_at IS NULL
     ORDER BY d.seq LIMIT ?3";

/// Up to `?3` deliveries of endpoint `?1` due by `?2`, earliest first.
const DUE_SCAN: &str =
    "SELECT d.id, d.attempts, e.id, e.type, e.created_at, e.data, d.seq, d.claim + 1
     FROM deliveries d JOIN events e ON e.id = d.event_id
     WHERE d.endpoint_id = ?1 AND d.status = 'pending' AND d.next_attempt_at <= ?2
     ORDER BY d.next_attempt_at LIMIT ?3";

/// Ends as `failed` the due deliveries of endpoint `?1` created, and last changed, before
/// `?2` (at `?3`).
const FAIL_STALE_DUE: &str = concat!(
    "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, updated_at = ?3,
        last_error = ",
    held_back_reason_sql!(),
    "
     WHERE endpoint_id = ?1 AND status = 'pending' AND next_attempt_at IS NOT NULL
       AND created_at < ?2 AND updated_at < ?2"
);

/// The same for its deliveries waiting for room, from its mark (or row `?5`, if later) up to
/// row `?4`: the stretch one job of the sweep walked ([`fail_stale_rows`]).
const FAIL_STALE_WAITING: &str = concat!(
    "UPDATE deliveries SET status = 'failed', updated_at = ?3,
        last_error = ",
    held_back_reason_sql!(),
    "
     WHERE endpoint_id = ?1 AND status = 'pending' AND next_attempt_at IS NULL
       AND seq >= MAX(?5, (SELECT waiting_from FROM endpoints WHERE id = ?1)) AND seq < ?4
       AND created_at < ?2 AND updated_at < ?2"
);

/// Moves endpoint `?1`'s waiting mark to its first delivery still waiting (`NULL` if none).
const MARK_FIRST_WAITING: &str = "UPDATE endpoints SET
        waiting_from = (SELECT MIN(d.seq) FROM deliveries d
                        WHERE d.endpoint_id = ?1 AND d.seq >= endpoints.waiting_from
                          AND d.status = 'pending' AND d.next_attempt_at IS NULL)
     WHERE id = ?1 AND waiting_from IS NOT NULL";

/// Endpoint `?1`'s deliveries from its mark (or row `?2`, if later) to row `?3`, in row
/// order, each with whether it is waiting: the stale sweep walks them to where it stops
/// (every row it reads counts, waiting or not).
const WAITING_FROM_MARK: &str = "SELECT seq, created_at,
        status = 'pending' AND next_attempt_at IS NULL
     FROM deliveries
     WHERE endpoint_id = ?1
       AND seq >= MAX(?2, (SELECT waiting_from FROM endpoints WHERE id = ?1)) AND seq <= ?3
     ORDER BY seq";

/// The most rows one job of the stale sweep reads: the sweep comes back for the rest in jobs
/// of their own, so that ending a long outage's backlog never holds the writer (and every
/// ingest behind it) for long.
const SWEEP_BATCH: usize = 5_000;

/// How much younger than the cutoff a waiting row must be for the sweep to stop at it.
/// Ingest stamps a row before its job queues for the writer, so a row written a little later
/// may be a little older; with this margin none behind the stopping row is old enough to end.
const SWEEP_MARGIN_MS: i64 = 60_000;

/// Where one job of the stale sweep walks an endpoint's rows: from its mark or `from`,
/// whichever is later, to `until` (the endpoint's last row when the sweep began).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SweepWalk {
    /// `i64::MIN` in the sweep's first job, which starts at the mark.
    from: i64,
    until: i64,
}

impl SweepWalk {
    /// The sweep's first job: it also ends the due rows.
    fn first(&self) -> bool {
        self.from == i64::MIN
    }
}

/// One job of the stale sweep of an endpoint (see [`SqliteStore::fail_stale`]): the first
/// ends its due rows through the due index; each ends the waiting rows of its stretch, from
/// the mark (or where the job before stopped) on; and the mark moves to the first row still
/// waiting, so that neither the next sweep nor the next claim walks the ended ones again.
/// Returns the rows ended, and where the next job goes on when this one stopped at its
/// `batch` of rows read (so the rows it passed unended, too young or stamped ahead, are not
/// read again by this sweep).
///
/// The rows are walked only up to the first waiting one well clear of the cutoff
/// ([`SWEEP_MARGIN_MS`]), and never past the endpoint's last row when the sweep began, so it
/// ends even when no row is that young (a retry schedule shorter than the margin). Ingest
/// numbers rows in the order it writes them, so the rows after that one are younger still. So a sweep costs
/// what it ends, not the endpoint's backlog: an endpoint down for a day holds millions of
/// waiting rows, and walking them all every minute would stall the one writer that every
/// endpoint's ingest waits for. A row stamped after `now` (a wall clock that ran ahead, then
/// was set right) is walked past, never stopped at; rows stamped before a clock was set back
/// are ended only once the rows in front of them are. Either keeps the mark at the row in
/// front until it ages out, and each sweep meanwhile walks again the rows ended behind it:
/// the clock's error's worth of rows, never the whole backlog.
fn fail_stale_rows(
    c: &Connection,
    endpoint_id: &str,
    before: Timestamp,
    now: Timestamp,
    walk: SweepWalk,
    batch: usize,
) -> Result<(usize, Option<SweepWalk>), StoreError> {
    let mut end = None;
    let mut more = false;
    {
        let mut st = c
            .prepare_cached(WAITING_FROM_MARK)
            .ctx("preparing the walk of waiting deliveries")?;
        let mut rows = st
            .query(params![endpoint_id, walk.from, walk.until])
            .ctx("walking waiting deliveries")?;
        let mut read = 0;
        while let Some(r) = rows.next().ctx("walking waiting deliveries")? {
            if read == batch.max(1) {
                end = Some(r.get(0).ctx("a row number")?);
                more = true;
                break;
            }
            read += 1;
            let (seq, created_at, waiting): (i64, i64, bool) = (
                r.get(0).ctx("a row number")?,
                r.get(1).ctx("a time")?,
                r.get(2).ctx("a status")?,
            );
            if waiting
                && created_at >= before.0.saturating_add(SWEEP_MARGIN_MS)
                && created_at <= now.0
            {
                end = Some(seq);
                break;
            }
        }
    }
    let mut ended = 0;
    if walk.first() {
        ended += c
            .prepare_cached(FAIL_STALE_DUE)
            .and_then(|mut st| st.execute(params![endpoint_id, before.0, now.0]))
            .ctx("ending due deliveries that waited out the schedule")?;
    }
    ended += c
        .prepare_cached(FAIL_STALE_WAITING)
        .and_then(|mut st| {
            st.execute(params![
                endpoint_id,
                before.0,
                now.0,
                end.unwrap_or(walk.until.saturating_add(1)),
                walk.from
            ])
        })
        .ctx("ending waiting deliveries that waited out the schedule")?;
    c.prepare_cached(MARK_FIRST_WAITING)
        .and_then(|mut st| st.execute([endpoint_id]))
        .ctx("moving an endpoint's waiting mark")?;
    c.prepare_cached(
        "UPDATE endpoints SET waiting_since = NULL
         WHERE id = ?1 AND waiting_from IS NULL AND waiting_since IS NOT NULL",
    )
    .and_then(|mut st| st.execute([endpoint_id]))
    .ctx("moving an endpoint's waiting mark")?;
    let next = match (more, end) {
        (true, Some(from)) => Some(SweepWalk {
            from,
            until: walk.until,
        }),
        _ => None,
    };
    Ok((ended, next))
}

/// The earliest due time after `?1` of any enabled endpoint's pending deliveries (`NULL` if
/// none).
const NEXT_DUE: &str = "SELECT NULLIF(MIN(MIN(
                      CASE WHEN e.waiting_since > ?1 THEN e.waiting_since
                           ELSE 9223372036854775807 END,
                      COALESCE((SELECT MIN(d.next_attempt_at) FROM deliveries d
                                WHERE d.endpoint_id = e.id AND d.status = 'pending'
                                  AND d.next_attempt_at > ?1),
                               9223372036854775807))), 9223372036854775807)
     FROM endpoints e WHERE e.enabled = 1 AND e.deleted_at IS NULL";

/// Account `?2`'s oldest `?1` events whose deliveries have all ended (never the newest event
/// of all), each with its deliveries' run of rows: retention's scan.
const OLDEST_ENDED_EVENTS: &str =
    "SELECT e.id, e.created_at, e.deliveries_from, e.deliveries_until,
        e.type, e.seq
     FROM events e
     WHERE e.account_id = ?2 AND e.seq < (SELECT MAX(seq) FROM events)
       AND NOT EXISTS (
        SELECT 1 FROM deliveries d
        WHERE d.seq >= e.deliveries_from AND d.seq < e.deliveries_until
          AND d.event_id = e.id AND d.status IN ('pending', 'delivering'))
     ORDER BY e.seq LIMIT ?1";

/// The text of [`FEED`] with `$filter` added to its conditions: both pages read the same
/// rows by the same bounds.
macro_rules! feed_page_sql {
    ($filter:literal) => {
        concat!(
            "SELECT id, type, created_at, data, seq FROM events
     WHERE account_id = ?1",
            $filter,
            " AND seq > ?2 AND seq <= ?6
       AND (?3 IS NULL OR created_at >= ?3)
       AND (?4 IS NULL OR created_at < ?4)
     ORDER BY seq LIMIT ?5"
        )
    };
}

/// A page of account `?1`'s feed without a type: its events after row `?2` up to row `?6`,
/// created at or after `?3` and before `?4` (each if given), oldest first, at most `?5`.
const FEED: &str = feed_page_sql!("");

/// Forgets that stretch `?3` (rows `?4` up to `?5`) holds account `?1`'s events of type `?2`
/// if it no longer does.
const FORGET_EMPTY_STRETCH: &str = "DELETE FROM event_type_stretches
     WHERE account_id = ?1 AND type = ?2 AND stretch = ?3
       AND NOT EXISTS (SELECT 1 FROM events
                       WHERE account_id = ?1 AND seq >= ?4 AND seq < ?5 AND type = ?2)";

/// Account `?1`'s stretches that hold events of type `?2`, from stretch `?3` to `?4`, in
/// order, a few at a time.
const TYPE_STRETCHES: &str = "SELECT stretch FROM event_type_stretches
     WHERE account_id = ?1 AND type = ?2 AND stretch >= ?3 AND stretch <= ?4
     ORDER BY stretch LIMIT 16";

/// A page of one type (`?7`) within one stretch of rows: as [`FEED`].
const FEED_TYPED: &str = feed_page_sql!(" AND type = ?7");

/// Account `?1`'s last event's row number (0 if none).
const LAST_EVENT: &str = "SELECT COALESCE(MAX(seq), 0) FROM events WHERE account_id = ?1";

/// Account `?1`'s first event after row `?2`: its row number and creation time.
const FIRST_EVENT_AFTER: &str = "SELECT seq, created_at FROM events
     WHERE account_id = ?1 AND seq > ?2 ORDER BY seq LIMIT 1";

/// The row before the account's first event created at or after `cutoff` (its last row if
/// none was): a binary search over row numbers, each probe one seek into `events_by_account`
/// (about 64 at most, whatever the history).
///
/// Rows are numbered in the order the writer takes its jobs, which is the order ingest
/// stamped their events from a clock that never runs backwards ([`super::stamps`]); the
/// callers leave [`super::RECOVER_MARGIN_MS`] on the side of their bound that must not lose
/// a row, as a recovery does ([`super::Store::recover_from`]), and keep filtering by the
/// stamps themselves. Only a clock set back by more than [`super::stamps::HOLD_MAX_MS`]
/// could hide an event from a `since` or `until` page (never from the feed without them).
fn feed_row_before(c: &Connection, account_id: &str, cutoff: i64) -> Result<i64, StoreError> {
    let last: i64 = c
        .prepare_cached(LAST_EVENT)
        .and_then(|mut st| st.query_row([account_id], |r| r.get(0)))
        .ctx("finding the account's last event")?;
    let mut first_after = c
        .prepare_cached(FIRST_EVENT_AFTER)
        .ctx("preparing the feed's search")?;
    // Whether the first event after row `x` was created at or after the cutoff (true past
    // the last row): false up to the row before the first such event, then true.
    let (mut lo, mut hi) = (0, last);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let next: Option<(i64, i64)> = first_after
            .query_row(params![account_id, mid], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .ctx("searching the feed by time")?;
        match next {
            Some((row, created_at)) if created_at < cutoff => lo = (mid + 1).max(row),
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// The newest event stamp stored (of the last thousand rows written), or 0: where the
/// clock of stamps starts, so that stamps never go back across a restart either.
fn newest_stamp(c: &Connection) -> Result<i64, StoreError> {
    c.query_row(
        "SELECT COALESCE(MAX(created_at), 0) FROM
            (SELECT created_at FROM events ORDER BY seq DESC LIMIT 1000)",
        [],
        |r| r.get(0),
    )
    .ctx("reading the newest event stamp")
}

/// Inserts `events` and one delivery per subscribed, enabled endpoint, in the open job.
///
/// Each event's deliveries are inserted right before it, so their row numbers are one run,
/// which the event's row keeps (`deliveries_from`, up to `deliveries_until`): that run is
/// how an event's deliveries are found (no index of deliveries by event).
fn insert_rows(
    c: &Connection,
    subscribers: &Subscribers,
    stamps: &Stamps,
    account_id: &str,
    mut events: Vec<NewEvent>,
    admit: &mut impl FnMut(&str) -> bool,
) -> Result<Vec<AcceptedEvent>, StoreError> {
    // The writer takes jobs in the order they were queued, so stamps keep to the order of
    // the rows; a job that waited long in the queue is stamped again all the same.
    NewEvent::refresh_stamps(&mut events, stamps);
    let now = Timestamp::now().0;
    let endpoints = subscribers.get_or_load(c, account_id)?;
    let mut ins_event = c
        .prepare_cached(
            "INSERT INTO events (id, account_id, type, data, created_at,
                deliveries_from, deliveries_until)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .ctx("preparing the event insert")?;
    let mut ins_delivery = c
        .prepare_cached(
            "INSERT INTO deliveries (id, account_id, event_id, event_type, endpoint_id,
                status, next_attempt_at, created_at, updated_at, claim)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9)",
        )
        .ctx("preparing the delivery insert")?;
    let mut out = Vec::with_capacity(events.len());
    // Endpoints whose `waiting_from` this job has already made cover its waiting rows (row
    // numbers only grow within a transaction, so the first one is the lowest).
    let mut marked: Vec<&str> = Vec::new();
    // The (type, stretch) pairs this job's events fall in, each recorded once at its end.
    let mut stretches: Vec<(String, i64)> = Vec::new();
    for ev in events {
        let mut deliveries = Vec::new();
        for ep in endpoints.iter().filter(|e| e.subscribes_to(&ev.event_type)) {
            let claimed = admit(&ep.id);
            let mut d = NewDelivery {
                id: new_id("dlv"),
                row: 0,
                endpoint: ep.clone(),
                claimed,
            };
            // Admitted: `delivering`, due now (by the clock that judges due times, whatever
            // the event's stamp says). Otherwise `pending` with no due time: it waits for
            // room, outside the due index (see `mark_waiting`).
            let (status, due) = if claimed {
                ("delivering", Some(now))
            } else {
                ("pending", None)
            };
            ins_delivery
                .execute(params![
                    d.id,
                    account_id,
                    ev.id,
                    ev.event_type,
                    ep.id,
                    status,
                    due,
                    ev.created_at.0,
                    i64::from(claimed)
                ])
                .ctx("inserting a delivery")?;
            d.row = c.last_insert_rowid();
            if !claimed && !marked.contains(&ep.id.as_str()) {
                mark_waiting(c, &ep.id, d.row, Timestamp(now))?;
                marked.push(&ep.id);
            }
            deliveries.push(d);
        }
        // Nothing else inserts deliveries between them: the rows just inserted are one run.
        let run = deliveries
            .first()
            .zip(deliveries.last())
            .map(|(first, last)| (first.row, last.row + 1));
        debug_assert!(
            run.is_none_or(|(from, until)| until - from == deliveries.len() as i64),
            "an event's deliveries are one run of rows"
        );
        ins_event
            .execute(params![
                ev.id,
                account_id,
                ev.event_type,
                ev.data.get(),
                ev.created_at.0,
                run.map(|r| r.0),
                run.map(|r| r.1)
            ])
            .ctx("inserting an event")?;
        let stretch = c.last_insert_rowid() / TYPE_STRETCH_ROWS;
        if !stretches
            .iter()
            .any(|(t, at)| *at == stretch && *t == ev.event_type)
        {
            stretches.push((ev.event_type.clone(), stretch));
        }
        out.push(AcceptedEvent {
            event: Arc::new(Event {
                id: ev.id,
                event_type: ev.event_type,
                created_at: ev.created_at,
                data: ev.data,
            }),
            payload: ev.payload,
            deliveries,
        });
    }
    let mut record = c
        .prepare_cached(
            "INSERT OR IGNORE INTO event_type_stretches (account_id, type, stretch)
             VALUES (?1, ?2, ?3)",
        )
        .ctx("preparing the stretch record")?;
    for (event_type, stretch) in &stretches {
        record
            .execute(params![account_id, event_type, stretch])
            .ctx("recording where events of a type are")?;
    }
    Ok(out)
}

/// What an attempt's number is to the delivery that holds the attempts (see
/// [`number_taken`]).
enum Numbered {
    /// No other attempt holds it: the attempt is written under it.
    Free,
    /// Another attempt (one made under another claim) holds it: the attempt takes this one,
    /// past every number the delivery holds.
    Taken(u32),
    /// Another attempt holds it, and this very attempt is recorded already under another
    /// number (given it when this record was first written): nothing to write.
    Written,
}

/// Whether attempt number `number` of `rec`'s delivery is another attempt's than `attempt`
/// (see [`Numbered`]). A number past every one held
/// counts the `attempts` rows too, not only the row's count of them: a fenced outcome
/// written before that count was kept up with them did not raise it.
fn number_taken(
    c: &Connection,
    rec: &AttemptRecord,
    number: u32,
    attempt: &Attempt,
) -> Result<Numbered, StoreError> {
    // An attempt is known by its claim (`?6`); one recorded before claims were, by its
    // start and its duration (ms): `?3`, `?5`.
    let found: Option<(bool, bool, u32)> = c
        .prepare_cached(
            "SELECT
                IFNULL(kept_attempt = ?2
                       AND NOT COALESCE(kept_claim = ?6,
                                        kept_started_at = ?3 AND kept_duration_ms = ?5), 0)
                OR EXISTS (SELECT 1 FROM attempts
                           WHERE delivery_id = ?4 AND attempt = ?2
                             AND NOT COALESCE(claim = ?6,
                                              started_at = ?3 AND duration_ms = ?5)),
                IFNULL(kept_attempt IS NOT NULL
                       AND COALESCE(kept_claim = ?6,
                                    kept_started_at = ?3 AND kept_duration_ms = ?5), 0)
                OR EXISTS (SELECT 1 FROM attempts
                           WHERE delivery_id = ?4
                             AND COALESCE(claim = ?6, started_at = ?3 AND duration_ms = ?5)),
                MAX(attempts, IFNULL(kept_attempt, 0),
                    IFNULL((SELECT MAX(attempt) FROM attempts WHERE delivery_id = ?4), 0))
             FROM deliveries WHERE seq = ?1",
        )
        .and_then(|mut st| {
            st.query_row(
                params![
                    rec.row,
                    number,
                    attempt.started_at.0,
                    rec.delivery_id,
                    attempt.duration_ms as i64,
                    rec.claim
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })
        .ctx("reading which attempt numbers a delivery holds")?;
    Ok(match found {
        Some((true, true, _)) => Numbered::Written,
        Some((true, false, top)) => Numbered::Taken(top.max(number) + 1),
        _ => Numbered::Free,
    })
}

/// Whether endpoint `id` is at `version` (its `updated_at`) now.
fn is_version(c: &Connection, id: &str, version: i64) -> Result<bool, StoreError> {
    c.prepare_cached("SELECT updated_at = ?2 FROM endpoints WHERE id = ?1")
        .and_then(|mut st| st.query_row(params![id, version], |r| r.get(0)).optional())
        .ctx("reading an endpoint's version")
        .map(|same| same.unwrap_or(false))
}

/// Refuses an endpoint write unless `account_id`'s plan includes webhooks (read in the
/// caller's transaction).
fn require_webhooks(c: &Connection, account_id: &str) -> Result<(), StoreError> {
    let plan: Option<String> = c
        .prepare_cached("SELECT plan FROM accounts WHERE id = ?1")
        .and_then(|mut st| st.query_row([account_id], |r| r.get(0)).optional())
        .ctx("reading an account's plan")?;
    super::require_webhooks(plan.as_deref())
}

/// An outcome's update of its delivery. One that would leave the row `pending` ends it
/// instead when its endpoint was turned off or removed meanwhile (see
/// [`fail_open_deliveries`]).
static RECORD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE deliveries SET
            status = CASE WHEN ?2 = 'pending' AND NOT {ENDPOINT_LIVE} THEN 'failed' ELSE ?2 END,
            attempts = MAX(attempts, ?3),
            next_attempt_at = CASE WHEN ?2 = 'pending' AND NOT {ENDPOINT_LIVE} THEN NULL
                ELSE ?4 END,
            last_attempt_at = ?5, last_status_code = ?6,
            last_error = CASE WHEN ?2 = 'pending' AND NOT {ENDPOINT_LIVE}
                THEN COALESCE(?7, '{ENDPOINT_GONE}') ELSE ?7 END,
            updated_at = ?8,
            kept_attempt = ?3, kept_started_at = ?5, kept_duration_ms = ?11,
            kept_status_code = ?6, kept_error = ?7, kept_response_body = ?12, kept_claim = ?10
         WHERE seq = ?1 AND (?9 = 0 OR (status = 'delivering' AND claim = ?10))
           AND (?13 = 0 OR {FRESH_NUMBER})"
    )
});

/// [`RECORD`] for a row that keeps no other attempt.
static RECORD_FRESH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} AND (kept_attempt IS NULL OR kept_attempt = ?3)",
        *RECORD
    )
});

/// Whether attempt number `?3` (made under claim `?10`) is surely the row's to write,
/// checked unless `?13` is 0: a number past every one it holds (`attempts` is never less
/// than any of them), or the very attempt it keeps (the same record written again: an
/// attempt is known by its claim; one kept before claims were, by its start `?5` and its
/// duration `?11`, in ms). Two attempts of one number can be made, a manual retry beside
/// an attempt in flight, each claim counting from the same recorded attempts; the one
/// recorded second then takes the next number (`record_attempts`, which writes without the
/// check once it has found the number is no other attempt's), rather than replace the
/// other.
const FRESH_NUMBER: &str = "(attempts < ?3
    OR (kept_attempt = ?3
        AND COALESCE(kept_claim = ?10, kept_started_at = ?5 AND kept_duration_ms = ?11)))";

/// Whether endpoint `id` is on (enabled, not removed), as [`ENDPOINT_LIVE`] reads it for a
/// delivery's row, remembered in `known` for the rest of the job.
fn endpoint_on(
    c: &Connection,
    known: &mut HashMap<String, bool>,
    id: &str,
) -> Result<bool, StoreError> {
    if let Some(on) = known.get(id) {
        return Ok(*on);
    }
    let on = c
        .prepare_cached(
            "SELECT COALESCE((SELECT enabled = 1 AND deleted_at IS NULL
                              FROM endpoints WHERE id = ?1), 0)",
        )
        .and_then(|mut st| st.query_row([id], |r| r.get(0)))
        .ctx("reading whether an endpoint is on")?;
    known.insert(id.to_owned(), on);
    Ok(on)
}

/// A delivery given back unsent: due now, or ended when its endpoint was turned off or
/// removed meanwhile.
static RELEASE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE deliveries SET
            status = CASE WHEN {ENDPOINT_LIVE} THEN 'pending' ELSE 'failed' END,
            last_error = CASE WHEN {ENDPOINT_LIVE} THEN last_error
                ELSE COALESCE(last_error, '{ENDPOINT_GONE}') END,
            next_attempt_at = CASE WHEN {ENDPOINT_LIVE} THEN ?2 END,
            updated_at = ?2
         WHERE seq = ?1 AND status = 'delivering' AND claim = ?3"
    )
});

/// Why a delivery held when its endpoint was turned off or removed ended.
const ENDPOINT_GONE: &str = "endpoint disabled or removed";

/// Whether the endpoint of the `deliveries` row at hand is live (enabled, not removed): an
/// outcome that would leave the row `pending` ends it `failed` instead when it is not (see
/// [`fail_open_deliveries`]).
const ENDPOINT_LIVE: &str = "COALESCE((SELECT enabled = 1 AND deleted_at IS NULL
                                       FROM endpoints WHERE id = deliveries.endpoint_id), 0)";

/// Ends endpoint `?1`'s due deliveries (`?2` the reason, `?3` now).
const END_DUE: &str = "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL,
        last_error = COALESCE(last_error, ?2), updated_at = ?3
     WHERE endpoint_id = ?1 AND status = 'pending' AND next_attempt_at IS NOT NULL";

/// Endpoint `?1`'s (of account `?3`) first delivery after row `?2`: its row number and
/// creation time.
const FIRST_DELIVERY_AFTER: &str = "SELECT seq, created_at FROM deliveries
     WHERE endpoint_id = ?1 AND seq > ?2 AND account_id = ?3 ORDER BY seq LIMIT 1";

/// The row `?3` rows on from row `?2` among endpoint `?1`'s deliveries (none if it has
/// fewer): where a job that ends its waiting rows stops reading.
const NTH_ROW_FROM: &str = "SELECT seq FROM deliveries WHERE endpoint_id = ?1 AND seq >= ?2
     ORDER BY seq LIMIT 1 OFFSET ?3";

/// Ends endpoint `?1`'s deliveries waiting for room from row `?4` up to row `?5` (not
/// included).
const END_WAITING: &str = "UPDATE deliveries SET status = 'failed',
        last_error = COALESCE(last_error, ?2), updated_at = ?3
     WHERE endpoint_id = ?1 AND status = 'pending' AND next_attempt_at IS NULL
       AND seq >= ?4 AND seq < ?5";

/// The most rows one job reads when it ends a turned-off endpoint's waiting deliveries: an
/// endpoint down for a day holds millions of them, and one job ending them all would hold
/// the writer (and every ingest behind it) for as long, with as big a WAL.
const END_BATCH: usize = 5_000;

/// Ends an endpoint's `pending` deliveries as `failed` (it was turned off, removed, or
/// answered `410`), in the open job: its due rows through the due index, and the first
/// `batch` of its rows from its waiting mark on. So the job costs at most what it ends plus
/// `batch` rows, not the endpoint's history (which the endpoint's index would otherwise walk
/// row by row while every ingest waited), nor a long outage's backlog. What it leaves waiting
/// keeps the mark, and jobs of their own end it ([`SqliteStore::end_turned_off`], also at
/// start, so a crash in between loses nothing). Returns the rows ended, and whether any may
/// be left.
///
/// Its `delivering` rows are left to their own outcomes: every one is held by this
/// process's dispatcher, which gives it back unsent or records its attempt, and the
/// recorder ends as `failed` any such outcome that would leave it `pending`
/// ([`ENDPOINT_LIVE`]); a restart does the same ([`SqliteStore::release_all_claims`]). An
/// attempt in flight may still succeed, and is then recorded as such.
fn fail_open_deliveries(
    c: &Connection,
    endpoint_id: &str,
    why: &str,
    batch: usize,
) -> Result<(usize, bool), StoreError> {
    let now = Timestamp::now().0;
    let ended = c
        .prepare_cached(END_DUE)
        .and_then(|mut st| st.execute(params![endpoint_id, why, now]))
        .ctx("ending an endpoint's due deliveries")?;
    let (waiting, more) = end_waiting_rows(c, endpoint_id, why, now, batch)?;
    Ok((ended + waiting, more))
}

/// Ends the waiting deliveries among the first `batch` rows of an endpoint that is off, from
/// its waiting mark on, and moves the mark past them (clears it when no row is left).
/// Returns the rows ended, and whether any may be left.
///
/// The mark may then point at a row that is not waiting, never past one that is: the
/// invariant of [`mark_waiting`] holds. No waiting row of the endpoint is made meanwhile:
/// ingest makes deliveries only for endpoints that are on.
fn end_waiting_rows(
    c: &Connection,
    endpoint_id: &str,
    why: &str,
    now: i64,
    batch: usize,
) -> Result<(usize, bool), StoreError> {
    let mark: Option<i64> = c
        .prepare_cached("SELECT waiting_from FROM endpoints WHERE id = ?1")
        .and_then(|mut st| st.query_row([endpoint_id], |r| r.get(0)).optional())
        .ctx("reading an endpoint's waiting mark")?
        .flatten();
    let Some(mark) = mark else {
        return Ok((0, false));
    };
    let stop: Option<i64> = c
        .prepare_cached(NTH_ROW_FROM)
        .and_then(|mut st| {
            st.query_row(
                params![endpoint_id, mark, i64::try_from(batch).unwrap_or(i64::MAX)],
                |r| r.get(0),
            )
            .optional()
        })
        .ctx("finding where to stop ending waiting deliveries")?;
    let ended = c
        .prepare_cached(END_WAITING)
        .and_then(|mut st| {
            st.execute(params![
                endpoint_id,
                why,
                now,
                mark,
                stop.unwrap_or(i64::MAX)
            ])
        })
        .ctx("ending an endpoint's waiting deliveries")?;
    move_waiting_mark(c, endpoint_id, stop)?;
    Ok((ended, stop.is_some()))
}

/// Why the deliveries of `endpoint_id` end if it is off (disabled or removed) and still
/// has rows waiting from an earlier turning off; `None` otherwise.
fn turned_off_reason(
    c: &Connection,
    endpoint_id: &str,
) -> Result<Option<&'static str>, StoreError> {
    let row: Option<(bool, Option<String>)> = c
        .prepare_cached(
            "SELECT deleted_at IS NOT NULL, disabled_reason FROM endpoints
             WHERE id = ?1 AND waiting_from IS NOT NULL AND (enabled = 0 OR deleted_at IS NOT NULL)",
        )
        .and_then(|mut st| st.query_row([endpoint_id], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .ctx("reading a turned-off endpoint")?;
    Ok(row.map(|(removed, reason)| off_reason(removed, reason.as_deref())))
}

/// Moves `endpoint_id`'s waiting mark on to row `next`, or clears it when `None` (see
/// [`mark_waiting`]).
fn move_waiting_mark(
    c: &Connection,
    endpoint_id: &str,
    next: Option<i64>,
) -> Result<(), StoreError> {
    let Some(next) = next else {
        return clear_waiting(c, endpoint_id);
    };
    c.prepare_cached("UPDATE endpoints SET waiting_from = ?2 WHERE id = ?1")
        .and_then(|mut st| st.execute(params![endpoint_id, next]))
        .ctx("moving an endpoint's waiting mark")?;
    Ok(())
}

/// Notes that no delivery of `endpoint_id` waits for room (see [`mark_waiting`]).
fn clear_waiting(c: &Connection, endpoint_id: &str) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE endpoints SET waiting_from = NULL, waiting_since = NULL
         WHERE id = ?1 AND waiting_from IS NOT NULL",
    )
    .and_then(|mut st| st.execute([endpoint_id]))
    .ctx("clearing an endpoint's waiting mark")?;
    Ok(())
}

/// Notes that `endpoint_id` has a delivery waiting for room at row `row` (written at
/// `since`, by the writer's clock), in the same transaction as the row.
///
/// A waiting delivery is `pending` with no due time, so it is in no index of due work; the
/// claim finds an endpoint's waiting rows from its `waiting_from` on, in row order. The
/// invariant: every waiting row of an endpoint has a row number at or after its
/// `waiting_from`, which is only ever lowered here, advanced past the rows a claim took, the
/// stale sweep ended or a turned-off endpoint's ending passed ([`end_waiting_rows`]), and
/// cleared when none is left. So the mark may point before rows
/// that are no longer waiting, never after one that does. Only ingest makes waiting rows,
/// each the newest row of its transaction, so the mark never goes back before rows long
/// since delivered: a claim walks only the endpoint's rows since the last one taken.
/// `waiting_since` is no later than the oldest waiting row's write: its due time, for the
/// poller.
fn mark_waiting(
    c: &Connection,
    endpoint_id: &str,
    row: i64,
    since: Timestamp,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE endpoints SET waiting_from = ?2,
            waiting_since = MIN(COALESCE(waiting_since, ?3), ?3)
         WHERE id = ?1 AND (waiting_from IS NULL OR waiting_from > ?2)",
    )
    .and_then(|mut st| st.execute(params![endpoint_id, row, since.0]))
    .ctx("marking an endpoint's waiting deliveries")?;
    Ok(())
}

const ENDPOINT_COLS: &str = "id, account_id, url, description, event_types, headers, secret, \
     rate_limit_per_sec, enabled, disabled_reason, created_at, updated_at, deleted_at, \
     previous_secrets";
/// How many columns [`ENDPOINT_COLS`] names.
const ENDPOINT_COL_COUNT: usize = 14;

/// An endpoint as read from a row of [`ENDPOINT_COLS`], its secrets still sealed, and its
/// rotated-out secrets as stored; [`opened`] makes it whole.
type SealedEndpoint = (Endpoint, Option<String>);

fn endpoint_from_row(r: &Row<'_>) -> rusqlite::Result<SealedEndpoint> {
    let json_err = |i, e: serde_json::Error| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    };
    let event_types: String = r.get(4)?;
    let headers: String = r.get(5)?;
    let ep = Endpoint {
        id: r.get(0)?,
        account_id: r.get(1)?,
        url: r.get(2)?,
        description: r.get(3)?,
        event_types: serde_json::from_str(&event_types).map_err(|e| json_err(4, e))?,
        headers: serde_json::from_str(&headers).map_err(|e| json_err(5, e))?,
        secret: r.get(6)?,
        rate_limit_per_sec: r.get(7)?,
        enabled: r.get(8)?,
        disabled_reason: r.get(9)?,
        created_at: Timestamp(r.get(10)?),
        updated_at: Timestamp(r.get(11)?),
        previous_secrets: Vec::new(),
        previous_secret_expires_at: None,
    };
    Ok((ep, r.get(13)?))
}

/// The endpoint as read, with its secrets opened.
fn opened(sealer: &Sealer, (mut ep, previous): SealedEndpoint) -> Result<Endpoint, StoreError> {
    ep.secret = sealer.open(&ep.id, &ep.secret)?;
    sealer.open_headers(&ep.id, &mut ep.headers)?;
    ep.previous_secrets = sealer.open_previous(&ep.id, previous.as_deref())?;
    ep.previous_secret_expires_at =
        crate::model::latest_until(&ep.previous_secrets, Timestamp::now());
    Ok(ep)
}

fn load_endpoint(
    c: &Connection,
    sealer: &Sealer,
    account_id: Option<&str>,
    id: &str,
) -> Result<Option<Endpoint>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {ENDPOINT_COLS} FROM endpoints
         WHERE id = ?1 AND (?2 IS NULL OR account_id = ?2) AND deleted_at IS NULL"
    ))
    .ctx("preparing the endpoint lookup")?
    .query_row(params![id, account_id], endpoint_from_row)
    .optional()
    .ctx("reading an endpoint")?
    .map(|ep| opened(sealer, ep))
    .transpose()
}

fn event_type_from_row(r: &Row<'_>) -> rusqlite::Result<CustomEventType> {
    let schema: Option<String> = r.get(2)?;
    let schema = schema
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
        })?;
    Ok(CustomEventType {
        name: r.get(0)?,
        description: r.get(1)?,
        schema,
        created_at: Timestamp(r.get(3)?),
        updated_at: Timestamp(r.get(4)?),
    })
}

/// Rewrites every endpoint's secrets from `from`'s form to `to`'s (see
/// [`SqliteStore::reseal_secrets`]).
fn reseal_rows(c: &Connection, from: &Sealer, to: &Sealer) -> Result<usize, StoreError> {
    let recorded: Option<String> = c
        .query_row(
            "SELECT value FROM settings WHERE name = 'sealing_key'",
            [],
            |r| r.get(0),
        )
        .optional()
        .ctx("reading the sealing key")?;
    check_recorded_key(recorded.as_deref().unwrap_or(""), from)?;
    let rows: Vec<(String, SealedColumns)> = c
        .prepare("SELECT id, secret, previous_secrets, headers FROM endpoints")
        .ctx("preparing the secret scan")?
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                SealedColumns {
                    secret: r.get(1)?,
                    previous: r.get(2)?,
                    headers: r.get(3)?,
                },
            ))
        })
        .ctx("scanning secrets")?
        .collect::<Result<_, _>>()
        .ctx("scanning secrets")?;
    let mut rewritten = 0;
    for (id, row) in rows {
        let new = reseal_row(from, to, &id, &row)?;
        if new == row {
            continue;
        }
        c.execute(
            "UPDATE endpoints SET secret = ?2, previous_secrets = ?3, headers = ?4 WHERE id = ?1",
            params![id, new.secret, new.previous, new.headers],
        )
        .ctx("rewriting a secret")?;
        rewritten += 1;
    }
    c.execute(
        "INSERT INTO settings (name, value) VALUES ('sealing_key', ?1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [to.key_id().unwrap_or("")],
    )
    .ctx("recording the sealing key")?;
    Ok(rewritten)
}

fn api_key_from_row(r: &Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: r.get(0)?,
        prefix: r.get(1)?,
        created_at: Timestamp(r.get(2)?),
        revoked_at: r.get::<_, Option<i64>>(3)?.map(Timestamp),
    })
}

fn account_from_row(r: &Row<'_>) -> rusqlite::Result<Account> {
    let plan: String = r.get(2)?;
    Ok(Account {
        id: r.get(0)?,
        name: r.get(1)?,
        plan: Plan::parse(&plan).unwrap_or(Plan::Free),
        created_at: Timestamp(r.get(3)?),
    })
}

/// An event's deliveries (`?3`) below row `?2`, from its first row `?7`, newest first.
static EVENT_DELIVERIES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {DELIVERY_COLS}, seq FROM deliveries
         WHERE seq >= ?7 AND seq < ?2 AND event_id = ?3 AND account_id = ?1
           AND (?4 IS NULL OR endpoint_id = ?4)
           AND (?5 IS NULL OR status = ?5)
         ORDER BY seq DESC LIMIT ?6"
    )
});

/// An endpoint's deliveries (`?3`) below row `?2`, newest first.
static ENDPOINT_DELIVERIES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {DELIVERY_COLS}, seq FROM deliveries
         WHERE endpoint_id = ?3 AND seq < ?2 AND account_id = ?1
           AND (?4 IS NULL OR status = ?4)
         ORDER BY seq DESC LIMIT ?5"
    )
});

/// An account's deliveries below row `?2`, newest first.
static ACCOUNT_DELIVERIES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {DELIVERY_COLS}, seq FROM deliveries
         WHERE seq < ?2 AND account_id = ?1
           AND (?3 IS NULL OR status = ?3)
         ORDER BY seq DESC LIMIT ?4"
    )
});

const DELIVERY_COLS: &str = "id, event_id, endpoint_id, event_type, status, attempts, \
     next_attempt_at, last_attempt_at, last_status_code, last_error, created_at, updated_at";

/// An attempt from the six columns from `at` on: number, start, duration, status code,
/// error, response body (an `attempts` row, or a delivery's `kept_*`).
fn attempt_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Attempt> {
    Ok(Attempt {
        attempt: r.get(at)?,
        started_at: Timestamp(r.get(at + 1)?),
        duration_ms: r.get::<_, i64>(at + 2)?.max(0) as u64,
        status_code: r.get(at + 3)?,
        error: r.get(at + 4)?,
        response_body: r.get(at + 5)?,
    })
}

fn delivery_from_row(r: &Row<'_>) -> rusqlite::Result<Delivery> {
    let status: String = r.get(4)?;
    let status = DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending);
    let created_at = Timestamp(r.get(10)?);
    // A delivery waiting for room (or taken from the waiting ones) has no due time of its
    // own: it has been due since it was created (its event's stamp; PostgreSQL shows such
    // rows due from their write, which is the same time but for a held stamp or a skew).
    let next_attempt_at = match r.get::<_, Option<i64>>(6)? {
        None if matches!(status, DeliveryStatus::Pending | DeliveryStatus::Delivering) => {
            Some(created_at)
        }
        t => t.map(Timestamp),
    };
    Ok(Delivery {
        id: r.get(0)?,
        event_id: r.get(1)?,
        endpoint_id: r.get(2)?,
        event_type: r.get(3)?,
        status,
        attempt_count: r.get(5)?,
        next_attempt_at,
        last_attempt_at: r.get::<_, Option<i64>>(7)?.map(Timestamp),
        last_status_code: r.get(8)?,
        last_error: r.get(9)?,
        created_at,
        updated_at: Timestamp(r.get(11)?),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::DeliveryStatus;
    use std::collections::BTreeMap;

    pub(crate) fn endpoint(account_id: &str) -> Endpoint {
        let now = Timestamp::now();
        Endpoint {
            id: new_id("ep"),
            account_id: account_id.to_owned(),
            url: "https://example.com/hook".into(),
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

    fn failure(due: &DueDelivery, claim: i64) -> AttemptRecord {
        AttemptRecord {
            delivery_id: due.delivery_id.clone(),
            row: due.row,
            claim,
            endpoint_id: due.endpoint.id.clone(),
            endpoint_version: due.endpoint.updated_at.0,
            attempt: Some(Attempt {
                attempt: due.attempts + 1,
                started_at: Timestamp::now(),
                duration_ms: 1,
                status_code: Some(500),
                error: None,
                response_body: None,
            }),
            outcome: Outcome::RetryAt(Timestamp(Timestamp::now().0 + 60_000)),
        }
    }

    /// The first delivery of `ev` as the dispatcher holds it after ingest admitted it.
    fn held(ev: &AcceptedEvent) -> DueDelivery {
        let d = &ev.deliveries[0];
        DueDelivery {
            delivery_id: d.id.clone(),
            row: d.row,
            claim: 1,
            attempts: 0,
            endpoint: d.endpoint.clone(),
            event_id: ev.event.id.clone(),
            payload: Default::default(),
            manual_after_end: false,
            manual: false,
        }
    }

    /// `due` given back unsent under claim `claim`.
    fn given_back(due: &DueDelivery, claim: i64) -> AttemptRecord {
        AttemptRecord {
            attempt: None,
            outcome: Outcome::Released,
            ..failure(due, claim)
        }
    }

    /// `n` click events with empty `data`.
    pub(crate) fn click(n: usize) -> Vec<NewEvent> {
        (0..n)
            .map(|_| NewEvent {
                id: new_id("evt"),
                event_type: "click".into(),
                data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
                created_at: Timestamp::now(),
                payload: Default::default(),
                restamp: false,
            })
            .collect()
    }

    /// An account with one endpoint, and `n` events committed with their deliveries claimed.
    async fn with_events(store: &SqliteStore, n: usize) -> (Account, Endpoint, Vec<AcceptedEvent>) {
        let (account, ep) = with_endpoint(store).await;
        let accepted = store
            .insert_events(account.id.clone(), click(n), |_| true, |_| {})
            .await
            .unwrap();
        (account, ep, accepted)
    }

    /// A database where an older build wrote an old claim's attempt without counting it gets
    /// the count raised, so the next attempt takes a number of its own.
    #[tokio::test]
    async fn a_count_of_attempts_left_short_is_raised_by_the_migration() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        let (account, _, accepted) = with_events(&store, 1).await;
        let d = &accepted[0].deliveries[0];
        drop(store);

        // As an older build left it: an old claim's attempt 2 in `attempts`, the row counting
        // one attempt.
        let db = Connection::open(dir.path().join("hookline.db")).unwrap();
        let before = MIGRATIONS
            .iter()
            .position(|m| m.contains("SET attempts = held.top"))
            .unwrap();
        db.execute_batch(&format!(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code)
                VALUES ('{id}', 1, 1000, 5, 500), ('{id}', 2, 2000, 5, 500);
             UPDATE deliveries SET status = 'pending', attempts = 1 WHERE id = '{id}';
             ALTER TABLE attempts DROP COLUMN claim;
             ALTER TABLE deliveries DROP COLUMN kept_claim;
             ALTER TABLE endpoints DROP COLUMN held_until;
             PRAGMA user_version = {before};",
            id = d.id
        ))
        .unwrap();
        drop(db);

        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        let (read, attempts) = store
            .get_delivery(account.id.clone(), d.id.clone())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((read.attempt_count, attempts.len()), (2, 2));
        // So the next attempt is the third, and both earlier ones stay.
        let due = store
            .claim_for_retry(account.id.clone(), d.id.clone())
            .await
            .unwrap()
            .unwrap()
            .due;
        assert_eq!(due.attempts, 2);
    }

    /// A database whose endpoint row holds its rotated-out secret in the columns before
    /// `previous_secrets` (one secret, and its end) gets it as the first of the list, still
    /// sealed; the old columns are gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_previous_secret_of_the_schema_before_becomes_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::from_base64(&Sealer::generate_key()).unwrap();
        let store = SqliteStore::open(dir.path(), sealer.clone()).unwrap();
        let (account, ep) = with_endpoint(&store).await;
        let never_rotated = store
            .insert_endpoint(endpoint(&account.id), 100)
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

        let db = Connection::open(dir.path().join("hookline.db")).unwrap();
        let before = MIGRATIONS
            .iter()
            .position(|m| m.contains("ADD COLUMN previous_secrets"))
            .unwrap();
        db.execute_batch(&format!(
            "ALTER TABLE endpoints ADD COLUMN previous_secret TEXT;
             ALTER TABLE endpoints ADD COLUMN previous_secret_until INTEGER;
             UPDATE endpoints SET previous_secret = previous_secrets ->> '$[0].secret',
                                  previous_secret_until = previous_secrets ->> '$[0].until';
             ALTER TABLE endpoints DROP COLUMN previous_secrets;
             ALTER TABLE attempts DROP COLUMN claim;
             ALTER TABLE deliveries DROP COLUMN kept_claim;
             ALTER TABLE endpoints DROP COLUMN held_until;
             PRAGMA user_version = {before};"
        ))
        .unwrap();
        let sealed: String = db
            .query_row(
                "SELECT previous_secret FROM endpoints WHERE id = ?1",
                [&ep.id],
                |r| r.get(0),
            )
            .unwrap();
        assert!(sealed.starts_with("hlenc1:"), "{sealed}");
        drop(db);

        let store = SqliteStore::open(dir.path(), sealer).unwrap();
        let read = store
            .get_endpoint(account.id.clone(), ep.id.clone())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            read.previous_secrets,
            vec![crate::model::PreviousSecret {
                secret: first,
                until
            }]
        );
        assert_eq!(read.previous_secret_expires_at, Some(until));
        let read = store
            .get_endpoint(account.id.clone(), never_rotated.id.clone())
            .await
            .unwrap()
            .unwrap();
        assert!(read.previous_secrets.is_empty());
        assert_eq!(read.previous_secret_expires_at, None);
        let columns: Vec<String> = store
            .read(|c| {
                c.prepare("SELECT name FROM pragma_table_info('endpoints')")
                    .ctx("t")?
                    .query_map([], |r| r.get(0))
                    .ctx("t")?
                    .collect::<Result<_, _>>()
                    .ctx("t")
            })
            .await
            .unwrap();
        assert!(
            !columns.iter().any(|c| c == "previous_secret"),
            "{columns:?}"
        );
    }

    /// Undoes the migration to `previous_secrets` (its rows' lists are lost), which cannot
    /// run twice: a test that takes the database back to before an earlier migration undoes
    /// it too.
    const UNDO_PREVIOUS_SECRETS: &str = "ALTER TABLE endpoints DROP COLUMN previous_secrets;
         ALTER TABLE endpoints ADD COLUMN previous_secret TEXT;
         ALTER TABLE endpoints ADD COLUMN previous_secret_until INTEGER;";

    /// An account with one endpoint.
    async fn with_endpoint(store: &SqliteStore) -> (Account, Endpoint) {
        let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
        let ep = store
            .insert_endpoint(endpoint(&account.id), 100)
            .await
            .unwrap();
        (account, ep)
    }

    async fn status(store: &SqliteStore, account_id: &str, id: &str) -> DeliveryStatus {
        let found = store.get_delivery(account_id.into(), id.into()).await;
        found.unwrap().expect("the delivery exists").0.status
    }

    /// A recovery starts about at its `since`: the search over row numbers finds the last row
    /// created more than the margin before it, however much older history lies behind.
    #[tokio::test]
    async fn a_recovery_starts_at_its_since_not_at_the_first_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        let (account, ep) = with_endpoint(&store).await;
        // Another endpoint's rows lie between its own.
        let other = store
            .insert_endpoint(endpoint(&account.id), 100)
            .await
            .unwrap();
        let wrapped = super::super::Store::Sqlite(store.clone());
        let from =
            |since: i64| wrapped.recover_from(account.id.clone(), ep.id.clone(), Timestamp(since));
        let row_of = |a: &AcceptedEvent, of: &Endpoint| {
            a.deliveries
                .iter()
                .find(|d| d.endpoint.id == of.id)
                .unwrap()
                .row
        };
        let day = 86_400_000;
        let now = Timestamp::now().0;
        assert_eq!(from(now).await.unwrap(), 0, "no deliveries yet");
        let at = |t: i64, n: usize| {
            click(n)
                .into_iter()
                .map(|e| NewEvent {
                    created_at: Timestamp(t),
                    ..e
                })
                .collect::<Vec<_>>()
        };
        // 1,000 deliveries of ten days ago, then 10 of now.
        let (mut old_last, mut others_last) = (0, 0);
        for _ in 0..10 {
            let accepted = store
                .insert_events(
                    account.id.clone(),
                    at(now - 10 * day, 100),
                    |_| true,
                    |_| {},
                )
                .await
                .unwrap();
            old_last = row_of(&accepted[99], &ep);
            others_last = row_of(&accepted[99], &other);
        }
        let new = store
            .insert_events(account.id.clone(), at(now, 10), |_| true, |_| {})
            .await
            .unwrap();
        let new_last = row_of(&new[9], &ep);
        assert!(row_of(&new[0], &ep) > old_last);
        assert_eq!(from(now - day).await.unwrap(), old_last);
        assert_eq!(
            from(now + super::super::RECOVER_MARGIN_MS).await.unwrap(),
            old_last,
            "rows the margin before `since` are walked"
        );
        assert_eq!(
            from(now + super::super::RECOVER_MARGIN_MS + 1)
                .await
                .unwrap(),
            new_last,
            "rows before that are not"
        );
        assert_eq!(
            from(now - 20 * day).await.unwrap(),
            0,
            "all of it is recent"
        );
        assert_eq!(from(now + day).await.unwrap(), new_last, "none of it is");
        let of_other =
            |account: String| wrapped.recover_from(account, other.id.clone(), Timestamp(now - day));
        assert_eq!(of_other(account.id.clone()).await.unwrap(), others_last);
        assert_eq!(
            of_other("acc_someone_else".into()).await.unwrap(),
            0,
            "another account's endpoint has no rows of its own"
        );
    }

    /// Turning an endpoint off ends at most a batch of what waits behind it in its own
    /// write; the rest ends in writes of their own, after a restart too, and an endpoint
    /// turned on again before then never delivers it.
    #[tokio::test]
    async fn a_turned_off_endpoints_backlog_ends_a_batch_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        store.set_end_batch(4);
        let (account, ep, _) = with_events(&store, 0).await;
        let acc = account.id.clone();
        let waiting = |store: &SqliteStore, n: usize| {
            let (store, acc) = (store.clone(), acc.clone());
            async move {
                let accepted = store
                    .insert_events(acc, click(n), |_| false, |_| {})
                    .await
                    .unwrap();
                accepted
                    .iter()
                    .map(|a| a.deliveries[0].id.clone())
                    .collect::<Vec<_>>()
            }
        };
        let seen = |store: &SqliteStore, ids: Vec<String>| {
            let (store, acc) = (store.clone(), acc.clone());
            async move {
                let mut out = Vec::new();
                for id in ids {
                    let (d, _) = store.get_delivery(acc.clone(), id).await.unwrap().unwrap();
                    out.push((d.status, d.last_error));
                }
                out
            }
        };
        let failed = |why: &str| (DeliveryStatus::Failed, Some(why.to_owned()));
        let pending = (DeliveryStatus::Pending, None);
        let turn = |store: &SqliteStore, on: bool| {
            let (store, acc, id) = (store.clone(), acc.clone(), ep.id.clone());
            async move {
                store
                    .update_endpoint(acc, id, move |e| e.enabled = on)
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        let db = Connection::open(dir.path().join("hookline.db")).unwrap();
        let mark = |db: &Connection| -> Option<i64> {
            db.query_row(
                "SELECT waiting_from FROM endpoints WHERE id = ?1",
                [&ep.id],
                |r| r.get(0),
            )
            .unwrap()
        };

        let ids = waiting(&store, 10).await;
        turn(&store, false).await;
        let mut want = vec![failed(OFF_DISABLED); 4];
        want.extend(vec![pending.clone(); 6]);
        assert_eq!(
            seen(&store, ids.clone()).await,
            want,
            "the first batch only"
        );
        assert!(mark(&db).is_some());

        // A crash right after the turning off: the rest ends after the restart.
        drop(store);
        let mut store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        store.set_end_batch(4);
        assert_eq!(store.end_turned_off().await.unwrap(), 6);
        assert_eq!(seen(&store, ids).await, vec![failed(OFF_DISABLED); 10]);
        assert_eq!(mark(&db), None);
        assert_eq!(store.end_turned_off().await.unwrap(), 0);

        // Turned off and on again before the rest ended: refused while more than a batch is
        // left (it would be delivered), and what is left of one ends in the change itself.
        // The endpoint takes only what comes after.
        turn(&store, true).await;
        let ids = waiting(&store, 10).await;
        turn(&store, false).await;
        let refused = store
            .update_endpoint(acc.clone(), ep.id.clone(), |e| e.enabled = true)
            .await;
        assert!(
            matches!(refused, Err(StoreError::Conflict(_))),
            "{refused:?}"
        );
        let mut want = vec![failed(OFF_DISABLED); 4];
        want.extend(vec![pending.clone(); 6]);
        assert_eq!(
            seen(&store, ids.clone()).await,
            want,
            "the refusal changed nothing"
        );
        let still = store.get_endpoint(acc.clone(), ep.id.clone()).await;
        assert!(!still.unwrap().unwrap().enabled);
        store.set_end_batch(8);
        turn(&store, true).await;
        assert_eq!(seen(&store, ids).await, vec![failed(OFF_DISABLED); 10]);
        assert_eq!(mark(&db), None);
        store.set_end_batch(4);
        let after = waiting(&store, 1).await;
        let claimed: Vec<String> = store
            .claim_due(Timestamp::now(), |_| 100)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.delivery_id)
            .collect();
        assert_eq!(claimed, after);

        // Removed: the rest ends for that reason.
        let ids = waiting(&store, 6).await;
        store
            .delete_endpoint(acc.clone(), ep.id.clone())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.end_turned_off().await.unwrap(), 2);
        assert_eq!(seen(&store, ids).await, vec![failed(OFF_REMOVED); 6]);
        assert_eq!(mark(&db), None);

        // An account moved to a plan without webhooks: its endpoints share the one batch.
        let other = store.create_account("b".into(), Plan::Pro).await.unwrap();
        for _ in 0..2 {
            store
                .insert_endpoint(endpoint(&other.id), 100)
                .await
                .unwrap();
        }
        let accepted = store
            .insert_events(other.id.clone(), click(10), |_| false, |_| {})
            .await
            .unwrap();
        let ids: Vec<String> = accepted
            .iter()
            .flat_map(|a| a.deliveries.iter().map(|d| d.id.clone()))
            .collect();
        assert_eq!(ids.len(), 20);
        store.set_plan(other.id.clone(), Plan::Free).await.unwrap();
        let left = |ids: Vec<String>| {
            let (store, acc) = (store.clone(), other.id.clone());
            async move {
                let mut n = 0;
                for id in ids {
                    let (d, _) = store.get_delivery(acc.clone(), id).await.unwrap().unwrap();
                    if d.status == DeliveryStatus::Pending {
                        n += 1;
                    }
                }
                n
            }
        };
        assert_eq!(left(ids.clone()).await, 16, "2 rows of each endpoint's");
        assert_eq!(store.end_turned_off().await.unwrap(), 16);
        for id in ids {
            let (d, _) = store
                .get_delivery(other.id.clone(), id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (d.status, d.last_error.as_deref()),
                (DeliveryStatus::Failed, Some(super::super::PLAN_DISABLED))
            );
        }
    }

    /// An attempt that outlived its claim (the delivery was given back and retried by hand
    /// meanwhile) cannot move the delivery on; the current one can.
    #[tokio::test]
    async fn an_outcome_of_an_old_claim_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        let (account, _, accepted) = with_events(&store, 1).await;
        let d = &accepted[0].deliveries[0];

        // Claim 1 is given back unsent while its attempt is still thought in flight.
        store
            .record_attempts(vec![given_back(&held(&accepted[0]), 1)])
            .await
            .unwrap();
        assert_eq!(
            status(&store, &account.id, &d.id).await,
            DeliveryStatus::Pending
        );
        // A manual retry takes claim 2.
        let retry = store
            .claim_for_retry(account.id.clone(), d.id.clone())
            .await
            .unwrap()
            .unwrap()
            .due;
        assert_eq!(retry.claim, 2);
        // Claim 1's late failure changes nothing: claim 2 still holds it.
        store
            .record_attempts(vec![failure(&retry, 1)])
            .await
            .unwrap();
        assert_eq!(
            status(&store, &account.id, &d.id).await,
            DeliveryStatus::Delivering
        );
        // Claim 2's failure schedules the retry.
        store
            .record_attempts(vec![failure(&retry, 2)])
            .await
            .unwrap();
        assert_eq!(
            status(&store, &account.id, &d.id).await,
            DeliveryStatus::Pending
        );
    }

    /// Turning an endpoint off ends its due and waiting deliveries at once, without reading
    /// the rest of its history; the ones the dispatcher holds end with their own outcomes
    /// (a failure or a give-back ends them `failed`, a success stays a success), or at the
    /// next start.
    #[tokio::test]
    async fn turning_an_endpoint_off_ends_its_open_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        let (account, ep, _) = with_events(&store, 0).await;
        let admitted = |n| store.insert_events(account.id.clone(), click(n), |_| true, |_| {});
        let holding = admitted(4).await.unwrap();
        let [fails, gives_back, succeeds, restarts] = [0, 1, 2, 3].map(|i| held(&holding[i]));
        let retried = held(&admitted(1).await.unwrap()[0]);
        store
            .record_attempts(vec![failure(&retried, 1)])
            .await
            .unwrap();
        let waiting = store
            .insert_events(account.id.clone(), click(1), |_| false, |_| {})
            .await
            .unwrap()[0]
            .deliveries[0]
            .id
            .clone();
        let of = |d: &DueDelivery| d.delivery_id.clone();
        let is = |id: String| {
            let (store, account) = (&store, account.id.clone());
            async move { status(store, &account, &id).await }
        };
        assert_eq!(is(of(&retried)).await, DeliveryStatus::Pending);
        assert_eq!(is(waiting.clone()).await, DeliveryStatus::Pending);

        store
            .update_endpoint(account.id.clone(), ep.id.clone(), |e| e.enabled = false)
            .await
            .unwrap();
        assert_eq!(is(of(&retried)).await, DeliveryStatus::Failed);
        assert_eq!(is(waiting).await, DeliveryStatus::Failed);
        for d in [&fails, &gives_back, &succeeds, &restarts] {
            assert_eq!(is(of(d)).await, DeliveryStatus::Delivering);
        }
        let success = AttemptRecord {
            outcome: Outcome::Succeeded,
            ..failure(&succeeds, 1)
        };
        store
            .record_attempts(vec![
                failure(&fails, 1),
                given_back(&gives_back, 1),
                success,
            ])
            .await
            .unwrap();
        assert_eq!(is(of(&succeeds)).await, DeliveryStatus::Succeeded);
        for d in [&fails, &gives_back] {
            let (seen, _) = store
                .get_delivery(account.id.clone(), of(d))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(seen.status, DeliveryStatus::Failed);
            assert_eq!(seen.next_attempt_at, None);
            assert_eq!(seen.last_error.as_deref(), Some(ENDPOINT_GONE));
        }
        drop(store);
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        assert_eq!(store.release_all_claims().await.unwrap(), 1);
        let (seen, _) = store
            .get_delivery(account.id.clone(), of(&restarts))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen.status, DeliveryStatus::Failed);
        assert_eq!(seen.next_attempt_at, None);
        assert_eq!(seen.last_error.as_deref(), Some(ENDPOINT_GONE));
        // Nothing of the endpoint is left open.
        let db = Connection::open(dir.path().join("hookline.db")).unwrap();
        let open: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM deliveries
                 WHERE endpoint_id = ?1 AND status IN ('pending', 'delivering')",
                [&ep.id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(open, 0);

        // Turned off and on again before a held delivery's outcome: the delivery goes on.
        let ep = store
            .update_endpoint(account.id.clone(), ep.id.clone(), |e| e.enabled = true)
            .await
            .unwrap()
            .unwrap();
        let again = store
            .insert_events(account.id.clone(), click(1), |_| true, |_| {})
            .await
            .unwrap();
        let again = held(&again[0]);
        for enabled in [false, true] {
            store
                .update_endpoint(account.id.clone(), ep.id.clone(), move |e| {
                    e.enabled = enabled
                })
                .await
                .unwrap();
        }
        store
            .record_attempts(vec![given_back(&again, 1)])
            .await
            .unwrap();
        assert_eq!(
            status(&store, &account.id, &again.delivery_id).await,
            DeliveryStatus::Pending
        );
    }

    /// An attempt of `d` under `claim`, answered `code` (`None`: timed out).
    fn answered(d: &NewDelivery, claim: i64, attempt: u32, code: Option<u16>) -> AttemptRecord {
        let ok = code.is_some_and(|c| (200..300).contains(&c));
        AttemptRecord {
            delivery_id: d.id.clone(),
            row: d.row,
            claim,
            endpoint_id: d.endpoint.id.clone(),
            endpoint_version: d.endpoint.updated_at.0,
            attempt: Some(Attempt {
                attempt,
                started_at: Timestamp(1_000 * i64::from(attempt)),
                duration_ms: u64::from(attempt) + 10,
                status_code: code,
                error: code.is_none().then(|| format!("timed out {attempt}")),
                response_body: code.map(|_| format!("answer {attempt}")),
            }),
            outcome: if ok {
                Outcome::Succeeded
            } else {
                Outcome::RetryAt(Timestamp(Timestamp::now().0 + 60_000))
            },
        }
    }

    /// Rows of `attempts` for a delivery, read apart from the store.
    fn attempt_rows(dir: &Path, delivery_id: &str) -> i64 {
        let c = Connection::open(dir.join("hookline.db")).unwrap();
        c.query_row(
            "SELECT COUNT(*) FROM attempts WHERE delivery_id = ?1",
            [delivery_id],
            |r| r.get(0),
        )
        .unwrap()
    }

    /// A delivery's latest attempt stays in its row; an earlier one moves to `attempts` when
    /// a later one comes. Either way every attempt is listed once, in order, as recorded.
    #[tokio::test]
    async fn the_latest_attempt_stays_in_its_row_and_every_attempt_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        let (account, _, accepted) = with_events(&store, 3).await;
        let (first_try, retried, upgraded) = (
            &accepted[0].deliveries[0],
            &accepted[1].deliveries[0],
            &accepted[2].deliveries[0],
        );
        let listed = |id: String| {
            let (store, account_id) = (&store, account.id.clone());
            async move {
                let (d, attempts) = store.get_delivery(account_id, id).await.unwrap().unwrap();
                let seen: Vec<_> = attempts
                    .iter()
                    .map(|a| {
                        (
                            a.attempt,
                            a.started_at.0,
                            a.duration_ms,
                            a.status_code,
                            a.error.clone(),
                            a.response_body.clone(),
                        )
                    })
                    .collect();
                (d.status, d.attempt_count, seen)
            }
        };
        let expect = |n: u32, code: Option<u16>| {
            (
                n,
                1_000 * i64::from(n),
                u64::from(n) + 10,
                code,
                code.is_none().then(|| format!("timed out {n}")),
                code.map(|_| format!("answer {n}")),
            )
        };

        // A success at the first try writes no `attempts` row.
        store
            .record_attempts(vec![answered(first_try, 1, 1, Some(200))])
            .await
            .unwrap();
        assert_eq!(
            listed(first_try.id.clone()).await,
            (DeliveryStatus::Succeeded, 1, vec![expect(1, Some(200))])
        );
        assert_eq!(attempt_rows(dir.path(), &first_try.id), 0);

        // Two failures, then a success: each attempt before the latest moves out.
        store
            .record_attempts(vec![answered(retried, 1, 1, None)])
            .await
            .unwrap();
        assert_eq!(attempt_rows(dir.path(), &retried.id), 0);
        for (attempt, code) in [(2, Some(503)), (3, Some(204))] {
            let due = store
                .claim_for_retry(account.id.clone(), retried.id.clone())
                .await
                .unwrap()
                .unwrap()
                .due;
            assert_eq!(due.attempts + 1, attempt);
            store
                .record_attempts(vec![answered(retried, due.claim, attempt, code)])
                .await
                .unwrap();
        }
        assert_eq!(
            listed(retried.id.clone()).await,
            (
                DeliveryStatus::Succeeded,
                3,
                vec![expect(1, None), expect(2, Some(503)), expect(3, Some(204))]
            )
        );
        assert_eq!(attempt_rows(dir.path(), &retried.id), 2);

        // A late outcome of an old claim does not move the delivery on, but its attempt is
        // still logged, beside the kept one. (Each attempt is made under a claim of its own:
        // these old ones are numbers the delivery no longer holds.)
        let mut late = answered(retried, -4, 4, Some(500));
        late.outcome = Outcome::Failed;
        store.record_attempts(vec![late]).await.unwrap();
        let (status, _, seen) = listed(retried.id.clone()).await;
        assert_eq!(status, DeliveryStatus::Succeeded);
        assert_eq!(
            seen,
            vec![
                expect(1, None),
                expect(2, Some(503)),
                expect(3, Some(204)),
                expect(4, Some(500))
            ]
        );
        assert_eq!(attempt_rows(dir.path(), &retried.id), 3);

        // Another attempt of a number the delivery holds (a manual retry's beside one in
        // flight, both numbered from the same count) takes the next number, and is counted;
        // written again (a commit whose answer was lost), it changes nothing.
        let mut beside = answered(retried, -3, 3, Some(502));
        beside.outcome = Outcome::Failed;
        if let Some(a) = beside.attempt.as_mut() {
            a.started_at = Timestamp(3_500);
        }
        for _ in 0..2 {
            store.record_attempts(vec![beside.clone()]).await.unwrap();
            let (status, count, seen) = listed(retried.id.clone()).await;
            assert_eq!(
                (status, count, seen.len()),
                (DeliveryStatus::Succeeded, 5, 5)
            );
            assert_eq!(
                seen[4],
                (5, 3_500, 13, Some(502), None, Some("answer 3".into()))
            );
            assert_eq!(seen[2], expect(3, Some(204)));
        }

        // A delivery retried across an upgrade: its first attempt was written to `attempts`
        // by a build that kept nothing in the row.
        let db = Connection::open(dir.path().join("hookline.db")).unwrap();
        db.execute(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code,
                error, response_body) VALUES (?1, 1, 1000, 11, NULL, 'timed out 1', NULL)",
            [&upgraded.id],
        )
        .unwrap();
        db.execute(
            "UPDATE deliveries SET status = 'pending', attempts = 1 WHERE id = ?1",
            [&upgraded.id],
        )
        .unwrap();
        drop(db);
        let due = store
            .claim_for_retry(account.id.clone(), upgraded.id.clone())
            .await
            .unwrap()
            .unwrap()
            .due;
        assert_eq!(due.attempts + 1, 2);
        store
            .record_attempts(vec![answered(upgraded, due.claim, 2, Some(200))])
            .await
            .unwrap();
        assert_eq!(
            listed(upgraded.id.clone()).await,
            (
                DeliveryStatus::Succeeded,
                2,
                vec![expect(1, None), expect(2, Some(200))]
            )
        );
        assert_eq!(attempt_rows(dir.path(), &upgraded.id), 1);
    }

    /// A claim marks the oldest due deliveries of each endpoint, up to its room, each with
    /// its event's envelope. An endpoint whose secret cannot be opened, or whose stored row
    /// cannot be read, keeps its work `pending` (claimable once fixed) without stopping the
    /// others'.
    #[tokio::test]
    async fn a_claim_takes_the_oldest_due_and_spares_an_unreadable_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
        let good = store
            .insert_endpoint(endpoint(&account.id), 100)
            .await
            .unwrap();
        let broken = store
            .insert_endpoint(endpoint(&account.id), 100)
            .await
            .unwrap();
        let garbled = store
            .insert_endpoint(endpoint(&account.id), 100)
            .await
            .unwrap();
        let mut accepted = Vec::new();
        for _ in 0..3 {
            // One at a time, so that their due times never go backwards.
            let one = store
                .insert_events(account.id.clone(), click(1), |_| false, |_| {})
                .await
                .unwrap();
            accepted.extend(one);
        }
        // An endpoint added after the events has nothing due: a claim never reads it, so a
        // row of it that cannot be read stops nothing.
        let idle = store
            .insert_endpoint(endpoint(&account.id), 100)
            .await
            .unwrap();
        let of = |ev: &AcceptedEvent, ep: &Endpoint| -> String {
            let d = ev.deliveries.iter().find(|d| d.endpoint.id == ep.id);
            d.expect("a delivery to each endpoint").id.clone()
        };
        let db = Connection::open(dir.path().join("hookline.db")).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        let sealed: String = db
            .query_row(
                "SELECT secret FROM endpoints WHERE id = ?1",
                [&broken.id],
                |r| r.get(0),
            )
            .unwrap();
        db.execute(
            "UPDATE endpoints SET secret = 'hlenc1:k1:AAAA' WHERE id = ?1",
            [&broken.id],
        )
        .unwrap();
        for ep in [&garbled, &idle] {
            db.execute(
                "UPDATE endpoints SET headers = 'not JSON' WHERE id = ?1",
                [&ep.id],
            )
            .unwrap();
        }

        let claimed = store.claim_due(Timestamp::now(), |_| 2).await.unwrap();
        let ids: Vec<&str> = claimed.iter().map(|d| d.delivery_id.as_str()).collect();
        assert_eq!(ids, [of(&accepted[0], &good), of(&accepted[1], &good)]);
        for (d, ev) in claimed.iter().zip(&accepted) {
            assert_eq!(d.claim, 1);
            assert_eq!(d.attempts, 0);
            assert_eq!(d.event_id, ev.event.id);
            let envelope = envelope(&ev.event.id, "click", ev.event.created_at, "{}");
            assert_eq!(d.payload.as_ref(), envelope.as_slice());
            assert_eq!(
                status(&store, &account.id, &d.delivery_id).await,
                DeliveryStatus::Delivering
            );
        }
        for ev in &accepted {
            for ep in [&broken, &garbled] {
                let id = of(ev, ep);
                assert_eq!(
                    status(&store, &account.id, &id).await,
                    DeliveryStatus::Pending
                );
            }
        }

        // With its secret back, the endpoint's work is taken, oldest first, with the same
        // envelopes as the other endpoint's; an endpoint with no room gives none.
        db.execute(
            "UPDATE endpoints SET secret = ?2 WHERE id = ?1",
            [&broken.id, &sealed],
        )
        .unwrap();
        let full = good.id.clone();
        let claimed = store
            .claim_due(Timestamp::now(), move |ep| if ep == full { 0 } else { 10 })
            .await
            .unwrap();
        let ids: Vec<&str> = claimed.iter().map(|d| d.delivery_id.as_str()).collect();
        let oldest_first: Vec<String> = accepted.iter().map(|ev| of(ev, &broken)).collect();
        assert_eq!(ids, oldest_first);
        let last = store.claim_due(Timestamp::now(), |_| 10).await.unwrap();
        let ids: Vec<&str> = last.iter().map(|d| d.delivery_id.as_str()).collect();
        assert_eq!(ids, [of(&accepted[2], &good)]);
        for d in claimed.iter().chain(&last) {
            let ev = accepted
                .iter()
                .find(|ev| ev.event.id == d.event_id)
                .unwrap();
            let envelope = envelope(&ev.event.id, "click", ev.event.created_at, "{}");
            assert_eq!(d.payload.as_ref(), envelope.as_slice());
            assert_eq!(d.claim, 1);
        }
        assert!(
            store
                .claim_due(Timestamp::now(), |_| 10)
                .await
                .unwrap()
                .is_empty()
        );
        for ev in &accepted {
            let id = of(ev, &garbled);
            assert_eq!(
                status(&store, &account.id, &id).await,
                DeliveryStatus::Pending
            );
        }
    }

    /// The earliest due time over every endpoint's pending deliveries, and none when nothing
    /// is pending; a database from before the per-endpoint lookup loses its second index.
    #[tokio::test]
    async fn the_next_due_time_is_the_earliest_over_all_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        assert_eq!(store.next_due_at(Timestamp(i64::MIN)).await.unwrap(), None);
        let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
        for _ in 0..3 {
            store
                .insert_endpoint(endpoint(&account.id), 100)
                .await
                .unwrap();
        }
        let accepted = store
            .insert_events(account.id.clone(), click(2), |_| false, |_| {})
            .await
            .unwrap();
        let written = Timestamp::now();
        // Due from their write (by the clock that judges due times): after the events were
        // stamped, and by the time the write was answered.
        let stamped = accepted.iter().map(|ev| ev.event.created_at.0).min();
        let due = store
            .next_due_at(Timestamp(i64::MIN))
            .await
            .unwrap()
            .map(|t| t.0);
        assert!(
            due.zip(stamped)
                .is_some_and(|(due, stamped)| stamped <= due && due <= written.0),
            "due {due:?}, stamped {stamped:?}, written by {written:?}"
        );

        let claimed = store.claim_due(Timestamp::now(), |_| 10).await.unwrap();
        assert_eq!(claimed.len(), 6);
        assert_eq!(store.next_due_at(Timestamp(i64::MIN)).await.unwrap(), None);
        // Two fail, to be retried a minute apart; the earlier one is next.
        let mut later = failure(&claimed[4], 1);
        let later_at = Timestamp(Timestamp::now().0 + 120_000);
        later.outcome = Outcome::RetryAt(later_at);
        let sooner = failure(&claimed[1], 1);
        let Outcome::RetryAt(at) = sooner.outcome else {
            unreachable!("a retry")
        };
        store.record_attempts(vec![later, sooner]).await.unwrap();
        assert_eq!(
            store.next_due_at(Timestamp(i64::MIN)).await.unwrap(),
            Some(at)
        );
        // After that time only the later one is still to come: what fell due by a claim and
        // was not taken waits for room, not for a time.
        assert_eq!(store.next_due_at(at).await.unwrap(), Some(later_at));
        drop(store);

        // A database from before the migration that drops the index still has it (and none
        // of the columns later migrations add): opening it drops it.
        let before = MIGRATIONS
            .iter()
            .position(|m| m.contains("DROP INDEX IF EXISTS deliveries_due"))
            .unwrap();
        let db = Connection::open(dir.path().join("hookline.db")).unwrap();
        db.execute_batch(&format!(
            "CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
             ALTER TABLE deliveries DROP COLUMN kept_attempt;
             ALTER TABLE deliveries DROP COLUMN kept_started_at;
             ALTER TABLE deliveries DROP COLUMN kept_duration_ms;
             ALTER TABLE deliveries DROP COLUMN kept_status_code;
             ALTER TABLE deliveries DROP COLUMN kept_error;
             ALTER TABLE deliveries DROP COLUMN kept_response_body;
             ALTER TABLE endpoints DROP COLUMN waiting_from;
             ALTER TABLE endpoints DROP COLUMN waiting_since;
             ALTER TABLE events DROP COLUMN deliveries_from;
             ALTER TABLE events DROP COLUMN deliveries_until;
             CREATE INDEX deliveries_by_event ON deliveries (event_id);
             {UNDO_PREVIOUS_SECRETS}
             ALTER TABLE attempts DROP COLUMN claim;
             ALTER TABLE deliveries DROP COLUMN kept_claim;
             ALTER TABLE endpoints DROP COLUMN held_until;
             PRAGMA user_version = {before};"
        ))
        .unwrap();
        drop(db);
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        assert_eq!(
            store.next_due_at(Timestamp(i64::MIN)).await.unwrap(),
            Some(at)
        );
        let db = Connection::open(dir.path().join("hookline.db")).unwrap();
        let (indexes, version): (i64, i64) = db
            .query_row(
                "SELECT (SELECT COUNT(*) FROM sqlite_master WHERE name = 'deliveries_due'),
                        (SELECT user_version FROM pragma_user_version)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((indexes, version), (0, MIGRATIONS.len() as i64));
    }

    /// The raw row of a delivery: status and due time.
    fn raw(db: &Connection, id: &str) -> (String, Option<i64>) {
        db.query_row(
            "SELECT status, next_attempt_at FROM deliveries WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    /// An endpoint's waiting mark: `(waiting_from, waiting_since)`.
    fn mark(db: &Connection, endpoint_id: &str) -> (Option<i64>, Option<i64>) {
        db.query_row(
            "SELECT waiting_from, waiting_since FROM endpoints WHERE id = ?1",
            [endpoint_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    /// Deliveries that ingest does not admit wait for room outside the due index: their
    /// endpoint's mark finds them, in row order, beside a give-back and across a restart, and
    /// the stale sweep ends them like due ones and moves the mark past them. The API still
    /// shows them due since created.
    #[tokio::test]
    async fn waiting_deliveries_are_found_from_their_endpoints_mark() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
        let down = store
            .insert_endpoint(endpoint(&account.id), 100)
            .await
            .unwrap();
        let up = store
            .insert_endpoint(endpoint(&account.id), 100)
            .await
            .unwrap();
        let mut accepted = Vec::new();
        for _ in 0..5 {
            let admit_up = up.id.clone();
            let one = store
                .insert_events(
                    account.id.clone(),
                    click(1),
                    move |ep| ep == admit_up,
                    |_| {},
                )
                .await
                .unwrap();
            accepted.extend(one);
        }
        let written = Timestamp::now().0;
        let of = |ev: &AcceptedEvent, ep: &Endpoint| -> NewDelivery {
            let d = ev.deliveries.iter().find(|d| d.endpoint.id == ep.id);
            d.expect("a delivery to each endpoint").clone()
        };
        let waiting: Vec<NewDelivery> = accepted.iter().map(|ev| of(ev, &down)).collect();
        let db = Connection::open(dir.path().join("hookline.db")).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        for d in &waiting {
            assert_eq!(raw(&db, &d.id), ("pending".into(), None));
        }
        // Due, and waiting, from their write by the clock that judges due times.
        for ev in &accepted {
            let (status, due) = raw(&db, &of(ev, &up).id);
            assert_eq!(status, "delivering");
            assert!(due.is_some_and(|t| (ev.event.created_at.0..=written).contains(&t)));
        }
        let first = accepted[0].event.created_at;
        let (from, since) = mark(&db, &down.id);
        assert_eq!(from, Some(waiting[0].row));
        let since = since.expect("waiting since the first one's write");
        assert!((first.0..=written).contains(&since));
        assert_eq!(mark(&db, &up.id), (None, None));
        // Seen from outside, a waiting delivery is due since it was created.
        let seen = store
            .get_delivery(account.id.clone(), waiting[1].id.clone())
            .await
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(seen.status, DeliveryStatus::Pending);
        assert_eq!(seen.next_attempt_at, Some(accepted[1].event.created_at));
        assert_eq!(
            store.next_due_at(Timestamp(i64::MIN)).await.unwrap(),
            Some(Timestamp(since))
        );

        // Room for two: the two oldest, and the mark moves past them.
        let claimed = store.claim_due(Timestamp::now(), |_| 2).await.unwrap();
        let ids: Vec<&str> = claimed.iter().map(|d| d.delivery_id.as_str()).collect();
        assert_eq!(ids, [waiting[0].id.as_str(), waiting[1].id.as_str()]);
        assert_eq!(mark(&db, &down.id).0, Some(waiting[1].row + 1));
        // One is given back unsent: due now, and the mark stays where it was.
        let given_back = AttemptRecord {
            attempt: None,
            outcome: Outcome::Released,
            ..failure(&claimed[0], claimed[0].claim)
        };
        store.record_attempts(vec![given_back]).await.unwrap();
        let (status, due) = raw(&db, &waiting[0].id);
        assert_eq!(status, "pending");
        assert!(due.is_some_and(|t| t >= first.0));
        assert_eq!(mark(&db, &down.id).0, Some(waiting[1].row + 1));

        // A restart puts the other claimed one back, due now; the waiting ones are still
        // found from the mark, and a claim that takes them all clears it.
        drop(store);
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        assert_eq!(store.release_all_claims().await.unwrap(), 6);
        let claimed = store.claim_due(Timestamp::now(), |_| 100).await.unwrap();
        let mut ids: Vec<&str> = claimed.iter().map(|d| d.delivery_id.as_str()).collect();
        ids.sort_unstable();
        let mut all: Vec<&str> = waiting.iter().map(|d| d.id.as_str()).collect();
        for ev in &accepted {
            all.push(
                ev.deliveries
                    .iter()
                    .find(|d| d.endpoint.id == up.id)
                    .unwrap()
                    .id
                    .as_str(),
            );
        }
        all.sort_unstable();
        assert_eq!(ids, all);
        assert_eq!(mark(&db, &down.id), (None, None));
        assert_eq!(store.next_due_at(Timestamp(i64::MIN)).await.unwrap(), None);

        // The sweep of deliveries that waited out the schedule ends waiting ones too, and
        // moves the mark to the first one still waiting.
        let mut more = store
            .insert_events(account.id.clone(), click(2), |_| false, |_| {})
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        more.extend(
            store
                .insert_events(account.id.clone(), click(1), |_| false, |_| {})
                .await
                .unwrap(),
        );
        let more: Vec<NewDelivery> = more.iter().map(|ev| of(ev, &down)).collect();
        assert_eq!(mark(&db, &down.id).0, Some(more[0].row));
        let third = db
            .query_row(
                "SELECT created_at FROM deliveries WHERE id = ?1",
                [&more[2].id],
                |r| r.get::<_, i64>(0),
            )
            .unwrap();
        assert_eq!(
            store
                .fail_stale(down.id.clone(), Timestamp(third))
                .await
                .unwrap(),
            2
        );
        assert_eq!(raw(&db, &more[0].id).0, "failed");
        assert_eq!(raw(&db, &more[1].id).0, "failed");
        assert_eq!(mark(&db, &down.id).0, Some(more[2].row));
        // A manual retry takes the last one: the mark, now stale, is cleared by the next
        // claim that finds nothing past it (it takes only the other endpoint's three).
        store
            .claim_for_retry(account.id.clone(), more[2].id.clone())
            .await
            .unwrap()
            .unwrap();
        // It is due from the retry on, not since it was created.
        let (status, due) = raw(&db, &more[2].id);
        assert_eq!(status, "delivering");
        assert!(due.is_some_and(|t| t >= third), "{due:?}");
        let claimed = store.claim_due(Timestamp::now(), |_| 10).await.unwrap();
        assert_eq!(claimed.len(), 3);
        assert!(claimed.iter().all(|d| d.endpoint.id == up.id));
        assert_eq!(mark(&db, &down.id), (None, None));
    }

    /// The stale sweep of an endpoint that has been down for long walks the waiting rows it
    /// ends and stops at the first one well clear of the cutoff: its work does not grow with
    /// the backlog behind that row (counted in SQLite's own steps, not timed). Rows stamped
    /// in the future, or younger than the cutoff by less than the margin, do not stop it; it
    /// reads a bounded number of rows per job, each job going on where the last one stopped,
    /// even past rows none of them ends; and it ends even when no row could stop it.
    #[tokio::test]
    async fn the_stale_sweep_walks_what_it_ends_not_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        let (account, down) = with_endpoint(&store).await;
        // Nine rows: five from before the schedule's start, three stamped an hour ahead (a
        // clock that ran ahead) and one just younger than the cutoff among them; then a
        // young backlog of 3,000.
        let now = Timestamp::now();
        let old = Timestamp(now.0 - 10 * 86_400_000);
        let cutoff = Timestamp(old.0 + 1);
        let ahead = [3, 4, 5];
        let just_young = 6;
        let mut early = click(9);
        for (i, ev) in early.iter_mut().enumerate() {
            ev.created_at = if ahead.contains(&i) {
                Timestamp(now.0 + 3_600_000)
            } else if i == just_young {
                Timestamp(cutoff.0 + SWEEP_MARGIN_MS / 2)
            } else {
                old
            };
        }
        let early = store
            .insert_events(account.id.clone(), early, |_| false, |_| {})
            .await
            .unwrap();
        for _ in 0..6 {
            store
                .insert_events(account.id.clone(), click(500), |_| false, |_| {})
                .await
                .unwrap();
        }
        drop(store);

        let mut db = Connection::open(dir.path().join("hookline.db")).unwrap();
        let row = |i: usize| early[i].deliveries[0].row;
        let status = |db: &Connection, i: usize| raw(db, &early[i].deliveries[0].id).0;
        let until: i64 = db
            .query_row("SELECT MAX(seq) FROM deliveries", [], |r| r.get(0))
            .unwrap();
        let tx = db.transaction().unwrap();
        let sweep = |walk| fail_stale_rows(&tx, &down.id, cutoff, Timestamp::now(), walk, 2);
        let walk = |from| SweepWalk { from, until };
        // Jobs of two rows read: each ends the stale ones of its stretch and says where the
        // next one goes on; the third ends nothing but still moves on.
        assert_eq!(sweep(walk(i64::MIN)).unwrap(), (2, Some(walk(row(2)))));
        assert_eq!(mark(&tx, &down.id).0, Some(row(2)));
        assert_eq!(sweep(walk(row(2))).unwrap(), (1, Some(walk(row(4)))));
        assert_eq!(mark(&tx, &down.id).0, Some(row(3)));
        assert_eq!(sweep(walk(row(4))).unwrap(), (0, Some(walk(row(6)))));
        assert_eq!(sweep(walk(row(6))).unwrap(), (1, Some(walk(row(8)))));
        // The last stale row, and the walk stops at the first young one.
        assert_eq!(sweep(walk(row(8))).unwrap(), (1, None));
        for i in 0..9 {
            let expected = if ahead.contains(&i) || i == just_young {
                "pending"
            } else {
                "failed"
            };
            assert_eq!(status(&tx, i), expected, "row {i}");
        }
        // Ended without an attempt: the reason says so, and why.
        let reason: String = tx
            .query_row(
                "SELECT last_error FROM deliveries WHERE id = ?1",
                [&early[0].deliveries[0].id],
                |r| r.get(0),
            )
            .unwrap();
        assert!(reason.starts_with("not attempted: "), "{reason}");
        assert_eq!(mark(&tx, &down.id).0, Some(row(3)));
        let steps = |tx: &rusqlite::Transaction<'_>| {
            [WAITING_FROM_MARK, FAIL_STALE_WAITING, MARK_FIRST_WAITING].map(|sql| {
                tx.prepare_cached(sql)
                    .unwrap()
                    .get_status(rusqlite::StatementStatus::VmStep)
            })
        };
        let before = steps(&tx);
        assert!(before.iter().all(|&n| n < 800), "{before:?}");
        // A whole sweep that finds nothing more to end reads the nine rows and the first
        // young one, not the 3,000 behind it.
        assert_eq!(
            fail_stale_rows(
                &tx,
                &down.id,
                cutoff,
                Timestamp::now(),
                walk(i64::MIN),
                5_000
            )
            .unwrap(),
            (0, None)
        );
        let after = steps(&tx);
        for (a, b) in before.iter().zip(after) {
            assert!(b - a < 200, "{before:?} then {after:?}");
        }
        drop(tx);

        // The store's own loop of jobs gives the same, and ends.
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        let swept = |before, batch| {
            let (store, id) = (&store, down.id.clone());
            async move {
                tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    store.fail_stale_in(id, before, batch),
                )
                .await
                .expect("the sweep ends")
                .unwrap()
            }
        };
        assert_eq!(swept(cutoff, 2).await, 5);
        assert_eq!(swept(cutoff, 2).await, 0);
        // A cutoff no row is a margin younger than (a schedule shorter than the margin): the
        // walk goes to the endpoint's last row, and ends all but the rows stamped ahead.
        assert_eq!(swept(Timestamp::now(), 500).await, 3_001);
        assert_eq!(mark(&db, &down.id).0, Some(row(3)));
    }

    /// The queries of a claim, of the next due time and of the stale sweep seek through
    /// indexes: none of them reads every delivery, however many an endpoint has.
    #[test]
    fn claims_read_deliveries_only_through_indexes() {
        let (_dir, db) = a_new_schema();
        for (sql, index) in [
            (ENDPOINTS_WITH_WORK, "deliveries_due_by_endpoint"),
            (DUE_SCAN, "deliveries_due_by_endpoint"),
            (
                WAITING_SCAN,
                "deliveries_by_endpoint (endpoint_id=? AND seq>?)",
            ),
            (NEXT_DUE, "deliveries_due_by_endpoint"),
            (FAIL_STALE_DUE, "deliveries_due_by_endpoint"),
            (END_DUE, "deliveries_due_by_endpoint"),
            (
                END_WAITING,
                "deliveries_by_endpoint (endpoint_id=? AND seq>? AND seq<?)",
            ),
            (
                NTH_ROW_FROM,
                "COVERING INDEX deliveries_by_endpoint (endpoint_id=? AND seq>?)",
            ),
            (
                FIRST_DELIVERY_AFTER,
                "deliveries_by_endpoint (endpoint_id=? AND seq>?)",
            ),
            (
                WAITING_FROM_MARK,
                "deliveries_by_endpoint (endpoint_id=? AND seq>? AND seq<?)",
            ),
            (
                FAIL_STALE_WAITING,
                "deliveries_by_endpoint (endpoint_id=? AND seq>? AND seq<?)",
            ),
            (
                MARK_FIRST_WAITING,
                "deliveries_by_endpoint (endpoint_id=? AND seq>?)",
            ),
        ] {
            let plan = plan_of(&db, sql);
            assert!(plan.contains(index), "{sql}\n{plan}");
            assert!(!plan.contains("SCAN d"), "{sql}\n{plan}");
            if [
                WAITING_SCAN,
                WAITING_FROM_MARK,
                NTH_ROW_FROM,
                FIRST_DELIVERY_AFTER,
            ]
            .contains(&sql)
            {
                assert!(!plan.contains("TEMP B-TREE"), "{sql}\n{plan}");
            }
            assert!(!plan.contains("SCAN deliveries"), "{sql}\n{plan}");
        }
    }

    /// SQLite's plan for `sql`, one line per step.
    fn plan_of(db: &Connection, sql: &str) -> String {
        let mut st = db.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let unbound = std::iter::repeat_n(rusqlite::types::Null, st.parameter_count());
        let plan: Vec<String> = st
            .query_map(rusqlite::params_from_iter(unbound), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        plan.join("\n")
    }

    /// An event's deliveries are listed from its run of rows, an endpoint's through its
    /// index, both newest first without a sort: neither list reads other deliveries, however
    /// many there are.
    #[test]
    fn delivery_lists_read_only_their_own_rows() {
        let (_dir, db) = a_new_schema();
        assert_seeks(
            &db,
            "deliveries",
            &[
                (
                    EVENT_DELIVERIES.as_str(),
                    "USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)",
                ),
                (
                    ENDPOINT_DELIVERIES.as_str(),
                    "deliveries_by_endpoint (endpoint_id=? AND seq<?)",
                ),
                // Retention asks of each event whether its run holds an open delivery.
                (
                    OLDEST_ENDED_EVENTS,
                    "SEARCH d USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)",
                ),
            ],
        );
        let indexes: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'deliveries_by_event'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0, "no index of deliveries by event is kept");
    }

    /// Where an account's events of each type are is kept by stretch of rows: ingest records
    /// the stretches its events fall in (another account's apart), a database from before the
    /// table gets them when it opens, and retention forgets a stretch once no event of its
    /// type is left in it, and only then.
    #[tokio::test]
    async fn the_stretches_of_each_type_follow_the_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
        let other = store.create_account("b".into(), Plan::Pro).await.unwrap();
        // Rows 1 to 600: clicks (stretches 0, 1 and 2); row 601: a bounce (stretch 2); rows
        // 602 to 611: the other account's clicks.
        store
            .insert_events(account.id.clone(), click(600), |_| true, |_| {})
            .await
            .unwrap();
        let mut bounce = click(1);
        bounce[0].event_type = "bounce".into();
        let bounce_id = bounce[0].id.clone();
        store
            .insert_events(account.id.clone(), bounce, |_| true, |_| {})
            .await
            .unwrap();
        store
            .insert_events(other.id.clone(), click(10), |_| true, |_| {})
            .await
            .unwrap();
        let stretches = |account_id: &str| {
            let db = Connection::open(dir.path().join("hookline.db")).unwrap();
            db.prepare(
                "SELECT type, stretch FROM event_type_stretches WHERE account_id = ?1
                 ORDER BY type, stretch",
            )
            .unwrap()
            .query_map([account_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<Vec<(String, i64)>, _>>()
            .unwrap()
        };
        let all = vec![
            ("bounce".to_owned(), 2),
            ("click".to_owned(), 0),
            ("click".to_owned(), 1),
            ("click".to_owned(), 2),
        ];
        assert_eq!(stretches(&account.id), all);
        assert_eq!(stretches(&other.id), [("click".to_owned(), 2)]);

        // As before the table: the migration finds the same stretches.
        drop(store);
        let before = MIGRATIONS
            .iter()
            .position(|m| m.contains("CREATE TABLE IF NOT EXISTS event_type_stretches"))
            .unwrap();
        let db = Connection::open(dir.path().join("hookline.db")).unwrap();
        db.execute_batch(&format!(
            "DROP TABLE event_type_stretches; {UNDO_PREVIOUS_SECRETS}
             ALTER TABLE attempts DROP COLUMN claim;
             ALTER TABLE deliveries DROP COLUMN kept_claim;
             ALTER TABLE endpoints DROP COLUMN held_until;
             PRAGMA user_version = {before};"
        ))
        .unwrap();
        drop(db);
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        assert_eq!(stretches(&account.id), all);

        // Retention: the oldest 300 clicks (rows 1 to 300) empty stretch 0 only; the next 300
        // empty stretch 1, and leave stretch 2 to the bounce.
        let later = Timestamp(Timestamp::now().0 + 3_600_000);
        assert_eq!(
            store.purge(account.id.clone(), later, 300).await.unwrap(),
            300
        );
        assert_eq!(
            stretches(&account.id),
            all[..1]
                .iter()
                .chain(&all[2..])
                .cloned()
                .collect::<Vec<_>>()
        );
        assert_eq!(
            store.purge(account.id.clone(), later, 300).await.unwrap(),
            300
        );
        assert_eq!(stretches(&account.id), all[..1]);
        let typed = |event_type: &str| EventFilter {
            event_type: Some(event_type.into()),
            ..Default::default()
        };
        let (bounces, next) = store
            .list_events(account.id.clone(), typed("bounce"), None, 10)
            .await
            .unwrap();
        assert_eq!((bounces.len(), next), (1, None));
        assert_eq!(bounces[0].id, bounce_id);
        let (clicks, _) = store
            .list_events(account.id.clone(), typed("click"), None, 10)
            .await
            .unwrap();
        assert!(clicks.is_empty());
    }

    /// A page of one type reads each stretch whole, from its first row to its last: events
    /// of the type on stretches' first and last rows, paged one at a time or resumed from
    /// any row around them, come once each, in order. And it reads only the stretches
    /// recorded: one forgotten by hand hides its events (which is why every insert of an
    /// event records its stretch in the same job).
    #[tokio::test]
    async fn a_page_by_type_reads_each_stretch_from_its_first_row_to_its_last() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
        // Rows 1 to 522, bounces on rows 255 and 256 (the ends of stretches 0 and 1) and 511
        // and 512 (of stretches 1 and 2).
        let rare: [i64; 4] = [255, 256, 511, 512];
        let mut events = click(522);
        for (row, ev) in (1..).zip(events.iter_mut()) {
            if rare.contains(&row) {
                ev.event_type = "bounce".into();
            }
        }
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        store
            .insert_events(account.id.clone(), events, |_| true, |_| {})
            .await
            .unwrap();
        let bounces: Vec<String> = rare.iter().map(|&r| ids[r as usize - 1].clone()).collect();
        for (&row, id) in rare.iter().zip(&bounces) {
            let at = store.feed_position(account.id.clone(), id.clone()).await;
            assert_eq!(at.unwrap(), Some((0, row)));
        }
        let typed = EventFilter {
            event_type: Some("bounce".into()),
            ..Default::default()
        };
        let page = async |after, limit| {
            let (events, next) = store
                .list_events(account.id.clone(), typed.clone(), after, limit)
                .await
                .unwrap();
            (events.into_iter().map(|e| e.id).collect::<Vec<_>>(), next)
        };
        let mut after = None;
        let mut seen = Vec::new();
        loop {
            let (ids, next) = page(after, 1).await;
            assert_eq!(ids.len(), 1);
            seen.extend(ids);
            match next {
                Some(pos) => after = Some(pos),
                None => break,
            }
        }
        assert_eq!(seen, bounces);
        for from in [0, 254, 255, 256, 257, 510, 511, 512, 600] {
            let want: Vec<String> = rare
                .iter()
                .zip(&bounces)
                .filter(|(row, _)| **row > from)
                .map(|(_, id)| id.clone())
                .collect();
            assert_eq!(
                page(Some((0, from)), 10).await,
                (want, None),
                "after row {from}"
            );
        }
        let db = Connection::open(dir.path().join("hookline.db")).unwrap();
        db.execute(
            "DELETE FROM event_type_stretches WHERE type = 'bounce' AND stretch = 1",
            [],
        )
        .unwrap();
        let (ids, _) = page(None, 10).await;
        assert_eq!(ids, [bounces[0].clone(), bounces[3].clone()]);
    }

    /// A page of the feed and each probe of its search seek through the account's index of
    /// events: none reads other accounts' events or sorts.
    #[test]
    fn the_feed_reads_through_the_accounts_index() {
        let (_dir, db) = a_new_schema();
        assert_seeks(
            &db,
            "events",
            &[
                (FEED, "events_by_account (account_id=? AND seq>? AND seq<?)"),
                (
                    FIRST_EVENT_AFTER,
                    "events_by_account (account_id=? AND seq>?)",
                ),
                (LAST_EVENT, "events_by_account (account_id=?)"),
                (
                    FEED_TYPED,
                    "events_by_account (account_id=? AND seq>? AND seq<?)",
                ),
            ],
        );
        assert_seeks(
            &db,
            "event_type_stretches",
            &[
                (
                    TYPE_STRETCHES,
                    "PRIMARY KEY (account_id=? AND type=? AND stretch>? AND stretch<?)",
                ),
                (
                    FORGET_EMPTY_STRETCH,
                    "PRIMARY KEY (account_id=? AND type=? AND stretch=?)",
                ),
            ],
        );
        assert_seeks(
            &db,
            "events",
            &[(
                FORGET_EMPTY_STRETCH,
                "events_by_account (account_id=? AND seq>? AND seq<?)",
            )],
        );
    }

    /// A database with the whole schema and nothing in it, on a connection made as the
    /// store makes its own (so that its plans are the store's).
    fn a_new_schema() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path(), Sealer::none()).unwrap());
        let db = open_connection(&dir.path().join("hookline.db")).unwrap();
        (dir, db)
    }

    /// A statement with `LIMIT ?n`, cached, is compiled once: binding another number (or
    /// the same one again) does not make SQLite compile it afresh, as it did for every
    /// claim scan and every page of a list before the store asked it for plans that stay.
    /// A connection made as SQLite makes them by default shows what is avoided.
    #[test]
    fn paged_statements_are_compiled_once() {
        let (dir, db) = a_new_schema();
        let plain = Connection::open(dir.path().join("hookline.db")).unwrap();
        let recompiled = |c: &Connection, sql: &str| {
            for limit in [10_i64, 100, 100, 7] {
                let mut st = c.prepare_cached(sql).unwrap();
                let unbound = st.parameter_count();
                let mut values: Vec<rusqlite::types::Value> =
                    vec![rusqlite::types::Value::Integer(0); unbound];
                // Each statement here takes its limit last but one (the feed) or last.
                let at = if sql == FEED { 4 } else { unbound - 1 };
                values[at] = rusqlite::types::Value::Integer(limit);
                let rows: Vec<i64> = st
                    .query_map(rusqlite::params_from_iter(values), |_| Ok(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                assert!(rows.is_empty(), "{sql}");
            }
            let st = c.prepare_cached(sql).unwrap();
            st.get_status(rusqlite::StatementStatus::RePrepare)
        };
        for sql in [DUE_SCAN, WAITING_SCAN, FEED] {
            assert_eq!(recompiled(&db, sql), 0, "{sql}");
            assert!(recompiled(&plain, sql) >= 3, "{sql}");
        }
    }

    /// Each statement's plan seeks through its index (the text SQLite gives it), sorts
    /// nothing, and scans no row of `table`.
    fn assert_seeks(db: &Connection, table: &str, cases: &[(&str, &str)]) {
        for (sql, index) in cases {
            let plan = plan_of(db, sql);
            assert!(plan.contains(index), "{sql}\n{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}\n{plan}");
            assert!(!plan.contains(&format!("SCAN {table}")), "{sql}\n{plan}");
        }
    }

    /// Every delivery of an event, and only those, is listed from the run of rows its row
    /// keeps, by endpoint and page too; a database from before the run was kept gets it when
    /// it opens, and loses the index it no longer needs.
    #[tokio::test]
    async fn an_events_deliveries_are_its_run_of_rows_before_and_after_the_migration() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        let (account, _) = with_endpoint(&store).await;
        let second = store
            .insert_endpoint(endpoint(&account.id), 100)
            .await
            .unwrap();
        // Two requests, so that runs of two jobs lie side by side; the second admits nothing
        // (its deliveries wait for room, which writes the endpoints' marks between them).
        let mut accepted = store
            .insert_events(account.id.clone(), click(3), |_| true, |_| {})
            .await
            .unwrap();
        accepted.extend(
            store
                .insert_events(account.id.clone(), click(2), |_| false, |_| {})
                .await
                .unwrap(),
        );
        // An event no endpoint takes (its account has none) has no run, and lists nothing.
        let other = store.create_account("b".into(), Plan::Pro).await.unwrap();
        let nobody = store
            .insert_events(other.id.clone(), click(1), |_| true, |_| {})
            .await
            .unwrap();
        assert!(nobody[0].deliveries.is_empty());

        let list_in = async |store: &SqliteStore,
                             account_id: &str,
                             event_id: &str,
                             endpoint_id: Option<&str>,
                             status: Option<DeliveryStatus>,
                             before: Option<i64>,
                             limit: usize| {
            let filter = DeliveryFilter {
                event_id: Some(event_id.to_owned()),
                endpoint_id: endpoint_id.map(str::to_owned),
                status,
            };
            store
                .list_deliveries(account_id.to_owned(), filter, before, limit)
                .await
                .unwrap()
        };
        let list = async |store: &SqliteStore,
                          account_id: &str,
                          event_id: &str,
                          endpoint_id: Option<&str>,
                          before: Option<i64>,
                          limit: usize| {
            list_in(
                store,
                account_id,
                event_id,
                endpoint_id,
                None,
                before,
                limit,
            )
            .await
        };
        let check = async |store: &SqliteStore| {
            for ev in &accepted {
                let want: Vec<&str> = ev.deliveries.iter().rev().map(|d| d.id.as_str()).collect();
                assert_eq!(want.len(), 2);
                let page = list(store, &account.id, &ev.event.id, None, None, 10).await;
                let got: Vec<&str> = page.items.iter().map(|d| d.id.as_str()).collect();
                assert_eq!(got, want);
                assert!(page.items.iter().all(|d| d.event_id == ev.event.id));
                // One at a time, newest first.
                let one = list(store, &account.id, &ev.event.id, None, None, 1).await;
                assert_eq!(one.items[0].id, want[0]);
                let rest = list(store, &account.id, &ev.event.id, None, one.next, 1).await;
                assert_eq!(rest.items[0].id, want[1]);
                assert_eq!(rest.next, None);
                // Of one endpoint.
                let only = list(store, &account.id, &ev.event.id, Some(&second.id), None, 10);
                let only = only.await;
                assert_eq!(only.items.len(), 1);
                assert_eq!(only.items[0].endpoint_id, second.id);
                // In one state: the first request's were admitted, the second's wait.
                let (is, is_not) = if ev.deliveries[0].claimed {
                    (DeliveryStatus::Delivering, DeliveryStatus::Pending)
                } else {
                    (DeliveryStatus::Pending, DeliveryStatus::Delivering)
                };
                let id = &ev.event.id;
                let all = list_in(store, &account.id, id, None, Some(is), None, 10).await;
                assert_eq!(all.items.len(), 2);
                let none = list_in(store, &account.id, id, None, Some(is_not), None, 10).await;
                assert!(none.items.is_empty());
                // Not to another account.
                let theirs = list(store, &other.id, &ev.event.id, None, None, 10).await;
                assert!(theirs.items.is_empty());
            }
            let none = list(store, &other.id, &nobody[0].event.id, None, None, 10).await;
            assert!(none.items.is_empty());
            let unknown = list(store, &account.id, "evt_unknown", None, None, 10).await;
            assert!(unknown.items.is_empty());
        };
        check(&store).await;
        drop(store);
        // Every delivery lies in its own event's run, and the runs hold every delivery.
        let runs_hold_every_delivery = |db: &Connection| {
            let (outside, in_runs, all): (i64, i64, i64) = db
                .query_row(
                    "SELECT
                        (SELECT COUNT(*) FROM deliveries d JOIN events e ON e.id = d.event_id
                         WHERE NOT (d.seq >= e.deliveries_from AND d.seq < e.deliveries_until)),
                        (SELECT SUM(deliveries_until - deliveries_from) FROM events),
                        (SELECT COUNT(*) FROM deliveries)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .unwrap();
            assert_eq!((outside, in_runs), (0, all));
            assert_eq!(all, 10);
        };
        let db = Connection::open(dir.path().join("hookline.db")).unwrap();
        runs_hold_every_delivery(&db);

        // The database as it was before the migration: the index, and no runs (and, undone
        // too, the migrations after it that cannot run twice: the rotated-out secrets' list).
        let before = MIGRATIONS
            .iter()
            .position(|m| m.contains("deliveries_until"))
            .unwrap();
        let db = Connection::open(dir.path().join("hookline.db")).unwrap();
        db.execute_batch(&format!(
            "CREATE INDEX deliveries_by_event ON deliveries (event_id);
             ALTER TABLE events DROP COLUMN deliveries_from;
             ALTER TABLE events DROP COLUMN deliveries_until;
             {UNDO_PREVIOUS_SECRETS}
             ALTER TABLE attempts DROP COLUMN claim;
             ALTER TABLE deliveries DROP COLUMN kept_claim;
             ALTER TABLE endpoints DROP COLUMN held_until;
             PRAGMA user_version = {before};"
        ))
        .unwrap();
        drop(db);
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        check(&store).await;
        let db = Connection::open(dir.path().join("hookline.db")).unwrap();
        runs_hold_every_delivery(&db);
        let (indexes, version): (i64, i64) = db
            .query_row(
                "SELECT (SELECT COUNT(*) FROM sqlite_master WHERE name = 'deliveries_by_event'),
                        (SELECT user_version FROM pragma_user_version)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((indexes, version), (0, MIGRATIONS.len() as i64));
    }

    /// `since` and `until` pages of the feed start and stop at the rows of about their times
    /// (a search over row numbers), yet show every event stamped in range, one committed
    /// out of the order of its stamp by less than the margin included.
    #[tokio::test]
    async fn the_feed_seeks_its_since_and_until_and_misses_nothing_in_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
        let since = Timestamp::now().0 - 3_600_000;
        let stamped = |at: &[i64]| -> Vec<NewEvent> {
            let mut events = click(at.len());
            for (ev, at) in events.iter_mut().zip(at) {
                ev.created_at = Timestamp(*at);
            }
            events
        };
        // Ten days of history, a second apart, well before `since`.
        let old: Vec<i64> = (0..500).map(|i| since - 864_000_000 + i * 1_000).collect();
        store
            .insert_events(account.id.clone(), stamped(&old), |_| true, |_| {})
            .await
            .unwrap();
        // Then, in this commit order: two hours before `since`; 10 s after it; a hundred 30 s
        // before it (committed after the one stamped after `since`: out of order within the
        // margin, where a search without it would start past the one 10 s after); 40 s after.
        let mut near = vec![since - 7_200_000, since + 10_000];
        near.extend([since - 30_000; 100]);
        near.push(since + 40_000);
        let near = store
            .insert_events(account.id.clone(), stamped(&near), |_| true, |_| {})
            .await
            .unwrap();
        let id = |i: usize| near[i].event.id.clone();
        let feed = async |since, until, after, limit| {
            let filter = EventFilter {
                event_type: None,
                since,
                until,
            };
            let (events, next) = store
                .list_events(account.id.clone(), filter, after, limit)
                .await
                .unwrap();
            let ids: Vec<String> = events.into_iter().map(|e| e.id).collect();
            (ids, next)
        };
        assert_eq!(feed(Some(since), None, None, 10).await.0, [id(1), id(102)]);
        // A page at a time.
        let (first, next) = feed(Some(since), None, None, 1).await;
        assert_eq!(first, [id(1)]);
        let (rest, next) = feed(Some(since), None, next, 1).await;
        assert_eq!(rest, [id(102)]);
        assert_eq!(next, None);
        // Up to `since`: the history, the one two hours before and the hundred.
        let before = feed(None, Some(since), None, 1_000).await.0;
        let want: Vec<String> = std::iter::once(0).chain(2..=101).map(id).collect();
        assert_eq!(before.len(), 601);
        assert_eq!(before[500..], want[..]);
        // A window of the three hours before `since`.
        let window = feed(Some(since - 10_800_000), Some(since), None, 10)
            .await
            .0;
        assert_eq!(window, want[..10]);

        // Around an `until` two hours on, the same in reverse: a hundred 10 s after it, then
        // three 30 s before it (out of order within the margin, where a search without it
        // would stop before them), then one well after.
        let until = since + 7_200_000;
        let mut late = vec![until + 10_000; 100];
        late.extend([until - 30_000; 3]);
        late.push(until + 7_200_000);
        let late = store
            .insert_events(account.id.clone(), stamped(&late), |_| true, |_| {})
            .await
            .unwrap();
        let late_id = |i: usize| late[i].event.id.clone();
        let three: Vec<String> = (100..=102).map(late_id).collect();
        let up_to = feed(None, Some(until), None, 1_000).await.0;
        assert_eq!(up_to.len(), 606);
        assert_eq!(up_to[603..], three[..]);
        let (first, next) = feed(Some(until - 60_000), Some(until), None, 2).await;
        assert_eq!(first, three[..2]);
        let (rest, next) = feed(Some(until - 60_000), Some(until), next, 2).await;
        assert_eq!(rest, three[2..]);
        assert_eq!(next, None);

        // The search starts past the history, and stops where it should.
        let db = Connection::open(dir.path().join("hookline.db")).unwrap();
        let row = |i: usize| {
            db.query_row(
                "SELECT seq FROM events WHERE id = ?1",
                [near[i].event.id.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
        };
        let margin = super::super::RECOVER_MARGIN_MS;
        assert_eq!(
            feed_row_before(&db, &account.id, since - margin).unwrap(),
            row(0)
        );
        assert_eq!(
            feed_row_before(&db, &account.id, since - 10_800_000).unwrap(),
            row(0) - 1
        );
        assert_eq!(
            feed_row_before(&db, &account.id, since + 3_600_000).unwrap(),
            row(102)
        );
        // Without the margin the search would have started past the one 10 s after.
        assert!(feed_row_before(&db, &account.id, since).unwrap() > row(1));
        // And `until`'s bound: the row before the one well after it; without the margin, it
        // would have stopped before the hundred.
        let late_row = |i: usize| {
            db.query_row(
                "SELECT seq FROM events WHERE id = ?1",
                [late[i].event.id.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
        };
        assert_eq!(
            feed_row_before(&db, &account.id, until + margin).unwrap(),
            late_row(102)
        );
        assert!(feed_row_before(&db, &account.id, until).unwrap() < late_row(100));
    }

    /// An outcome waits for the next commit and is written by it; with none coming, it
    /// commits on its own after the rider's wait.
    #[tokio::test]
    async fn an_outcome_rides_with_the_next_commit_or_commits_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        // Longer than the test may take: the outcome can only be written by riding along.
        store.set_rider_wait(std::time::Duration::from_secs(600));
        let (account, _, accepted) = with_events(&store, 2).await;
        let delivery = |i: usize| accepted[i].deliveries[0].clone();
        let due = |i: usize| DueDelivery {
            delivery_id: delivery(i).id,
            row: delivery(i).row,
            claim: 1,
            attempts: 0,
            event_id: accepted[i].event.id.clone(),
            payload: Default::default(),
            endpoint: delivery(i).endpoint,
            manual_after_end: false,
            manual: false,
        };

        let riding = tokio::spawn({
            let store = store.clone();
            let record = failure(&due(0), 1);
            async move { store.record_attempts(vec![record]).await }
        });
        let mut waited = 0;
        while store.riders.slot().is_empty() {
            assert!(waited < 10_000, "the outcome never boarded");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            waited += 1;
        }
        assert_eq!(
            status(&store, &account.id, &delivery(0).id).await,
            DeliveryStatus::Delivering
        );
        // Any commit takes it along.
        store
            .insert_events(account.id.clone(), click(1), |_| false, |_| {})
            .await
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(60), riding)
            .await
            .expect("the outcome rode along")
            .unwrap()
            .unwrap();
        assert_eq!(
            status(&store, &account.id, &delivery(0).id).await,
            DeliveryStatus::Pending
        );

        // Alone, it asks for a commit of its own once its wait is over.
        let mut alone = store.clone();
        alone.set_rider_wait(std::time::Duration::from_millis(20));
        let written = alone.record_attempts(vec![failure(&due(1), 1)]);
        tokio::time::timeout(std::time::Duration::from_secs(60), written)
            .await
            .expect("the lone outcome made a commit of its own")
            .unwrap();
        assert_eq!(
            status(&store, &account.id, &delivery(1).id).await,
            DeliveryStatus::Pending
        );
    }

    /// Writes `events` events of about 3 KiB of data each (about a WAL frame apiece), 100 a
    /// commit, from eight concurrent writers that keep the writer thread busy.
    async fn load(store: &SqliteStore, account_id: &str, events: usize) {
        const WRITERS: usize = 8;
        const PER_COMMIT: usize = 100;
        let data = format!("{{\"pad\":\"{}\"}}", "x".repeat(3000));
        let mut tasks = Vec::new();
        for _ in 0..WRITERS {
            let (store, account_id, data) = (store.clone(), account_id.to_owned(), data.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..events.div_ceil(WRITERS * PER_COMMIT) {
                    let events = click(PER_COMMIT)
                        .into_iter()
                        .map(|mut e| {
                            e.data =
                                serde_json::value::RawValue::from_string(data.clone()).unwrap();
                            e
                        })
                        .collect();
                    store
                        .insert_events(account_id.clone(), events, |_| true, |_| {})
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    /// The WAL's checkpoint sequence number: it goes up each time the WAL starts over.
    fn wal_restarts(dir: &Path) -> u32 {
        use std::io::Read;
        let mut header = [0u8; 16];
        std::fs::File::open(dir.join("hookline.db-wal"))
            .unwrap()
            .read_exact(&mut header)
            .unwrap();
        u32::from_be_bytes(header[12..16].try_into().unwrap())
    }

    /// Under writes that never pause, the WAL starts over instead of growing with the load:
    /// it stays within the restart threshold plus a few groups' frames.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_under_a_steady_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        let (account, _, _) = with_events(&store, 1).await;
        let restarts = wal_restarts(dir.path());
        // Four times the threshold. The file shrinks only down to `journal_size_limit`
        // (64 MiB, above the bound), so a size within the bound at the end means it never
        // went past it.
        load(&store, &account.id, 4 * WAL_RESTART_FRAMES as usize).await;
        let size = std::fs::metadata(dir.path().join("hookline.db-wal"))
            .unwrap()
            .len();
        let bound = (WAL_RESTART_FRAMES as u64 + 4096) * (4096 + 24);
        assert!(
            size <= bound,
            "the WAL grew to {size} bytes (bound {bound})"
        );
        assert!(wal_restarts(dir.path()) >= restarts + 3);
    }

    /// A reader on an older snapshot keeps the WAL from starting over while it reads; once it
    /// is done, the writer's next try restarts it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // The turn is held over one small write on purpose: the writer needs it only past the
    // restart threshold, far off here.
    #[allow(clippy::await_holding_lock)]
    async fn a_reader_holds_the_wal_back_only_while_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Sealer::none()).unwrap();
        let (account, _, _) = with_events(&store, 1).await;
        let reader = Connection::open(dir.path().join("hookline.db")).unwrap();
        {
            // No checkpoint may copy the WAL back between the last write and the read, or
            // the reader would read the database file alone and hold nothing back.
            let _turn = store.checkpointer.turn();
            store
                .insert_events(account.id.clone(), click(1), |_| true, |_| {})
                .await
                .unwrap();
            reader.execute_batch("BEGIN").unwrap();
            let n: i64 = reader
                .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 2);
        }
        let restarts = wal_restarts(dir.path());
        load(&store, &account.id, 2 * WAL_RESTART_FRAMES as usize).await;
        assert_eq!(
            wal_restarts(dir.path()),
            restarts,
            "the WAL started over under a reader's snapshot"
        );

        reader.execute_batch("COMMIT").unwrap();
        load(&store, &account.id, 2 * WAL_RETRY_FRAMES as usize).await;
        assert!(
            wal_restarts(dir.path()) > restarts,
            "the WAL did not start over once the reader was done"
        );
    }
}
