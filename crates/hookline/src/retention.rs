//! Retention: each account's events older than its plan's retention period go, with their
//! deliveries and attempts, in small batches (one short write each, with a pause between),
//! so that ingest never waits long behind it. An event whose deliveries are not all ended
//! stays until they are. Idempotency keys go once their window has passed.
//!
//! A sweep walks the accounts; an account whose oldest event is within its period costs one
//! indexed read and no write. `/metrics` counts the sweeps and the events removed, and holds
//! the time of the last completed sweep (`telemetry`).

use crate::model::{Limits, Timestamp};
use crate::store::Store;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Events deleted per write.
const BATCH: usize = 500;
/// The pause between two writes of one sweep.
const PAUSE: Duration = Duration::from_millis(20);

/// What retention keeps.
#[derive(Clone, Debug)]
pub struct RetentionConfig {
    /// Each plan's retention period.
    pub limits: Limits,
    /// How long an idempotency key is kept (its window).
    pub keys: Duration,
    /// How often a sweep runs.
    pub every: Duration,
}

/// Sweeps every `config.every` until `shutdown`.
pub async fn run(store: Store, config: RetentionConfig, shutdown: CancellationToken) {
    // The metrics exist from the start, so that sweeps that never complete show as a last
    // sweep that stays at the node's start, not as no metric at all.
    crate::telemetry::retention_started();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(config.every) => {}
        }
        let outcome = sweep(&store, &config, &shutdown).await;
        if shutdown.is_cancelled() {
            // Cut short: neither completed nor failed.
            return;
        }
        crate::telemetry::retention_sweep(outcome.is_ok());
        match outcome {
            Ok(0) => {}
            Ok(events) => tracing::info!(events, "retention removed expired events"),
            Err(e) => tracing::warn!(error = %e, "a retention sweep failed; the next one retries"),
        }
    }
}

/// One sweep over every account, then the idempotency keys. Returns the events removed.
async fn sweep(
    store: &Store,
    config: &RetentionConfig,
    shutdown: &CancellationToken,
) -> Result<usize, crate::store::StoreError> {
    let mut total = 0;
    let mut after = None;
    loop {
        let page = store.list_accounts(after, 1000).await?;
        for account in &page.items {
            let keep = config.limits.of(account.plan).retention;
            let before = Timestamp(Timestamp::now().0 - keep.as_millis() as i64);
            let oldest = store.oldest_event_at(account.id.clone()).await?;
            if oldest.is_none_or(|t| t >= before) {
                continue;
            }
            loop {
                let n = store.purge(account.id.clone(), before, BATCH).await?;
                crate::telemetry::retention_removed(n);
                total += n;
                if n < BATCH || pause(shutdown).await {
                    break;
                }
            }
            if shutdown.is_cancelled() {
                return Ok(total);
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let keys_before = Timestamp(Timestamp::now().0 - config.keys.as_millis() as i64);
    while store.purge_keys(keys_before, BATCH).await? == BATCH {
        if pause(shutdown).await {
            break;
        }
    }
    Ok(total)
}

/// Waits [`PAUSE`]; `true` when shutdown came first.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(PAUSE) => false,
    }
}
