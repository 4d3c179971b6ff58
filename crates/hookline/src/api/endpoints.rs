//! `/v1/endpoints`: where an account's webhooks go.

use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, Auth, JsonBody, PageParams};
use super::{AppState, List, UrlRules};
use crate::model::{BUILTIN_EVENT_TYPES, Delivery, DeliveryStatus, Endpoint, Timestamp, new_id};
use crate::store::DeliveryFilter;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use hookline_signing::Secret;
use rand::RngExt as _;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A new endpoint.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// `https://…` (or `http://…` when the server allows insecure URLs).
    pub url: String,
    /// Event type names, or `["*"]` for every type.
    #[schema(min_items = 1)]
    pub event_types: Vec<String>,
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    /// Extra headers sent with every request: at most 20, each name (case-insensitive) once
    /// and at most 128 bytes, each value at most 8,000, 12 KiB in all.
    pub headers: Option<BTreeMap<String, String>>,
    /// A `whsec_…` secret of 24 to 64 bytes; generated when absent.
    pub secret: Option<String>,
    /// Requests a second to this endpoint at most; absent for no limit.
    #[schema(minimum = 1, maximum = 100000)]
    pub rate_limit_per_sec: Option<u32>,
    pub enabled: Option<bool>,
}

/// Changes to an endpoint; absent fields stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    /// The new URL; not `null` (`422`): an endpoint always has one.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub url: Option<String>,
    /// The new subscriptions; not `null` (`422`).
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false, min_items = 1)]
    pub event_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 1024)]
    pub description: Option<Option<String>>,
    /// Replaces the extra headers: at most 20, each name (case-insensitive) once and at most
    /// 128 bytes, each value at most 8,000, 12 KiB in all. `null` removes them all.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub headers: Option<Option<BTreeMap<String, String>>>,
    /// `null` removes the limit.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 100000)]
    pub rate_limit_per_sec: Option<Option<u32>>,
    /// Turns the endpoint on or off; not `null` (`422`).
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    pub enabled: Option<bool>,
}

/// A field that may be left out, but not given as `null` (which would otherwise read as
/// left out, and change nothing without a word).
fn not_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d)?.map(Some).ok_or_else(|| {
        serde::de::Error::custom("must not be null (leave the field out to keep its value)")
    })
}

/// `Some(None)` for an explicit `null`, `None` (via `default`) for an absent field.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// An endpoint as created: with its secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedEndpoint {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct SecretBody {
    pub secret: String,
}

/// Registers an endpoint.
#[utoipa::path(post, path = "/v1/endpoints", operation_id = "createEndpoint", tag = "endpoints", request_body = CreateEndpoint,
    security(("api_key" = [])),
    responses((status = 201, body = CreatedEndpoint), (status = 403, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Auth(account): Auth,
    JsonBody(body): JsonBody<CreateEndpoint>,
) -> Result<(StatusCode, Json<CreatedEndpoint>), ApiError> {
    let limits = *state.limits.of(account.plan);
    if !account.plan.includes_webhooks() {
        return Err(ApiError::plan_required("creating endpoints"));
    }
    let url = check_url(&body.url, &state.rules)?;
    check_target(&url, &state.rules, &*state.resolver).await?;
    let event_types = check_event_types(&state, &account.id, &body.event_types).await?;
    let description = check_description(body.description)?;
    let headers = check_headers(body.headers.unwrap_or_default())?;
    let rate_limit_per_sec = check_rate(body.rate_limit_per_sec)?;
    let secret = match body.secret {
        Some(text) => Secret::parse(&text)
            .map_err(|e| ApiError::unprocessable(format!("secret: {e}")))?
            .to_string(),
        None => generate_secret()?,
    };
    let now = Timestamp::now();
    let ep = Endpoint {
        id: new_id("ep"),
        account_id: account.id,
        url,
        description,
        event_types,
        headers,
        rate_limit_per_sec,
        enabled: body.enabled.unwrap_or(true),
        disabled_reason: None,
        previous_secrets: Vec::new(),
        previous_secret_expires_at: None,
        created_at: now,
        updated_at: now,
        secret,
    };
    let ep = state
        .store
        .insert_endpoint(ep, limits.max_endpoints)
        .await?;
    let secret = ep.secret.clone();
    Ok((
        StatusCode::CREATED,
        Json(CreatedEndpoint {
            endpoint: ep,
            secret,
        }),
    ))
}

/// Lists the account's endpoints, oldest first.
#[utoipa::path(get, path = "/v1/endpoints", operation_id = "listEndpoints", tag = "endpoints", params(PageParams),
    security(("api_key" = [])), responses((status = 200, body = List<Endpoint>)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<List<Endpoint>>, ApiError> {
    let items = state
        .store
        .list_endpoints(account.id, page.position()?, page.limit()?)
        .await?;
    Ok(Json(List::from_page(items)))
}

/// An endpoint read alone: with whether its deliveries are held back.
#[derive(Serialize, ToSchema)]
pub struct EndpointDetail {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// Set while the endpoint's deliveries are held back, because it kept failing (its
    /// circuit breaker is open) or asked to wait (`Retry-After` on a `429` or `503`): when
    /// the next attempt, a probe, may go. Meanwhile its `pending` deliveries are due no
    /// sooner than this (`next_attempt_at`). `null` while they go as usual, and once that
    /// time has come: the next delivery goes at once, as the probe, and while it is out the
    /// others wait for its answer. Each node of a cluster holds back on its own: this is the
    /// answering node's. A `Retry-After`'s end is kept in the database (the latest any node
    /// was asked for), so a node that starts holds the endpoint back until then.
    pub held_back_until: Option<Timestamp>,
}

/// Reads one endpoint.
#[utoipa::path(get, path = "/v1/endpoints/{id}", operation_id = "getEndpoint", tag = "endpoints",
    params(("id" = String, Path, description = "ep_…")), security(("api_key" = [])),
    responses((status = 200, body = EndpointDetail), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EndpointDetail>, ApiError> {
    let endpoint = state
        .store
        .get_endpoint(account.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    Ok(Json(EndpointDetail {
        held_back_until: state.dispatcher.held_back_until(&endpoint.id),
        endpoint,
    }))
}

/// Changes an endpoint (`403` when the account's plan does not include webhooks). Disabling
/// it ends its open deliveries as `failed`; on SQLite a long backlog of them ends within
/// moments of the answer, and enabling the endpoint again while it is still being ended is
/// refused with `409`: try again in a moment.
#[utoipa::path(patch, path = "/v1/endpoints/{id}", operation_id = "updateEndpoint", tag = "endpoints", request_body = UpdateEndpoint,
    params(("id" = String, Path, description = "ep_…")), security(("api_key" = [])),
    responses((status = 200, body = Endpoint), (status = 403, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<UpdateEndpoint>,
) -> Result<Json<Endpoint>, ApiError> {
    require_webhooks(&state, &account, &id, "changing endpoints").await?;
    let url = body.url.map(|u| check_url(&u, &state.rules)).transpose()?;
    if let Some(u) = &url {
        check_target(u, &state.rules, &*state.resolver).await?;
    }
    let event_types = match &body.event_types {
        Some(t) => Some(check_event_types(&state, &account.id, t).await?),
        None => None,
    };
    let description = body.description.map(check_description).transpose()?;
    let headers = match body.headers {
        None => None,
        // `null` removes them all.
        Some(None) => Some(BTreeMap::new()),
        Some(Some(h)) => Some(check_headers(h)?),
    };
    let rate = body.rate_limit_per_sec.map(check_rate).transpose()?;
    let enabled = body.enabled;
    let ep = state
        .store
        .update_endpoint(account.id, id, move |ep| {
            if let Some(u) = url {
                ep.url = u;
            }
            if let Some(t) = event_types {
                ep.event_types = t;
            }
            if let Some(d) = description {
                ep.description = d;
            }
            if let Some(h) = headers {
                ep.headers = h;
            }
            if let Some(r) = rate {
                ep.rate_limit_per_sec = r;
            }
            if let Some(e) = enabled {
                ep.enabled = e;
            }
        })
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    state.dispatcher.endpoint_changed(&ep);
    Ok(Json(ep))
}

/// Removes an endpoint. Its open deliveries end as `failed`; its history stays readable.
#[utoipa::path(delete, path = "/v1/endpoints/{id}", operation_id = "deleteEndpoint", tag = "endpoints",
    params(("id" = String, Path, description = "ep_…")), security(("api_key" = [])),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let ep = state
        .store
        .delete_endpoint(account.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    state.dispatcher.endpoint_changed(&ep);
    Ok(StatusCode::NO_CONTENT)
}

/// The endpoint's signing secret.
#[utoipa::path(get, path = "/v1/endpoints/{id}/secret", operation_id = "getEndpointSecret", tag = "endpoints",
    params(("id" = String, Path, description = "ep_…")), security(("api_key" = [])),
    responses((status = 200, body = SecretBody), (status = 404, body = super::error::ErrorBody)))]
pub async fn secret(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SecretBody>, ApiError> {
    let ep = state
        .store
        .get_endpoint(account.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    Ok(Json(SecretBody { secret: ep.secret }))
}

/// A rotation: the new secret, and until when the previous one keeps signing beside it.
#[derive(Serialize, ToSchema)]
pub struct RotatedSecret {
    pub secret: String,
    pub previous_secret_expires_at: Timestamp,
}

/// The new secret of a rotation; generated when absent.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// A `whsec_…` secret of 24 to 64 bytes.
    pub secret: Option<String>,
}

/// Gives the endpoint a new secret. The previous one keeps signing beside it (requests carry
/// both signatures) for the overlap (24 h by default), so receivers can switch at leisure;
/// secrets rotated out before keep signing until their own overlaps end (at most ten; an
/// eleventh ends the oldest). The body is optional.
#[utoipa::path(post, path = "/v1/endpoints/{id}/secret/rotate", operation_id = "rotateEndpointSecret", tag = "endpoints",
    request_body(content = Option<RotateSecret>, description = "Optional: without a body, Hookline makes the new secret."),
    params(("id" = String, Path, description = "ep_…")), security(("api_key" = [])),
    responses((status = 200, body = RotatedSecret), (status = 404, body = super::error::ErrorBody),
        (status = 403, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiPath(id): ApiPath<String>,
    super::extract::OptionalJsonBody(body): super::extract::OptionalJsonBody<RotateSecret>,
) -> Result<Json<RotatedSecret>, ApiError> {
    require_webhooks(&state, &account, &id, "rotating secrets").await?;
    let secret = match body.and_then(|b| b.secret) {
        Some(text) => Secret::parse(&text)
            .map_err(|e| ApiError::unprocessable(format!("secret: {e}")))?
            .to_string(),
        None => generate_secret()?,
    };
    let now = Timestamp::now();
    let until = Timestamp(now.0 + state.secret_overlap.as_millis() as i64);
    let new_secret = secret.clone();
    let ep = state
        .store
        .update_endpoint(account.id, id, move |ep| {
            ep.rotate_secret(new_secret, until, now)
        })
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    state.dispatcher.endpoint_changed(&ep);
    Ok(Json(RotatedSecret {
        secret,
        previous_secret_expires_at: until,
    }))
}

/// `403` unless the account's plan includes webhooks; `404` first if there is no such
/// endpoint (another account's ids are not found, whatever the plan).
async fn require_webhooks(
    state: &AppState,
    account: &crate::model::Account,
    id: &str,
    what: &str,
) -> Result<(), ApiError> {
    if account.plan.includes_webhooks() {
        return Ok(());
    }
    if state
        .store
        .get_endpoint(account.id.clone(), id.to_owned())
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("endpoint"));
    }
    Err(ApiError::plan_required(what))
}

/// Which failed deliveries to queue again.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    /// Deliveries created at or after this time (RFC 3339).
    pub since: Timestamp,
}

/// How many deliveries were queued again.
#[derive(Serialize, ToSchema)]
pub struct Recovered {
    pub recovered: usize,
}

/// Deliveries looked at per write.
const RECOVER_BATCH: usize = 1000;

/// Queues again every `failed` delivery of the endpoint created since `since`: each goes
/// back to `pending`, due now, and resumes its retry schedule (one that had used it up gets
/// one more attempt). `409` when the endpoint is disabled: enable it first.
#[utoipa::path(post, path = "/v1/endpoints/{id}/recover", operation_id = "recoverEndpoint", tag = "endpoints", request_body = Recover,
    params(("id" = String, Path, description = "ep_…")), security(("api_key" = [])),
    responses((status = 202, body = Recovered), (status = 404, body = super::error::ErrorBody),
        (status = 403, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
pub async fn recover(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<Recover>,
) -> Result<(StatusCode, Json<Recovered>), ApiError> {
    require_webhooks(&state, &account, &id, "recovering deliveries").await?;
    let started = Timestamp::now();
    let mut recovered = 0;
    // From about `since` on, not from the endpoint's first delivery.
    let mut after = state
        .store
        .recover_from(account.id.clone(), id.clone(), body.since)
        .await?;
    loop {
        let (n, next) = match state
            .store
            .recover(
                account.id.clone(),
                id.clone(),
                body.since,
                started,
                after,
                RECOVER_BATCH,
            )
            .await?
        {
            Ok(step) => step,
            Err(crate::store::RetryRefusal::EndpointDisabled) if recovered == 0 => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "endpoint_disabled",
                    "the endpoint is disabled; enable it first",
                ));
            }
            Err(crate::store::RetryRefusal::NotFound) if recovered == 0 => {
                return Err(ApiError::not_found("endpoint"));
            }
            // Disabled or removed midway: what was queued has been ended with it.
            Err(_) => (0, None),
        };
        if recovered == 0 && n > 0 {
            // The endpoint is said to be back: this node stops holding it off.
            state.dispatcher.reset_breaker(&id);
        }
        recovered += n;
        if n > 0 {
            state.dispatcher.due_now();
        }
        match next {
            Some(seq) => after = seq,
            None => break,
        }
    }
    Ok((StatusCode::ACCEPTED, Json(Recovered { recovered })))
}

/// What the endpoint answered to a test `ping`.
#[derive(Serialize, ToSchema)]
pub struct TestResult {
    /// The id the ping carried (`webhook-id`).
    pub event_id: String,
    /// The endpoint answered `2xx`.
    pub delivered: bool,
    pub status_code: Option<u16>,
    pub duration_ms: u64,
    /// Why no answer came (timeout, connection refused, …).
    pub error: Option<String>,
    /// The start of the endpoint's answer.
    pub response_body: Option<String>,
}

/// How many test pings an endpoint takes a second, on each node. A ping bypasses the
/// ingest meter, the endpoint's pace and its breaker (it tests the endpoint as it is), so
/// without a limit of its own a loop on `/test` would send a receiver unbounded requests.
pub const TESTS_PER_SEC: u32 = 2;

/// Sends the endpoint a signed `ping` event (`data: {}`) now, once, and answers with what
/// came back. Nothing is stored and no retry follows: it tests the endpoint. At most
/// two a second per endpoint (`429` with `Retry-After` over it).
#[utoipa::path(post, path = "/v1/endpoints/{id}/test", operation_id = "testEndpoint", tag = "endpoints",
    params(("id" = String, Path, description = "ep_…")), security(("api_key" = [])),
    responses((status = 200, body = TestResult), (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody)))]
pub async fn test(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TestResult>, ApiError> {
    require_webhooks(&state, &account, &id, "sending a test").await?;
    let ep = state
        .store
        .get_endpoint(account.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint"))?;
    state
        .test_limiter
        .take(&ep.id, TESTS_PER_SEC, 1)
        .map_err(|wait| {
            ApiError::rate_limited(
                format!(
                    "an endpoint takes at most {TESTS_PER_SEC} test pings a second; try again \
                     in {} ms",
                    wait.as_millis().max(1)
                ),
                wait,
            )
        })?;
    let (event_id, result) = state
        .dispatcher
        .send_ping(&ep)
        .await
        .map_err(ApiError::unprocessable)?;
    Ok(Json(TestResult {
        event_id,
        delivered: result.is_success(),
        status_code: result.status.map(|s| s.as_u16()),
        duration_ms: result.duration.as_millis() as u64,
        error: result.error,
        response_body: result.body,
    }))
}

/// `?status=` and paging.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Only deliveries in this state.
    pub status: Option<DeliveryStatus>,
    /// Deliveries per page, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

impl DeliveryQuery {
    pub fn page(&self) -> PageParams {
        PageParams {
            limit: self.limit,
            cursor: self.cursor.clone(),
        }
    }
}

/// The endpoint's deliveries, newest first.
#[utoipa::path(get, path = "/v1/endpoints/{id}/deliveries", operation_id = "listEndpointDeliveries", tag = "endpoints",
    params(("id" = String, Path, description = "ep_…"), DeliveryQuery), security(("api_key" = [])),
    responses((status = 200, body = List<Delivery>), (status = 404, body = super::error::ErrorBody)))]
pub async fn deliveries(
    State(state): State<AppState>,
    Auth(account): Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> Result<Json<List<Delivery>>, ApiError> {
    if state
        .store
        .get_endpoint(account.id.clone(), id.clone())
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("endpoint"));
    }
    let filter = DeliveryFilter {
        endpoint_id: Some(id),
        ..Default::default()
    };
    super::deliveries::list(&state, account.id, filter, q).await
}

// ---- input rules -------------------------------------------------------------------------

const MAX_URL: usize = 2048;
const MAX_DESCRIPTION: usize = 1024;
const MAX_HEADERS: usize = 20;
/// The longest name and value of an endpoint's own header, in bytes: together a line that
/// fits the 8 KiB a common proxy (nginx, by default) reads a header line into.
const MAX_HEADER_NAME: usize = 128;
const MAX_HEADER_VALUE: usize = 8000;
/// The most an endpoint's own headers may hold in all (each name and value, and the 4 bytes
/// of `": "` and the line's end): with Hookline's own, a request's head stays under the
/// 16 KiB that Node.js reads by default, however many secrets sign during rotations.
const MAX_HEADERS_TOTAL: usize = 12 * 1024;
/// Headers Hookline sets itself or that would change the request's framing.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
    "user-agent",
];

fn check_url(text: &str, rules: &UrlRules) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::unprocessable(format!("url: {why}"));
    if text.len() > MAX_URL {
        return Err(bad(&format!("longer than {MAX_URL} characters")));
    }
    let url = url::Url::parse(text).map_err(|e| bad(&format!("not a valid URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        "http" if rules.allow_insecure_urls => {}
        "http" => return Err(bad("must be https:// (this server does not allow http://)")),
        other => return Err(bad(&format!("scheme {other:?} is not http(s)"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials; use headers instead"));
    }
    if url.fragment().is_some() {
        return Err(bad("must not have a #fragment"));
    }
    // The request target must also parse as an HTTP URI.
    url.as_str()
        .parse::<http::Uri>()
        .map_err(|e| bad(&format!("not a valid request URI ({e})")))?;
    Ok(url.to_string())
}

/// Refuses a URL whose host is, or resolves to, an address of this machine or its private
/// networks (see `dispatch::targets`), unless private targets are allowed. `resolver` is the
/// one the sender connects through; the sender checks again at every connection (a name
/// may resolve differently later), this check tells the user at once.
async fn check_target(
    url: &str,
    rules: &UrlRules,
    resolver: &dyn crate::dispatch::targets::Resolve,
) -> Result<(), ApiError> {
    use crate::dispatch::targets::{forbidden, local_name};
    if rules.allow_private_targets {
        return Ok(());
    }
    let bad = |why: String| ApiError::unprocessable(format!("url: {why}"));
    let parsed = url::Url::parse(url).map_err(|e| bad(format!("not a valid URL ({e})")))?;
    match parsed.host() {
        Some(url::Host::Ipv4(ip)) => {
            if let Some(why) = forbidden(ip.into()) {
                return Err(bad(format!(
                    "{ip} is {why}; webhooks go to public addresses"
                )));
            }
        }
        Some(url::Host::Ipv6(ip)) => {
            if let Some(why) = forbidden(ip.into()) {
                return Err(bad(format!(
                    "{ip} is {why}; webhooks go to public addresses"
                )));
            }
        }
        Some(url::Host::Domain(name)) => {
            if local_name(name) {
                return Err(bad(format!("{name:?} names this machine")));
            }
            // What the name resolves to now: any forbidden address refuses it. (A name that
            // does not resolve yet is taken; the sender judges it when it connects.)
            if let Ok(ips) = resolver.resolve(name).await {
                for ip in ips {
                    if let Some(why) = forbidden(ip) {
                        return Err(bad(format!(
                            "{name:?} resolves to {ip}, {why}; webhooks go to public addresses"
                        )));
                    }
                }
            }
        }
        None => return Err(bad("has no host".into())),
    }
    Ok(())
}

/// The types an endpoint subscribes to: built-in ones and the account's own, or `*`.
async fn check_event_types(
    state: &AppState,
    account_id: &str,
    types: &[String],
) -> Result<Vec<String>, ApiError> {
    if types.is_empty() {
        return Err(ApiError::unprocessable(
            "event_types: must name at least one type, or [\"*\"]",
        ));
    }
    if types.iter().any(|t| t == "*") {
        if types.len() > 1 {
            return Err(ApiError::unprocessable(
                "event_types: \"*\" already means every type; list it alone",
            ));
        }
        return Ok(vec!["*".into()]);
    }
    let mut out: Vec<String> = Vec::with_capacity(types.len());
    for (i, t) in types.iter().enumerate() {
        let known = BUILTIN_EVENT_TYPES.iter().any(|(n, _)| n == t)
            || (crate::catalogue::is_custom_name(t)
                && state
                    .store
                    .get_event_type(account_id.to_owned(), t.clone())
                    .await?
                    .is_some());
        if !known {
            let known: Vec<&str> = BUILTIN_EVENT_TYPES.iter().map(|(n, _)| *n).collect();
            return Err(ApiError::unprocessable(format!(
                "event_types[{i}]: unknown event type {} (built-in: {}; or one of the \
                 account's own, see GET /v1/event-types)",
                crate::model::quoted(t),
                known.join(", ")
            )));
        }
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

/// A description: at most [`MAX_DESCRIPTION`] characters, no NUL (which no database text
/// column takes alike).
pub(super) fn check_description(d: Option<String>) -> Result<String, ApiError> {
    let d = d.unwrap_or_default();
    if d.chars().count() > MAX_DESCRIPTION {
        return Err(ApiError::unprocessable(format!(
            "description: longer than {MAX_DESCRIPTION} characters"
        )));
    }
    if d.contains('\0') {
        return Err(ApiError::unprocessable(
            "description: must not contain NUL characters",
        ));
    }
    Ok(d)
}

fn check_headers(h: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ApiError> {
    if h.len() > MAX_HEADERS {
        return Err(ApiError::unprocessable(format!(
            "headers: at most {MAX_HEADERS} headers"
        )));
    }
    let total: usize = h.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    if total > MAX_HEADERS_TOTAL {
        return Err(ApiError::unprocessable(format!(
            "headers: at most {MAX_HEADERS_TOTAL} bytes in all (names, values and 4 bytes a \
             line), not {total}"
        )));
    }
    let mut out = BTreeMap::new();
    for (name, value) in h {
        let lower = name.to_ascii_lowercase();
        // A name is shown as it came, unless it is long.
        let shown = match name.chars().count() {
            0..=64 => name.clone(),
            _ => crate::model::quoted(&name),
        };
        let bad = |why: &str| ApiError::unprocessable(format!("headers.{shown}: {why}"));
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(bad("not a valid header name"));
        }
        if name.len() > MAX_HEADER_NAME {
            return Err(bad(&format!("a name of at most {MAX_HEADER_NAME} bytes")));
        }
        if value.len() > MAX_HEADER_VALUE {
            return Err(bad(&format!("a value of at most {MAX_HEADER_VALUE} bytes")));
        }
        if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("webhook-") {
            return Err(bad("is set by Hookline and cannot be replaced"));
        }
        if value.contains(['\r', '\n', '\0']) || http::HeaderValue::from_str(&value).is_err() {
            return Err(bad("not a valid header value"));
        }
        if crate::store::Sealer::is_sealed(&value) {
            return Err(bad(
                "must not start with \"hlenc1:\" (the form of a sealed value)",
            ));
        }
        if out.insert(lower, value).is_some() {
            return Err(bad(
                "given twice (header names are the same whatever their case)",
            ));
        }
    }
    Ok(out)
}

fn check_rate(r: Option<u32>) -> Result<Option<u32>, ApiError> {
    match r {
        Some(0) => Err(ApiError::unprocessable(
            "rate_limit_per_sec: must be at least 1 (or absent for no limit)",
        )),
        Some(n) if n > 100_000 => Err(ApiError::unprocessable(
            "rate_limit_per_sec: at most 100000",
        )),
        other => Ok(other),
    }
}

/// A fresh `whsec_` secret of 32 random bytes.
fn generate_secret() -> Result<String, ApiError> {
    let bytes: [u8; 32] = rand::rng().random();
    let secret = Secret::from_bytes(&bytes).map_err(|e| {
        tracing::error!(error = %e, "generating a secret");
        ApiError::internal()
    })?;
    Ok(secret.to_string())
}
