//! `/v1/event-types`: the catalogue — the nine built-in types (description, the JSON Schema
//! of their `data`, an example) and the account's own types, which it creates, changes and
//! removes here.

use super::AppState;
use super::endpoints::check_description;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, Auth, JsonBody, PageParams, encode_name_cursor};
use crate::catalogue::{EventType, compile, is_custom_name};
use crate::model::{CustomEventType, Timestamp};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct EventTypes {
    /// The built-in types, then the account's own by name (which have no `example`).
    pub data: Vec<EventType>,
    /// Pass as `?cursor=` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// An account's own event type to create.
#[derive(Deserialize, ToSchema)]
pub struct CreateEventType {
    /// `[a-z0-9_.]+`, at most 64 characters, not starting with a dot, not a built-in name.
    #[schema(max_length = 64, pattern = "^[a-z0-9_][a-z0-9_.]*$")]
    pub name: String,
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    /// A JSON Schema (draft 2020-12) for `data`; without one, any object.
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
}

/// Changes to an account's own event type. `"schema": null` removes the schema.
#[derive(Deserialize, ToSchema)]
pub struct UpdateEventType {
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Option<Value>>,
}

/// A field that is present (even as `null`) becomes `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Value>>, D::Error> {
    let v: Value = Deserialize::deserialize(d)?;
    Ok(Some(if v.is_null() { None } else { Some(v) }))
}

fn check_schema(schema: &Option<Value>) -> Result<(), ApiError> {
    if let Some(s) = schema {
        compile(s).map_err(|e| ApiError::unprocessable(format!("schema: {e}")))?;
        // An event's `data` is always a JSON object: a type whose schema names only other
        // types could never be sent.
        let allows_object = match s.get("type") {
            None => true,
            Some(Value::String(t)) => t == "object",
            Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
            Some(_) => false,
        };
        if !allows_object {
            return Err(ApiError::unprocessable(
                "schema: its \"type\" must allow \"object\": an event's data is always a JSON object",
            ));
        }
    }
    Ok(())
}

fn as_catalogue_entry(t: CustomEventType) -> EventType {
    EventType {
        name: t.name,
        description: t.description,
        schema: t
            .schema
            .unwrap_or_else(|| serde_json::json!({"type": "object"})),
        example: Value::Null,
    }
}

/// The event types events may have: the built-in ones, then the account's own by name.
#[utoipa::path(get, path = "/v1/event-types", operation_id = "listEventTypes", tag = "event-types", params(PageParams),
    security(("api_key" = [])),
    responses((status = 200, body = EventTypes), (status = 400, body = super::error::ErrorBody),
        (status = 401, body = super::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<EventTypes>, ApiError> {
    let limit = page.limit()?;
    let after = page.name_position()?;
    let builtin = state.catalogue.types();
    // A built-in name (which no type of an account's own can have) resumes within the
    // built-in types; any other name, among the account's own after it.
    let (first_builtin, custom_after) = match after {
        None => (0, None),
        Some(name) => match builtin.iter().position(|t| t.name == name) {
            Some(i) => (i + 1, None),
            None => (builtin.len(), Some(name)),
        },
    };
    // One more than the page holds, to know whether another page follows.
    let mut data: Vec<EventType> = builtin
        .iter()
        .skip(first_builtin)
        .take(limit + 1)
        .cloned()
        .collect();
    let wanted = (limit + 1).saturating_sub(data.len());
    if wanted > 0 {
        data.extend(
            state
                .store
                .list_event_types(account.id, custom_after, wanted)
                .await?
                .into_iter()
                .map(as_catalogue_entry),
        );
    }
    let next_cursor = if data.len() > limit {
        data.truncate(limit);
        data.last().map(|t| encode_name_cursor(&t.name))
    } else {
        None
    };
    Ok(Json(EventTypes { data, next_cursor }))
}

/// Adds an event type of the account's own; endpoints may then subscribe to it and events
/// of it are checked against its schema.
#[utoipa::path(post, path = "/v1/event-types", operation_id = "createEventType", tag = "event-types", request_body = CreateEventType,
    security(("api_key" = [])),
    responses((status = 201, body = CustomEventType), (status = 409, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Auth(account): Auth,
    JsonBody(body): JsonBody<CreateEventType>,
) -> Result<(StatusCode, Json<CustomEventType>), ApiError> {
    // A name starting with a dot could be "." or "..": a path segment that clients fold
    // away before the request leaves, so the type's own routes could never be reached.
    if !is_custom_name(&body.name) || body.name.starts_with('.') {
        return Err(ApiError::unprocessable(format!(
            "name: {} must be 1 to 64 of a-z, 0-9, _ and ., not start with a dot, and not \
             be a built-in type",
            crate::model::quoted(&body.name)
        )));
    }
    let description = check_description(body.description)?;
    check_schema(&body.schema)?;
    let now = Timestamp::now();
    let t = CustomEventType {
        name: body.name,
        description,
        schema: body.schema,
        created_at: now,
        updated_at: now,
    };
    let t = state.store.create_event_type(account.id, t).await?;
    Ok((StatusCode::CREATED, Json(t)))
}

/// One of the account's own event types.
#[utoipa::path(get, path = "/v1/event-types/{name}", operation_id = "getEventType", tag = "event-types",
    params(("name" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = CustomEventType), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<CustomEventType>, ApiError> {
    state
        .store
        .get_event_type(account.id, name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("event type of this account"))
}

/// Changes the description or schema of one of the account's own event types.
#[utoipa::path(patch, path = "/v1/event-types/{name}", operation_id = "updateEventType", tag = "event-types",
    params(("name" = String, Path)), request_body = UpdateEventType, security(("api_key" = [])),
    responses((status = 200, body = CustomEventType), (status = 404, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiPath(name): ApiPath<String>,
    JsonBody(body): JsonBody<UpdateEventType>,
) -> Result<Json<CustomEventType>, ApiError> {
    let description = body
        .description
        .map(|d| check_description(Some(d)))
        .transpose()?;
    if let Some(schema) = &body.schema {
        check_schema(schema)?;
    }
    let Some(mut t) = state.store.get_event_type(account.id.clone(), name).await? else {
        return Err(ApiError::not_found("event type of this account"));
    };
    let read_at = t.updated_at;
    if let Some(d) = description {
        t.description = d;
    }
    if let Some(schema) = body.schema {
        t.schema = schema;
    }
    t.updated_at = Timestamp(Timestamp::now().0.max(t.updated_at.0 + 1));
    state
        .store
        .update_event_type(account.id, t, read_at)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("event type of this account"))
}

/// Removes one of the account's own event types: new events of it are refused. Endpoints
/// keep the name in their subscriptions (harmless until the type is created again).
#[utoipa::path(delete, path = "/v1/event-types/{name}", operation_id = "deleteEventType", tag = "event-types",
    params(("name" = String, Path)), security(("api_key" = [])),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if state.store.delete_event_type(account.id, name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("event type of this account"))
    }
}
