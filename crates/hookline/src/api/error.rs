//! API errors: every failure is `{"error": {"code", "message"}}` with the contract's status.

use crate::catalogue::FieldError;
use crate::ingest::IngestError;
use crate::store::StoreError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
    /// For `422`: every failing field.
    pub details: Vec<FieldError>,
    /// No answer at all: the connection is closed instead (see [`AbortConnection`]).
    pub abort_connection: bool,
}

/// Set on a response that must not be sent: the server closes the connection without
/// answering (`server::serve_http`). Only for a request whose outcome nobody can tell (a
/// write whose answer the database lost): any status would claim an outcome, and a `5xx`
/// says "not accepted". A client that sees its connection close mid-request treats the
/// request as of unknown outcome, as after a crash, and retries it under its idempotency
/// key.
#[derive(Clone, Copy, Debug)]
pub struct AbortConnection;

impl std::fmt::Display for AbortConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closed without an answer: the request's outcome is unknown")
    }
}

impl std::error::Error for AbortConnection {}

/// The body of every error.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case code, e.g. `invalid_field`.
    pub code: String,
    /// A human sentence.
    pub message: String,
    /// For `422`: every failing field, by path (`data.message.recipient`,
    /// `events[3].type`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            details: Vec::new(),
            abort_connection: false,
        }
    }
    /// No answer: the connection is closed (the request's outcome is unknown).
    pub fn outcome_unknown() -> Self {
        let mut e = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "outcome_unknown",
            "whether the request was accepted is unknown",
        );
        e.abort_connection = true;
        e
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    /// `403`: the account's plan does not include `what`.
    pub fn plan_required(what: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "plan_required",
            format!("{what} needs the Pro or Business plan; this account is on Free"),
        )
    }
    /// `429`: over the account's rate; try again in `wait`.
    pub fn rate_limited(message: impl Into<String>, wait: std::time::Duration) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        e.retry_after_secs = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        e
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the server failed; nothing was accepted",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.abort_connection {
            let mut resp = self.status.into_response();
            resp.extensions_mut().insert(AbortConnection);
            return resp;
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                details: self.details,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // The body was not read to its end: the connection cannot carry another request,
        // and the client hears so before it would find the connection closed.
        if matches!(
            self.status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
        ) {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(msg) => ApiError::new(StatusCode::CONFLICT, "conflict", msg),
            StoreError::IdempotencyMismatch(key) => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                format!(
                    "the idempotency key {key:?} was used for a different request; nothing was \
                     accepted"
                ),
            ),
            full if full.is_full() => {
                log_full(&full);
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_full",
                    "the server's storage is full; the request was not accepted: try again \
                     later",
                );
                err.retry_after_secs = Some(STORAGE_FULL_RETRY_SECS);
                err
            }
            StoreError::WriterGone => unavailable(
                &e,
                "the server is shutting down; the request was not accepted",
            ),
            StoreError::Pg { ref source, .. } if crate::store::postgres::is_transient(source) => {
                unavailable(&e, DB_UNAVAILABLE)
            }
            StoreError::Unavailable(_) => unavailable(&e, DB_UNAVAILABLE),
            StoreError::OutcomeUnknown(_) => {
                tracing::error!(error = %e, "closing a connection without an answer");
                ApiError::outcome_unknown()
            }
            StoreError::PlanRequired => ApiError::plan_required("this"),
            StoreError::LimitReached(msg) => {
                ApiError::new(StatusCode::FORBIDDEN, "plan_limit_reached", msg)
            }
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::internal()
            }
        }
    }
}

/// Logs a write refused for a full disk, at most every 10 s (with how many went unlogged
/// since): every request meets it while it lasts, and the log may be on the same disk.
fn log_full(e: &StoreError) {
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
    static LAST: AtomicI64 = AtomicI64::new(i64::MIN);
    static UNLOGGED: AtomicU64 = AtomicU64::new(0);
    let now = crate::model::Timestamp::now().0;
    let last = LAST.load(Relaxed);
    if now.saturating_sub(last) >= 10_000
        && LAST.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
    {
        let unlogged = UNLOGGED.swap(0, Relaxed);
        tracing::error!(error = %e, refused_unlogged = unlogged, "a write refused: the database's storage is full");
    } else {
        UNLOGGED.fetch_add(1, Relaxed);
    }
}

/// The wait a `503 storage_full` asks for: room is made by an operator, not in a moment.
const STORAGE_FULL_RETRY_SECS: u64 = 30;

const DB_UNAVAILABLE: &str =
    "the database is unavailable for a moment; the request was not accepted";

/// `503` with `Retry-After`: nothing was accepted, try again shortly.
fn unavailable(e: &StoreError, message: &'static str) -> ApiError {
    tracing::error!(error = %e, "store unavailable");
    let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
    err.retry_after_secs = Some(1);
    err
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Invalid(details) => {
                let mut err = ApiError::unprocessable(crate::ingest::describe(&details));
                err.details = details;
                err
            }
            IngestError::Store(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_failure(code: std::ffi::c_int) -> StoreError {
        StoreError::Db {
            context: "inserting an event",
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        }
    }

    #[test]
    fn a_full_disk_is_a_503_storage_full_also_for_every_caller_of_a_shared_write() {
        for e in [
            sqlite_failure(rusqlite::ffi::SQLITE_FULL),
            sqlite_failure(rusqlite::ffi::SQLITE_FULL).for_each_caller(),
        ] {
            assert!(e.is_full(), "{e}");
            let answer = ApiError::from(e);
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(answer.code, "storage_full");
            assert_eq!(answer.retry_after_secs, Some(STORAGE_FULL_RETRY_SECS));
        }
        // Another database error is no full disk.
        let other = sqlite_failure(rusqlite::ffi::SQLITE_CORRUPT);
        assert!(!other.is_full());
        assert!(!other.for_each_caller().is_full());
        assert_eq!(
            ApiError::from(other).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
