//! The store: the only door to the database.
//!
//! Every query is scoped by account where a caller acts for one; the dispatcher's internal
//! operations (claiming due deliveries, recording attempts) are keyed by delivery id.
//!
//! Today there is one engine, embedded SQLite ([`sqlite::SqliteStore`]). Its writes go through
//! one writer thread that commits whatever is queued in one transaction (group commit): a
//! caller's write returns only after the fsync of the commit that holds it.

pub mod sqlite;

use crate::model::{Endpoint, Event, Timestamp};
use std::sync::Arc;

pub use sqlite::SqliteStore as Store;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error while {context}: {source}")]
    Db {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
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
    #[error("I/O error while {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the data directory is in use by another `hookline serve` ({0})")]
    Locked(String),
    #[error("a write transaction failed to commit: {0}")]
    Commit(String),
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

/// Why a manual retry could not be queued.
#[derive(Debug)]
pub enum RetryRefusal {
    NotFound,
    /// The endpoint was removed or is disabled.
    EndpointDisabled,
    /// The delivery is already taken by the dispatcher and will be attempted shortly.
    AlreadyDelivering,
}

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
