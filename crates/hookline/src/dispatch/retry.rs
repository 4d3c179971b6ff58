//! The retry schedule: how long to wait after each failed attempt.

use rand::RngExt as _;
use std::time::Duration;

/// Waits after the 1st, 2nd, … failed attempt. A delivery that fails once more than the
/// schedule is long ends as `failed`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    steps: Vec<Duration>,
}

/// Each wait is multiplied by a random factor in `[1 - JITTER, 1 + JITTER]`, so that
/// deliveries that failed together do not all come back together.
const JITTER: f64 = 0.1;

impl Default for RetrySchedule {
    /// 5 s, 30 s, 2 min, 5 min, 15 min, 30 min, 1 h, 2 h, 4 h, 8 h, 12 h, 24 h, 24 h, 24 h:
    /// 15 attempts over about 4.2 days (at least 3.7 days with the jitter).
    fn default() -> Self {
        let s = Duration::from_secs;
        RetrySchedule {
            steps: vec![
                s(5),
                s(30),
                s(120),
                s(300),
                s(900),
                s(1800),
                s(3600),
                s(2 * 3600),
                s(4 * 3600),
                s(8 * 3600),
                s(12 * 3600),
                s(24 * 3600),
                s(24 * 3600),
                s(24 * 3600),
            ],
        }
    }
}

impl RetrySchedule {
    /// Parses `5s,1m,10m,2h,1d` (units `ms`, `s`, `m`, `h`, `d`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut steps = Vec::new();
        for part in text.split(',').map(str::trim) {
            steps.push(parse_duration(part)?);
        }
        if steps.is_empty() {
            return Err("the retry schedule needs at least one step".into());
        }
        Ok(RetrySchedule { steps })
    }

    /// How many retries follow the first attempt.
    pub fn retries(&self) -> usize {
        self.steps.len()
    }

    /// The wait before the attempt after failed attempt number `attempt` (1-based), or
    /// `None` when the schedule is exhausted. A `Retry-After` from the receiver lengthens it.
    pub fn next_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let step = *self.steps.get(attempt.checked_sub(1)? as usize)?;
        let factor = rand::rng().random_range((1.0 - JITTER)..=(1.0 + JITTER));
        let jittered = step.mul_f64(factor);
        Some(match retry_after {
            Some(ra) => jittered.max(ra),
            None => jittered,
        })
    }

    /// The whole schedule without jitter.
    pub fn total(&self) -> Duration {
        self.steps.iter().sum()
    }
}

pub use crate::model::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_covers_three_days_even_with_jitter() {
        let d = RetrySchedule::default();
        let min_total = d.total().mul_f64(1.0 - JITTER);
        assert!(min_total > Duration::from_secs(3 * 86_400), "{min_total:?}");
    }

    #[test]
    fn parse_and_exhaust() {
        let s = RetrySchedule::parse("100ms, 2s,1m").unwrap();
        assert_eq!(s.retries(), 3);
        let d = s.next_delay(2, None).unwrap();
        assert!(d >= Duration::from_millis(1800) && d <= Duration::from_millis(2200));
        assert_eq!(s.next_delay(4, None), None);
        assert_eq!(s.next_delay(0, None), None);
        let long = s.next_delay(1, Some(Duration::from_secs(3))).unwrap();
        assert_eq!(long, Duration::from_secs(3));
    }

    #[test]
    fn parse_rejects_nonsense() {
        assert!(RetrySchedule::parse("").is_err());
        assert!(RetrySchedule::parse("5").is_err());
        assert!(RetrySchedule::parse("5x").is_err());
        assert!(RetrySchedule::parse("s").is_err());
    }
}
