//! `GET /v1/account`: the calling account, its plan, and what the plan allows, so that a
//! client (the dashboard among them) can tell "no endpoints yet" from "no webhooks on this
//! plan" without trying.

use super::AppState;
use super::extract::Auth;
use crate::model::{Account, PlanLimits};
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

/// The calling account and what its plan allows on this server.
#[derive(Serialize, ToSchema)]
pub struct AccountView {
    #[serde(flatten)]
    pub account: Account,
    /// Whether the plan includes webhooks (endpoints and their deliveries); without them,
    /// events are kept for the pull API only.
    pub webhooks: bool,
    /// The most endpoints the account may have at once.
    pub max_endpoints: u32,
    /// The most events a second the account may send (per node); `null`: no limit.
    pub ingest_per_sec: Option<u32>,
    /// How long events, with their deliveries and attempts, are kept, in seconds.
    pub retention_seconds: u64,
}

/// The account of the API key in use, and its plan's limits.
#[utoipa::path(get, path = "/v1/account", operation_id = "getAccount", tag = "keys",
    security(("api_key" = [])), responses((status = 200, body = AccountView)))]
pub async fn get(State(state): State<AppState>, Auth(account): Auth) -> Json<AccountView> {
    let limits: &PlanLimits = state.limits.of(account.plan);
    Json(AccountView {
        webhooks: account.plan.includes_webhooks(),
        max_endpoints: limits.max_endpoints,
        ingest_per_sec: limits.ingest_per_sec,
        retention_seconds: limits.retention.as_secs(),
        account,
    })
}
