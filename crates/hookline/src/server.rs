//! Wires the service together: store, dispatcher, ingest and API, on one listener.

use crate::api::{self, AppState, UrlRules};
use crate::dispatch::targets::{Guard, Resolve, SystemResolver};
use crate::dispatch::{DispatchConfig, Dispatcher};
use crate::ingest::Ingest;
use crate::model::Limits;
use crate::store::{Location, Sealer, Store};
use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a verified API key is trusted without asking the database again.
const AUTH_CACHE_TTL: Duration = Duration::from_secs(5);

/// Everything `hookline serve` needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the data lives: the embedded SQLite directory, or PostgreSQL.
    pub location: Location,
    pub dispatch: DispatchConfig,
    pub url_rules: UrlRules,
    /// Resolves endpoint hosts, both when a URL is checked at creation and when the sender
    /// connects (the SSRF rules judge what it answers). The system's by default.
    pub resolver: Arc<dyn Resolve>,
    pub max_body_bytes: usize,
    /// How long in-flight attempts may finish after shutdown began.
    pub shutdown_grace: Duration,
    /// How long an idempotency key answers repeats of its request.
    pub idempotency_window: Duration,
    /// How often retention sweeps.
    pub retention_sweep: Duration,
    /// What each plan allows.
    pub limits: Limits,
    /// `HOOKLINE_ADMIN_TOKEN` (kept as its digest): the admin API is off without it.
    pub admin_token: Option<api::admin::AdminToken>,
    /// Seals endpoint secrets at rest (`HOOKLINE_ENCRYPTION_KEY`); no key stores them clear.
    pub sealer: Sealer,
    /// How long a rotated-out secret keeps signing beside the new one.
    pub secret_overlap: Duration,
}

impl Config {
    /// Defaults for an embedded SQLite data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        Self::at(Location::Sqlite(data_dir))
    }

    /// Defaults for a store at `location`.
    pub fn at(location: Location) -> Self {
        Config {
            location,
            dispatch: DispatchConfig::default(),
            url_rules: UrlRules::default(),
            resolver: Arc::new(SystemResolver::default()),
            max_body_bytes: 256 * 1024,
            shutdown_grace: Duration::from_secs(5),
            idempotency_window: Duration::from_secs(24 * 3600),
            retention_sweep: Duration::from_secs(60),
            limits: Limits::default(),
            admin_token: None,
            sealer: Sealer::none(),
            secret_overlap: Duration::from_secs(24 * 3600),
        }
    }
}

/// Runs the service on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let where_ = config.location.describe();
    crate::telemetry::handle().map_err(|e| anyhow::anyhow!("{e}"))?;
    let lock = Store::lock(&config.location).await?;
    let store = Store::open_sealed(&config.location, config.sealer.clone())
        .await
        .with_context(|| format!("opening the store at {where_}"))?;
    // Every stored secret must open with the key given (a wrong or missing key stops the
    // start here, not at the first delivery); with a key, secrets still in clear are sealed.
    // (A secret another node changes meanwhile makes it start over: a few tries.)
    let mut tries = 0;
    let sealed = loop {
        tries += 1;
        match store.reseal_secrets(config.sealer.clone()).await {
            Err(crate::store::StoreError::Conflict(_)) if tries < 5 => continue,
            other => {
                break other.context(
                    "checking the stored endpoint secrets against HOOKLINE_ENCRYPTION_KEY",
                )?;
            }
        }
    };
    if sealed > 0 {
        tracing::info!(
            endpoints = sealed,
            "sealed endpoint secrets stored in clear"
        );
    }
    let engine = store.engine();
    if store.is_shared() {
        let floor =
            crate::dispatch::cluster::min_lease(config.dispatch.timeout, config.dispatch.lease);
        if config.dispatch.lease < floor {
            anyhow::bail!(
                "the lease ({:?}) must be at least the attempt timeout plus a margin and two \
                 heartbeats ({floor:?})",
                config.dispatch.lease
            );
        }
    }
    let joined = std::time::Instant::now();
    store.join().await.context("joining the cluster")?;
    let released = store
        .release_all_claims(config.dispatch.lease)
        .await
        .context("releasing deliveries held by a previous process")?;
    if released > 0 {
        tracing::info!(
            released,
            "deliveries a previous process held: resumed, or ended if their endpoint is off"
        );
    }
    let dispatcher = Dispatcher::start(
        store.clone(),
        config.dispatch.clone(),
        Guard::new(
            config.resolver.clone(),
            config.url_rules.allow_private_targets,
            config.url_rules.allow_insecure_urls,
        ),
        shutdown.child_token(),
        joined,
    );
    let sweeper = tokio::spawn(crate::retention::run(
        store.clone(),
        crate::retention::RetentionConfig {
            limits: config.limits,
            keys: config.idempotency_window,
            every: config.retention_sweep,
        },
        shutdown.child_token(),
    ));
    let sampler = {
        let (dispatcher, stop) = (dispatcher.clone(), shutdown.child_token());
        tokio::spawn(async move {
            loop {
                let (in_memory, open) = dispatcher.stats();
                crate::telemetry::dispatcher(in_memory, open);
                crate::telemetry::upkeep();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        })
    };
    let catalogue =
        Arc::new(crate::catalogue::Catalogue::builtin().map_err(|e| anyhow::anyhow!("{e}"))?);
    let ingest = Ingest::new(
        store.clone(),
        dispatcher.clone(),
        catalogue.clone(),
        config.idempotency_window,
    );
    let state = AppState::new(api::Shared {
        store: store.clone(),
        catalogue,
        ingest,
        dispatcher: dispatcher.clone(),
        rules: Arc::new(config.url_rules.clone()),
        resolver: config.resolver.clone(),
        max_body_bytes: config.max_body_bytes,
        auth_cache: Arc::new(api::extract::AuthCache::new(AUTH_CACHE_TTL)),
        limits: config.limits,
        ingest_limiter: Default::default(),
        key_read_limiter: Default::default(),
        test_limiter: Default::default(),
        admin_token: config.admin_token.clone(),
        secret_overlap: config.secret_overlap,
    });
    let app = api::router(state);
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    tracing::info!(%addr, engine, store = %where_, "hookline is serving");
    let stop = shutdown.clone();
    // Responses are small and latency matters: no Nagle delay on accepted connections.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let lost = dispatcher.lease_lost();
    let lost_too = lost.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = lost_too.cancelled() => {}
            }
        })
        .await
        .context("serving HTTP");
    shutdown.cancel();
    let _ = sweeper.await;
    let _ = sampler.await;
    // Shared store: attempts in flight must end (by their timeout at worst) before this
    // node gives its deliveries back, or another node could send one of them meanwhile.
    let grace = if store.is_shared() {
        config
            .shutdown_grace
            .max(config.dispatch.timeout + Duration::from_secs(1))
    } else {
        config.shutdown_grace
    };
    let drained = dispatcher.drain(grace).await;
    if lost.is_cancelled() {
        lock.release();
        anyhow::bail!("this node lost its lease to the other nodes; restart it to rejoin");
    }
    if store.is_shared() && !drained {
        tracing::warn!(
            "attempts still running at shutdown; this node's deliveries go to the others when its lease runs out"
        );
        lock.release();
        return served;
    }
    match store.leave().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(count = n, "gave this node's deliveries back to the others"),
        Err(e) => {
            tracing::warn!(error = %e, "giving this node's deliveries back failed; the others take them when its lease runs out")
        }
    }
    lock.release();
    tracing::info!("hookline stopped");
    served
}
