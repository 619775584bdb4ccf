#![doc = include_str!("../README.md")]

pub mod client;
pub mod scenarios;
pub mod stats;

use clap::{Parser, Subcommand};

/// Command line of `chatq-bench`.
#[derive(Debug, Parser)]
#[command(name = "chatq-bench", version, about = "Load generator and benchmarks for chatq")]
pub struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub command: Command,
}

/// One variant per scenario in [`scenarios`].
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Short chat runs end to end: N clients each create a thread, submit a run and poll it
    /// until it is terminal, in a loop.
    Runs(scenarios::runs::Args),
    /// Streaming runs followed over SSE: upstream-to-client token latency, events/s, drops,
    /// API RSS (`--subscribers-per-run` for the subscribers figure).
    StreamLatency(scenarios::stream_latency::Args),
    /// Many SSE clients following live runs on one API process (default 10,000): events/s,
    /// drops, API RSS (`--api-pid`).
    Subscribers(scenarios::subscribers::Args),
    /// Many concurrent streaming runs in one worker (default 2,000): worker CPU and peak RSS
    /// (`--worker-pid`), Postgres commits per run-second (`--database-url`).
    Streams(scenarios::streams::Args),
    /// Knowledge-base search at scale, in process: fills a base with N synthetic chunks in
    /// Postgres, then vector (exact, HNSW), full-text and hybrid latency, recall@10 of HNSW
    /// against exact, HNSW build time and memory.
    Search(scenarios::search::Args),
}

/// Where the API is and how to authenticate; shared by every scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Base URL of the chatq API.
    #[arg(long, env = "CHATQ_BENCH_API", default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// API key (an admin key if the scenario has to create an assistant).
    #[arg(long, env = "CHATQ_BENCH_KEY", hide_env_values = true)]
    pub key: String,
}

/// The result of any scenario; serializes as that scenario's own JSON object, fields in the
/// order its report struct declares them (`scenario` first).
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum Report {
    /// Result of `runs`.
    Runs(scenarios::runs::Report),
    /// Result of `stream-latency` and `subscribers`.
    StreamLatency(scenarios::stream_latency::Report),
    /// Result of `streams`.
    Streams(scenarios::streams::Report),
    /// Result of `search`.
    Search(scenarios::search::Report),
}

/// Runs the chosen scenario and returns its result, which the binary prints as one JSON object
/// on stdout (the only thing it prints there; progress goes to stderr).
pub async fn run(cli: Cli) -> anyhow::Result<Report> {
    match cli.command {
        Command::Runs(args) => Ok(Report::Runs(scenarios::runs::run(args).await?)),
        Command::StreamLatency(args) => Ok(Report::StreamLatency(scenarios::stream_latency::run(args).await?)),
        Command::Subscribers(args) => Ok(Report::StreamLatency(scenarios::subscribers::run(args).await?)),
        Command::Streams(args) => Ok(Report::Streams(scenarios::streams::run(args).await?)),
        Command::Search(args) => Ok(Report::Search(scenarios::search::run(args).await?)),
    }
}
