//! The store: the only door to the database.
//!
//! Every query is scoped by account where a caller acts for one; the dispatcher's internal
//! operations (claiming due deliveries, recording attempts) are keyed by delivery id.
//!
//! Two engines behind one type, [`Store`]: embedded SQLite ([`sqlite::SqliteStore`], the
//! default: one writer thread commits whatever is queued in one transaction) and PostgreSQL
//! ([`postgres::PgStore`]: a connection pool; concurrent ingests batched into one statement,
//! other operations a transaction each; several nodes may share it). Both answer a write
//! only once its commit is durable, and both keep the same rules (see ARCHITECTURE.md).

/// The reason a `pending` delivery ends with when its endpoint was held back (an open
/// breaker, a long `Retry-After`) until its retry schedule ran out, as an SQL expression
/// over its row, the same on both engines: never attempted, or ended early after its
/// attempts, with what the last one got.
macro_rules! held_back_reason_sql {
    () => {
        "CASE WHEN attempts = 0 THEN
            'not attempted: the endpoint was held back for the whole retry schedule (it kept failing, or asked to wait with Retry-After)'
         ELSE 'ended after ' || CAST(attempts AS TEXT)
            || CASE WHEN attempts = 1 THEN ' attempt' ELSE ' attempts' END
            || ': the endpoint was held back for the rest of the retry schedule (it kept failing, or asked to wait with Retry-After); the last attempt: '
            || COALESCE(last_error, 'HTTP ' || CAST(last_status_code AS TEXT), 'no answer')
         END"
    };
}

pub mod postgres;
pub mod sealing;
pub mod sqlite;
pub mod stamps;

use crate::model::{
    Account, ApiKey, Attempt, CustomEventType, Delivery, Endpoint, Event, Plan, Timestamp,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why deliveries ended, as `hookline_deliveries_ended_total` counts them. The store counts
/// each ending once the write that made it is committed, on the node that wrote it, through
/// the `metrics` facade (as the SQLite writer's own metrics are; the names are listed in
/// `telemetry`). Endings that no attempt made (a hold, a turning off) show nowhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// An attempt got a `2xx`.
    Delivered,
    /// A failed attempt ended it: its retry schedule was spent, its endpoint answered `410`,
    /// or it was a manual retry of an ended delivery.
    AttemptFailed,
    /// Its endpoint was held back (an open breaker, a long `Retry-After`) for the rest of its
    /// retry schedule.
    HeldBack,
    /// Its endpoint was turned off while it waited: disabled, removed, gone (another
    /// delivery's attempt got `410`), or its account's plan lost webhooks.
    EndpointOff,
}

impl Ended {
    pub const ALL: [Ended; 4] = [
        Ended::Delivered,
        Ended::AttemptFailed,
        Ended::HeldBack,
        Ended::EndpointOff,
    ];

    /// The `status` and `reason` labels.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Ended::Delivered => ("succeeded", "delivered"),
            Ended::AttemptFailed => ("failed", "attempt_failed"),
            Ended::HeldBack => ("failed", "held_back"),
            Ended::EndpointOff => ("failed", "endpoint_off"),
        }
    }
}

/// Counts `n` deliveries ended for `why`.
fn count_ended(why: Ended, n: usize) {
    if n > 0 {
        let (status, reason) = why.labels();
        metrics::counter!("hookline_deliveries_ended_total", "status" => status, "reason" => reason)
            .increment(n as u64);
    }
}

/// Counts what a committed write that answers `(out, ended by turning endpoints off)`
/// ended (SQLite's `on_done`, which runs even if the caller stopped waiting).
fn count_ended_off<T>(done: Result<&(T, usize), &StoreError>) {
    if let Ok((_, ended)) = done {
        count_ended(Ended::EndpointOff, *ended);
    }
}

/// The endings of one write, counted once it is committed.
#[derive(Default)]
struct EndedTally([usize; 4]);

impl EndedTally {
    fn add(&mut self, why: Ended, n: usize) {
        self.0[why as usize] += n;
    }

    /// An attempt's outcome that moved its delivery on.
    fn outcome(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Succeeded => self.add(Ended::Delivered, 1),
            Outcome::Failed | Outcome::Gone => self.add(Ended::AttemptFailed, 1),
            Outcome::RetryAt(_) | Outcome::Released => {}
        }
    }

    fn count(&self) {
        for why in Ended::ALL {
            count_ended(why, self.0[why as usize]);
        }
    }
}

pub use postgres::PgStore;
pub use sealing::Sealer;
pub use sqlite::SqliteStore;

/// Where the data lives.
#[derive(Clone, Debug)]
pub enum Location {
    /// The embedded SQLite database in this directory.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://…`).
    Postgres(String),
}

impl Location {
    /// For logs and errors: the directory, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(dir) => dir.display().to_string(),
            Location::Postgres(url) => match url::Url::parse(url) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        let _ = u.set_password(Some("***"));
                    }
                    u.to_string()
                }
                Err(_) => "(an unparsable PostgreSQL URL)".to_owned(),
            },
        }
    }
}

/// The store, on either engine. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// A database's schema versions before and after a store opened it (equal when it was up
/// to date).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchemaVersions {
    pub before: usize,
    pub after: usize,
}

/// A node of a shared store that has gone silent but is not yet declared dead, and the
/// deliveries it still holds: they wait until its lease runs out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SilentHolder {
    pub node: String,
    /// Since its last heartbeat, by the database's clock.
    pub silent: std::time::Duration,
    /// Its deliveries still `delivering`.
    pub holds: u64,
}

/// Held while `hookline serve` runs. One SQLite data directory has one serving process;
/// PostgreSQL is shared by any number of nodes (leases decide who holds what).
pub enum ServeLock {
    Sqlite(sqlite::DirLock),
    Shared,
}

impl ServeLock {
    /// Gives the lock back now, so that a process restarted at once can take it.
    pub fn release(self) {
        drop(self);
    }
}

pub use postgres::{Notice, Notices};

macro_rules! on_engine {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

impl Store {
    /// Opens the store at `location`, bringing its schema up to date.
    /// Endpoint secrets are stored as they are (see [`Store::open_sealed`]).
    pub async fn open(location: &Location) -> Result<Store, StoreError> {
        Self::open_sealed(location, Sealer::none()).await
    }

    /// Opens the store at `location`; endpoint secrets are sealed with `sealer` when written
    /// and opened with it when read.
    pub async fn open_sealed(location: &Location, sealer: Sealer) -> Result<Store, StoreError> {
        match location {
            Location::Sqlite(dir) => Ok(Store::Sqlite(SqliteStore::open(dir, sealer)?)),
            Location::Postgres(url) => Ok(Store::Postgres(PgStore::open(url, sealer).await?)),
        }
    }

    /// Like [`Store::open_sealed`], by the holder of the serve lock (a server, or a command
    /// that must run alone): on SQLite the migrations run under that lock, and any other
    /// opener takes it for theirs, so none runs under a server of another build.
    pub async fn open_locked(
        location: &Location,
        sealer: Sealer,
        lock: &ServeLock,
    ) -> Result<Store, StoreError> {
        match (location, lock) {
            (Location::Sqlite(dir), ServeLock::Sqlite(held)) => {
                Ok(Store::Sqlite(SqliteStore::open_locked(dir, sealer, held)?))
            }
            _ => Self::open_sealed(location, sealer).await,
        }
    }

    /// Whether `location` holds a Hookline database already. Opening a store creates one, so
    /// commands that only work on existing data ask this first: a mistyped location is then
    /// an error, not a new empty database.
    pub async fn exists(location: &Location) -> Result<bool, StoreError> {
        match location {
            Location::Sqlite(dir) => Ok(SqliteStore::exists(dir)),
            Location::Postgres(url) => PgStore::exists(url).await,
        }
    }

    /// The schema's versions before and after this store was opened.
    pub fn schema_versions(&self) -> SchemaVersions {
        on_engine!(self, s => s.schema_versions())
    }

    /// The embedded SQLite store in `dir`.
    pub fn sqlite(dir: &Path) -> Result<Store, StoreError> {
        Ok(Store::Sqlite(SqliteStore::open(dir, Sealer::none())?))
    }

    /// SQLite: how long attempt outcomes wait to ride with another write before they commit
    /// on their own (see `store::sqlite`). Zero measures an outcome's write alone. Nothing
    /// on PostgreSQL, where outcomes are written as they come.
    pub fn set_rider_wait(&mut self, wait: std::time::Duration) {
        if let Store::Sqlite(s) = self {
            s.set_rider_wait(wait);
        }
    }

    /// Takes the serve lock of the database at `location`, or says who holds it.
    pub async fn lock(location: &Location) -> Result<ServeLock, StoreError> {
        match location {
            Location::Sqlite(dir) => Ok(ServeLock::Sqlite(SqliteStore::lock_dir(dir)?)),
            Location::Postgres(_) => Ok(ServeLock::Shared),
        }
    }

    /// Which engine this is, for logs.
    pub fn engine(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    pub async fn create_account(&self, name: String, plan: Plan) -> Result<Account, StoreError> {
        on_engine!(self, s => s.create_account(name, plan).await)
    }

    /// Creates an account and its first key (given by its hash and its shown prefix) in one
    /// transaction: a failure leaves neither.
    pub async fn create_account_with_key(
        &self,
        name: String,
        plan: Plan,
        key_hash: String,
        prefix: String,
    ) -> Result<(Account, ApiKey), StoreError> {
        on_engine!(self, s => s.create_account_with_key(name, plan, key_hash, prefix).await)
    }

    pub async fn account_by_name(&self, name: String) -> Result<Option<Account>, StoreError> {
        on_engine!(self, s => s.account_by_name(name).await)
    }

    pub async fn get_account(&self, id: String) -> Result<Option<Account>, StoreError> {
        on_engine!(self, s => s.get_account(id).await)
    }

    /// Accounts, oldest first.
    pub async fn list_accounts(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Page<Account>, StoreError> {
        on_engine!(self, s => s.list_accounts(after, limit).await)
    }

    /// Changes an account's plan; `None` when there is no such account. A plan without
    /// webhooks disables the account's endpoints and ends their open deliveries (see
    /// [`Store::update_endpoint`] for when); they are returned (as disabled).
    pub async fn set_plan(
        &self,
        id: String,
        plan: Plan,
    ) -> Result<Option<(Account, Vec<Endpoint>)>, StoreError> {
        on_engine!(self, s => s.set_plan(id, plan).await)
    }

    /// Stores the hash of a new key of `account_id` (never the key), unless the account
    /// holds `max_live` live keys already ([`StoreError::Conflict`]; counted in the same
    /// transaction).
    pub async fn add_api_key(
        &self,
        account_id: String,
        key_hash: String,
        prefix: String,
        max_live: usize,
    ) -> Result<ApiKey, StoreError> {
        on_engine!(self, s => s.add_api_key(account_id, key_hash, prefix, max_live).await)
    }

    /// Up to `limit` of the account's keys, revoked ones included, oldest first, after
    /// `after` (the `created_at` and id of the last key of the previous page).
    pub async fn list_api_keys(
        &self,
        account_id: String,
        after: Option<(Timestamp, String)>,
        limit: usize,
    ) -> Result<Vec<ApiKey>, StoreError> {
        on_engine!(self, s => s.list_api_keys(account_id, after, limit).await)
    }

    /// Every key of the account, revoked ones included, oldest first (read a page at a time).
    pub async fn all_api_keys(&self, account_id: String) -> Result<Vec<ApiKey>, StoreError> {
        const PAGE: usize = 1000;
        let mut all: Vec<ApiKey> = Vec::new();
        loop {
            let after = all.last().map(|k| (k.created_at, k.id.clone()));
            let page = self.list_api_keys(account_id.clone(), after, PAGE).await?;
            let done = page.len() < PAGE;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    /// Revokes a key (a revoked key stays revoked; `None`: no such key of that account).
    /// With `keep_one`, the account's last live key is refused ([`StoreError::Conflict`]).
    pub async fn revoke_api_key(
        &self,
        account_id: String,
        key_id: String,
        keep_one: bool,
    ) -> Result<Option<ApiKey>, StoreError> {
        on_engine!(self, s => s.revoke_api_key(account_id, key_id, keep_one).await)
    }

    /// Rewrites every stored endpoint secret sealed under `to` (or in clear when `to` has
    /// no key), opening each with the store's own sealer; all or nothing. Values already in
    /// `to`'s form are checked, not rewritten. Returns how many endpoints were rewritten.
    ///
    /// `alone`: no server may run on the database (a re-encryption by the CLI). On SQLite
    /// the caller's serve lock proves it; on PostgreSQL no node may have sent a heartbeat
    /// within [`postgres::ALIVE_WITHIN`], counted under the same lock of the settings row
    /// that every node's start takes for its own check after joining, so a node starting
    /// meanwhile is either counted or checks the new key after this commits.
    pub async fn reseal_secrets(&self, to: Sealer, alone: bool) -> Result<usize, StoreError> {
        match self {
            Store::Sqlite(s) => s.reseal_secrets(to).await,
            Store::Postgres(s) => s.reseal_secrets(to, alone).await,
        }
    }

    /// The key of `account_id` whose hash is `key_hash`, live or revoked (the CLI names a
    /// key by the key itself).
    pub async fn api_key_by_hash(
        &self,
        account_id: String,
        key_hash: String,
    ) -> Result<Option<ApiKey>, StoreError> {
        on_engine!(self, s => s.api_key_by_hash(account_id, key_hash).await)
    }

    pub async fn account_by_key_hash(
        &self,
        key_hash: String,
    ) -> Result<Option<Account>, StoreError> {
        on_engine!(self, s => s.account_by_key_hash(key_hash).await)
    }

    /// Inserts `ep`, unless its account has `max_endpoints` (not removed) already
    /// ([`StoreError::LimitReached`]) or its plan has no webhooks
    /// ([`StoreError::PlanRequired`]; checked in the same transaction as the insert).
    pub async fn insert_endpoint(
        &self,
        ep: Endpoint,
        max_endpoints: u32,
    ) -> Result<Endpoint, StoreError> {
        on_engine!(self, s => s.insert_endpoint(ep, max_endpoints).await)
    }

    pub async fn list_endpoints(
        &self,
        account_id: String,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Page<Endpoint>, StoreError> {
        on_engine!(self, s => s.list_endpoints(account_id, after, limit).await)
    }

    pub async fn get_endpoint(
        &self,
        account_id: String,
        id: String,
    ) -> Result<Option<Endpoint>, StoreError> {
        on_engine!(self, s => s.get_endpoint(account_id, id).await)
    }

    /// Changes an endpoint with `change` (already validated). Disabling it ends its open
    /// deliveries as `failed`: in the same transaction, but for a long backlog of deliveries
    /// waiting for room on SQLite, whose first 5,000 rows end there and the rest in writes of
    /// their own ([`Store::end_turned_off`]); held ones end with their attempts. Turning it on
    /// again while more than that is left is refused (`Conflict`), so it never delivers them.
    /// Returns `None` when there is no such endpoint.
    pub async fn update_endpoint<F>(
        &self,
        account_id: String,
        id: String,
        change: F,
    ) -> Result<Option<Endpoint>, StoreError>
    where
        F: FnOnce(&mut Endpoint) + Send + 'static,
    {
        on_engine!(self, s => s.update_endpoint(account_id, id, change).await)
    }

    /// Removes an endpoint (kept, marked deleted, so its delivery history stays readable) and
    /// ends its open deliveries as `failed` (as [`Store::update_endpoint`] does).
    pub async fn delete_endpoint(
        &self,
        account_id: String,
        id: String,
    ) -> Result<Option<Endpoint>, StoreError> {
        on_engine!(self, s => s.delete_endpoint(account_id, id).await)
    }

    /// Commits `events` and one delivery per subscribed, enabled endpoint of `account_id`, all
    /// or nothing. `admit(endpoint_id)` says whether the dispatcher takes a delivery at once;
    /// `on_done` runs once the outcome is known, even if the caller stopped waiting.
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
        on_engine!(self, s => s.insert_events(account_id, events, admit, on_done).await)
    }

    /// Like [`Store::insert_events`], under an idempotency key, in the same commit: a repeat
    /// within the key's window creates nothing and answers [`Ingested::Repeat`] (`on_done`
    /// then sees no events); a different request under the key is
    /// [`StoreError::IdempotencyMismatch`].
    pub async fn insert_events_once<A, D>(
        &self,
        account_id: String,
        events: Vec<NewEvent>,
        key: IdempotencyKey,
        admit: A,
        on_done: D,
    ) -> Result<Ingested, StoreError>
    where
        A: FnMut(&str) -> bool + Send + 'static,
        D: FnOnce(Result<&Vec<AcceptedEvent>, &StoreError>) + Send + 'static,
    {
        on_engine!(self, s => s.insert_events_once(account_id, events, key, admit, on_done).await)
    }

    /// The first answer to a request under `key`, if one was accepted within the key's
    /// window (a read: it creates nothing); a different request under the key is
    /// [`StoreError::IdempotencyMismatch`]. [`Store::insert_events_once`] still decides in
    /// its commit, for requests that race.
    pub async fn repeat_of(
        &self,
        account_id: String,
        key: IdempotencyKey,
    ) -> Result<Option<Vec<AcceptedSummary>>, StoreError> {
        on_engine!(self, s => s.repeat_of(account_id, key).await)
    }

    pub async fn get_event(
        &self,
        account_id: String,
        id: String,
    ) -> Result<Option<Event>, StoreError> {
        on_engine!(self, s => s.get_event(account_id, id).await)
    }

    /// The event feed, oldest first, from after `after`: never skips an event that becomes
    /// visible later, never repeats one. Returns the page and, when there may be more, the
    /// position after its last event. With `since` or `until` each engine seeks the events
    /// of about those times, which relies on events being in the feed's order to within
    /// [`RECOVER_MARGIN_MS`] of their stamps, as the clock of stamps keeps them ([`stamps`];
    /// ARCHITECTURE.md, "Stamps keep to the order of the writes").
    /// With a `type`, a page is full unless it is the feed's end, however rare the type:
    /// PostgreSQL reads an index of events by type, SQLite only the stretches of rows that
    /// hold events of the type.
    pub async fn list_events(
        &self,
        account_id: String,
        filter: EventFilter,
        after: Option<FeedPos>,
        limit: usize,
    ) -> Result<(Vec<Event>, Option<FeedPos>), StoreError> {
        on_engine!(self, s => s.list_events(account_id, filter, after, limit).await)
    }

    /// When the account's oldest stored event was created.
    pub async fn oldest_event_at(
        &self,
        account_id: String,
    ) -> Result<Option<Timestamp>, StoreError> {
        on_engine!(self, s => s.oldest_event_at(account_id).await)
    }

    /// Retention: deletes up to `batch` of the account's events created before `before`
    /// whose deliveries have all ended, with their deliveries and attempts. Returns how many
    /// went (fewer than `batch`: nothing older left).
    pub async fn purge(
        &self,
        account_id: String,
        before: Timestamp,
        batch: usize,
    ) -> Result<usize, StoreError> {
        on_engine!(self, s => s.purge(account_id, before, batch).await)
    }

    /// Deletes up to `batch` idempotency keys recorded before `before`.
    pub async fn purge_keys(&self, before: Timestamp, batch: usize) -> Result<usize, StoreError> {
        on_engine!(self, s => s.purge_keys(before, batch).await)
    }

    /// Adds an account's own event type ([`StoreError::Conflict`] if the name is taken).
    pub async fn create_event_type(
        &self,
        account_id: String,
        t: CustomEventType,
    ) -> Result<CustomEventType, StoreError> {
        on_engine!(self, s => s.create_event_type(account_id, t).await)
    }

    /// Up to `limit` of the account's own event types named after `after`, by name in byte
    /// order.
    pub async fn list_event_types(
        &self,
        account_id: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<CustomEventType>, StoreError> {
        on_engine!(self, s => s.list_event_types(account_id, after, limit).await)
    }

    pub async fn get_event_type(
        &self,
        account_id: String,
        name: String,
    ) -> Result<Option<CustomEventType>, StoreError> {
        on_engine!(self, s => s.get_event_type(account_id, name).await)
    }

    /// Replaces the description and schema of an account's event type, if it is still at
    /// version `read_at` (its `updated_at` when read): a change made meanwhile is a
    /// [`StoreError::Conflict`], never silently undone. `None`: no such type.
    pub async fn update_event_type(
        &self,
        account_id: String,
        t: CustomEventType,
        read_at: Timestamp,
    ) -> Result<Option<CustomEventType>, StoreError> {
        on_engine!(self, s => s.update_event_type(account_id, t, read_at).await)
    }

    /// Removes an account's event type; `false` if there was none.
    pub async fn delete_event_type(
        &self,
        account_id: String,
        name: String,
    ) -> Result<bool, StoreError> {
        on_engine!(self, s => s.delete_event_type(account_id, name).await)
    }

    /// The feed position of one event of `account_id` (for `?after=evt_…`).
    pub async fn feed_position(
        &self,
        account_id: String,
        event_id: String,
    ) -> Result<Option<FeedPos>, StoreError> {
        on_engine!(self, s => s.feed_position(account_id, event_id).await)
    }

    /// Deliveries, newest first.
    pub async fn list_deliveries(
        &self,
        account_id: String,
        filter: DeliveryFilter,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Page<Delivery>, StoreError> {
        on_engine!(self, s => s.list_deliveries(account_id, filter, before, limit).await)
    }

    /// One delivery with all its attempts, oldest attempt first.
    pub async fn get_delivery(
        &self,
        account_id: String,
        id: String,
    ) -> Result<Option<(Delivery, Vec<Attempt>)>, StoreError> {
        on_engine!(self, s => s.get_delivery(account_id, id).await)
    }

    /// At start: deliveries a previous process had taken go back to `pending`, due now (on
    /// SQLite those of an endpoint turned off or removed meanwhile end `failed`). On
    /// PostgreSQL only those of dead nodes (silent for longer than `lease`).
    pub async fn release_all_claims(
        &self,
        lease: std::time::Duration,
    ) -> Result<usize, StoreError> {
        match self {
            Store::Sqlite(s) => s.release_all_claims().await,
            Store::Postgres(s) => s.release_all_claims(lease).await,
        }
    }

    /// Whether several nodes may share this store (and need heartbeats and leases).
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// Registers this node in a shared store (nothing to do on SQLite).
    pub async fn join(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => s.join().await,
        }
    }

    /// A stamp for an event accepted now: from a clock that never runs backwards (and on
    /// PostgreSQL follows the database's), see [`stamps`].
    pub fn stamp(&self) -> Timestamp {
        on_engine!(self, s => s.stamps().stamp())
    }

    /// Renews this node's heartbeat; `false` when the other nodes declared it dead.
    pub async fn heartbeat(&self) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(true),
            Store::Postgres(s) => s.heartbeat().await,
        }
    }

    /// Takes over the deliveries of nodes silent for longer than `lease`.
    pub async fn reap(&self, lease: std::time::Duration) -> Result<usize, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(0),
            Store::Postgres(s) => s.reap(lease).await,
        }
    }

    /// Returns once every write queued before it has ended (committed or not): on SQLite
    /// those of requests the API cut off at shutdown, whose jobs outlive them on the writer
    /// thread. Nothing on PostgreSQL: there an ingest write also outlives its request (on a
    /// task of its own), and one that commits after this node left keeps its deliveries
    /// claimed by it until the others take them over after a lease, or it restarts, as
    /// after a crash.
    pub async fn settle(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.settle().await,
            Store::Postgres(_) => Ok(()),
        }
    }

    /// Other nodes silent for longer than `silent`, not yet declared dead, that still hold
    /// deliveries (none on SQLite: one node, whose previous life's are released at start).
    pub async fn silent_holders(
        &self,
        silent: std::time::Duration,
    ) -> Result<Vec<SilentHolder>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(Vec::new()),
            Store::Postgres(s) => s.silent_holders(silent).await,
        }
    }

    /// Gives back this node's deliveries at shutdown, for the other nodes.
    pub async fn leave(&self) -> Result<usize, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(0),
            Store::Postgres(s) => s.leave().await,
        }
    }

    /// Other nodes' wake-ups (`None` on SQLite: there are no other nodes).
    pub async fn listen(&self) -> Result<Option<Notices>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(s) => s.listen().await.map(Some),
        }
    }

    /// An endpoint as the dispatcher needs it, removed ones included (as disabled).
    pub async fn endpoint_for_dispatch(&self, id: String) -> Result<Option<Endpoint>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(s) => s.endpoint_for_dispatch(id).await,
        }
    }

    /// Takes up to `room(endpoint_id)` due deliveries of each enabled endpoint (and a bounded
    /// number in all) and marks them `delivering`.
    pub async fn claim_due<R>(
        &self,
        now: Timestamp,
        room: R,
    ) -> Result<Vec<DueDelivery>, StoreError>
    where
        R: Fn(&str) -> usize + Send + 'static,
    {
        on_engine!(self, s => s.claim_due(now, room).await)
    }

    /// When the earliest `pending` delivery falls due after `after` (the dispatcher's last
    /// claim: what was due then and not taken waits for room, not for a time). On SQLite,
    /// of enabled endpoints only, and an endpoint's deliveries waiting for room count as
    /// due from when they began to wait.
    pub async fn next_due_at(&self, after: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        on_engine!(self, s => s.next_due_at(after).await)
    }

    /// Records attempts and moves their deliveries on, in one transaction.
    pub async fn record_attempts(&self, records: Vec<AttemptRecord>) -> Result<(), StoreError> {
        on_engine!(self, s => s.record_attempts(records).await)
    }

    /// Keeps until when an endpoint asked to be left alone (a long `Retry-After`), so that a
    /// restart keeps to it: the later of `until` and what is kept. With `forget`, forgets it
    /// if it is no later than `until` (what this node kept: a later one stays).
    pub async fn endpoint_hold(
        &self,
        endpoint_id: String,
        until: Timestamp,
        forget: bool,
    ) -> Result<(), StoreError> {
        on_engine!(self, s => s.endpoint_hold(endpoint_id, until, forget).await)
    }

    /// The enabled endpoints that asked to be left alone until after `now`, and until when.
    pub async fn endpoint_holds(
        &self,
        now: Timestamp,
    ) -> Result<Vec<(String, Timestamp)>, StoreError> {
        on_engine!(self, s => s.endpoint_holds(now).await)
    }

    /// Makes every `pending` delivery of an endpoint due now (the endpoint is back).
    pub async fn pull_forward(&self, endpoint_id: String) -> Result<usize, StoreError> {
        on_engine!(self, s => s.pull_forward(endpoint_id).await)
    }

    /// Ends the deliveries that endpoints turned off or removed left `pending`, and returns
    /// how many. A turning off ends them in its own transaction on PostgreSQL; on SQLite it
    /// ends at most a batch of an outage's backlog, and this the rest, a batch a write.
    pub async fn end_turned_off(&self) -> Result<usize, StoreError> {
        match self {
            Store::Sqlite(s) => s.end_turned_off().await,
            Store::Postgres(_) => Ok(0),
        }
    }

    /// Ends as `failed` the `pending` deliveries of an endpoint created, and last changed,
    /// before `before` (a delivery queued again by hand gets the whole schedule again).
    ///
    /// On PostgreSQL, unless `whole`, only those also due before `before`: the index of
    /// pending rows by due time then bounds the sweep by about what it ends. A whole one
    /// reads the endpoint's pending rows created before `before` (through the index of
    /// pending rows by age): about what it ends, not the outage's backlog, except for rows
    /// created before `before` and changed since, which it reads without ending (a large
    /// recovery on an endpoint still down: every whole sweep reads it again until the rows
    /// end or leave `pending`). A row
    /// made at ingest or given back is due from its last change, so the two agree on it; a
    /// retry is due its wait after its attempt (a step of the schedule with its jitter, or a
    /// longer `Retry-After`), and a row made due when a breaker closed for a while is due from
    /// then: a later sweep ends those once that wait has passed the cutoff too, or the next
    /// whole one (at start, then hourly) sooner. SQLite's sweep is bounded either way.
    pub async fn fail_stale(
        &self,
        endpoint_id: String,
        before: Timestamp,
        whole: bool,
    ) -> Result<usize, StoreError> {
        match self {
            Store::Sqlite(s) => s.fail_stale(endpoint_id, before).await,
            Store::Postgres(s) => s.fail_stale(endpoint_id, before, whole).await,
        }
    }

    /// One step of a recovery that began at `started`: looks at the next `batch`
    /// deliveries of the account's endpoint after row `after` (in row order, so each is
    /// looked at once, and one queued here that fails again is not taken twice), and queues
    /// again those `failed` and created at or after `since`: `pending`, due now, under a new
    /// claim. They resume their retry schedule; one that had used it up gets one more
    /// attempt. The walk ends at the first delivery created after `started`, so ingest
    /// meanwhile cannot keep it going. Returns how many were queued and where to go on from
    /// (`None`: done), or why none can be (no such endpoint, or it is disabled).
    pub async fn recover(
        &self,
        account_id: String,
        endpoint_id: String,
        since: Timestamp,
        started: Timestamp,
        after: i64,
        batch: usize,
    ) -> Result<Result<(usize, Option<i64>), RetryRefusal>, StoreError> {
        on_engine!(self, s => s.recover(account_id, endpoint_id, since, started, after, batch).await)
    }

    /// Where a recovery of the account's endpoint's deliveries created since `since` starts its walk
    /// ([`Store::recover`]'s `after`): the row before the first created at most
    /// [`RECOVER_MARGIN_MS`] before `since`, or 0. So a recovery of the last hour walks the
    /// last hour's rows, not months of the endpoint's history first.
    ///
    /// A binary search over row numbers, each probe one seek into the endpoint's index of
    /// deliveries (at most about 64, whatever the history). It relies on rows being numbered
    /// about in the order of their creation times, which the clock of stamps keeps to within
    /// the margin ([`stamps`]). A clock set back by more than [`stamps::HOLD_MAX_MS`], or on
    /// PostgreSQL an ingest statement that waited longer than the margin for an endpoint's
    /// row lock, could leave a delivery created since `since` before the start, unqueued.
    pub async fn recover_from(
        &self,
        account_id: String,
        endpoint_id: String,
        since: Timestamp,
    ) -> Result<i64, StoreError> {
        let cutoff = since.0.saturating_sub(RECOVER_MARGIN_MS);
        // Whether the first row after `after` was created at or after the cutoff (true past
        // the last row): false up to the last row before the first such one, then true.
        let last = self
            .last_delivery_row(account_id.clone(), endpoint_id.clone())
            .await?;
        let (mut lo, mut hi) = (0, last);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self
                .first_delivery_after(account_id.clone(), endpoint_id.clone(), mid)
                .await?
            {
                Some((row, created_at)) if created_at < cutoff => lo = (mid + 1).max(row),
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// The account's endpoint's last delivery's row number (0 if none).
    async fn last_delivery_row(
        &self,
        account_id: String,
        endpoint_id: String,
    ) -> Result<i64, StoreError> {
        on_engine!(self, s => s.last_delivery_row(account_id, endpoint_id).await)
    }

    /// The row number and creation time of the account's endpoint's first delivery after row
    /// `after`.
    async fn first_delivery_after(
        &self,
        account_id: String,
        endpoint_id: String,
        after: i64,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        on_engine!(self, s => s.first_delivery_after(account_id, endpoint_id, after).await)
    }

    /// Takes one delivery for a manual retry, whatever its state: one this node holds
    /// already (`delivering`) is taken over under a new claim (see [`RetryClaim`]).
    pub async fn claim_for_retry(
        &self,
        account_id: String,
        delivery_id: String,
    ) -> Result<Result<RetryClaim, RetryRefusal>, StoreError> {
        on_engine!(self, s => s.claim_for_retry(account_id, delivery_id).await)
    }
}

/// How much earlier than a recovery's `since` its walk starts ([`Store::recover_from`]).
pub const RECOVER_MARGIN_MS: i64 = 60_000;

/// Cuts `rows` (fetched with one extra) to a page, with the position after its last item.
pub(crate) fn page<T>(mut rows: Vec<(T, i64)>, limit: usize) -> Page<T> {
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|(_, seq)| *seq)
    } else {
        None
    };
    Page {
        items: rows.into_iter().map(|(t, _)| t).collect(),
        next,
    }
}

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error while {context}: {source}")]
    Db {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("PostgreSQL error while {context}: {}", postgres::describe(.source))]
    Pg {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("stored JSON is corrupt while {context}: {source}")]
    Json {
        context: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("the database writer has stopped")]
    WriterGone,
    /// The idempotency key was used, within its window, for a different request.
    #[error("the idempotency key {0:?} was used for a different request")]
    IdempotencyMismatch(String),
    /// The database is unreachable or asked for a retry (deadlock, restart): try again.
    #[error("the database is unavailable for a moment: {0}")]
    Unavailable(String),
    /// The database's storage is full: nothing was written. Writes succeed again once
    /// room is made, without a restart.
    #[error("the database's storage is full: {0}")]
    Full(String),
    /// A write's answer was lost with its connection, and the database could not say in
    /// time whether it committed: its caller must be told neither that it was nor that it
    /// was not (the API closes the connection without an answer).
    #[error("the database could not say whether a write committed: {0}")]
    OutcomeUnknown(String),
    #[error("I/O error while {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the database is in use by another hookline process ({0} is held: a `hookline serve`, \
         or a command migrating its schema)"
    )]
    Locked(String),
    #[error("a write transaction failed to commit: {0}")]
    Commit(String),
    /// An account's plan does not allow more of something.
    #[error("{0}")]
    LimitReached(String),
    /// The account's plan does not include webhooks.
    #[error("the account's plan does not include webhooks")]
    PlanRequired,
    /// An endpoint secret could not be sealed or opened (a missing or wrong encryption key).
    #[error("endpoint secret: {0}")]
    Sealing(String),
}

impl StoreError {
    /// Whether the database refused the data a write carried (a constraint, a value it
    /// cannot store) rather than the write as such: the same write will be refused again,
    /// however often it is tried.
    pub fn is_refusal(&self) -> bool {
        match self {
            StoreError::Pg {
                source: sqlx::Error::Database(db),
                ..
            } => db
                .code()
                // Data exceptions (22: a byte sequence a text cannot hold, a value out of
                // range) and integrity constraints (23).
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
            StoreError::Db {
                source: rusqlite::Error::SqliteFailure(f, _),
                ..
            } => matches!(
                f.code,
                rusqlite::ErrorCode::ConstraintViolation
                    | rusqlite::ErrorCode::TypeMismatch
                    | rusqlite::ErrorCode::TooBig
                    | rusqlite::ErrorCode::ParameterOutOfRange
            ),
            _ => false,
        }
    }

    /// Whether the database's storage is full (SQLite's `SQLITE_FULL`, PostgreSQL's
    /// `53100 disk_full`): the write was not made, and will be once room is made.
    pub fn is_full(&self) -> bool {
        match self {
            StoreError::Full(_) => true,
            StoreError::Db {
                source: rusqlite::Error::SqliteFailure(f, _),
                ..
            } => f.code == rusqlite::ErrorCode::DiskFull,
            StoreError::Pg {
                source: sqlx::Error::Database(db),
                ..
            } => db.code().as_deref() == Some("53100"),
            _ => false,
        }
    }

    /// The same failure, for one of several callers that shared the work that failed.
    pub fn for_each_caller(&self) -> StoreError {
        match self {
            StoreError::Full(m) => StoreError::Full(m.clone()),
            full if full.is_full() => StoreError::Full(full.to_string()),
            StoreError::Pg { source, .. } if postgres::is_transient(source) => {
                StoreError::Unavailable(self.to_string())
            }
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::OutcomeUnknown(m) => StoreError::OutcomeUnknown(m.clone()),
            StoreError::WriterGone => StoreError::WriterGone,
            other => StoreError::Commit(other.to_string()),
        }
    }
}

/// Why an endpoint was disabled when its account moved to a plan without webhooks.
pub(crate) const PLAN_DISABLED: &str = "the account's plan does not include webhooks";
/// Why an endpoint was disabled when it answered `410 Gone`.
pub(crate) const GONE_REASON: &str = "the endpoint answered 410 Gone";

/// The error a delivery ended by its endpoint's turning off carries: turned off by its
/// owner, removed, or answered `410` (a plan's turning off gives [`PLAN_DISABLED`]).
pub(crate) const OFF_DISABLED: &str = "endpoint disabled";
pub(crate) const OFF_REMOVED: &str = "endpoint removed";
pub(crate) const OFF_GONE: &str = "endpoint answered 410 Gone";

/// Why the deliveries of an endpoint that is off ended, from its row: removed, or disabled
/// for `disabled_reason` (see [`OFF_DISABLED`]).
pub(crate) fn off_reason(removed: bool, disabled_reason: Option<&str>) -> &'static str {
    match disabled_reason {
        _ if removed => OFF_REMOVED,
        Some(PLAN_DISABLED) => PLAN_DISABLED,
        Some(GONE_REASON) => OFF_GONE,
        _ => OFF_DISABLED,
    }
}

/// Refuses an endpoint write for an account whose stored plan (`None`: no such account)
/// does not include webhooks.
pub(crate) fn require_webhooks(stored_plan: Option<&str>) -> Result<(), StoreError> {
    match stored_plan.and_then(Plan::parse) {
        Some(plan) if plan.includes_webhooks() => Ok(()),
        _ => Err(StoreError::PlanRequired),
    }
}

/// The account holds `max` live keys already.
pub(crate) fn too_many_keys(max: usize) -> StoreError {
    StoreError::Conflict(format!(
        "an account holds at most {max} live keys; revoke one first"
    ))
}

/// Adds a context sentence to database errors.
pub(crate) trait Context<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, rusqlite::Error> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Db { context, source })
    }
}

impl<T> Context<T> for Result<T, serde_json::Error> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Json { context, source })
    }
}

/// An event to insert, already validated.
#[derive(Debug)]
pub struct NewEvent {
    pub id: String,
    pub event_type: String,
    pub data: Box<serde_json::value::RawValue>,
    pub created_at: Timestamp,
    /// The envelope receivers get, built once before the commit.
    pub payload: bytes::Bytes,
    /// `created_at` is ingest's stamp of acceptance ([`Store::stamp`]): a write that starts
    /// more than [`stamps::FRESH_MS`] after it stamps the event again and rebuilds its
    /// envelope ([`NewEvent::refresh_stamps`]). False for an event given a time of its own.
    pub restamp: bool,
}

impl NewEvent {
    /// An event to be stamped at acceptance: `created_at` from [`Store::stamp`], and its
    /// envelope built from it.
    pub fn accepted(
        id: String,
        event_type: String,
        data: Box<serde_json::value::RawValue>,
        created_at: Timestamp,
    ) -> NewEvent {
        let mut ev = NewEvent {
            id,
            event_type,
            data,
            created_at,
            payload: bytes::Bytes::new(),
            restamp: true,
        };
        ev.build_envelope();
        ev
    }

    /// Builds the envelope receivers get from the event as it is now.
    fn build_envelope(&mut self) {
        self.payload = bytes::Bytes::from(crate::model::envelope(
            &self.id,
            &self.event_type,
            self.created_at,
            self.data.get(),
        ));
    }

    /// Called by each engine just before the events' write: an event stamped at acceptance
    /// whose write starts more than [`stamps::FRESH_MS`] later (it waited in a queue or for
    /// a connection) is stamped again, and its envelope rebuilt, so that stamps keep to the
    /// order of the writes ([`stamps`]). One reading of the clock for them all.
    pub(crate) fn refresh_stamps(events: &mut [NewEvent], stamps: &stamps::Stamps) {
        let stale_before = stamps.now() - stamps::FRESH_MS;
        for ev in events
            .iter_mut()
            .filter(|ev| ev.restamp && ev.created_at.0 < stale_before)
        {
            ev.created_at = stamps.stamp();
            ev.build_envelope();
        }
    }
}

/// One delivery created at ingest.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    /// The delivery's row number in the store (a stable handle for fast updates).
    pub row: i64,
    pub endpoint: Arc<Endpoint>,
    /// Taken by this process's dispatcher at once (`delivering`); otherwise `pending`, due
    /// now, for the dispatcher's poller to take when it has room.
    pub claimed: bool,
}

/// An ingest request's idempotency key: a repeat of the same request within `window_ms`
/// gets the first one's answer and creates nothing; a different request under the same
/// key is refused.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    /// A digest of the request (types and `data` of its events).
    pub request_hash: String,
    pub window_ms: i64,
}

/// What a key's record (its request's digest, the answer, when it was taken), if any,
/// says of a request under `key` at `now`: nothing (no record, or past the key's window:
/// the request may take the key over), the first answer to the same request, or a
/// mismatch for a different one.
pub(crate) fn recorded_answer(
    record: Option<(String, String, i64)>,
    key: &IdempotencyKey,
    now: i64,
) -> Result<Option<Vec<AcceptedSummary>>, StoreError> {
    let Some((hash, accepted, created_at)) = record else {
        return Ok(None);
    };
    if now - created_at >= key.window_ms {
        return Ok(None);
    }
    if hash != key.request_hash {
        return Err(StoreError::IdempotencyMismatch(key.key.clone()));
    }
    serde_json::from_str(&accepted)
        .map(Some)
        .ctx("reading an idempotency record")
}

/// What an ingest request with an idempotency key got.
#[derive(Debug)]
pub enum Ingested {
    /// Committed now.
    New(Vec<AcceptedEvent>),
    /// A repeat: what the first request under the key was accepted as.
    Repeat(Vec<AcceptedSummary>),
}

/// An accepted event as recorded under its idempotency key (and answered to a repeat).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AcceptedSummary {
    pub id: String,
    pub event_type: String,
    pub created_at: i64,
    /// (delivery id, endpoint id)
    pub deliveries: Vec<(String, String)>,
}

impl From<&AcceptedEvent> for AcceptedSummary {
    fn from(a: &AcceptedEvent) -> Self {
        AcceptedSummary {
            id: a.event.id.clone(),
            event_type: a.event.event_type.clone(),
            created_at: a.event.created_at.0,
            deliveries: a
                .deliveries
                .iter()
                .map(|d| (d.id.clone(), d.endpoint.id.clone()))
                .collect(),
        }
    }
}

/// An event committed with its deliveries.
#[derive(Debug)]
pub struct AcceptedEvent {
    pub event: Arc<Event>,
    pub payload: bytes::Bytes,
    pub deliveries: Vec<NewDelivery>,
}

/// A delivery the dispatcher has taken (status `delivering`) and must attempt.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub delivery_id: String,
    /// The delivery's row number in the store (a stable handle for fast updates).
    pub row: i64,
    /// Which claim of the delivery this is: an outcome of an older claim (an attempt that
    /// outlived its endpoint being turned off and on, say) cannot move it on.
    pub claim: i64,
    /// Attempts made before this one.
    pub attempts: u32,
    pub event_id: String,
    /// The exact body to send (the event's envelope), shared by all of the event's deliveries.
    pub payload: bytes::Bytes,
    pub endpoint: Arc<Endpoint>,
    /// A manual retry of a delivery that had ended: a failure ends it again rather than
    /// continuing the retry schedule.
    pub manual_after_end: bool,
    /// A manual retry (`POST /v1/deliveries/{id}/retry`): one attempt now, whatever the
    /// endpoint's circuit breaker says.
    pub manual: bool,
}

/// What an attempt decided for its delivery.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded,
    /// Failed; try again at this time.
    RetryAt(Timestamp),
    /// Failed for good (retries exhausted).
    Failed,
    /// The endpoint answered 410 Gone: disable it and end all its open deliveries.
    Gone,
    /// Not attempted (the endpoint's circuit breaker is open): back to `pending`, due now,
    /// for when the endpoint is back.
    Released,
}

/// The result of one attempt, to record.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: String,
    /// The delivery's row number (`DueDelivery::row`).
    pub row: i64,
    /// The claim the attempt was made under (`DueDelivery::claim`).
    pub claim: i64,
    /// The version (`updated_at`, ms) of the endpoint the attempt was made with.
    pub endpoint_version: i64,
    pub endpoint_id: String,
    /// `None` for a delivery given back without an attempt ([`Outcome::Released`]).
    pub attempt: Option<crate::model::Attempt>,
    pub outcome: Outcome,
}

/// A delivery taken for a manual retry.
#[derive(Debug)]
pub struct RetryClaim {
    pub due: DueDelivery,
    /// The claim under which this node held the delivery already (`delivering`: queued,
    /// waiting for its endpoint's pace or a free lane, or in flight) when the retry took it
    /// over. A job under that claim not yet handed to a lane is not made (the retry's is).
    /// One in flight goes on: its failure no longer moves the delivery (its claim is not the
    /// delivery's), while a success or a `410` still counts, as any answer would. Both
    /// attempts are numbered from the same recorded attempts: the one recorded second takes
    /// the next number, so the history keeps both.
    pub replaces: Option<i64>,
}

/// Why a manual retry could not be queued.
#[derive(Debug)]
pub enum RetryRefusal {
    NotFound,
    /// The endpoint was removed or is disabled.
    EndpointDisabled,
    /// Another node holds the delivery (PostgreSQL) and attempts it as its turn comes.
    AlreadyDelivering,
}

/// Filters of the event feed (`GET /v1/events`).
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub event_type: Option<String>,
    /// Created at or after (ms).
    pub since: Option<i64>,
    /// Created before (ms).
    pub until: Option<i64>,
}

/// A position in an account's event feed: the order events became visible in. SQLite:
/// `(0, seq)` (its single writer commits in `seq` order). PostgreSQL: `(xid, seq)` of the
/// inserting transaction (see `PgStore::list_events`).
pub type FeedPos = (i64, i64);

/// Filters for delivery lists.
#[derive(Debug, Default, Clone)]
pub struct DeliveryFilter {
    pub event_id: Option<String>,
    pub endpoint_id: Option<String>,
    pub status: Option<crate::model::DeliveryStatus>,
}

/// One page of a list, with the position after its last item.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<i64>,
}
