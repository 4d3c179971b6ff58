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
//!   the node's own corrected by an offset measured at every heartbeat.
//! - **A write that waited** (in a queue, for a connection or a lock): a write that starts
//!   more than [`FRESH_MS`] after its events were stamped stamps them again, and rebuilds
//!   their envelopes, just before it runs.

use crate::model::Timestamp;
use std::sync::atomic::{AtomicI64, Ordering};

/// How far back a clock may be set and still have stamps hold rather than follow it.
pub const HOLD_MAX_MS: i64 = 10 * 60_000;

/// How old an event's stamp may be when its write starts; older, it is stamped again.
pub const FRESH_MS: i64 = 5_000;

/// The store's clock for event stamps. Cheap: one atomic read-modify-write a stamp.
#[derive(Debug)]
pub struct Stamps {
    /// The latest stamp given out (or found stored).
    last: AtomicI64,
    /// Added to this machine's clock: the database's clock minus it (PostgreSQL), else 0.
    offset: AtomicI64,
}

impl Stamps {
    /// A clock whose stamps start at `floor` or later (the newest stamp stored, or 0).
    pub fn new(floor: i64) -> Self {
        Stamps {
            last: AtomicI64::new(floor),
            offset: AtomicI64::new(0),
        }
    }

    /// Raises the latest stamp to `floor` if it is below it.
    pub fn stamp_floor(&self, floor: i64) {
        self.last.fetch_max(floor, Ordering::Relaxed);
    }

    /// A stamp for an event accepted now.
    pub fn stamp(&self) -> Timestamp {
        self.stamp_at(Timestamp::now().0)
    }

    /// The time now by this clock's reckoning (the local clock with the offset), without
    /// giving out a stamp.
    pub fn now(&self) -> i64 {
        Timestamp::now().0 + self.offset.load(Ordering::Relaxed)
    }

    /// Sets the offset to add to this machine's clock, warning when it is large.
    pub fn set_offset(&self, offset_ms: i64) {
        let before = self.offset.swap(offset_ms, Ordering::Relaxed);
        if offset_ms.abs() >= 1_000 && (offset_ms - before).abs() >= 500 {
            tracing::warn!(
                offset_ms,
                "this machine's clock differs from the database's by {offset_ms} ms; \
                 event stamps follow the database's clock"
            );
        }
    }

    /// The offset currently added to this machine's clock.
    pub fn offset(&self) -> i64 {
        self.offset.load(Ordering::Relaxed)
    }

    /// A stamp when this machine's clock reads `local_ms`.
    fn stamp_at(&self, local_ms: i64) -> Timestamp {
        let now = local_ms + self.offset.load(Ordering::Relaxed);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let behind = last - now;
            let next = if behind <= 0 || behind > HOLD_MAX_MS {
                now
            } else {
                last
            };
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_follow_the_clock_forward_and_hold_when_it_goes_back() {
        let s = Stamps::new(0);
        assert_eq!(s.stamp_at(1_000).0, 1_000);
        assert_eq!(s.stamp_at(2_000).0, 2_000);
        // Set back by a minute: stamps hold at the latest until the clock passes it.
        assert_eq!(s.stamp_at(2_000 - 60_000).0, 2_000);
        assert_eq!(s.stamp_at(1_999).0, 2_000);
        assert_eq!(s.stamp_at(2_001).0, 2_001);
        // Set back by the most they hold for: still held.
        assert_eq!(s.stamp_at(2_001 - HOLD_MAX_MS).0, 2_001);
    }

    #[test]
    fn a_clock_set_back_by_more_than_the_hold_is_believed() {
        let s = Stamps::new(10 * HOLD_MAX_MS);
        let back = 10 * HOLD_MAX_MS - HOLD_MAX_MS - 1;
        assert_eq!(s.stamp_at(back).0, back);
        // And from there on, stamps hold at the new latest.
        assert_eq!(s.stamp_at(back - 5).0, back);
    }

    #[test]
    fn stamps_start_at_the_floor_and_carry_the_offset() {
        let s = Stamps::new(5_000);
        assert_eq!(s.stamp_at(4_000).0, 5_000, "the newest stored stamp holds");
        s.set_offset(250);
        assert_eq!(s.offset(), 250);
        assert_eq!(s.stamp_at(6_000).0, 6_250);
        // An offset that shrinks cannot take stamps back either.
        s.set_offset(-250);
        assert_eq!(s.stamp_at(6_100).0, 6_250);
        assert_eq!(s.stamp_at(6_600).0, 6_350);
    }

    #[test]
    fn stamps_never_go_back_across_threads() {
        let s = std::sync::Arc::new(Stamps::new(0));
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
