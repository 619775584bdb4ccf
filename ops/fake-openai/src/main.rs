//! `chatq-fake-openai`: runs the fake OpenAI server until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use chatq_fake_openai::{FakeConfig, spawn};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// An OpenAI-compatible fake for chatq development, tests and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "chatq-fake-openai", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "FAKE_OPENAI_LISTEN", default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    /// Default reply length in tokens (words).
    #[arg(long, env = "FAKE_OPENAI_TOKENS", default_value_t = 20)]
    tokens: usize,
    /// Default delay before the first content chunk, in milliseconds.
    #[arg(long, env = "FAKE_OPENAI_TTFT_MS", default_value_t = 0)]
    ttft_ms: u64,
    /// Default delay between content chunks, in milliseconds.
    #[arg(long, env = "FAKE_OPENAI_DELAY_MS", default_value_t = 0)]
    delay_ms: u64,
    /// Moderation flags inputs containing this word.
    #[arg(long, env = "FAKE_OPENAI_TRIGGER_WORD", default_value = "forbidden-topic")]
    trigger_word: String,
    /// Server-wide default directive, e.g. "delay_ms=20 fail=503x3".
    #[arg(long, env = "FAKE_OPENAI_DIRECTIVE", default_value = "")]
    directive: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to stderr: stdout carries only the "listening" line scripts wait for.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = FakeConfig {
        listen: args.listen,
        tokens: args.tokens,
        ttft_ms: args.ttft_ms,
        delay_ms: args.delay_ms,
        trigger_word: args.trigger_word,
        directive: args.directive,
        // Nothing can read recorded bodies from outside the process.
        record_requests: false,
    };
    let (addr, handle) = spawn(config).await.with_context(|| format!("binding {}", args.listen))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "chatq-fake-openai listening on http://{addr}/v1")?;
    stdout.flush()?;
    drop(stdout);

    shutdown_signal().await?;
    tracing::info!("shutting down");
    handle.shutdown();
    handle.stopped().await;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    Ok(())
}
