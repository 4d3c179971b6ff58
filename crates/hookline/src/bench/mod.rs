//! `hookline bench`: load generator, receiver sink and report, over real HTTP on loopback.
//!
//! Every run first measures the **raw reference**: the fastest plain client we have (hyper,
//! keep-alive, `TCP_NODELAY`, pooled) POSTing signed webhooks straight to the sink — the same
//! envelopes, of the same events, that Hookline delivers in the end-to-end phases. Every
//! end-to-end result is also given as a ratio to it, measured in the same run.
//!
//! An end-to-end phase starts a fresh `hookline serve` (this same binary, as a child process,
//! on a temporary SQLite data directory; or `--nodes` of them on a fresh schema of the
//! PostgreSQL database `--database-url` names) unless `--api` names running ones, creates F
//! endpoints pointing at the sink, sends events, and waits for every delivery. Each event's
//! `data.sent_us` carries the time its request was (or, in an open loop, should have been)
//! sent, so the sink measures latency from there: no coordinated omission.

pub mod relay;
pub mod sink;
pub mod writer;

use crate::model::Plan;
use crate::store::Store;
use anyhow::{Context as _, bail};
use bytes::Bytes;
use hookline_signing::{Secret, Verifier};
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::json;
use sink::Sink;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// The raw reference alone.
    Raw,
    /// Closed loop: single-event requests, then batches.
    Throughput,
    /// Open loop at `--rate` events/s, single-event requests.
    Latency,
    /// The endpoint is down (503) while `--events` (default 1,000,000) queue, then comes
    /// back: RSS, and how fast the backlog drains.
    Backlog,
    /// Open loop to `--fanout` healthy endpoints, in rounds of a phase alone and a phase
    /// beside one more endpoint that never answers (with `--control`, also a phase beside one
    /// more healthy endpoint instead): the healthy endpoints' latency in each.
    Isolation,
}

/// Which closed-loop phases `throughput` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Phases {
    /// Single-event requests, then batches.
    Both,
    /// Single-event requests only.
    Single,
    /// Batches only.
    Batch,
}

/// `hookline bench` options. Each flag has its variable, `HOOKLINE_BENCH_` and the flag's
/// name (`--raw-seconds`: `HOOKLINE_BENCH_RAW_SECONDS`), apart from the servers' own: the
/// servers the bench starts inherit its environment, so a `HOOKLINE_TIMEOUT` set for them
/// is not the bench's `--timeout`.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    pub scenario: Scenario,
    /// Events per end-to-end phase (default: 20,000 closed loop; rate × seconds open loop).
    #[arg(long, env = "HOOKLINE_BENCH_EVENTS")]
    pub events: Option<u64>,
    /// Endpoints, each subscribed to every event.
    #[arg(long, env = "HOOKLINE_BENCH_FANOUT", default_value_t = 1)]
    pub fanout: usize,
    /// Events per batch request in the batch phase.
    #[arg(long, env = "HOOKLINE_BENCH_BATCH", default_value_t = 100)]
    pub batch: usize,
    /// Throughput: run only one of the two closed-loop phases (for profiling one of them).
    #[arg(
        long,
        env = "HOOKLINE_BENCH_PHASES",
        value_enum,
        default_value = "both"
    )]
    pub phases: Phases,
    /// Concurrent senders in a closed loop.
    #[arg(long, env = "HOOKLINE_BENCH_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,
    /// Open-loop rate, events/s.
    #[arg(long, env = "HOOKLINE_BENCH_RATE", default_value_t = 1000)]
    pub rate: u64,
    /// Open-loop duration.
    #[arg(long, env = "HOOKLINE_BENCH_SECONDS", default_value_t = 10)]
    pub seconds: u64,
    /// How long the raw reference runs.
    #[arg(long, env = "HOOKLINE_BENCH_RAW_SECONDS", default_value_t = 3)]
    pub raw_seconds: u64,
    /// Concurrent connections of the raw reference.
    #[arg(long, env = "HOOKLINE_BENCH_RAW_CONCURRENCY", default_value_t = 64)]
    pub raw_concurrency: usize,
    /// How many rounds of the scenario's phases to run. Isolation (3 by default): in rotating
    /// order, latencies pooled per phase kind. Throughput (1 by default): the raw reference is
    /// measured between every two phases, the order of single events and batches swaps from
    /// one round to the next, and each kind's median ratio is reported.
    #[arg(long, env = "HOOKLINE_BENCH_ROUNDS")]
    pub rounds: Option<usize>,
    /// Isolation: each round also runs a third phase beside one more *healthy* endpoint
    /// (answered by a sink of its own, not counted), to tell what a hanging endpoint costs
    /// from what any further subscriber costs. Its order is balanced over every six rounds.
    #[arg(long, env = "HOOKLINE_BENCH_CONTROL", value_parser = clap::builder::BoolishValueParser::new())]
    pub control: bool,
    /// Running Hookline nodes to target instead of starting any (comma-separated base URLs;
    /// senders are spread over them; needs `--key`).
    #[arg(long, env = "HOOKLINE_BENCH_API")]
    pub api: Option<String>,
    /// Start the servers on this PostgreSQL database (each phase in a fresh schema, dropped
    /// after) instead of a temporary SQLite directory.
    #[arg(long, env = "HOOKLINE_BENCH_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// How many `hookline serve` nodes to start (several need `--database-url`).
    #[arg(long, env = "HOOKLINE_BENCH_NODES", default_value_t = 1)]
    pub nodes: usize,
    /// The API key for `--api`.
    #[arg(long, env = "HOOKLINE_BENCH_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// The attempt timeout of the servers the bench starts (e.g. `2s`). Isolation defaults
    /// to 2 s, so that within each phase the hanging endpoint's requests run into it, fail,
    /// are retried and open its breaker; the other scenarios keep the server's default.
    #[arg(long, env = "HOOKLINE_BENCH_TIMEOUT", value_parser = crate::model::parse_duration)]
    pub timeout: Option<Duration>,
    /// Measure a relay that stores nothing (see [`relay`]) instead of Hookline: the ceiling
    /// of taking events over HTTP and delivering them over HTTP on this machine.
    #[arg(long, env = "HOOKLINE_BENCH_RELAY", value_parser = clap::builder::BoolishValueParser::new(), conflicts_with_all = ["api", "database_url"])]
    pub relay: bool,
    /// Write every measured delivery of each phase to a CSV file in this directory
    /// (`NNN-<phase>.csv`: its intended send time as Unix µs and µs since the phase began,
    /// and its latency in µs), and in an open loop how late the generator began each request
    /// (`NNN-<phase>-send-lag.csv`): to see *when* a phase's tail happened, and line it up
    /// with the servers' logs (`HOOKLINE_LOG` is passed on to the servers the bench starts).
    #[arg(long, env = "HOOKLINE_BENCH_SAMPLES")]
    pub samples: Option<std::path::PathBuf>,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client(max_idle: usize) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .build(http)
}

/// One end-to-end phase's results.
#[derive(Serialize, Debug)]
pub struct Phase {
    pub name: String,
    pub mode: &'static str,
    pub events: u64,
    pub fanout: usize,
    pub batch: usize,
    pub accepted: u64,
    pub rejected: u64,
    pub accepted_per_sec: f64,
    pub delivered: u64,
    pub delivered_per_sec: f64,
    pub delivered_ratio_to_raw: f64,
    /// The raw reference this phase's ratios are measured against: the mean of the two
    /// measurements that bracket it. Those are the ones before and after the whole run, or,
    /// for throughput, the ones right before and right after the phase (see
    /// [`Report::raw_references_per_sec`]).
    pub raw_per_sec: f64,
    pub lost: u64,
    pub duplicates: u64,
    /// Bad signatures at the sink, and at the additional endpoints' sink if any.
    pub bad_signatures: u64,
    /// Isolation's control phase: deliveries the additional healthy endpoints got (not
    /// counted in `delivered`, nor their latency anywhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_delivered: Option<u64>,
    /// The mean body size of the deliveries the sink verified.
    pub delivered_body_bytes: f64,
    pub latency_ms: Percentiles,
    /// Open loop only: how late the generator itself began each request, after its
    /// intended send time (included in `latency_ms`, which counts from the intended time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag_ms: Option<Percentiles>,
    pub server_peak_rss_mb: Option<f64>,
    /// CPU time (user and system) the servers this run started used per accepted event,
    /// from the load's start to the last delivery (µs; Linux).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_event: Option<f64>,
    /// [`Phase::server_cpu_us_per_event`] by the servers' threads: `runtime` (the async
    /// runtime's workers and blocking threads, and the main thread that drives it: HTTP in
    /// and out, reads), `writer` and `checkpointer` (SQLite's), and `other` (every other
    /// thread, and threads that ended during the phase, such as blocking threads left idle).
    /// Each thread's time is read in 10 ms ticks, so over a short phase the groups may add up
    /// to a little more than the whole (`other` is then 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_by_thread_us_per_event: Option<std::collections::BTreeMap<&'static str, f64>>,
    /// The same for this process: the load generator and the sink (with `--relay`, the relay
    /// too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bench_cpu_us_per_event: Option<f64>,
    /// Bytes the servers this run started sent to the storage layer per accepted event, over
    /// the same span (KiB; Linux's `write_bytes`, counted as pages are dirtied: on SQLite
    /// mostly WAL frames, each a page of the database). Of the servers' own process only: a
    /// PostgreSQL server writes in its own. The servers log to the bench's standard error,
    /// so with that sent to a file their log lines count too (a few hundred bytes a run at
    /// the default `warn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_disk_kib_per_event: Option<f64>,
    /// The share of the whole machine's CPU time (every process, every CPU, from
    /// `/proc/stat`) that was idle, I/O wait included (%), from the load's start to the
    /// poll that saw the last delivery arrive (up to 10 ms after it; for `backlog`, the
    /// ingest while the endpoint is down and the drain). A closed loop that leaves the
    /// machine idle is not bound by the machine's CPU as a whole: it waits on I/O,
    /// wake-ups, or one busy thread. The idle and I/O-wait ticks over the span's wall-clock
    /// time times the online CPUs (see [`machine_shares`]: a kernel that counts by the tick
    /// samples busy time, but clocks idle time), in ticks of 10 ms of one CPU, so to about
    /// 1 / (100 × CPUs × seconds); none for a span shorter than 10 ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_idle_pct: Option<f64>,
    /// The same for the time this machine wanted to run but the hypervisor gave to
    /// others (`steal`). A host that changes speed without it has another cause.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_steal_pct: Option<f64>,
    /// What the servers' SQLite writer did over the phase, by their own metrics: busy,
    /// in `COMMIT`, write jobs per group commit (none on PostgreSQL and for the relay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer: Option<writer::WriterShares>,
    /// Backlog only: deliveries/s from the endpoint's return to the last receipt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_ratio_to_raw: Option<f64>,
    /// Backlog only: from the endpoint's return to the first delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub back_to_first_ms: Option<f64>,
    /// Backlog only: deliveries/s from the first delivery after the return to the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_after_first_per_sec: Option<f64>,
}

/// The endpoints of a phase.
#[derive(Clone, Copy, Debug, Default)]
struct Setup {
    /// Extra endpoints that never answer.
    hanging: usize,
    /// Extra healthy endpoints, at a sink of their own ([`sink::Apart`]): not measured.
    bystanders: usize,
    /// The endpoints answer 503 until every event is accepted.
    down_during_ingest: bool,
}

#[derive(Serialize, Debug, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(mut us: Vec<u64>) -> Self {
        if us.is_empty() {
            return Percentiles::default();
        }
        us.sort_unstable();
        let at = |q: f64| {
            let i = ((us.len() as f64 * q).ceil() as usize).clamp(1, us.len()) - 1;
            us[i] as f64 / 1000.0
        };
        Percentiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
        }
    }
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub scenario: Scenario,
    /// The phases measured the storage-less relay (`--relay`), not Hookline.
    pub relay: bool,
    pub cores: usize,
    /// The mean of the raw reference measured before and after the phases (not counting any
    /// measurement between phases). Each phase's ratios use its own `raw_per_sec`.
    pub raw_per_sec: f64,
    pub raw_before_per_sec: f64,
    /// Throughput with more than one phase: the first measurement of the raw reference
    /// between two phases (all of them are in `raw_references_per_sec`), so that each phase
    /// is compared with the measurements that bracket it. The host's speed can drift by a
    /// quarter over the seconds of one run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_mid_per_sec: Option<f64>,
    pub raw_after_per_sec: f64,
    /// Every measurement of the raw reference, in order. Throughput measures one between
    /// every two phases, and compares each phase with the mean of the two around it; the
    /// other scenarios measure it before and after all their phases.
    pub raw_references_per_sec: Vec<f64>,
    /// The raw reference's mean body size, to compare with the phases' deliveries.
    pub raw_body_bytes: f64,
    /// The largest share of the machine's CPU time that stood idle (I/O wait included) over
    /// any of this run's measurements of the raw reference (%, from `/proc/stat`): near 0
    /// when the reference kept the machine busy. One that leaves it idle is likely slower
    /// than the machine allows, which would flatter every ratio. (With `--api` or PostgreSQL
    /// on the same machine, their own background work counts as busy too.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_idle_pct_max: Option<f64>,
    pub phases: Vec<Phase>,
    /// Throughput: each kind of phase's ratios to the reference over the rounds, in order,
    /// and their median.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub throughput_rounds: Vec<KindOverRounds>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
}

/// One kind of throughput phase over the rounds of a run.
#[derive(Serialize, Debug)]
pub struct KindOverRounds {
    /// The phases' name (`closed single F=1`, `closed batch=100 F=1`).
    pub phase: String,
    /// `delivered_ratio_to_raw` of each round's phase of this kind, in the order they ran.
    pub ratios: Vec<f64>,
    pub median_ratio: f64,
}

/// The healthy endpoints' latency, pooled over every round, alone and beside a hanging one.
#[derive(Serialize, Debug)]
pub struct Isolation {
    pub alone_ms: Percentiles,
    pub beside_hanging_ms: Percentiles,
    /// Change of the pooled p99.
    pub p99_change_pct: f64,
    /// The median over rounds of each phase's own p99, alone and beside the hanging one:
    /// less sensitive than the pooled p99 to one noisy round.
    pub median_round_p99_alone_ms: f64,
    pub median_round_p99_beside_ms: f64,
    pub median_round_p99_change_pct: f64,
    /// The p99 of the healthy deliveries sent in each second of a phase (the first second
    /// first), pooled over the rounds, alone and beside the hanging endpoint.
    pub alone_p99_by_second_ms: Vec<f64>,
    pub beside_p99_by_second_ms: Vec<f64>,
    /// Rounds in which the phase beside the hanging endpoint had the higher p99, of
    /// `rounds`: about half when the hanging endpoint changes nothing.
    pub rounds_beside_higher: usize,
    pub rounds: usize,
    /// Each round's p99 beside the hanging endpoint against the same round's alone.
    pub paired_round_p99_change: PairedChange,
    /// With `--control`: the same beside one more healthy endpoint instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<Control>,
}

/// The healthy endpoints beside one more healthy endpoint (the control phase): what any
/// further subscriber costs them.
#[derive(Serialize, Debug)]
pub struct Control {
    pub beside_healthy_ms: Percentiles,
    /// Change of the pooled p99 against the phases alone.
    pub p99_change_pct: f64,
    pub median_round_p99_beside_healthy_ms: f64,
    pub median_round_p99_change_pct: f64,
    /// Rounds in which the control phase had a higher p99 than the phase alone.
    pub rounds_healthy_higher: usize,
    /// Rounds in which the phase beside the hanging endpoint had a higher p99 than the
    /// control phase: about half when hanging costs no more than answering.
    pub rounds_hanging_above_healthy: usize,
    /// The p99 of the healthy deliveries sent in each second of a control phase, pooled over
    /// the rounds.
    pub p99_by_second_ms: Vec<f64>,
    /// Each round's control p99 against the same round's alone.
    pub paired_round_p99_change: PairedChange,
}

/// How much one setup's p99 moved against another's, round by round: the median over the
/// rounds of each round's own change, with a 90 % bootstrap interval of that median. The
/// phases of a round run within a minute of each other, so pairing them leaves out most of
/// the host's drift from round to round; the interval says how far one run can be trusted.
#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
pub struct PairedChange {
    pub median_pct: f64,
    pub low_pct: f64,
    pub high_pct: f64,
}

impl std::fmt::Display for PairedChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median change {:+.1} % (90 % interval {:+.1} to {:+.1} %)",
            self.median_pct, self.low_pct, self.high_pct
        )
    }
}

/// How far `to` is above `from`, in %.
fn change_pct(from: f64, to: f64) -> f64 {
    (to / from.max(1e-9) - 1.0) * 100.0
}

/// Resamples of the rounds behind a [`PairedChange`]'s interval.
const BOOTSTRAP_RESAMPLES: usize = 5_000;

/// Each round's `other` p99 against its `alone` p99, in %: the median over the rounds and a
/// 90 % interval from [`BOOTSTRAP_RESAMPLES`] resamples of the rounds (with a fixed seed, so
/// that the same rounds always give the same interval).
fn paired_change(alone: &[f64], other: &[f64]) -> PairedChange {
    use rand::{RngExt as _, SeedableRng as _};
    let changes: Vec<f64> = alone
        .iter()
        .zip(other)
        .map(|(&a, &o)| change_pct(a, o))
        .collect();
    if changes.is_empty() {
        return PairedChange {
            median_pct: 0.0,
            low_pct: 0.0,
            high_pct: 0.0,
        };
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut medians: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            median(
                (0..changes.len())
                    .map(|_| changes[rng.random_range(0..changes.len())])
                    .collect(),
            )
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    let at = |q: f64| medians[((medians.len() - 1) as f64 * q).round() as usize];
    PairedChange {
        median_pct: median(changes),
        low_pct: at(0.05),
        high_pct: at(0.95),
    }
}

/// The order of isolation's `k` phases (indices) in `round`. Two phases alternate which
/// goes first. Three go through all six orders in turn, so that over every six rounds each
/// phase runs first, second and third twice, and within a round right after each of the
/// others twice.
fn phase_order(round: usize, k: usize) -> Vec<usize> {
    const THREE: [[usize; 3]; 6] = [
        [0, 1, 2],
        [1, 2, 0],
        [2, 0, 1],
        [0, 2, 1],
        [2, 1, 0],
        [1, 0, 2],
    ];
    match k {
        3 => THREE[round % 6].to_vec(),
        _ => (0..k).map(|j| (round + j) % k.max(1)).collect(),
    }
}

/// Each kind of phase, from (kind, name, ratio) in the order the phases ran, in the order
/// kinds first ran, with its ratios over the rounds and their median. (Kinds, not names:
/// with `--batch 1` both kinds have the same name.)
fn over_rounds<'a>(phases: impl IntoIterator<Item = (usize, &'a str, f64)>) -> Vec<KindOverRounds> {
    let mut seen: Vec<(usize, KindOverRounds)> = Vec::new();
    for (kind, name, ratio) in phases {
        match seen.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, k)) => k.ratios.push(ratio),
            None => seen.push((
                kind,
                KindOverRounds {
                    phase: name.to_owned(),
                    ratios: vec![ratio],
                    median_ratio: 0.0,
                },
            )),
        }
    }
    seen.into_iter()
        .map(|(_, mut k)| {
            k.median_ratio = median(k.ratios.clone());
            k
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Runs a benchmark and prints a table, then the report as one JSON line.
pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    if args.relay && args.scenario == Scenario::Backlog {
        bail!(
            "the relay retries nothing, so it has no backlog to drain: use --relay with throughput, latency or isolation"
        );
    }
    if args.rounds.is_some() && !matches!(args.scenario, Scenario::Isolation | Scenario::Throughput)
    {
        bail!("--rounds repeats the phases of throughput or isolation: use it with one of them");
    }
    if args.control && args.scenario != Scenario::Isolation {
        bail!("--control adds a phase to each isolation round: use it with isolation");
    }
    let secret = Secret::from_bytes(&rand::random::<[u8; 32]>())
        .map_err(|e| anyhow::anyhow!("making a secret: {e}"))?;
    let mut raw_idle: Vec<f64> = Vec::new();
    let (raw_before, raw_body_bytes, idle) = raw_reference(&args, &secret).await?;
    raw_idle.extend(idle);
    println!(
        "raw reference: {raw_before:.0} signed requests/s ({} connections, {} s, {raw_body_bytes:.0}-byte bodies){}",
        args.raw_concurrency,
        args.raw_seconds,
        idle_note(idle)
    );
    let mut phases = Vec::new();
    // Each measurement of the reference, with the number of phases run before it: a phase is
    // compared with the two measurements that bracket it.
    let mut references: Vec<(usize, f64)> = vec![(0, raw_before)];
    let mut raw_mid = None;
    let mut isolation = None;
    let mut keep = Keep::new(args.samples.clone())?;
    // Throughput: which kind (single events, batches) each phase was.
    let mut phase_kinds: Vec<usize> = Vec::new();
    match args.scenario {
        Scenario::Raw => {}
        Scenario::Throughput => {
            let n = args.events.unwrap_or(20_000);
            let single = Load::Closed { batch: 1 };
            let batch = Load::Closed {
                batch: args.batch.clamp(1, 1000),
            };
            let kinds = match args.phases {
                Phases::Both => vec![single, batch],
                Phases::Single => vec![single],
                Phases::Batch => vec![batch],
            };
            for round in 0..args.rounds.unwrap_or(1).max(1) {
                // Neither kind always runs first after a phase of the other.
                let mut order: Vec<usize> = (0..kinds.len()).collect();
                if round % 2 == 1 {
                    order.reverse();
                }
                for kind in order {
                    if !phases.is_empty() {
                        let (mid, _, idle) = raw_reference(&args, &secret).await?;
                        raw_idle.extend(idle);
                        println!(
                            "raw reference between the phases: {mid:.0} signed requests/s{}",
                            idle_note(idle)
                        );
                        raw_mid.get_or_insert(mid);
                        references.push((phases.len(), mid));
                    }
                    phases.push(
                        end_to_end(&args, &secret, kinds[kind], n, Setup::default(), &mut keep)
                            .await?
                            .0,
                    );
                    phase_kinds.push(kind);
                }
            }
        }
        Scenario::Latency => {
            let n = args.events.unwrap_or(args.rate * args.seconds);
            let load = Load::Open {
                rate: args.rate.max(1),
            };
            phases.push(
                end_to_end(&args, &secret, load, n, Setup::default(), &mut keep)
                    .await?
                    .0,
            );
        }
        Scenario::Backlog => {
            let n = args.events.unwrap_or(1_000_000);
            let load = Load::Closed {
                batch: args.batch.clamp(1, 1000),
            };
            let setup = Setup {
                down_during_ingest: true,
                ..Setup::default()
            };
            phases.push(
                end_to_end(&args, &secret, load, n, setup, &mut keep)
                    .await?
                    .0,
            );
        }
        Scenario::Isolation => {
            let n = args.events.unwrap_or(args.rate * args.seconds);
            let load = Load::Open {
                rate: args.rate.max(1),
            };
            let hang = Setup {
                hanging: 1,
                ..Setup::default()
            };
            let bystander = Setup {
                bystanders: 1,
                ..Setup::default()
            };
            let mut setups = vec![Setup::default(), hang];
            if args.control {
                setups.push(bystander);
            }
            // Pooled latencies and each phase's own p99, per setup.
            let mut pooled: Vec<Vec<u64>> = vec![Vec::new(); setups.len()];
            let mut p99s: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
            // Latencies by the second of the phase in which they were sent, pooled over the
            // rounds: shows whether a difference sits at a phase's start (a hanging
            // endpoint's first attempts, its breaker opening) or lasts.
            let mut by_second: Vec<Vec<Vec<u64>>> = vec![Vec::new(); setups.len()];
            // The order of the phases changes from round to round (see `phase_order`), so that
            // none always runs first, right after the raw reference, or right after the same
            // other phase: a host's drift over the minutes of a run, or what one phase
            // leaves behind for the next, then weighs on all alike.
            for round in 0..args.rounds.unwrap_or(3).max(1) {
                for which in phase_order(round, setups.len()) {
                    let (p, samples) =
                        end_to_end(&args, &secret, load, n, setups[which], &mut keep).await?;
                    for &(sent, us) in &samples.deliveries {
                        let second = (sent / 1_000_000) as usize;
                        let bins = &mut by_second[which];
                        if bins.len() <= second {
                            bins.resize_with(second + 1, Vec::new);
                        }
                        bins[second].push(us);
                        pooled[which].push(us);
                    }
                    p99s[which].push(p.latency_ms.p99);
                    phases.push(p);
                }
            }
            let higher = |a: &[f64], b: &[f64]| a.iter().zip(b).filter(|(a, b)| b > a).count();
            let rounds = p99s[0].len();
            let beside_higher = higher(&p99s[0], &p99s[1]);
            let (m_alone, m_beside) = (median(p99s[0].clone()), median(p99s[1].clone()));
            let m_change = change_pct(m_alone, m_beside);
            let alone = Percentiles::of(std::mem::take(&mut pooled[0]));
            let beside = Percentiles::of(std::mem::take(&mut pooled[1]));
            let p_change = change_pct(alone.p99, beside.p99);
            println!(
                "isolation ({rounds} rounds, pooled): healthy p99 {:.2} ms alone, {:.2} ms beside a hanging endpoint ({p_change:+.1} %)",
                alone.p99, beside.p99
            );
            println!(
                "isolation (median of per-round p99): {m_alone:.2} ms alone, {m_beside:.2} ms beside ({m_change:+.1} %); \
                 beside had the higher p99 in {beside_higher} of {rounds} rounds"
            );
            let paired = paired_change(&p99s[0], &p99s[1]);
            println!("isolation (paired by round): {paired}");
            let p99_by_second: Vec<Vec<f64>> = by_second
                .into_iter()
                .map(|bins| bins.into_iter().map(|b| Percentiles::of(b).p99).collect())
                .collect();
            for (setup, seconds) in ["alone:  ", "beside: ", "control:"]
                .iter()
                .zip(&p99_by_second)
            {
                let shown: Vec<String> = seconds.iter().map(|p| format!("{p:.2}")).collect();
                println!(
                    "healthy p99 by second of the phase (ms), {setup} {}",
                    shown.join(" ")
                );
            }
            let control = if args.control {
                let healthy = Percentiles::of(std::mem::take(&mut pooled[2]));
                let m_healthy = median(p99s[2].clone());
                let c = Control {
                    p99_change_pct: change_pct(alone.p99, healthy.p99),
                    median_round_p99_beside_healthy_ms: m_healthy,
                    median_round_p99_change_pct: change_pct(m_alone, m_healthy),
                    rounds_healthy_higher: higher(&p99s[0], &p99s[2]),
                    rounds_hanging_above_healthy: higher(&p99s[2], &p99s[1]),
                    p99_by_second_ms: p99_by_second.get(2).cloned().unwrap_or_default(),
                    paired_round_p99_change: paired_change(&p99s[0], &p99s[2]),
                    beside_healthy_ms: healthy,
                };
                println!(
                    "control (one more healthy endpoint instead): pooled p99 {:.2} ms ({:+.1} % against alone); \
                     median of per-round p99 {m_healthy:.2} ms ({:+.1} %); higher than alone in {} of {rounds} rounds; \
                     beside the hanging endpoint was higher than this in {} of {rounds}",
                    c.beside_healthy_ms.p99,
                    c.p99_change_pct,
                    c.median_round_p99_change_pct,
                    c.rounds_healthy_higher,
                    c.rounds_hanging_above_healthy
                );
                println!("control (paired by round): {}", c.paired_round_p99_change);
                Some(c)
            } else {
                None
            };
            isolation = Some(Isolation {
                alone_ms: alone,
                beside_hanging_ms: beside,
                p99_change_pct: p_change,
                median_round_p99_alone_ms: m_alone,
                median_round_p99_beside_ms: m_beside,
                median_round_p99_change_pct: m_change,
                alone_p99_by_second_ms: p99_by_second[0].clone(),
                beside_p99_by_second_ms: p99_by_second[1].clone(),
                rounds_beside_higher: beside_higher,
                rounds,
                paired_round_p99_change: paired,
                control,
            });
        }
    }
    let (raw_after, _, idle) = raw_reference(&args, &secret).await?;
    raw_idle.extend(idle);
    println!(
        "raw reference again: {raw_after:.0} signed requests/s{}",
        idle_note(idle)
    );
    let raw = (raw_before + raw_after) / 2.0;
    references.push((phases.len(), raw_after));
    for (i, p) in phases.iter_mut().enumerate() {
        // The two measurements around this phase: the first comes before it, the next after.
        p.raw_per_sec = references
            .windows(2)
            .find(|w| w[0].0 <= i && i < w[1].0)
            .map_or(raw, |w| (w[0].1 + w[1].1) / 2.0);
        p.delivered_ratio_to_raw = p.delivered_per_sec / p.raw_per_sec.max(1e-9);
        p.drain_ratio_to_raw = p.drain_per_sec.map(|d| d / p.raw_per_sec.max(1e-9));
    }
    let throughput_rounds = over_rounds(
        phase_kinds
            .iter()
            .zip(&phases)
            .map(|(&kind, p)| (kind, p.name.as_str(), p.delivered_ratio_to_raw)),
    );
    for k in &throughput_rounds {
        let each: Vec<String> = k
            .ratios
            .iter()
            .map(|r| format!("{:.1}", r * 100.0))
            .collect();
        println!(
            "{} over {} round(s): median {:.1} % of raw ({} %)",
            k.phase,
            k.ratios.len(),
            k.median_ratio * 100.0,
            each.join(" / ")
        );
    }
    let report = Report {
        scenario: args.scenario,
        relay: args.relay,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        raw_per_sec: raw,
        raw_before_per_sec: raw_before,
        raw_mid_per_sec: raw_mid,
        raw_after_per_sec: raw_after,
        raw_references_per_sec: references.iter().map(|&(_, r)| r).collect(),
        raw_body_bytes,
        raw_idle_pct_max: raw_idle.into_iter().reduce(f64::max),
        phases,
        throughput_rounds,
        isolation,
    };
    print_table(&report);
    println!("{}", serde_json::to_string(&report)?);
    Ok(report)
}

fn print_table(r: &Report) {
    for p in &r.phases {
        if let (Some(d), Some(ratio)) = (p.drain_per_sec, p.drain_ratio_to_raw) {
            println!(
                "{}: backlog drained at {d:.0} deliveries/s ({:.1} % of raw) from the endpoint's return, \
                 {:.0}/s ({:.1} %) from its first delivery, {:.0} ms after the return",
                p.name,
                ratio * 100.0,
                p.drain_after_first_per_sec.unwrap_or(0.0),
                p.drain_after_first_per_sec.unwrap_or(0.0) / p.raw_per_sec.max(1e-9) * 100.0,
                p.back_to_first_ms.unwrap_or(0.0)
            );
        }
    }
    println!(
        "{:<22} {:>8} {:>10} {:>11} {:>7} {:>6} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>11}",
        "phase",
        "events",
        "accepted/s",
        "delivered/s",
        "of raw",
        "lost",
        "dup",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p999 ms",
        "max ms",
        "RSS MB",
        "CPU µs/ev",
        "disk KiB/ev"
    );
    for p in &r.phases {
        println!(
            "{:<22} {:>8} {:>10.0} {:>11.0} {:>6.1}% {:>6} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>10} {:>11}",
            p.name,
            p.events,
            p.accepted_per_sec,
            p.delivered_per_sec,
            p.delivered_ratio_to_raw * 100.0,
            p.lost,
            p.duplicates,
            p.latency_ms.p50,
            p.latency_ms.p90,
            p.latency_ms.p99,
            p.latency_ms.p999,
            p.latency_ms.max,
            p.server_peak_rss_mb
                .map_or("-".to_owned(), |m| format!("{m:.0}")),
            p.server_cpu_us_per_event
                .map_or("-".to_owned(), |c| format!("{c:.1}")),
            p.server_disk_kib_per_event
                .map_or("-".to_owned(), |d| format!("{d:.2}")),
        );
    }
    for p in &r.phases {
        if let Some(groups) = &p.server_cpu_by_thread_us_per_event {
            let parts: Vec<String> = ["runtime", "writer", "checkpointer", "other"]
                .iter()
                .filter_map(|g| groups.get(g).map(|us| format!("{g} {us:.1}")))
                .collect();
            println!(
                "{}: the server's CPU µs per event by thread: {}",
                p.name,
                parts.join(", ")
            );
        }
    }
    for p in &r.phases {
        if let Some(w) = &p.writer {
            let whose = match w.servers {
                1 => "the SQLite writer was".to_owned(),
                n => format!("the {n} servers' SQLite writers were, summed,"),
            };
            println!(
                "{}: {whose} busy {:.0} % of the phase, {:.0} % in COMMIT ({:.2} ms each), \
                 {:.1} write jobs a group commit",
                p.name, w.busy_pct, w.commit_pct, w.commit_mean_ms, w.jobs_per_group
            );
        }
    }
    for p in &r.phases {
        if let (Some(idle), Some(steal)) = (p.machine_idle_pct, p.machine_steal_pct) {
            println!(
                "{}: of the machine's CPU time over the phase, {idle:.1} % was idle (I/O \
                 wait included) and {steal:.1} % stolen by the host",
                p.name
            );
        }
    }
    for p in &r.phases {
        if let Some(lag) = &p.send_lag_ms {
            println!(
                "{}: the generator began requests after their intended time by p50 {:.2} ms, \
                 p99 {:.2} ms, max {:.2} ms (counted in the latency above)",
                p.name, lag.p50, lag.p99, lag.max
            );
        }
    }
}

/// A Standard Webhooks POST of `body` as message `id`, signed now with `secret`.
fn signed_post(
    url: http::Uri,
    secret: &Secret,
    id: &str,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let ts = chrono::Utc::now().timestamp();
    let signature = hookline_signing::sign([secret], id, ts, &body);
    Request::post(url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("Hookline/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", id)
        .header("webhook-timestamp", ts)
        .header("webhook-signature", signature)
        .body(Full::new(body))
}

/// Requests a second the raw reference's sink is sized for, above any rate it has reached on
/// these machines (113,000/s), so that its tally never grows while the clock runs.
const RAW_SIZING_PER_SEC: usize = 150_000;

/// `, the machine N % idle` for a line about the raw reference, when its share was read.
fn idle_note(idle: Option<f64>) -> String {
    idle.map_or(String::new(), |i| format!(", the machine {i:.1} % idle"))
}

/// The physical limit: signed POSTs straight to the sink. Returns requests/s, the mean body
/// size, and the share of the machine's CPU time that stood idle meanwhile (%, I/O wait
/// included).
async fn raw_reference(
    args: &BenchArgs,
    secret: &Secret,
) -> anyhow::Result<(f64, f64, Option<f64>)> {
    let epoch = Instant::now();
    let expected = RAW_SIZING_PER_SEC.saturating_mul(args.raw_seconds.max(1) as usize);
    let sink = Sink::start(Verifier::new(vec![secret.clone()]), epoch, expected).await?;
    let http = client(args.raw_concurrency);
    let url: http::Uri = sink.url("/ok/raw").parse()?;
    let deadline = Instant::now() + Duration::from_secs(args.raw_seconds.max(1));
    let counter = Arc::new(AtomicU64::new(0));
    // The bodies are built before the clock starts; each request only writes its id in.
    let bodies = Arc::new(ReferenceBodies::new(crate::model::Timestamp::now())?);
    let mut tasks = Vec::new();
    let machine_before = machine_ticks();
    let start = Instant::now();
    for _ in 0..args.raw_concurrency.max(1) {
        let (http, url, counter, secret, bodies) = (
            http.clone(),
            url.clone(),
            counter.clone(),
            secret.clone(),
            bodies.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let k = counter.fetch_add(1, Ordering::Relaxed);
                let (id, body) = bodies.message(k);
                let req = signed_post(url.clone(), &secret, &id, body.into())?;
                let resp = http.request(req).await?;
                resp.into_body().collect().await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let idle = machine_before
        .zip(machine_ticks())
        .and_then(|(before, after)| machine_shares(before, after))
        .map(|m| m.idle_pct);
    if sink.bad_signatures.load(Ordering::Relaxed) > 0 {
        bail!("the sink refused signatures of the raw reference");
    }
    let result = (
        sink.distinct() as f64 / elapsed,
        sink.mean_body_bytes(),
        idle,
    );
    sink.release();
    Ok(result)
}

#[derive(Clone, Copy, Debug)]
enum Load {
    Closed { batch: usize },
    Open { rate: u64 },
}

/// A `hookline serve` child process, SIGKILLed when dropped.
struct ServerProcess {
    child: Child,
}

/// The servers a phase started, and where their data lives.
struct Servers {
    procs: Vec<ServerProcess>,
    _dir: Option<tempfile::TempDir>,
    /// PostgreSQL: the server's URL and the phase's schema, dropped at the end.
    schema: Option<(String, String)>,
}

impl Servers {
    /// The largest peak RSS of the nodes.
    fn peak_rss_mb(&self) -> Option<f64> {
        self.procs
            .iter()
            .filter_map(ServerProcess::peak_rss_mb)
            .reduce(f64::max)
    }

    /// CPU time the nodes have used so far.
    fn cpu_time(&self) -> Option<Duration> {
        self.total(cpu_time)
    }

    /// CPU time each thread of the nodes has used so far (see [`thread_cpu`]).
    fn thread_cpu(&self) -> Option<NodeThreads> {
        let mut all = HashMap::new();
        for p in &self.procs {
            let pid = p.child.id();
            for ((tid, started), v) in thread_cpu(pid)? {
                all.insert((pid, tid, started), v);
            }
        }
        Some(all)
    }

    /// Bytes the nodes have sent to the storage layer so far.
    fn written_bytes(&self) -> Option<u64> {
        self.total(written_bytes)
    }

    /// `read` of every node, summed (`None` if any cannot be read).
    fn total<T: std::iter::Sum>(&self, read: fn(&str) -> Option<T>) -> Option<T> {
        self.procs
            .iter()
            .map(|p| read(&p.child.id().to_string()))
            .sum()
    }

    /// Stops the nodes and drops the phase's schema.
    async fn finish(mut self) {
        self.procs.clear();
        if let Some((url, schema)) = self.schema.take() {
            use sqlx::Connection as _;
            match sqlx::PgConnection::connect(&url).await {
                Ok(mut c) => {
                    let drop =
                        sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
                    if let Err(e) = sqlx::raw_sql(drop).execute(&mut c).await {
                        eprintln!("dropping the bench schema {schema}: {e}");
                    }
                }
                Err(e) => eprintln!("dropping the bench schema {schema}: {e}"),
            }
        }
    }
}

/// CPU time a process has used so far, user and system, all threads (from `/proc`).
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces:
    // utime and stime are the 14th and 15th fields of the line.
    ticks_after_name(&stat[stat.rfind(')')? + 1..])
}

/// Each thread of the nodes, by process id and thread (its id and start time, see
/// [`thread_cpu`]): its group and the CPU time it has used so far.
type NodeThreads = HashMap<(u32, u32, u64), ThreadCpu>;

/// A thread's group and the CPU time it has used so far.
type ThreadCpu = (&'static str, Duration);

/// CPU time each live thread of a process has used so far (user and system, from `/proc`),
/// by thread id and start time (so that a thread id reused during a phase is a new thread),
/// with the group its name puts it in (see [`Phase::server_cpu_by_thread_us_per_event`]).
fn thread_cpu(pid: u32) -> Option<HashMap<(u32, u64), ThreadCpu>> {
    let mut threads = HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(task) = task else { continue };
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // A thread that ended since the listing is simply left out.
        let Ok(stat) = std::fs::read(task.path().join("stat")) else {
            continue;
        };
        if let Some((started, group, cpu)) = task_stat(&String::from_utf8_lossy(&stat), tid == pid)
        {
            threads.insert((tid, started), (group, cpu));
        }
    }
    Some(threads)
}

/// A thread's start time, group and CPU time (utime plus stime) from its `stat` line. The
/// main thread drives the runtime (`block_on`: the accept loop), so it counts with it.
fn task_stat(stat: &str, main: bool) -> Option<(u64, &'static str, Duration)> {
    // The name is in parentheses and may itself hold spaces and parentheses: it ends at the
    // line's last `)`.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat.get(open + 1..close)?;
    let group = match name {
        crate::store::sqlite::WRITER_THREAD => "writer",
        crate::store::sqlite::CHECKPOINT_THREAD => "checkpointer",
        _ if main || name.starts_with("tokio") => "runtime",
        _ => "other",
    };
    let rest = stat.get(close + 1..)?;
    // starttime is the line's 22nd field, the 20th after the name.
    let started: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some((started, group, ticks_after_name(rest)?))
}

/// utime plus stime from the part of a `stat` line after the command name.
fn ticks_after_name(rest: &str) -> Option<Duration> {
    // utime and stime are the 14th and 15th fields of the line, the 12th and 13th after the
    // name.
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 1000 / USER_HZ))
}

/// The clock ticks a second of the counters in `/proc` (`USER_HZ`), which Linux fixes at 100
/// for user space.
const USER_HZ: u64 = 100;

/// The servers' CPU between two readings of [`Servers::thread_cpu`], by group, per accepted
/// event (µs). What the groups' live threads do not account for of the processes' whole CPU
/// (`total_us`, per event) goes to `other`.
fn cpu_by_thread(
    before: &NodeThreads,
    after: &NodeThreads,
    total_us: f64,
    accepted: u64,
) -> std::collections::BTreeMap<&'static str, f64> {
    let mut groups = std::collections::BTreeMap::new();
    for (key, (group, cpu)) in after {
        // A thread started during the phase used all its time in it.
        let from = before.get(key).map_or(Duration::ZERO, |(_, b)| *b);
        *groups.entry(*group).or_insert(0.0) +=
            cpu.saturating_sub(from).as_secs_f64() * 1e6 / accepted.max(1) as f64;
    }
    let counted: f64 = groups.values().sum();
    *groups.entry("other").or_insert(0.0) += (total_us - counted).max(0.0);
    groups
}

/// The machine's idle and stolen CPU time so far, every CPU together, in ticks of `USER_HZ`
/// (the `cpu` line of `/proc/stat`), and how many CPUs it has (its `cpuN` lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MachineTicks {
    idle: u64,
    steal: u64,
    cpus: u32,
}

/// A reading of [`MachineTicks`] and when it was taken.
#[derive(Clone, Copy, Debug)]
struct MachineReading {
    ticks: MachineTicks,
    at: Instant,
}

/// Shares of the machine's CPU time over a span, in %.
#[derive(Clone, Copy, Debug, PartialEq)]
struct MachineShares {
    idle_pct: f64,
    steal_pct: f64,
}

fn machine_ticks() -> Option<MachineReading> {
    // The kernel fixes the counters as the file is read: the time is taken just before.
    let at = Instant::now();
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    Some(MachineReading {
        ticks: parse_machine_ticks(&stat)?,
        at,
    })
}

/// Reads the `cpu` line of `/proc/stat` (user, nice, system, idle, iowait, irq, softirq and
/// steal ticks; guest time may follow) and counts the `cpuN` lines.
fn parse_machine_ticks(stat: &str) -> Option<MachineTicks> {
    let mut lines = stat.lines();
    let mut fields = lines.next()?.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let mut ticks = [0_u64; 8];
    for t in &mut ticks {
        *t = fields.next()?.parse().ok()?;
    }
    let [_user, _nice, _system, idle, iowait, _irq, _softirq, steal] = ticks;
    let cpus = lines
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    Some(MachineTicks {
        idle: idle + iowait,
        steal,
        cpus: u32::try_from(cpus).ok().filter(|&n| n > 0)?,
    })
}

/// The shares between two readings, over the wall-clock span times the online CPUs; `None`
/// for a span shorter than a tick of each CPU, counters that went back or a CPU count that
/// changed.
///
/// Not over the sum of the line's ticks. On a kernel that counts CPU time by the tick
/// (`TICK_CPU_ACCOUNTING` with `NO_HZ_IDLE`, as here), a CPU's idle and I/O-wait time is
/// clocked as it enters and leaves idle, but busy time is charged a whole tick (4 ms at
/// `HZ=250`) to whatever runs when the tick fires. A load that wakes in short bursts is then
/// seen busy only when a burst spans a tick, and a load paced in step with the tick, as an
/// open loop sending every millisecond, can be seen busy far too often or hardly at all:
/// one phase at 1,000 events/s read 54 % idle by the ticks' sum, another of the same load
/// 91 %, against 70–73 % and 55–72 % a second over the wall clock (BENCHMARKS.md,
/// twenty-third host). Steal comes from the hypervisor's clock, added at ticks and when a
/// CPU leaves idle, so it may lag by a tick, and time a CPU was idle may also count as
/// stolen: the idle share is capped at what steal leaves.
fn machine_shares(before: MachineReading, after: MachineReading) -> Option<MachineShares> {
    machine_shares_over(
        before.ticks,
        after.ticks,
        after.at.saturating_duration_since(before.at),
    )
}

/// [`machine_shares`] for two tick readings `span` apart.
fn machine_shares_over(
    before: MachineTicks,
    after: MachineTicks,
    span: Duration,
) -> Option<MachineShares> {
    if before.cpus != after.cpus {
        return None;
    }
    // In ticks of `USER_HZ`. A span shorter than a tick of each CPU would read mostly the
    // counters' rounding.
    let capacity = span.as_secs_f64() * USER_HZ as f64 * f64::from(after.cpus);
    if capacity < f64::from(after.cpus) {
        return None;
    }
    let share = |from: u64, to: u64| {
        let ticks = to.checked_sub(from)? as f64;
        // The counters step by whole ticks: a span can read a tick more than it lasted.
        Some((ticks * 100.0 / capacity).min(100.0))
    };
    let steal_pct = share(before.steal, after.steal)?;
    let idle_pct = share(before.idle, after.idle)?.min(100.0 - steal_pct);
    Some(MachineShares {
        idle_pct,
        steal_pct,
    })
}

/// Bytes a process has caused to be sent to the storage layer so far (`write_bytes` in
/// `/proc/PID/io`).
fn written_bytes(pid: &str) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let line = io.lines().find(|l| l.starts_with("write_bytes:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl ServerProcess {
    fn peak_rss_mb(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The attempt timeout of the servers an isolation run starts, unless `--timeout` says
/// otherwise: well inside a phase, so the hanging endpoint's whole failure path (timeouts,
/// failed attempts recorded, retries, its breaker opening and probing) runs beside the
/// healthy endpoints, not only requests held open.
const ISOLATION_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts `--nodes` servers on a fresh store; returns them, their base URLs and an API key.
async fn start_servers(args: &BenchArgs) -> anyhow::Result<(Servers, Vec<String>, String)> {
    let nodes = args.nodes.max(1);
    // Where the servers store: given to each by its flag or its variable (never by a
    // `--database-url` argument, which the process list would show with its password).
    let (mut servers, location) = match &args.database_url {
        None if nodes > 1 => bail!("several nodes (--nodes) need --database-url"),
        None => {
            let dir = tempfile::tempdir().context("making a data directory")?;
            let path = dir.path().to_path_buf();
            (
                Servers {
                    procs: Vec::new(),
                    _dir: Some(dir),
                    schema: None,
                },
                crate::store::Location::Sqlite(path),
            )
        }
        Some(url) => {
            use sqlx::Connection as _;
            let schema = format!(
                "hookline_bench_{}",
                crate::model::new_id("s").to_lowercase().replace("s_", "")
            );
            let mut c = sqlx::PgConnection::connect(url)
                .await
                .context("connecting to PostgreSQL")?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&mut c)
                .await
                .context("creating the bench schema")?;
            let sep = if url.contains('?') { '&' } else { '?' };
            let in_schema = format!("{url}{sep}options[search_path]={schema}");
            (
                Servers {
                    procs: Vec::new(),
                    _dir: None,
                    schema: Some((url.clone(), schema)),
                },
                crate::store::Location::Postgres(in_schema),
            )
        }
    };
    let key = {
        let store = Store::open(&location).await?;
        crate::accounts::create(&store, "bench", Plan::Business)
            .await?
            .1
    };
    let exe = std::env::current_exe().context("finding the hookline binary")?;
    let timeout = args.timeout.or(match args.scenario {
        Scenario::Isolation => Some(ISOLATION_TIMEOUT),
        _ => None,
    });
    let mut apis = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut serve = Command::new(&exe);
        serve.args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
        // The servers inherit the bench's environment: a `HOOKLINE_DATABASE_URL` there must
        // not take a SQLite run's servers to that database.
        match &location {
            crate::store::Location::Sqlite(dir) => {
                serve
                    .arg("--data-dir")
                    .arg(dir)
                    .env_remove("HOOKLINE_DATABASE_URL");
            }
            crate::store::Location::Postgres(url) => {
                serve.env("HOOKLINE_DATABASE_URL", url);
            }
        }
        if let Some(t) = timeout {
            serve.args(["--timeout", &format!("{}ms", t.as_millis().max(1))]);
        }
        let child = serve
            .args(["--allow-insecure-urls", "--allow-private-targets"])
            // The limiter runs, far above what the load can reach: it is measured, not in the way.
            .args(["--plan-business", "ingest=100000000"])
            .env(
                "HOOKLINE_LOG",
                std::env::var("HOOKLINE_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdout(Stdio::null())
            .spawn()
            .context("starting hookline serve")?;
        servers.procs.push(ServerProcess { child });
        apis.push(format!("http://127.0.0.1:{port}"));
    }
    let http = client(1);
    for api in &apis {
        let started = Instant::now();
        loop {
            let req = Request::get(format!("{api}/healthz")).body(Full::new(Bytes::new()))?;
            if let Ok(r) = http.request(req).await
                && r.status() == 200
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("hookline serve did not start within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok((servers, apis, key))
}

async fn post_json(
    http: &HttpClient,
    url: &str,
    key: &str,
    body: String,
) -> anyhow::Result<(u16, Bytes)> {
    let req = Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from(body)))?;
    let resp = http.request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// One phase and its samples, which are also written where `--samples` says.
async fn end_to_end(
    args: &BenchArgs,
    secret: &Secret,
    load: Load,
    events: u64,
    setup: Setup,
    keep: &mut Keep,
) -> anyhow::Result<(Phase, Samples)> {
    let (phase, samples) = end_to_end_raw(args, secret, load, events, setup).await?;
    keep.write(&phase, &samples)?;
    Ok((phase, samples))
}

/// A phase's samples, each stamped with its intended send time in µs since the phase began.
struct Samples {
    /// When the phase began, in µs since the Unix epoch.
    start_unix_us: u64,
    /// Every measured delivery: (sent, latency µs).
    deliveries: Vec<(u64, u64)>,
    /// Open loop: how late the generator began each request: (sent, lag µs).
    send_lags: Vec<(u64, u64)>,
}

/// Where `--samples` puts each phase's samples; numbers the phases in the order they ran.
struct Keep {
    dir: Option<std::path::PathBuf>,
    next: usize,
}

impl Keep {
    fn new(dir: Option<std::path::PathBuf>) -> anyhow::Result<Keep> {
        if let Some(d) = &dir {
            std::fs::create_dir_all(d)
                .with_context(|| format!("making the samples directory {}", d.display()))?;
        }
        Ok(Keep { dir, next: 0 })
    }

    fn write(&mut self, phase: &Phase, samples: &Samples) -> anyhow::Result<()> {
        use std::io::Write as _;
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        self.next += 1;
        let stem = format!("{:03}-{}", self.next, slug(&phase.name));
        let files = [
            (format!("{stem}.csv"), "latency_us", &samples.deliveries),
            (format!("{stem}-send-lag.csv"), "lag_us", &samples.send_lags),
        ];
        for (name, column, rows) in files {
            if rows.is_empty() {
                continue;
            }
            let path = dir.join(name);
            let write = || -> std::io::Result<()> {
                let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
                writeln!(out, "sent_unix_us,sent_us,{column}")?;
                for &(sent, value) in rows {
                    writeln!(out, "{},{sent},{value}", samples.start_unix_us + sent)?;
                }
                out.flush()
            };
            write().with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// A phase's name as a file name: `open 1000/s F=4 +1 hanging` → `open-1000-s-F-4-1-hanging`.
fn slug(name: &str) -> String {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// One phase, with every sample.
async fn end_to_end_raw(
    args: &BenchArgs,
    secret: &Secret,
    load: Load,
    events: u64,
    setup: Setup,
) -> anyhow::Result<(Phase, Samples)> {
    let epoch = Instant::now();
    let expected = (events as usize).saturating_mul(args.fanout.max(1));
    let sink = Sink::start(Verifier::new(vec![secret.clone()]), epoch, expected).await?;
    let relay = if args.relay {
        Some(relay::Relay::start()?)
    } else {
        None
    };
    let (server, apis, key) = match (&args.api, &args.key) {
        _ if relay.is_some() => (
            None,
            relay.iter().map(|r| r.url.clone()).collect(),
            "relay".to_owned(),
        ),
        (Some(api), Some(key)) => (
            None,
            api.split(',')
                .map(|a| a.trim().trim_end_matches('/').to_owned())
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>(),
            key.clone(),
        ),
        (Some(_), None) => bail!("--api needs --key"),
        _ => {
            let (s, apis, key) = start_servers(args).await?;
            (Some(s), apis, key)
        }
    };
    let Some(api) = apis.first().cloned() else {
        bail!("--api names no server");
    };
    let apis = Arc::new(apis);
    let http = client(args.concurrency.max(64));
    sink.down.store(setup.down_during_ingest, Ordering::Release);
    let kind = if setup.down_during_ingest {
        "down"
    } else {
        "ok"
    };
    let mut urls: Vec<String> = (0..args.fanout.max(1))
        .map(|i| sink.url(&format!("/{kind}/{i}")))
        .collect();
    // Hanging endpoints point at a holder apart from the sink: requests held in the sink
    // would share the runtime that stamps the healthy receipts and paces the load.
    let holder = if setup.hanging > 0 {
        Some(sink::Holder::start().context("starting the hanging endpoints' holder")?)
    } else {
        None
    };
    if let Some(h) = &holder {
        urls.extend((0..setup.hanging).map(|i| h.url(&format!("/hang/{i}"))));
    }
    // Additional healthy endpoints point at a sink of their own, apart from the one that
    // stamps the measured deliveries (and likewise not sharing its runtime).
    let apart = if setup.bystanders > 0 {
        Some(
            sink::Apart::start(
                Verifier::new(vec![secret.clone()]),
                (events as usize).saturating_mul(setup.bystanders),
            )
            .context("starting the additional endpoints' sink")?,
        )
    } else {
        None
    };
    if let Some(a) = &apart {
        urls.extend((0..setup.bystanders).map(|i| a.sink.url(&format!("/ok/{i}"))));
    }
    let mut created = Vec::new();
    for url in &urls {
        let body = json!({"url": url, "event_types": ["*"],
                          "secret": secret.to_string()});
        let (status, resp) = post_json(
            &http,
            &format!("{api}/v1/endpoints"),
            &key,
            body.to_string(),
        )
        .await?;
        if status != 201 {
            bail!(
                "creating an endpoint: {status} {}",
                String::from_utf8_lossy(&resp)
            );
        }
        let ep: serde_json::Value = serde_json::from_slice(&resp)?;
        if let Some(id) = ep["id"].as_str() {
            created.push(id.to_owned());
        }
    }

    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    // The servers' own account of their writer is read outside the span the CPU is read
    // over: rendering and parsing it is no part of the phase.
    let writer_before = match relay {
        Some(_) => None,
        None => writer::read(&http, &apis).await,
    };
    let cpu_before = (
        server.as_ref().and_then(Servers::cpu_time),
        cpu_time("self"),
    );
    let threads_before = server.as_ref().and_then(Servers::thread_cpu);
    let disk_before = server.as_ref().and_then(Servers::written_bytes);
    let machine_before = machine_ticks();
    let start = Instant::now();
    let start_unix_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let start_us = start.saturating_duration_since(epoch).as_micros() as u64;
    let mut send_lag = None;
    let mut send_lags = Vec::new();
    let (name, mode, batch) = match load {
        Load::Closed { batch } => {
            let next = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for sender in 0..args.concurrency.max(1) {
                let api = apis[sender % apis.len()].clone();
                let (http, key) = (http.clone(), key.clone());
                let (next, accepted, rejected) = (next.clone(), accepted.clone(), rejected.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let first = next.fetch_add(batch as u64, Ordering::Relaxed);
                        if first >= events {
                            return;
                        }
                        let n = (events - first).min(batch as u64);
                        let sent = epoch.elapsed().as_micros() as u64;
                        let (url, body) = request_body(&api, first, n, sent, batch > 1);
                        match post_json(&http, &url, &key, body).await {
                            Ok((202, _)) => accepted.fetch_add(n, Ordering::Relaxed),
                            _ => rejected.fetch_add(n, Ordering::Relaxed),
                        };
                    }
                }));
            }
            for t in tasks {
                t.await?;
            }
            let name = if batch > 1 {
                format!("closed batch={batch} F={}", args.fanout)
            } else {
                format!("closed single F={}", args.fanout)
            };
            (name, "closed", batch)
        }
        Load::Open { rate } => {
            // The pace is kept by a thread of its own that sleeps to each intended send time
            // (to within tens of µs), not by the runtime's timers: those fire on a 1 ms wheel
            // and behind whatever the sink is doing, which made every request up to a
            // millisecond or more late before it was even sent, and that lateness (counted,
            // rightly, from the intended time) is the generator's, not the server's.
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let runtime = tokio::runtime::Handle::current();
            let lags = Arc::new(Mutex::new(Vec::<(u64, u64)>::with_capacity(
                events as usize,
            )));
            let (apis, http, key) = (apis.clone(), http.clone(), key.clone());
            let (accepted, rejected, lag_tally) =
                (accepted.clone(), rejected.clone(), lags.clone());
            let pacer = tokio::task::spawn_blocking(move || {
                let mut tasks = Vec::with_capacity(events as usize);
                let t0 = Instant::now();
                for k in 0..events {
                    let intended = t0 + interval.mul_f64(k as f64);
                    if let Some(wait) = intended.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let sent = intended.duration_since(epoch).as_micros() as u64;
                    let api = apis[k as usize % apis.len()].clone();
                    let (http, key) = (http.clone(), key.clone());
                    let (accepted, rejected) = (accepted.clone(), rejected.clone());
                    let lags = lag_tally.clone();
                    tasks.push(runtime.spawn(async move {
                        let lag = (epoch.elapsed().as_micros() as u64).saturating_sub(sent);
                        if let Ok(mut l) = lags.lock() {
                            l.push((sent.saturating_sub(start_us), lag));
                        }
                        let (url, body) = request_body(&api, k, 1, sent, false);
                        match post_json(&http, &url, &key, body).await {
                            Ok((202, _)) => accepted.fetch_add(1, Ordering::Relaxed),
                            _ => rejected.fetch_add(1, Ordering::Relaxed),
                        };
                    }));
                }
                tasks
            });
            for t in pacer.await? {
                t.await?;
            }
            send_lags = lags
                .lock()
                .map(|mut l| std::mem::take(&mut *l))
                .map_err(|_| anyhow::anyhow!("send lags poisoned"))?;
            send_lag = Some(Percentiles::of(
                send_lags.iter().map(|&(_, lag)| lag).collect(),
            ));
            (format!("open {rate}/s F={}", args.fanout), "open", 1)
        }
    };
    let ingest_secs = start.elapsed().as_secs_f64();
    let accepted = accepted.load(Ordering::Relaxed);
    let rejected = rejected.load(Ordering::Relaxed);
    let expected = accepted * args.fanout.max(1) as u64;
    let name = match (setup.down_during_ingest, setup.hanging, setup.bystanders) {
        (true, _, _) => format!("backlog {events}"),
        (false, 0, 0) => name,
        (false, 0, b) => format!("{name} +{b} healthy"),
        (false, h, _) => format!("{name} +{h} hanging"),
    };
    let name = if relay.is_some() {
        format!("relay {name}")
    } else {
        name
    };
    let back = Instant::now();
    let before_back = sink.distinct();
    sink.down.store(false, Ordering::Release);

    // Wait for every delivery (the additional endpoints' too), or until nothing arrives for
    // 15 s.
    let apart_expected = accepted * setup.bystanders as u64;
    let apart_seen = || apart.as_ref().map_or(0, |a| a.sink.distinct());
    let seen = || sink.distinct() + apart_seen();
    let mut last = (seen(), Instant::now());
    // The machine's shares end at the last poll that saw a delivery arrive: a phase that
    // lost some would otherwise count the 15 s of waiting for them as idle.
    let mut machine_after = machine_ticks();
    let mut gave_up = false;
    while (sink.distinct() as u64) < expected || (apart_seen() as u64) < apart_expected {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = seen();
        if now != last.0 {
            last = (now, Instant::now());
            machine_after = machine_ticks();
        } else if last.1.elapsed() > Duration::from_secs(15) {
            gave_up = true;
            break;
        }
    }
    let cpu_per_event = |before: Option<Duration>, after: Option<Duration>| match (before, after) {
        (Some(b), Some(a)) if accepted > 0 => {
            Some(a.saturating_sub(b).as_secs_f64() * 1e6 / accepted as f64)
        }
        _ => None,
    };
    // The threads are read inside the span the processes' totals are read over (before: the
    // totals first; after: the threads first), so that their sum does not run past the total.
    let threads_after = server.as_ref().and_then(Servers::thread_cpu);
    let machine = machine_before
        .zip(machine_after)
        .and_then(|(before, after)| machine_shares(before, after));
    let server_cpu = cpu_per_event(cpu_before.0, server.as_ref().and_then(Servers::cpu_time));
    let bench_cpu = cpu_per_event(cpu_before.1, cpu_time("self"));
    let server_cpu_by_thread = match (&threads_before, threads_after, server_cpu) {
        (Some(before), Some(after), Some(total)) => {
            Some(cpu_by_thread(before, &after, total, accepted))
        }
        _ => None,
    };
    let server_disk = match (
        disk_before,
        server.as_ref().and_then(Servers::written_bytes),
    ) {
        (Some(b), Some(a)) if accepted > 0 => {
            Some(a.saturating_sub(b) as f64 / 1024.0 / accepted as f64)
        }
        _ => None,
    };
    // After the CPU and disk readings. Not when deliveries were lost: the 15 s of waiting
    // for them would dilute the shares.
    let writer = match writer_before {
        Some(before) if !gave_up => writer::read(&http, &apis)
            .await
            .and_then(|after| writer::shares(before, after)),
        _ => None,
    };
    let (phase, latencies) = {
        let tally = sink
            .tally
            .lock()
            .map_err(|_| anyhow::anyhow!("sink state poisoned"))?;
        let delivered = tally.seen.len() as u64;
        let duplicates: u64 = tally.seen.values().map(|n| u64::from(n - 1)).sum();
        let span = tally
            .last_receipt
            .map_or(ingest_secs, |t| t.duration_since(start).as_secs_f64());
        let delivered_per_sec = delivered as f64 / span.max(1e-9);
        let (drain_per_sec, back_to_first_ms, drain_after_first_per_sec) = if setup
            .down_during_ingest
        {
            let drained = delivered.saturating_sub(before_back as u64) as f64;
            let span = tally
                .last_receipt
                .map_or(0.0, |t| t.saturating_duration_since(back).as_secs_f64());
            let first = tally.first_receipt_after(back);
            let after_first = match (first, tally.last_receipt) {
                (Some(f), Some(l)) => {
                    Some(drained / l.saturating_duration_since(f).as_secs_f64().max(1e-9))
                }
                _ => None,
            };
            let first_ms = first.map(|t| t.saturating_duration_since(back).as_secs_f64() * 1000.0);
            (Some(drained / span.max(1e-9)), first_ms, after_first)
        } else {
            (None, None, None)
        };
        // Each sample with its intended send time counted from the phase's start.
        let latencies = tally
            .sent_us
            .iter()
            .zip(&tally.latencies_us)
            .map(|(&sent, &lat)| (sent.saturating_sub(start_us), lat))
            .collect();

        let phase = Phase {
            name,
            mode,
            events,
            fanout: args.fanout,
            batch,
            accepted,
            rejected,
            accepted_per_sec: accepted as f64 / ingest_secs.max(1e-9),
            delivered,
            delivered_per_sec,
            // The reference and the ratios to it are set by `run`, once the measurements that
            // bracket this phase are known.
            delivered_ratio_to_raw: 0.0,
            raw_per_sec: 0.0,
            lost: expected.saturating_sub(delivered),
            duplicates,
            bad_signatures: sink.bad_signatures.load(Ordering::Relaxed)
                + apart
                    .as_ref()
                    .map_or(0, |a| a.sink.bad_signatures.load(Ordering::Relaxed)),
            additional_delivered: apart.as_ref().map(|a| a.sink.distinct() as u64),
            delivered_body_bytes: sink.mean_body_bytes(),
            latency_ms: Percentiles::of(tally.latencies_us.clone()),
            send_lag_ms: send_lag,
            server_peak_rss_mb: server.as_ref().and_then(Servers::peak_rss_mb),
            server_cpu_us_per_event: server_cpu,
            server_cpu_by_thread_us_per_event: server_cpu_by_thread,
            bench_cpu_us_per_event: bench_cpu,
            server_disk_kib_per_event: server_disk,
            machine_idle_pct: machine.map(|m| m.idle_pct),
            machine_steal_pct: machine.map(|m| m.steal_pct),
            writer,
            drain_per_sec,
            drain_ratio_to_raw: None,
            back_to_first_ms,
            drain_after_first_per_sec,
        };
        (phase, latencies)
    };
    sink.release();
    // A server this run does not own (`--api`) keeps running: remove this phase's endpoints
    // so that the next phase's events do not also go to this phase's sink.
    match server {
        Some(servers) => servers.finish().await,
        None if relay.is_some() => drop(relay),
        None => {
            for id in &created {
                let req = Request::delete(format!("{api}/v1/endpoints/{id}"))
                    .header("authorization", format!("Bearer {key}"))
                    .body(Full::new(Bytes::new()))?;
                http.request(req).await?;
            }
        }
    }
    // Only now, with the server stopped or the endpoints gone, are the held requests let go.
    drop(holder);
    drop(apart);
    let samples = Samples {
        start_unix_us,
        deliveries: latencies,
        send_lags,
    };
    Ok((phase, samples))
}

/// Event `k` as the load sends it: its type and its `data`. Realistic events of three
/// built-in types, valid against their schemas (ingest checks every one), about 300 bytes of
/// `data` each, stamped with when the request is (or should have been) sent.
fn sample_event(k: u64, sent_us: u64) -> (&'static str, String) {
    let message = format!(
        r#"{{"message_id":"m-{k}","recipient":"r{k}@example.com","campaign_id":"cmp_autumn","list_id":"lst_news"}}"#
    );
    let (event_type, rest) = match k % 3 {
        0 => (
            "click",
            format!(
                r#""url":"https://shop.example/p/{k}","first_click":true,"user_agent":"Mozilla/5.0","ip":"192.0.2.1""#
            ),
        ),
        1 => (
            "open",
            r#""first_open":true,"user_agent":"Mozilla/5.0","ip":"192.0.2.1","machine_open":false"#
                .to_owned(),
        ),
        _ => (
            "delivery",
            r#""smtp":{"code":250,"enhanced_status":"2.0.0","response":"250 2.0.0 OK"}"#.to_owned(),
        ),
    };
    (
        event_type,
        format!(r#"{{"sent_us":{sent_us},"seq":{k},"message":{message},{rest}}}"#),
    )
}

/// What the raw reference sends: the webhook Hookline delivers for an event of the load
/// (the same envelope around the same `data`, an id as long as an event id), so that the
/// reference and Hookline's deliveries cost the signature and the sink the same bytes. Built
/// once, before the clock starts: a request only writes its id between a head and a tail.
struct ReferenceBodies {
    /// One per event type of the load: the envelope before and after the id.
    templates: Vec<(Vec<u8>, Vec<u8>)>,
}

impl ReferenceBodies {
    fn new(timestamp: crate::model::Timestamp) -> anyhow::Result<Self> {
        let placeholder = reference_id(0);
        let templates = (0..3)
            .map(|t| {
                // Numbers as long as the load's (six-digit sequence numbers, a sent time
                // of a few minutes in microseconds); 100,002 is a multiple of 3, so message
                // k has the type the load gives event k.
                let (event_type, data) = sample_event(100_002 + t, 100_000_000);
                let env = crate::model::envelope(&placeholder, event_type, timestamp, &data);
                let at = env
                    .windows(placeholder.len())
                    .position(|w| w == placeholder.as_bytes())
                    .context("the envelope does not carry its id")?;
                let (head, rest) = env.split_at(at);
                Ok((head.to_vec(), rest[placeholder.len()..].to_vec()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(ReferenceBodies { templates })
    }

    /// Message `k`: its id and its body.
    fn message(&self, k: u64) -> (String, Vec<u8>) {
        let id = reference_id(k);
        let (head, tail) = &self.templates[(k % 3) as usize];
        let mut body = Vec::with_capacity(head.len() + id.len() + tail.len());
        body.extend_from_slice(head);
        body.extend_from_slice(id.as_bytes());
        body.extend_from_slice(tail);
        (id, body)
    }
}

/// `evt_` and 26 characters, as long as an event id.
fn reference_id(k: u64) -> String {
    format!("evt_{k:026}")
}

/// The URL and body for events `first..first+n`.
fn request_body(api: &str, first: u64, n: u64, sent_us: u64, batch: bool) -> (String, String) {
    let one = |k: u64| {
        let (event_type, data) = sample_event(k, sent_us);
        format!(r#"{{"type":"{event_type}","data":{data}}}"#)
    };
    if batch {
        let items: Vec<String> = (first..first + n).map(one).collect();
        (
            format!("{api}/v1/events/batch"),
            format!(r#"{{"events":[{}]}}"#, items.join(",")),
        )
    } else {
        (format!("{api}/v1/events"), one(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Timestamp, envelope, new_id};

    #[test]
    fn the_split_by_thread_counts_new_threads_whole_and_ended_ones_as_other() {
        let ms = Duration::from_millis;
        let key = |tid: u32| (7_u32, tid, 0_u64);
        let before = HashMap::from([
            (key(1), ("runtime", ms(100))),
            (key(2), ("writer", ms(50))),
            (key(3), ("runtime", ms(20))), // ends during the phase
        ]);
        let after = HashMap::from([
            (key(1), ("runtime", ms(300))),
            (key(2), ("writer", ms(150))),
            (key(4), ("runtime", ms(40))), // starts during the phase
        ]);
        // 1,000 events; the processes' whole CPU grew by 400 ms: 400 µs an event, of which
        // the live threads account for 200 + 100 + 40 ms.
        let groups = cpu_by_thread(&before, &after, 400.0, 1_000);
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(groups["runtime"], 240.0), "{groups:?}");
        assert!(near(groups["writer"], 100.0), "{groups:?}");
        assert!(near(groups["other"], 60.0), "{groups:?}");
        assert_eq!(groups.len(), 3, "{groups:?}");
        // Ticks read a moment apart never make `other` negative.
        let groups = cpu_by_thread(&before, &after, 330.0, 1_000);
        assert!(near(groups["other"], 0.0), "{groups:?}");
    }

    #[test]
    fn the_machines_shares_are_its_idle_and_stolen_ticks_over_the_wall_clock() {
        // user nice system idle iowait irq softirq steal guest guest_nice, then per-CPU lines.
        let stat = |cpu: &str| {
            format!(
                "{cpu}\ncpu0 500 5 250 1500 20 0 100 25 35 0\ncpu1 500 5 250 1500 20 0 100 25 35 0\n\
                 intr 12345 0 0\nctxt 999\n"
            )
        };
        let before = parse_machine_ticks(&stat("cpu  1000 10 500 3000 40 0 200 50 70 0"));
        assert_eq!(
            before,
            Some(MachineTicks {
                idle: 3040,
                steal: 50,
                cpus: 2
            })
        );
        // Two CPUs over 1 s hold 200 ticks: 30 idle, 20 waiting for I/O, 10 stolen. The busy
        // ticks (here 20 in all, as a tick that missed short bursts would read) count for
        // nothing: the wall clock gives the span.
        let after = parse_machine_ticks(&stat("cpu  1010 10 505 3030 60 0 205 60 90 0"));
        let (b, a) = (before.expect("parsed above"), after.expect("parsed above"));
        let second = Duration::from_secs(1);
        assert_eq!(
            machine_shares_over(b, a, second),
            Some(MachineShares {
                idle_pct: 25.0,
                steal_pct: 5.0
            })
        );
        // A reading a tick past the span is capped at the whole machine.
        let all_idle = MachineTicks {
            idle: b.idle + 201,
            ..b
        };
        assert_eq!(
            machine_shares_over(b, all_idle, second).map(|m| m.idle_pct),
            Some(100.0)
        );
        // Idle and stolen together never pass the whole machine: a CPU's idle time may
        // also count as stolen, and the counters step by whole ticks.
        let both = MachineTicks {
            idle: b.idle + 150,
            steal: b.steal + 60,
            ..b
        };
        assert_eq!(
            machine_shares_over(b, both, second),
            Some(MachineShares {
                idle_pct: 70.0,
                steal_pct: 30.0
            })
        );
        // An empty span or one shorter than a tick of each CPU (10 ms), counters that went
        // back, or CPUs that came or went give nothing.
        assert_eq!(machine_shares_over(b, a, Duration::ZERO), None);
        assert_eq!(machine_shares_over(b, a, Duration::from_millis(9)), None);
        assert!(machine_shares_over(b, a, Duration::from_millis(10)).is_some());
        assert_eq!(machine_shares_over(a, b, second), None);
        assert_eq!(
            machine_shares_over(b, MachineTicks { cpus: 3, ..a }, second),
            None
        );
        // Not the `cpu` line, too few fields, or no `cpuN` line.
        assert_eq!(parse_machine_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(
            parse_machine_ticks("cpu  1 2 3 4 5 6 7\ncpu0 1 2 3 4 5 6 7 8\n"),
            None
        );
        assert_eq!(
            parse_machine_ticks("cpu  1 2 x 4 5 6 7 8\ncpu0 1 2 3 4 5 6 7 8\n"),
            None
        );
        assert_eq!(parse_machine_ticks("cpu  1 2 3 4 5 6 7 8\nintr 1\n"), None);
        // The readings of this machine parse, with at least one CPU.
        let here = machine_ticks().expect("/proc/stat is readable on Linux");
        assert!(here.ticks.cpus >= 1, "{here:?}");
    }

    #[test]
    fn a_threads_stat_line_gives_its_group_start_and_cpu() {
        // Fields 3 to 22 after the name, as Linux writes them; utime 250 and stime 50 ticks,
        // start time 777.
        let tail = "S 1 1 1 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 777 0 0";
        let line = |name: &str| format!("4242 ({name}) {tail}");
        let cpu = Duration::from_millis(3_000);
        assert_eq!(
            task_stat(&line(crate::store::sqlite::WRITER_THREAD), false),
            Some((777, "writer", cpu))
        );
        assert_eq!(
            task_stat(&line(crate::store::sqlite::CHECKPOINT_THREAD), false),
            Some((777, "checkpointer", cpu))
        );
        assert_eq!(
            task_stat(&line("tokio-rt-worker"), false),
            Some((777, "runtime", cpu))
        );
        assert_eq!(
            task_stat(&line("hookline"), true),
            Some((777, "runtime", cpu))
        );
        assert_eq!(
            task_stat(&line("hookline"), false),
            Some((777, "other", cpu))
        );
        // A name with spaces and parentheses of its own ends at the line's last `)`.
        assert_eq!(
            task_stat(&line("a) (b c"), false),
            Some((777, "other", cpu))
        );
        assert_eq!(task_stat("4242 (cut short) S 1 2", false), None);
        assert_eq!(task_stat("no name at all", false), None);
    }

    #[test]
    fn a_live_thread_is_found_under_its_own_id() {
        let handle = std::thread::Builder::new()
            .name(crate::store::sqlite::CHECKPOINT_THREAD.into())
            .spawn(|| {
                let me = std::fs::read_link("/proc/thread-self").unwrap();
                let tid: u32 = me.file_name().unwrap().to_string_lossy().parse().unwrap();
                // Busy until this thread has a tick of CPU time to show (however slowly a
                // loaded machine gives it one).
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut x = 0_u64;
                loop {
                    let spun = Instant::now();
                    while spun.elapsed() < Duration::from_millis(20) {
                        x = x.wrapping_mul(31).wrapping_add(1);
                    }
                    let threads = thread_cpu(std::process::id()).unwrap();
                    let mine: Vec<_> = threads
                        .iter()
                        .filter(|((id, _), _)| *id == tid)
                        .map(|(_, v)| *v)
                        .collect();
                    let busy = mine.iter().any(|(_, cpu)| *cpu > Duration::ZERO);
                    if busy || Instant::now() > deadline {
                        return (x, mine);
                    }
                }
            })
            .unwrap();
        let (_, mine) = handle.join().unwrap();
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert_eq!(mine[0].0, "checkpointer");
        assert!(mine[0].1 > Duration::ZERO, "{mine:?}");
    }

    #[test]
    fn each_kind_of_throughput_phase_gets_its_ratios_in_order_and_their_median() {
        let same = "closed single F=1";
        let kinds = over_rounds([
            (0, same, 0.25),
            (1, same, 0.50),
            (1, same, 0.70),
            (0, same, 0.21),
            (0, same, 0.30),
            (1, same, 0.52),
        ]);
        assert_eq!(kinds.len(), 2);
        assert_eq!(kinds[0].ratios, [0.25, 0.21, 0.30]);
        assert_eq!(kinds[0].median_ratio, 0.25);
        assert_eq!(kinds[1].ratios, [0.50, 0.70, 0.52]);
        assert_eq!(kinds[1].median_ratio, 0.52);
        assert!(over_rounds([]).is_empty());
    }

    #[test]
    fn paired_change_is_the_median_round_change_inside_its_interval() {
        let alone = [2.0, 1.8, 2.4, 2.1, 1.9];
        let none = paired_change(&alone, &alone);
        assert_eq!(
            (none.median_pct, none.low_pct, none.high_pct),
            (0.0, 0.0, 0.0)
        );

        let slower: Vec<f64> = alone.iter().map(|a| a * 1.2).collect();
        let up = paired_change(&alone, &slower);
        for v in [up.median_pct, up.low_pct, up.high_pct] {
            assert!((v - 20.0).abs() < 1e-9, "{up:?}");
        }

        // Round changes of -10, 0, +10, +20 and +30 %.
        let mixed = [0.9, 1.0, 1.1, 1.2, 1.3];
        let m = paired_change(&[1.0; 5], &mixed);
        assert!((m.median_pct - 10.0).abs() < 1e-9, "{m:?}");
        assert!(
            m.low_pct < m.median_pct && m.median_pct < m.high_pct,
            "{m:?}"
        );
        assert!(
            m.low_pct >= -10.0 - 1e-9 && m.high_pct <= 30.0 + 1e-9,
            "{m:?}"
        );
        // The same rounds, the same interval.
        assert_eq!(paired_change(&[1.0; 5], &mixed), m);
        assert_eq!(
            paired_change(&[], &[]),
            PairedChange {
                median_pct: 0.0,
                low_pct: 0.0,
                high_pct: 0.0
            }
        );
    }

    #[test]
    fn the_reference_sends_the_envelope_of_an_event_of_the_load() {
        let at = Timestamp::now();
        let bodies = ReferenceBodies::new(at).unwrap();
        for k in [0, 1, 2, 99_999] {
            let (id, body) = bodies.message(k);
            // A distinct id per message (the sink counts distinct ids), as long as an event id.
            assert_eq!(id, format!("evt_{k:026}"));
            assert_eq!(id.len(), new_id("evt").len());
            // Byte for byte the envelope Hookline builds for an event of the load's type.
            let (event_type, data) = sample_event(100_002 + k % 3, 100_000_000);
            assert_eq!(body, envelope(&id, event_type, at, &data));
            let (_, request) = request_body("http://x", k, 1, 7, false);
            let sent: serde_json::Value = serde_json::from_str(&request).unwrap();
            assert_eq!(sent["type"], event_type);
        }
    }

    /// Two isolation phases alternate which goes first; three are balanced over every six
    /// rounds: each in each place twice, and within a round right after each other twice.
    #[test]
    fn isolation_phases_take_turns_in_every_place_and_after_every_other() {
        assert_eq!(phase_order(0, 2), [0, 1]);
        assert_eq!(phase_order(1, 2), [1, 0]);
        assert_eq!(phase_order(2, 2), [0, 1]);
        let mut places = [[0; 3]; 3];
        let mut after = [[0; 3]; 3];
        for round in 0..6 {
            let order = phase_order(round, 3);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2], "round {round}: {order:?}");
            for (place, &phase) in order.iter().enumerate() {
                places[phase][place] += 1;
            }
            for pair in order.windows(2) {
                after[pair[1]][pair[0]] += 1;
            }
        }
        assert_eq!(places, [[2; 3]; 3], "each phase twice in each place");
        assert_eq!(
            after,
            [[0, 2, 2], [2, 0, 2], [2, 2, 0]],
            "each phase right after each other twice"
        );
        assert_eq!(phase_order(6, 3), phase_order(0, 3));
    }
}
