//! `/v1/deliveries`: one event for one endpoint, and its attempts.

use super::endpoints::DeliveryQuery;
use super::error::ApiError;
use super::extract::{ApiPath, Auth};
use super::{AppState, List};
use crate::dispatch::Dispatcher;
use crate::model::{Attempt, Delivery, DeliveryStatus, Timestamp};
use crate::store::{DeliveryFilter, RetryRefusal};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use std::collections::HashMap;
use utoipa::ToSchema;

/// One page of `account_id`'s deliveries matching `filter` and the query's `?status=`,
/// newest first: the body of `/v1/endpoints/{id}/deliveries` and `/v1/events/{id}/deliveries`.
pub(super) async fn list(
    state: &AppState,
    account_id: String,
    mut filter: DeliveryFilter,
    q: DeliveryQuery,
) -> Result<Json<List<Delivery>>, ApiError> {
    let page = q.page();
    let (pos, limit) = (page.position()?, page.limit()?);
    filter.status = q.status;
    let mut items = state
        .store
        .list_deliveries(account_id, filter, pos, limit)
        .await?;
    let mut holds = Holds::new(&state.dispatcher);
    for d in &mut items.items {
        holds.apply(d);
    }
    Ok(Json(List::from_page(items)))
}

/// Pending deliveries as this node will take them: one whose endpoint it holds back (an
/// open circuit breaker, or a `Retry-After` it honours) is due no sooner than the hold
/// ends. The store keeps each delivery's own schedule; the hold lives in the dispatcher,
/// one lookup an endpoint.
struct Holds<'a> {
    dispatcher: &'a Dispatcher,
    seen: HashMap<String, Option<Timestamp>>,
}

impl<'a> Holds<'a> {
    fn new(dispatcher: &'a Dispatcher) -> Self {
        Holds {
            dispatcher,
            seen: HashMap::new(),
        }
    }

    fn apply(&mut self, d: &mut Delivery) {
        if d.status != DeliveryStatus::Pending {
            return;
        }
        let until = match self.seen.get(&d.endpoint_id) {
            Some(until) => *until,
            None => {
                let until = self.dispatcher.held_back_until(&d.endpoint_id);
                self.seen.insert(d.endpoint_id.clone(), until);
                until
            }
        };
        if let Some(until) = until
            && d.next_attempt_at.is_none_or(|at| at < until)
        {
            d.next_attempt_at = Some(until);
        }
    }
}

/// A delivery with every attempt, oldest first.
#[derive(Serialize, ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: Delivery,
    pub attempts: Vec<Attempt>,
}

/// Reads one delivery and its attempts.
#[utoipa::path(get, path = "/v1/deliveries/{id}", operation_id = "getDelivery", tag = "deliveries",
    params(("id" = String, Path, description = "dlv_…")), security(("api_key" = [])),
    responses((status = 200, body = DeliveryDetail), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    let (mut delivery, attempts) = state
        .store
        .get_delivery(account.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    Holds::new(&state.dispatcher).apply(&mut delivery);
    Ok(Json(DeliveryDetail { delivery, attempts }))
}

/// Makes one more attempt now, whatever the delivery's state. One this node holds already
/// is taken over: the retry's attempt goes before the endpoint's queue, and a queued one is
/// not made (one under way goes on beside it). On PostgreSQL one another node holds is left
/// to it. `409` when its endpoint is removed or disabled.
#[utoipa::path(post, path = "/v1/deliveries/{id}/retry", operation_id = "retryDelivery", tag = "deliveries",
    params(("id" = String, Path, description = "dlv_…")), security(("api_key" = [])),
    responses((status = 202, body = DeliveryDetail), (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)))]
pub async fn retry(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<DeliveryDetail>), ApiError> {
    if !account.plan.includes_webhooks() {
        state
            .store
            .get_delivery(account.id.clone(), id.clone())
            .await?
            .ok_or_else(|| ApiError::not_found("delivery"))?;
        return Err(ApiError::plan_required("retrying deliveries"));
    }
    match state
        .dispatcher
        .retry_now(account.id.clone(), id.clone())
        .await?
    {
        Ok(()) | Err(RetryRefusal::AlreadyDelivering) => {}
        Err(RetryRefusal::NotFound) => return Err(ApiError::not_found("delivery")),
        Err(RetryRefusal::EndpointDisabled) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "endpoint_disabled",
                "the delivery's endpoint is disabled or was removed: a disabled endpoint can \
                 be enabled again (PATCH enabled=true), a removed one's deliveries cannot be \
                 retried",
            ));
        }
    }
    let (mut delivery, attempts) = state
        .store
        .get_delivery(account.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    Holds::new(&state.dispatcher).apply(&mut delivery);
    Ok((
        StatusCode::ACCEPTED,
        Json(DeliveryDetail { delivery, attempts }),
    ))
}
