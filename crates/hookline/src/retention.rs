//! Retention: events older than the retention period go, with their deliveries and attempts,
//! in small batches (one short write each, with a pause between), so that ingest never waits
//! long behind it. An event whose deliveries are not all ended stays until they are.
//! Idempotency keys go once their window has passed.

use crate::model::Timestamp;
use crate::store::Store;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Events deleted per write.
const BATCH: usize = 500;
/// The pause between two batches of one sweep.
const PAUSE: Duration = Duration::from_millis(20);

/// What retention keeps.
#[derive(Clone, Debug)]
pub struct RetentionConfig {
    /// How long events (and their deliveries and attempts) are kept.
    pub keep: Duration,
    /// How long an idempotency key is kept (its window).
    pub keys: Duration,
    /// How often a sweep runs.
    pub every: Duration,
}

/// Sweeps every `config.every` until `shutdown`.
pub async fn run(store: Store, config: RetentionConfig, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(config.every) => {}
        }
        let now = Timestamp::now().0;
        let before = Timestamp(now - config.keep.as_millis() as i64);
        let keys_before = Timestamp(now - config.keys.as_millis() as i64);
        let mut total = 0;
        loop {
            match store.purge(before, keys_before, BATCH).await {
                Ok((events, keys)) => {
                    total += events;
                    if events < BATCH && keys < BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a retention batch failed; the next sweep retries");
                    break;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PAUSE) => {}
            }
        }
        if total > 0 {
            tracing::info!(events = total, "retention removed expired events");
        }
    }
}
