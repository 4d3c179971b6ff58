//! The HTTP API: thin handlers over ingest, the store and the dispatcher.
//!
//! Handlers parse (see [`extract`]), call one service, and shape the answer. Every `/v1`
//! handler takes [`extract::Auth`] and passes its account to every store call: another
//! account's ids are simply not found (`404`). Plan gates (`403 plan_required`) are checked
//! after that, so they never reveal whether another account's id exists. The operator's
//! routes live in [`admin`]. The OpenAPI document is generated from the
//! handlers' own annotations and types, so it cannot drift from them.

pub mod account;
pub mod admin;
pub mod deliveries;
pub mod endpoints;
pub mod error;
pub mod event_types;
pub mod events;
pub mod extract;
pub mod keys;
pub mod ui;

use crate::dispatch::Dispatcher;
use crate::ingest::Ingest;
use crate::store::Store;
use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use error::ApiError;
use serde::Serialize;
use std::sync::Arc;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What every handler can reach: one shared allocation, so handing it to a request is one
/// reference count, not one per part.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub store: Store,
    pub catalogue: Arc<crate::catalogue::Catalogue>,
    pub ingest: Ingest,
    pub dispatcher: Dispatcher,
    pub rules: Arc<UrlRules>,
    /// The resolver the sender connects through: URLs are checked against its answers.
    pub resolver: Arc<dyn crate::dispatch::targets::Resolve>,
    pub max_body_bytes: usize,
    /// How long a request's body may take to arrive (`408` past it).
    pub body_read_timeout: std::time::Duration,
    pub auth_cache: Arc<extract::AuthCache>,
    /// What each plan allows.
    pub limits: crate::model::Limits,
    /// Each account's ingest rate.
    pub ingest_limiter: crate::ratelimit::IngestLimiter,
    /// Each account's reads of idempotency keys (one per keyed ingest request, before it is
    /// metered), at most as many a second as its plan ingests events.
    pub key_read_limiter: crate::ratelimit::IngestLimiter,
    /// Each endpoint's test pings (`POST /v1/endpoints/{id}/test`), which no other limit
    /// covers: [`endpoints::TESTS_PER_SEC`].
    pub test_limiter: crate::ratelimit::IngestLimiter,
    /// The admin API's token; `None` turns the admin API off.
    pub admin_token: Option<admin::AdminToken>,
    /// How long a rotated-out secret keeps signing.
    pub secret_overlap: std::time::Duration,
}

/// Which endpoint URLs are accepted.
#[derive(Clone, Debug, Default)]
pub struct UrlRules {
    /// `http://` URLs are accepted (development).
    pub allow_insecure_urls: bool,
    /// Loopback and private targets are accepted (development, tests).
    pub allow_private_targets: bool,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hookline",
        description = "Durable, signed, real-time webhook delivery. Errors are \
            `{\"error\": {\"code\", \"message\"}}`; lists are `{\"data\", \"next_cursor\"}`."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "endpoints", description = "Where webhooks go"),
        (name = "events", description = "What producers send"),
        (name = "deliveries", description = "One event for one endpoint, and its attempts"),
        (name = "keys", description = "The account, its plan's limits, and its API keys"),
        (name = "admin", description = "The operator's API: accounts, plans, keys"),
        (name = "health", description = "Liveness"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// A page of a list.
#[derive(Serialize, ToSchema)]
pub struct List<T: ToSchema> {
    pub data: Vec<T>,
    /// Pass as `?cursor=` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

impl<T: ToSchema> List<T> {
    pub fn from_page(page: crate::store::Page<T>) -> Self {
        List {
            data: page.items,
            next_cursor: page.next.map(extract::encode_cursor),
        }
    }
}

#[derive(Serialize, ToSchema)]
struct Health {
    status: &'static str,
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The OpenAPI document with the answers that every operation of a kind can give, from
/// the extractors and the store they all go through, added where its own annotation does
/// not list them: `401` (a key or token), `400`/`408`/`413`/`422` (a JSON body), `400` (a
/// query), `400` and `404` (an id in the path), `404` on every `/admin` route (off without
/// its token), and on every `/v1` and `/admin` route `500` and `503` (neither means "maybe
/// accepted").
fn with_common_answers(doc: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut doc = match serde_json::to_value(doc) {
        Ok(doc) => doc,
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document does not serialize");
            return serde_json::Value::Null;
        }
    };
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            if !matches!(method.as_str(), "get" | "put" | "post" | "delete" | "patch") {
                continue;
            }
            let mut answers: Vec<(&str, &str)> = Vec::new();
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            if secured {
                answers.push(("401", "The key (or the admin token) is missing or wrong."));
            }
            if op.get("requestBody").is_some() {
                answers.extend([
                    ("400", "The body is not JSON."),
                    (
                        "408",
                        "The body did not arrive in time; nothing of the request was done.",
                    ),
                    (
                        "413",
                        "The body is over the limit; nothing of the request was done.",
                    ),
                    (
                        "422",
                        "Valid JSON of the wrong shape, or breaking a field rule.",
                    ),
                ]);
            }
            let query = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
            if query {
                answers.push(("400", "A query parameter is malformed or out of range."));
            }
            if path.contains('{') {
                answers.push(("400", "An id in the path is malformed."));
            }
            if path.starts_with("/admin/") {
                answers.push((
                    "404",
                    "The admin API is off (no `HOOKLINE_ADMIN_TOKEN`), or no such resource.",
                ));
            } else if path.contains('{') {
                answers.push(("404", "No such resource in this account."));
            }
            if path.starts_with("/v1/") || path.starts_with("/admin/") {
                answers.extend([
                    ("500", "An internal error; the request was not accepted."),
                    (
                        "503",
                        "The database is unavailable or its storage is full \
                         (`storage_full`), or the server is shutting down; the request was \
                         not accepted (`Retry-After`).",
                    ),
                ]);
            }
            optional_body(op);
            let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) else {
                continue;
            };
            for (status, description) in &answers {
                responses.entry(*status).or_insert_with(|| {
                    serde_json::json!({
                        "description": description,
                        "content": {"application/json": {"schema": {
                            "$ref": "#/components/schemas/ErrorBody"
                        }}}
                    })
                });
            }
            for (status, answer) in responses.iter_mut() {
                let Some(answer) = answer.as_object_mut() else {
                    continue;
                };
                // OpenAPI requires a description of every answer: the common one for its
                // status here, else what the status means for any operation.
                if answer
                    .get("description")
                    .and_then(|d| d.as_str())
                    .is_none_or(str::is_empty)
                {
                    let description = answers
                        .iter()
                        .find(|(s, _)| *s == status.as_str())
                        .map(|(_, d)| *d)
                        .unwrap_or_else(|| meaning_of(status));
                    answer.insert("description".into(), description.into());
                }
                if matches!(status.as_str(), "429" | "503") {
                    answer.insert(
                        "headers".into(),
                        serde_json::json!({"Retry-After": {
                            "description": "Seconds to wait before trying again.",
                            "required": true,
                            "schema": {"type": "integer", "minimum": 1}
                        }}),
                    );
                }
            }
        }
    }
    add_plain_routes(paths);
    doc
}

/// A body declared `Option<T>` (the request may have none) comes out of the annotations as
/// "`T` or JSON `null`", which the API does not take: say instead that the body is `T` and
/// may be left out.
fn optional_body(op: &mut serde_json::Value) {
    let Some(body) = op.get_mut("requestBody") else {
        return;
    };
    let Some(json) = body.pointer_mut("/content/application~1json/schema") else {
        return;
    };
    let Some(choices) = json.get("oneOf").and_then(|c| c.as_array()) else {
        return;
    };
    let null = serde_json::json!({"type": "null"});
    if choices.len() == 2
        && choices.contains(&null)
        && let Some(t) = choices.iter().find(|c| **c != null).cloned()
    {
        *json = t;
        body["required"] = false.into();
    }
}

/// What an answer's status means when its operation says nothing more of it.
fn meaning_of(status: &str) -> &'static str {
    match status {
        "200" => "Success.",
        "201" => "Created.",
        "202" => "Accepted.",
        "204" => "Done; no body.",
        "400" => "The request is malformed; nothing was done.",
        "403" => {
            "The account's plan does not include this, or one of its limits is reached; \
                  nothing was done."
        }
        "404" => "No such resource in this account.",
        "409" => {
            "The request conflicts with the resource's state, or with an earlier request \
                  under the same idempotency key; nothing was done."
        }
        "422" => "Valid JSON of the wrong shape, or breaking a field rule; nothing was done.",
        "429" => "Rate limited; nothing was accepted (`Retry-After`).",
        _ => "See the error's code and message.",
    }
}

/// The routes served beside the API's own, which no handler annotation describes: the
/// metrics, this document and the dashboard.
fn add_plain_routes(paths: &mut serde_json::Map<String, serde_json::Value>) {
    let plain = |operation_id: &str, summary: &str, media: &str, description: &str| {
        serde_json::json!({"get": {
            "tags": ["health"],
            "operationId": operation_id,
            "summary": summary,
            "responses": {"200": {
                "description": description,
                "content": {media: {"schema": {"type": "string"}}}
            }}
        }})
    };
    paths.insert(
        "/metrics".into(),
        plain(
            "metrics",
            "Prometheus metrics of this process.",
            "text/plain",
            "The metrics, in Prometheus' text format 0.0.4.",
        ),
    );
    let mut doc = plain(
        "openapi",
        "This document.",
        "application/json",
        "The OpenAPI 3.1 document of the API.",
    );
    doc["get"]["responses"]["200"]["content"]["application/json"]["schema"] =
        serde_json::json!({"type": "object"});
    paths.insert("/openapi.json".into(), doc);
    paths.insert(
        "/ui/".into(),
        plain(
            "dashboard",
            "The dashboard: endpoints, events, deliveries and their attempts, for an API key.",
            "text/html",
            "The dashboard's page.",
        ),
    );
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let max_body = state.max_body_bytes;
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(endpoints::create, endpoints::list))
        .routes(routes!(
            endpoints::get,
            endpoints::update,
            endpoints::delete
        ))
        .routes(routes!(endpoints::secret))
        .routes(routes!(endpoints::rotate_secret))
        .routes(routes!(endpoints::test))
        .routes(routes!(endpoints::recover))
        .routes(routes!(endpoints::deliveries))
        .routes(routes!(events::create, events::list))
        .routes(routes!(events::create_batch))
        .routes(routes!(events::get))
        .routes(routes!(events::deliveries))
        .routes(routes!(deliveries::get))
        .routes(routes!(deliveries::retry))
        .routes(routes!(event_types::list, event_types::create))
        .routes(routes!(
            event_types::get,
            event_types::update,
            event_types::delete
        ))
        .routes(routes!(account::get))
        .routes(routes!(keys::list, keys::issue))
        .routes(routes!(keys::revoke))
        .routes(routes!(admin::create, admin::list))
        .routes(routes!(admin::get, admin::update))
        .routes(routes!(admin::list_keys, admin::issue_key))
        .routes(routes!(admin::revoke_key))
        .split_for_parts();
    // Written once: the document does not change while the server runs.
    let openapi = axum::body::Bytes::from(
        serde_json::to_vec(&with_common_answers(&openapi)).unwrap_or_default(),
    );
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = openapi.clone();
                async move { ([(http::header::CONTENT_TYPE, "application/json")], doc) }
            }),
        )
        .route("/metrics", axum::routing::get(crate::telemetry::render))
        .route("/ui", axum::routing::get(ui::to_index))
        .route("/ui/", axum::routing::get(ui::index))
        .route("/ui/app.js", axum::routing::get(ui::app))
        .route("/ui/style.css", axum::routing::get(ui::style))
        // Browsers ask for it on every page: an empty answer, not a `404` in their console.
        .route(
            "/favicon.ico",
            axum::routing::get(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        // A route asked with a method it does not take: JSON like every error (axum still
        // adds `Allow`).
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method (see the Allow header)",
            )
            .into_response()
        })
        .fallback(|| async { ApiError::not_found("route").into_response() })
        .layer(axum::middleware::from_fn(crate::telemetry::track_http))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}
