//! `stream-latency`: M concurrent streaming runs, each followed by K SSE clients. The fake
//! upstream (`[[fake stamp=1]]`) writes its send time into every token, so each client measures,
//! per token, the time from the upstream emitting it to the client receiving it (the whole
//! pipeline: worker, coalescing window, Redis, the API's hub, SSE). Also reports events/s,
//! connections dropped before the terminal event, and the API's RSS when `--api-pid` is given.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use eventsource_stream::Eventsource as _;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::ApiArgs;
use crate::client::ApiClient;
use crate::stats::{Samples, Summary};

/// Options of `chatq-bench stream-latency`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub conn: ApiArgs,
    /// Concurrent streaming runs.
    #[arg(long, default_value_t = 100)]
    pub streams: usize,
    /// SSE clients following each run (the first one submits with `stream: true`).
    #[arg(long, default_value_t = 1)]
    pub subscribers_per_run: usize,
    /// Tokens per answer.
    #[arg(long, default_value_t = 50)]
    pub tokens: u32,
    /// Upstream delay between tokens, in milliseconds (the token rate).
    #[arg(long, default_value_t = 50)]
    pub delay_ms: u64,
    /// Model of the created assistant.
    #[arg(long, default_value = "gpt-4o-mini")]
    pub model: String,
    /// Pid of the API process, to report its peak RSS.
    #[arg(long)]
    pub api_pid: Option<u32>,
}

/// The JSON result. Field names are read by scripts: add, don't rename.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Always `"stream-latency"`.
    pub scenario: &'static str,
    /// Concurrent runs.
    pub streams: usize,
    /// SSE clients in total.
    pub subscribers: usize,
    /// Upstream emit → SSE client receive, per token, in ms.
    pub token_latency_ms: Summary,
    /// SSE events received by all clients per second.
    pub events_per_sec: f64,
    /// Clients whose stream ended before the terminal event or failed.
    pub dropped: usize,
    /// Runs that completed.
    pub completed: usize,
    /// Peak RSS of the API process (`VmHWM`), MiB, when `--api-pid` was given.
    pub api_peak_rss_mib: Option<f64>,
    /// Wall-clock time.
    pub elapsed_secs: f64,
    /// `--tokens`, `--delay-ms`.
    pub tokens: u32,
    pub delay_ms: u64,
}

fn now_micros() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros())
}

struct ClientResult {
    latencies: Samples,
    events: u64,
    completed: bool,
}

/// Reads one SSE response to its end, measuring stamped tokens.
async fn consume(resp: reqwest::Response) -> ClientResult {
    let mut out = ClientResult { latencies: Samples::new(), events: 0, completed: false };
    if !resp.status().is_success() {
        return out;
    }
    let mut events = resp.bytes_stream().eventsource();
    while let Some(Ok(event)) = events.next().await {
        let received = now_micros();
        out.events += 1;
        match event.event.as_str() {
            "message.delta" => {
                let text = serde_json::from_str::<Value>(&event.data).ok();
                let text = text.as_ref().and_then(|v| v["text"].as_str()).unwrap_or("");
                for word in text.split_whitespace() {
                    if let Some(sent) = word.strip_prefix('@').and_then(|w| w.parse::<u128>().ok()) {
                        out.latencies.record(received.saturating_sub(sent) as f64 / 1000.0);
                    }
                }
            }
            "run.completed" => out.completed = true,
            _ => {}
        }
    }
    out
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    let api = ApiClient::new(&args.conn.api, &args.conn.key, 64)?;
    let assistant = api
        .create_assistant(&format!("bench-{}", uuid::Uuid::now_v7()), &args.model, "Benchmark.")
        .await
        .context("creating a bench assistant (needs an admin key)")?;
    let http = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(0).build()?;
    let base = args.conn.api.trim_end_matches('/').to_string();
    let auth = format!("Bearer {}", args.conn.key);
    let input = format!("bench [[fake tokens={} delay_ms={} stamp=1]]", args.tokens, args.delay_ms);
    // Threads first, 32 at a time, so the runs themselves start together: with one thread
    // created at a time the first answers finish before the last start, and far fewer than
    // `--streams` are ever in flight at once.
    let names: Vec<String> = (0..args.streams).map(|i| format!("bench-stream-{i}")).collect();
    let threads: Vec<String> = futures::stream::iter(names.iter())
        .map(|name| api.create_thread(&assistant, name))
        .buffered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .context("creating threads")?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for thread in threads {
        let (http, base, auth, input, k) =
            (http.clone(), base.clone(), auth.clone(), input.clone(), args.subscribers_per_run);
        tasks.spawn(async move {
            let resp = http
                .post(format!("{base}/v1/threads/{thread}/runs"))
                .header("authorization", &auth)
                .json(&json!({"input": input, "stream": true}))
                .send()
                .await;
            let Ok(resp) = resp else {
                return vec![ClientResult { latencies: Samples::new(), events: 0, completed: false }];
            };
            // The first event carries the run id; the other subscribers follow it.
            let mut events = resp.bytes_stream().eventsource();
            let Some(Ok(first)) = events.next().await else {
                return vec![ClientResult { latencies: Samples::new(), events: 0, completed: false }];
            };
            let run_id = serde_json::from_str::<Value>(&first.data)
                .ok()
                .and_then(|v| v["run_id"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let mut followers = JoinSet::new();
            for _ in 0..k {
                let req = http.get(format!("{base}/v1/runs/{run_id}/events?after=1")).header("authorization", &auth);
                followers.spawn(async move {
                    match req.send().await {
                        Ok(resp) => consume(resp).await,
                        Err(_) => ClientResult { latencies: Samples::new(), events: 0, completed: false },
                    }
                });
            }
            drop(events);
            let mut results = Vec::new();
            while let Some(r) = followers.join_next().await {
                results.push(r.unwrap_or(ClientResult { latencies: Samples::new(), events: 0, completed: false }));
            }
            results
        });
    }
    eprintln!("{} runs submitted in {:.1}s", args.streams, started.elapsed().as_secs_f64());
    let mut latencies = Samples::new();
    let (mut events, mut dropped, mut completed, mut clients) = (0u64, 0usize, 0usize, 0usize);
    while let Some(r) = tasks.join_next().await {
        let results = r.unwrap_or_default();
        let mut any = false;
        for c in results {
            clients += 1;
            latencies.extend(&c.latencies);
            events += c.events;
            if c.completed {
                any = true;
            } else {
                dropped += 1;
            }
        }
        completed += usize::from(any);
    }
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(Report {
        scenario: "stream-latency",
        streams: args.streams,
        subscribers: clients,
        token_latency_ms: latencies.summary(),
        events_per_sec: events as f64 / elapsed.max(1e-9),
        dropped,
        completed,
        api_peak_rss_mib: args.api_pid.and_then(peak_rss_mib),
        elapsed_secs: elapsed,
        tokens: args.tokens,
        delay_ms: args.delay_ms,
    })
}
