//! `streams`: many concurrent streaming runs in one worker (by default 2,000), each followed by
//! one SSE client. Besides the `stream-latency` figures it samples the worker process from
//! `/proc` (CPU seconds, peak RSS) and Postgres commits from `pg_stat_database` (through `psql`)
//! before and after, and reports commits per run-second — the DESIGN bound is ≤ 10.

use std::{process::Command, time::Instant};

use serde::Serialize;

use crate::ApiArgs;
use crate::scenarios::stream_latency;

/// Options of `chatq-bench streams`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub conn: ApiArgs,
    /// Concurrent streaming runs.
    #[arg(long, default_value_t = 2000)]
    pub streams: usize,
    /// Tokens per answer.
    #[arg(long, default_value_t = 300)]
    pub tokens: u32,
    /// Milliseconds between tokens at the fake upstream.
    #[arg(long, default_value_t = 100)]
    pub delay_ms: u64,
    /// Model of the bench assistant.
    #[arg(long, default_value = "gpt-4o-mini")]
    pub model: String,
    /// Process id of the worker, for its CPU time and peak RSS.
    #[arg(long)]
    pub worker_pid: Option<u32>,
    /// Postgres of the stack, for commit counts (needs `psql` on the PATH).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// What `streams` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Always `streams`.
    pub scenario: &'static str,
    /// The streaming figures (latency, events/s, drops, completed).
    pub streaming: stream_latency::Report,
    /// Worker CPU seconds (user + system) during the scenario.
    pub worker_cpu_secs: Option<f64>,
    /// Worker CPU as a percentage of one core over the scenario.
    pub worker_cpu_percent: Option<f64>,
    /// Worker peak resident memory (VmHWM), MiB.
    pub worker_peak_rss_mib: Option<f64>,
    /// Commits in the stack's database during the scenario (all its clients).
    pub pg_commits: Option<i64>,
    /// Streaming run-seconds: streams × tokens × delay.
    pub run_seconds: f64,
    /// `pg_commits / run_seconds`.
    pub pg_commits_per_run_second: Option<f64>,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    let cpu_before = args.worker_pid.and_then(cpu_secs);
    let commits_before = args.database_url.as_deref().and_then(commits);
    let started = Instant::now();
    let streaming = stream_latency::run(stream_latency::Args {
        conn: args.conn,
        streams: args.streams,
        subscribers_per_run: 1,
        tokens: args.tokens,
        delay_ms: args.delay_ms,
        model: args.model,
        api_pid: None,
    })
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let worker_cpu_secs = match (cpu_before, args.worker_pid.and_then(cpu_secs)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let pg_commits = match (commits_before, args.database_url.as_deref().and_then(commits)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let run_seconds = args.streams as f64 * f64::from(args.tokens) * args.delay_ms as f64 / 1000.0;
    Ok(Report {
        scenario: "streams",
        streaming,
        worker_cpu_secs,
        worker_cpu_percent: worker_cpu_secs.map(|c| 100.0 * c / elapsed.max(1e-9)),
        worker_peak_rss_mib: args.worker_pid.and_then(peak_rss_mib),
        pg_commits,
        run_seconds,
        pg_commits_per_run_second: pg_commits.map(|c| c as f64 / run_seconds.max(1e-9)),
    })
}

/// User + system CPU seconds of a process (`/proc/PID/stat` fields 14 and 15, in clock ticks of
/// 1/100 s, Linux's `USER_HZ`).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Peak resident memory of a process in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Committed transactions of the URL's database so far.
fn commits(url: &str) -> Option<i64> {
    let out = Command::new("psql")
        .args([url, "-Atc", "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"])
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time_and_peak_rss_of_a_live_process() {
        let me = std::process::id();
        // Burn a little CPU so the counter is visibly non-negative and readable.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_secs(me).is_some_and(|c| c >= 0.0));
        assert!(peak_rss_mib(me).is_some_and(|m| m > 1.0));
        assert_eq!(cpu_secs(u32::MAX), None);
    }
}
