//! `/v1/event-types`: the catalogue — each type's description, the JSON Schema of its
//! `data`, and an example.

use super::AppState;
use super::error::ApiError;
use super::extract::Auth;
use crate::catalogue::EventType;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct EventTypes {
    pub data: Vec<EventType>,
}

/// The event types events may have, with the schema their `data` must satisfy.
#[utoipa::path(get, path = "/v1/event-types", tag = "event-types", security(("api_key" = [])),
    responses((status = 200, body = EventTypes), (status = 401, body = super::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(_account): Auth,
) -> Result<Json<EventTypes>, ApiError> {
    Ok(Json(EventTypes {
        data: state.catalogue.types().to_vec(),
    }))
}
