//! The PostgreSQL engine.
//!
//! - Every operation is one transaction on a pooled connection; PostgreSQL's own WAL flush
//!   makes a commit durable before the caller hears `Ok`, and concurrent commits share
//!   flushes (PostgreSQL's group commit), so there is no writer thread here.
//! - Ingest runs its transaction in a task of its own, so the work that must follow a commit
//!   (the hand-over to the dispatcher) runs even when the client hangs up mid-request.
//! - Ingest and endpoint writes are ordered by row locks on the endpoint: ingest holds
//!   `FOR KEY SHARE` on the endpoints it fans out to, a change or removal of an endpoint takes
//!   `FOR UPDATE` first. So an event committed after an endpoint was disabled never gets a
//!   delivery for it, and one committed before has its delivery ended with the others.
//! - Several nodes share one database. Each `delivering` row names the node that holds it;
//!   nodes renew heartbeats in `nodes`, and one whose heartbeat stops for a whole lease is
//!   declared dead by the others, who put its rows back to `pending` under a new claim
//!   number. Nodes wake each other with `NOTIFY` (a delivery became due, an endpoint
//!   changed). The lease protocol is in ARCHITECTURE.md.

use super::sealing::{SealedColumns, Sealer, check_recorded_key, reseal_row};
use super::stamps::Stamps;
use super::{
    AcceptedEvent, AcceptedSummary, AttemptRecord, DeliveryFilter, DueDelivery, EventFilter,
    FeedPos, IdempotencyKey, Ingested, NewDelivery, NewEvent, Outcome, Page, RetryClaim,
    RetryRefusal, StoreError, recorded_answer,
};
use crate::model::{
    Account, ApiKey, Attempt, CustomEventType, Delivery, DeliveryStatus, Endpoint, Event, Plan,
    Timestamp, envelope, new_id,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, PgPool, Postgres, Row, Transaction};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Connections per node: enough concurrent commits for PostgreSQL to share WAL flushes.
const POOL_SIZE: u32 = 16;
/// The most deliveries one claim takes.
const MAX_CLAIM: usize = super::sqlite::MAX_CLAIM;
/// Serialises migrations run by concurrent starts: this advisory lock class, and the schema's
/// name hashed (two schemas of one database are two stores).
const MIGRATE_LOCK_CLASS: i32 = 0x6d69_6772; // "migr"

/// The versioned schema: migration `i` takes the database to version `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    plan        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE TABLE endpoints (
    seq                 BIGSERIAL PRIMARY KEY,
    id                  TEXT NOT NULL UNIQUE,
    account_id          TEXT NOT NULL,
    url                 TEXT NOT NULL,
    description         TEXT NOT NULL,
    event_types         TEXT NOT NULL,
    headers             TEXT NOT NULL,
    secret              TEXT NOT NULL,
    rate_limit_per_sec  BIGINT,
    enabled             BOOLEAN NOT NULL,
    disabled_reason     TEXT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    deleted_at          BIGINT
);
CREATE INDEX endpoints_by_account ON endpoints (account_id, seq);
CREATE TABLE events (
    seq         BIGSERIAL PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    account_id  TEXT NOT NULL,
    type        TEXT NOT NULL,
    data        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX events_by_account ON events (account_id, seq);
CREATE TABLE deliveries (
    seq               BIGSERIAL PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    account_id        TEXT NOT NULL,
    event_id          TEXT NOT NULL,
    event_type        TEXT NOT NULL,
    endpoint_id       TEXT NOT NULL,
    status            TEXT NOT NULL,
    attempts          BIGINT NOT NULL DEFAULT 0,
    next_attempt_at   BIGINT,
    last_attempt_at   BIGINT,
    last_status_code  BIGINT,
    last_error        TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    claim             BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX deliveries_by_event ON deliveries (event_id);
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, seq);
CREATE INDEX deliveries_due_by_endpoint ON deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE TABLE attempts (
    delivery_id    TEXT NOT NULL,
    attempt        BIGINT NOT NULL,
    started_at     BIGINT NOT NULL,
    duration_ms    BIGINT NOT NULL,
    status_code    BIGINT,
    error          TEXT,
    response_body  TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
"#,
    // Several nodes share one database: each `delivering` row names the node that holds it,
    // and a node whose heartbeat stops loses its rows to the others (see ARCHITECTURE.md).
    r#"
CREATE TABLE nodes (
    id            TEXT PRIMARY KEY,
    started_at    BIGINT NOT NULL,
    heartbeat_at  BIGINT NOT NULL,
    dead          BOOLEAN NOT NULL DEFAULT FALSE
);
ALTER TABLE deliveries ADD COLUMN node TEXT;
CREATE INDEX deliveries_held_by_node ON deliveries (node) WHERE status = 'delivering';
"#,
    // Idempotency keys: what the first request under a key was accepted as.
    r#"
CREATE TABLE idempotency_keys (
    account_id    TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    accepted      TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (account_id, key)
);
"#,
    // The event feed's order: the inserting transaction's id, then seq (see list_events).
    r#"
ALTER TABLE events ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX events_feed ON events (account_id, xid, seq);
"#,
    // Retention finds expired events and keys by time.
    r#"
CREATE INDEX events_by_time ON events (created_at);
CREATE INDEX idempotency_keys_by_time ON idempotency_keys (created_at);
"#,
    // Each account's own event types.
    r#"
CREATE TABLE event_types (
    account_id   TEXT NOT NULL,
    name         TEXT NOT NULL,
    description  TEXT NOT NULL,
    schema       TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);
"#,
    // Secret rotation: the previous secret signs beside the new one until a time. Accounts
    // get an order for listing; keys are listed per account.
    r#"
ALTER TABLE endpoints ADD COLUMN previous_secret TEXT, ADD COLUMN previous_secret_until BIGINT;
ALTER TABLE accounts ADD COLUMN seq BIGSERIAL;
CREATE UNIQUE INDEX accounts_by_seq ON accounts (seq);
CREATE INDEX api_keys_by_account ON api_keys (account_id);
"#,
    // Settings shared by every node: which key the endpoint secrets are sealed under.
    r#"
CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
"#,
    // An endpoint's pending rows by age: the whole sweep of deliveries that waited out the
    // schedule (`FAIL_STALE`) reads those created before its cutoff, not every pending row of
    // an endpoint down for days. On a large `deliveries` table this build holds writes while
    // it runs; it can be built ahead, without holding them, by the same statement with
    // `CONCURRENTLY` (ARCHITECTURE.md, *Tables*). A build ahead that failed leaves an invalid
    // index of this name, which `IF NOT EXISTS` would keep: it is dropped first.
    r#"
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE i.indrelid = 'deliveries'::regclass
                 AND c.relname = 'deliveries_pending_by_age' AND NOT i.indisvalid) THEN
        DROP INDEX deliveries_pending_by_age;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS deliveries_pending_by_age ON deliveries (endpoint_id, created_at)
    WHERE status = 'pending';
"#,
    // The pull API by type: a page of one type seeks through the account's events of that
    // type in feed order (`FEED_TYPED`), so it is full, or the feed's end, however rare the
    // type is among the account's events. One more index entry an event. Like the index
    // before, it can be built ahead with `CONCURRENTLY` on a large `events` table.
    r#"
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE i.indrelid = 'events'::regclass
                 AND c.relname = 'events_feed_by_type' AND NOT i.indisvalid) THEN
        DROP INDEX events_feed_by_type;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS events_feed_by_type ON events (account_id, type, xid, seq);
"#,
    // Every secret rotated out keeps signing until its own overlap ends, not only the last
    // one: `previous_secrets` holds them all (JSON, newest first, each secret sealed as the
    // column it replaces was).
    // (It can run again, like the index builds before it.)
    r#"
ALTER TABLE endpoints ADD COLUMN IF NOT EXISTS previous_secrets TEXT;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'endpoints'
                 AND column_name = 'previous_secret') THEN
        UPDATE endpoints
           SET previous_secrets = json_build_array(json_build_object(
                   'secret', previous_secret, 'until', previous_secret_until))::text
         WHERE previous_secret IS NOT NULL AND previous_secret_until IS NOT NULL;
        ALTER TABLE endpoints DROP COLUMN previous_secret, DROP COLUMN previous_secret_until;
    END IF;
END $$;
"#,
    // An attempt is known by the claim it was made under (one attempt a claim): two made at
    // once (manual retries beside one in flight) can share their start and duration to the
    // millisecond, which is how an attempt was known before. Rows written before keep no
    // claim and are still known that way.
    r#"
ALTER TABLE attempts ADD COLUMN IF NOT EXISTS claim BIGINT;
"#,
    // Until when an endpoint asked to be left alone (a long `Retry-After`), ms: a restart
    // keeps to it.
    r#"
ALTER TABLE endpoints ADD COLUMN IF NOT EXISTS held_until BIGINT;
"#,
];

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// This process's node id: the holder named on the `delivering` rows it claims.
    node: Arc<str>,
    /// Ingest requests, on their way to the batchers.
    ingest: mpsc::Sender<IngestJob>,
    /// Seals endpoint secrets on the way in and opens them on the way out.
    sealer: Arc<Sealer>,
    /// The clock of event stamps: the database's, read at start and at every heartbeat and
    /// carried forward by the monotonic clock, never running backwards.
    stamps: Arc<Stamps>,
    /// The schema's versions before and after the open.
    schema: super::SchemaVersions,
}

/// Inserts a new account named `name` in `tx`, unless one has that name already.
async fn insert_account(
    tx: &mut Transaction<'static, Postgres>,
    name: String,
    plan: Plan,
) -> Result<Account, StoreError> {
    let account = Account {
        id: new_id("acc"),
        name,
        plan,
        created_at: Timestamp::now(),
    };
    let inserted = sqlx::query(
        "INSERT INTO accounts (id, name, plan, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(&account.id)
    .bind(&account.name)
    .bind(plan.as_str())
    .bind(account.created_at.0)
    .execute(&mut **tx)
    .await
    .ctx("inserting an account")?;
    if inserted.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!(
            "an account named {:?} exists already",
            account.name
        )));
    }
    Ok(account)
}

/// Inserts a new key of `account_id` in `tx`, stored as its hash and the prefix it is shown
/// by.
async fn insert_api_key(
    tx: &mut Transaction<'static, Postgres>,
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
    sqlx::query(
        "INSERT INTO api_keys (id, account_id, key_hash, prefix, created_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&key.id)
    .bind(account_id)
    .bind(key_hash)
    .bind(&key.prefix)
    .bind(key.created_at.0)
    .execute(&mut **tx)
    .await
    .ctx("inserting an API key")?;
    Ok(key)
}

/// A node whose heartbeat is older than this is not running: the default lease, past which
/// the other nodes take its deliveries over (heartbeats come every 2 s at most).
pub const ALIVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// The longest a heartbeat's reading of the database's clock may take; a slower one (a busy
/// pool) is dropped, and the stamps keep the last.
const CLOCK_READ_LIMIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The database's clock in milliseconds since the epoch: every node judges heartbeats by the
/// same clock.
const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// Channels nodes wake each other with: a delivery became due (payload: when, ms), an
/// endpoint changed (payload: its id).
pub const DUE_CHANNEL: &str = "hookline_due";
pub const ENDPOINT_CHANNEL: &str = "hookline_endpoint";

/// An error for people: the server's own message and its SQLSTATE code, without the line
/// of PostgreSQL's source that sqlx appends.
pub fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_owned(),
        },
        e => e.to_string(),
    }
}

/// PostgreSQL errors worth a retry: the database cannot be reached, is restarting, or
/// aborted the transaction to break a deadlock or a serialization conflict.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            Some("40001" | "40P01" | "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006")
        ),
        _ => false,
    }
}

trait PgContext<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> PgContext<T> for Result<T, sqlx::Error> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Pg { context, source })
    }
}

impl<T> PgContext<T> for Result<T, serde_json::Error> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Json { context, source })
    }
}

impl PgStore {
    /// Whether the database at `url` holds Hookline's schema (opening it creates the schema).
    /// Reads only; one connection, closed before returning.
    pub async fn exists(url: &str) -> Result<bool, StoreError> {
        const CTX: &str = "connecting to PostgreSQL";
        let options = PgConnectOptions::from_str(url).ctx("reading the database URL")?;
        let mut conn = PgConnection::connect_with(&options).await.ctx(CTX)?;
        // In the schema the migrations write to (the first of the search path that exists),
        // not anywhere on the path: another schema's tables further along it are not this
        // location's.
        let found: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_tables
                            WHERE schemaname = current_schema() AND tablename = 'hookline_schema')",
        )
        .fetch_one(&mut conn)
        .await
        .ctx("looking for the schema version table")?;
        conn.close().await.ctx(CTX)?;
        Ok(found)
    }

    /// Connects to `url` (`postgres://…`) and brings the schema up to date.
    pub async fn open(url: &str, sealer: Sealer) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).ctx("reading the database URL")?;
        // One plain connection first: a refused connection or a bad password is reported as
        // such at once, not as a pool timeout ten seconds later.
        PgConnection::connect_with(&options)
            .await
            .ctx("connecting to PostgreSQL")?
            .close()
            .await
            .ctx("connecting to PostgreSQL")?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options)
            .await
            .ctx("connecting to PostgreSQL")?;
        let node: Arc<str> = Arc::from(new_id("node"));
        let sealer = Arc::new(sealer);
        let stamps = Arc::new(Stamps::anchored());
        let ingest = start_ingest_batchers(IngestSide {
            pool: pool.clone(),
            node: node.clone(),
            sealer: sealer.clone(),
            stamps: stamps.clone(),
        });
        let mut store = PgStore {
            pool,
            node,
            ingest,
            sealer,
            stamps,
            schema: super::SchemaVersions::default(),
        };
        store.schema = store.migrate().await?;
        store.start_stamps().await?;
        Ok(store)
    }

    /// The clock of event stamps ([`super::stamps`]).
    pub fn stamps(&self) -> &Stamps {
        &self.stamps
    }

    fn ingest_side(&self) -> IngestSide {
        IngestSide {
            pool: self.pool.clone(),
            node: self.node.clone(),
            sealer: self.sealer.clone(),
            stamps: self.stamps.clone(),
        }
    }

    /// Sets the clock of stamps going: a reading of the database's clock, and the newest
    /// stamp stored (of the last thousand events written), which it never goes back behind.
    async fn start_stamps(&self) -> Result<(), StoreError> {
        self.read_clock().await?;
        let newest: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(created_at) FROM
                (SELECT created_at FROM events ORDER BY seq DESC LIMIT 1000) AS latest",
        )
        .fetch_one(&self.pool)
        .await
        .ctx("reading the newest event stamp")?;
        self.stamps.stamp_floor(newest.unwrap_or(0));
        Ok(())
    }

    /// Reads the database's clock for the stamps: three round trips on one connection (taken
    /// first, so that waiting for it does not count), the shortest one's reading kept.
    async fn read_clock(&self) -> Result<(), StoreError> {
        const CTX: &str = "reading the database's clock";
        let mut conn = self.pool.acquire().await.ctx(CTX)?;
        let mut best: Option<(f64, i64, f64, f64)> = None;
        for _ in 0..3 {
            let sent = self.stamps.monotonic_ms();
            let reading: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT {DB_NOW_MS}")))
                .fetch_one(&mut *conn)
                .await
                .ctx(CTX)?;
            let answered = self.stamps.monotonic_ms();
            if best.is_none_or(|(trip, ..)| answered - sent < trip) {
                best = Some((answered - sent, reading, sent, answered));
            }
        }
        if let Some((_, reading, sent, answered)) = best {
            self.stamps.note_reading(reading, sent, answered);
        }
        Ok(())
    }

    /// Applies the migrations the database has not seen, all in one transaction under an
    /// advisory lock (other nodes opening meanwhile wait for it).
    pub async fn migrate(&self) -> Result<super::SchemaVersions, StoreError> {
        let mut tx = self.pool.begin().await.ctx("starting a migration")?;
        // `IF NOT EXISTS` on a table that exists is a notice, logged at every start.
        sqlx::query("SET LOCAL client_min_messages = warning")
            .execute(&mut *tx)
            .await
            .ctx("starting a migration")?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext(COALESCE(current_schema(), '')))")
            .bind(MIGRATE_LOCK_CLASS)
            .execute(&mut *tx)
            .await
            .ctx("waiting for other migrations")?;
        sqlx::query("CREATE TABLE IF NOT EXISTS hookline_schema (version BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await
            .ctx("creating the schema version table")?;
        let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM hookline_schema")
            .fetch_one(&mut *tx)
            .await
            .ctx("reading the schema version")?;
        let current = current.unwrap_or(0).max(0) as usize;
        if current > MIGRATIONS.len() {
            return Err(StoreError::Conflict(format!(
                "the database is at schema version {current}, newer than this build knows ({}); \
                 run a newer hookline",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            sqlx::raw_sql(*sql)
                .execute(&mut *tx)
                .await
                .ctx("applying a migration")?;
            sqlx::query("INSERT INTO hookline_schema (version) VALUES ($1)")
                .bind(i as i64 + 1)
                .execute(&mut *tx)
                .await
                .ctx("recording a migration")?;
        }
        tx.commit().await.ctx("committing migrations")?;
        Ok(super::SchemaVersions {
            before: current,
            after: MIGRATIONS.len(),
        })
    }

    /// The schema's versions before and after this store was opened.
    pub fn schema_versions(&self) -> super::SchemaVersions {
        self.schema
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.ctx("starting a transaction")
    }

    // ---- accounts and keys ---------------------------------------------------------------

    pub async fn create_account(&self, name: String, plan: Plan) -> Result<Account, StoreError> {
        let mut tx = self.begin().await?;
        let account = insert_account(&mut tx, name, plan).await?;
        tx.commit().await.ctx("committing an account")?;
        Ok(account)
    }

    /// Creates an account and its first key in one transaction: either both or neither.
    pub async fn create_account_with_key(
        &self,
        name: String,
        plan: Plan,
        key_hash: String,
        prefix: String,
    ) -> Result<(Account, ApiKey), StoreError> {
        let mut tx = self.begin().await?;
        let account = insert_account(&mut tx, name, plan).await?;
        let key = insert_api_key(&mut tx, &account.id, &key_hash, prefix).await?;
        tx.commit().await.ctx("committing an account")?;
        Ok((account, key))
    }

    pub async fn account_by_name(&self, name: String) -> Result<Option<Account>, StoreError> {
        sqlx::query("SELECT id, name, plan, created_at FROM accounts WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .ctx("reading an account")?
            .map(|r| account_from_row(&r))
            .transpose()
    }

    pub async fn get_account(&self, id: String) -> Result<Option<Account>, StoreError> {
        sqlx::query("SELECT id, name, plan, created_at FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .ctx("reading an account")?
            .map(|r| account_from_row(&r))
            .transpose()
    }

    pub async fn list_accounts(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Page<Account>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, plan, created_at, seq FROM accounts
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after.unwrap_or(0))
        .bind(limit as i64 + 1)
        .fetch_all(&self.pool)
        .await
        .ctx("listing accounts")?;
        page_of(&rows, account_from_row, 4, limit)
    }

    pub async fn set_plan(
        &self,
        id: String,
        plan: Plan,
    ) -> Result<Option<(Account, Vec<Endpoint>)>, StoreError> {
        let mut tx = self.begin().await?;
        // The account row first (as an endpoint's creation does), then its endpoints.
        let Some(account) = sqlx::query(
            "UPDATE accounts SET plan = $2 WHERE id = $1 RETURNING id, name, plan, created_at",
        )
        .bind(&id)
        .bind(plan.as_str())
        .fetch_optional(&mut *tx)
        .await
        .ctx("changing a plan")?
        .map(|r| account_from_row(&r))
        .transpose()?
        else {
            return Ok(None);
        };
        let mut disabled = Vec::new();
        let mut ended = 0;
        if !plan.includes_webhooks() {
            // Lock the endpoints `FOR UPDATE` in `seq` order, as every endpoint change does:
            // ingest's key-share locks wait, so no delivery is created for one of them once
            // this commits, and an enabling change in progress finishes first and is seen.
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM endpoints WHERE account_id = $1 AND deleted_at IS NULL
                 ORDER BY seq FOR UPDATE",
            )
            .bind(&id)
            .fetch_all(&mut *tx)
            .await
            .ctx("locking an account's endpoints")?;
            let ids: Vec<String> = sqlx::query_scalar(
                "UPDATE endpoints SET enabled = FALSE, disabled_reason = $2,
                    updated_at = GREATEST(updated_at + 1, $3)
                 WHERE id = ANY($1::text[]) AND enabled
                 RETURNING id",
            )
            .bind(&ids)
            .bind(super::PLAN_DISABLED)
            .bind(Timestamp::now().0)
            .fetch_all(&mut *tx)
            .await
            .ctx("disabling an account's endpoints")?;
            for ep_id in ids {
                ended += fail_open_deliveries(&mut tx, &ep_id, super::PLAN_DISABLED).await?;
                notify(&mut tx, ENDPOINT_CHANNEL, &ep_id).await?;
                if let Some(ep) =
                    load_endpoint(&mut tx, &self.sealer, Some(&id), &ep_id, false).await?
                {
                    disabled.push(ep);
                }
            }
        }
        tx.commit().await.ctx("committing a plan change")?;
        super::count_ended(super::Ended::EndpointOff, ended);
        Ok(Some((account, disabled)))
    }

    pub async fn add_api_key(
        &self,
        account_id: String,
        key_hash: String,
        prefix: String,
        max_live: usize,
    ) -> Result<ApiKey, StoreError> {
        let mut tx = self.begin().await?;
        // The account row orders concurrent issues, so the count below holds.
        sqlx::query("SELECT 1 FROM accounts WHERE id = $1 FOR NO KEY UPDATE")
            .bind(&account_id)
            .execute(&mut *tx)
            .await
            .ctx("locking an account")?;
        let live: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_keys WHERE account_id = $1 AND revoked_at IS NULL",
        )
        .bind(&account_id)
        .fetch_one(&mut *tx)
        .await
        .ctx("counting live keys")?;
        if live as usize >= max_live {
            return Err(super::too_many_keys(max_live));
        }
        let key = insert_api_key(&mut tx, &account_id, &key_hash, prefix).await?;
        tx.commit().await.ctx("committing a key")?;
        Ok(key)
    }

    pub async fn list_api_keys(
        &self,
        account_id: String,
        after: Option<(Timestamp, String)>,
        limit: usize,
    ) -> Result<Vec<ApiKey>, StoreError> {
        let (after_at, after_id) = after.unwrap_or((Timestamp(i64::MIN), String::new()));
        // Ids compare in byte order (`COLLATE "C"`), as on SQLite, whatever the database's
        // collation.
        sqlx::query(
            r#"SELECT id, prefix, created_at, revoked_at FROM api_keys
               WHERE account_id = $1 AND (created_at, id COLLATE "C") > ($2, $3 COLLATE "C")
               ORDER BY created_at, id COLLATE "C" LIMIT $4"#,
        )
        .bind(account_id)
        .bind(after_at.0)
        .bind(after_id)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .ctx("listing keys")?
        .iter()
        .map(api_key_from_row)
        .collect()
    }

    pub async fn revoke_api_key(
        &self,
        account_id: String,
        key_id: String,
        keep_one: bool,
    ) -> Result<Option<ApiKey>, StoreError> {
        let mut tx = self.begin().await?;
        // The account row orders concurrent revocations, so two cannot both see a second
        // live key and leave none.
        let exists = sqlx::query("SELECT 1 FROM accounts WHERE id = $1 FOR NO KEY UPDATE")
            .bind(&account_id)
            .fetch_optional(&mut *tx)
            .await
            .ctx("locking an account")?;
        if exists.is_none() {
            return Ok(None);
        }
        let select = "SELECT id, prefix, created_at, revoked_at FROM api_keys
                      WHERE id = $1 AND account_id = $2";
        let Some(key) = sqlx::query(select)
            .bind(&key_id)
            .bind(&account_id)
            .fetch_optional(&mut *tx)
            .await
            .ctx("reading a key")?
            .map(|r| api_key_from_row(&r))
            .transpose()?
        else {
            return Ok(None);
        };
        if key.revoked_at.is_some() {
            return Ok(Some(key));
        }
        if keep_one {
            let live: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM api_keys WHERE account_id = $1 AND revoked_at IS NULL",
            )
            .bind(&account_id)
            .fetch_one(&mut *tx)
            .await
            .ctx("counting live keys")?;
            if live <= 1 {
                return Err(StoreError::Conflict(
                    "this is the account's last live key: issue another one first".into(),
                ));
            }
        }
        let key = sqlx::query(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1
             RETURNING id, prefix, created_at, revoked_at",
        )
        .bind(&key_id)
        .bind(Timestamp::now().0)
        .fetch_one(&mut *tx)
        .await
        .ctx("revoking a key")
        .and_then(|r| api_key_from_row(&r))?;
        tx.commit().await.ctx("committing a revocation")?;
        Ok(Some(key))
    }

    pub async fn reseal_secrets(&self, to: Sealer, alone: bool) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        // The settings row orders every node's start and every re-encryption.
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ('sealing_key', '')
             ON CONFLICT (name) DO NOTHING",
        )
        .execute(&mut *tx)
        .await
        .ctx("recording the sealing key")?;
        let recorded: String =
            sqlx::query_scalar("SELECT value FROM settings WHERE name = 'sealing_key' FOR UPDATE")
                .fetch_one(&mut *tx)
                .await
                .ctx("reading the sealing key")?;
        check_recorded_key(&recorded, &self.sealer)?;
        if alone {
            // Under the settings row's lock, which a node's start takes only after joining.
            let live: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM nodes WHERE NOT dead AND heartbeat_at >= {DB_NOW_MS} - $1"
            )))
            .bind(i64::try_from(ALIVE_WITHIN.as_millis()).unwrap_or(i64::MAX))
            .fetch_one(&mut *tx)
            .await
            .ctx("counting the servers running")?;
            if live > 0 {
                return Err(StoreError::Conflict(format!(
                    "{live} hookline server(s) on this database sent a heartbeat in the last \
                     {} s: stop them all first (nothing was changed)",
                    ALIVE_WITHIN.as_secs()
                )));
            }
        }
        // No row locks for the scan (ingest's key-share locks would wait on them at every
        // node's start); each rewrite applies only if the row is still as it was read.
        let rows =
            sqlx::query("SELECT id, secret, previous_secrets, headers FROM endpoints ORDER BY seq")
                .fetch_all(&mut *tx)
                .await
                .ctx("scanning secrets")?;
        let mut rewritten = 0;
        for r in rows {
            const CTX: &str = "scanning secrets";
            let id: String = r.try_get(0).ctx(CTX)?;
            let row = SealedColumns {
                secret: r.try_get(1).ctx(CTX)?,
                previous: r.try_get(2).ctx(CTX)?,
                headers: r.try_get(3).ctx(CTX)?,
            };
            let new = reseal_row(&self.sealer, &to, &id, &row)?;
            if new == row {
                continue;
            }
            let applied = sqlx::query(
                "UPDATE endpoints SET secret = $2, previous_secrets = $3, headers = $4
                 WHERE id = $1 AND secret = $5 AND previous_secrets IS NOT DISTINCT FROM $6
                   AND headers = $7",
            )
            .bind(&id)
            .bind(new.secret)
            .bind(new.previous)
            .bind(new.headers)
            .bind(&row.secret)
            .bind(&row.previous)
            .bind(&row.headers)
            .execute(&mut *tx)
            .await
            .ctx("rewriting a secret")?
            .rows_affected();
            if applied != 1 {
                return Err(StoreError::Conflict(format!(
                    "endpoint {id} changed while its secret was being rewritten; nothing was \
                     changed, try again"
                )));
            }
            rewritten += 1;
        }
        sqlx::query("UPDATE settings SET value = $1 WHERE name = 'sealing_key'")
            .bind(to.key_id().unwrap_or(""))
            .execute(&mut *tx)
            .await
            .ctx("recording the sealing key")?;
        tx.commit().await.ctx("committing rewritten secrets")?;
        if rewritten > 0 {
            // The old row versions (dead tuples) still hold the old bytes: rewrite the table
            // so that they are gone from its files. Endpoints are few; this is quick.
            sqlx::query("VACUUM FULL endpoints")
                .execute(&self.pool)
                .await
                .ctx("rewriting the endpoints table")?;
        }
        Ok(rewritten)
    }

    /// The key of `account_id` whose hash is `key_hash`, live or revoked.
    pub async fn api_key_by_hash(
        &self,
        account_id: String,
        key_hash: String,
    ) -> Result<Option<ApiKey>, StoreError> {
        sqlx::query(
            "SELECT id, prefix, created_at, revoked_at FROM api_keys
             WHERE account_id = $1 AND key_hash = $2",
        )
        .bind(account_id)
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await
        .ctx("looking up an API key")?
        .as_ref()
        .map(api_key_from_row)
        .transpose()
    }

    pub async fn account_by_key_hash(
        &self,
        key_hash: String,
    ) -> Result<Option<Account>, StoreError> {
        sqlx::query(
            "SELECT a.id, a.name, a.plan, a.created_at FROM api_keys k
             JOIN accounts a ON a.id = k.account_id
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await
        .ctx("looking up an API key")?
        .map(|r| account_from_row(&r))
        .transpose()
    }

    // ---- endpoints -----------------------------------------------------------------------

    pub async fn insert_endpoint(
        &self,
        ep: Endpoint,
        max_endpoints: u32,
    ) -> Result<Endpoint, StoreError> {
        let secret = self.sealer.seal(&ep.id, &ep.secret)?;
        let mut tx = self.begin().await?;
        // The account row orders concurrent creations, so the count below cannot be passed
        // by two at once. (Not a key lock: ingest's key-share locks do not wait on it.)
        let plan: Option<String> =
            sqlx::query_scalar("SELECT plan FROM accounts WHERE id = $1 FOR NO KEY UPDATE")
                .bind(&ep.account_id)
                .fetch_optional(&mut *tx)
                .await
                .ctx("locking an account")?;
        super::require_webhooks(plan.as_deref())?;
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM endpoints WHERE account_id = $1 AND deleted_at IS NULL",
        )
        .bind(&ep.account_id)
        .fetch_one(&mut *tx)
        .await
        .ctx("counting endpoints")?;
        if count >= i64::from(max_endpoints) {
            return Err(StoreError::LimitReached(format!(
                "the account's plan allows {max_endpoints} endpoints and it has {count}"
            )));
        }
        sqlx::query(
            "INSERT INTO endpoints (id, account_id, url, description, event_types, headers,
                secret, rate_limit_per_sec, enabled, disabled_reason, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&ep.id)
        .bind(&ep.account_id)
        .bind(&ep.url)
        .bind(&ep.description)
        .bind(serde_json::to_string(&ep.event_types).ctx("encoding event types")?)
        .bind(self.sealer.seal_headers(&ep.id, &ep.headers)?)
        .bind(secret)
        .bind(ep.rate_limit_per_sec.map(i64::from))
        .bind(ep.enabled)
        .bind(&ep.disabled_reason)
        .bind(ep.created_at.0)
        .bind(ep.updated_at.0)
        .execute(&mut *tx)
        .await
        .ctx("inserting an endpoint")?;
        tx.commit().await.ctx("committing an endpoint")?;
        Ok(ep)
    }

    pub async fn list_endpoints(
        &self,
        account_id: String,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Page<Endpoint>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLS}, seq FROM endpoints
             WHERE account_id = $1 AND deleted_at IS NULL AND seq > $2
             ORDER BY seq LIMIT $3"
        )))
        .bind(account_id)
        .bind(after.unwrap_or(0))
        .bind(limit as i64 + 1)
        .fetch_all(&self.pool)
        .await
        .ctx("listing endpoints")?;
        page_of(
            &rows,
            |r| endpoint_from_row(r, &self.sealer),
            ENDPOINT_COL_COUNT,
            limit,
        )
    }

    pub async fn get_endpoint(
        &self,
        account_id: String,
        id: String,
    ) -> Result<Option<Endpoint>, StoreError> {
        let mut conn = self.pool.acquire().await.ctx("taking a connection")?;
        load_endpoint(&mut conn, &self.sealer, Some(&account_id), &id, false).await
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
        let mut tx = self.begin().await?;
        let Some(mut ep) =
            load_endpoint(&mut tx, &self.sealer, Some(&account_id), &id, true).await?
        else {
            return Ok(None);
        };
        let was_enabled = ep.enabled;
        change(&mut ep);
        if ep.enabled && !was_enabled {
            // Read after the endpoint's lock: a plan change that disables it either
            // committed already (and is seen here) or waits for this one and then disables it.
            let plan: Option<String> =
                sqlx::query_scalar("SELECT plan FROM accounts WHERE id = $1")
                    .bind(&account_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .ctx("reading an account's plan")?;
            super::require_webhooks(plan.as_deref())?;
            ep.disabled_reason = None;
        }
        ep.updated_at = Timestamp(Timestamp::now().0.max(ep.updated_at.0 + 1));
        sqlx::query(
            "UPDATE endpoints SET url = $2, description = $3, event_types = $4, headers = $5,
                secret = $6, rate_limit_per_sec = $7, enabled = $8, disabled_reason = $9,
                updated_at = $10, previous_secrets = $11, held_until = NULL
             WHERE id = $1",
        )
        .bind(&ep.id)
        .bind(&ep.url)
        .bind(&ep.description)
        .bind(serde_json::to_string(&ep.event_types).ctx("encoding event types")?)
        .bind(self.sealer.seal_headers(&ep.id, &ep.headers)?)
        .bind(self.sealer.seal(&ep.id, &ep.secret)?)
        .bind(ep.rate_limit_per_sec.map(i64::from))
        .bind(ep.enabled)
        .bind(&ep.disabled_reason)
        .bind(ep.updated_at.0)
        .bind(self.sealer.seal_previous(&ep.id, &ep.previous_secrets)?)
        .execute(&mut *tx)
        .await
        .ctx("updating an endpoint")?;
        let ended = if was_enabled && !ep.enabled {
            fail_open_deliveries(&mut tx, &ep.id, super::OFF_DISABLED).await?
        } else {
            0
        };
        notify(&mut tx, ENDPOINT_CHANNEL, &ep.id).await?;
        tx.commit().await.ctx("committing an endpoint change")?;
        super::count_ended(super::Ended::EndpointOff, ended);
        Ok(Some(ep))
    }

    /// Removes an endpoint (kept, marked deleted) and ends its open deliveries as `failed`.
    pub async fn delete_endpoint(
        &self,
        account_id: String,
        id: String,
    ) -> Result<Option<Endpoint>, StoreError> {
        let mut tx = self.begin().await?;
        let Some(mut ep) =
            load_endpoint(&mut tx, &self.sealer, Some(&account_id), &id, true).await?
        else {
            return Ok(None);
        };
        let now = Timestamp(Timestamp::now().0.max(ep.updated_at.0 + 1));
        sqlx::query(
            "UPDATE endpoints SET deleted_at = $2, enabled = FALSE, updated_at = $2 WHERE id = $1",
        )
        .bind(&id)
        .bind(now.0)
        .execute(&mut *tx)
        .await
        .ctx("deleting an endpoint")?;
        let ended = fail_open_deliveries(&mut tx, &id, super::OFF_REMOVED).await?;
        notify(&mut tx, ENDPOINT_CHANNEL, &id).await?;
        tx.commit().await.ctx("committing an endpoint removal")?;
        super::count_ended(super::Ended::EndpointOff, ended);
        ep.enabled = false;
        ep.updated_at = now;
        Ok(Some(ep))
    }

    // ---- events --------------------------------------------------------------------------

    /// Commits `events` and one delivery per subscribed, enabled endpoint of `account_id`, all
    /// or nothing; then runs `on_done` (even if the caller stopped waiting).
    ///
    /// Concurrent calls are committed together: the ingest batchers take every request
    /// waiting and write all of them with one statement (see [`run_ingest_batch`]).
    pub async fn insert_events<A, D>(
        &self,
        account_id: String,
        events: Vec<NewEvent>,
        admit: A,
        on_done: D,
    ) -> Result<Vec<AcceptedEvent>, StoreError>
    where
        A: FnMut(&str) -> bool + Send + 'static,
        D: FnOnce(Result<&Vec<AcceptedEvent>, &StoreError>) + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = IngestJob {
            account_id,
            events,
            admit: Box::new(admit),
            on_done: OnDone(Some(Box::new(on_done))),
            reply,
        };
        // A job that cannot be queued is dropped here, and its `on_done` runs with an error.
        self.ingest
            .send(job)
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// [`PgStore::insert_events`] under an idempotency key: one transaction of its own (not
    /// batched) that takes the key row first, so that concurrent requests with one key —
    /// on any node — are ordered by its lock.
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
        let side = self.ingest_side();
        let task = tokio::spawn(async move {
            // `on_done` runs exactly once, even if this task unwinds or is dropped.
            let guard = OnDone(Some(on_done));
            let result = once_tx(&side, &account_id, events, &key, &mut admit).await;
            let none = Vec::new();
            guard.run(result.as_ref().map(|i| match i {
                Ingested::New(v) => v,
                Ingested::Repeat(_) => &none,
            }));
            result
        });
        task.await
            .map_err(|e| StoreError::Commit(format!("the ingest task failed: {e}")))?
    }

    pub async fn get_event(
        &self,
        account_id: String,
        id: String,
    ) -> Result<Option<Event>, StoreError> {
        let Some(r) = sqlx::query(
            "SELECT id, type, created_at, data FROM events WHERE id = $1 AND account_id = $2",
        )
        .bind(id)
        .bind(account_id)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading an event")?
        else {
            return Ok(None);
        };
        let data: String = r.try_get(3).ctx("reading an event")?;
        Ok(Some(Event {
            id: r.try_get(0).ctx("reading an event")?,
            event_type: r.try_get(1).ctx("reading an event")?,
            created_at: Timestamp(r.try_get(2).ctx("reading an event")?),
            data: serde_json::value::RawValue::from_string(data).ctx("reading event data")?,
        }))
    }

    /// The event feed, oldest first, in the order events became visible.
    ///
    /// Sequence numbers are taken at insert but transactions commit in any order, so a
    /// reader paging by `seq` alone could pass an event that commits later with a smaller
    /// one. The feed orders by the inserting transaction's id, then `seq`, and shows only
    /// events of transactions older than every transaction still running
    /// (`pg_snapshot_xmin`): whatever commits later has a larger id than anything already
    /// shown, so nothing is skipped or repeated. (An event appears once every transaction
    /// begun before it has ended: milliseconds, unless a transaction stays open long.)
    ///
    /// `since` and `until` bound the positions read, not only the events shown: the page
    /// starts at the account's events of about `since` and stops past those of about
    /// `until` ([`feed_search`]), so a page of the last hour does not read months of history
    /// first. The searches and the page read one snapshot.
    pub async fn list_events(
        &self,
        account_id: String,
        filter: EventFilter,
        after: Option<FeedPos>,
        limit: usize,
    ) -> Result<(Vec<Event>, Option<FeedPos>), StoreError> {
        let mut from = after.unwrap_or((0, 0));
        let mut through = i64::MAX;
        let rows = if filter.since.is_none() && filter.until.is_none() {
            feed_page(&self.pool, &account_id, &filter, from, through, limit).await?
        } else {
            let mut tx = self
                .pool
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await
                .ctx("starting the feed's read")?;
            // Both searches run between the same ends, read once.
            let ends = feed_ends(&mut tx, &account_id).await?;
            if let Some(since) = filter.since {
                let cutoff = since.saturating_sub(super::RECOVER_MARGIN_MS);
                let found = feed_search_within(&mut tx, &account_id, ends, cutoff).await?;
                if let Some(start) = found.0 {
                    from = from.max(start);
                }
            }
            if let Some(until) = filter.until {
                let cutoff = until.saturating_add(super::RECOVER_MARGIN_MS);
                through = feed_search_within(&mut tx, &account_id, ends, cutoff)
                    .await?
                    .1;
            }
            let rows = feed_page(&mut *tx, &account_id, &filter, from, through, limit).await?;
            tx.commit().await.ctx("ending the feed's read")?;
            rows
        };
        let mut events = Vec::with_capacity(rows.len().min(limit));
        let mut last = None;
        for r in rows.iter().take(limit) {
            let data: String = r.try_get(3).ctx("reading the event feed")?;
            events.push(Event {
                id: r.try_get(0).ctx("reading the event feed")?,
                event_type: r.try_get(1).ctx("reading the event feed")?,
                created_at: Timestamp(r.try_get(2).ctx("reading the event feed")?),
                data: serde_json::value::RawValue::from_string(data).ctx("reading event data")?,
            });
            last = Some((
                r.try_get::<i64, _>(4).ctx("reading the event feed")?,
                r.try_get::<i64, _>(5).ctx("reading the event feed")?,
            ));
        }
        Ok((events, if rows.len() > limit { last } else { None }))
    }

    pub async fn create_event_type(
        &self,
        account_id: String,
        t: CustomEventType,
    ) -> Result<CustomEventType, StoreError> {
        let schema = t
            .schema
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .ctx("encoding a schema")?;
        let n = sqlx::query(
            "INSERT INTO event_types (account_id, name, description, schema, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (account_id, name) DO NOTHING",
        )
        .bind(account_id)
        .bind(&t.name)
        .bind(&t.description)
        .bind(schema)
        .bind(t.created_at.0)
        .execute(&self.pool)
        .await
        .ctx("inserting an event type")?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "an event type named {:?} exists already",
                t.name
            )));
        }
        Ok(t)
    }

    pub async fn list_event_types(
        &self,
        account_id: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<CustomEventType>, StoreError> {
        sqlx::query(
            r#"SELECT name, description, schema, created_at, updated_at FROM event_types
               WHERE account_id = $1 AND name COLLATE "C" > $2
               ORDER BY name COLLATE "C" LIMIT $3"#,
        )
        .bind(account_id)
        .bind(after.unwrap_or_default())
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .ctx("listing event types")?
        .iter()
        .map(event_type_from_row)
        .collect()
    }

    pub async fn repeat_of(
        &self,
        account_id: String,
        key: IdempotencyKey,
    ) -> Result<Option<Vec<AcceptedSummary>>, StoreError> {
        // Committed records only: a key taken by a request still in its transaction is not
        // seen, and that request's repeat goes on to wait for it in `insert_events_once`.
        let record = sqlx::query(
            "SELECT request_hash, accepted, created_at FROM idempotency_keys
             WHERE account_id = $1 AND key = $2",
        )
        .bind(&account_id)
        .bind(&key.key)
        .fetch_optional(&self.pool)
        .await
        .ctx("looking up an idempotency key")?
        .map(|r| key_record(&r))
        .transpose()?;
        recorded_answer(record, &key, Timestamp::now().0)
    }

    pub async fn get_event_type(
        &self,
        account_id: String,
        name: String,
    ) -> Result<Option<CustomEventType>, StoreError> {
        sqlx::query(
            "SELECT name, description, schema, created_at, updated_at FROM event_types
             WHERE account_id = $1 AND name = $2",
        )
        .bind(account_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading an event type")?
        .map(|r| event_type_from_row(&r))
        .transpose()
    }

    pub async fn update_event_type(
        &self,
        account_id: String,
        t: CustomEventType,
        read_at: Timestamp,
    ) -> Result<Option<CustomEventType>, StoreError> {
        let schema = t
            .schema
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .ctx("encoding a schema")?;
        let n = sqlx::query(
            "UPDATE event_types SET description = $3, schema = $4, updated_at = $5
             WHERE account_id = $1 AND name = $2 AND updated_at = $6",
        )
        .bind(&account_id)
        .bind(&t.name)
        .bind(&t.description)
        .bind(schema)
        .bind(t.updated_at.0)
        .bind(read_at.0)
        .execute(&self.pool)
        .await
        .ctx("updating an event type")?
        .rows_affected();
        if n == 1 {
            return Ok(Some(t));
        }
        match self.get_event_type(account_id, t.name.clone()).await? {
            Some(_) => Err(StoreError::Conflict(format!(
                "the event type {:?} changed meanwhile; read it again",
                t.name
            ))),
            None => Ok(None),
        }
    }

    pub async fn delete_event_type(
        &self,
        account_id: String,
        name: String,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM event_types WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .execute(&self.pool)
            .await
            .ctx("deleting an event type")?
            .rows_affected();
        Ok(n == 1)
    }

    pub async fn oldest_event_at(
        &self,
        account_id: String,
    ) -> Result<Option<Timestamp>, StoreError> {
        let t: Option<i64> = sqlx::query_scalar(
            "SELECT created_at FROM events WHERE account_id = $1 ORDER BY seq LIMIT 1",
        )
        .bind(account_id)
        .fetch_optional(&self.pool)
        .await
        .ctx("finding the oldest event")?;
        Ok(t.map(Timestamp))
    }

    /// Retention, one small transaction at a time (see [`super::Store::purge`]).
    pub async fn purge(
        &self,
        account_id: String,
        before: Timestamp,
        batch: usize,
    ) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT e.id FROM events e
             WHERE e.account_id = $3 AND e.created_at < $1 AND NOT EXISTS (
                SELECT 1 FROM deliveries d
                WHERE d.event_id = e.id AND d.status IN ('pending', 'delivering'))
             ORDER BY e.seq LIMIT $2
             FOR UPDATE SKIP LOCKED",
        )
        .bind(before.0)
        .bind(batch as i64)
        .bind(account_id)
        .fetch_all(&mut *tx)
        .await
        .ctx("finding expired events")?;
        if !ids.is_empty() {
            // Each statement re-checks that the deliveries have ended: a manual retry that
            // claimed one meanwhile keeps it, and its event, for a later sweep.
            sqlx::query(
                "DELETE FROM attempts WHERE delivery_id IN
                    (SELECT id FROM deliveries WHERE event_id = ANY($1::text[])
                       AND status NOT IN ('pending', 'delivering'))",
            )
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .ctx("deleting expired attempts")?;
            sqlx::query(
                "DELETE FROM deliveries WHERE event_id = ANY($1::text[])
                   AND status NOT IN ('pending', 'delivering')",
            )
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .ctx("deleting expired deliveries")?;
            sqlx::query(
                "DELETE FROM events e WHERE e.id = ANY($1::text[])
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)",
            )
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .ctx("deleting expired events")?;
        }
        tx.commit().await.ctx("committing a retention batch")?;
        Ok(ids.len())
    }

    pub async fn purge_keys(&self, before: Timestamp, batch: usize) -> Result<usize, StoreError> {
        let n = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (account_id, key) IN (
                SELECT account_id, key FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
        )
        .bind(before.0)
        .bind(batch as i64)
        .execute(&self.pool)
        .await
        .ctx("deleting expired idempotency keys")?
        .rows_affected();
        Ok(n as usize)
    }

    pub async fn feed_position(
        &self,
        account_id: String,
        event_id: String,
    ) -> Result<Option<FeedPos>, StoreError> {
        let row = sqlx::query(
            "SELECT xid::text::bigint, seq FROM events WHERE id = $1 AND account_id = $2",
        )
        .bind(event_id)
        .bind(account_id)
        .fetch_optional(&self.pool)
        .await
        .ctx("finding an event's position")?;
        row.map(|r| {
            Ok((
                r.try_get::<i64, _>(0).ctx("finding an event's position")?,
                r.try_get::<i64, _>(1).ctx("finding an event's position")?,
            ))
        })
        .transpose()
    }

    // ---- deliveries ----------------------------------------------------------------------

    /// Deliveries, newest first.
    pub async fn list_deliveries(
        &self,
        account_id: String,
        filter: DeliveryFilter,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Page<Delivery>, StoreError> {
        // One statement per filter, led by the filter's own column: a statement that took
        // every filter (`$3 IS NULL OR …`) could not count on their indexes in a plan made
        // for any value, and would read the account's deliveries from the newest back.
        let (before, fetch) = (before.unwrap_or(i64::MAX), limit as i64 + 1);
        let status = filter.status.map(|s| s.as_str());
        let query = match (filter.event_id, filter.endpoint_id) {
            (Some(event_id), endpoint_id) => sqlx::query(AssertSqlSafe(EVENT_DELIVERIES.as_str()))
                .bind(event_id)
                .bind(account_id)
                .bind(before)
                .bind(endpoint_id)
                .bind(status)
                .bind(fetch),
            (None, Some(endpoint_id)) => sqlx::query(AssertSqlSafe(ENDPOINT_DELIVERIES.as_str()))
                .bind(endpoint_id)
                .bind(account_id)
                .bind(before)
                .bind(status)
                .bind(fetch),
            (None, None) => sqlx::query(AssertSqlSafe(ACCOUNT_DELIVERIES.as_str()))
                .bind(account_id)
                .bind(before)
                .bind(status)
                .bind(fetch),
        };
        let rows = query
            .fetch_all(&self.pool)
            .await
            .ctx("listing deliveries")?;
        page_of(&rows, delivery_from_row, 12, limit)
    }

    /// One delivery with all its attempts, oldest attempt first.
    pub async fn get_delivery(
        &self,
        account_id: String,
        id: String,
    ) -> Result<Option<(Delivery, Vec<Attempt>)>, StoreError> {
        // One snapshot for the row and its attempts, so that its count of attempts and the
        // list agree (an outcome may commit between two reads).
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .ctx("starting a delivery's read")?;
        let Some(r) = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLS} FROM deliveries WHERE id = $1 AND account_id = $2"
        )))
        .bind(&id)
        .bind(&account_id)
        .fetch_optional(&mut *tx)
        .await
        .ctx("reading a delivery")?
        else {
            return Ok(None);
        };
        let d = delivery_from_row(&r)?;
        let attempts = sqlx::query(
            "SELECT attempt, started_at, duration_ms, status_code, error, response_body
             FROM attempts WHERE delivery_id = $1 ORDER BY attempt",
        )
        .bind(&id)
        .fetch_all(&mut *tx)
        .await
        .ctx("listing attempts")?
        .iter()
        .map(|r| {
            Ok(Attempt {
                attempt: to_u32(r.try_get(0).ctx("reading an attempt")?),
                started_at: Timestamp(r.try_get(1).ctx("reading an attempt")?),
                duration_ms: r.try_get::<i64, _>(2).ctx("reading an attempt")?.max(0) as u64,
                status_code: r
                    .try_get::<Option<i64>, _>(3)
                    .ctx("reading an attempt")?
                    .map(to_u16),
                error: r.try_get(4).ctx("reading an attempt")?,
                response_body: r.try_get(5).ctx("reading an attempt")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        tx.commit().await.ctx("ending a delivery's read")?;
        Ok(Some((d, attempts)))
    }

    // ---- the dispatcher's side -----------------------------------------------------------

    // ---- the cluster ---------------------------------------------------------------------

    /// Registers this node (its heartbeat starts now).
    pub async fn join(&self) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO nodes (id, started_at, heartbeat_at)
             VALUES ($1, {DB_NOW_MS}, {DB_NOW_MS})"
        )))
        .bind(&*self.node)
        .execute(&self.pool)
        .await
        .ctx("registering this node")?;
        Ok(())
    }

    /// Renews this node's heartbeat. `false`: the other nodes declared it dead (its
    /// heartbeat was silent for a whole lease) and took its deliveries; it must stop.
    /// Each heartbeat also has the database's clock read again for the stamps, in a task of
    /// its own, so that the reading never holds up the next renewal (a failed or slow one is
    /// logged; the stamps keep the last).
    pub async fn heartbeat(&self) -> Result<bool, StoreError> {
        let done = sqlx::query(AssertSqlSafe(format!(
            "UPDATE nodes SET heartbeat_at = {DB_NOW_MS} WHERE id = $1 AND NOT dead"
        )))
        .bind(&*self.node)
        .execute(&self.pool)
        .await
        .ctx("renewing this node's heartbeat")?;
        let store = self.clone();
        tokio::spawn(async move {
            let read = tokio::time::timeout(CLOCK_READ_LIMIT, store.read_clock()).await;
            match read {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(
                    error = %e,
                    "reading the database's clock for event stamps failed"
                ),
                Err(_) => tracing::debug!("reading the database's clock took too long; skipped"),
            }
        });
        Ok(done.rows_affected() == 1)
    }

    /// Declares dead every other node whose heartbeat is older than `lease`, and puts the
    /// deliveries held by dead nodes back to `pending`, due now, under a new claim number (so
    /// a dead node's late failure cannot move them). Returns how many came back.
    pub async fn reap(&self, lease: std::time::Duration) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        let freed = sqlx::query(AssertSqlSafe(format!(
            "WITH newly_dead AS (
                UPDATE nodes SET dead = TRUE
                WHERE NOT dead AND id <> $1 AND heartbeat_at < {DB_NOW_MS} - $2
                RETURNING id)
             UPDATE deliveries SET status = 'pending', node = NULL, claim = claim + 1,
                next_attempt_at = COALESCE(next_attempt_at, {DB_NOW_MS}),
                updated_at = {DB_NOW_MS}
             WHERE status = 'delivering'
               AND (node IS NULL
                    OR node IN (SELECT id FROM newly_dead)
                    OR node IN (SELECT id FROM nodes WHERE dead))"
        )))
        .bind(&*self.node)
        .bind(lease.as_millis() as i64)
        .execute(&mut *tx)
        .await
        .ctx("taking over the deliveries of dead nodes")?
        .rows_affected() as usize;
        // Dead nodes are kept a day, for the record.
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM nodes WHERE dead AND heartbeat_at < {DB_NOW_MS} - 86400000"
        )))
        .execute(&mut *tx)
        .await
        .ctx("forgetting long-dead nodes")?;
        if freed > 0 {
            notify(&mut tx, DUE_CHANNEL, &Timestamp::now().0.to_string()).await?;
        }
        tx.commit().await.ctx("committing a takeover")?;
        Ok(freed)
    }

    /// The other nodes silent for longer than `silent` but not yet declared dead that still
    /// hold deliveries: each with how long it has been silent (by the database's clock) and
    /// how many it holds, the longest silent first.
    pub async fn silent_holders(
        &self,
        silent: std::time::Duration,
    ) -> Result<Vec<super::SilentHolder>, StoreError> {
        const CTX: &str = "looking for silent nodes that hold deliveries";
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT n.id, {DB_NOW_MS} - n.heartbeat_at, COUNT(*)
             FROM nodes n JOIN deliveries d ON d.node = n.id AND d.status = 'delivering'
             WHERE NOT n.dead AND n.id <> $1 AND n.heartbeat_at < {DB_NOW_MS} - $2
             GROUP BY n.id, n.heartbeat_at
             ORDER BY n.heartbeat_at"
        )))
        .bind(&*self.node)
        .bind(silent.as_millis() as i64)
        .fetch_all(&self.pool)
        .await
        .ctx(CTX)?;
        rows.iter()
            .map(|r| {
                let silent_ms: i64 = r.try_get(1).ctx(CTX)?;
                let holds: i64 = r.try_get(2).ctx(CTX)?;
                Ok(super::SilentHolder {
                    node: r.try_get(0).ctx(CTX)?,
                    silent: std::time::Duration::from_millis(silent_ms.max(0) as u64),
                    holds: holds.max(0) as u64,
                })
            })
            .collect()
    }

    /// Leaves the cluster at shutdown: the deliveries this node still holds go back to
    /// `pending`, due now, for the others.
    pub async fn leave(&self) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        let freed = sqlx::query(AssertSqlSafe(format!(
            "UPDATE deliveries SET status = 'pending', node = NULL, claim = claim + 1,
                next_attempt_at = COALESCE(next_attempt_at, {DB_NOW_MS}),
                updated_at = {DB_NOW_MS}
             WHERE status = 'delivering' AND node = $1"
        )))
        .bind(&*self.node)
        .execute(&mut *tx)
        .await
        .ctx("giving back this node's deliveries")?
        .rows_affected() as usize;
        sqlx::query("UPDATE nodes SET dead = TRUE WHERE id = $1")
            .bind(&*self.node)
            .execute(&mut *tx)
            .await
            .ctx("leaving the cluster")?;
        notify(&mut tx, DUE_CHANNEL, &Timestamp::now().0.to_string()).await?;
        tx.commit().await.ctx("committing the leave")?;
        Ok(freed)
    }

    /// Listens for other nodes' wake-ups.
    pub async fn listen(&self) -> Result<Notices, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool)
            .await
            .ctx("connecting the notification listener")?;
        listener
            .listen_all([DUE_CHANNEL, ENDPOINT_CHANNEL])
            .await
            .ctx("listening for other nodes")?;
        Ok(Notices { listener })
    }

    /// An endpoint as the dispatcher needs it, removed ones included (as disabled).
    pub async fn endpoint_for_dispatch(&self, id: String) -> Result<Option<Endpoint>, StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLS} FROM endpoints WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading an endpoint")?
        .map(|r| {
            let deleted: Option<i64> = r.try_get(12).ctx("reading an endpoint")?;
            let mut ep = endpoint_from_row(&r, &self.sealer)?;
            if deleted.is_some() {
                ep.enabled = false;
            }
            Ok(ep)
        })
        .transpose()
    }

    /// At start: the deliveries of nodes that died (this node's previous life included, once
    /// its lease ran out) go back to `pending`. Nodes that are alive keep theirs.
    pub async fn release_all_claims(
        &self,
        lease: std::time::Duration,
    ) -> Result<usize, StoreError> {
        self.reap(lease).await
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
        let mut tx = self.begin().await?;
        // Only endpoints that have something due: one index probe each. Each is locked
        // key-share until the claim commits, as ingest does: a change or removal of an
        // endpoint (`FOR UPDATE`, then it ends the endpoint's open rows) either waits for the
        // claim and ends what it took, or is under way and the endpoint is skipped until the
        // next claim. Without the lock, a row this claim moved to `delivering` while a
        // change was ending the endpoint's rows escaped both of its statements, and was sent
        // to a disabled or removed endpoint.
        let endpoints: Vec<Endpoint> = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLS} FROM endpoints e
             WHERE enabled AND deleted_at IS NULL AND EXISTS (
                SELECT 1 FROM deliveries d
                WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.next_attempt_at <= $1)
             ORDER BY e.seq FOR KEY SHARE OF e SKIP LOCKED"
        )))
        .bind(now.0)
        .fetch_all(&mut *tx)
        .await
        .ctx("scanning endpoints")?
        .iter()
        // One endpoint whose secret cannot be opened keeps its deliveries pending (and says
        // why) rather than stopping every other endpoint's.
        .filter_map(|r| match endpoint_from_row(r, &self.sealer) {
            Ok(ep) => Some(ep),
            Err(e) => {
                tracing::error!(error = %e, "an endpoint's deliveries wait: its secret cannot be opened");
                None
            }
        })
        .collect();
        let mut out = Vec::new();
        let mut payloads: HashMap<String, bytes::Bytes> = HashMap::new();
        for ep in endpoints {
            let left = MAX_CLAIM.saturating_sub(out.len());
            if left == 0 {
                break;
            }
            let n = room(&ep.id).min(left);
            if n == 0 {
                continue;
            }
            let ep = Arc::new(ep);
            let rows = sqlx::query(
                "UPDATE deliveries d SET status = 'delivering', claim = d.claim + 1, node = $4
                 FROM (SELECT dd.seq FROM deliveries dd JOIN events ev ON ev.id = dd.event_id
                       WHERE dd.endpoint_id = $1 AND dd.status = 'pending'
                         AND dd.next_attempt_at <= $2
                       ORDER BY dd.next_attempt_at LIMIT $3
                       FOR UPDATE OF dd SKIP LOCKED) due
                 WHERE d.seq = due.seq
                 RETURNING d.id, d.attempts, d.event_id, d.seq, d.claim",
            )
            .bind(&ep.id)
            .bind(now.0)
            .bind(n as i64)
            .bind(&*self.node)
            .fetch_all(&mut *tx)
            .await
            .ctx("claiming due deliveries")?;
            let mut claimed = Vec::with_capacity(rows.len());
            for r in &rows {
                claimed.push((
                    r.try_get::<String, _>(0).ctx("reading a claim")?,
                    to_u32(r.try_get(1).ctx("reading a claim")?),
                    r.try_get::<String, _>(2).ctx("reading a claim")?,
                    r.try_get::<i64, _>(3).ctx("reading a claim")?,
                    r.try_get::<i64, _>(4).ctx("reading a claim")?,
                ));
            }
            let missing: Vec<&str> = claimed
                .iter()
                .map(|c| c.2.as_str())
                .filter(|id| !payloads.contains_key(*id))
                .collect();
            if !missing.is_empty() {
                for r in sqlx::query(
                    "SELECT id, type, created_at, data FROM events WHERE id = ANY($1::text[])",
                )
                .bind(&missing)
                .fetch_all(&mut *tx)
                .await
                .ctx("reading claimed events")?
                {
                    let id: String = r.try_get(0).ctx("reading an event")?;
                    let event_type: String = r.try_get(1).ctx("reading an event")?;
                    let created_at: i64 = r.try_get(2).ctx("reading an event")?;
                    let data: String = r.try_get(3).ctx("reading an event")?;
                    let payload = envelope(&id, &event_type, Timestamp(created_at), &data).into();
                    payloads.insert(id, payload);
                }
            }
            for (delivery_id, attempts, event_id, row, claim) in claimed {
                let Some(payload) = payloads.get(&event_id).cloned() else {
                    // Cannot happen (the claim joined the event); never block other claims.
                    tracing::error!(delivery = %delivery_id, event = %event_id, "claimed a delivery whose event is missing");
                    continue;
                };
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
        if let Err(e) = tx.commit().await {
            // The commit may have happened: give back what it would have claimed.
            let rows: Vec<(i64, i64)> = out.iter().map(|d| (d.row, d.claim)).collect();
            release_uncertain(&self.pool, &self.node, &rows).await;
            return Err(e).ctx("committing a claim");
        }
        Ok(out)
    }

    /// When the earliest `pending` delivery is due.
    pub async fn next_due_at(&self, after: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        let t: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM deliveries
             WHERE status = 'pending' AND next_attempt_at > $1",
        )
        .bind(after.0)
        .fetch_one(&self.pool)
        .await
        .ctx("finding the next due delivery")?;
        Ok(t.map(Timestamp))
    }

    /// Records attempts and moves their deliveries on, in one transaction of a few
    /// statements whatever the batch's size (each an `UNNEST` of the batch's columns). Only
    /// the rare attempt whose number another attempt of its delivery holds (see
    /// [`record_renumbered`]), or an old claim's outcome that moves nothing, costs a few more.
    pub async fn record_attempts(&self, mut records: Vec<AttemptRecord>) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let now = Timestamp::now().0;
        // The batch's endpoints are locked before any delivery row is touched, in `seq` order
        // as ingest takes them: every endpoint change locks the endpoint and then its
        // deliveries, so without this the recorder and a change could each wait for the
        // other. `FOR UPDATE` when one answered 410 (it is disabled below), else key-share.
        let mut endpoint_ids: Vec<&str> = records.iter().map(|r| r.endpoint_id.as_str()).collect();
        endpoint_ids.sort_unstable();
        endpoint_ids.dedup();
        let any_gone = records.iter().any(|r| matches!(r.outcome, Outcome::Gone));
        let versions: HashMap<String, i64> = sqlx::query_as(if any_gone {
            "SELECT id, updated_at FROM endpoints WHERE id = ANY($1::text[])
             ORDER BY seq FOR UPDATE"
        } else {
            "SELECT id, updated_at FROM endpoints WHERE id = ANY($1::text[])
             ORDER BY seq FOR KEY SHARE"
        })
        .bind(&endpoint_ids)
        .fetch_all(&mut *tx)
        .await
        .ctx("locking the batch's endpoints")?
        .into_iter()
        .collect();
        // A 410 from a version of the endpoint since changed says nothing of the endpoint as
        // it is: its delivery is tried again at once, as the endpoint is now.
        for rec in &mut records {
            if matches!(rec.outcome, Outcome::Gone)
                && versions.get(&rec.endpoint_id) != Some(&rec.endpoint_version)
            {
                rec.outcome = Outcome::RetryAt(Timestamp(now));
            }
        }

        // One statement per kind of write. A delivery with several records in the batch
        // (a stale claim's outcome beside the current one's, say) has them applied in
        // order, one per round, exactly as one statement per record would.
        let mut rounds: Vec<Vec<&AttemptRecord>> = Vec::new();
        let mut seen: HashMap<i64, usize> = HashMap::new();
        let mut ended = super::EndedTally::default();
        for rec in &records {
            let n = seen.entry(rec.row).or_default();
            if rounds.len() <= *n {
                rounds.push(Vec::new());
            }
            rounds[*n].push(rec);
            *n += 1;
        }
        for round in rounds {
            let mut releases: Vec<(i64, i64)> = Vec::new();
            let mut attempts: Vec<(&str, u32, &Attempt, i64)> = Vec::new();
            let mut updates: Vec<(i64, &AttemptRecord, &Attempt)> = Vec::new();
            for rec in round {
                match &rec.attempt {
                    None => releases.push((rec.row, rec.claim)),
                    Some(a) => {
                        attempts.push((rec.delivery_id.as_str(), a.attempt, a, rec.claim));
                        updates.push((rec.row, rec, a));
                    }
                }
            }
            if !releases.is_empty() {
                let (rows, claims): (Vec<i64>, Vec<i64>) = releases.into_iter().unzip();
                sqlx::query(
                    "UPDATE deliveries d SET status = 'pending', next_attempt_at = $3,
                    updated_at = $3, node = NULL
                 FROM UNNEST($1::bigint[], $2::bigint[]) AS t(seq, claim)
                 WHERE d.seq = t.seq AND d.status = 'delivering' AND d.claim = t.claim",
                )
                .bind(&rows)
                .bind(&claims)
                .bind(now)
                .execute(&mut *tx)
                .await
                .ctx("releasing deliveries")?;
            }
            let mut renumbered: HashMap<&str, u32> = HashMap::new();
            if !attempts.is_empty() {
                let mut c = AttemptColumns::default();
                for (delivery_id, number, a, claim) in &attempts {
                    c.delivery_id.push(delivery_id);
                    c.claim.push(*claim);
                    c.attempt.push(i64::from(*number));
                    c.started_at.push(a.started_at.0);
                    c.duration_ms.push(a.duration_ms as i64);
                    c.status_code.push(a.status_code.map(i64::from));
                    c.error.push(a.error.as_deref());
                    c.response_body.push(a.response_body.as_deref());
                }
                // The same attempt written again (known by its claim; one written before
                // claims were, by its start and duration, ms) replaces itself; another
                // attempt of the same number (a manual retry made beside an attempt in
                // flight, each claim counting from the same recorded attempts) is not
                // replaced.
                let written = sqlx::query(
                "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code,
                    error, response_body, claim)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],
                                      $5::bigint[], $6::text[], $7::text[], $8::bigint[])
                 ON CONFLICT (delivery_id, attempt) DO UPDATE SET started_at = EXCLUDED.started_at,
                    duration_ms = EXCLUDED.duration_ms, status_code = EXCLUDED.status_code,
                    error = EXCLUDED.error, response_body = EXCLUDED.response_body,
                    claim = EXCLUDED.claim
                 WHERE COALESCE(attempts.claim = EXCLUDED.claim,
                                attempts.started_at = EXCLUDED.started_at
                                AND attempts.duration_ms = EXCLUDED.duration_ms)",
            )
            .bind(&c.delivery_id)
            .bind(&c.attempt)
            .bind(&c.started_at)
            .bind(&c.duration_ms)
            .bind(&c.status_code)
            .bind(&c.error)
            .bind(&c.response_body)
            .bind(&c.claim)
            .execute(&mut *tx)
            .await
            .ctx("inserting attempts")?
            .rows_affected();
                // Rarely some were left: those take the next free number (a delivery is in a
                // round once, so its id names its record).
                if written < c.delivery_id.len() as u64 {
                    let left: Vec<String> = sqlx::query_scalar(
                        "SELECT t.delivery_id
                         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],
                                     $5::bigint[])
                              AS t(delivery_id, attempt, started_at, duration_ms, claim)
                         WHERE NOT EXISTS (SELECT 1 FROM attempts a
                                           WHERE a.delivery_id = t.delivery_id
                                             AND a.attempt = t.attempt
                                             AND COALESCE(a.claim = t.claim,
                                                 a.started_at = t.started_at
                                                 AND a.duration_ms = t.duration_ms))",
                    )
                    .bind(&c.delivery_id)
                    .bind(&c.attempt)
                    .bind(&c.started_at)
                    .bind(&c.duration_ms)
                    .bind(&c.claim)
                    .fetch_all(&mut *tx)
                    .await
                    .ctx("finding attempts whose number was taken")?;
                    for (delivery_id, _, a, claim) in &attempts {
                        if left.iter().any(|l| l == delivery_id) {
                            let number = record_renumbered(&mut tx, delivery_id, a, *claim).await?;
                            renumbered.insert(*delivery_id, number);
                        }
                    }
                }
            }
            if !updates.is_empty() {
                let mut u = OutcomeColumns::default();
                for (row, rec, a) in &updates {
                    // A failure moves a delivery on only while it is still held under this claim
                    // (`delivering`): one whose endpoint was disabled meanwhile stays `failed`.
                    let (status, next, fenced) = match rec.outcome {
                        Outcome::Succeeded => ("succeeded", None, false),
                        Outcome::RetryAt(t) => ("pending", Some(t.0), true),
                        Outcome::Failed | Outcome::Gone => ("failed", None, true),
                        Outcome::Released => ("pending", Some(now), true),
                    };
                    u.seq.push(*row);
                    u.status.push(status);
                    let number = renumbered
                        .get(rec.delivery_id.as_str())
                        .copied()
                        .unwrap_or(a.attempt);
                    u.attempt.push(i64::from(number));
                    u.next.push(next);
                    u.started_at.push(a.started_at.0);
                    u.status_code.push(a.status_code.map(i64::from));
                    u.error.push(a.error.as_deref());
                    u.fenced.push(fenced);
                    u.claim.push(rec.claim);
                }
                let moved: Vec<i64> = sqlx::query_scalar(
                    "UPDATE deliveries d SET status = t.status,
                    attempts = GREATEST(d.attempts, t.attempt), next_attempt_at = t.next,
                    last_attempt_at = t.started_at, last_status_code = t.status_code,
                    last_error = t.error, updated_at = $10, node = NULL
                 FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                             $6::bigint[], $7::text[], $8::bool[], $9::bigint[])
                      AS t(seq, status, attempt, next, started_at, status_code, error, fenced,
                           claim)
                 WHERE d.seq = t.seq
                   AND (NOT t.fenced OR (d.status = 'delivering' AND d.claim = t.claim))
                 RETURNING d.seq",
                )
                .bind(&u.seq)
                .bind(&u.status)
                .bind(&u.attempt)
                .bind(&u.next)
                .bind(&u.started_at)
                .bind(&u.status_code)
                .bind(&u.error)
                .bind(&u.fenced)
                .bind(&u.claim)
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .ctx("updating deliveries")?;
                // A round holds a delivery once: the rows moved on are these records'.
                let moved_rows: std::collections::HashSet<i64> = moved.iter().copied().collect();
                for (row, rec, _) in &updates {
                    if moved_rows.contains(row) {
                        ended.outcome(&rec.outcome);
                    }
                }
                let moved = moved.len() as u64;
                // An outcome that does not move its delivery on (an old claim's, rarely) is
                // still an attempt made: the delivery counts it, as SQLite's does. (For the
                // rows just updated this changes nothing.)
                if moved < u.seq.len() as u64 {
                    sqlx::query(
                        "UPDATE deliveries d SET attempts = t.attempt
                         FROM UNNEST($1::bigint[], $2::bigint[]) AS t(seq, attempt)
                         WHERE d.seq = t.seq AND d.attempts < t.attempt",
                    )
                    .bind(&u.seq)
                    .bind(&u.attempt)
                    .execute(&mut *tx)
                    .await
                    .ctx("counting attempts of old claims")?;
                }
            }
        }
        // A 410 disables the endpoint it came from: the version the attempt was made with.
        // One from before a change (a new URL, turned off and on) says nothing of the
        // endpoint as it is now, and the next attempt asks it again.
        let mut gone: Vec<(&str, i64)> = records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Gone))
            .map(|r| (r.endpoint_id.as_str(), r.endpoint_version))
            .collect();
        gone.sort_unstable();
        gone.dedup();
        for (endpoint_id, version) in gone {
            // Locked `FOR UPDATE` at the start (above). A new version even if this node's
            // clock is behind the last writer's.
            let disabled = sqlx::query(
                "UPDATE endpoints SET enabled = FALSE, disabled_reason = $2,
                    updated_at = GREATEST(updated_at + 1, $3), held_until = NULL
                 WHERE id = $1 AND updated_at = $4 AND deleted_at IS NULL",
            )
            .bind(endpoint_id)
            .bind(super::GONE_REASON)
            .bind(now)
            .bind(version)
            .execute(&mut *tx)
            .await
            .ctx("disabling a gone endpoint")?
            .rows_affected();
            if disabled > 0 {
                let off = fail_open_deliveries(&mut tx, endpoint_id, super::OFF_GONE).await?;
                ended.add(super::Ended::EndpointOff, off);
                notify(&mut tx, ENDPOINT_CHANNEL, endpoint_id).await?;
            }
        }
        // Other nodes may be asleep until later than the earliest retry set here.
        let earliest = records
            .iter()
            .filter_map(|r| match r.outcome {
                Outcome::RetryAt(t) => Some(t.0),
                Outcome::Released => Some(now),
                _ => None,
            })
            .min();
        if let Some(at) = earliest {
            notify(&mut tx, DUE_CHANNEL, &at.to_string()).await?;
        }
        tx.commit().await.ctx("committing attempts")?;
        ended.count();
        Ok(())
    }

    /// The account's endpoint's last delivery's row number (0 if none).
    pub async fn last_delivery_row(
        &self,
        account_id: String,
        endpoint_id: String,
    ) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq), 0)::BIGINT FROM deliveries
             WHERE endpoint_id = $1 AND account_id = $2",
        )
        .bind(endpoint_id)
        .bind(account_id)
        .fetch_one(&self.pool)
        .await
        .ctx("finding an endpoint's last delivery")
    }

    /// The row number and creation time of the account's endpoint's first delivery after row
    /// `after`.
    pub async fn first_delivery_after(
        &self,
        account_id: String,
        endpoint_id: String,
        after: i64,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        sqlx::query_as(
            "SELECT seq, created_at FROM deliveries
             WHERE endpoint_id = $1 AND seq > $2 AND account_id = $3
             ORDER BY seq LIMIT 1",
        )
        .bind(endpoint_id)
        .bind(after)
        .bind(account_id)
        .fetch_optional(&self.pool)
        .await
        .ctx("finding where a recovery starts")
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
        let mut tx = self.begin().await?;
        // Key-share on the endpoint: disabling it (FOR UPDATE) waits for this, then ends
        // what this queued; or this waits, and sees it disabled.
        let enabled: Option<bool> = sqlx::query_scalar(
            "SELECT enabled FROM endpoints
             WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL FOR KEY SHARE",
        )
        .bind(&endpoint_id)
        .bind(&account_id)
        .fetch_optional(&mut *tx)
        .await
        .ctx("reading an endpoint")?;
        match enabled {
            None => return Ok(Err(RetryRefusal::NotFound)),
            Some(false) => return Ok(Err(RetryRefusal::EndpointDisabled)),
            Some(true) => {}
        }
        let now = Timestamp::now().0;
        let scanned: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT seq, created_at FROM deliveries WHERE endpoint_id = $1 AND seq > $2
             ORDER BY seq LIMIT $3",
        )
        .bind(&endpoint_id)
        .bind(after)
        .bind(batch as i64)
        .fetch_all(&mut *tx)
        .await
        .ctx("scanning deliveries to recover")?;
        // The walk ends where deliveries created after the recovery began start.
        let newer = scanned.iter().position(|(_, created)| *created > started.0);
        let seqs: Vec<i64> = scanned[..newer.unwrap_or(scanned.len())]
            .iter()
            .map(|(seq, _)| *seq)
            .collect();
        let (first, last) = match (seqs.first(), seqs.last()) {
            (Some(f), Some(l)) => (*f, *l),
            _ => {
                tx.commit().await.ctx("committing a recovery")?;
                return Ok(Ok((0, None)));
            }
        };
        let n = sqlx::query(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = $3,
                claim = claim + 1, updated_at = $3, node = NULL
             WHERE endpoint_id = $1 AND seq BETWEEN $4 AND $5
               AND status = 'failed' AND created_at >= $2",
        )
        .bind(&endpoint_id)
        .bind(since.0)
        .bind(now)
        .bind(first)
        .bind(last)
        .execute(&mut *tx)
        .await
        .ctx("queueing failed deliveries again")?
        .rows_affected() as usize;
        let next = (newer.is_none() && seqs.len() == batch).then_some(last);
        if n > 0 {
            notify(&mut tx, DUE_CHANNEL, &now.to_string()).await?;
        }
        tx.commit().await.ctx("committing a recovery")?;
        Ok(Ok((n, next)))
    }

    /// Keeps until when an endpoint asked to be left alone (the later of this and what is
    /// kept: several nodes may each hold it), or with `forget` forgets it if it is no later
    /// than `until` (a later one another node kept stays).
    pub async fn endpoint_hold(
        &self,
        endpoint_id: String,
        until: Timestamp,
        forget: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(if forget {
            "UPDATE endpoints SET held_until = NULL WHERE id = $1 AND held_until <= $2"
        } else {
            "UPDATE endpoints SET held_until = GREATEST(COALESCE(held_until, 0), $2) WHERE id = $1"
        })
        .bind(endpoint_id)
        .bind(until.0)
        .execute(&self.pool)
        .await
        .ctx("keeping an endpoint's hold")?;
        Ok(())
    }

    /// The endpoints (enabled, not removed) that asked to be left alone until after `now`,
    /// and until when.
    pub async fn endpoint_holds(
        &self,
        now: Timestamp,
    ) -> Result<Vec<(String, Timestamp)>, StoreError> {
        const CTX: &str = "reading the endpoints' holds";
        sqlx::query(
            "SELECT id, held_until FROM endpoints
             WHERE held_until > $1 AND enabled AND deleted_at IS NULL",
        )
        .bind(now.0)
        .fetch_all(&self.pool)
        .await
        .ctx(CTX)?
        .iter()
        .map(|r| Ok((r.try_get(0).ctx(CTX)?, Timestamp(r.try_get(1).ctx(CTX)?))))
        .collect()
    }

    /// Makes every `pending` delivery of an endpoint due now (the endpoint is back).
    pub async fn pull_forward(&self, endpoint_id: String) -> Result<usize, StoreError> {
        let now = Timestamp::now().0;
        let done = sqlx::query(
            "UPDATE deliveries SET next_attempt_at = $2
             WHERE endpoint_id = $1 AND status = 'pending' AND next_attempt_at > $2",
        )
        .bind(endpoint_id)
        .bind(now)
        .execute(&self.pool)
        .await
        .ctx("making an endpoint's deliveries due")?;
        Ok(done.rows_affected() as usize)
    }

    /// Ends as `failed` the `pending` deliveries of an endpoint created, and last changed,
    /// before `before`: unless `whole`, only those also due before it (see
    /// [`super::Store::fail_stale`]).
    pub async fn fail_stale(
        &self,
        endpoint_id: String,
        before: Timestamp,
        whole: bool,
    ) -> Result<usize, StoreError> {
        let done = sqlx::query(if whole { FAIL_STALE } else { FAIL_STALE_DUE })
            .bind(endpoint_id)
            .bind(before.0)
            .bind(Timestamp::now().0)
            .execute(&self.pool)
            .await
            .ctx("ending deliveries that waited out the schedule")?;
        let ended = done.rows_affected() as usize;
        super::count_ended(super::Ended::HeldBack, ended);
        Ok(ended)
    }

    /// Takes one delivery for a manual retry, whatever its state.
    pub async fn claim_for_retry(
        &self,
        account_id: String,
        delivery_id: String,
    ) -> Result<Result<RetryClaim, RetryRefusal>, StoreError> {
        let mut tx = self.begin().await?;
        // The endpoint first (key-share, as ingest takes it), then the delivery: a disable or
        // removal either committed before (and is seen here) or waits for this commit and
        // then ends the delivery with the endpoint's others.
        let endpoint = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLS_OF_E} FROM endpoints e
             JOIN deliveries d ON d.endpoint_id = e.id
             WHERE d.id = $1 AND d.account_id = $2 AND e.account_id = $2
               AND e.deleted_at IS NULL
             FOR KEY SHARE OF e"
        )))
        .bind(&delivery_id)
        .bind(&account_id)
        .fetch_optional(&mut *tx)
        .await
        .ctx("locking the endpoint of a delivery to retry")?
        .map(|r| endpoint_from_row(&r, &self.sealer))
        .transpose()?;
        let Some(r) = sqlx::query(
            "SELECT d.status, d.attempts, d.endpoint_id, e.id, e.type, e.created_at, e.data,
                d.seq, d.claim + 1, d.node
             FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.id = $1 AND d.account_id = $2
             FOR UPDATE OF d",
        )
        .bind(&delivery_id)
        .bind(&account_id)
        .fetch_optional(&mut *tx)
        .await
        .ctx("reading a delivery to retry")?
        else {
            return Ok(Err(RetryRefusal::NotFound));
        };
        let status: String = r.try_get(0).ctx("reading a delivery to retry")?;
        let attempts = to_u32(r.try_get(1).ctx("reading a delivery to retry")?);
        let endpoint_id: String = r.try_get(2).ctx("reading a delivery to retry")?;
        let event_id: String = r.try_get(3).ctx("reading a delivery to retry")?;
        let event_type: String = r.try_get(4).ctx("reading a delivery to retry")?;
        let created_at: i64 = r.try_get(5).ctx("reading a delivery to retry")?;
        let data: String = r.try_get(6).ctx("reading a delivery to retry")?;
        let row: i64 = r.try_get(7).ctx("reading a delivery to retry")?;
        let claim: i64 = r.try_get(8).ctx("reading a delivery to retry")?;
        let holder: Option<String> = r.try_get(9).ctx("reading a delivery to retry")?;
        let status = DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending);
        // One this node holds is taken over under a new claim; another node's is left to it.
        let replaces = match status {
            DeliveryStatus::Delivering if holder.as_deref() == Some(&*self.node) => Some(claim - 1),
            DeliveryStatus::Delivering => return Ok(Err(RetryRefusal::AlreadyDelivering)),
            _ => None,
        };
        let Some(ep) = endpoint.filter(|ep| ep.id == endpoint_id && ep.enabled) else {
            return Ok(Err(RetryRefusal::EndpointDisabled));
        };
        sqlx::query(
            "UPDATE deliveries SET status = 'delivering', claim = claim + 1, updated_at = $2,
                next_attempt_at = $2, node = $3
             WHERE seq = $1",
        )
        .bind(row)
        .bind(Timestamp::now().0)
        .bind(&*self.node)
        .execute(&mut *tx)
        .await
        .ctx("claiming a delivery to retry")?;
        if let Err(e) = tx.commit().await {
            release_uncertain(&self.pool, &self.node, &[(row, claim)]).await;
            return Err(e).ctx("committing a retry claim");
        }
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
    }
}

/// Attempts to insert, column by column.
#[derive(Default)]
struct AttemptColumns<'a> {
    delivery_id: Vec<&'a str>,
    /// The claim each attempt was made under: what it is known by.
    claim: Vec<i64>,
    attempt: Vec<i64>,
    started_at: Vec<i64>,
    duration_ms: Vec<i64>,
    status_code: Vec<Option<i64>>,
    error: Vec<Option<&'a str>>,
    response_body: Vec<Option<&'a str>>,
}

/// Deliveries to move on after an attempt, column by column.
#[derive(Default)]
struct OutcomeColumns<'a> {
    seq: Vec<i64>,
    status: Vec<&'static str>,
    attempt: Vec<i64>,
    next: Vec<Option<i64>>,
    started_at: Vec<i64>,
    status_code: Vec<Option<i64>>,
    error: Vec<Option<&'a str>>,
    fenced: Vec<bool>,
    claim: Vec<i64>,
}

type Admit = Box<dyn FnMut(&str) -> bool + Send>;
type Done = Box<dyn FnOnce(Result<&Vec<AcceptedEvent>, &StoreError>) + Send>;

/// One ingest request waiting for its batch.
struct IngestJob {
    account_id: String,
    events: Vec<NewEvent>,
    admit: Admit,
    on_done: OnDone<Done>,
    reply: oneshot::Sender<Result<Vec<AcceptedEvent>, StoreError>>,
}

/// How many ingest batches may be in flight at once (each on its own connection).
const INGEST_BATCHERS: usize = 2;
/// What ingest's writes need of the store, for the batchers and the transactions under an
/// idempotency key.
#[derive(Clone)]
struct IngestSide {
    pool: PgPool,
    node: Arc<str>,
    sealer: Arc<Sealer>,
    stamps: Arc<Stamps>,
}

/// The most events one ingest batch takes.
const INGEST_BATCH_EVENTS: usize = 5_000;

/// Starts the ingest batchers: each takes every job waiting (up to a bound) and commits
/// them together, so that concurrent single-event requests share one statement and one
/// WAL flush instead of paying for one each.
fn start_ingest_batchers(side: IngestSide) -> mpsc::Sender<IngestJob> {
    let (tx, rx) = mpsc::channel::<IngestJob>(8192);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    for _ in 0..INGEST_BATCHERS {
        let (rx, side) = (rx.clone(), side.clone());
        tokio::spawn(async move {
            loop {
                let mut jobs = Vec::new();
                {
                    let mut rx = rx.lock().await;
                    let Some(first) = rx.recv().await else {
                        return;
                    };
                    let mut events = first.events.len();
                    jobs.push(first);
                    while events < INGEST_BATCH_EVENTS {
                        match rx.try_recv() {
                            Ok(job) => {
                                events += job.events.len();
                                jobs.push(job);
                            }
                            Err(_) => break,
                        }
                    }
                }
                run_ingest_batch(&side, jobs).await;
            }
        });
    }
    tx
}

/// Commits a batch of ingest jobs in two round trips, then answers each job.
///
/// First the subscribers of the batch's accounts, as they are now (no lock); each job's
/// `admit` decides which of its deliveries the dispatcher takes at once. Then one statement
/// (one implicit transaction): all the events, and the deliveries of the subscribers that
/// are still enabled, each locked key-share — an endpoint change (`FOR UPDATE`) in progress
/// is waited for and then seen (its deliveries are left out, and their room given back by
/// the caller), one that starts later waits for this commit and then ends them.
async fn run_ingest_batch(side: &IngestSide, jobs: Vec<IngestJob>) {
    let IngestSide {
        pool,
        node,
        sealer,
        stamps,
    } = side;
    // The requests (plain data) apart from the callbacks, which are only `Send`.
    let mut requests = Vec::with_capacity(jobs.len());
    let mut callers = Vec::with_capacity(jobs.len());
    for job in jobs {
        requests.push(IngestRequest {
            account_id: job.account_id,
            events: job.events,
        });
        callers.push((job.admit, job.on_done, job.reply));
    }
    let mut accounts: Vec<&str> = requests.iter().map(|j| j.account_id.as_str()).collect();
    accounts.sort_unstable();
    accounts.dedup();
    let mut conn = match pool.acquire().await.ctx("taking a connection") {
        Ok(c) => c,
        Err(e) => return fail_batch(callers, &e),
    };
    let subscribers = match load_subscribers(&mut conn, sealer, &accounts).await {
        Ok(s) => s,
        Err(e) => return fail_batch(callers, &e),
    };
    // Events that waited (for a batcher, a connection) are stamped again, right before the
    // statement that gives them their place in the feed.
    for r in &mut requests {
        NewEvent::refresh_stamps(&mut r.events, stamps);
    }
    // Per job, per event: the deliveries to create.
    let plans: Vec<Vec<Vec<NewDelivery>>> = requests
        .iter()
        .zip(callers.iter_mut())
        .map(|(job, (admit, _, _))| {
            plan_deliveries(&job.events, subscribers.get(&job.account_id), admit)
        })
        .collect();
    let rows = match write_ingest_batch(&mut conn, node, &requests, &plans).await {
        Ok(rows) => rows,
        // The connection failed with the statement on its way, or its answer: it may have
        // committed. The callers hear what happened, not a guess (a `503` says "not
        // accepted").
        Err(e) if may_have_committed(&e) => {
            let all = || plans.iter().flatten().flatten();
            let settled = match requests
                .iter()
                .find_map(|r| r.events.first().map(|ev| (r.account_id.as_str(), ev)))
            {
                Some((account_id, ev)) => {
                    let lost = LostWrite::new(account_id, (&ev.id, &ev.event_type), all());
                    let settled = settle_uncertain(pool, node, &lost).await;
                    if settled.is_err() {
                        give_back_unsettled(pool, node, &lost);
                    }
                    settled
                }
                None => Ok(None),
            };
            match settled {
                Ok(Some(rows)) => {
                    tracing::warn!(error = %e, "an ingest statement's answer was lost; it had committed, and its callers hear so");
                    drop(conn);
                    for ((job, mut per_event), (_, on_done, reply)) in
                        requests.into_iter().zip(plans).zip(callers)
                    {
                        // Given back to `pending` while settling: the poller takes them.
                        for d in per_event.iter_mut().flatten() {
                            d.claimed = false;
                        }
                        let out = accepted_events(job.events, per_event, &rows);
                        on_done.run(Ok(&out));
                        let _ = reply.send(Ok(out));
                    }
                    return;
                }
                Ok(None) => return fail_batch(callers, &e),
                Err(e2) => {
                    tracing::error!(error = %e, settling = %e2, "an ingest statement's answer was lost, and the database could not say whether it committed: its callers get no answer");
                    return fail_batch(
                        callers,
                        &StoreError::OutcomeUnknown(format!("{e}; then, asking: {e2}")),
                    );
                }
            }
        }
        Err(e) => {
            // The database refused the statement, or it was never sent: nothing committed.
            // Its claims are given back all the same, as a guard (none should be found).
            let claimed: Vec<&str> = plans
                .iter()
                .flatten()
                .flatten()
                .filter(|d| d.claimed)
                .map(|d| d.id.as_str())
                .collect();
            if let Err(e2) = give_back_claims(pool, node, &claimed).await {
                tracing::error!(error = %e2, "after a failed ingest batch, giving back its deliveries failed too; a restart of this node releases them");
            }
            return fail_batch(callers, &e);
        }
    };
    for ((job, per_event), (_, on_done, reply)) in requests.into_iter().zip(plans).zip(callers) {
        let out = accepted_events(job.events, per_event, &rows);
        on_done.run(Ok(&out));
        let _ = reply.send(Ok(out));
    }
}

type Caller = (Admit, OnDone<Done>, Reply);
type Reply = oneshot::Sender<Result<Vec<AcceptedEvent>, StoreError>>;

/// After a commit whose outcome is unknown: the claims it may have made (row, claim) go back
/// to `pending` under a new claim number, if they are still this node's. Best effort.
async fn release_uncertain(pool: &PgPool, node: &str, rows: &[(i64, i64)]) {
    if rows.is_empty() {
        return;
    }
    let (seqs, claims): (Vec<i64>, Vec<i64>) = rows.iter().copied().unzip();
    let released = sqlx::query(AssertSqlSafe(format!(
        "UPDATE deliveries d SET status = 'pending', node = NULL, claim = d.claim + 1,
            updated_at = {DB_NOW_MS}
         FROM UNNEST($1::bigint[], $2::bigint[]) AS t(seq, claim)
         WHERE d.seq = t.seq AND d.claim = t.claim AND d.node = $3
           AND d.status = 'delivering'"
    )))
    .bind(&seqs)
    .bind(&claims)
    .bind(node)
    .execute(pool)
    .await;
    if let Err(e) = released {
        tracing::error!(error = %e, "after a failed commit, giving back its claims failed too; a restart of this node releases them");
    }
}

/// How long a node keeps asking whether a write whose answer was lost committed.
const SETTLE_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a write that failed with `e` may have committed all the same: the connection
/// failed (or its stream broke) while the statement, or its answer, was on its way. An
/// error the database answered with, or one before anything was sent, means it did not.
fn may_have_committed(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Pg {
            source: sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed,
            ..
        }
    )
}

/// A write whose answer was lost with its connection: what [`settle_uncertain`] asks about.
struct LostWrite<'a> {
    /// Its first event's account, id and type: it commits with all the others or none.
    account_id: &'a str,
    event_id: &'a str,
    event_type: &'a str,
    /// The endpoints it fans out to, which it locks key-share before it writes anything.
    endpoints: Vec<&'a str>,
    /// The deliveries it would make, and those it would hand to this node.
    deliveries: Vec<&'a str>,
    claimed: Vec<&'a str>,
}

impl<'a> LostWrite<'a> {
    /// `first`: the write's first event's id and type.
    fn new(
        account_id: &'a str,
        (event_id, event_type): (&'a str, &'a str),
        deliveries: impl Iterator<Item = &'a NewDelivery> + Clone,
    ) -> Self {
        let mut endpoints: Vec<&str> = deliveries.clone().map(|d| d.endpoint.id.as_str()).collect();
        endpoints.sort_unstable();
        endpoints.dedup();
        LostWrite {
            account_id,
            event_id,
            event_type,
            endpoints,
            deliveries: deliveries.clone().map(|d| d.id.as_str()).collect(),
            claimed: deliveries
                .filter(|d| d.claimed)
                .map(|d| d.id.as_str())
                .collect(),
        }
    }
}

/// After a write whose answer was lost with its connection: whether it committed.
///
/// The lost write may still be running: its backend carries on until it notices its client
/// is gone, and may commit after the loss. So the probe first takes the endpoints the write
/// fans out to `FOR UPDATE`, which waits for the write if it holds them (it locks them
/// key-share before it writes anything) or waits for them itself (the probe queues behind
/// it). Then it inserts the first event's id, and rolls back: a unique index conflict means
/// the write committed (an insert of that id still running is waited for too). What it
/// cannot wait for is a write its backend had not begun (its bytes still unread on the
/// server) or one with no endpoints to lock that is still running: each a window of the
/// server's own microseconds, against the node's reconnecting and probing.
///
/// `Some(rows)`: it committed; its deliveries by id and row, each `pending` now (the claims
/// it handed to this node are given back, since no caller will take them in hand). `None`:
/// it did not. The probe's waits and its retries are bounded by [`SETTLE_FOR`]; an error
/// when the database cannot say by then (a connection left half-open holds the write's
/// locks until the server's keepalive finds it, say). Once it has said "committed", that is
/// the answer, whatever the bookkeeping after it meets.
async fn settle_uncertain(
    pool: &PgPool,
    node: &str,
    lost: &LostWrite<'_>,
) -> Result<Option<HashMap<String, i64>>, StoreError> {
    if !retried(SETTLE_FOR, |left| probe_lost_write(pool, lost, left)).await? {
        return Ok(None);
    }
    // It committed: its callers hear so, whatever follows. Its claims go back and its
    // deliveries are read, asked for as long again; failing that, the answer lists the
    // deliveries it planned (one whose endpoint was turned off meanwhile among them), and
    // claims still held wait for this node's restart.
    match retried(SETTLE_FOR, |_| lost_write_rows(pool, node, lost)).await {
        Ok(rows) => Ok(Some(rows)),
        Err(e) => {
            tracing::error!(error = %e, "a write whose answer was lost had committed, but its deliveries could not be read or given back");
            Ok(Some(
                lost.deliveries.iter().map(|d| (d.to_string(), 0)).collect(),
            ))
        }
    }
}

/// Runs `f` (given the time left) until it answers, for at most `budget`, with pauses
/// between tries; its last error, or `Unavailable` once the time is up.
async fn retried<T, F, Fut>(budget: std::time::Duration, mut f: F) -> Result<T, StoreError>
where
    F: FnMut(std::time::Duration) -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let until = tokio::time::Instant::now() + budget;
    let mut wait = std::time::Duration::from_millis(50);
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, f(left)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if tokio::time::Instant::now() + wait < until => {
                tracing::warn!(error = %e, "settling a write whose answer was lost; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(1));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "the database did not answer within {budget:?} about a write whose \
                     answer was lost"
                )));
            }
        }
    }
}

/// Whether the lost write committed (see [`settle_uncertain`]); its waits for locks end
/// within `left`.
async fn probe_lost_write(
    pool: &PgPool,
    lost: &LostWrite<'_>,
    left: std::time::Duration,
) -> Result<bool, StoreError> {
    let mut probe = pool.begin().await.ctx("starting a probe of a lost write")?;
    // An integer of milliseconds; 0 would mean no limit.
    sqlx::query(AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = {}",
        left.as_millis().max(1)
    )))
    .execute(&mut *probe)
    .await
    .ctx("bounding a probe of a lost write")?;
    if !lost.endpoints.is_empty() {
        sqlx::query("SELECT 1 FROM endpoints WHERE id = ANY($1::text[]) ORDER BY seq FOR UPDATE")
            .bind(&lost.endpoints)
            .execute(&mut *probe)
            .await
            .ctx("waiting for a lost write's locks")?;
    }
    let inserted = sqlx::query(
        "INSERT INTO events (id, account_id, type, data, created_at) VALUES ($1, $2, $3, '{}', 0)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(lost.event_id)
    .bind(lost.account_id)
    .bind(lost.event_type)
    .execute(&mut *probe)
    .await
    .ctx("probing for a lost write's event")?
    .rows_affected();
    probe
        .rollback()
        .await
        .ctx("rolling back a probe of a lost write")?;
    Ok(inserted == 0)
}

/// The deliveries of a lost write that committed, by id and row, after giving back the
/// claims it handed to this node (no caller will take them in hand).
async fn lost_write_rows(
    pool: &PgPool,
    node: &str,
    lost: &LostWrite<'_>,
) -> Result<HashMap<String, i64>, StoreError> {
    give_back_claims(pool, node, &lost.claimed).await?;
    let mut rows = HashMap::with_capacity(lost.deliveries.len());
    for r in sqlx::query("SELECT id, seq FROM deliveries WHERE id = ANY($1::text[])")
        .bind(&lost.deliveries)
        .fetch_all(pool)
        .await
        .ctx("reading a lost write's deliveries")?
    {
        rows.insert(
            r.try_get::<String, _>(0).ctx("reading a delivery row")?,
            r.try_get::<i64, _>(1).ctx("reading a delivery row")?,
        );
    }
    Ok(rows)
}

/// When whether a lost write committed cannot be told: gives its claims back if they are
/// there (none are, if it did not commit), in the background, trying until the database
/// answers (or the pool closes): committed, its deliveries then go out like any `pending`
/// ones, rather than wait `delivering` for this node's restart.
fn give_back_unsettled(pool: &PgPool, node: &str, lost: &LostWrite<'_>) {
    if lost.claimed.is_empty() {
        return;
    }
    let claimed: Vec<String> = lost.claimed.iter().map(|d| d.to_string()).collect();
    let (pool, node) = (pool.clone(), node.to_owned());
    tokio::spawn(async move {
        let claimed: Vec<&str> = claimed.iter().map(String::as_str).collect();
        let mut wait = std::time::Duration::from_millis(100);
        let mut tries = 0u32;
        loop {
            let gave = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                give_back_claims(&pool, &node, &claimed),
            )
            .await;
            match gave {
                Ok(Ok(given)) => {
                    tracing::info!(
                        deliveries = given,
                        "a write whose outcome was unknown: the claims it had made are given back \
                         (none, if it did not commit, or if it still runs: those wait for this \
                         node's restart)"
                    );
                    return;
                }
                _ if pool.is_closed() => {
                    tracing::warn!(
                        "a write whose outcome was unknown may hold claims of this node's until it restarts"
                    );
                    return;
                }
                failed => {
                    tries += 1;
                    if tries == 1 || tries.is_multiple_of(30) {
                        let error = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "no answer within 5 s".to_owned(),
                        };
                        tracing::warn!(%error, tries, "giving back the claims of a write whose outcome is unknown; trying again");
                    }
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(std::time::Duration::from_secs(10));
        }
    });
}

/// Gives back to `pending` the deliveries `claimed` of a write whose outcome this node is
/// unsure of, if they are stored and still held by this node (none are, if it did not
/// commit): no caller will take them in hand, so the poller is to.
async fn give_back_claims(pool: &PgPool, node: &str, claimed: &[&str]) -> Result<u64, StoreError> {
    if claimed.is_empty() {
        return Ok(0);
    }
    // Only under the claim the write gave them (1, see `write_ingest_batch`): once given
    // back (by an earlier try whose answer was lost, say), a delivery may be claimed again,
    // by this node's poller or a manual retry, and that claim is not this write's to undo.
    let given = sqlx::query(AssertSqlSafe(format!(
        "UPDATE deliveries SET status = 'pending', node = NULL, claim = claim + 1,
            next_attempt_at = COALESCE(next_attempt_at, {DB_NOW_MS}),
            updated_at = {DB_NOW_MS}
         WHERE id = ANY($1::text[]) AND node = $2 AND status = 'delivering' AND claim = 1"
    )))
    .bind(claimed)
    .bind(node)
    .execute(pool)
    .await
    .ctx("giving back a lost write's claims")?;
    Ok(given.rows_affected())
}

/// Per event, one delivery for each of `subscribers` that takes its type; `admit` says
/// whether the dispatcher takes it at once.
fn plan_deliveries(
    events: &[NewEvent],
    subscribers: Option<&Vec<Arc<Endpoint>>>,
    admit: &mut (dyn FnMut(&str) -> bool + Send),
) -> Vec<Vec<NewDelivery>> {
    events
        .iter()
        .map(|ev| {
            subscribers
                .into_iter()
                .flatten()
                .filter(|e| e.subscribes_to(&ev.event_type))
                .map(|ep| NewDelivery {
                    id: new_id("dlv"),
                    row: 0,
                    endpoint: ep.clone(),
                    claimed: admit(&ep.id),
                })
                .collect()
        })
        .collect()
}

/// The committed events with the deliveries the statement created (`rows`: delivery id to
/// row number); a planned delivery not created (its endpoint was disabled meanwhile) is left
/// out.
fn accepted_events(
    events: Vec<NewEvent>,
    planned: Vec<Vec<NewDelivery>>,
    rows: &HashMap<String, i64>,
) -> Vec<AcceptedEvent> {
    events
        .into_iter()
        .zip(planned)
        .map(|(ev, deliveries)| AcceptedEvent {
            event: Arc::new(Event {
                id: ev.id,
                event_type: ev.event_type,
                created_at: ev.created_at,
                data: ev.data,
            }),
            payload: ev.payload,
            deliveries: deliveries
                .into_iter()
                .filter_map(|mut d| {
                    rows.get(&d.id).map(|&row| {
                        d.row = row;
                        d
                    })
                })
                .collect(),
        })
        .collect()
}

/// The transaction of an ingest request under an idempotency key.
async fn once_tx(
    side: &IngestSide,
    account_id: &str,
    mut events: Vec<NewEvent>,
    key: &IdempotencyKey,
    admit: &mut (dyn FnMut(&str) -> bool + Send),
) -> Result<Ingested, StoreError> {
    let IngestSide {
        pool,
        node,
        sealer,
        stamps,
    } = side;
    let mut tx = pool.begin().await.ctx("starting a transaction")?;
    // Events that waited for a connection are stamped again before the transaction's first
    // write, which gives it the id that places them in the feed.
    NewEvent::refresh_stamps(&mut events, stamps);
    let now = Timestamp::now().0;
    // Take the key: a new row (others with the same key wait on it until this commits), or
    // the existing one, locked.
    let taken = sqlx::query(
        "INSERT INTO idempotency_keys (account_id, key, request_hash, accepted, created_at)
         VALUES ($1, $2, $3, '[]', $4)
         ON CONFLICT (account_id, key) DO NOTHING",
    )
    .bind(account_id)
    .bind(&key.key)
    .bind(&key.request_hash)
    .bind(now)
    .execute(&mut *tx)
    .await
    .ctx("taking an idempotency key")?
    .rows_affected()
        == 1;
    if !taken {
        let Some(r) = sqlx::query(
            "SELECT request_hash, accepted, created_at FROM idempotency_keys
             WHERE account_id = $1 AND key = $2 FOR UPDATE",
        )
        .bind(account_id)
        .bind(&key.key)
        .fetch_optional(&mut *tx)
        .await
        .ctx("reading an idempotency key")?
        else {
            // The expired key was deleted (retention) between the two statements.
            return Err(StoreError::Unavailable(
                "the idempotency key changed under this request; try again".into(),
            ));
        };
        if let Some(first) = recorded_answer(Some(key_record(&r)?), key, now)? {
            return Ok(Ingested::Repeat(first));
        }
        // Expired: this request takes the key over.
    }
    let subscribers = load_subscribers(&mut tx, sealer, &[account_id]).await?;
    let per_event = plan_deliveries(&events, subscribers.get(account_id), admit);
    let request = [IngestRequest {
        account_id: account_id.to_owned(),
        events,
    }];
    let plans = [per_event];
    let rows = write_ingest_batch(&mut tx, node, &request, &plans).await?;
    let [IngestRequest { events, .. }] = request;
    let [per_event] = plans;
    let mut out = accepted_events(events, per_event, &rows);
    let summary: Vec<AcceptedSummary> = out.iter().map(AcceptedSummary::from).collect();
    sqlx::query(
        "UPDATE idempotency_keys SET request_hash = $3, accepted = $4, created_at = $5
         WHERE account_id = $1 AND key = $2",
    )
    .bind(account_id)
    .bind(&key.key)
    .bind(&key.request_hash)
    .bind(serde_json::to_string(&summary).ctx("recording an idempotency key")?)
    .bind(now)
    .execute(&mut *tx)
    .await
    .ctx("recording an idempotency key")?;
    if let Err(e) = tx.commit().await.ctx("committing events") {
        if !may_have_committed(&e) {
            return Err(e);
        }
        // The connection failed with the commit on its way, or its answer: ask whether it
        // happened before answering. What it handed to this node goes back to `pending`.
        let settled = match out.first() {
            Some(a) => {
                let lost = LostWrite::new(
                    account_id,
                    (&a.event.id, &a.event.event_type),
                    out.iter().flat_map(|ev| ev.deliveries.iter()),
                );
                let settled = settle_uncertain(pool, node, &lost).await;
                if settled.is_err() {
                    give_back_unsettled(pool, node, &lost);
                }
                settled
            }
            None => Ok(None),
        };
        return match settled {
            Ok(Some(_)) => {
                tracing::warn!(error = %e, "a commit's answer was lost; it had committed, and its caller hears so");
                for d in out.iter_mut().flat_map(|ev| ev.deliveries.iter_mut()) {
                    d.claimed = false;
                }
                Ok(Ingested::New(out))
            }
            Ok(None) => Err(e),
            Err(e2) => {
                tracing::error!(error = %e, settling = %e2, "a commit's answer was lost, and the database could not say whether it happened: its caller gets no answer");
                Err(StoreError::OutcomeUnknown(format!(
                    "{e}; then, asking: {e2}"
                )))
            }
        };
    }
    Ok(Ingested::New(out))
}

/// Answers every caller of a failed batch with the error.
fn fail_batch(callers: Vec<Caller>, e: &StoreError) {
    tracing::error!(error = %e, jobs = callers.len(), "an ingest batch failed");
    for (_, on_done, reply) in callers {
        let err = e.for_each_caller();
        on_done.run(Err(&err));
        let _ = reply.send(Err(err));
    }
}

/// The enabled endpoints of `accounts`, by account.
async fn load_subscribers(
    c: &mut PgConnection,
    sealer: &Sealer,
    accounts: &[&str],
) -> Result<HashMap<String, Vec<Arc<Endpoint>>>, StoreError> {
    let mut by_account: HashMap<String, Vec<Arc<Endpoint>>> = HashMap::new();
    for r in sqlx::query(AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLS} FROM endpoints
         WHERE account_id = ANY($1::text[]) AND enabled AND deleted_at IS NULL
         ORDER BY seq"
    )))
    .bind(accounts)
    .fetch_all(c)
    .await
    .ctx("finding subscribers")?
    {
        let ep = endpoint_from_row(&r, sealer)?;
        by_account
            .entry(ep.account_id.clone())
            .or_default()
            .push(Arc::new(ep));
    }
    Ok(by_account)
}

/// The one statement of an ingest batch; returns the created deliveries' row numbers.
/// Deliveries are due now by this node's clock, which judges due times ([`PgStore::claim_due`]),
/// whatever their events' stamps say ([`super::stamps`]: the database's clock, held).
async fn write_ingest_batch(
    c: &mut PgConnection,
    node: &str,
    jobs: &[IngestRequest],
    plans: &[Vec<Vec<NewDelivery>>],
) -> Result<HashMap<String, i64>, StoreError> {
    let mut e = EventColumns::default();
    let mut d = DeliveryColumns::default();
    let mut endpoint_ids: Vec<&str> = Vec::new();
    for (job, per_event) in jobs.iter().zip(plans) {
        for (ev, deliveries) in job.events.iter().zip(per_event) {
            e.id.push(&ev.id);
            e.account_id.push(&job.account_id);
            e.event_type.push(&ev.event_type);
            e.data.push(ev.data.get());
            e.created_at.push(ev.created_at.0);
            for new in deliveries {
                d.id.push(new.id.clone());
                d.account_id.push(&job.account_id);
                d.event_id.push(&ev.id);
                d.event_type.push(&ev.event_type);
                d.endpoint_id.push(&new.endpoint.id);
                d.status
                    .push(if new.claimed { "delivering" } else { "pending" });
                d.at.push(ev.created_at.0);
                d.claim.push(i64::from(new.claimed));
                endpoint_ids.push(&new.endpoint.id);
            }
        }
    }
    endpoint_ids.sort_unstable();
    endpoint_ids.dedup();
    sqlx::query(
        "WITH subs AS (
            SELECT id FROM endpoints
            WHERE id = ANY($10::text[]) AND enabled AND deleted_at IS NULL
            ORDER BY seq FOR KEY SHARE),
         ev AS (
            INSERT INTO events (id, account_id, type, data, created_at)
            SELECT * FROM UNNEST($11::text[], $12::text[], $13::text[], $14::text[],
                                 $15::bigint[]))
         INSERT INTO deliveries (id, account_id, event_id, event_type, endpoint_id,
            status, next_attempt_at, created_at, updated_at, claim, node)
         SELECT id, account_id, event_id, event_type, endpoint_id, status, $16, at, at, claim,
            CASE WHEN status = 'delivering' THEN $9 END
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::bigint[], $8::bigint[])
              AS t(id, account_id, event_id, event_type, endpoint_id, status, at, claim)
         WHERE endpoint_id IN (SELECT id FROM subs)
         RETURNING id, seq",
    )
    .bind(&d.id)
    .bind(&d.account_id)
    .bind(&d.event_id)
    .bind(&d.event_type)
    .bind(&d.endpoint_id)
    .bind(&d.status)
    .bind(&d.at)
    .bind(&d.claim)
    .bind(node)
    .bind(&endpoint_ids)
    .bind(&e.id)
    .bind(&e.account_id)
    .bind(&e.event_type)
    .bind(&e.data)
    .bind(&e.created_at)
    .bind(Timestamp::now().0)
    .fetch_all(c)
    .await
    .ctx("inserting events and deliveries")?
    .iter()
    .map(|r| {
        Ok((
            r.try_get::<String, _>(0).ctx("reading a delivery row")?,
            r.try_get::<i64, _>(1).ctx("reading a delivery row")?,
        ))
    })
    .collect()
}

/// What one ingest job asks to store.
struct IngestRequest {
    account_id: String,
    events: Vec<NewEvent>,
}

/// Events to insert, column by column.
#[derive(Default)]
struct EventColumns<'a> {
    id: Vec<&'a str>,
    account_id: Vec<&'a str>,
    event_type: Vec<&'a str>,
    data: Vec<&'a str>,
    created_at: Vec<i64>,
}

/// Calls its closure once: through [`OnDone::run`], or with an error when dropped unrun.
struct OnDone<D: FnOnce(Result<&Vec<AcceptedEvent>, &StoreError>)>(Option<D>);

impl<D: FnOnce(Result<&Vec<AcceptedEvent>, &StoreError>)> OnDone<D> {
    fn run(mut self, result: Result<&Vec<AcceptedEvent>, &StoreError>) {
        if let Some(f) = self.0.take() {
            f(result);
        }
    }
}

impl<D: FnOnce(Result<&Vec<AcceptedEvent>, &StoreError>)> Drop for OnDone<D> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(&StoreError::Commit(
                "the ingest transaction did not finish".into(),
            )));
        }
    }
}

/// Deliveries to insert, column by column, for one `INSERT … SELECT … FROM UNNEST`.
#[derive(Default)]
struct DeliveryColumns<'a> {
    id: Vec<String>,
    account_id: Vec<&'a str>,
    event_id: Vec<&'a str>,
    event_type: Vec<&'a str>,
    endpoint_id: Vec<&'a str>,
    status: Vec<&'static str>,
    at: Vec<i64>,
    claim: Vec<i64>,
}

/// Wake-ups from other nodes, as they arrive.
pub struct Notices {
    listener: sqlx::postgres::PgListener,
}

/// What another node said.
#[derive(Debug)]
pub enum Notice {
    /// A delivery became due at this time.
    Due(Timestamp),
    /// This endpoint changed (or was disabled or removed).
    EndpointChanged(String),
    /// The listener's connection was lost and re-made: notices may have been missed.
    Reconnected,
}

impl Notices {
    /// The next notice. sqlx re-connects a lost listener by itself; a gap is reported as
    /// [`Notice::Reconnected`].
    pub async fn next(&mut self) -> Result<Notice, StoreError> {
        match self
            .listener
            .try_recv()
            .await
            .ctx("waiting for other nodes")?
        {
            None => Ok(Notice::Reconnected),
            Some(n) if n.channel() == ENDPOINT_CHANNEL => {
                Ok(Notice::EndpointChanged(n.payload().to_owned()))
            }
            Some(n) => Ok(Notice::Due(Timestamp(
                n.payload().parse().unwrap_or_else(|_| Timestamp::now().0),
            ))),
        }
    }
}

/// Records attempt `a` of `delivery_id` under the next number free: one past every number
/// the delivery holds and its count of attempts, which then counts it too. Returns the number.
/// (For an attempt whose own number another attempt of the delivery holds: see
/// `record_attempts`.) If the attempt is recorded already (this record written before, and
/// given a number then), nothing is written: its number is returned.
async fn record_renumbered(
    c: &mut PgConnection,
    delivery_id: &str,
    a: &Attempt,
    claim: i64,
) -> Result<u32, StoreError> {
    let before: Option<i64> = sqlx::query_scalar(
        "SELECT attempt FROM attempts
         WHERE delivery_id = $1
           AND COALESCE(claim = $4, started_at = $2 AND duration_ms = $3) LIMIT 1",
    )
    .bind(delivery_id)
    .bind(a.started_at.0)
    .bind(a.duration_ms as i64)
    .bind(claim)
    .fetch_optional(&mut *c)
    .await
    .ctx("looking for an attempt recorded before")?;
    if let Some(number) = before {
        return u32::try_from(number)
            .map_err(|_| StoreError::Commit(format!("attempt number {number} out of range")));
    }
    let number: i64 = sqlx::query_scalar(
        "WITH d AS (SELECT attempts FROM deliveries WHERE id = $1 FOR NO KEY UPDATE)
         INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code,
             error, response_body, claim)
         SELECT $1, GREATEST((SELECT attempts FROM d),
                             (SELECT MAX(attempt) FROM attempts WHERE delivery_id = $1), 0) + 1,
                $2, $3, $4, $5, $6, $7
         RETURNING attempt",
    )
    .bind(delivery_id)
    .bind(a.started_at.0)
    .bind(a.duration_ms as i64)
    .bind(a.status_code.map(i64::from))
    .bind(a.error.as_deref())
    .bind(a.response_body.as_deref())
    .bind(claim)
    .fetch_one(&mut *c)
    .await
    .ctx("recording an attempt under the next number")?;
    sqlx::query("UPDATE deliveries SET attempts = GREATEST(attempts, $2) WHERE id = $1")
        .bind(delivery_id)
        .bind(number)
        .execute(&mut *c)
        .await
        .ctx("counting an attempt")?;
    u32::try_from(number)
        .map_err(|_| StoreError::Commit(format!("attempt number {number} out of range")))
}

/// Sends `payload` on `channel` when the transaction commits.
async fn notify(c: &mut PgConnection, channel: &str, payload: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(c)
        .await
        .ctx("notifying other nodes")?;
    Ok(())
}

async fn fail_open_deliveries(
    c: &mut PgConnection,
    endpoint_id: &str,
    why: &str,
) -> Result<usize, StoreError> {
    let now = Timestamp::now().0;
    let mut ended = 0;
    // Those in flight first. Each statement reads the rows as they were when it began
    // (READ COMMITTED), and another node may give one back (`pending`) meanwhile, without the
    // endpoint's lock: given back after the first, it is `pending` for the second. The other
    // way round it would escape both. The opposite move (`pending` to `delivering`, a claim)
    // takes the endpoint's lock, which this transaction holds.
    for (sql, what) in [
        (END_HELD, "ending an endpoint's deliveries in flight"),
        (END_PENDING, "ending an endpoint's pending deliveries"),
    ] {
        let done = sqlx::query(sql)
            .bind(endpoint_id)
            .bind(why)
            .bind(now)
            .execute(&mut *c)
            .await
            .ctx(what)?;
        ended += done.rows_affected() as usize;
    }
    Ok(ended)
}

/// Ends as `failed` endpoint `$1`'s `pending` deliveries created, and last changed, before
/// `$2` (`$3` now): the rows read are the endpoint's pending ones created before `$2`
/// (`deliveries_pending_by_age`), about those it ends.
pub const FAIL_STALE: &str = concat!(
    "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, updated_at = $3,
        last_error = ",
    held_back_reason_sql!(),
    "
     WHERE endpoint_id = $1 AND status = 'pending' AND created_at < $2 AND updated_at < $2"
);

/// [`FAIL_STALE`] for the rows also due before `$2`: a range of the index of pending rows by
/// due time, so the rows read are about those ended. Rows made at ingest are due from their
/// write (by the writing node's clock, within its skew of their stamp); a retry is due after
/// its attempt (so after its last change).
pub const FAIL_STALE_DUE: &str = concat!(
    "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, updated_at = $3,
        last_error = ",
    held_back_reason_sql!(),
    "
     WHERE endpoint_id = $1 AND status = 'pending' AND next_attempt_at < $2
       AND created_at < $2 AND updated_at < $2"
);

/// Ends endpoint `$1`'s `pending` deliveries (`$2` the reason, `$3` now). Its status matches
/// the predicate of the partial indexes of pending rows (`deliveries_due_by_endpoint`,
/// `deliveries_due`): a single statement for `status IN ('pending', 'delivering')` matched
/// neither, and the planner read the whole table.
pub const END_PENDING: &str = "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL,
        last_error = COALESCE(last_error, $2), updated_at = $3
     WHERE endpoint_id = $1 AND status = 'pending'";

/// Ends endpoint `$1`'s `delivering` deliveries: those in flight on any node, all of them in
/// `deliveries_held_by_node` (whatever the endpoint's history).
pub const END_HELD: &str = "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL,
        last_error = COALESCE(last_error, $2), updated_at = $3
     WHERE endpoint_id = $1 AND status = 'delivering'";

/// A page of items read by `item`, each row carrying its position in column `seq_col`
/// (fetched with one row more than `limit`).
fn page_of<T>(
    rows: &[PgRow],
    item: impl Fn(&PgRow) -> Result<T, StoreError>,
    seq_col: usize,
    limit: usize,
) -> Result<Page<T>, StoreError> {
    let rows = rows
        .iter()
        .map(|r| {
            Ok((
                item(r)?,
                r.try_get::<i64, _>(seq_col).ctx("reading a list")?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(super::page(rows, limit))
}

const ENDPOINT_COLS: &str = "id, account_id, url, description, event_types, headers, secret, \
     rate_limit_per_sec, enabled, disabled_reason, created_at, updated_at, deleted_at, \
     previous_secrets";
/// [`ENDPOINT_COLS`] of the table aliased `e`.
const ENDPOINT_COLS_OF_E: &str = "e.id, e.account_id, e.url, e.description, e.event_types, \
     e.headers, e.secret, e.rate_limit_per_sec, e.enabled, e.disabled_reason, e.created_at, \
     e.updated_at, e.deleted_at, e.previous_secrets";
/// How many columns [`ENDPOINT_COLS`] names.
const ENDPOINT_COL_COUNT: usize = 14;

/// An endpoint from a row of [`ENDPOINT_COLS`], its secrets opened with `sealer`.
fn endpoint_from_row(r: &PgRow, sealer: &Sealer) -> Result<Endpoint, StoreError> {
    const CTX: &str = "reading an endpoint";
    let event_types: String = r.try_get(4).ctx(CTX)?;
    let headers: String = r.try_get(5).ctx(CTX)?;
    let id: String = r.try_get(0).ctx(CTX)?;
    let mut headers: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&headers).ctx("reading an endpoint's headers")?;
    sealer.open_headers(&id, &mut headers)?;
    let secret: String = r.try_get(6).ctx(CTX)?;
    let previous: Option<String> = r.try_get(13).ctx(CTX)?;
    let previous_secrets = sealer.open_previous(&id, previous.as_deref())?;
    Ok(Endpoint {
        account_id: r.try_get(1).ctx(CTX)?,
        url: r.try_get(2).ctx(CTX)?,
        description: r.try_get(3).ctx(CTX)?,
        event_types: serde_json::from_str(&event_types).ctx("reading an endpoint's event types")?,
        headers,
        secret: sealer.open(&id, &secret)?,
        rate_limit_per_sec: r.try_get::<Option<i64>, _>(7).ctx(CTX)?.map(to_u32),
        enabled: r.try_get(8).ctx(CTX)?,
        disabled_reason: r.try_get(9).ctx(CTX)?,
        created_at: Timestamp(r.try_get(10).ctx(CTX)?),
        updated_at: Timestamp(r.try_get(11).ctx(CTX)?),
        previous_secret_expires_at: crate::model::latest_until(&previous_secrets, Timestamp::now()),
        previous_secrets,
        id,
    })
}

/// One endpoint that is not deleted; `lock` takes it `FOR UPDATE` (for a change).
async fn load_endpoint(
    c: &mut PgConnection,
    sealer: &Sealer,
    account_id: Option<&str>,
    id: &str,
    lock: bool,
) -> Result<Option<Endpoint>, StoreError> {
    let sql = format!(
        "SELECT {ENDPOINT_COLS} FROM endpoints
         WHERE id = $1 AND ($2::text IS NULL OR account_id = $2) AND deleted_at IS NULL{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .bind(account_id)
        .fetch_optional(c)
        .await
        .ctx("reading an endpoint")?
        .map(|r| endpoint_from_row(&r, sealer))
        .transpose()
}

/// An idempotency key's record from its row: its request's digest, the answer, when it was
/// taken.
fn key_record(r: &PgRow) -> Result<(String, String, i64), StoreError> {
    Ok((
        r.try_get(0).ctx("reading an idempotency key")?,
        r.try_get(1).ctx("reading an idempotency key")?,
        r.try_get(2).ctx("reading an idempotency key")?,
    ))
}

fn event_type_from_row(r: &PgRow) -> Result<CustomEventType, StoreError> {
    const CTX: &str = "reading an event type";
    let schema: Option<String> = r.try_get(2).ctx(CTX)?;
    Ok(CustomEventType {
        name: r.try_get(0).ctx(CTX)?,
        description: r.try_get(1).ctx(CTX)?,
        schema: schema
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .ctx("reading an event type's schema")?,
        created_at: Timestamp(r.try_get(3).ctx(CTX)?),
        updated_at: Timestamp(r.try_get(4).ctx(CTX)?),
    })
}

fn api_key_from_row(r: &PgRow) -> Result<ApiKey, StoreError> {
    const CTX: &str = "reading a key";
    Ok(ApiKey {
        id: r.try_get(0).ctx(CTX)?,
        prefix: r.try_get(1).ctx(CTX)?,
        created_at: Timestamp(r.try_get(2).ctx(CTX)?),
        revoked_at: r.try_get::<Option<i64>, _>(3).ctx(CTX)?.map(Timestamp),
    })
}

fn account_from_row(r: &PgRow) -> Result<Account, StoreError> {
    const CTX: &str = "reading an account";
    let plan: String = r.try_get(2).ctx(CTX)?;
    Ok(Account {
        id: r.try_get(0).ctx(CTX)?,
        name: r.try_get(1).ctx(CTX)?,
        plan: Plan::parse(&plan).unwrap_or(Plan::Free),
        created_at: Timestamp(r.try_get(3).ctx(CTX)?),
    })
}

const DELIVERY_COLS: &str = "id, event_id, endpoint_id, event_type, status, attempts, \
     next_attempt_at, last_attempt_at, last_status_code, last_error, created_at, updated_at";

/// An event's deliveries (`$1`, of account `$2`) below row `$3`, optionally of one endpoint
/// (`$4`) and in one state (`$5`), newest first, at most `$6`.
pub static EVENT_DELIVERIES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {DELIVERY_COLS}, seq FROM deliveries
         WHERE event_id = $1 AND account_id = $2 AND seq < $3
           AND ($4::text IS NULL OR endpoint_id = $4)
           AND ($5::text IS NULL OR status = $5)
         ORDER BY seq DESC LIMIT $6"
    )
});

/// An endpoint's deliveries (`$1`, of account `$2`) below row `$3`, optionally in one state
/// (`$4`), newest first, at most `$5`.
pub static ENDPOINT_DELIVERIES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {DELIVERY_COLS}, seq FROM deliveries
         WHERE endpoint_id = $1 AND account_id = $2 AND seq < $3
           AND ($4::text IS NULL OR status = $4)
         ORDER BY seq DESC LIMIT $5"
    )
});

/// An account's (`$1`) deliveries below row `$2`, optionally in one state (`$3`), newest
/// first, at most `$4`.
pub static ACCOUNT_DELIVERIES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {DELIVERY_COLS}, seq FROM deliveries
         WHERE account_id = $1 AND seq < $2
           AND ($3::text IS NULL OR status = $3)
         ORDER BY seq DESC LIMIT $4"
    )
});

/// The text of [`FEED`] with `$filter` added to its conditions: both pages read the same
/// positions and show only what the same snapshot may (the feed's invariant lives here).
macro_rules! feed_page_sql {
    ($filter:literal) => {
        concat!(
            "SELECT id, type, created_at, data, xid::text::bigint AS xid_number, seq
     FROM events
     WHERE account_id = $1",
            $filter,
            "
       AND (xid, seq) > ($2::text::xid8, $3)
       AND xid <= $7::text::xid8
       AND xid < pg_snapshot_xmin(pg_current_snapshot())
       AND ($4::bigint IS NULL OR created_at >= $4)
       AND ($5::bigint IS NULL OR created_at < $5)
     ORDER BY xid, seq LIMIT $6"
        )
    };
}

/// A page of account `$1`'s feed without a type: its events after position (`$2`, `$3`)
/// whose transaction is at most `$7`, created at or after `$4` and before `$5` (each if
/// given), in feed order, at most `$6`; only those of transactions older than every one
/// still running.
///
/// The statements of the feed return the transaction id as a number under a name of its
/// own: named `xid`, that output column is what `ORDER BY xid` would sort by, a number no
/// index gives in order, so every page would read and sort all of the account's events
/// after its start.
pub const FEED: &str = feed_page_sql!("");

/// A page of one type (`$8`): as [`FEED`], through the account's index of events by type in
/// feed order (`events_feed_by_type`), so that it reads only events of the type.
pub const FEED_TYPED: &str = feed_page_sql!(" AND type = $8");

/// The transactions of account `$1`'s first and last events.
pub const FEED_ENDS: &str = "SELECT
     (SELECT xid::text::bigint AS xid_number FROM events WHERE account_id = $1
      ORDER BY xid, seq LIMIT 1),
     (SELECT xid::text::bigint AS xid_number FROM events WHERE account_id = $1
      ORDER BY xid DESC, seq DESC LIMIT 1)";

/// Account `$1`'s first event of a transaction after `$2`: its position and creation time.
pub const FEED_FIRST_AFTER: &str = "SELECT xid::text::bigint AS xid_number, seq, created_at
     FROM events
     WHERE account_id = $1 AND xid > $2::text::xid8 ORDER BY xid, seq LIMIT 1";

/// Reads a page of the feed ([`FEED`], or [`FEED_TYPED`] with a type), one row more than
/// `limit`.
async fn feed_page<'c>(
    db: impl sqlx::PgExecutor<'c>,
    account_id: &str,
    filter: &EventFilter,
    (xid, seq): FeedPos,
    through: i64,
    limit: usize,
) -> Result<Vec<PgRow>, StoreError> {
    let page = |sql| {
        sqlx::query(sql)
            .bind(account_id)
            .bind(xid.to_string())
            .bind(seq)
            .bind(filter.since)
            .bind(filter.until)
            .bind(limit as i64 + 1)
            .bind(through.to_string())
    };
    let query = match &filter.event_type {
        None => page(FEED),
        Some(event_type) => page(FEED_TYPED).bind(event_type),
    };
    query.fetch_all(db).await.ctx("reading the event feed")
}

/// Where the account's feed passes `cutoff`: the position of the last event the search
/// found created before it (`None` if none), and the last transaction whose events may
/// come before the first one created at or after it. A binary search over transaction
/// ids, each probe one seek into `events_feed` (as many as the bits of the span of ids
/// between the account's first and last events: about 30 for a billion transactions).
///
/// Everything up to the first is older than `cutoff` plus the margin, and everything past
/// the second newer than `cutoff` less the margin, as long as events are in the feed's order
/// to within [`super::RECOVER_MARGIN_MS`] of their stamps, as the clock of stamps keeps
/// them ([`super::stamps`]: every node stamps by the database's clock, never backwards, and
/// again if its write waited). The feed leaves the margin on the side of its bound that must not lose an
/// event, as a recovery does ([`super::Store::recover_from`]), and its stamps still filter.
///
/// Its probes must read one snapshot (the feed runs it in its page's `REPEATABLE READ`
/// transaction): a transaction that commits between two of them could otherwise be counted
/// on one side of the search and then appear on the other.
pub async fn feed_search(
    db: &mut PgConnection,
    account_id: &str,
    cutoff: i64,
) -> Result<(Option<FeedPos>, i64), StoreError> {
    let ends = feed_ends(db, account_id).await?;
    feed_search_within(db, account_id, ends, cutoff).await
}

/// The transactions of the account's first and last events (`None` if it has none).
async fn feed_ends(
    db: &mut PgConnection,
    account_id: &str,
) -> Result<Option<(i64, i64)>, StoreError> {
    let (first, last): (Option<i64>, Option<i64>) = sqlx::query_as(FEED_ENDS)
        .bind(account_id)
        .fetch_one(db)
        .await
        .ctx("finding the ends of the account's feed")?;
    Ok(first.zip(last))
}

/// [`feed_search`] between the ends [`feed_ends`] read in the same snapshot.
async fn feed_search_within(
    db: &mut PgConnection,
    account_id: &str,
    ends: Option<(i64, i64)>,
    cutoff: i64,
) -> Result<(Option<FeedPos>, i64), StoreError> {
    let Some((first, last)) = ends else {
        return Ok((None, 0));
    };
    // Whether the first event of a transaction after `x` was created before the cutoff
    // (false past the last): true up to about where the stamps pass it, then false. `found`
    // is the last event seen before the cutoff, and `lo` its transaction: the probes go on
    // past it, so every event up to it is older than the cutoff plus the margin.
    let (mut lo, mut hi) = (first - 1, last);
    let mut found = None;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let next: Option<(i64, i64, i64)> = sqlx::query_as(FEED_FIRST_AFTER)
            .bind(account_id)
            .bind(mid.to_string())
            .fetch_optional(&mut *db)
            .await
            .ctx("searching the feed by time")?;
        match next {
            Some((xid, seq, created_at)) if created_at < cutoff => {
                found = Some((xid, seq));
                lo = xid;
            }
            _ => hi = mid,
        }
    }
    Ok((found, hi))
}

fn delivery_from_row(r: &PgRow) -> Result<Delivery, StoreError> {
    const CTX: &str = "reading a delivery";
    let status: String = r.try_get(4).ctx(CTX)?;
    Ok(Delivery {
        id: r.try_get(0).ctx(CTX)?,
        event_id: r.try_get(1).ctx(CTX)?,
        endpoint_id: r.try_get(2).ctx(CTX)?,
        event_type: r.try_get(3).ctx(CTX)?,
        status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
        attempt_count: to_u32(r.try_get(5).ctx(CTX)?),
        next_attempt_at: r.try_get::<Option<i64>, _>(6).ctx(CTX)?.map(Timestamp),
        last_attempt_at: r.try_get::<Option<i64>, _>(7).ctx(CTX)?.map(Timestamp),
        last_status_code: r.try_get::<Option<i64>, _>(8).ctx(CTX)?.map(to_u16),
        last_error: r.try_get(9).ctx(CTX)?,
        created_at: Timestamp(r.try_get(10).ctx(CTX)?),
        updated_at: Timestamp(r.try_get(11).ctx(CTX)?),
    })
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

fn to_u16(v: i64) -> u16 {
    u16::try_from(v.max(0)).unwrap_or(u16::MAX)
}
