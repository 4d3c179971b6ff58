//! Wires the service together: store, dispatcher, ingest and API, on one listener.

use crate::api::error::AbortConnection;
use crate::api::{self, AppState, UrlRules};
use crate::dispatch::targets::{Guard, Resolve, SystemResolver};
use crate::dispatch::{DispatchConfig, Dispatcher};
use crate::ingest::Ingest;
use crate::model::Limits;
use crate::store::{Location, Sealer, Store};
use anyhow::Context as _;
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
    /// How long a connection may take to send a request's headers, counted from the end of
    /// its previous request (so also how long an idle connection is kept open: longer than
    /// what keeps connections idle in front of it, load balancers and client pools, mostly
    /// 60 s, so that they close theirs first and never send into one closing here).
    pub header_read_timeout: Duration,
    /// How long a request's body may take to arrive, once its handler reads it.
    pub body_read_timeout: Duration,
    /// How long a write of an answer may wait for its client to make room: a client that
    /// stops reading loses its connection after as long. Also how long a shutdown waits
    /// for the API's requests in progress before it closes their connections.
    pub write_timeout: Duration,
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
            header_read_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
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
    let store = Store::open_locked(&config.location, config.sealer.clone(), &lock)
        .await
        .with_context(|| format!("opening the store at {where_}"))?;
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
    // Every stored secret must open with the key given (a wrong or missing key stops the
    // start here, not at the first delivery); with a key, secrets still in clear are sealed.
    // (A secret another node changes meanwhile makes it start over: a few tries.) After
    // joining: a re-encryption counts the nodes that joined under the same lock, so this
    // node is either counted (and the re-encryption refused) or checks the new key.
    let mut tries = 0;
    let sealed = loop {
        tries += 1;
        match store.reseal_secrets(config.sealer.clone(), false).await {
            Err(crate::store::StoreError::Conflict(_)) if tries < 5 => continue,
            Err(e) => {
                // Not started after all: leave, so no one waits for this node's lease.
                if let Err(left) = store.leave().await {
                    tracing::warn!(error = %left, "leaving the cluster after a failed start");
                }
                return Err(anyhow::Error::new(e).context(
                    "checking the stored endpoint secrets against HOOKLINE_ENCRYPTION_KEY",
                ));
            }
            Ok(n) => break n,
        }
    };
    if sealed > 0 {
        tracing::info!(
            endpoints = sealed,
            "sealed endpoint secrets stored in clear"
        );
    }
    // Before the first write that may end deliveries: the store counts them.
    crate::telemetry::deliveries_ended_started();
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
    // Endpoints that asked to be left alone (a long `Retry-After`) before a restart are, still.
    let holds = store
        .endpoint_holds(crate::model::Timestamp::now())
        .await
        .context("reading the endpoints' Retry-After holds")?;
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
        holds,
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
        body_read_timeout: config.body_read_timeout,
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
    let lost = dispatcher.lease_lost();
    let lost_too = lost.clone();
    let timeouts = HttpTimeouts {
        header_read: config.header_read_timeout,
        write: config.write_timeout,
    };
    serve_http(listener, app, timeouts, async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = lost_too.cancelled() => {}
        }
    })
    .await;
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
    let in_flight = dispatcher.attempts_in_flight();
    if in_flight > 0 {
        tracing::info!(
            attempts = in_flight,
            grace_secs = grace.as_secs(),
            "waiting for the attempts in flight to end"
        );
    }
    let (drained, cut) = dispatcher.drain(grace).await;
    if cut > 0 && !store.is_shared() {
        tracing::warn!(
            attempts = cut,
            "attempts still running at shutdown were cut: their deliveries are sent again at \
             the next start, so their receivers may get them twice"
        );
    }
    if lost.is_cancelled() {
        lock.release();
        anyhow::bail!("this node lost its lease to the other nodes; restart it to rejoin");
    }
    if store.is_shared() && !drained {
        tracing::warn!(
            "attempts still running at shutdown; this node's deliveries go to the others when its lease runs out"
        );
        lock.release();
        return Ok(());
    }
    // The API may have cut requests off at its deadline whose writes are still queued:
    // on SQLite they end before the serve lock is given up, so that a next process never
    // meets one. (Outcomes of attempts still running when the drain gave up may still
    // come later, as they could before.)
    if let Err(e) = store.settle().await {
        tracing::warn!(error = %e, "waiting for the store's last writes failed");
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
    Ok(())
}

/// How long the accept loop pauses after an error that is not one connection's (out of
/// open files, say): what is open may close meanwhile, and the loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The time limits [`serve_http`] puts on each connection.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// How long a connection has to send a request's headers, from the end of its previous
    /// request (so also how long an idle connection stays open).
    pub header_read: Duration,
    /// How long a write of the answer may wait for the client to make room for it (more
    /// than zero: at zero every write that waits fails). Also how long a shutdown waits
    /// for the requests in progress.
    pub write: Duration,
}

/// Serves `app` over HTTP/1.1 on `listener` until `stop` completes, then waits for the
/// connections to finish the requests they are in (idle ones close at once), for at most
/// `timeouts.write`: connections still open then are closed, answered or not (a request
/// cut off so may still commit: its client, without an answer, cannot tell, as after a
/// crash).
///
/// Each connection has `timeouts.header_read` to send a request's headers, counted from the
/// end of its previous request: a client that opens connections and sends nothing, or a
/// header a byte at a time, cannot hold them (and so open files) for long, and idle
/// keep-alive connections close after as long. (The body has its own limit, where handlers
/// read it: `api::extract`.) An answer the client stops taking is cut off once a write has
/// waited `timeouts.write` for room. The clock starts when a write finds the socket's send
/// buffer full and stops at the next write that goes through, and Linux lets a write
/// through only once the client has taken about a third of that buffer (which grows with
/// the connection's pace: tens of KiB for a slow client on a real network, at most about
/// 1.3 MiB at Linux's default limit): a client that takes that much in each
/// `timeouts.write` keeps its connection, one that stops is cut off. Accepted connections get
/// `TCP_NODELAY`: answers are small and latency matters. A response marked
/// [`AbortConnection`] is not sent: its connection is closed.
pub async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    timeouts: HttpTimeouts,
    stop: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    let mut last_warned: Option<std::time::Instant> = None;
    // Each connection's task, so that a shutdown can close those still open at its end.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.as_mut() => break,
            accepted = listener.accept() => accepted,
        };
        // Forget the connections that have ended.
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::error!(error = %e, "accepting connections failed; trying again");
                    last_warned = Some(std::time::Instant::now());
                }
                tokio::select! {
                    _ = stop.as_mut() => break,
                    _ = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                }
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let app = app.clone();
        // A response marked `AbortConnection` is not sent: hyper closes the connection when
        // the service fails.
        let service = hyper::service::service_fn(move |req| {
            let mut app = app.clone();
            async move {
                let resp = tower_service::Service::call(&mut app, req)
                    .await
                    .unwrap_or_else(|never| match never {});
                match resp.extensions().get::<AbortConnection>() {
                    Some(abort) => Err(*abort),
                    None => Ok(resp),
                }
            }
        });
        // The clock starts when a write finds no room and stops at the next that does; the
        // connection ends with `TimedOut` if it runs out.
        let mut io = tokio_io_timeout::TimeoutStream::new(tcp);
        io.set_write_timeout(Some(timeouts.write));
        let io = TokioIo::new(Box::pin(io));
        let conn = graceful.watch(http.serve_connection(io, service));
        connections.spawn(async move {
            if let Err(e) = conn.await {
                if is_write_timeout(&e) {
                    crate::telemetry::write_timed_out();
                    tracing::info!(%peer, "closed a connection whose client stopped taking its answer");
                } else {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(timeouts.write, graceful.shutdown())
        .await
        .is_err()
    {
        while connections.try_join_next().is_some() {}
        tracing::warn!(
            open = connections.len(),
            "closing the API's connections still answering at shutdown"
        );
    }
    connections.shutdown().await;
}

/// Whether a connection ended because a write of its answer found no room for the write
/// time (an I/O error of kind `TimedOut`, hyper's own timeouts being of another type).
fn is_write_timeout(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = err.source();
    }
    false
}

/// An accept error that concerns one connection only (it went away before it was taken).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
