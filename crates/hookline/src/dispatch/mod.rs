//! The dispatcher: per-endpoint queues, HTTP attempts, retries.
//!
//! - **Real time.** Ingest hands every delivery it could *admit* straight to the dispatcher
//!   after the commit; nothing waits for a poll.
//! - **Per-endpoint queues.** Each endpoint with work has one worker task and its own queue;
//!   at most `concurrency_per_endpoint` requests to one endpoint are in flight, made by as
//!   many long-lived *lanes* of the endpoint, so a slow or dead endpoint only ever delays
//!   itself.
//! - **Bounded memory.** The dispatcher holds at most `max_in_memory` deliveries (and
//!   `max_per_endpoint` per endpoint). What it cannot admit stays `pending` in the database
//!   and the poller takes it when there is room.
//! - **Stalled endpoints.** An endpoint is stalled once `stall_after` has passed since every
//!   one of its lanes was busy, with no success since. A stalled endpoint holds at most
//!   twice its lanes' worth of deliveries in memory (one round in flight, one queued): the
//!   rest wait `pending` in the database until one of its attempts succeeds (or the
//!   endpoint is changed, or its breaker reset), and each release meanwhile lets the poller
//!   top it up. Otherwise an endpoint that hangs until the attempt timeout would gather a
//!   timeout's worth of its events in memory, all to be written back `pending` at once
//!   when its breaker opens: a burst of writes every other endpoint's commits wait behind.
//! - **Circuit breaker.** After `breaker_threshold` consecutive failures an endpoint's breaker
//!   opens: its deliveries are no longer attempted but wait, `pending`, in the database; one
//!   *probe* delivery is tried after 1 s, then at doubling intervals up to
//!   `breaker_probe_max` (2 s). The first success closes the breaker and makes every pending
//!   delivery of the endpoint due at once, so a backlog drains as soon as the endpoint is
//!   back instead of at each delivery's next backoff step. Deliveries that wait out the whole
//!   retry schedule behind an open breaker end as `failed`.
//! - **The database is the truth.** A delivery is `delivering` in the database exactly while
//!   this process holds it. The poller takes deliveries that are `pending` and due (retries,
//!   overflow, and after a restart everything a dead process held).
//! - **Several nodes** (PostgreSQL): [`cluster`] keeps this node's lease, takes over dead
//!   nodes' deliveries and listens to the others; no attempt starts unless it can end within
//!   the lease.

pub mod cluster;
pub mod retry;
pub mod sender;
pub mod targets;

use crate::model::{Attempt, Endpoint, Timestamp};
use crate::store::{AttemptRecord, DueDelivery, Outcome, RetryRefusal, Store, StoreError};
use futures_util::FutureExt;
use retry::RetrySchedule;
use sender::{Sender, Target};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Tunables of the dispatcher.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    pub retry: RetrySchedule,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub concurrency_per_endpoint: usize,
    pub max_in_memory: usize,
    pub max_per_endpoint: usize,
    /// Consecutive failures that open an endpoint's circuit breaker.
    pub breaker_threshold: u32,
    /// The longest wait between two probes of an endpoint whose breaker is open.
    pub breaker_probe_max: Duration,
    /// How long after every lane of an endpoint was busy, with no success since, it counts
    /// as stalled and keeps only a little in memory (see the module's head).
    pub stall_after: Duration,
    /// Shared stores: how long a node silent in the database keeps its deliveries before the
    /// others take them over. Must exceed the attempt timeout by a few heartbeats
    /// ([`cluster::min_lease`]).
    pub lease: Duration,
    /// How often deliveries waiting behind open breakers are checked for having waited out
    /// the retry schedule (ended `failed`). A minute; tests set it shorter.
    pub stale_sweep: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            retry: RetrySchedule::default(),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
            concurrency_per_endpoint: 32,
            max_in_memory: 50_000,
            // Half the room: a burst to one endpoint (a campaign's opens) is sent from memory
            // rather than written `pending` and claimed back, while one other hot endpoint
            // still finds as much room again. (At 10,000, two thirds of a 30,000-event burst
            // took the claim path: 14 % fewer deliveries/s in batches, BENCHMARKS.md.)
            max_per_endpoint: 25_000,
            breaker_threshold: 10,
            // How late, at most, a recovered endpoint's backlog starts to drain, against one
            // request every 2 s to an endpoint that stays down.
            breaker_probe_max: Duration::from_secs(2),
            // Far beyond a healthy endpoint's answer, far below the attempt timeout: a slow
            // endpoint's first wave of attempts may cross it, which only sends a few of its
            // deliveries the poller's way.
            stall_after: Duration::from_millis(250),
            lease: Duration::from_secs(30),
            stale_sweep: Duration::from_secs(60),
        }
    }
}

/// A handle on the dispatcher. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: DispatchConfig,
    sender: Sender,
    admission: Mutex<Admission>,
    queues: Mutex<FastMap<String, QueueHandle>>,
    /// Wakes the poller early.
    poke: Notify,
    /// Wakes the task that ends what turned-off endpoints left waiting ([`end_loop`]).
    ended: Notify,
    /// When the poller plans to wake next (ms since epoch).
    planned_wake: AtomicI64,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Finished attempts, on their way to the recorder.
    records: mpsc::Sender<AttemptRecord>,
    /// Tells the recorder to write what it holds and stop (after the attempts drained).
    recorder_stop: CancellationToken,
    recorder: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The runtime workers run on: `submit` may be called from the store's writer thread.
    runtime: tokio::runtime::Handle,
    /// This node's lease (always valid on a store of one's own).
    lease: cluster::Lease,
    /// Cancelled when the other nodes declared this one dead: the server must stop.
    lease_lost: CancellationToken,
    /// Endpoints' `Retry-After` holds to keep in the database (`true`: to forget, up to that
    /// time), sent under the admission lock, so that they are written in the order they were
    /// decided.
    asked: mpsc::UnboundedSender<(String, Timestamp, bool)>,
    /// How many of those are not written yet (a shutdown waits for them, briefly).
    asked_unwritten: Arc<AtomicUsize>,
}

/// Maps keyed by endpoint id, looked up several times per delivery: ids are Hookline's own,
/// so a fast hash (seeded per process) serves better than SipHash's resistance to chosen keys.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

#[derive(Default)]
struct Admission {
    total: usize,
    per_endpoint: FastMap<String, usize>,
    /// Endpoints that failed lately; absent means healthy.
    breakers: FastMap<String, Breaker>,
    /// Endpoints that left due work in the database for want of room of their own: a release
    /// of theirs wakes the poller.
    starved: FastSet<String>,
    /// Due work was left in the database for want of room overall: any release wakes it.
    globally_starved: bool,
    /// Probes let through so far: each probe's number ties its result to its breaker.
    probes: ProbeId,
    /// Endpoints with attempts in flight, or stalled.
    flights: FastMap<String, Flight>,
}

/// An endpoint's attempts in flight, and its stall.
#[derive(Debug, Default)]
struct Flight {
    in_flight: usize,
    /// When (ms since epoch) every lane was last found busy with no success since: the
    /// endpoint is stalled once `stall_after` has passed. Cleared by a success, a change of
    /// the endpoint or a reset of its breaker; not by attempts that fail or time out.
    full_since: Option<i64>,
}

/// Which probe a result or a give-back is about: a breaker removed and opened again meanwhile
/// has a probe of its own out, which a late answer of the old one must not settle.
type ProbeId = u64;

impl Admission {
    /// Whether to attempt a delivery of `endpoint_id` now (`now`: ms since epoch). An open
    /// breaker lets one delivery through as a probe once its time has come, and no other
    /// until that probe's result is in (or it was given back unsent).
    fn gate(&mut self, endpoint_id: &str, now: i64) -> Gate {
        match self.breakers.get_mut(endpoint_id) {
            Some(b) if b.open => {
                if b.probing.is_none() && b.next_probe <= now {
                    self.probes += 1;
                    b.probing = Some(self.probes);
                    Gate::Probe(self.probes)
                } else {
                    Gate::Park
                }
            }
            _ => Gate::Go,
        }
    }

    /// An attempt of `endpoint_id` (which has `lanes` lanes) starts at `now`.
    fn attempt_started(&mut self, endpoint_id: &str, lanes: usize, now: i64) {
        let f = match self.flights.get_mut(endpoint_id) {
            Some(f) => f,
            None => self.flights.entry(endpoint_id.to_owned()).or_default(),
        };
        f.in_flight += 1;
        if f.in_flight >= lanes && f.full_since.is_none() {
            f.full_since = Some(now);
        }
    }

    /// An attempt of `endpoint_id` ended (or was abandoned), whatever its result.
    fn attempt_ended(&mut self, endpoint_id: &str) {
        if let Some(f) = self.flights.get_mut(endpoint_id) {
            f.in_flight = f.in_flight.saturating_sub(1);
            if f.in_flight == 0 && f.full_since.is_none() {
                self.flights.remove(endpoint_id);
            }
        }
    }

    /// `endpoint_id` answered (an attempt succeeded), or starts afresh (changed, breaker
    /// reset): it is not stalled, and the stall clock starts again the next time every
    /// lane is busy. Returns whether the clock was running.
    fn stall_over(&mut self, endpoint_id: &str) -> bool {
        let Some(f) = self.flights.get_mut(endpoint_id) else {
            return false;
        };
        let was = f.full_since.take().is_some();
        if f.in_flight == 0 {
            self.flights.remove(endpoint_id);
        }
        was
    }

    /// How many deliveries `endpoint_id` may hold in memory at most while stalled (`None`:
    /// it is not stalled). The clock is read only for an endpoint whose lanes were all busy.
    fn stall_cap(
        &self,
        endpoint_id: &str,
        now: impl FnOnce() -> i64,
        after_ms: i64,
        lanes: usize,
    ) -> Option<usize> {
        self.flights
            .get(endpoint_id)
            .and_then(|f| f.full_since)
            .filter(|since| now() - since >= after_ms)
            .map(|_| lanes.saturating_mul(2))
    }

    /// A probe given back unsent leaves the breaker free to let the next one through at
    /// once; the give-back's release wakes the poller to take it.
    fn probe_not_made(&mut self, endpoint_id: &str, probe: ProbeId) {
        if let Some(b) = self.breakers.get_mut(endpoint_id)
            && b.open
            && b.probing == Some(probe)
        {
            b.probing = None;
            self.starved.insert(endpoint_id.to_owned());
        }
    }
}

/// Locks `m`, even if a panic elsewhere poisoned it: what the dispatcher keeps under its
/// locks stays usable after a panic, and a lock refused for ever would stop all delivery.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An endpoint's run of failures, and its breaker.
#[derive(Debug)]
struct Breaker {
    failures: u32,
    open: bool,
    /// When the next probe may go (ms since epoch), while open.
    next_probe: i64,
    backoff_ms: i64,
    /// The probe out, while one is.
    probing: Option<ProbeId>,
    /// Until when the endpoint asked to be left alone (a long `Retry-After`), as kept in the
    /// database for the next start: forgotten there too when the breaker closes.
    asked_until: Option<i64>,
}

impl Breaker {
    /// A breaker with no failures yet.
    fn closed() -> Self {
        Breaker {
            failures: 0,
            open: false,
            next_probe: 0,
            backoff_ms: FIRST_PROBE_MS,
            probing: None,
            asked_until: None,
        }
    }
}

/// [`DispatchConfig::stall_after`] in ms.
fn stall_ms(config: &DispatchConfig) -> i64 {
    i64::try_from(config.stall_after.as_millis()).unwrap_or(i64::MAX)
}

/// An attempt counted in flight (see [`Flight`]) until this drops, however the attempt ends.
struct Flying<'a> {
    inner: &'a Inner,
    endpoint_id: &'a str,
}

impl Drop for Flying<'_> {
    fn drop(&mut self) {
        self.inner.admission().attempt_ended(self.endpoint_id);
    }
}

/// The first wait before probing an endpoint whose breaker just opened.
const FIRST_PROBE_MS: i64 = 1000;

/// The shortest `Retry-After` that holds the whole endpoint ([`Inner::hold`]); a shorter one
/// delays only its own delivery, so that a receiver that throttles a second at a time does
/// not make its breaker open and close every second.
const HOLD_AT_LEAST: Duration = Duration::from_secs(2);

/// What the breaker says about one delivery about to be attempted.
#[derive(Debug, PartialEq, Eq)]
enum Gate {
    Go,
    Probe(ProbeId),
    /// Give it back to the database without an attempt.
    Park,
}

struct QueueHandle {
    tx: mpsc::UnboundedSender<DueDelivery>,
    /// Manual retries: the worker takes them before anything queued in `tx`.
    urgent: mpsc::UnboundedSender<DueDelivery>,
    shared: Arc<QueueShared>,
}

/// What an endpoint's worker shares with the rest of the dispatcher.
struct QueueShared {
    /// The endpoint was removed, disabled or answered 410 at this version (its
    /// `updated_at`, ms; `i64::MIN` when never): queued deliveries that carry this version or
    /// an older one are given back instead of sent, checked when taken from the queue and
    /// again once a slot is free (PostgreSQL has ended them already, and
    /// the give-back only touches rows still `delivering`; on SQLite the give-back is what
    /// ends them, the endpoint being no longer live). A delivery carrying a newer version —
    /// the endpoint was turned back on — goes through.
    closed_at: AtomicI64,
    /// When the dispatcher last heard the endpoint was turned off: the worker keeps its queue
    /// (and `closed_at`) for [`WORKER_IDLE`] after that, however long it had idled, since a
    /// delivery claimed before the turn-off may still be handed over, and a fresh queue would
    /// know nothing of it.
    closed_when: Mutex<Option<tokio::time::Instant>>,
    /// The newest version of the endpoint the API has seen.
    latest: Mutex<Option<Arc<Endpoint>>>,
    /// Claims of this endpoint's deliveries that a manual retry took over while the
    /// delivery was queued or in flight (delivery id and claim, and when): a job under one
    /// of them not yet handed to a lane is not made, the retry's goes instead. An entry whose
    /// attempt was in flight is never taken; entries go after [`SUPERSEDED_KEEP`]. (A few at
    /// most: manual retries of deliveries waiting their turn.)
    superseded: Mutex<Vec<(String, i64, tokio::time::Instant)>>,
    /// Whether `superseded` may hold anything: the queue's path looks no further otherwise.
    any_superseded: AtomicBool,
}

/// How long a claim taken over by a manual retry is remembered (see
/// `QueueShared::superseded`): longer than a delivery waits in memory for its turn (25,000
/// of them at the slowest pace, one a second, take about 7 h).
const SUPERSEDED_KEEP: Duration = Duration::from_secs(24 * 3600);

impl QueueShared {
    /// Whether `due` is to be given back instead of sent: its endpoint was turned off or
    /// removed at its version or later (see `closed_at`).
    fn closed_for(&self, due: &DueDelivery) -> bool {
        due.endpoint.updated_at.0 <= self.closed_at.load(Ordering::Acquire)
    }

    /// Remembers that a manual retry took `delivery_id` over from `claim`.
    fn supersede(&self, delivery_id: &str, claim: i64) {
        let mut set = locked(&self.superseded);
        set.push((delivery_id.to_owned(), claim, tokio::time::Instant::now()));
        self.any_superseded.store(true, Ordering::Release);
    }

    /// Whether `due`'s claim was taken over by a manual retry (and so is not to be
    /// attempted); forgets it if so, and entries older than [`SUPERSEDED_KEEP`]. The flag is
    /// only written under the lock, so it never reads false while an entry is there.
    fn take_superseded(&self, due: &DueDelivery) -> bool {
        if !self.any_superseded.load(Ordering::Acquire) {
            return false;
        }
        let now = tokio::time::Instant::now();
        let mut set = locked(&self.superseded);
        set.retain(|(_, _, at)| now.duration_since(*at) < SUPERSEDED_KEEP);
        let found = set
            .iter()
            .position(|(id, claim, _)| *claim == due.claim && *id == due.delivery_id);
        if let Some(i) = found {
            set.swap_remove(i);
        }
        if set.is_empty() {
            self.any_superseded.store(false, Ordering::Release);
        }
        found.is_some()
    }
}

impl Dispatcher {
    /// Starts the poller, on the current Tokio runtime. Deliveries left `delivering` by a
    /// previous process must have been released (`Store::release_all_claims`) before.
    /// `joined`: when this node registered in a shared store (its lease starts there).
    /// `guard`: the resolver and SSRF rules every connection goes through.
    pub fn start(
        store: Store,
        config: DispatchConfig,
        guard: targets::Guard,
        shutdown: CancellationToken,
        joined: std::time::Instant,
        holds: Vec<(String, Timestamp)>,
    ) -> Self {
        let (records, records_rx) = mpsc::channel(RECORD_QUEUE);
        let shared = store.is_shared();
        let lease = cluster::Lease::new(shared, config.lease, joined);
        let inner = Arc::new(Inner::new(store, config, guard, shutdown, lease, records));
        // Before anything is claimed or admitted: what endpoints asked for before a restart.
        for (endpoint_id, until) in holds {
            inner.hold(&endpoint_id, until.0, true);
        }
        let poller = inner.clone();
        inner.tasks.spawn(async move { poll_loop(poller).await });
        let ender = inner.clone();
        inner.tasks.spawn(async move { end_loop(ender).await });
        let sweeper = inner.clone();
        inner.tasks.spawn(async move { sweep_loop(sweeper).await });
        if shared {
            let heart = inner.clone();
            inner
                .tasks
                .spawn(async move { cluster::heartbeat_loop(heart).await });
            let reaper = inner.clone();
            inner
                .tasks
                .spawn(async move { cluster::reap_loop(reaper).await });
            let ears = inner.clone();
            inner
                .tasks
                .spawn(async move { cluster::listen_loop(ears).await });
        }
        let recorder = inner.clone();
        let handle = tokio::spawn(async move { record_loop(recorder, records_rx).await });
        if let Ok(mut slot) = inner.recorder.lock() {
            *slot = Some(handle);
        }
        Dispatcher { inner }
    }

    /// Cancelled if the other nodes declare this one dead: the server must stop (its
    /// deliveries belong to them now).
    pub fn lease_lost(&self) -> CancellationToken {
        self.inner.lease_lost.clone()
    }

    /// Reserves room for one delivery to `endpoint_id`. `false` leaves it to the poller.
    pub fn try_admit(&self, endpoint_id: &str) -> bool {
        let cfg = &self.inner.config;
        if !self.inner.lease.allows(Duration::ZERO) {
            return false; // cut off from the others: leave it `pending`, for whoever can send
        }
        let mut a = locked(&self.inner.admission);
        if a.breakers.get(endpoint_id).is_some_and(|b| b.open) {
            return false; // it waits in the database until the endpoint is back
        }
        let here = a.per_endpoint.get(endpoint_id).copied().unwrap_or(0);
        let lanes = cfg.concurrency_per_endpoint.max(1);
        if a.stall_cap(endpoint_id, || Timestamp::now().0, stall_ms(cfg), lanes)
            .is_some_and(|cap| here >= cap)
        {
            // Stalled and holding enough: it waits in the database, and the endpoint's next
            // release wakes the poller to top its memory up.
            a.starved.insert(endpoint_id.to_owned());
            return false;
        }
        if a.total >= cfg.max_in_memory {
            a.globally_starved = true;
            return false;
        }
        if here >= cfg.max_per_endpoint {
            a.starved.insert(endpoint_id.to_owned());
            return false;
        }
        a.total += 1;
        *a.per_endpoint.entry(endpoint_id.to_owned()).or_insert(0) += 1;
        true
    }

    /// Sends `endpoint` a signed `ping` event (`data: {}`) now, once, and says what came
    /// back. Nothing is stored: it tests the endpoint, not the pipeline. It goes through the
    /// same sender as deliveries, so the same connect-time SSRF rules apply.
    pub async fn send_ping(
        &self,
        endpoint: &Endpoint,
    ) -> Result<(String, sender::SendResult), String> {
        let target = Target::from_endpoint(endpoint)?;
        let id = crate::model::new_id("evt");
        let payload = crate::model::envelope(&id, "ping", Timestamp::now(), "{}");
        let result = self
            .inner
            .sender
            .send(&target, &id, bytes::Bytes::from(payload))
            .await;
        Ok((id, result))
    }

    /// Deliveries held in memory, and endpoints whose breaker is open (for metrics).
    pub fn stats(&self) -> (usize, usize) {
        self.inner.stats()
    }

    /// Tells the poller that deliveries became due now in the database: it looks at once if
    /// it planned to sleep longer.
    pub fn due_now(&self) {
        self.inner.note_due(Timestamp::now());
    }

    /// Ingest committed deliveries of `endpoint_id` `pending`, for want of room: wakes the
    /// poller if it could take one now (room came back since the admission, or a probe of
    /// the endpoint's open breaker is due). Otherwise something else wakes it when it could:
    /// the reckoning marks a full endpoint (at its own limit, or a stalled one at twice its
    /// lanes) or the whole dispatcher starved, so the release
    /// that makes room wakes it; behind an open breaker its alarm is the next probe, and a
    /// breaker closed, reset or removed wakes it. Waking it regardless made it poll after
    /// every commit, 100 times a second, for as long as an endpoint was down while its
    /// events kept coming.
    pub fn committed_pending(&self, endpoint_id: &str) {
        if self.inner.room(endpoint_id) > 0 {
            self.due_now();
        }
    }

    /// Gives back room reserved with [`Dispatcher::try_admit`] for a delivery that will not
    /// be submitted (its commit failed).
    pub fn release(&self, endpoint_id: &str) {
        self.inner.release(endpoint_id);
    }

    /// Queues a delivery whose room was reserved and whose row is `delivering`.
    pub fn submit(&self, due: DueDelivery) {
        self.inner.submit(due);
    }

    /// Takes one delivery of `account_id` for an attempt now, whatever its state (a manual
    /// retry). Runs in its own task, so a caller that goes away cannot strand the delivery
    /// between the claim and the queue.
    pub async fn retry_now(
        &self,
        account_id: String,
        delivery_id: String,
    ) -> Result<Result<(), RetryRefusal>, StoreError> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let taken = match inner.store.claim_for_retry(account_id, delivery_id).await? {
                Ok(taken) => taken,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let due = taken.due;
            if let Some(claim) = taken.replaces {
                // This node held it already: that attempt, if it has not begun, is not made.
                let mut queues = locked(&inner.queues);
                inner
                    .queue(&mut queues, &due.endpoint.id)
                    .shared
                    .supersede(&due.delivery_id, claim);
            }
            inner.force_admit(&due.endpoint.id, 1);
            inner.submit(due);
            Ok(Ok(()))
        })
        .await
        .map_err(|e| StoreError::Commit(format!("retry task failed: {e}")))?
    }

    /// Until when this node holds `endpoint_id`'s deliveries back, its breaker open (the
    /// endpoint kept failing, or asked to wait with `Retry-After`): the time of the next
    /// attempt, a probe. `None` while its deliveries go as usual, and once that time has
    /// come: a probe that is due goes with the next delivery at once (the breaker stays open
    /// until it answers, and while it is out the others wait for that answer).
    pub fn held_back_until(&self, endpoint_id: &str) -> Option<Timestamp> {
        let now = Timestamp::now().0;
        let a = self.inner.admission();
        a.breakers
            .get(endpoint_id)
            .filter(|b| b.open && b.next_probe > now)
            .map(|b| Timestamp(b.next_probe))
    }

    /// Forgets the endpoint's run of failures (its deliveries were queued again by hand).
    pub fn reset_breaker(&self, endpoint_id: &str) {
        self.start_afresh(endpoint_id);
    }

    /// Clears the endpoint's breaker and stall. If either held its pending deliveries back
    /// (nothing else would wake the poller for them before a probe or a success), they may
    /// be taken now.
    fn start_afresh(&self, endpoint_id: &str) {
        let held_back = {
            let mut a = self.inner.admission();
            let was_stalled = a.stall_over(endpoint_id);
            let was = a.breakers.remove(endpoint_id);
            self.inner.forget_asked(&a, endpoint_id, was.as_ref());
            was_stalled || was.is_some_and(|b| b.open)
        };
        if held_back {
            self.due_now();
        }
    }

    /// Tells the dispatcher an endpoint changed (or was removed: `enabled == false`).
    pub fn endpoint_changed(&self, ep: &Endpoint) {
        let mut queues = locked(&self.inner.queues);
        if !ep.enabled {
            // Even with no queue yet: a delivery claimed before the change may be handed over
            // after it, and the queue it then makes must know. (Its worker lives as long as
            // any idle one, minutes; the hand-over follows its claim's commit at once.)
            let shared = &self.inner.queue(&mut queues, &ep.id).shared;
            shared
                .closed_at
                .fetch_max(ep.updated_at.0, Ordering::AcqRel);
            *locked(&shared.closed_when) = Some(tokio::time::Instant::now());
        } else if let Some(q) = queues.get(&ep.id) {
            *locked(&q.shared.latest) = Some(Arc::new(ep.clone()));
        }
        drop(queues);
        if !ep.enabled {
            self.inner.ended.notify_one();
        }
        // A changed endpoint (new URL, turned off or on) starts with a clean slate.
        self.start_afresh(&ep.id);
    }

    /// Attempts of this node under way now, over all endpoints.
    pub fn attempts_in_flight(&self) -> usize {
        self.inner
            .admission()
            .flights
            .values()
            .map(|f| f.in_flight)
            .sum()
    }

    /// Waits (at most `grace`) for the attempts in flight to finish after shutdown began,
    /// then lets the recorder write what it holds.
    /// Returns whether every task finished, and how many attempts were still running when
    /// `grace` ran out (0 when everything finished).
    pub async fn drain(&self, grace: Duration) -> (bool, usize) {
        self.inner.tasks.close();
        let finished = tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_ok();
        let cut = if finished {
            0
        } else {
            self.attempts_in_flight()
        };
        self.inner.recorder_stop.cancel();
        let handle = self.inner.recorder.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        }
        // The endpoints' Retry-After holds decided last, for the next start (a second at most).
        for _ in 0..100 {
            if self.inner.asked_unwritten.load(Ordering::Acquire) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (finished, cut)
    }
}

impl Inner {
    /// The dispatcher's state, nothing started yet (on the current Tokio runtime).
    /// Finished attempts go to `records`.
    fn new(
        store: Store,
        config: DispatchConfig,
        guard: targets::Guard,
        shutdown: CancellationToken,
        lease: cluster::Lease,
        records: mpsc::Sender<AttemptRecord>,
    ) -> Inner {
        let sender = Sender::new(
            config.connect_timeout,
            config.timeout,
            guard,
            shutdown.clone(),
        );
        let (asked, to_keep) = mpsc::unbounded_channel();
        let asked_unwritten = Arc::new(AtomicUsize::new(0));
        tokio::spawn(keep_asked(store.clone(), to_keep, asked_unwritten.clone()));
        Inner {
            store,
            config,
            sender,
            admission: Mutex::new(Admission::default()),
            queues: Mutex::default(),
            poke: Notify::new(),
            ended: Notify::new(),
            planned_wake: AtomicI64::new(0),
            shutdown,
            tasks: TaskTracker::new(),
            records,
            recorder_stop: CancellationToken::new(),
            recorder: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
            lease,
            lease_lost: CancellationToken::new(),
            asked,
            asked_unwritten,
        }
    }

    fn release(&self, endpoint_id: &str) {
        let wake = {
            let mut a = self.admission();
            a.total = a.total.saturating_sub(1);
            if let Some(n) = a.per_endpoint.get_mut(endpoint_id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    a.per_endpoint.remove(endpoint_id);
                }
            }
            // Only a release that makes room where work is waiting wakes the poller, so a
            // busy endpoint's traffic does not keep it polling for a stuck one.
            std::mem::take(&mut a.globally_starved) | a.starved.remove(endpoint_id)
        };
        if wake {
            self.poke.notify_one();
        }
    }

    fn force_admit(&self, endpoint_id: &str, n: usize) {
        let mut a = self.admission();
        a.total += n;
        *a.per_endpoint.entry(endpoint_id.to_owned()).or_insert(0) += n;
    }

    /// How many more deliveries of `endpoint_id` may be taken now. An endpoint (or the
    /// whole dispatcher) with no room left is marked starved, so its next release wakes the
    /// poller.
    fn room(&self, endpoint_id: &str) -> usize {
        let mut a = self.admission();
        let here = a.per_endpoint.get(endpoint_id).copied().unwrap_or(0);
        let now = Timestamp::now().0;
        let lanes = self.config.concurrency_per_endpoint.max(1);
        let cap = a
            .stall_cap(endpoint_id, || now, stall_ms(&self.config), lanes)
            .map_or(self.config.max_per_endpoint, |c| {
                c.min(self.config.max_per_endpoint)
            });
        let own = cap.saturating_sub(here);
        let overall = self.config.max_in_memory.saturating_sub(a.total);
        if overall == 0 {
            a.globally_starved = true;
        } else if own == 0 {
            a.starved.insert(endpoint_id.to_owned());
        }
        let room = own.min(overall);
        match a.breakers.get(endpoint_id) {
            // An open breaker takes one delivery at a time, as a probe, when one is due.
            Some(b) if b.open => {
                let probe_due = b.probing.is_none() && b.next_probe <= now;
                if probe_due && here > 0 {
                    // Parked deliveries are still on their way back: the last one's
                    // release wakes the poller for the probe.
                    a.starved.insert(endpoint_id.to_owned());
                }
                room.min(usize::from(probe_due && here == 0))
            }
            _ => room,
        }
    }

    /// Counts an attempt of `endpoint_id` in flight until the guard drops.
    fn flying<'a>(&'a self, endpoint_id: &'a str) -> Flying<'a> {
        let lanes = self.config.concurrency_per_endpoint.max(1);
        self.admission()
            .attempt_started(endpoint_id, lanes, Timestamp::now().0);
        Flying {
            inner: self,
            endpoint_id,
        }
    }

    /// Whether to attempt a delivery of `endpoint_id` now.
    fn gate(&self, endpoint_id: &str) -> Gate {
        self.admission().gate(endpoint_id, Timestamp::now().0)
    }

    /// The probe this endpoint's breaker let through was given back unsent (the lease would
    /// not cover it, or shutdown began): the breaker may let another through.
    fn probe_not_made(&self, endpoint_id: &str, probe: ProbeId) {
        self.admission().probe_not_made(endpoint_id, probe);
    }

    /// The dispatcher's bookkeeping. A panic while it was held (none is expected) leaves
    /// counters at worst one off; refusing every later lock would stop all delivery.
    fn admission(&self) -> MutexGuard<'_, Admission> {
        locked(&self.admission)
    }

    /// Feeds an attempt's result to the endpoint's breaker (`probe`: the attempt was that
    /// probe). Returns true when this success closed an open breaker (the endpoint is back).
    /// Any success closes it; a failed probe doubles the wait for the next one only if it is
    /// the breaker's own probe.
    fn breaker_result(&self, endpoint_id: &str, success: bool, probe: Option<ProbeId>) -> bool {
        let mut a = self.admission();
        if success {
            // Its pending deliveries are taken at the release that follows (the endpoint is
            // marked starved while stalled and holding its fill).
            a.stall_over(endpoint_id);
            let was = a.breakers.remove(endpoint_id);
            self.forget_asked(&a, endpoint_id, was.as_ref());
            return was.is_some_and(|b| b.open);
        }
        let now = Timestamp::now().0;
        let max_ms = self.config.breaker_probe_max.as_millis() as i64;
        let threshold = self.config.breaker_threshold.max(1);
        let b = a
            .breakers
            .entry(endpoint_id.to_owned())
            .or_insert_with(Breaker::closed);
        b.failures = b.failures.saturating_add(1);
        let probe_at = if b.open && probe.is_some() && b.probing == probe {
            b.probing = None;
            b.backoff_ms = (b.backoff_ms * 2).min(max_ms.max(FIRST_PROBE_MS));
            b.next_probe = now + b.backoff_ms;
            Some(b.next_probe)
        } else if !b.open && b.failures >= threshold {
            tracing::warn!(endpoint = %endpoint_id, failures = b.failures, "circuit breaker opened");
            b.open = true;
            b.backoff_ms = FIRST_PROBE_MS;
            b.next_probe = now + FIRST_PROBE_MS;
            Some(b.next_probe)
        } else {
            None
        };
        drop(a);
        // The next probe is the poller's alarm: nothing else need wake it for the endpoint.
        if let Some(at) = probe_at {
            self.note_due(Timestamp(at));
        }
        false
    }

    /// The endpoint asked to be left alone until `until` (ms; a long `Retry-After` on a `429`
    /// or `503`): its breaker opens, if it was not open, and sends its next probe no sooner.
    /// Its queued deliveries are then given back and no more are taken for it until the
    /// probe, as for any open breaker, and the probe's success brings its backlog back.
    ///
    /// The time is also kept in the database (`Store::endpoint_hold`, written in order by
    /// [`keep_asked`]), so that a restart keeps to it; `kept`: it came from there at start.
    fn hold(&self, endpoint_id: &str, until: i64, kept: bool) {
        let mut a = self.admission();
        let b = a
            .breakers
            .entry(endpoint_id.to_owned())
            .or_insert_with(Breaker::closed);
        let was_open = b.open;
        b.open = true;
        b.next_probe = b.next_probe.max(until);
        let at = b.next_probe;
        if !kept && b.asked_until.is_none_or(|t| t < until) {
            self.keep_asked(endpoint_id, Timestamp(until), false);
        }
        b.asked_until = Some(b.asked_until.unwrap_or(until).max(until));
        drop(a);
        if !was_open {
            tracing::info!(
                endpoint = %endpoint_id, until = %Timestamp(at),
                "the endpoint asked to wait (Retry-After): its deliveries are held until then"
            );
        }
        self.note_due(Timestamp(at));
    }

    /// Forgets in the database the Retry-After that `was` (the endpoint's breaker, just
    /// removed under the admission lock `_held`) kept there, if any.
    fn forget_asked(&self, _held: &Admission, endpoint_id: &str, was: Option<&Breaker>) {
        if let Some(until) = was.and_then(|b| b.asked_until) {
            self.keep_asked(endpoint_id, Timestamp(until), true);
        }
    }

    /// Hands an endpoint's hold (or with `forget`, its end) to [`keep_asked`].
    fn keep_asked(&self, endpoint_id: &str, until: Timestamp, forget: bool) {
        self.asked_unwritten.fetch_add(1, Ordering::AcqRel);
        if self
            .asked
            .send((endpoint_id.to_owned(), until, forget))
            .is_err()
        {
            // The writer is gone with the dispatcher, and the hold with it.
            self.asked_unwritten.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The earliest probe of an open breaker that fell due after `looked` (when the poller's
    /// claim last asked for room), or falls due later: the poller's alarm.
    ///
    /// A probe already due when the claim began was offered to it; if it still waits, it
    /// waits for a delivery to probe with (a release or a new pending delivery of the
    /// endpoint wakes the poller, or its 5 s cap). One that fell due after the claim began
    /// may never have been offered, so it is returned (in the past): the poller looks again
    /// at once instead of leaving it to the cap. (If the claim did offer it after all, that
    /// second look takes nothing and begins after the probe's time, so it sets no alarm.)
    fn next_probe(&self, looked: i64) -> Option<i64> {
        let a = self.admission();
        a.breakers
            .values()
            .filter(|b| b.open && b.probing.is_none() && b.next_probe > looked)
            .map(|b| b.next_probe)
            .min()
    }

    /// Deliveries held in memory, and endpoints whose breaker is open (for metrics).
    fn stats(&self) -> (usize, usize) {
        let a = self.admission();
        (a.total, a.breakers.values().filter(|b| b.open).count())
    }

    /// Endpoints whose breaker is open.
    fn open_breakers(&self) -> Vec<String> {
        self.admission()
            .breakers
            .iter()
            .filter(|(_, b)| b.open)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The endpoint's queue, made (and its worker started) if it has none.
    fn queue<'q>(
        self: &Arc<Self>,
        queues: &'q mut FastMap<String, QueueHandle>,
        endpoint_id: &str,
    ) -> &'q QueueHandle {
        queues.entry(endpoint_id.to_owned()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let (urgent, urgent_rx) = mpsc::unbounded_channel();
            let shared = Arc::new(QueueShared {
                closed_at: AtomicI64::new(i64::MIN),
                closed_when: Mutex::new(None),
                latest: Mutex::new(None),
                superseded: Mutex::default(),
                any_superseded: AtomicBool::new(false),
            });
            let me = self.clone();
            let s = shared.clone();
            let id = endpoint_id.to_owned();
            self.tasks.spawn_on(
                async move { endpoint_worker(me, id, Inbox { rx, urgent_rx }, s).await },
                &self.runtime,
            );
            QueueHandle { tx, urgent, shared }
        })
    }

    fn submit(self: &Arc<Self>, due: DueDelivery) {
        let mut queues = locked(&self.queues);
        let handle = self.queue(&mut queues, &due.endpoint.id);
        // A manual retry was asked for now: it goes before the endpoint's queue.
        let sent = if due.manual {
            handle.urgent.send(due)
        } else {
            handle.tx.send(due)
        };
        if let Err(mpsc::error::SendError(due)) = sent {
            // The worker is gone (shutdown); the row stays `delivering` and is released at
            // the next start.
            drop(queues);
            self.release(&due.endpoint.id);
        }
    }

    /// Asks the poller to look again at `at` if that is earlier than it planned.
    fn note_due(&self, at: Timestamp) {
        if at.0 < self.planned_wake.load(Ordering::SeqCst) {
            self.poke.notify_one();
        }
    }
}

/// How long an idle endpoint worker lives before it is reaped.
const WORKER_IDLE: Duration = Duration::from_secs(300);

/// What an endpoint's worker takes deliveries from: manual retries first, then its queue.
struct Inbox {
    rx: mpsc::UnboundedReceiver<DueDelivery>,
    urgent_rx: mpsc::UnboundedReceiver<DueDelivery>,
}

async fn endpoint_worker(
    inner: Arc<Inner>,
    endpoint_id: String,
    inbox: Inbox,
    shared: Arc<QueueShared>,
) {
    let Inbox {
        mut rx,
        mut urgent_rx,
    } = inbox;
    let slots = Arc::new(Semaphore::new(inner.config.concurrency_per_endpoint.max(1)));
    let mut lanes = Lanes::new(inner.config.concurrency_per_endpoint.max(1));
    let mut target: Option<Arc<Target>> = None;
    let mut next_slot = tokio::time::Instant::now();
    // One idle timer for the worker's life, not one per delivery: it is re-armed only when
    // it fires, from the moment the worker began waiting for its next delivery.
    let idle = tokio::time::sleep(WORKER_IDLE.min(sender::IDLE_KEEP));
    tokio::pin!(idle);
    loop {
        // Idle time is time spent waiting for a delivery, not in the waits below (a rate
        // limit, a free slot, the lease).
        let waiting_since = tokio::time::Instant::now();
        let due = loop {
            tokio::select! {
                biased;
                _ = inner.shutdown.cancelled() => return,
                // (Both senders go together: when this one is gone, `rx` says so below.)
                Some(due) = urgent_rx.recv() => break due,
                msg = rx.recv() => match msg {
                    Some(due) => break due,
                    None => return,
                },
                _ = &mut idle => {
                    let now = tokio::time::Instant::now();
                    let closed_when = *locked(&shared.closed_when);
                    let kept_until = closed_when.map(|t| t + WORKER_IDLE);
                    if waiting_since.elapsed() >= WORKER_IDLE
                        && kept_until.is_none_or(|t| t <= now)
                    {
                        // Idle: leave, unless something arrived meanwhile, or a turn-off
                        // (noted under the same lock) came after the look above.
                        let mut queues = locked(&inner.queues);
                        if rx.is_empty()
                            && urgent_rx.is_empty()
                            && *locked(&shared.closed_when) == closed_when
                        {
                            queues.remove(&endpoint_id);
                            return;
                        }
                    }
                    // Connections idle for long are closed meanwhile, not at the next request,
                    // and lanes that wait let go.
                    if let Some(t) = &target {
                        t.close_stale();
                    }
                    lanes.trim();
                    let wake = (waiting_since + WORKER_IDLE).max(kept_until.unwrap_or(now));
                    idle.as_mut().reset(wake.min(now + sender::IDLE_KEEP));
                }
            }
        };
        if shared.closed_for(&due) {
            give_back(&inner, due).await;
            continue;
        }
        // A manual retry took it over meanwhile: its own attempt is the one to make. (Its
        // row is the retry's now: nothing to write back, only its room to give back.)
        if shared.take_superseded(&due) {
            inner.release(&endpoint_id);
            continue;
        }
        // The newest known version of the endpoint wins.
        let latest = locked(&shared.latest).clone();
        let newest = match latest {
            Some(l) if l.updated_at > due.endpoint.updated_at => l,
            _ => due.endpoint.clone(),
        };
        if target
            .as_ref()
            .is_none_or(|t| t.version < newest.updated_at.0)
        {
            match Target::from_endpoint(&newest) {
                Ok(t) => target = Some(Arc::new(t)),
                Err(e) => {
                    tracing::error!(endpoint = %endpoint_id, error = %e, "endpoint cannot be sent to");
                    give_back(&inner, due).await;
                    continue;
                }
            }
        }
        let Some(t) = target.clone() else { continue };
        // A manual retry, taken before the queue, still keeps the endpoint's pace: a client
        // retrying many deliveries by hand gets no more than the receiver asked for.
        if let Some(rate) = t.rate_limit_per_sec.filter(|r| *r > 0) {
            let now = tokio::time::Instant::now();
            next_slot = next_slot.max(now);
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next_slot) => {}
            }
            next_slot += Duration::from_secs(1) / rate;
        }
        let permit = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        // Turned off or removed while this one waited for its slot: not sent either.
        if shared.closed_for(&due) {
            drop(permit);
            give_back(&inner, due).await;
            continue;
        }
        // Taken over by a manual retry while it waited for its pace or its slot.
        if shared.take_superseded(&due) {
            drop(permit);
            inner.release(&endpoint_id);
            continue;
        }
        // A manual retry is attempted whatever the breaker says: it was asked for now (and a
        // success closes the breaker, so the endpoint's backlog follows).
        let gate = if due.manual {
            Gate::Go
        } else {
            inner.gate(&endpoint_id)
        };
        if gate == Gate::Park {
            drop(permit);
            give_back(&inner, due).await;
            continue;
        }
        // Shared store: wait until an attempt would end within this node's lease (it cannot
        // while the heartbeat fails; the others take over once the lease runs out).
        let probe = match gate {
            Gate::Probe(n) => Some(n),
            _ => None,
        };
        while !inner.lease.allows(inner.config.timeout) {
            tokio::select! {
                _ = inner.shutdown.cancelled() => {
                    if let Some(n) = probe {
                        inner.probe_not_made(&endpoint_id, n);
                    }
                    return;
                }
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        lanes.push(
            &inner,
            Job {
                due,
                target: t,
                permit,
                probe,
            },
        );
    }
}

/// An attempt to make: the delivery, where to, and its slot among the endpoint's requests
/// in flight.
struct Job {
    due: DueDelivery,
    target: Arc<Target>,
    permit: OwnedSemaphorePermit,
    /// The breaker's probe, if this attempt is one.
    probe: Option<ProbeId>,
}

/// An endpoint's lanes: long-lived tasks that make its attempts one after the other, as
/// many as it may have requests in flight, started as they are needed. One task per lane
/// rather than one per attempt: an attempt is a big future, and starting a task for each
/// cost more than the request's own work on the way (moving it in and out of the task).
/// Lanes a burst started and that wait since are let go on the worker's idle tick
/// ([`Lanes::trim`]): each holds about 3 KB, and 600 endpoints that each drained a backlog
/// on all 32 of theirs held 60 MB for as long as any traffic kept their workers.
struct Lanes {
    shared: Arc<LaneQueue>,
    /// Lanes waiting for a job, less jobs waiting for a lane.
    slack: Arc<std::sync::atomic::AtomicIsize>,
    max: usize,
}

/// The jobs waiting for a lane, and the bell that wakes one.
#[derive(Default)]
struct LaneQueue {
    jobs: Mutex<std::collections::VecDeque<Job>>,
    bell: Notify,
    /// The worker ended: lanes leave once the queue is empty.
    closed: AtomicBool,
    /// Lanes running.
    started: AtomicUsize,
    /// How many of the lanes waiting for a job may leave ([`Lanes::trim`]).
    leave: AtomicUsize,
}

impl Lanes {
    fn new(max: usize) -> Self {
        Lanes {
            shared: Arc::default(),
            slack: Arc::default(),
            max,
        }
    }

    /// Queues `job`, starting one more lane when none is free for it.
    fn push(&mut self, inner: &Arc<Inner>, job: Job) {
        locked(&self.shared.jobs).push_back(job);
        self.shared.bell.notify_one();
        let free = self.slack.fetch_sub(1, Ordering::AcqRel) > 0;
        if !free {
            // Work came back: no lane leaves for a trim made before.
            self.shared.leave.store(0, Ordering::Release);
        }
        if !free
            && self
                .shared
                .started
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.max).then_some(n + 1)
                })
                .is_ok()
        {
            let (me, queue, slack) = (inner.clone(), self.shared.clone(), self.slack.clone());
            inner.tasks.spawn_on(lane(me, queue, slack), &inner.runtime);
        }
    }

    /// Lets all but one of the lanes waiting for a job leave (the worker's idle tick: they
    /// have waited since the last one, or nearly). One that leaves looks at the queue under
    /// its lock, which `push` queues under, and leaves only if it is empty; a job queued
    /// after that finds one lane fewer waiting, and starts one if it needs it.
    fn trim(&self) {
        let waiting = self.slack.load(Ordering::Acquire);
        if waiting > 1 {
            self.shared
                .leave
                .store(waiting as usize - 1, Ordering::Release);
            self.shared.bell.notify_waiters();
        }
    }
}

/// The lanes end with their worker, once the jobs it queued are done.
impl Drop for Lanes {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.bell.notify_waiters();
    }
}

async fn lane(
    inner: Arc<Inner>,
    queue: Arc<LaneQueue>,
    slack: Arc<std::sync::atomic::AtomicIsize>,
) {
    loop {
        slack.fetch_add(1, Ordering::AcqRel);
        let job = loop {
            // Listening before looking: a job queued or a close after the look still
            // wakes this lane.
            let bell = queue.bell.notified();
            tokio::pin!(bell);
            bell.as_mut().enable();
            let (job, more) = {
                let mut jobs = locked(&queue.jobs);
                (jobs.pop_front(), !jobs.is_empty())
            };
            if let Some(job) = job {
                if more {
                    // Another job waits: pass the bell on to another lane.
                    queue.bell.notify_one();
                }
                break job;
            }
            if queue.closed.load(Ordering::Acquire) {
                return;
            }
            if queue
                .leave
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
            {
                let jobs = locked(&queue.jobs);
                if jobs.is_empty() {
                    slack.fetch_sub(1, Ordering::AcqRel);
                    queue.started.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
                continue;
            }
            bell.await;
        };
        // Shutdown began while the job waited for a lane: no new request now; the delivery
        // goes back, `pending`, for the next start.
        if inner.shutdown.is_cancelled() {
            drop(job.permit);
            if let Some(n) = job.probe {
                inner.probe_not_made(&job.due.endpoint.id, n);
            }
            give_back(&inner, job.due).await;
            continue;
        }
        let Job {
            due,
            target,
            permit,
            probe,
        } = job;
        // A panic in an attempt (none is expected: it would be a bug here or in a library)
        // costs that attempt, not the lane: the lane stays, and so does the endpoint's
        // room for requests in flight. The attempt counts as failed, so the delivery
        // follows its retry schedule and a panic that recurs ends it as `failed` instead
        // of sending it round for ever.
        let started_at = Timestamp::now();
        let tried = std::panic::AssertUnwindSafe(attempt(&inner, &due, target, permit, probe))
            .catch_unwind()
            .await;
        match tried {
            Ok(Attempted::Recorded) => {}
            Ok(Attempted::NotSent) => {
                if let Some(n) = probe {
                    inner.probe_not_made(&due.endpoint.id, n);
                }
                give_back(&inner, due).await
            }
            Err(_) => {
                tracing::error!(
                    delivery = %due.delivery_id, endpoint = %due.endpoint.id,
                    "an attempt panicked; it counts as a failed attempt"
                );
                if probe.is_some() {
                    // The probe has no answer: the breaker waits for the next one.
                    inner.breaker_result(&due.endpoint.id, false, probe);
                }
                record_panicked(&inner, due, started_at);
            }
        }
    }
}

/// Records an attempt that panicked as a failed one (no status, an internal error), with
/// the delivery's next step taken from the retry schedule.
fn record_panicked(inner: &Arc<Inner>, due: DueDelivery, started_at: Timestamp) {
    let number = due.attempts + 1;
    let outcome = after_failure(inner, &due, number, None);
    crate::telemetry::attempt(outcome_label(&outcome), 0.0);
    to_recorder(
        inner,
        AttemptRecord {
            endpoint_version: due.endpoint.updated_at.0,
            endpoint_id: due.endpoint.id.clone(),
            delivery_id: due.delivery_id,
            row: due.row,
            claim: due.claim,
            attempt: Some(Attempt {
                attempt: number,
                started_at,
                duration_ms: Timestamp::now().0.saturating_sub(started_at.0).max(0) as u64,
                status_code: None,
                error: Some("internal error: the attempt failed unexpectedly".into()),
                response_body: None,
            }),
            outcome,
        },
    );
}

/// What became of a job given to [`attempt`].
enum Attempted {
    /// Sent; its outcome is on its way to the recorder.
    Recorded,
    /// Not sent (the lease would not cover it): to be given back.
    NotSent,
}

/// Gives a delivery back to the database without an attempt (`pending`, due now, if it is
/// still `delivering`; `failed` if its endpoint was turned off or removed), then releases
/// its room.
async fn give_back(inner: &Arc<Inner>, due: DueDelivery) {
    let endpoint_id = due.endpoint.id.clone();
    let record = AttemptRecord {
        delivery_id: due.delivery_id,
        row: due.row,
        claim: due.claim,
        endpoint_id: endpoint_id.clone(),
        endpoint_version: due.endpoint.updated_at.0,
        attempt: None,
        outcome: Outcome::Released,
    };
    if inner.records.send(record).await.is_err() {
        inner.release(&endpoint_id);
    }
}

async fn attempt(
    inner: &Arc<Inner>,
    due: &DueDelivery,
    target: Arc<Target>,
    permit: OwnedSemaphorePermit,
    probe: Option<ProbeId>,
) -> Attempted {
    let number = due.attempts + 1;
    // The lease again, right before sending: the worker's check may be a while ago.
    if !inner.lease.allows(inner.config.timeout) {
        return Attempted::NotSent;
    }
    let flying = inner.flying(&target.endpoint_id);
    #[cfg(test)]
    tests::fault(&target);
    let started_at = Timestamp::now();
    let result = inner
        .sender
        .send(&target, &due.event_id, due.payload.clone())
        .await;
    drop(flying);
    drop(permit);
    if inner.breaker_result(&target.endpoint_id, result.is_success(), probe) {
        tracing::info!(endpoint = %target.endpoint_id, "endpoint is back; its backlog is due now");
        if let Err(e) = Box::pin(inner.store.pull_forward(target.endpoint_id.clone())).await {
            tracing::error!(error = %e, "making a recovered endpoint's deliveries due");
        }
        // Its pending deliveries may be taken now, whether or not they were pulled forward.
        inner.poke.notify_one();
    }
    // A long `Retry-After` (only a `429` or `503` carries one) asks for the endpoint, not
    // only for this delivery.
    if let Some(wait) = result.retry_after.filter(|w| *w >= HOLD_AT_LEAST) {
        let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        inner.hold(
            &target.endpoint_id,
            Timestamp::now().0.saturating_add(wait_ms),
            false,
        );
    }

    let status = result.status.map(|s| s.as_u16());
    let outcome = if result.is_success() {
        Outcome::Succeeded
    } else if status == Some(410) {
        Outcome::Gone
    } else {
        after_failure(inner, due, number, result.retry_after)
    };
    crate::telemetry::attempt(outcome_label(&outcome), result.duration.as_secs_f64());
    tracing::debug!(
        delivery = %due.delivery_id, endpoint = %target.endpoint_id, attempt = number,
        status = ?status, error = ?result.error, outcome = ?outcome, "attempt"
    );
    let record = AttemptRecord {
        delivery_id: due.delivery_id.clone(),
        row: due.row,
        claim: due.claim,
        endpoint_version: target.version,
        endpoint_id: target.endpoint_id.clone(),
        attempt: Some(Attempt {
            attempt: number,
            started_at,
            duration_ms: result.duration.as_millis() as u64,
            status_code: status,
            error: result.error,
            response_body: result.body,
        }),
        outcome: outcome.clone(),
    };
    to_recorder(inner, record);
    Attempted::Recorded
}

/// What a failed attempt (not a `410`) leaves its delivery to: the next step of its retry
/// schedule, or `failed` once the schedule is spent or when a manual retry of an ended
/// delivery failed.
fn after_failure(
    inner: &Inner,
    due: &DueDelivery,
    number: u32,
    retry_after: Option<Duration>,
) -> Outcome {
    if due.manual_after_end {
        return Outcome::Failed;
    }
    match inner.config.retry.next_delay(number, retry_after) {
        Some(wait) => Outcome::RetryAt(Timestamp(Timestamp::now().0 + wait.as_millis() as i64)),
        None => Outcome::Failed,
    }
}

/// The `outcome` label of the attempts metric.
fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded => "succeeded",
        Outcome::Gone => "gone",
        Outcome::Failed => "failed",
        _ => "retry",
    }
}

/// Hands an attempt's record to the recorder, which writes it, then gives the room back. If
/// the recorder is gone (shutdown), the row stays `delivering` and is attempted again after
/// the next start. A lane does not wait for room in the recorder's queue: its next attempt
/// goes meanwhile, and a task of its own waits with the record.
fn to_recorder(inner: &Arc<Inner>, record: AttemptRecord) {
    match inner.records.try_send(record) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(record)) => {
            let me = inner.clone();
            inner.tasks.spawn(async move {
                let endpoint_id = record.endpoint_id.clone();
                if me.records.send(record).await.is_err() {
                    me.release(&endpoint_id);
                }
            });
        }
        Err(mpsc::error::TrySendError::Closed(record)) => inner.release(&record.endpoint_id),
    }
}

/// How many finished attempts may wait for the recorder.
const RECORD_QUEUE: usize = 16 * 1024;
/// How many attempts one recorder write takes at most (on SQLite a write of 1,024 holds the
/// writer about as long as a claim of 1,000).
const RECORD_BATCH: usize = 1024;

/// How many deliveries given back without an attempt (`Released`) one recorder write takes
/// while running, on SQLite. When an endpoint's breaker opens, every delivery queued for it
/// is given back at once (at 1,000 events/s and a 2 s timeout, about 2,000). Written
/// together, they made one or two commits of thousands of row and index updates, and the
/// healthy endpoints' requests committing with them waited for all of it (BENCHMARKS.md,
/// "An eleventh host: a hanging endpoint that times out"). In writes of 64, each commit
/// they ride with grows by little.
const RELEASES_PER_WRITE: usize = 64;

/// Writes finished attempts in batches (one write job for many attempts), then releases
/// their room and tells the poller about retries.
async fn record_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<AttemptRecord>) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    let mut stopping = false;
    loop {
        batch.clear();
        if stopping {
            while batch.len() < RECORD_BATCH {
                match rx.try_recv() {
                    Ok(rec) => batch.push(rec),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return;
            }
        } else {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, RECORD_BATCH) => if n == 0 { return },
                _ = inner.recorder_stop.cancelled() => { stopping = true; continue; }
            }
        }
        // Stopping, the rows are written as fast as they can be: nothing waits behind them.
        // On PostgreSQL each write is a transaction of its own that holds nobody else's
        // commit, and each part would send the other nodes a notice.
        let releases_per_write = if stopping || inner.store.is_shared() {
            usize::MAX
        } else {
            RELEASES_PER_WRITE
        };
        let mut parts = split_releases(std::mem::take(&mut batch), releases_per_write).into_iter();
        while let Some(mut part) = parts.next() {
            if !stopping && inner.recorder_stop.is_cancelled() {
                // Stopping began meanwhile: the rest goes in one write.
                parts.by_ref().for_each(|p| part.extend(p));
            }
            record(&inner, part, stopping).await;
        }
    }
}

/// Cuts `batch` into writes of at most `per_write` give-backs each (and any number of
/// attempts), keeping the order.
fn split_releases(batch: Vec<AttemptRecord>, per_write: usize) -> Vec<Vec<AttemptRecord>> {
    let mut parts = Vec::new();
    let mut part = Vec::with_capacity(batch.len());
    let mut releases = 0;
    for rec in batch {
        let release = matches!(rec.outcome, Outcome::Released);
        if release && releases == per_write.max(1) {
            parts.push(std::mem::take(&mut part));
            releases = 0;
        }
        releases += usize::from(release);
        part.push(rec);
    }
    if !part.is_empty() {
        parts.push(part);
    }
    parts
}

/// Writes one part of the recorder's batch, then releases its room and tells the poller
/// about retries.
async fn record(inner: &Arc<Inner>, batch: Vec<AttemptRecord>, stopping: bool) {
    let written = write_outcomes(inner, &batch, stopping).await;
    for (rec, written) in batch.iter().zip(written) {
        if written && matches!(rec.outcome, Outcome::Gone) {
            // Logged once per version of the endpoint (the lanes' other attempts in flight
            // may answer 410 too), once the outcome that turns it off is written.
            let first = match locked(&inner.queues).get(&rec.endpoint_id) {
                Some(q) => {
                    let before = q
                        .shared
                        .closed_at
                        .fetch_max(rec.endpoint_version, Ordering::AcqRel);
                    *locked(&q.shared.closed_when) = Some(tokio::time::Instant::now());
                    before < rec.endpoint_version
                }
                None => true,
            };
            if first {
                tracing::warn!(
                    endpoint = %rec.endpoint_id, delivery = %rec.delivery_id,
                    "the endpoint answered 410 Gone: turned off with its open deliveries (unless it changed since the attempt began)"
                );
            }
            {
                let mut a = inner.admission();
                let was = a.breakers.remove(&rec.endpoint_id);
                inner.forget_asked(&a, &rec.endpoint_id, was.as_ref());
            }
            inner.ended.notify_one();
        }
        inner.release(&rec.endpoint_id);
        match rec.outcome {
            Outcome::RetryAt(at) => inner.note_due(at),
            // Due at once if the endpoint had changed since (the store then retries it).
            Outcome::Gone => inner.note_due(Timestamp::now()),
            _ => {}
        }
    }
}

/// How many times in a row the database may refuse a write of outcomes before it is cut.
const REFUSALS_BEFORE_CUTTING: u32 = 3;

/// What [`REFUSED_TEXTS`] stands for in an attempt the database refused with its texts.
const REFUSED_TEXTS: &str = "the database refused this attempt's response body or error text";

/// Writes `batch`; says of each outcome whether it was written.
///
/// The outcomes must reach the database before their room is given back: a write is tried
/// again until it is written. Only when stopping does it give up; the rows then stay
/// `delivering` and are attempted again after the next start (at-least-once). A write the
/// database refuses ([`StoreError::is_refusal`]: its data, not its availability) three times
/// in a row is cut in halves, down to single outcomes, so that one outcome it cannot take
/// holds up no other. A single one is then written without its attempt's texts (the start of
/// the answer, the error); if even that is refused it is left, logged, and its delivery is
/// attempted again after a restart.
async fn write_outcomes(inner: &Arc<Inner>, batch: &[AttemptRecord], stopping: bool) -> Vec<bool> {
    let mut written = vec![false; batch.len()];
    // Parts still to write, the next on top, each with whether to leave out its texts.
    let mut todo = vec![(0..batch.len(), false)];
    while let Some((part, bare)) = todo.pop() {
        let records: Vec<AttemptRecord> = batch[part.clone()]
            .iter()
            .cloned()
            .map(|mut r| {
                if bare && let Some(a) = r.attempt.as_mut() {
                    a.response_body = None;
                    a.error = Some(REFUSED_TEXTS.to_owned());
                }
                r
            })
            .collect();
        let mut wait = Duration::from_millis(50);
        let (mut tries, mut refusals) = (0, 0);
        // The first failure, then once a minute while it lasts (a full disk), and its end.
        let mut failing = crate::telemetry::Repeating::default();
        loop {
            match inner.store.record_attempts(records.clone()).await {
                Ok(()) => {
                    if failing.succeeded() {
                        tracing::info!(
                            count = records.len(),
                            tries,
                            "recorded attempts after failures"
                        );
                    }
                    written[part.clone()].fill(true);
                    break;
                }
                Err(e) => {
                    tries += 1;
                    if let Some(unsaid) = failing.failed() {
                        tracing::error!(count = records.len(), tries, unsaid, error = %e, "recording attempts failed");
                    }
                    refusals = if e.is_refusal() { refusals + 1 } else { 0 };
                    if refusals >= REFUSALS_BEFORE_CUTTING {
                        if part.len() > 1 {
                            let middle = part.start + part.len() / 2;
                            todo.push((middle..part.end, bare));
                            todo.push((part.start..middle, bare));
                        } else if !bare {
                            todo.push((part.clone(), true));
                        } else {
                            tracing::error!(
                                delivery = %records[0].delivery_id, error = %e,
                                "the database refuses this outcome even without its texts: it \
                                 is left, and its delivery is attempted again after a restart"
                            );
                        }
                        break;
                    }
                    if (stopping || inner.recorder_stop.is_cancelled()) && tries >= 3 {
                        tracing::warn!(
                            count = records.len(), error = %e,
                            "stopping with attempt outcomes the database would not take: \
                             their deliveries stay `delivering` and are attempted again at the \
                             next start, so their receivers may get them twice"
                        );
                        break;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
    written
}

/// Writes the endpoints' `Retry-After` holds, and their ends, in the order they were
/// decided, until the dispatcher is gone. A failed write is logged: a restart then keeps to
/// the hold before it (or none), as it did before holds were kept.
async fn keep_asked(
    store: Store,
    mut asked: mpsc::UnboundedReceiver<(String, Timestamp, bool)>,
    unwritten: Arc<AtomicUsize>,
) {
    while let Some((endpoint_id, until, forget)) = asked.recv().await {
        if let Err(e) = store
            .endpoint_hold(endpoint_id.clone(), until, forget)
            .await
        {
            tracing::warn!(
                endpoint = %endpoint_id, error = %e,
                "keeping the endpoint's Retry-After for a restart failed"
            );
        }
        unwritten.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The longest the poller sleeps without being asked.
const POLL_MAX_SLEEP: Duration = Duration::from_secs(5);
/// The pause between two polls after a claim of fewer than [`BIG_CLAIM`] deliveries: room
/// freed a delivery at a time gathers into one claim.
const POLL_MIN_GAP: Duration = Duration::from_millis(10);
/// After a claim of at least [`BIG_CLAIM`]: room comes back in recorder writes of many
/// deliveries, and a backlog drains only as fast as the poller takes it.
const POLL_BUSY_GAP: Duration = Duration::from_millis(1);
/// A claim at least this big is followed by [`POLL_BUSY_GAP`] instead of [`POLL_MIN_GAP`].
const BIG_CLAIM: usize = 256;

/// How often the ender looks for deliveries that turned-off endpoints left waiting, unasked
/// (it is woken when an endpoint is turned off, and looks once at start).
const END_RECHECK: Duration = Duration::from_secs(60);

/// Ends what endpoints turned off or removed left waiting (a turning off ends only the first
/// batch of a long outage's backlog itself, see `Store::end_turned_off`): at start, which
/// finishes what a crash interrupted, whenever an endpoint is turned off, and every
/// [`END_RECHECK`]. It runs as a task of its own, each batch a write job of its own, so
/// ingest and claims go on between them.
async fn end_loop(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            ended = inner.store.end_turned_off() => match ended {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "ended what turned-off endpoints left waiting"),
                Err(e) => tracing::error!(error = %e, "ending what turned-off endpoints left waiting failed"),
            },
        }
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = inner.ended.notified() => {}
            _ = tokio::time::sleep(END_RECHECK) => {}
        }
    }
}

/// One sweep in this many reads every pending row of an endpoint on PostgreSQL (see
/// `Store::fail_stale`): an hour's sweeps.
const WHOLE_SWEEP_EVERY: u64 = 60;

/// Sweeps every [`DispatchConfig::stale_sweep`] ([`sweep_stale`]): the first sweep after a
/// start is whole, then one in [`WHOLE_SWEEP_EVERY`]. A task of its own, on a clock of its
/// own: a sweep through a long outage's backlog takes many write jobs, and the poller goes
/// on claiming meanwhile (and sleeps as long as nothing falls due, which must not put the
/// sweeps off). Shutdown stops it between write jobs (each one whole).
async fn sweep_loop(inner: Arc<Inner>) {
    let mut sweeps: u64 = 0;
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(inner.config.stale_sweep) => {}
        }
        let whole = sweeps.is_multiple_of(WHOLE_SWEEP_EVERY);
        sweeps += 1;
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = sweep_stale(&inner, whole) => {}
        }
    }
}

/// Ends the deliveries behind open breakers that waited out the retry schedule.
/// `whole`: see `Store::fail_stale`.
async fn sweep_stale(inner: &Inner, whole: bool) {
    let before = Timestamp(Timestamp::now().0 - inner.config.retry.total().as_millis() as i64);
    for ep in inner.open_breakers() {
        match inner.store.fail_stale(ep.clone(), before, whole).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(endpoint = %ep, count = n, "deliveries waited out the retry schedule")
            }
            Err(e) => tracing::error!(error = %e, "ending stale deliveries failed"),
        }
    }
}

async fn poll_loop(inner: Arc<Inner>) {
    // The last look went again at once, for work that fell due since its claim looked.
    let mut looked_again = false;
    loop {
        if inner.shutdown.is_cancelled() {
            return;
        }
        crate::telemetry::poll();
        let now = Timestamp::now();
        let room_of = inner.clone();
        let offered: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let offered_in = offered.clone();
        let room = move |ep: &str| {
            let n = room_of.room(ep);
            if n > 0
                && let Ok(mut o) = offered_in.lock()
            {
                o.insert(ep.to_owned(), n);
            }
            n
        };
        let mut claimed = 0;
        // Cut off from the others (lease not renewed): claim nothing, they will.
        let claimable = inner.lease.allows(Duration::ZERO);
        match if claimable {
            inner.store.claim_due(now, room).await
        } else {
            Ok(Vec::new())
        } {
            Ok(due) => {
                claimed = due.len();
                if !due.is_empty() {
                    tracing::debug!(count = due.len(), "took due deliveries");
                }
                let mut taken: HashMap<String, usize> = HashMap::new();
                for d in due {
                    *taken.entry(d.endpoint.id.clone()).or_default() += 1;
                    inner.force_admit(&d.endpoint.id, 1);
                    inner.submit(d);
                }
                // An endpoint that filled all the room offered may have more waiting.
                let offered = offered.lock().map(|o| o.clone()).unwrap_or_default();
                {
                    let mut a = inner.admission();
                    for (ep, n) in taken {
                        if offered.get(&ep) == Some(&n) {
                            a.starved.insert(ep);
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "taking due deliveries failed"),
        }
        // Until the new plan is stored, any note of due work pokes: a retry recorded after
        // the read below looked would otherwise be compared with the old plan, and could
        // wait for the cap (5 s) instead of its time.
        inner.planned_wake.store(i64::MAX, Ordering::SeqCst);
        // Work due when the claim looked, yet not taken, had no room (full queues or open
        // breakers): a release of a starved endpoint, a probe's time or the cap wakes the
        // poller for it. So the wake is the first time after the claim looked, and work
        // behind a held endpoint never puts off another endpoint's retry. (Work that fell
        // due since the claim looked is taken right away.)
        let claimed_at = now;
        let next = match inner.store.next_due_at(claimed_at).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "finding the next due delivery failed");
                None
            }
        };
        let now = Timestamp::now();
        let cap = now.0 + POLL_MAX_SLEEP.as_millis() as i64;
        let mut wake = next.map_or(cap, |t| t.0.min(cap));
        if wake <= now.0 && looked_again && claimed == 0 {
            // Looked again at once for such work, and took nothing: it has no room either.
            // (Ingest writes the deliveries of an endpoint held back or full `pending`, due
            // at once, on PostgreSQL: looking again at each would keep the poller going for
            // as long as its events come.) The wake is the first time still to come.
            wake = match inner.store.next_due_at(now).await {
                Ok(n) => n.map_or(cap, |t| t.0.min(cap)),
                Err(e) => {
                    tracing::error!(error = %e, "finding the next due delivery failed");
                    cap
                }
            };
        }
        let wake = match inner.next_probe(claimed_at.0) {
            Some(p) => wake.min(p.max(now.0)),
            None => wake,
        };
        inner.planned_wake.store(wake, Ordering::Release);
        looked_again = wake <= now.0;
        // A claim that hit its cap left due work behind: come back right away.
        let sleep = if claimed >= crate::store::sqlite::MAX_CLAIM {
            Duration::ZERO
        } else {
            Duration::from_millis((wake - now.0).max(0) as u64)
        };
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(sleep) => {}
            _ = inner.poke.notified() => {}
        }
        // Still a pause after a big claim, so that deliveries given back at once without an
        // attempt (and so due again) cannot keep the poller claiming without rest.
        tokio::time::sleep(if claimed < BIG_CLAIM {
            POLL_MIN_GAP
        } else {
            POLL_BUSY_GAP
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    //! A lane survives a panic in an attempt. The panic is injected (nothing on the path is
    //! known to panic): the first attempt to a URL whose path ends in `/panics-once` panics,
    //! and every attempt to one ending in `/panics-always`.

    use crate::server::{self, Config};
    use crate::store::{Location, Store};
    use std::collections::HashMap;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    static PANICKED: AtomicBool = AtomicBool::new(false);

    pub(super) fn fault(target: &super::Target) {
        let path = target.uri.path();
        if path.ends_with("/panics-always")
            || (path.ends_with("/panics-once")
                && !PANICKED.swap(true, std::sync::atomic::Ordering::SeqCst))
        {
            panic!("injected: an attempt panics");
        }
    }

    type Got = Arc<Mutex<HashMap<String, Vec<String>>>>;

    async fn receive(
        axum::extract::State(got): axum::extract::State<Got>,
        uri: axum::http::Uri,
        headers: axum::http::HeaderMap,
    ) -> &'static str {
        let id = headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        got.lock()
            .unwrap()
            .entry(uri.path().to_owned())
            .or_default()
            .push(id);
        "ok"
    }

    #[test]
    fn a_probe_given_back_unsent_lets_the_next_one_through() {
        use super::{Admission, Breaker, Gate};
        let failing = |open, next_probe| Breaker {
            failures: 10,
            open,
            next_probe,
            backoff_ms: 1_000,
            probing: None,
            asked_until: None,
        };
        let mut a = Admission::default();
        a.breakers.insert("ep".into(), failing(true, 1_000));
        assert_eq!(a.gate("ep", 999), Gate::Park, "before the probe's time");
        let Gate::Probe(first) = a.gate("ep", 1_000) else {
            panic!("no probe when one was due");
        };
        assert_eq!(a.gate("ep", 1_001), Gate::Park, "one probe at a time");
        // The probe went back unsent (say the lease would not cover it): without this the
        // breaker waited for its result for ever, and the endpoint was never tried again.
        a.probe_not_made("ep", first);
        assert!(a.starved.contains("ep"), "its release wakes the poller");
        let Gate::Probe(second) = a.gate("ep", 1_002) else {
            panic!("the next probe did not go");
        };
        assert_ne!(first, second);
        // A late give-back of the first probe does not free the breaker from the second.
        a.starved.clear();
        a.probe_not_made("ep", first);
        assert_eq!(a.gate("ep", 1_003), Gate::Park);
        assert!(a.starved.is_empty());

        // Only a probe in flight is given up: no breaker, a closed one, or an open one with
        // no probe out is left alone.
        a.probe_not_made("healthy", second);
        a.breakers.insert("closed".into(), failing(false, 5_000));
        a.probe_not_made("closed", second);
        a.breakers.insert("waiting".into(), failing(true, 5_000));
        a.probe_not_made("waiting", second);
        assert!(a.starved.is_empty(), "{:?}", a.starved);
        assert_eq!(a.gate("healthy", 0), Gate::Go);
        assert_eq!(a.gate("closed", 1_003), Gate::Go);
        assert_eq!(
            a.gate("waiting", 1_003),
            Gate::Park,
            "its probe time has not come"
        );
    }

    #[test]
    fn give_backs_are_written_a_few_at_a_time_and_in_order() {
        use super::split_releases;
        use crate::store::{AttemptRecord, Outcome};
        let rec = |n: usize, outcome: Outcome| AttemptRecord {
            delivery_id: format!("dlv_{n}"),
            row: n as i64,
            claim: 1,
            endpoint_id: "ep".into(),
            endpoint_version: 1,
            attempt: None,
            outcome,
        };
        // Five give-backs with a success among them, at most two give-backs a write.
        let batch = vec![
            rec(0, Outcome::Released),
            rec(1, Outcome::Succeeded),
            rec(2, Outcome::Released),
            rec(3, Outcome::Released),
            rec(4, Outcome::Released),
            rec(5, Outcome::Released),
        ];
        let parts: Vec<Vec<i64>> = split_releases(batch, 2)
            .into_iter()
            .map(|p| p.into_iter().map(|r| r.row).collect())
            .collect();
        assert_eq!(parts, [vec![0, 1, 2], vec![3, 4], vec![5]]);
        // Attempts alone are never cut; nothing is lost or made up.
        let attempts: Vec<_> = (0..5).map(|n| rec(n, Outcome::Succeeded)).collect();
        assert_eq!(split_releases(attempts, 1).len(), 1);
        assert!(split_releases(Vec::new(), 64).is_empty());
    }

    /// A dispatcher's state on a fresh SQLite store, not started, with `config` and `lease`;
    /// the receiving end of its recorder's queue, and the directory the store lives in.
    async fn inner_on_sqlite(
        config: super::DispatchConfig,
        lease: super::cluster::Lease,
    ) -> (
        Arc<super::Inner>,
        tokio::sync::mpsc::Receiver<crate::store::AttemptRecord>,
        tempfile::TempDir,
    ) {
        use super::targets;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Location::Sqlite(dir.path().to_owned()))
            .await
            .unwrap();
        let guard = targets::Guard::new(Arc::new(targets::SystemResolver::default()), true, true);
        let (records, recorded) = tokio::sync::mpsc::channel(16);
        let inner = Arc::new(super::Inner::new(
            store,
            config,
            guard,
            CancellationToken::new(),
            lease,
            records,
        ));
        (inner, recorded, dir)
    }

    /// A dispatcher on SQLite whose poller sleeps with nothing planned (see
    /// [`poller_woken`]), and the directory its database lives in.
    async fn sleeping_dispatcher(
        config: super::DispatchConfig,
    ) -> (Arc<super::Inner>, super::Dispatcher, tempfile::TempDir) {
        let (inner, _recorded, dir) = inner_on_sqlite(config, own_lease()).await;
        inner
            .planned_wake
            .store(i64::MAX, std::sync::atomic::Ordering::SeqCst);
        let dispatcher = super::Dispatcher {
            inner: inner.clone(),
        };
        (inner, dispatcher, dir)
    }

    /// Whether the poller was woken since the last look.
    fn poller_woken(inner: &super::Inner) -> bool {
        use futures_util::FutureExt;
        inner.poke.notified().now_or_never().is_some()
    }

    /// A lease of a store no other node shares.
    fn own_lease() -> super::cluster::Lease {
        super::cluster::Lease::new(false, Duration::from_secs(30), std::time::Instant::now())
    }

    /// An open breaker whose next probe is at `next_probe`, with `probing` in flight.
    fn open_breaker(next_probe: i64, probing: Option<super::ProbeId>) -> super::Breaker {
        super::Breaker {
            failures: 10,
            open: true,
            next_probe,
            backoff_ms: 1_000,
            probing,
            asked_until: None,
        }
    }

    /// A delivery claimed before its endpoint was turned off, but handed over only after the
    /// dispatcher heard of it, is given back unsent, not attempted: when no queue of the
    /// endpoint's was in memory, and when its worker had idled long and would have left.
    #[tokio::test(start_paused = true)]
    async fn a_delivery_handed_over_after_its_endpoint_went_off_is_not_sent() {
        use crate::model::{Plan, Timestamp};
        use crate::store::sqlite::tests as sqlite;
        let (inner, mut recorded, _dir) =
            inner_on_sqlite(super::DispatchConfig::default(), own_lease()).await;
        let dispatcher = super::Dispatcher {
            inner: inner.clone(),
        };
        let store = &inner.store;
        let account = store.create_account("a".into(), Plan::Pro).await.unwrap();
        let due_for = |ep: &crate::model::Endpoint| {
            let (store, account, ep) = (store.clone(), account.id.clone(), ep.clone());
            async move {
                let accepted = store
                    .insert_events(account, sqlite::click(1), |_| true, |_| {})
                    .await
                    .unwrap();
                let d = accepted[0]
                    .deliveries
                    .iter()
                    .find(|d| d.endpoint.id == ep.id)
                    .unwrap();
                crate::store::DueDelivery {
                    delivery_id: d.id.clone(),
                    row: d.row,
                    claim: 1,
                    attempts: 0,
                    event_id: accepted[0].event.id.clone(),
                    payload: accepted[0].payload.clone(),
                    endpoint: d.endpoint.clone(),
                    manual_after_end: false,
                    manual: false,
                }
            }
        };
        let off = |ep: &crate::model::Endpoint| crate::model::Endpoint {
            enabled: false,
            updated_at: Timestamp(ep.updated_at.0 + 1),
            ..ep.clone()
        };
        let mut given_back = async |due: crate::store::DueDelivery| {
            inner.submit(due);
            let record = tokio::time::timeout(Duration::from_secs(10), recorded.recv())
                .await
                .expect("the delivery came back")
                .unwrap();
            assert!(
                matches!(record.outcome, crate::store::Outcome::Released)
                    && record.attempt.is_none(),
                "{record:?}"
            );
        };

        // No queue in memory when the endpoint is turned off.
        let ep = store
            .insert_endpoint(sqlite::endpoint(&account.id), 100)
            .await
            .unwrap();
        let due = due_for(&ep).await;
        assert!(super::locked(&inner.queues).get(&ep.id).is_none());
        dispatcher.endpoint_changed(&off(&ep));
        given_back(due).await;

        // A queue whose worker has idled for almost its whole idle time when the endpoint is
        // turned off: the queue outlives that time.
        let ep = store
            .insert_endpoint(sqlite::endpoint(&account.id), 100)
            .await
            .unwrap();
        let due = due_for(&ep).await;
        inner.queue(&mut super::locked(&inner.queues), &ep.id);
        // The worker begins waiting now.
        tokio::task::yield_now().await;
        tokio::time::advance(super::WORKER_IDLE - Duration::from_secs(1)).await;
        dispatcher.endpoint_changed(&off(&ep));
        tokio::time::advance(Duration::from_secs(2)).await;
        tokio::task::yield_now().await;
        assert!(super::locked(&inner.queues).get(&ep.id).is_some());
        given_back(due).await;
    }

    /// What a turning off left waiting (a long outage's backlog) ends in writes of their
    /// own: at start, after a crash, and when an endpoint is turned off, which wakes the
    /// ender. No delivery of a turned-off endpoint stays `pending`.
    #[tokio::test]
    async fn what_a_turning_off_left_waiting_ends_at_start_and_when_woken() {
        use crate::model::{DeliveryStatus, Plan};
        use crate::store::sqlite::{SqliteStore, tests as sqlite};
        let dir = tempfile::tempdir().unwrap();
        let mut sqlite_store =
            SqliteStore::open(dir.path(), crate::store::sealing::Sealer::none()).unwrap();
        sqlite_store.set_end_batch(3);
        let account = sqlite_store
            .create_account("a".into(), Plan::Pro)
            .await
            .unwrap();
        let ep = sqlite_store
            .insert_endpoint(sqlite::endpoint(&account.id), 100)
            .await
            .unwrap();
        let (st, acc, ep_id) = (&sqlite_store, &account.id, &ep.id);
        let waiting = || async move {
            st.insert_events(acc.clone(), sqlite::click(20), |_| false, |_| {})
                .await
                .unwrap()
                .into_iter()
                .map(|a| a.deliveries[0].id.clone())
                .collect::<Vec<_>>()
        };
        let turn = |on: bool| async move {
            st.update_endpoint(acc.clone(), ep_id.clone(), move |e| e.enabled = on)
                .await
                .unwrap()
                .unwrap()
        };
        let pending = |ids: Vec<String>| async move {
            let mut left = 0;
            for id in ids {
                let (d, _) = st.get_delivery(acc.clone(), id).await.unwrap().unwrap();
                if d.status == DeliveryStatus::Pending {
                    left += 1;
                }
            }
            left
        };
        let ended = |ids: Vec<String>| async move {
            let mut n = 0;
            for id in ids {
                let (d, _) = st.get_delivery(acc.clone(), id).await.unwrap().unwrap();
                if d.status == DeliveryStatus::Failed
                    && d.last_error.as_deref() == Some(crate::store::OFF_DISABLED)
                {
                    n += 1;
                }
            }
            n
        };
        let until_all_ended = |ids: Vec<String>| async move {
            for _ in 0..400 {
                if ended(ids.clone()).await == ids.len() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            false
        };

        // Turned off before a crash: 3 ended, 17 left.
        let before = waiting().await;
        turn(false).await;
        assert_eq!(pending(before.clone()).await, 17);
        // The dispatcher of the next start, with no room: its poller takes none of the backlog
        // made below while the endpoint is on.
        let config = super::DispatchConfig {
            max_per_endpoint: 0,
            ..super::DispatchConfig::default()
        };
        let guard = super::targets::Guard::new(
            Arc::new(super::targets::SystemResolver::default()),
            true,
            true,
        );
        let dispatcher = super::Dispatcher::start(
            Store::Sqlite(sqlite_store.clone()),
            config,
            guard,
            CancellationToken::new(),
            std::time::Instant::now(),
            Vec::new(),
        );
        assert!(
            until_all_ended(before).await,
            "left pending after a restart"
        );

        // Turned on, a backlog, turned off: the ender, done with its look at start, is woken.
        turn(true).await;
        let backlog = waiting().await;
        let off = turn(false).await;
        assert_eq!(pending(backlog.clone()).await, 17);
        dispatcher.endpoint_changed(&off);
        assert!(
            until_all_ended(backlog).await,
            "left pending after a turning off"
        );
    }

    /// Pending deliveries ingest commits wake the poller only when it could take one: an
    /// endpoint that is full or down is woken for by its release or its probe's time, and
    /// is not polled after every commit meanwhile.
    #[tokio::test]
    async fn the_poller_is_woken_for_pending_work_only_when_it_could_take_it() {
        let config = super::DispatchConfig {
            max_per_endpoint: 1,
            ..super::DispatchConfig::default()
        };
        let (inner, dispatcher, _dir) = sleeping_dispatcher(config).await;
        let woken = || poller_woken(&inner);

        // Room for it: wake.
        dispatcher.committed_pending("ep_room");
        assert!(woken(), "an endpoint with room");

        // Full: no wake now, but its next release wakes (the mark is the commit's own: the
        // refusal's mark may have been taken by an earlier release meanwhile).
        assert!(dispatcher.try_admit("ep_full"));
        assert!(!dispatcher.try_admit("ep_full"));
        inner.admission().starved.clear();
        dispatcher.committed_pending("ep_full");
        assert!(!woken(), "a full endpoint");
        dispatcher.release("ep_full");
        assert!(woken(), "the release that makes room");

        // Down, its next probe later: no wake; once the probe is due, wake.
        let down = |next_probe| open_breaker(next_probe, None);
        let later = crate::model::Timestamp::now().0 + 60_000;
        inner
            .admission()
            .breakers
            .insert("ep_down".into(), down(later));
        dispatcher.committed_pending("ep_down");
        assert!(!woken(), "an endpoint whose probe is not due");
        inner.admission().breakers.insert("ep_down".into(), down(0));
        dispatcher.committed_pending("ep_down");
        assert!(woken(), "an endpoint whose probe is due");

        // A breaker that opens sets the poller's alarm to its first probe.
        let threshold = inner.config.breaker_threshold;
        for _ in 1..threshold {
            inner.breaker_result("ep_failing", false, None);
        }
        assert!(!woken(), "failures below the threshold");
        inner.breaker_result("ep_failing", false, None);
        assert!(woken(), "the breaker opened");

        // A breaker removed while open (the endpoint changed, or its deliveries were queued
        // again by hand): its pending deliveries may go now.
        inner
            .admission()
            .breakers
            .insert("ep_down".into(), down(later));
        dispatcher.reset_breaker("ep_down");
        assert!(woken(), "an open breaker reset");
        dispatcher.reset_breaker("ep_down");
        assert!(!woken(), "no breaker to reset");
    }

    /// A stalled endpoint (every lane busy `stall_after` ago, no success since) holds at most
    /// twice its lanes in memory. Failures do not end the stall, so an endpoint with few
    /// lanes, whose attempts all time out, never takes its backlog into memory between two
    /// rounds; a success, a change or a reset does. Each release meanwhile wakes the poller
    /// to top it up.
    #[tokio::test]
    async fn a_stalled_endpoint_holds_only_twice_its_lanes_in_memory() {
        use super::Admission;
        use crate::model::Timestamp;

        // The bookkeeping: two lanes, a stall after 250 ms.
        let mut a = Admission::default();
        let cap = |a: &Admission, now| a.stall_cap("ep", || now, 250, 2);
        a.attempt_started("ep", 2, 1_000);
        assert_eq!(cap(&a, 5_000), None, "a lane is still free");
        a.attempt_started("ep", 2, 1_100);
        assert_eq!(cap(&a, 1_349), None, "busy for less than the stall");
        assert_eq!(cap(&a, 1_350), Some(4), "every lane busy 250 ms ago");
        assert_eq!(a.stall_cap("other", || 1_350, 250, 2), None);
        a.attempt_ended("ep");
        a.attempt_ended("ep");
        assert_eq!(cap(&a, 9_000), Some(4), "failures do not end the stall");
        a.attempt_started("ep", 2, 9_000);
        assert!(a.stall_over("ep"), "a success ends it");
        assert_eq!(cap(&a, 99_000), None);
        a.attempt_ended("ep");
        assert!(
            a.flights.is_empty(),
            "nothing in flight, no stall: nothing kept"
        );
        assert!(!a.stall_over("ep"));

        // One lane, attempts that time out one after the other.
        let mut a = Admission::default();
        a.attempt_started("one", 1, 0);
        a.attempt_ended("one");
        a.attempt_started("one", 1, 15_000);
        assert_eq!(
            a.stall_cap("one", || 15_000, 250, 1),
            Some(2),
            "stalled since 0"
        );

        // The dispatcher: two lanes, so four in memory at most while stalled.
        let config = super::DispatchConfig {
            concurrency_per_endpoint: 2,
            ..super::DispatchConfig::default()
        };
        let (inner, dispatcher, _dir) = sleeping_dispatcher(config).await;
        let woken = || poller_woken(&inner);
        let long_ago = Timestamp::now().0 - 1_000;
        {
            let mut a = inner.admission();
            a.attempt_started("ep_stuck", 2, long_ago);
            a.attempt_started("ep_stuck", 2, long_ago);
        }
        for n in 0..4 {
            assert!(dispatcher.try_admit("ep_stuck"), "the {n}th of four");
        }
        assert!(
            !dispatcher.try_admit("ep_stuck"),
            "stalled and full: it waits pending"
        );
        assert!(
            dispatcher.try_admit("ep_fine"),
            "another endpoint is not held back"
        );
        assert_eq!(inner.room("ep_stuck"), 0);
        dispatcher.committed_pending("ep_stuck");
        assert!(
            !woken(),
            "no room for the stalled endpoint: nothing to poll for"
        );
        // An attempt times out: its release wakes the poller, which may take one more.
        inner.admission().attempt_ended("ep_stuck");
        dispatcher.release("ep_stuck");
        assert!(
            woken(),
            "a release of the starved endpoint wakes the poller"
        );
        assert_eq!(
            inner.room("ep_stuck"),
            1,
            "still stalled: topped up to four"
        );
        assert!(dispatcher.try_admit("ep_stuck"));
        assert!(!dispatcher.try_admit("ep_stuck"), "four again");
        // A success ends the stall: the release after it finds all the room again.
        inner.breaker_result("ep_stuck", true, None);
        dispatcher.release("ep_stuck");
        assert!(woken());
        assert!(inner.room("ep_stuck") > 4);
        // A stall ended by a reset (or a change of the endpoint) wakes the poller itself.
        {
            let mut a = inner.admission();
            a.attempt_started("ep_stuck", 2, long_ago);
        }
        assert_eq!(inner.room("ep_stuck"), 1, "stalled again, three in memory");
        assert!(!woken());
        dispatcher.reset_breaker("ep_stuck");
        assert!(woken(), "the reset lifted the stall");
        assert!(inner.room("ep_stuck") > 4);
    }

    /// `next_probe(looked)`, which the poll loop calls with the time its claim began, counts
    /// a probe that fell due after that time (the claim may not have offered it: the poller
    /// looks again at once), but not one already due when the claim began, nor one in
    /// flight.
    #[tokio::test]
    async fn the_next_probe_counts_one_that_fell_due_after_the_claim_began() {
        use crate::model::Timestamp;

        let (inner, _recorded, _dir) =
            inner_on_sqlite(super::DispatchConfig::default(), own_lease()).await;
        let now = Timestamp::now().0;
        assert_eq!(inner.next_probe(now), None, "no breaker");
        inner
            .admission()
            .breakers
            .insert("ep_a".into(), open_breaker(now - 5, None));
        assert_eq!(
            inner.next_probe(now - 10),
            Some(now - 5),
            "due after the claim began"
        );
        assert_eq!(inner.next_probe(now), None, "due before the claim began");
        inner
            .admission()
            .breakers
            .insert("ep_b".into(), open_breaker(now + 60_000, None));
        assert_eq!(inner.next_probe(now), Some(now + 60_000), "due later");
        assert_eq!(inner.next_probe(now - 10), Some(now - 5), "the earliest");
        inner
            .admission()
            .breakers
            .insert("ep_a".into(), open_breaker(now - 5, Some(1)));
        assert_eq!(
            inner.next_probe(now - 10),
            Some(now + 60_000),
            "a probe in flight sets no alarm"
        );
    }

    /// An endpoint `id` of the tests' account, on, nothing listening at its address.
    fn an_endpoint(id: &str) -> Arc<crate::model::Endpoint> {
        Arc::new(crate::model::Endpoint {
            id: id.into(),
            account_id: "acc_1".into(),
            url: "http://127.0.0.1:9/hooks".into(),
            description: String::new(),
            event_types: vec!["*".into()],
            headers: Default::default(),
            rate_limit_per_sec: None,
            enabled: true,
            disabled_reason: None,
            created_at: crate::model::Timestamp(1),
            updated_at: crate::model::Timestamp(1),
            secret: hookline_signing::Secret::from_bytes(&[7; 32])
                .unwrap()
                .to_string(),
            previous_secrets: Vec::new(),
            previous_secret_expires_at: None,
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_probe_the_lease_stops_goes_back_unsent_and_the_next_probe_may_go() {
        use super::{Gate, Job, Lanes, Target, cluster};
        use crate::store::{DueDelivery, Outcome};

        // A shared store's lease that no attempt fits in: as on a node whose heartbeat
        // failed, nothing may be sent.
        let lease = cluster::Lease::new(true, Duration::ZERO, std::time::Instant::now());
        let (inner, mut recorded, _dir) =
            inner_on_sqlite(super::DispatchConfig::default(), lease).await;

        // An endpoint whose breaker is open, its probe due.
        let ep = an_endpoint("ep_probe");
        inner
            .admission()
            .breakers
            .insert(ep.id.clone(), open_breaker(0, None));
        inner.force_admit(&ep.id, 1);
        let Gate::Probe(probe) = inner.gate(&ep.id) else {
            panic!("no probe when one was due");
        };
        assert_eq!(inner.gate(&ep.id), Gate::Park, "one probe at a time");

        // The probe reaches a lane, which finds the lease will not cover it.
        let mut lanes = Lanes::new(1);
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .acquire_owned()
            .await
            .unwrap();
        let due = DueDelivery {
            delivery_id: "dlv_1".into(),
            row: 1,
            claim: 1,
            attempts: 0,
            event_id: "evt_1".into(),
            payload: bytes::Bytes::from_static(b"{}"),
            endpoint: ep.clone(),
            manual_after_end: false,
            manual: false,
        };
        let target = Arc::new(Target::from_endpoint(&ep).unwrap());
        lanes.push(
            &inner,
            Job {
                due,
                target,
                permit,
                probe: Some(probe),
            },
        );

        // It goes back without an attempt...
        let record = tokio::time::timeout(Duration::from_secs(30), recorded.recv())
            .await
            .expect("the delivery was never given back")
            .unwrap();
        assert_eq!(record.delivery_id, "dlv_1");
        assert!(record.attempt.is_none());
        assert!(
            matches!(record.outcome, Outcome::Released),
            "{:?}",
            record.outcome
        );
        // ...and the breaker no longer waits for its result: its release wakes the poller,
        // and the next delivery of the endpoint goes as the probe.
        assert!(inner.admission().starved.contains(&ep.id));
        let Gate::Probe(second) = inner.gate(&ep.id) else {
            panic!("the next probe did not go");
        };
        assert_ne!(second, probe);

        // A failure that comes back for the first probe, late, settles nothing of the
        // second's: the breaker still waits for it, with the same backoff.
        inner.breaker_result(&ep.id, false, Some(probe));
        assert_eq!(inner.admission().breakers[&ep.id].probing, Some(second));
        assert_eq!(inner.admission().breakers[&ep.id].backoff_ms, 1_000);
        // The second's own failure doubles the wait before the next probe.
        inner.breaker_result(&ep.id, false, Some(second));
        assert_eq!(inner.admission().breakers[&ep.id].probing, None);
        assert_eq!(inner.admission().breakers[&ep.id].backoff_ms, 2_000);
        assert_eq!(inner.gate(&ep.id), Gate::Park, "the next probe waits 2 s");
        // Any success closes the breaker: the endpoint answers again.
        assert!(inner.breaker_result(&ep.id, true, None));
        assert_eq!(inner.gate(&ep.id), Gate::Go);
        drop(lanes);
    }

    /// Lanes a burst started leave on a trim, all but one, and the next burst starts what it
    /// needs again: no job is left without a lane. (On one thread: a burst is queued whole
    /// before any lane runs, so it starts all four.)
    #[tokio::test]
    async fn lanes_a_burst_started_leave_on_a_trim_and_come_back_as_needed() {
        use super::{Job, Lanes, Target, cluster};
        use crate::store::DueDelivery;
        use std::sync::atomic::Ordering;

        // A lease that no attempt fits in: each job goes back unsent, as a record.
        let lease = cluster::Lease::new(true, Duration::ZERO, std::time::Instant::now());
        let (inner, mut recorded, _dir) =
            inner_on_sqlite(super::DispatchConfig::default(), lease).await;
        let ep = an_endpoint("ep_lanes");
        let target = Arc::new(Target::from_endpoint(&ep).unwrap());
        let slots = Arc::new(tokio::sync::Semaphore::new(64));
        let mut lanes = Lanes::new(4);
        let mut next = 0;
        let mut burst = |lanes: &mut Lanes, n: usize| {
            for _ in 0..n {
                next += 1;
                let permit = slots.clone().try_acquire_owned().unwrap();
                lanes.push(
                    &inner,
                    Job {
                        due: DueDelivery {
                            delivery_id: format!("dlv_{next}"),
                            row: next,
                            claim: 1,
                            attempts: 0,
                            event_id: format!("evt_{next}"),
                            payload: bytes::Bytes::from_static(b"{}"),
                            endpoint: ep.clone(),
                            manual_after_end: false,
                            manual: false,
                        },
                        target: target.clone(),
                        permit,
                        probe: None,
                    },
                );
            }
        };
        async fn settled(
            recorded: &mut tokio::sync::mpsc::Receiver<crate::store::AttemptRecord>,
            lanes: &Lanes,
            n: usize,
        ) {
            for _ in 0..n {
                tokio::time::timeout(Duration::from_secs(30), recorded.recv())
                    .await
                    .expect("a job was never done")
                    .unwrap();
            }
            // Every lane back waiting.
            let started = lanes.shared.started.load(Ordering::Acquire) as isize;
            for _ in 0..3000 {
                if lanes.slack.load(Ordering::Acquire) == started {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the lanes did not all come back to wait");
        }

        // Eight at once: all four lanes start.
        burst(&mut lanes, 8);
        settled(&mut recorded, &lanes, 8).await;
        assert_eq!(lanes.shared.started.load(Ordering::Acquire), 4);
        // A trim lets all but one go.
        lanes.trim();
        for _ in 0..3000 {
            if lanes.shared.started.load(Ordering::Acquire) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(lanes.shared.started.load(Ordering::Acquire), 1);
        assert_eq!(lanes.slack.load(Ordering::Acquire), 1);
        // One job: the lane left takes it.
        burst(&mut lanes, 1);
        settled(&mut recorded, &lanes, 1).await;
        assert_eq!(lanes.shared.started.load(Ordering::Acquire), 1);
        // Another burst starts lanes again, no more than four.
        burst(&mut lanes, 8);
        settled(&mut recorded, &lanes, 8).await;
        assert_eq!(lanes.shared.started.load(Ordering::Acquire), 4);
        drop(lanes);
    }

    #[test]
    fn the_bookkeeping_stays_usable_after_a_panic_under_its_lock() {
        let m = Arc::new(Mutex::new(super::Admission::default()));
        let held = m.clone();
        let panicked = std::thread::spawn(move || {
            let mut a = held.lock().unwrap();
            a.total += 1;
            panic!("injected: a panic under the dispatcher's lock");
        })
        .join();
        assert!(panicked.is_err());
        assert!(m.is_poisoned());
        // Before, every later lock was refused: nothing more was admitted or released.
        super::locked(&m).total -= 1;
        assert_eq!(super::locked(&m).total, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_attempt_is_a_failed_attempt_and_its_lane_goes_on() {
        // The receiver.
        let got: Got = Arc::default();
        let app = axum::Router::new()
            .route("/r/{name}", axum::routing::post(receive))
            .with_state(got.clone());
        let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink_addr = sink.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(sink, app).await });

        // The server: one request in flight per endpoint, so an endpoint whose only lane
        // were lost would never be sent to again.
        let dir = tempfile::tempdir().unwrap();
        let location = Location::Sqlite(dir.path().to_owned());
        let store = Store::open(&location).await.unwrap();
        let (_, key) = crate::accounts::create(&store, "acme", crate::model::Plan::Pro)
            .await
            .unwrap();
        drop(store);
        let mut config = Config::at(location);
        config.url_rules.allow_insecure_urls = true;
        config.url_rules.allow_private_targets = true;
        config.dispatch.concurrency_per_endpoint = 1;
        config.dispatch.retry =
            crate::dispatch::retry::RetrySchedule::parse("100ms,100ms").unwrap();
        config.shutdown_grace = Duration::from_millis(200);
        config.limits.pro.ingest_per_sec = None;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(server::run(config, listener, shutdown.clone()));

        let http = reqwest::Client::new();
        let post = |path: &str, body: serde_json::Value| {
            http.post(format!("http://{addr}{path}"))
                .bearer_auth(&key)
                .json(&body)
                .send()
        };
        let mut up = false;
        for _ in 0..200 {
            if let Ok(r) = http.get(format!("http://{addr}/healthz")).send().await
                && r.status() == 200
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(up, "the server never answered");
        let mut endpoint_ids = Vec::new();
        for name in ["panics-once", "fine", "panics-always"] {
            let r = post(
                "/v1/endpoints",
                serde_json::json!({
                    "url": format!("http://{sink_addr}/r/{name}"),
                    "event_types": ["*"],
                }),
            )
            .await
            .unwrap();
            assert_eq!(r.status(), 201);
            let ep: serde_json::Value = r.json().await.unwrap();
            endpoint_ids.push(ep["id"].as_str().unwrap().to_owned());
        }
        let catalogue = crate::catalogue::Catalogue::builtin().unwrap();
        let example = catalogue
            .types()
            .iter()
            .find(|t| t.name == "open")
            .unwrap()
            .example
            .clone();
        let mut ids = Vec::new();
        for _ in 0..5 {
            let r = post(
                "/v1/events",
                serde_json::json!({"type": "open", "data": example}),
            )
            .await
            .unwrap();
            assert_eq!(r.status(), 202);
            let body: serde_json::Value = r.json().await.unwrap();
            ids.push(body["id"].as_str().unwrap().to_owned());
        }

        // Every event reaches both endpoints: the panicked attempt's delivery was retried
        // on schedule, and the endpoint's one lane kept working.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let done = {
                let got = got.lock().unwrap();
                let count = |p: &str| got.get(p).map_or(0, |v| v.len());
                count("/r/panics-once") >= 5 && count("/r/fine") >= 5
            };
            if done {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not everything arrived: {:?}",
                got.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(PANICKED.load(std::sync::atomic::Ordering::SeqCst));
        let got = got.lock().unwrap().clone();
        ids.sort();
        for path in ["/r/panics-once", "/r/fine"] {
            let mut seen = got[path].clone();
            seen.sort();
            assert_eq!(seen, ids, "{path}: each event once, by its id");
        }

        // The panicked attempt is on record as a failed one, before the attempt that
        // delivered; every other delivery succeeded at the first attempt.
        let get = |path: String| {
            let http = http.clone();
            let key = key.clone();
            async move {
                let r = http
                    .get(format!("http://{addr}{path}"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.json::<serde_json::Value>().await.unwrap()
            }
        };
        // (A delivery's outcome is written shortly after its receiver answered.)
        let details = loop {
            let mut details = Vec::new();
            for ep in &endpoint_ids {
                let list = get(format!("/v1/endpoints/{ep}/deliveries")).await;
                for d in list["data"].as_array().unwrap() {
                    let id = d["id"].as_str().unwrap();
                    details.push(get(format!("/v1/deliveries/{id}")).await);
                }
            }
            let ended = |d: &serde_json::Value| {
                let want = if d["endpoint_id"] == endpoint_ids[2].as_str() {
                    "failed"
                } else {
                    "succeeded"
                };
                d["status"] == want
            };
            if details.len() == 15 && details.iter().all(ended) {
                break details;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not every delivery succeeded: {details:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // A panic that recurs ends its delivery `failed` once the retry schedule is spent
        // (three attempts here), each attempt on record; nothing reached the receiver.
        let (always, details): (Vec<_>, Vec<_>) = details
            .into_iter()
            .partition(|d| d["endpoint_id"] == endpoint_ids[2].as_str());
        assert_eq!(always.len(), 5);
        for d in &always {
            let attempts = d["attempts"].as_array().unwrap();
            assert_eq!(attempts.len(), 3, "{d}");
            for a in attempts {
                assert!(a["status_code"].is_null(), "{d}");
                assert!(
                    a["error"].as_str().unwrap().contains("internal error"),
                    "{d}"
                );
            }
        }
        assert!(!got.contains_key("/r/panics-always"), "{got:?}");
        let retried: Vec<&serde_json::Value> = details
            .iter()
            .filter(|d| d["attempts"].as_array().unwrap().len() > 1)
            .collect();
        assert_eq!(retried.len(), 1, "{details:?}");
        assert_eq!(retried[0]["endpoint_id"], endpoint_ids[0].as_str());
        assert_eq!(retried[0]["status"], "succeeded");
        let attempts = retried[0]["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{attempts:?}");
        assert_eq!(attempts[0]["attempt"], 1);
        assert!(attempts[0]["status_code"].is_null(), "{attempts:?}");
        assert!(
            attempts[0]["error"]
                .as_str()
                .unwrap()
                .contains("internal error"),
            "{attempts:?}"
        );
        assert_eq!(attempts[1]["attempt"], 2);
        assert_eq!(attempts[1]["status_code"], 200);
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
