//! The servers' own account of their SQLite writer over a phase, read from `GET /metrics`
//! before and after it (the `hookline_sqlite_*` histograms): how busy the one writer was, how
//! much of that was `COMMIT` (writing the WAL frames and the fsync, which every acknowledged
//! write waits for), and how many write jobs a group commit held. A server on PostgreSQL, or
//! the relay, reports none of it.

use super::HttpClient;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The sums of the writer's group-commit histograms (`hookline_sqlite_*`), over every server
/// read, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct WriterTotals {
    group_secs: f64,
    groups: f64,
    commit_secs: f64,
    commits: f64,
    jobs: f64,
    servers: usize,
}

/// A reading of [`WriterTotals`] and when it was taken.
#[derive(Clone, Copy, Debug)]
pub(super) struct WriterReading {
    totals: WriterTotals,
    at: Instant,
}

/// What the servers' SQLite writers did between two readings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct WriterShares {
    /// The servers read (each has one writer; `--api` may name several).
    pub servers: usize,
    /// The share of the span the writer spent on group commits, from a group's first job to
    /// its answers and the writer's own checkpoint if one followed (%; with several servers,
    /// the sum of theirs). Near 100, every write waits behind the one writer.
    pub busy_pct: f64,
    /// The part of the span in successful `COMMIT`s (%): writing the WAL frames, and the
    /// fsync, during which the writer's CPU is free but its callers wait.
    pub commit_pct: f64,
    /// The mean `COMMIT` (ms).
    pub commit_mean_ms: f64,
    /// Write jobs per group commit, on average: each single-event request is one, a batch
    /// request one, and the outcomes that ride along one per batch of them.
    pub jobs_per_group: f64,
}

/// The totals in a server's Prometheus text; `None` if it reports no writer (PostgreSQL).
fn parse(text: &str) -> Option<WriterTotals> {
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    Some(WriterTotals {
        group_secs: value("hookline_sqlite_group_commit_duration_seconds_sum")?,
        groups: value("hookline_sqlite_group_commit_duration_seconds_count")?,
        // A writer that has grouped writes but never committed one (every group rolled
        // back) has no commit series yet.
        commit_secs: value("hookline_sqlite_commit_duration_seconds_sum").unwrap_or(0.0),
        commits: value("hookline_sqlite_commit_duration_seconds_count").unwrap_or(0.0),
        jobs: value("hookline_sqlite_group_commit_jobs_sum")?,
        servers: 1,
    })
}

/// Reads every server's totals, summed; `None` if one of them reports no writer or does not
/// answer.
pub(super) async fn read(http: &HttpClient, apis: &[String]) -> Option<WriterReading> {
    let mut totals = WriterTotals::default();
    for api in apis {
        let req = Request::get(format!("{api}/metrics"))
            .body(Full::new(Bytes::new()))
            .ok()?;
        let resp = http.request(req).await.ok()?;
        if resp.status() != 200 {
            return None;
        }
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        let t = parse(std::str::from_utf8(&body).ok()?)?;
        totals.group_secs += t.group_secs;
        totals.groups += t.groups;
        totals.commit_secs += t.commit_secs;
        totals.commits += t.commits;
        totals.jobs += t.jobs;
        totals.servers += 1;
    }
    Some(WriterReading {
        totals,
        at: Instant::now(),
    })
}

/// The shares between two readings; `None` for a span under 10 ms, no group in it, or
/// totals that went back (a server restarted).
pub(super) fn shares(before: WriterReading, after: WriterReading) -> Option<WriterShares> {
    shares_over(
        before.totals,
        after.totals,
        after.at.saturating_duration_since(before.at),
    )
}

fn shares_over(before: WriterTotals, after: WriterTotals, span: Duration) -> Option<WriterShares> {
    let d = |a: f64, b: f64| (a >= b).then_some(a - b);
    let group_secs = d(after.group_secs, before.group_secs)?;
    let groups = d(after.groups, before.groups)?;
    let commit_secs = d(after.commit_secs, before.commit_secs)?;
    let commits = d(after.commits, before.commits)?;
    let jobs = d(after.jobs, before.jobs)?;
    let span = span.as_secs_f64();
    if span < 0.01 || groups < 1.0 || before.servers != after.servers {
        return None;
    }
    Some(WriterShares {
        servers: after.servers,
        busy_pct: 100.0 * group_secs / span,
        commit_pct: 100.0 * commit_secs / span,
        commit_mean_ms: if commits > 0.0 {
            1000.0 * commit_secs / commits
        } else {
            0.0
        },
        jobs_per_group: jobs / groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exporter's text, as a server renders it (abridged).
    const TEXT: &str = "\
# TYPE hookline_sqlite_group_commit_duration_seconds histogram
hookline_sqlite_group_commit_duration_seconds_bucket{le=\"0.00005\"} 3
hookline_sqlite_group_commit_duration_seconds_bucket{le=\"+Inf\"} 40
hookline_sqlite_group_commit_duration_seconds_sum 0.5
hookline_sqlite_group_commit_duration_seconds_count 40
# TYPE hookline_sqlite_commit_duration_seconds histogram
hookline_sqlite_commit_duration_seconds_sum 0.25
hookline_sqlite_commit_duration_seconds_count 40
# TYPE hookline_sqlite_group_commit_jobs histogram
hookline_sqlite_group_commit_jobs_bucket{le=\"2048\"} 40
hookline_sqlite_group_commit_jobs_sum 800
hookline_sqlite_group_commit_jobs_count 40
";

    #[test]
    fn the_writer_totals_are_the_sums_and_counts_of_its_histograms() {
        let t = parse(TEXT).unwrap();
        assert_eq!(
            t,
            WriterTotals {
                group_secs: 0.5,
                groups: 40.0,
                commit_secs: 0.25,
                commits: 40.0,
                jobs: 800.0,
                servers: 1,
            }
        );
        // A server without a writer (PostgreSQL) reports none.
        assert_eq!(parse("hookline_events_accepted_total 5\n"), None);
    }

    #[test]
    fn the_writer_shares_are_its_totals_over_the_span() {
        let before = parse(TEXT).unwrap();
        let after = WriterTotals {
            group_secs: 1.0,
            groups: 140.0,
            commit_secs: 0.55,
            commits: 140.0,
            jobs: 2_800.0,
            servers: 1,
        };
        let s = shares_over(before, after, Duration::from_secs(2)).unwrap();
        assert!((s.busy_pct - 25.0).abs() < 1e-9, "{s:?}");
        assert!((s.commit_pct - 15.0).abs() < 1e-9, "{s:?}");
        assert!((s.commit_mean_ms - 3.0).abs() < 1e-9, "{s:?}");
        assert!((s.jobs_per_group - 20.0).abs() < 1e-9, "{s:?}");
        assert_eq!(s.servers, 1);
        // No group in the span, a span too short, totals that went back, or another number
        // of servers: nothing.
        let two = WriterTotals {
            servers: 2,
            ..after
        };
        assert_eq!(shares_over(before, two, Duration::from_secs(2)), None);
        assert_eq!(shares_over(before, before, Duration::from_secs(2)), None);
        assert_eq!(shares_over(before, after, Duration::from_millis(9)), None);
        assert_eq!(shares_over(after, before, Duration::from_secs(2)), None);
    }
}
