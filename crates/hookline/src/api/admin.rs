//! `/admin/v1`: the operator's API (accounts, plans, keys), behind
//! `Authorization: Bearer $HOOKLINE_ADMIN_TOKEN`. Without that variable every admin route
//! answers `404`, as if it did not exist. The token is compared through SHA-256 digests in
//! constant time.

use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, JsonBody, PageParams};
use super::keys::{IssuedKey, issue_for, revoke_for};
use super::{AppState, List};
use crate::accounts::check_name;
use crate::model::{Account, ApiKey, Plan};
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use utoipa::ToSchema;

/// The admin token's SHA-256, when the admin API is on.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    /// `None` (admin API off) for an absent or empty token.
    pub fn new(token: Option<&str>) -> Option<Self> {
        let token = token?.trim();
        (!token.is_empty()).then(|| AdminToken(Sha256::digest(token.as_bytes()).into()))
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

/// A request that presented the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = &state.admin_token else {
            return Err(ApiError::not_found("route"));
        };
        let given = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(super::extract::bearer_token)
            .ok_or_else(|| {
                ApiError::unauthorized("expected Authorization: Bearer <admin token>")
            })?;
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        if bool::from(digest.ct_eq(&expected.0)) {
            Ok(Admin)
        } else {
            Err(ApiError::unauthorized("invalid admin token"))
        }
    }
}

/// A new account.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// 1 to 200 characters once trimmed of surrounding spaces, no control characters.
    #[schema(min_length = 1)]
    pub name: String,
    /// `free`, `pro` (the default) or `business`.
    pub plan: Option<Plan>,
}

/// An account as created, with its first key (shown this once).
#[derive(Serialize, ToSchema)]
pub struct CreatedAccount {
    pub account: Account,
    pub api_key: IssuedKey,
}

/// Changes to an account.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    pub plan: Plan,
}

/// Creates an account and its first key.
#[utoipa::path(post, path = "/admin/v1/accounts", operation_id = "adminCreateAccount", tag = "admin", request_body = CreateAccount,
    security(("admin_token" = [])),
    responses((status = 201, body = CreatedAccount), (status = 409, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    _: Admin,
    JsonBody(body): JsonBody<CreateAccount>,
) -> Result<(StatusCode, Json<CreatedAccount>), ApiError> {
    let name = check_name(&body.name).map_err(|e| ApiError::unprocessable(format!("name: {e}")))?;
    let (account, record, key) =
        crate::accounts::create_with_record(&state.store, name, body.plan.unwrap_or(Plan::Pro))
            .await?;
    let api_key = super::keys::IssuedKey { record, key };
    Ok((
        StatusCode::CREATED,
        Json(CreatedAccount { account, api_key }),
    ))
}

/// Lists accounts, oldest first.
#[utoipa::path(get, path = "/admin/v1/accounts", operation_id = "adminListAccounts", tag = "admin", params(PageParams),
    security(("admin_token" = [])), responses((status = 200, body = List<Account>)))]
pub async fn list(
    State(state): State<AppState>,
    _: Admin,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<List<Account>>, ApiError> {
    let items = state
        .store
        .list_accounts(page.position()?, page.limit()?)
        .await?;
    Ok(Json(List::from_page(items)))
}

/// Reads one account.
#[utoipa::path(get, path = "/admin/v1/accounts/{id}", operation_id = "adminGetAccount", tag = "admin",
    params(("id" = String, Path, description = "acc_…")), security(("admin_token" = [])),
    responses((status = 200, body = Account), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Account>, ApiError> {
    state
        .store
        .get_account(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("account"))
}

/// Changes an account's plan. Moving to Free disables its endpoints and ends their open
/// deliveries as `failed`, in the same transaction; moving back does not enable them again
/// by itself.
#[utoipa::path(patch, path = "/admin/v1/accounts/{id}", operation_id = "adminUpdateAccount", tag = "admin", request_body = UpdateAccount,
    params(("id" = String, Path, description = "acc_…")), security(("admin_token" = [])),
    responses((status = 200, body = Account), (status = 404, body = super::error::ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<UpdateAccount>,
) -> Result<Json<Account>, ApiError> {
    let (account, disabled) = state
        .store
        .set_plan(id, body.plan)
        .await?
        .ok_or_else(|| ApiError::not_found("account"))?;
    state.auth_cache.forget_account(&account.id);
    for ep in &disabled {
        state.dispatcher.endpoint_changed(ep);
    }
    Ok(Json(account))
}

/// The account's keys, revoked ones included, oldest first.
#[utoipa::path(get, path = "/admin/v1/accounts/{id}/keys", operation_id = "adminListAccountKeys", tag = "admin",
    params(("id" = String, Path, description = "acc_…"), PageParams), security(("admin_token" = [])),
    responses((status = 200, body = List<ApiKey>), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn list_keys(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<List<ApiKey>>, ApiError> {
    let account = existing(&state, id).await?;
    super::keys::list_page(&state, account.id, &page)
        .await
        .map(Json)
}

/// Issues a key for the account (shown this once).
#[utoipa::path(post, path = "/admin/v1/accounts/{id}/keys", operation_id = "adminIssueAccountKey", tag = "admin",
    params(("id" = String, Path, description = "acc_…")), security(("admin_token" = [])),
    responses((status = 201, body = IssuedKey), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)))]
pub async fn issue_key(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    let account = existing(&state, id).await?;
    issue_for(&state, &account.id).await
}

/// Revokes one of the account's keys (its last one too: the operator may lock an account).
#[utoipa::path(delete, path = "/admin/v1/accounts/{id}/keys/{key_id}", operation_id = "adminRevokeAccountKey", tag = "admin",
    params(("id" = String, Path, description = "acc_…"), ("key_id" = String, Path, description = "key_…")),
    security(("admin_token" = [])),
    responses((status = 200, body = ApiKey), (status = 404, body = super::error::ErrorBody)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    _: Admin,
    ApiPath((id, key_id)): ApiPath<(String, String)>,
) -> Result<Json<ApiKey>, ApiError> {
    revoke_for(&state, &id, key_id, false).await.map(Json)
}

async fn existing(state: &AppState, id: String) -> Result<Account, ApiError> {
    state
        .store
        .get_account(id)
        .await?
        .ok_or_else(|| ApiError::not_found("account"))
}
