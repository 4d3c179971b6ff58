//! `hookline bench` runs a tiny scenario correctly: nothing lost, every signature verified.
//! (Benchmarks measure speed; this test only checks that the tool tells the truth.)

mod common;

use common::process::hookline;
use serde_json::Value;

#[test]
fn tiny_throughput_scenario_loses_nothing_and_verifies_every_signature() {
    tiny_scenario(&[], 2);
}

/// The relay that stores nothing (the ceiling Hookline is compared with) is measured by the
/// same load and the same sink.
#[test]
fn tiny_relay_scenario_loses_nothing_and_verifies_every_signature() {
    tiny_scenario(&["--relay"], 2);
}

/// `--rounds` runs the phases again, single events and batches taking turns to go first, the
/// reference measured between every two phases; each kind's ratios and their median are
/// reported.
#[test]
fn throughput_rounds_take_turns_and_give_each_kinds_median() {
    let report = tiny_scenario(&["--rounds", "2"], 4);
    let names: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let (single, batch) = ("closed single F=2", "closed batch=50 F=2");
    assert_eq!(names, [single, batch, batch, single], "{report}");
    let kinds = report["throughput_rounds"].as_array().unwrap();
    assert_eq!(kinds.len(), 2, "{report}");
    for (kind, name) in kinds.iter().zip([single, batch]) {
        assert_eq!(kind["phase"], name, "{report}");
        let ratios: Vec<f64> = report["phases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == name)
            .map(|p| p["delivered_ratio_to_raw"].as_f64().unwrap())
            .collect();
        let reported: Vec<f64> = kind["ratios"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_f64().unwrap())
            .collect();
        assert_eq!(reported, ratios, "{report}");
        let median = kind["median_ratio"].as_f64().unwrap();
        assert!(
            (median - (ratios[0] + ratios[1]) / 2.0).abs() < 1e-9,
            "{report}"
        );
    }
}

/// `--phases` runs one closed-loop phase alone.
#[test]
fn one_closed_loop_phase_runs_alone() {
    tiny_scenario(&["--phases", "batch"], 1);
}

/// The open loop sends every event at its pace and says how late the generator itself was;
/// `--samples` keeps every delivery's latency and the generator's lateness, per request.
#[test]
fn tiny_open_loop_sends_every_event_and_reports_its_own_lag() {
    let samples = tempfile::tempdir().unwrap();
    let dir = samples.path().join("kept");
    let report = run_bench(&[
        "--samples",
        dir.to_str().unwrap(),
        "latency",
        "--rate",
        "200",
        "--seconds",
        "1",
        "--raw-seconds",
        "1",
        "--raw-concurrency",
        "4",
    ]);
    let phase = &report["phases"][0];
    assert_eq!(phase["mode"], "open", "{report}");
    assert_eq!(phase["accepted"], 200, "{phase}");
    assert_eq!(phase["delivered"], 200, "{phase}");
    assert_eq!(phase["lost"], 0, "{phase}");
    assert_eq!(phase["bad_signatures"], 0, "{phase}");
    let lag = &phase["send_lag_ms"];
    assert!(
        lag["max"].as_f64().unwrap() >= lag["p50"].as_f64().unwrap(),
        "{phase}"
    );
    // Each event's latency holds its lag (both count from its intended send time).
    assert!(
        phase["latency_ms"]["max"].as_f64().unwrap() >= lag["max"].as_f64().unwrap(),
        "{phase}"
    );
    // The samples: one row per delivery and one per request, their largest values the
    // report's maxima, their intended send times the open loop's pace (one every 5 ms).
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["001-open-200-s-F-1-send-lag.csv", "001-open-200-s-F-1.csv"]
    );
    for (file, column, max) in [
        (
            "001-open-200-s-F-1.csv",
            "latency_us",
            &phase["latency_ms"]["max"],
        ),
        ("001-open-200-s-F-1-send-lag.csv", "lag_us", &lag["max"]),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(format!("sent_unix_us,sent_us,{column}").as_str())
        );
        let rows: Vec<Vec<u64>> = lines
            .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
            .collect();
        assert_eq!(rows.len(), 200, "{file}");
        let mut highest = 0;
        for r in &rows {
            assert!(r[0] > 1_700_000_000_000_000, "{file}: a Unix time in µs");
            // Every row of one phase has the same start.
            assert_eq!(r[0] - r[1], rows[0][0] - rows[0][1], "{file}");
            highest = highest.max(r[2]);
        }
        assert_eq!(highest as f64 / 1000.0, max.as_f64().unwrap(), "{file}");
        let mut sent: Vec<u64> = rows.iter().map(|r| r[1]).collect();
        sent.sort_unstable();
        for pair in sent.windows(2) {
            let step = pair[1] - pair[0];
            assert!(
                (4_998..=5_002).contains(&step),
                "{file}: sends {step} µs apart"
            );
        }
    }
}

/// Isolation rotates which phase of a round goes first, loses nothing beside the hanging
/// endpoint (whose requests run into their timeout within the phase) or beside the control's
/// healthy one, and compares the healthy endpoints' p99 alone, beside the hanging endpoint
/// and beside one more healthy endpoint.
#[test]
fn tiny_isolation_scenario_rotates_its_phases_and_loses_nothing() {
    let report = run_bench(&[
        "isolation",
        "--fanout",
        "2",
        "--rate",
        "50",
        "--seconds",
        "2",
        "--rounds",
        "2",
        "--raw-seconds",
        "1",
        "--raw-concurrency",
        "4",
        // Inside the phase: the hanging endpoint's requests time out, fail and open its
        // breaker while the healthy endpoints' deliveries are counted.
        "--timeout",
        "300ms",
        "--control",
    ]);
    let phases = report["phases"].as_array().unwrap();
    let beside: Vec<&str> = phases
        .iter()
        .map(|p| {
            let name = p["name"].as_str().unwrap();
            ["hanging", "healthy"]
                .into_iter()
                .find(|b| name.contains(b))
                .unwrap_or("alone")
        })
        .collect();
    assert_eq!(
        beside,
        ["alone", "hanging", "healthy", "hanging", "healthy", "alone"],
        "{report}"
    );
    for (p, beside) in phases.iter().zip(&beside) {
        assert_eq!(p["accepted"], 100, "{p}");
        // Only the measured healthy endpoints' deliveries are counted.
        assert_eq!(p["delivered"], 200, "{p}");
        assert_eq!(p["lost"], 0, "{p}");
        assert_eq!(p["bad_signatures"], 0, "{p}");
        // The control's additional endpoint got every event, at a sink of its own.
        let additional = (*beside == "healthy").then_some(100);
        assert_eq!(p["additional_delivered"].as_u64(), additional, "{p}");
    }
    let iso = &report["isolation"];
    for field in ["alone_ms", "beside_hanging_ms"] {
        assert!(iso[field]["p99"].as_f64().unwrap() > 0.0, "{iso}");
    }
    assert!(iso["p99_change_pct"].as_f64().unwrap().is_finite(), "{iso}");
    assert_eq!(iso["rounds"], 2, "{iso}");
    // The healthy latency by the second of the phase in which each event was sent: one p99
    // for each of the two seconds, and the pooled p99 is never above the highest of them.
    for (by_second, pooled) in [
        (&iso["alone_p99_by_second_ms"], &iso["alone_ms"]["p99"]),
        (
            &iso["beside_p99_by_second_ms"],
            &iso["beside_hanging_ms"]["p99"],
        ),
        (
            &iso["control"]["p99_by_second_ms"],
            &iso["control"]["beside_healthy_ms"]["p99"],
        ),
    ] {
        let seconds: Vec<f64> = by_second
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(seconds.len(), 2, "{iso}");
        assert!(seconds.iter().all(|&p| p > 0.0), "{iso}");
        let highest = seconds.iter().copied().fold(0.0, f64::max);
        assert!(pooled.as_f64().unwrap() <= highest, "{iso}");
    }
    assert!(iso["rounds_beside_higher"].as_u64().unwrap() <= 2, "{iso}");
    // Round by round: the median change lies within its interval, for both comparisons.
    for paired in [
        &iso["paired_round_p99_change"],
        &iso["control"]["paired_round_p99_change"],
    ] {
        let at = |k: &str| paired[k].as_f64().unwrap();
        assert!(
            at("low_pct") <= at("median_pct") && at("median_pct") <= at("high_pct"),
            "{iso}"
        );
    }
    let control = &iso["control"];
    assert!(
        control["beside_healthy_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{iso}"
    );
    assert!(
        control["p99_change_pct"].as_f64().unwrap().is_finite(),
        "{iso}"
    );
    assert!(
        control["rounds_hanging_above_healthy"].as_u64().unwrap() <= 2,
        "{iso}"
    );
}

/// Every flag of the bench has its variable: a tiny scenario set by them alone runs as
/// they say, the servers' own variables do not move the bench's servers off their store,
/// and a switch that is neither on nor off is refused by name.
#[test]
fn the_bench_takes_its_flags_from_the_environment() {
    let stdout = bench_output(
        &["throughput"],
        &[
            ("HOOKLINE_BENCH_EVENTS", "200"),
            ("HOOKLINE_BENCH_FANOUT", "2"),
            ("HOOKLINE_BENCH_PHASES", "single"),
            ("HOOKLINE_BENCH_CONCURRENCY", "4"),
            ("HOOKLINE_BENCH_RAW_SECONDS", "1"),
            ("HOOKLINE_BENCH_RAW_CONCURRENCY", "3"),
        ],
    );
    assert!(stdout.contains("(3 connections, 1 s,"), "{stdout}");
    let report = report_of(&stdout);
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 1, "{report}");
    let p = &phases[0];
    assert_eq!(p["name"], "closed single F=2", "{p}");
    assert_eq!(p["events"], 200, "{p}");
    assert_eq!(p["delivered"], 400, "{p}");
    assert_eq!(
        (p["lost"].as_u64(), p["bad_signatures"].as_u64()),
        (Some(0), Some(0)),
        "{p}"
    );

    // A `HOOKLINE_DATABASE_URL` of the shell does not take the servers of a SQLite run to
    // that database (they inherit the bench's environment): here one nothing answers.
    let stdout = bench_output(
        &[
            "throughput",
            "--events",
            "50",
            "--phases",
            "single",
            "--raw-seconds",
            "1",
        ],
        &[(
            "HOOKLINE_DATABASE_URL",
            "postgres://nobody@127.0.0.1:9/none",
        )],
    );
    assert_eq!(report_of(&stdout)["phases"][0]["lost"], 0, "{stdout}");

    let out = hookline()
        .args(["bench", "isolation"])
        .env("HOOKLINE_BENCH_CONTROL", "maybe")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'maybe'") && stderr.contains("--control"),
        "{stderr}"
    );
}

/// `--control` belongs to isolation, `--rounds` to isolation and throughput; elsewhere each
/// is refused, with a reason (before anything is measured).
#[test]
fn flags_outside_their_scenarios_are_refused() {
    for (scenario, flag) in [
        ("latency", ["--control"].as_slice()),
        ("backlog", ["--rounds", "2"].as_slice()),
        ("latency", ["--rounds", "2"].as_slice()),
    ] {
        let out = hookline()
            .args(["bench", scenario])
            .args(flag)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{scenario} {flag:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag[0]), "{stderr}");
    }
}

/// The same on PostgreSQL, with two nodes sharing the work.
#[test]
fn tiny_scenario_on_two_postgresql_nodes_loses_nothing() {
    let Some(url) = std::env::var("HOOKLINE_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr().lock(),
            "tiny_scenario_on_two_postgresql_nodes_loses_nothing: skipped on PostgreSQL: \
             HOOKLINE_TEST_DATABASE_URL is not set"
        );
        return;
    };
    tiny_scenario(&["--database-url", &url, "--nodes", "2"], 2);
}

fn tiny_scenario(extra: &[&str], phase_count: usize) -> Value {
    let mut args = vec![
        "throughput",
        "--events",
        "300",
        "--fanout",
        "2",
        "--batch",
        "50",
        "--concurrency",
        "4",
        "--raw-seconds",
        "1",
        "--raw-concurrency",
        "4",
    ];
    args.extend_from_slice(extra);
    let report = run_bench(&args);
    assert!(report["raw_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(report["relay"], extra.contains(&"--relay"), "{report}");
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), phase_count, "{report}");
    // The largest share of the machine the reference left idle over its measurements (each
    // of 1 s here: 100 ticks of each of the machine's CPUs).
    let idle = report["raw_idle_pct_max"]
        .as_f64()
        .unwrap_or_else(|| panic!("no idle share of the reference: {report}"));
    assert!((0.0..=100.0).contains(&idle), "{report}");
    // The reference posts what the deliveries carry: the same bodies, to within the digits
    // of numbers (ids, times) that differ between them.
    let raw_bytes = report["raw_body_bytes"].as_f64().unwrap();
    assert!(raw_bytes > 250.0, "{report}");
    assert_brackets(&report, phase_count);
    // The machine's shares over each phase: both or neither, within bounds, together at
    // most the whole machine. A phase shorter than a tick of each CPU (10 ms) has none, but
    // not every phase of a run.
    let mut machine_read = 0;
    for p in phases {
        let share = |field: &str| p.get(field).and_then(|v| v.as_f64());
        assert_eq!(
            share("machine_idle_pct").is_some(),
            share("machine_steal_pct").is_some(),
            "{p}"
        );
        if let Some(idle) = share("machine_idle_pct") {
            let steal = share("machine_steal_pct").unwrap_or_else(|| panic!("{p}"));
            assert!((0.0..=100.0).contains(&idle), "{p}");
            assert!((0.0..=100.0).contains(&steal), "{p}");
            assert!(idle + steal <= 100.0 + 1e-9, "{p}");
            machine_read += 1;
        }
    }
    assert!(machine_read > 0, "{report}");
    for p in phases {
        assert_eq!(p["accepted"], 300, "{p}");
        assert_eq!(p["delivered"], 600, "{p}");
        assert_eq!(p["lost"], 0, "{p}");
        assert_eq!(p["bad_signatures"], 0, "{p}");
        assert!(p["latency_ms"]["max"].as_f64().unwrap() > 0.0, "{p}");
        // What each side cost: the server's CPU only where the run started one (the relay
        // runs in the bench's own process). The bench's own, read in 10 ms ticks, may round
        // to nothing on a fast machine.
        assert!(p["bench_cpu_us_per_event"].as_f64().unwrap() >= 0.0, "{p}");
        match p["server_cpu_us_per_event"].as_f64() {
            Some(us) => {
                assert!(us > 0.0 && report["relay"] == false, "{p}");
                // Split by the server's threads, the groups account for all of it (what
                // the threads alive at the end do not, `other` holds), and for not much more:
                // each thread's time is read in 10 ms ticks, so each of a server's few dozen
                // threads may add a tick at most.
                let groups = p["server_cpu_by_thread_us_per_event"]
                    .as_object()
                    .unwrap_or_else(|| panic!("no split by thread: {p}"));
                assert!(groups.contains_key("runtime"), "{p}");
                assert!(groups.contains_key("other"), "{p}");
                let sqlite = !extra.contains(&"--database-url");
                assert_eq!(groups.contains_key("writer"), sqlite, "{p}");
                assert_eq!(groups.contains_key("checkpointer"), sqlite, "{p}");
                let split: f64 = groups.values().map(|v| v.as_f64().unwrap()).sum();
                assert!(groups.values().all(|v| v.as_f64().unwrap() >= 0.0), "{p}");
                assert!(split >= us * (1.0 - 1e-9), "{p}");
                let accepted = p["accepted"].as_f64().unwrap();
                assert!(split <= us + 64.0 * 10_000.0 / accepted, "{p}");
            }
            None => {
                assert_eq!(report["relay"], true, "{p}");
                assert!(p.get("server_cpu_by_thread_us_per_event").is_none(), "{p}");
            }
        }
        // And what the server wrote, likewise: never nothing for a durable SQLite server
        // (every commit appends WAL frames), unless its data directory (a temporary one) is
        // on tmpfs, which counts no writes to storage. A PostgreSQL node writes nothing of
        // its own: the database server does.
        let sqlite = !extra.contains(&"--database-url");
        match p["server_disk_kib_per_event"].as_f64() {
            Some(kib) if sqlite && !temp_on_tmpfs() => {
                assert!(kib > 0.0 && report["relay"] == false, "{p}")
            }
            Some(kib) => assert!(kib >= 0.0 && report["relay"] == false, "{p}"),
            None => assert_eq!(report["relay"], true, "{p}"),
        }
        // The SQLite writer's own account, from the server's metrics: only a SQLite server
        // has one. It committed every event, each group holds a write at least, and its
        // COMMITs are part of its busy time.
        match &p["writer"] {
            Value::Null => assert!(!sqlite || report["relay"] == true, "{p}"),
            w => {
                assert!(sqlite && report["relay"] == false, "{p}");
                let f = |k: &str| w[k].as_f64().unwrap_or_else(|| panic!("{k}: {p}"));
                assert!(f("busy_pct") > 0.0, "{p}");
                assert!(f("commit_pct") > 0.0, "{p}");
                assert!(f("commit_pct") <= f("busy_pct") + 1e-9, "{p}");
                assert!(f("commit_mean_ms") > 0.0, "{p}");
                assert!(f("jobs_per_group") >= 1.0, "{p}");
                assert_eq!(w["servers"], 1, "{p}");
            }
        }
        let delivered_bytes = p["delivered_body_bytes"].as_f64().unwrap();
        assert!(
            (delivered_bytes - raw_bytes).abs() <= raw_bytes * 0.1,
            "reference bodies of {raw_bytes} bytes, deliveries of {delivered_bytes}: {report}"
        );
    }
    report
}

/// Each throughput phase is compared with the reference measured right before and right
/// after it: the reference is measured again between every two phases.
fn assert_brackets(report: &Value, phase_count: usize) {
    let raw = |field: &str| report[field].as_f64();
    let references: Vec<f64> = report["raw_references_per_sec"]
        .as_array()
        .unwrap_or_else(|| panic!("no list of references: {report}"))
        .iter()
        .map(|r| r.as_f64().unwrap())
        .collect();
    assert_eq!(references.len(), phase_count + 1, "{report}");
    assert_eq!(Some(references[0]), raw("raw_before_per_sec"), "{report}");
    assert_eq!(
        references.last().copied(),
        raw("raw_after_per_sec"),
        "{report}"
    );
    assert_eq!(
        raw("raw_mid_per_sec"),
        (phase_count >= 2).then(|| references[1]),
        "{report}"
    );
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), phase_count, "{report}");
    for (p, around) in phases.iter().zip(references.windows(2)) {
        let reference = p["raw_per_sec"].as_f64().unwrap();
        assert!(
            reference > 0.0 && (reference - (around[0] + around[1]) / 2.0).abs() < 1e-6,
            "{report}"
        );
        let ratio = p["delivered_per_sec"].as_f64().unwrap() / reference;
        let reported = p["delivered_ratio_to_raw"].as_f64().unwrap();
        assert!((ratio - reported).abs() < 1e-9, "{report}");
    }
}

/// Whether the system's temporary directory is on tmpfs (by the longest mount point of
/// `/proc/mounts` that holds it).
fn temp_on_tmpfs() -> bool {
    let dir = std::env::temp_dir();
    let dir = dir.canonicalize().unwrap_or(dir);
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().skip(1);
            Some((f.next()?, f.next()?))
        })
        .filter(|(at, _)| dir.starts_with(at))
        .max_by_key(|(at, _)| at.len())
        .is_some_and(|(_, fs)| fs == "tmpfs")
}

/// Runs `hookline bench ARGS` (on SQLite unless the args say otherwise) and returns the
/// report on the last line of its output.
fn run_bench(args: &[&str]) -> Value {
    report_of(&bench_output(args, &[]))
}

/// Runs `hookline bench ARGS` with the variables `env` (on SQLite unless they say
/// otherwise), which must succeed; what it printed.
fn bench_output(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = hookline()
        .arg("bench")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The report on the last line of a bench's output.
fn report_of(stdout: &str) -> Value {
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}
