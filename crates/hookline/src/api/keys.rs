//! `/v1/api-keys`: an account manages its own keys. A new key is shown once; listings show
//! only its id and first characters. Revoking takes effect on this node at once and on
//! every node within the key cache's lifetime (5 s).

use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, Auth, PageParams, encode_stamp_cursor};
use super::{AppState, List};
use crate::accounts::issue_key_for;
use crate::model::ApiKey;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

/// A key as issued: with the key itself, shown this once.
#[derive(Serialize, ToSchema)]
pub struct IssuedKey {
    #[serde(flatten)]
    pub record: ApiKey,
    /// The key: `Authorization: Bearer <key>`. It is not stored and cannot be shown again.
    pub key: String,
}

/// The account's keys, revoked ones included, oldest first.
#[utoipa::path(get, path = "/v1/api-keys", operation_id = "listApiKeys", tag = "keys", params(PageParams),
    security(("api_key" = [])),
    responses((status = 200, body = List<ApiKey>), (status = 400, body = super::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<List<ApiKey>>, ApiError> {
    list_page(&state, account.id, &page).await.map(Json)
}

/// One page of an account's keys.
pub(super) async fn list_page(
    state: &AppState,
    account_id: String,
    page: &PageParams,
) -> Result<List<ApiKey>, ApiError> {
    let limit = page.limit()?;
    let mut data = state
        .store
        .list_api_keys(account_id, page.stamp_position()?, limit + 1)
        .await?;
    let next_cursor = if data.len() > limit {
        data.truncate(limit);
        data.last()
            .map(|k| encode_stamp_cursor(k.created_at, &k.id))
    } else {
        None
    };
    Ok(List { data, next_cursor })
}

/// Issues one more key for the calling account.
#[utoipa::path(post, path = "/v1/api-keys", operation_id = "issueApiKey", tag = "keys", security(("api_key" = [])),
    responses((status = 201, body = IssuedKey), (status = 409, body = super::error::ErrorBody)))]
pub async fn issue(
    State(state): State<AppState>,
    Auth(account): Auth,
) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    issue_for(&state, &account.id).await
}

/// Revokes one of the calling account's keys (the one in use included). The account's last
/// live key cannot be revoked here: issue another first (`409`).
#[utoipa::path(delete, path = "/v1/api-keys/{id}", operation_id = "revokeApiKey", tag = "keys",
    params(("id" = String, Path, description = "key_…")), security(("api_key" = [])),
    responses((status = 200, body = ApiKey), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ApiKey>, ApiError> {
    revoke_for(&state, &account.id, id, true).await.map(Json)
}

/// Issues a key for `account_id`, within [`crate::accounts::MAX_LIVE_KEYS`] (`409` over).
pub(super) async fn issue_for(
    state: &AppState,
    account_id: &str,
) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    let (record, key) = issue_key_for(&state.store, account_id).await?;
    Ok((StatusCode::CREATED, Json(IssuedKey { record, key })))
}

/// Revokes key `id` of `account_id` and forgets the account's cached keys.
pub(super) async fn revoke_for(
    state: &AppState,
    account_id: &str,
    id: String,
    keep_one: bool,
) -> Result<ApiKey, ApiError> {
    let key = state
        .store
        .revoke_api_key(account_id.to_owned(), id, keep_one)
        .await?
        .ok_or_else(|| ApiError::not_found("key"))?;
    state.auth_cache.forget_account(account_id);
    Ok(key)
}
