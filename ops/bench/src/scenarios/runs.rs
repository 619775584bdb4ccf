//! `runs`: short chat runs end to end (submit → completed), polled, many clients at once.
//!
//! Measures the design targets "enqueue to worker start" (`submit_to_start_ms`, from the
//! server's own timestamps) and "≥ 1,000 short chat runs per second end to end"
//! (`runs_per_sec`, `submit_to_completed_ms`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::ApiArgs;
use crate::client::{ApiClient, CallError, Run};
use crate::stats::{Samples, Summary};

/// Options of `chatq-bench runs`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub conn: ApiArgs,
    /// Assistant to chat with; when absent one is created (needs an admin key).
    #[arg(long)]
    pub assistant: Option<String>,
    /// Concurrent clients, each with at most one run in flight.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Total runs to submit. Defaults to 1000, or unlimited when --duration-secs is given.
    #[arg(long)]
    pub runs: Option<u64>,
    /// Stop submitting new runs after this many seconds (in-flight runs still finish).
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Reply length in words, passed to the fake OpenAI server as `[[fake tokens=N]]`.
    #[arg(long, default_value_t = 5)]
    pub tokens: u32,
    /// Interval between polls of `GET /v1/runs/{id}`, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub poll_ms: u64,
    /// Model of the assistant created when --assistant is absent.
    #[arg(long, default_value = "gpt-4o-mini")]
    pub model: String,
    /// Give up on a run (error `poll_timeout`) if it is not terminal after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub run_timeout_secs: u64,
}

/// The JSON result of the `runs` scenario. Field names are read by scripts: add, don't rename.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Always `"runs"`.
    pub scenario: &'static str,
    /// Concurrent clients.
    pub clients: usize,
    /// Runs attempted (`completed + failed`).
    pub runs: u64,
    /// Runs that reached `completed`.
    pub completed: u64,
    /// Runs that did not: a call failed, the run ended `failed`/`cancelled`, or it timed out.
    pub failed: u64,
    /// Every error seen, by kind (`thread.http_429_rate_limited`, `run.failed.provider_error`,
    /// `poll.timeout`...). Transient poll errors are counted here even when the run then
    /// completed, so this can add up to more than `failed`.
    pub errors: BTreeMap<String, u64>,
    /// Wall-clock time from the first submit until the last run was terminal.
    pub elapsed_secs: f64,
    /// `completed / elapsed_secs`.
    pub runs_per_sec: f64,
    /// Server side: `started_at - created_at`, i.e. enqueue to worker start.
    pub submit_to_start_ms: Summary,
    /// Client side: from sending the run's POST until a poll saw it `completed`. Includes up to
    /// one poll interval of polling delay.
    pub submit_to_completed_ms: Summary,
    /// Server side: `completed_at - created_at` for completed runs.
    pub server_submit_to_completed_ms: Summary,
    /// Server side: `first_token_at - started_at` (upstream time to first token plus overhead).
    pub server_start_to_first_token_ms: Summary,
    /// The assistant chatted with.
    pub assistant_id: String,
    /// `--tokens`.
    pub tokens: u32,
    /// `--poll-ms`.
    pub poll_ms: u64,
}

/// What one client collected; merged into the report at the end.
#[derive(Debug, Default)]
struct ClientStats {
    errors: BTreeMap<String, u64>,
    submit_to_start: Samples,
    submit_to_completed: Samples,
    server_submit_to_completed: Samples,
    start_to_first_token: Samples,
}

impl ClientStats {
    fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    fn merge(&mut self, other: ClientStats) {
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.submit_to_start.extend(&other.submit_to_start);
        self.submit_to_completed.extend(&other.submit_to_completed);
        self.server_submit_to_completed.extend(&other.server_submit_to_completed);
        self.start_to_first_token.extend(&other.start_to_first_token);
    }
}

/// State shared by the clients and the progress printer.
struct Shared {
    client: ApiClient,
    args: Args,
    assistant_id: String,
    input: String,
    /// Run slots handed out so far; a client takes one before each run.
    claimed: AtomicU64,
    /// The `--runs` budget (`u64::MAX` when only a duration bounds the scenario).
    limit: u64,
    /// When to stop submitting new runs, for `--duration-secs`.
    deadline: Option<Instant>,
    /// Set on Ctrl-C: stop submitting, let in-flight runs finish, report.
    stop: AtomicBool,
    completed: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    /// Takes one run slot, or `false` when the scenario is over for new runs.
    fn claim(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        self.claimed.fetch_add(1, Ordering::Relaxed) < self.limit
    }
}

/// Runs the scenario and returns its report.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(args.poll_ms > 0, "--poll-ms must be at least 1");
    let client = ApiClient::new(&args.conn.api, &args.conn.key, args.clients)?;

    // Fail fast and clearly when nothing listens, instead of N clients counting `connect` errors.
    match client.ready().await {
        Ok(()) => {}
        Err(CallError::Transport(e)) => {
            return Err(e).with_context(|| format!("the chatq API at {} is not reachable", args.conn.api));
        }
        Err(e) => eprintln!("warning: {}/readyz: {e}; benchmarking anyway", args.conn.api),
    }

    let assistant_id = match &args.assistant {
        Some(id) => id.clone(),
        None => {
            let name = format!("bench-{}", uuid::Uuid::now_v7());
            let id = client
                .create_assistant(&name, &args.model, "You are a benchmark assistant. Answer briefly.")
                .await
                .context("creating a bench assistant (needs an admin key; or pass --assistant ID)")?;
            eprintln!("created assistant {id} ({name}, model {})", args.model);
            id
        }
    };

    let limit = match (args.runs, args.duration_secs) {
        (Some(n), _) => n,
        (None, Some(_)) => u64::MAX,
        (None, None) => 1000,
    };
    let shared = Arc::new(Shared {
        client,
        input: format!("bench [[fake tokens={} delay_ms=0]]", args.tokens),
        assistant_id: assistant_id.clone(),
        claimed: AtomicU64::new(0),
        limit,
        deadline: args.duration_secs.map(|s| Instant::now() + Duration::from_secs(s)),
        stop: AtomicBool::new(false),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        args,
    });

    let started = Instant::now();
    let progress = tokio::spawn(print_progress(shared.clone(), started));
    let ctrl_c = {
        let shared = shared.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: letting in-flight runs finish, then reporting");
                shared.stop.store(true, Ordering::Relaxed);
            }
        })
    };

    let mut clients = JoinSet::new();
    for n in 0..shared.args.clients {
        clients.spawn(client_loop(shared.clone(), n));
    }
    let mut totals = ClientStats::default();
    while let Some(joined) = clients.join_next().await {
        totals.merge(joined.context("a bench client panicked")?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    progress.abort();
    ctrl_c.abort();

    let completed = shared.completed.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    eprintln!("done: {completed} completed, {failed} failed in {elapsed:.2}s");
    Ok(Report {
        scenario: "runs",
        clients: shared.args.clients,
        runs: completed + failed,
        completed,
        failed,
        errors: totals.errors,
        elapsed_secs: round3(elapsed),
        runs_per_sec: if elapsed > 0.0 { round3(completed as f64 / elapsed) } else { 0.0 },
        submit_to_start_ms: totals.submit_to_start.summary(),
        submit_to_completed_ms: totals.submit_to_completed.summary(),
        server_submit_to_completed_ms: totals.server_submit_to_completed.summary(),
        server_start_to_first_token_ms: totals.start_to_first_token.summary(),
        assistant_id,
        tokens: shared.args.tokens,
        poll_ms: shared.args.poll_ms,
    })
}

/// One simulated client: thread, run, poll to the end, again, until the budget is spent. Each
/// run is a new end user, as real traffic is: per-user rate limits (`CHATQ_RATE_USER_*`) then
/// measure nothing but throughput.
async fn client_loop(shared: Arc<Shared>, n: usize) -> ClientStats {
    let mut stats = ClientStats::default();
    let mut i = 0u64;
    while shared.claim() {
        i += 1;
        let user = format!("bench-{n}-{i}");
        let completed = match one_run(&shared, &user, &mut stats).await {
            Ok(completed) => completed,
            Err((stage, err)) => {
                stats.error(format!("{stage}.{}", err.kind()));
                // Honour a rate limit rather than hammering the API; a few seconds at most so a
                // misconfigured limit cannot stall the whole bench.
                if let Some(wait) = err.retry_after() {
                    tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
                }
                false
            }
        };
        let counter = if completed { &shared.completed } else { &shared.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    stats
}

/// One thread + run, polled until terminal. `Ok(true)` when it completed; `Ok(false)` when it
/// ended otherwise (already counted in `stats`); `Err((stage, error))` when a call failed.
async fn one_run(shared: &Shared, user: &str, stats: &mut ClientStats) -> Result<bool, (&'static str, CallError)> {
    let client = &shared.client;
    let thread_id = client.create_thread(&shared.assistant_id, user).await.map_err(|e| ("thread", e))?;

    let submitted = Instant::now();
    let mut run = client.create_run(&thread_id, &shared.input).await.map_err(|e| ("submit", e))?;
    let poll = Duration::from_millis(shared.args.poll_ms);
    let give_up = submitted + Duration::from_secs(shared.args.run_timeout_secs);
    while !run.is_terminal() {
        if Instant::now() >= give_up {
            stats.error("poll.timeout".to_owned());
            return Ok(false);
        }
        tokio::time::sleep(poll).await;
        match client.get_run(&run.id).await {
            Ok(latest) => run = latest,
            // A failed poll is not a failed run: count it and keep polling until the deadline.
            Err(e) => stats.error(format!("poll.{}", e.kind())),
        }
    }
    let observed = submitted.elapsed();

    record_server_times(&run, stats);
    match run.status.as_str() {
        "completed" => {
            stats.submit_to_completed.record(observed.as_secs_f64() * 1000.0);
            if let Some(done) = run.completed_at {
                stats.server_submit_to_completed.record(ms_between(run.created_at, done));
            }
            Ok(true)
        }
        "failed" => {
            let code = run.error.as_ref().map_or("unknown", |e| e.code.as_str());
            stats.error(format!("run.failed.{code}"));
            Ok(false)
        }
        other => {
            stats.error(format!("run.{other}"));
            Ok(false)
        }
    }
}

fn record_server_times(run: &Run, stats: &mut ClientStats) {
    if let Some(started) = run.started_at {
        stats.submit_to_start.record(ms_between(run.created_at, started));
        if let Some(first) = run.first_token_at {
            stats.start_to_first_token.record(ms_between(started, first));
        }
    }
}

/// Milliseconds from `a` to `b`, with microsecond precision.
fn ms_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    let d = b - a;
    d.num_microseconds().map_or(d.num_milliseconds() as f64, |us| us as f64 / 1000.0)
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Prints a progress line to stderr every second until aborted.
async fn print_progress(shared: Arc<Shared>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0;
    loop {
        tick.tick().await;
        let completed = shared.completed.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let total = if shared.limit == u64::MAX { "∞".to_owned() } else { shared.limit.to_string() };
        eprintln!(
            "[{:>6.1}s] {}/{total} runs done: {completed} completed, {failed} failed, {} runs/s",
            started.elapsed().as_secs_f64(),
            completed + failed,
            completed - last,
        );
        last = completed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_between_keeps_sub_millisecond_precision() {
        let a: DateTime<Utc> = "2026-01-01T00:00:00.000100Z".parse().unwrap();
        let b: DateTime<Utc> = "2026-01-01T00:00:00.012600Z".parse().unwrap();
        assert_eq!(ms_between(a, b), 12.5);
    }

    #[test]
    fn server_times_are_recorded_only_when_the_run_has_them() {
        let mut stats = ClientStats::default();
        let queued: Run = serde_json::from_value(serde_json::json!({
            "id": "r", "status": "failed", "created_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        record_server_times(&queued, &mut stats);
        assert!(stats.submit_to_start.is_empty());

        let done: Run = serde_json::from_value(serde_json::json!({
            "id": "r", "status": "completed", "created_at": "2026-01-01T00:00:00Z",
            "started_at": "2026-01-01T00:00:00.004Z", "first_token_at": "2026-01-01T00:00:00.010Z",
            "completed_at": "2026-01-01T00:00:00.020Z"
        }))
        .unwrap();
        record_server_times(&done, &mut stats);
        assert_eq!(stats.submit_to_start.summary().p50, Some(4.0));
        assert_eq!(stats.start_to_first_token.summary().p50, Some(6.0));
    }

    #[test]
    fn the_report_prints_the_documented_fields_scenario_first() {
        let report = Report {
            scenario: "runs",
            clients: 2,
            runs: 3,
            completed: 2,
            failed: 1,
            errors: BTreeMap::from([("run.failed.provider_error".to_owned(), 1)]),
            elapsed_secs: 1.5,
            runs_per_sec: 1.333,
            submit_to_start_ms: Summary::of(&[1.0, 2.0]),
            submit_to_completed_ms: Summary::of(&[10.0, 20.0]),
            server_submit_to_completed_ms: Summary::of(&[]),
            server_start_to_first_token_ms: Summary::of(&[]),
            assistant_id: "a".to_owned(),
            tokens: 5,
            poll_ms: 20,
        };
        let text = serde_json::to_string(&crate::Report::Runs(report)).unwrap();
        assert!(
            text.starts_with(r#"{"scenario":"runs","clients":2,"runs":3,"completed":2,"failed":1,"errors":{"#),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        for key in [
            "elapsed_secs",
            "runs_per_sec",
            "submit_to_start_ms",
            "submit_to_completed_ms",
            "server_submit_to_completed_ms",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        for p in ["p50", "p90", "p99", "max"] {
            assert!(json["submit_to_start_ms"].get(p).is_some(), "missing submit_to_start_ms.{p}");
        }
        assert_eq!(json["submit_to_completed_ms"]["p50"], 10.0);
        assert!(json["server_submit_to_completed_ms"]["p99"].is_null());
    }
}
