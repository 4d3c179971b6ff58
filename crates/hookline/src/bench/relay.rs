//! A relay that stores nothing, for `hookline bench --relay`: the ceiling of any webhook
//! sender that takes events over HTTP and delivers them over HTTP, on this machine and this
//! stack.
//!
//! It answers the three calls the bench makes of Hookline (create an endpoint, post one
//! event, post a batch) with the same parts Hookline uses — axum and hyper for the API, the
//! same pooled hyper client, the same envelope and the same signing — on a runtime of its own
//! with two workers, as `hookline serve` has. It answers `202` as soon as a request parses,
//! and sends every event to every endpoint straight away, at most 32 requests in flight per
//! endpoint (Hookline's default).
//!
//! What it leaves out is exactly what Hookline adds: API keys, schema checks, the durable
//! commit before the answer, retries, and the record of every attempt. A crash loses
//! everything it holds; nothing here is fit to run for real. Hookline's rate over the relay's,
//! measured in the same run, is the share of the two-exchange ceiling that Hookline reaches.

use crate::model::{Timestamp, envelope, new_id};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use hookline_signing::Secret;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::{Arc, RwLock};
use tokio::sync::{Semaphore, oneshot};

/// Requests in flight per endpoint, as Hookline's default `--endpoint-concurrency`.
const PER_ENDPOINT: usize = 32;

/// A running relay. Dropping it stops it.
pub struct Relay {
    /// Its base URL.
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Relay {
    /// Starts a relay on 127.0.0.1, on a thread and a runtime of its own.
    pub fn start() -> anyhow::Result<Relay> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-relay")
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("bench-relay".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("relay: listening: {e}");
                            return;
                        }
                    };
                    let mut http = HttpConnector::new();
                    http.set_nodelay(true);
                    let state = Arc::new(Relayed {
                        endpoints: RwLock::new(Vec::new()),
                        http: Client::builder(TokioExecutor::new())
                            .pool_max_idle_per_host(256)
                            .build(http),
                    });
                    let app = Router::new()
                        .route("/v1/endpoints", post(create_endpoint))
                        .route("/v1/events", post(one_event))
                        .route("/v1/events/batch", post(batch))
                        .with_state(state);
                    tokio::select! {
                        served = axum::serve(listener, app) => {
                            if let Err(e) = served {
                                eprintln!("relay: serving: {e}");
                            }
                        }
                        _ = stopped => {}
                    }
                });
                // Deliveries still in flight are dropped: the relay keeps no promise.
                runtime.shutdown_background();
            })?;
        Ok(Relay {
            url,
            stop: Some(stop),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct Endpoint {
    url: http::Uri,
    secret: Secret,
    slots: Arc<Semaphore>,
}

struct Relayed {
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
    http: Client<HttpConnector, Full<Bytes>>,
}

#[derive(Deserialize)]
struct NewEndpoint {
    url: String,
    secret: String,
}

#[derive(Deserialize)]
struct EventIn {
    #[serde(rename = "type")]
    event_type: String,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
struct BatchIn {
    events: Vec<EventIn>,
}

type Answer = (StatusCode, Json<serde_json::Value>);

fn refuse(why: String) -> Answer {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(serde_json::json!({ "error": why })),
    )
}

async fn create_endpoint(State(relay): State<Arc<Relayed>>, body: Bytes) -> Answer {
    let new: NewEndpoint = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => return refuse(e.to_string()),
    };
    let (url, secret) = match (new.url.parse(), Secret::parse(&new.secret)) {
        (Ok(u), Ok(s)) => (u, s),
        _ => return refuse("a URL and a whsec_ secret are needed".into()),
    };
    let Ok(mut endpoints) = relay.endpoints.write() else {
        return refuse("relay state poisoned".into());
    };
    endpoints.push(Arc::new(Endpoint {
        url,
        secret,
        slots: Arc::new(Semaphore::new(PER_ENDPOINT)),
    }));
    let id = format!("ep_{}", endpoints.len());
    (StatusCode::CREATED, Json(serde_json::json!({ "id": id })))
}

async fn one_event(State(relay): State<Arc<Relayed>>, body: Bytes) -> Answer {
    match serde_json::from_slice::<EventIn>(&body) {
        Ok(ev) => {
            let id = relay.fan_out(ev);
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "id": id })))
        }
        Err(e) => refuse(e.to_string()),
    }
}

async fn batch(State(relay): State<Arc<Relayed>>, body: Bytes) -> Answer {
    match serde_json::from_slice::<BatchIn>(&body) {
        Ok(b) => {
            let ids: Vec<String> = b.events.into_iter().map(|ev| relay.fan_out(ev)).collect();
            (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "ids": ids })),
            )
        }
        Err(e) => refuse(e.to_string()),
    }
}

impl Relayed {
    /// Sends the event to every endpoint, in tasks of their own; returns its id.
    fn fan_out(self: &Arc<Self>, ev: EventIn) -> String {
        let id = new_id("evt");
        let payload = Bytes::from(envelope(
            &id,
            &ev.event_type,
            Timestamp::now(),
            ev.data.get(),
        ));
        let endpoints = self.endpoints.read().map(|e| e.clone()).unwrap_or_default();
        for ep in endpoints {
            let (relay, id, payload) = (self.clone(), id.clone(), payload.clone());
            tokio::spawn(async move {
                let Ok(_slot) = ep.slots.acquire().await else {
                    return;
                };
                let Ok(req) = super::signed_post(ep.url.clone(), &ep.secret, &id, payload) else {
                    return;
                };
                if let Ok(resp) = relay.http.request(req).await {
                    let _ = resp.into_body().collect().await;
                }
            });
        }
        id
    }
}
