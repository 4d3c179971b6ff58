//! Hookline: durable, signed, real-time webhook delivery.
//!
//! The modules, from the outside in (each depends only on those after it):
//! [`server`] wires everything; [`api`] holds thin HTTP handlers (the account API under
//! `/v1`, the operator's under `/admin/v1`); [`ratelimit`] meters each account's ingest;
//! [`ingest`] validates and commits events, checking `data` against the [`catalogue`] of
//! event types; [`dispatch`] queues, sends and retries; [`accounts`] issues and revokes
//! keys; [`store`] is the only door to the database (it also seals endpoint secrets at
//! rest); [`model`] is plain data. [`bench`] is the
//! load generator and receiver sink behind `hookline bench`; [`retention`] deletes what
//! is older than its plan's retention; [`telemetry`] counts what happens for
//! `GET /metrics`. Signing lives in the
//! `hookline-signing` crate. See ARCHITECTURE.md for the map and the invariants.

pub mod accounts;
pub mod api;
pub mod bench;
pub mod catalogue;
pub mod dispatch;
pub mod ingest;
pub mod model;
pub mod ratelimit;
pub mod retention;
pub mod server;
pub mod store;
pub mod telemetry;
