//! Event stamps: the time an event was accepted, from a clock that does not run backwards.
//!
//! Searches by time — a feed page's `since` and `until`, a recovery's `since` — seek by row
//! order, and so rely on stamps that follow the order rows are written in to within
//! [`super::RECOVER_MARGIN_MS`]. Three things could break that, and each is guarded here or
//! where events are written:
//!
//! - **A clock set back** (a step of NTP, a VM restored, a clock fixed by hand): stamps
//!   hold at the latest one given out until the clock passes it again, so they never go
//!   back, across restarts too (the store starts from the newest stored stamp). A clock
//!   set back by more than [`HOLD_MAX_MS`] is believed instead, with a warning: holding
//!   stamps for longer would stamp a day's events with a wrong time because a clock was
//!   once wrong. A search by time across that one step may then miss events.
//! - **Nodes' clocks that disagree** (PostgreSQL): each node stamps by the database's clock,
//!   read at start and at every heartbeat (the reading of the shortest of three round trips)
//!   and carried forward in between by this process's monotonic clock, so a step of the
//!   node's own clock never reaches its stamps. (The monotonic clock stops while the
//!   machine is suspended: after a pause, stamps lag the database's clock by it until the
//!   next heartbeat's reading, at most 2 s later.)
//! - **A write that waited** (in a queue, or for a connection): a write that starts more
//!   than [`FRESH_MS`] after its events were stamped stamps them again, and rebuilds their
//!   envelopes, just before it runs. (A wait inside PostgreSQL's statement, for an endpoint
//!   row that a change holds, is not covered.)

use crate::model::Timestamp;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Instant;

/// How far back a clock may be set and still have stamps hold rather than follow it.
pub const HOLD_MAX_MS: i64 = 10 * 60_000;

/// How old an event's stamp may be when its write starts; older, it is stamped again.
pub const FRESH_MS: i64 = 5_000;

/// A difference between this machine's clock and the database's worth a warning.
const SKEW_WARN_MS: i64 = 1_000;

/// The store's clock for event stamps. Cheap: one atomic read-modify-write a stamp.
#[derive(Debug)]
pub struct Stamps {
    /// The latest stamp given out (or found stored).
    last: AtomicI64,
    /// `None`: this machine's clock (SQLite). Else the database's clock, as the monotonic
    /// clock since this instant plus `offset` (PostgreSQL).
    epoch: Option<Instant>,
    /// The database's clock minus the monotonic clock's milliseconds since `epoch`.
    offset: AtomicI64,
    /// Whether this machine's clock was found off the database's by [`SKEW_WARN_MS`] or more
    /// (and not since back within half of that): warned once each time it goes off.
    skewed: AtomicBool,
}

impl Stamps {
    /// Stamps by this machine's clock, starting at `floor` or later (the newest stamp stored).
    pub fn local(floor: i64) -> Self {
        Stamps {
            last: AtomicI64::new(floor),
            epoch: None,
            offset: AtomicI64::new(0),
            skewed: AtomicBool::new(false),
        }
    }

    /// Stamps by a clock read elsewhere ([`Stamps::note_reading`]), carried forward by the
    /// monotonic clock; until the first reading, this machine's clock.
    pub fn anchored() -> Self {
        Stamps {
            last: AtomicI64::new(0),
            epoch: Some(Instant::now()),
            offset: AtomicI64::new(Timestamp::now().0),
            skewed: AtomicBool::new(false),
        }
    }

    /// Raises the latest stamp to `floor` if it is below it.
    pub fn stamp_floor(&self, floor: i64) {
        self.last.fetch_max(floor, Ordering::Relaxed);
    }

    /// A stamp for an event accepted now.
    pub fn stamp(&self) -> Timestamp {
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let (next, behind) = Self::next(last, self.clock());
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    if behind > HOLD_MAX_MS {
                        tracing::warn!(
                            behind_ms = behind,
                            "the clock is {behind} ms behind the latest event stamp, more than \
                             the {HOLD_MAX_MS} ms stamps hold for: stamps follow the clock \
                             back, and a search by time across this step may miss events"
                        );
                    }
                    return Timestamp(next);
                }
                Err(seen) => last = seen,
            }
        }
    }

    /// The time now by this clock, and never before the latest stamp given out: what a
    /// stamp's age is judged against.
    pub fn now(&self) -> i64 {
        self.clock().max(self.last.load(Ordering::Relaxed))
    }

    /// Milliseconds of the monotonic clock since the epoch of an anchored clock (0 for one
    /// by this machine's clock), to time a reading with.
    pub fn monotonic_ms(&self) -> f64 {
        self.epoch
            .map_or(0.0, |e| e.elapsed().as_secs_f64() * 1_000.0)
    }

    /// Notes a reading of the clock stamps follow: `reading_ms`, taken by a query sent at
    /// `sent` and answered at `answered` ([`Stamps::monotonic_ms`]). The reading was taken
    /// somewhere in the round trip: its middle is the best guess, off by half the round trip
    /// at most. Warns when this machine's own clock is off it by a second or more.
    pub fn note_reading(&self, reading_ms: i64, sent: f64, answered: f64) {
        if self.epoch.is_none() {
            return;
        }
        let middle = (sent + answered) / 2.0;
        // Whole milliseconds down, as `clock` counts them.
        self.offset
            .store(reading_ms - middle.floor() as i64, Ordering::Relaxed);
        // Both clocks read at one instant; warned once when a second off, again only after
        // coming back within half of that.
        let skew = self.clock() - Timestamp::now().0;
        if skew.abs() >= SKEW_WARN_MS {
            if !self.skewed.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    skew_ms = skew,
                    "this machine's clock is {} ms {} the database's; event stamps follow the \
                     database's clock",
                    skew.abs(),
                    if skew > 0 { "behind" } else { "ahead of" }
                );
            }
        } else if skew.abs() < SKEW_WARN_MS / 2 {
            self.skewed.store(false, Ordering::Relaxed);
        }
    }

    /// The clock stamps follow, now.
    fn clock(&self) -> i64 {
        match self.epoch {
            None => Timestamp::now().0,
            Some(e) => e.elapsed().as_millis() as i64 + self.offset.load(Ordering::Relaxed),
        }
    }

    /// The stamp after `last` when the clock reads `now`, and how far the clock is behind.
    fn next(last: i64, now: i64) -> (i64, i64) {
        let behind = last - now;
        if behind <= 0 || behind > HOLD_MAX_MS {
            (now, behind)
        } else {
            (last, behind)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stamps given out one after another when the clock reads each of `clock`.
    fn run(last: i64, clock: &[i64]) -> Vec<i64> {
        let mut last = last;
        clock
            .iter()
            .map(|&now| {
                last = Stamps::next(last, now).0;
                last
            })
            .collect()
    }

    #[test]
    fn stamps_follow_the_clock_forward_and_hold_when_it_goes_back() {
        let set_back = 2_000 - 60_000;
        assert_eq!(
            run(
                0,
                &[1_000, 2_000, set_back, 1_999, 2_001, 2_001 - HOLD_MAX_MS]
            ),
            [1_000, 2_000, 2_000, 2_000, 2_001, 2_001],
            "held at the latest until the clock passes it, for a set-back of up to the hold"
        );
    }

    #[test]
    fn a_clock_set_back_by_more_than_the_hold_is_believed() {
        let back = 10 * HOLD_MAX_MS - HOLD_MAX_MS - 1;
        assert_eq!(
            run(10 * HOLD_MAX_MS, &[back, back - 5, back + 1]),
            [back, back, back + 1],
            "followed back, then held at the new latest"
        );
    }

    #[test]
    fn stamps_start_at_the_floor() {
        let floor = Timestamp::now().0 + 60_000;
        let s = Stamps::local(floor);
        assert_eq!(s.stamp().0, floor, "the newest stored stamp holds");
        assert!(s.now() >= floor);
    }

    #[test]
    fn an_anchored_clock_follows_its_readings_not_this_machines() {
        let s = Stamps::anchored();
        // A reading far from this machine's clock (a day behind it), in a round trip of 2 ms.
        let day = 86_400_000;
        let reading = Timestamp::now().0 - day;
        let sent = s.monotonic_ms();
        s.note_reading(reading, sent, sent + 2.0);
        let t = s.clock();
        assert!(
            (reading - 5..reading + 5_000).contains(&t),
            "{t} against a reading of {reading}"
        );
        // A stamp holds at the latest given out: an earlier reading cannot take it back.
        let first = s.stamp().0;
        s.note_reading(reading - 30_000, s.monotonic_ms(), s.monotonic_ms());
        assert!(s.stamp().0 >= first);
        // And it moves on with the monotonic clock.
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.note_reading(reading + 1_000, s.monotonic_ms(), s.monotonic_ms());
        assert!(s.stamp().0 >= reading + 1_000);
    }

    #[test]
    fn stamps_never_go_back_across_threads() {
        let s = std::sync::Arc::new(Stamps::local(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut prev = 0;
                    for _ in 0..10_000 {
                        let t = s.stamp().0;
                        assert!(t >= prev, "{t} after {prev}");
                        prev = t;
                    }
                    prev
                })
            })
            .collect();
        for h in handles {
            let last = h.join().unwrap();
            assert!(last <= s.stamp().0);
        }
    }
}
