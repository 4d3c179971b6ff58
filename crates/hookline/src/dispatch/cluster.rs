//! Sharing the work with other nodes on one PostgreSQL database.
//!
//! - **Heartbeat.** Every [`heartbeat_every`] the node renews its row in `nodes`. The time it
//!   *sent* the last renewal that succeeded starts its lease: the database recorded the
//!   heartbeat no earlier than that, so the other nodes cannot count the lease out before the
//!   node itself does.
//! - **The lease gate.** An attempt may start only if it will end (the attempt timeout, plus
//!   a margin) before the lease could run out. A node cut off from the database therefore
//!   stops sending before the others may take its deliveries over: no delivery is attempted
//!   by two live nodes at once.
//! - **Takeover.** Each heartbeat round also declares dead the nodes silent for a whole lease
//!   and puts their deliveries back to `pending` with a new claim number (so their late
//!   failures cannot move them; a late success is still recorded — at-least-once). Before
//!   that, a node silent for two heartbeats that still holds deliveries is named in a
//!   warning, once: how many it holds and the most they will wait (a crashed server that
//!   restarts is a new node, and its previous life's deliveries wait so).
//! - **A dead node stops.** A heartbeat that finds its node declared dead means the others
//!   own its deliveries now: the node shuts down (its in-memory queues are stale), and is
//!   restarted by its supervisor as a new node.
//! - **Wake-ups.** Other nodes `NOTIFY` when a delivery becomes due (a retry, a takeover, a
//!   node leaving) and when an endpoint changes; the listener pokes this node's poller or
//!   refreshes the endpoint in its queues. A lost listener connection pokes the poller, which
//!   also looks on its own every few seconds.

use super::{Dispatcher, Inner};
use crate::store::Notice;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What an attempt must leave between its end and the lease's.
const MARGIN: Duration = Duration::from_secs(1);

/// How often a node renews its heartbeat (and looks for dead nodes) for a given lease.
pub fn heartbeat_every(lease: Duration) -> Duration {
    (lease / 8).min(Duration::from_secs(2))
}

/// The shortest lease that lets attempts of `timeout` start at all between heartbeats.
pub fn min_lease(timeout: Duration, lease: Duration) -> Duration {
    timeout + MARGIN + 2 * heartbeat_every(lease)
}

/// This node's lease.
pub(super) struct Lease {
    shared: bool,
    length: Duration,
    epoch: Instant,
    /// When the last successful renewal was sent, µs after `epoch`.
    renewed_us: AtomicU64,
}

impl Lease {
    /// A lease renewed at `joined` (when the node sent its registration, which is its first
    /// heartbeat). `shared: false` (SQLite) always allows.
    pub(super) fn new(shared: bool, length: Duration, joined: Instant) -> Lease {
        Lease {
            shared,
            length,
            epoch: joined,
            renewed_us: AtomicU64::new(0),
        }
    }

    fn renewed(&self, sent: Instant) {
        let us = sent.saturating_duration_since(self.epoch).as_micros() as u64;
        self.renewed_us.fetch_max(us, Ordering::AcqRel);
    }

    /// Whether an attempt that may take `take` can start now.
    pub(super) fn allows(&self, take: Duration) -> bool {
        if !self.shared {
            return true;
        }
        let renewed = Duration::from_micros(self.renewed_us.load(Ordering::Acquire));
        let now = self.epoch.elapsed();
        now + take + MARGIN < renewed + self.length
    }
}

/// Renews the heartbeat until shutdown; on finding this node declared dead, cancels
/// `lease_lost` (the server stops).
pub(super) async fn heartbeat_loop(inner: Arc<Inner>) {
    let every = heartbeat_every(inner.config.lease);
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let sent = Instant::now();
        match inner.store.heartbeat().await {
            Ok(true) => inner.lease.renewed(sent),
            Ok(false) => {
                tracing::error!(
                    "this node was declared dead by the others (its heartbeat was silent for a \
                     whole lease) and its deliveries were taken over; stopping"
                );
                inner.lease_lost.cancel();
                return;
            }
            Err(e) => tracing::warn!(error = %e, "renewing the heartbeat failed"),
        }
    }
}

/// Takes over the deliveries of dead nodes, every heartbeat interval, until shutdown. Apart
/// from the heartbeat, so that a slow takeover never delays a renewal.
pub(super) async fn reap_loop(inner: Arc<Inner>) {
    let every = heartbeat_every(inner.config.lease);
    let mut told = HashSet::new();
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if !inner.lease.allows(Duration::ZERO) {
            continue; // cut off ourselves: leave the judging to nodes that can see
        }
        match inner.store.reap(inner.config.lease).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(count = n, "took over the deliveries of a dead node");
                inner.poke.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "looking for dead nodes failed"),
        }
        say_what_silent_nodes_hold(&inner, every, &mut told).await;
    }
}

/// Says, once for each, which silent nodes hold deliveries that wait for their lease to run
/// out, and for how long at most (`told`: the nodes said so far, still silent). A node that
/// crashed and restarts is a new node, so what its previous life held waits too: without a
/// word, a restarted server that sends none of it for up to a lease looks stuck.
async fn say_what_silent_nodes_hold(inner: &Inner, every: Duration, told: &mut HashSet<String>) {
    let lease = inner.config.lease;
    // Two heartbeats missed: a node alive renews well within them.
    let holders = match inner.store.silent_holders(2 * every).await {
        Ok(holders) => holders,
        Err(e) => {
            tracing::warn!(error = %e, "looking for silent nodes' deliveries failed");
            return;
        }
    };
    told.retain(|node| holders.iter().any(|h| &h.node == node));
    for h in holders {
        if told.contains(&h.node) {
            continue;
        }
        tracing::warn!(
            node = %h.node,
            deliveries = h.holds,
            silent_ms = h.silent.as_millis() as u64,
            "a silent node holds deliveries: they are taken over once it has been silent for \
             the whole lease ({} s), in at most {} s (a server restarted after a crash is a new \
             node: its previous life's deliveries wait so too)",
            lease.as_secs(),
            // The first look for dead nodes after that, on some node.
            (lease.saturating_sub(h.silent) + every).as_secs_f64().ceil()
        );
        told.insert(h.node);
    }
}

/// Acts on other nodes' notices until shutdown.
pub(super) async fn listen_loop(inner: Arc<Inner>) {
    loop {
        let mut notices = match inner.store.listen().await {
            Ok(Some(n)) => n,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "listening for other nodes failed; retrying");
                tokio::select! {
                    _ = inner.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let notice = tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                n = notices.next() => n,
            };
            match notice {
                Ok(Notice::Due(at)) => inner.note_due(at),
                Ok(Notice::Reconnected) => inner.poke.notify_one(),
                Ok(Notice::EndpointChanged(id)) => {
                    match inner.store.endpoint_for_dispatch(id).await {
                        Ok(Some(ep)) => Dispatcher {
                            inner: inner.clone(),
                        }
                        .endpoint_changed(&ep),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "reading a changed endpoint failed"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the notification listener failed; reconnecting");
                    inner.poke.notify_one();
                    break;
                }
            }
        }
    }
}
