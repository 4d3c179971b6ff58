//! Per-account ingest rate limits: one token bucket per account, on each node. (The same
//! buckets limit an account's reads of idempotency keys, and, keyed by endpoint id, an
//! endpoint's test pings.)
//!
//! A bucket holds one second of the account's rate. A request for `n` events is let in when
//! the bucket holds `n` tokens, or is full (so a batch larger than one second's worth is
//! not refused forever); it then takes all `n`, possibly going into debt, which later
//! requests wait out. So the average never exceeds the rate, and a refused request is told
//! how long to wait (`Retry-After`). A request the server then fails to accept (the store
//! failed) gives its tokens back; an invalid one keeps its cost. Buckets live in memory: with several nodes, each
//! enforces the limit for the traffic it receives.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The buckets of every account seen.
#[derive(Default)]
pub struct IngestLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    /// Tokens a second (the rate it was last used with).
    rate: f64,
}

/// More accounts than this and idle buckets (full again) are dropped.
const MAX_BUCKETS: usize = 100_000;

impl IngestLimiter {
    /// Takes `n` events' worth for `account` at `per_sec`, or says how long to wait.
    pub fn take(&self, account: &str, per_sec: u32, n: usize) -> Result<(), Duration> {
        self.take_at(account, per_sec, n, Instant::now())
    }

    fn take_at(&self, account: &str, per_sec: u32, n: usize, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(per_sec.max(1));
        let Ok(mut buckets) = self.buckets.lock() else {
            // A poisoned lock means a panic elsewhere; admitting is the safe failure here.
            return Ok(());
        };
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(account) {
            // Only buckets that are full again go: forgetting them forgives nothing.
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * b.rate < b.rate
            });
        }
        // A lookup by `&str` first: the account's id is copied only for a new bucket.
        if !buckets.contains_key(account) {
            buckets.insert(
                account.to_owned(),
                Bucket {
                    tokens: rate,
                    at: now,
                    rate,
                },
            );
        }
        let Some(b) = buckets.get_mut(account) else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.rate = rate;
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.at = now;
        let n = n as f64;
        if b.tokens >= n || b.tokens >= rate {
            b.tokens -= n;
            return Ok(());
        }
        let need = n.min(rate) - b.tokens;
        Err(Duration::from_secs_f64(need / rate))
    }

    /// Gives back `n` events' worth taken for a request that was not accepted after all.
    pub fn refund(&self, account: &str, n: usize) {
        if let Ok(mut buckets) = self.buckets.lock()
            && let Some(b) = buckets.get_mut(account)
        {
            b.tokens = (b.tokens + n as f64).min(b.rate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IngestLimiter;
    use std::time::{Duration, Instant};

    #[test]
    fn a_second_of_burst_then_the_rate() {
        let l = IngestLimiter::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(l.take_at("a", 10, 1, t0).is_ok());
        }
        let wait = l.take_at("a", 10, 1, t0).expect_err("bucket empty");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another account has its own bucket.
        assert!(l.take_at("b", 10, 1, t0).is_ok());
        // A tenth of a second later one more fits.
        assert!(
            l.take_at("a", 10, 1, t0 + Duration::from_millis(100))
                .is_ok()
        );
        assert!(
            l.take_at("a", 10, 1, t0 + Duration::from_millis(100))
                .is_err()
        );
    }

    #[test]
    fn a_batch_over_a_second_passes_when_full_and_is_paid_back() {
        let l = IngestLimiter::default();
        let t0 = Instant::now();
        assert!(
            l.take_at("a", 100, 1000, t0).is_ok(),
            "full bucket lets a big batch in"
        );
        // 900 tokens of debt: nothing for the next nine seconds.
        assert!(l.take_at("a", 100, 1, t0 + Duration::from_secs(5)).is_err());
        let wait = l
            .take_at("a", 100, 1, t0 + Duration::from_secs(9))
            .expect_err("in debt");
        assert!(wait <= Duration::from_millis(10), "{wait:?}");
        assert!(l.take_at("a", 100, 1, t0 + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn a_refused_request_gives_its_tokens_back() {
        let l = IngestLimiter::default();
        let t0 = Instant::now();
        assert!(l.take_at("a", 10, 10, t0).is_ok());
        l.refund("a", 10);
        assert!(l.take_at("a", 10, 10, t0).is_ok(), "refunded");
        l.refund("a", 1000);
        assert!(l.take_at("a", 10, 10, t0).is_ok());
        assert!(
            l.take_at("a", 10, 1, t0).is_err(),
            "a refund never fills above one second"
        );
    }
}
