//! `/v1/events`: what producers send.

use super::endpoints::DeliveryQuery;
use super::error::ApiError;
use super::extract::{
    ApiPath, ApiQuery, Auth, JsonBody, PageParams, decode_feed_cursor, encode_feed_cursor,
};
use super::{AppState, List};
use crate::ingest::EventInput;
use crate::model::{BUILTIN_EVENT_TYPES, Delivery, Event, Timestamp, quoted};
use crate::store::{AcceptedSummary, DeliveryFilter, EventFilter};
use axum::Json;
use axum::extract::FromRequestParts;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

/// The most events one batch may carry.
pub const MAX_BATCH: usize = 1000;

/// One event from a producer.
#[derive(Deserialize, ToSchema)]
pub struct CreateEvent {
    /// A built-in type name, e.g. `click`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's payload: a JSON object.
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    /// A repeat under the same key within 24 h (by default) answers the first request's
    /// `202` and creates nothing; a different request under it is a `409`. (Or the
    /// `Idempotency-Key` header.)
    #[schema(min_length = 1, max_length = 255, pattern = "^[!-~]+$")]
    pub idempotency_key: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct CreateBatch {
    /// 1 to 1000 events, accepted all or none. (Each without a key of its own: the batch
    /// has one.)
    #[schema(value_type = Vec<CreateEvent>, min_items = 1, max_items = 1000)]
    pub events: Vec<BatchEvent>,
    /// A repeat of the batch under the same key within 24 h (by default) answers the first
    /// request's `202` and creates nothing; a different batch under it is a `409`. (Or the
    /// `Idempotency-Key` header.)
    #[schema(min_length = 1, max_length = 255, pattern = "^[!-~]+$")]
    pub idempotency_key: Option<String>,
}

/// A batch's event, which must be a JSON object: serde would also take an array in its place
/// as its fields in order. (The body itself is checked for that before it is parsed, in
/// `api::extract`.)
pub struct BatchEvent(pub CreateEvent);

impl<'de> Deserialize<'de> for BatchEvent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectOnly;
        impl<'de> serde::de::Visitor<'de> for ObjectOnly {
            type Value = CreateEvent;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<CreateEvent, A::Error> {
                CreateEvent::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(ObjectOnly).map(BatchEvent)
    }
}

/// A delivery created for an accepted event.
#[derive(Serialize, ToSchema)]
pub struct CreatedDelivery {
    pub id: String,
    pub endpoint_id: String,
}

/// An accepted event: stored durably, with one delivery per subscribed endpoint.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub created_at: Timestamp,
    pub deliveries: Vec<CreatedDelivery>,
}

#[derive(Serialize, ToSchema)]
pub struct AcceptedBatch {
    pub data: Vec<Accepted>,
}

impl From<&AcceptedSummary> for Accepted {
    fn from(a: &AcceptedSummary) -> Self {
        Accepted {
            id: a.id.clone(),
            event_type: a.event_type.clone(),
            created_at: Timestamp(a.created_at),
            deliveries: a
                .deliveries
                .iter()
                .map(|(id, endpoint_id)| CreatedDelivery {
                    id: id.clone(),
                    endpoint_id: endpoint_id.clone(),
                })
                .collect(),
        }
    }
}

/// The request's `Idempotency-Key` header as it came, judged by [`one_key`] once the body
/// has been read (a malformed body is answered first, as before the header). Taken alone: the
/// `HeaderMap` extractor would copy every header of every ingest request.
pub struct KeyHeader(Option<HeaderValue>);

impl<S: Sync> FromRequestParts<S> for KeyHeader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(KeyHeader(parts.headers.get("idempotency-key").cloned()))
    }
}

/// The `Idempotency-Key` header, if any: a key that is not one is refused by the header's
/// name (the body's field is refused by its own, in ingest).
fn key_header(header: &KeyHeader) -> Result<Option<String>, ApiError> {
    let Some(v) = &header.0 else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(key) if crate::ingest::is_idempotency_key(key) => Ok(Some(key.to_owned())),
        _ => Err(
            crate::ingest::IngestError::Invalid(vec![crate::catalogue::FieldError {
                path: "Idempotency-Key header".into(),
                message: crate::ingest::IDEMPOTENCY_KEY_RULE.into(),
            }])
            .into(),
        ),
    }
}

/// A request's idempotency key: the header's or the body's (`422` when both are given and
/// differ).
fn one_key(header: &KeyHeader, in_body: Option<String>) -> Result<Option<String>, ApiError> {
    match (key_header(header)?, in_body) {
        (Some(h), Some(b)) if h != b => Err(ApiError::unprocessable(
            "idempotency_key: differs from the Idempotency-Key header",
        )),
        (h, b) => Ok(h.or(b)),
    }
}

impl From<CreateEvent> for EventInput {
    fn from(e: CreateEvent) -> Self {
        EventInput {
            event_type: e.event_type,
            data: e.data,
        }
    }
}

/// Counts `n` events against the account's ingest rate: `429` with `Retry-After` over it.
/// (A request the server then fails to accept gives them back.)
fn meter(state: &AppState, account: &crate::model::Account, n: usize) -> Result<(), ApiError> {
    let Some(rate) = state.limits.of(account.plan).ingest_per_sec else {
        return Ok(());
    };
    state
        .ingest_limiter
        .take(&account.id, rate, n)
        .map_err(|wait| {
            ApiError::rate_limited(
                format!(
                    "the account's plan ingests at most {rate} events a second; nothing was \
                     accepted, try again in {} ms",
                    wait.as_millis().max(1)
                ),
                wait,
            )
        })
}

/// Gives the allowance back when the server, not the request, was at fault: an invalid
/// request keeps its cost, so validation itself is metered.
fn refund(
    state: &AppState,
    account: &crate::model::Account,
    e: &crate::ingest::IngestError,
    n: usize,
) {
    if !matches!(e, crate::ingest::IngestError::Invalid(_)) {
        state.ingest_limiter.refund(&account.id, n);
    }
}

/// Ingests `inputs` under the account's rate. A repeat of a request already accepted under
/// its idempotency key stores nothing: it is answered from the key's record (a read) before
/// anything is metered or validated, so a client retrying after a lost answer gets it even
/// over the rate, and its retries load neither the rate nor the writer. (A repeat that races
/// its first request, not yet committed, is found in the commit instead, and its cost
/// given back.) The reads have a rate of their own, so that keyed requests, repeats or not,
/// cannot load the database faster than unkeyed ones could.
async fn ingest_metered(
    state: &AppState,
    account: &crate::model::Account,
    inputs: Vec<EventInput>,
    batch: bool,
    key: Option<String>,
) -> Result<Vec<crate::store::AcceptedSummary>, ApiError> {
    let key = state.ingest.key_for(key, &inputs)?;
    if let Some(key) = &key {
        meter_key_read(state, account)?;
        if let Some(first) = state.ingest.repeat_of(account, key).await? {
            return Ok(first);
        }
    }
    let n = inputs.len();
    meter(state, account, n)?;
    let answer = state
        .ingest
        .accept(account, inputs, batch, key)
        .await
        .inspect_err(|e| refund(state, account, e, n))?;
    if answer.repeat {
        state.ingest_limiter.refund(&account.id, n);
    }
    Ok(answer.events)
}

/// Counts one read of an idempotency key against the account's allowance of them: as many a
/// second as its plan ingests events (a keyed request with anything new to store spends at
/// least as much of its ingest rate). `429` with `Retry-After` over it.
fn meter_key_read(state: &AppState, account: &crate::model::Account) -> Result<(), ApiError> {
    let Some(rate) = state.limits.of(account.plan).ingest_per_sec else {
        return Ok(());
    };
    state
        .key_read_limiter
        .take(&account.id, rate, 1)
        .map_err(|wait| {
            ApiError::rate_limited(
                format!(
                    "the account's plan looks up at most {rate} idempotency keys a second; \
                     nothing was accepted, try again in {} ms",
                    wait.as_millis().max(1)
                ),
                wait,
            )
        })
}

/// Sends one event. `202` means it and its deliveries are durably stored.
#[utoipa::path(post, path = "/v1/events", operation_id = "createEvent", tag = "events", request_body = CreateEvent,
    security(("api_key" = [])),
    responses((status = 202, body = Accepted), (status = 400, body = super::error::ErrorBody),
        (status = 408, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
        (status = 413, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Auth(account): Auth,
    key_header: KeyHeader,
    JsonBody(body): JsonBody<CreateEvent>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let key = one_key(&key_header, body.idempotency_key.clone())?;
    let inputs = vec![EventInput::from(body)];
    let events = ingest_metered(&state, &account, inputs, false, key).await?;
    let first = events.first().ok_or_else(ApiError::internal)?;
    Ok((StatusCode::ACCEPTED, Json(first.into())))
}

/// Sends up to 1000 events, all or nothing.
#[utoipa::path(post, path = "/v1/events/batch", operation_id = "createEventBatch", tag = "events", request_body = CreateBatch,
    security(("api_key" = [])),
    responses((status = 202, body = AcceptedBatch), (status = 400, body = super::error::ErrorBody),
        (status = 408, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
        (status = 413, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody)))]
pub async fn create_batch(
    State(state): State<AppState>,
    Auth(account): Auth,
    key_header: KeyHeader,
    JsonBody(body): JsonBody<CreateBatch>,
) -> Result<(StatusCode, Json<AcceptedBatch>), ApiError> {
    if let Some(i) = body
        .events
        .iter()
        .position(|e| e.0.idempotency_key.is_some())
    {
        return Err(ApiError::unprocessable(format!(
            "events[{i}].idempotency_key: a batch takes one key, its own idempotency_key or \
             the Idempotency-Key header"
        )));
    }
    let key = one_key(&key_header, body.idempotency_key.clone())?;
    if body.events.is_empty() || body.events.len() > MAX_BATCH {
        return Err(ApiError::unprocessable(format!(
            "events: must hold 1 to {MAX_BATCH} events, not {}",
            body.events.len()
        )));
    }
    let inputs = body
        .events
        .into_iter()
        .map(|e| EventInput::from(e.0))
        .collect();
    let events = ingest_metered(&state, &account, inputs, true, key).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(AcceptedBatch {
            data: events.iter().map(Accepted::from).collect(),
        }),
    ))
}

/// `GET /v1/events`: filters and paging of the feed.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// Only events of this type: a built-in type or one of the account's own (one deleted
    /// since still finds its events); a string that cannot name a type is a `400`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// Created at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Created before this time (RFC 3339).
    pub until: Option<String>,
    /// Events per page, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Resume after this event (`evt_…`), the last one a consumer saw.
    pub after: Option<String>,
}

/// The pull API: the account's events, oldest first. Paging never skips an event committed
/// later and never repeats one; `?after=evt_…` resumes after the last event seen. `since`
/// and `until` read only the events stored around those times; event stamps never run
/// backwards, so they keep to the order events were stored in (only a server clock set back
/// by more than 10 minutes, which the server logs, could hide an event from such a page,
/// never from the feed without them). A page with `type` reads
/// only that type's events: it is full unless it is the end of the feed, however rare the
/// type, and `?type=…&after=evt_…` resumes after the last event of the type seen.
#[utoipa::path(get, path = "/v1/events", operation_id = "listEvents", tag = "events", params(FeedQuery),
    security(("api_key" = [])),
    responses((status = 200, body = List<Event>), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiQuery(q): ApiQuery<FeedQuery>,
) -> Result<Json<List<Event>>, ApiError> {
    let limit = PageParams {
        limit: q.limit,
        cursor: None,
    }
    .limit()?;
    let time = |name: &str, v: &Option<String>| -> Result<Option<i64>, ApiError> {
        v.as_deref()
            .map(|t| {
                Timestamp::parse(t).map(|t| t.0).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("{name} must be an RFC 3339 time, not {}", quoted(t)),
                    )
                })
            })
            .transpose()
    };
    // `ping` names the type of `/test`'s deliveries, which are never stored: a valid
    // name with no events, like an account's own type that has none yet.
    if let Some(t) = q.event_type.as_deref()
        && !crate::model::is_builtin_event_type(t)
        && !crate::catalogue::is_custom_name(t)
        && t != "ping"
    {
        let builtin: Vec<&str> = BUILTIN_EVENT_TYPES.iter().map(|(n, _)| *n).collect();
        return Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "type: {} cannot name an event type (built-in: {}; or an account's own, \
                 [a-z0-9_.]+ of at most 64 characters)",
                quoted(t),
                builtin.join(", ")
            ),
        ));
    }
    let filter = EventFilter {
        event_type: q.event_type.clone(),
        since: time("since", &q.since)?,
        until: time("until", &q.until)?,
    };
    let after = match (&q.cursor, &q.after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "give cursor or after, not both",
            ));
        }
        (Some(c), None) => Some(decode_feed_cursor(c)?),
        // Not even the shape of an event id: malformed, a `400` as a bad cursor is.
        (None, Some(id)) if !id.starts_with("evt_") => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("after must be an event id (evt_…), not {}", quoted(id)),
            ));
        }
        // No event id holds a NUL (which a PostgreSQL text value cannot hold either).
        (None, Some(id)) if id.contains('\0') => return Err(ApiError::not_found("event")),
        (None, Some(id)) => Some(
            state
                .store
                .feed_position(account.id.clone(), id.clone())
                .await?
                .ok_or_else(|| after_not_found(id))?,
        ),
        (None, None) => None,
    };
    let (events, next) = state
        .store
        .list_events(account.id, filter, after, limit)
        .await?;
    Ok(Json(List {
        data: events,
        next_cursor: next.map(encode_feed_cursor),
    }))
}

/// `?after=` names no event of the account: a typo, another account's, or one retention
/// has removed since the consumer saw it. The last is a consumer that was caught up on a
/// quiet feed; the answer says how to go on (from a time; the id's own time is when the
/// event was made, by the clock of the node that took it).
fn after_not_found(id: &str) -> ApiError {
    let made = id
        .strip_prefix("evt_")
        .and_then(|u| ulid::Ulid::from_string(u).ok())
        .map(|u| Timestamp(u.timestamp_ms() as i64));
    let hint = match made {
        Some(t) => format!(
            " (an event removed by retention is not found either: resume from a time with \
             ?since=; its id says it was made at {t})"
        ),
        None => String::new(),
    };
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        format!("after: no event {}{hint}", quoted(id)),
    )
}

/// Reads one event.
#[utoipa::path(get, path = "/v1/events/{id}", operation_id = "getEvent", tag = "events",
    params(("id" = String, Path, description = "evt_…")), security(("api_key" = [])),
    responses((status = 200, body = Event), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Event>, ApiError> {
    let ev = state.store.get_event(account.id, id).await?;
    ev.map(Json).ok_or_else(|| ApiError::not_found("event"))
}

/// The event's deliveries, newest first.
#[utoipa::path(get, path = "/v1/events/{id}/deliveries", operation_id = "listEventDeliveries", tag = "events",
    params(("id" = String, Path, description = "evt_…"), DeliveryQuery), security(("api_key" = [])),
    responses((status = 200, body = List<Delivery>), (status = 404, body = super::error::ErrorBody)))]
pub async fn deliveries(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> Result<Json<List<Delivery>>, ApiError> {
    if state
        .store
        .get_event(account.id.clone(), id.clone())
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("event"));
    }
    let filter = DeliveryFilter {
        event_id: Some(id),
        ..Default::default()
    };
    super::deliveries::list(&state, account.id, filter, q).await
}
