//! `subscribers`: many SSE clients on one API process following live runs (by default 500 runs
//! × 20 clients = 10,000 subscribers). It is `stream-latency` with a fan-out preset; the report
//! adds nothing but its name, and `--api-pid` gives the API's peak RSS.

use crate::ApiArgs;
use crate::scenarios::stream_latency;

/// Options of `chatq-bench subscribers`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub conn: ApiArgs,
    /// Concurrent streaming runs.
    #[arg(long, default_value_t = 500)]
    pub streams: usize,
    /// SSE clients following each run.
    #[arg(long, default_value_t = 20)]
    pub subscribers_per_run: usize,
    /// Tokens per answer (long answers keep every subscriber connected at once).
    #[arg(long, default_value_t = 600)]
    pub tokens: u32,
    /// Milliseconds between tokens at the fake upstream.
    #[arg(long, default_value_t = 100)]
    pub delay_ms: u64,
    /// Model of the bench assistant.
    #[arg(long, default_value = "gpt-4o-mini")]
    pub model: String,
    /// Process id of the API, to report its peak RSS.
    #[arg(long)]
    pub api_pid: Option<u32>,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<stream_latency::Report> {
    let mut report = stream_latency::run(stream_latency::Args {
        conn: args.conn,
        streams: args.streams,
        subscribers_per_run: args.subscribers_per_run,
        tokens: args.tokens,
        delay_ms: args.delay_ms,
        model: args.model,
        api_pid: args.api_pid,
    })
    .await?;
    report.scenario = "subscribers";
    Ok(report)
}
