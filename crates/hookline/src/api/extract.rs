//! Extractors that turn requests into typed input, answering bad input with [`ApiError`].

use super::AppState;
use super::error::ApiError;
use crate::accounts::hash_api_key;
use crate::model::{Account, Timestamp, clipped};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The account of the request's API key (`Authorization: Bearer <key>`).
pub struct Auth(pub Account);

/// Keys verified in the last few seconds, so that a busy producer does not cost a database
/// read per request. Entries live `ttl`; only hits of the database are cached, never misses.
pub struct AuthCache {
    entries: Mutex<HashMap<String, (Account, Instant)>>,
    ttl: Duration,
    /// Bumped by every [`AuthCache::forget_account`]: a lookup that began before one does
    /// not cache what it read (it may be the key just revoked).
    epoch: std::sync::atomic::AtomicU64,
}

const AUTH_CACHE_MAX: usize = 10_000;

impl AuthCache {
    pub fn new(ttl: Duration) -> Self {
        AuthCache {
            entries: Mutex::new(HashMap::new()),
            ttl,
            epoch: Default::default(),
        }
    }

    fn get(&self, key_hash: &str) -> Option<Account> {
        let entries = self.entries.lock().ok()?;
        let (account, at) = entries.get(key_hash)?;
        (at.elapsed() < self.ttl).then(|| account.clone())
    }

    /// Drops every cached key of `account_id` (after a revocation or a plan change), so this
    /// node asks the database again at once. Other nodes follow within the TTL.
    pub fn forget_account(&self, account_id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            entries.retain(|_, (a, _)| a.id != account_id);
        }
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Caches a lookup that began at `epoch`, unless an account was forgotten since.
    fn put(&self, key_hash: String, account: Account, epoch: u64) {
        if let Ok(mut entries) = self.entries.lock() {
            if self.epoch() != epoch {
                return;
            }
            if entries.len() >= AUTH_CACHE_MAX {
                entries.clear();
            }
            entries.insert(key_hash, (account, Instant::now()));
        }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <api key>"))?;
        let key = header
            .to_str()
            .ok()
            .and_then(bearer_token)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <api key>"))?;
        let hash = hash_api_key(key);
        if let Some(account) = state.auth_cache.get(&hash) {
            return Ok(Auth(account));
        }
        let epoch = state.auth_cache.epoch();
        match state.store.account_by_key_hash(hash.clone()).await? {
            Some(account) => {
                state.auth_cache.put(hash, account.clone(), epoch);
                Ok(Auth(account))
            }
            None => Err(ApiError::unauthorized("invalid API key")),
        }
    }
}

/// A JSON body: `400` when it is not JSON, `413` over the size limit, `422` when it is JSON of
/// the wrong shape.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        parse_json(&read_body(req, state).await?).map(JsonBody)
    }
}

/// A JSON body that may be left out (empty or only whitespace: `None`); otherwise as
/// [`JsonBody`].
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(None));
        }
        parse_json(&bytes).map(|v| OptionalJsonBody(Some(v)))
    }
}

/// The body's bytes: `413` over the size limit, `408` when it does not arrive within the
/// body's time (the rest of it is not read: the connection closes after the answer), `400`
/// when it cannot be read.
async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let limit = state.body_read_timeout;
    let read = tokio::time::timeout(limit, Bytes::from_request(req, state))
        .await
        .map_err(|_| {
            ApiError::new(
                http::StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request's body did not arrive within {} ms; nothing was done",
                    limit.as_millis()
                ),
            )
        })?;
    read.map_err(|e| {
        if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the body is over the limit of {} bytes",
                    state.max_body_bytes
                ),
            )
        } else {
            ApiError::bad_request("unreadable_body", e.body_text())
        }
    })
}

/// Parses a JSON object: `400` for a body that is not JSON, `422` for JSON of the wrong shape
/// (also for JSON that is not an object). A wrong shape names where it is
/// (`events[412].data: missing field …`), which a line and column of a minified batch would
/// not.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every body the API takes is an object. serde would also take an array in a struct's
    // place (its fields in order), which no client means.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(malformed(bytes)
            .unwrap_or_else(|| ApiError::unprocessable("the body must be a JSON object")));
    }
    // Whether the body is JSON at all decides between `400` and `422`, not the category of
    // serde's error: serde stops at the first wrong type it meets, before a syntax error
    // further on, and it counts some wrong values of valid JSON (a number where a name of
    // a few is expected, a number out of range) as syntax. The body is read again only on
    // an error.
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        malformed(bytes).unwrap_or_else(|| wrong_shape(&e.path().to_string(), e.inner()))
    })?;
    // Nothing but whitespace after the value.
    de.end()
        .map_err(|e| malformed(bytes).unwrap_or_else(|| wrong_shape(".", &e)))?;
    Ok(value)
}

/// `400` for a body that is not JSON (not UTF-8, or not one JSON value alone); `None` for
/// one that is, whatever its shape.
fn malformed(bytes: &[u8]) -> Option<ApiError> {
    let why = match std::str::from_utf8(bytes) {
        Err(e) => format!("the body is not UTF-8: {e}"),
        Ok(_) => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            match serde::de::IgnoredAny::deserialize(&mut de).and_then(|_| de.end()) {
                Ok(()) => return None,
                Err(e) => format!("the body is not valid JSON: {}", clipped(&e.to_string())),
            }
        }
    };
    Some(ApiError::bad_request("malformed_json", why))
}

/// `422` for JSON of the wrong shape at `path` (`.`: the whole body).
fn wrong_shape(path: &str, e: &serde_json::Error) -> ApiError {
    let said = clipped(&e.to_string());
    if path == "." {
        ApiError::unprocessable(said)
    } else {
        ApiError::unprocessable(format!("{}: {said}", clipped(path)))
    }
}

/// The credentials of an `Authorization: Bearer <token>` header's value, trimmed. The
/// scheme's name is case-insensitive (RFC 9110, 11.1): `bearer` and `BEARER` do too.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A query string; a malformed one is a `400`.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::bad_request("invalid_query", clipped(&e.body_text())))
    }
}

/// The path's parameters (ids, names). One that is not UTF-8 is a `400`; one that holds a
/// NUL (`%00`) names nothing, a `404` (no id or name has one, and a PostgreSQL text value
/// cannot hold one: it would be a database error).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // A NUL in a parameter can only come from `%00` in the raw path.
        if parts.uri.path().contains("%00") {
            return Err(ApiError::not_found("resource: no id or name holds a NUL"));
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::bad_request("invalid_path", clipped(&e.body_text())))
    }
}

/// `?limit=&cursor=`.
#[derive(Deserialize, utoipa::IntoParams, Debug, Default)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    pub fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(50),
            Some(n) if (1..=1000).contains(&n) => Ok(n as usize),
            Some(n) => Err(ApiError::bad_request(
                "invalid_query",
                format!("limit must be between 1 and 1000, not {n}"),
            )),
        }
    }
    pub fn position(&self) -> Result<Option<i64>, ApiError> {
        self.cursor.as_deref().map(decode_cursor).transpose()
    }

    /// The position of a list ordered by name: the last name of the previous page.
    pub fn name_position(&self) -> Result<Option<String>, ApiError> {
        self.cursor
            .as_deref()
            .map(|c| decode_text_cursor('n', c))
            .transpose()
    }

    /// The position of a list ordered by time of creation, then id: the last item's.
    pub fn stamp_position(&self) -> Result<Option<(Timestamp, String)>, ApiError> {
        self.cursor
            .as_deref()
            .map(|c| {
                let text = decode_text_cursor('s', c)?;
                text.split_once('.')
                    .and_then(|(at, id)| Some((Timestamp(at.parse().ok()?), id.to_owned())))
                    .ok_or_else(foreign_cursor)
            })
            .transpose()
    }
}

/// A cursor for a list ordered by name, after `name`.
pub fn encode_name_cursor(name: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("n{name}"))
}

/// A cursor for a list ordered by time of creation and id, after the item of `at` and `id`.
pub fn encode_stamp_cursor(at: Timestamp, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("s{}.{id}", at.0))
}

fn decode_text_cursor(tag: char, text: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix(tag).map(str::to_owned))
        .filter(|s| !s.contains('\0'))
        .ok_or_else(foreign_cursor)
}

fn foreign_cursor() -> ApiError {
    ApiError::bad_request("invalid_cursor", "the cursor is not one this API gave")
}

/// An opaque cursor for a list position.
/// A position in the event feed as an opaque cursor.
pub fn encode_feed_cursor(pos: crate::store::FeedPos) -> String {
    URL_SAFE_NO_PAD.encode(format!("f{}.{}", pos.0, pos.1))
}

/// The feed position a cursor of [`encode_feed_cursor`] names.
pub fn decode_feed_cursor(text: &str) -> Result<crate::store::FeedPos, ApiError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let (a, b) = s.strip_prefix('f')?.split_once('.')?;
            let pos: (i64, i64) = (a.parse().ok()?, b.parse().ok()?);
            (pos.0 >= 0 && pos.1 >= 0).then_some(pos)
        })
        .ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "the cursor is not one this API gave")
        })
}

pub fn encode_cursor(pos: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("p{pos}"))
}

fn decode_cursor(text: &str) -> Result<i64, ApiError> {
    decode_text_cursor('p', text)?
        .parse()
        .map_err(|_| foreign_cursor())
}
