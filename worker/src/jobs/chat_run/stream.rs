//! Streaming the answer: one provider stream per attempt, deltas coalesced (the first at once,
//! later ones at most every `CHATQ_STREAM_COALESCE_MS`), stopped by a cancel, a lost lease or
//! the end of the shutdown grace.

use std::time::Instant;

use async_openai::types::chat::FinishReason;
use chatq_common::{
    db,
    events::EventKind,
    pricing::TokenUsage,
    provider::{ChatRequest, Provider, ProviderError},
};
use chrono::Utc;
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{
    attempt::Attempt,
    moderation::{self, Verdict, Withdrawal},
};

/// How the stream of one attempt ended. The text received is in [`Received`].
pub(super) enum StreamOutcome {
    /// The provider finished the answer (its usage, if it sent any, is in [`Received`]).
    Done { finish_reason: String },
    /// The provider failed; the text streamed before is kept.
    Failed { error: ProviderError },
    /// A cancel was requested; the text streamed so far is kept.
    Cancelled,
    /// Another worker owns the run now, or the run is gone.
    LeaseLost,
    /// The worker is shutting down and its grace period is over.
    Released,
    /// Output moderation flagged the answer while it streamed; the stream was dropped.
    Withdrawn(Withdrawal),
}

/// Output moderation while the answer streams: the run checked and how many characters to
/// stream between two checks (`CHATQ_MODERATION_OUTPUT_EVERY_CHARS`).
pub(super) struct CheckEvery<'r> {
    pub run: &'r db::runs::Run,
    pub chars: usize,
}

/// What the provider sent during one call, however it ended: what the call is billed on.
#[derive(Debug, Default)]
pub(super) struct Received {
    /// The provider accepted the request and opened a stream: from here on the call is billed.
    pub opened: bool,
    /// The answer text received.
    pub text: String,
    /// The usage the provider reported, if its usage chunk arrived.
    pub usage: Option<TokenUsage>,
}

/// Streams the completion, coalescing deltas: the first one is emitted at once, later ones at
/// most every `CHATQ_STREAM_COALESCE_MS`. With `check_every`, the text so far is moderated each
/// time that many more characters arrived, before the text past the last emitted delta is sent.
/// The request goes to `provider`, the client of the route's upstream. Whatever the outcome,
/// `received` holds what the provider sent.
#[allow(clippy::too_many_arguments)]
pub(super) async fn stream_answer(
    attempt: &mut Attempt<'_>,
    provider: &Provider,
    request: &ChatRequest,
    received: &mut Received,
    lost: &CancellationToken,
    cancel: &CancellationToken,
    claimed_at: Instant,
    check_every: Option<CheckEvery<'_>>,
) -> StreamOutcome {
    let ctx = attempt.ctx;
    let coalesce = ctx.config.streaming.coalesce;
    let text = &mut received.text;
    let mut pending = String::new();
    let mut last_emit: Option<Instant> = None;
    let mut finish_reason: Option<FinishReason> = None;
    let mut chars = 0usize;
    let mut check_at = check_every.as_ref().map_or(usize::MAX, |c| c.chars);

    let mut stream = tokio::select! {
        opened = provider.stream_chat(request) => match opened {
            Ok(s) => s,
            Err(error) => return StreamOutcome::Failed { error },
        },
        _ = lost.cancelled() => return StreamOutcome::LeaseLost,
        _ = ctx.release.cancelled() => return StreamOutcome::Released,
        _ = cancel.cancelled() => return StreamOutcome::Cancelled,
    };
    received.opened = true;
    loop {
        let flush_at = last_emit.map(|t| t + coalesce).filter(|_| !pending.is_empty());
        let next = tokio::select! {
            item = tokio::time::timeout(provider.idle_timeout, stream.next()) => item,
            _ = lost.cancelled() => return StreamOutcome::LeaseLost,
            _ = ctx.release.cancelled() => return StreamOutcome::Released,
            // Dropping the stream aborts the upstream request; what was written is kept.
            _ = cancel.cancelled() => {
                if !pending.is_empty() {
                    attempt.emit(EventKind::Delta, json!({"text": pending}), std::mem::take(&mut pending), None).await;
                }
                return StreamOutcome::Cancelled;
            }
            _ = sleep_until_opt(flush_at) => {
                attempt.emit(EventKind::Delta, json!({"text": pending}), std::mem::take(&mut pending), None).await;
                last_emit = Some(Instant::now());
                continue;
            }
        };
        let item = match next {
            Err(_) => {
                return StreamOutcome::Failed { error: ProviderError::timeout(provider.idle_timeout) };
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return StreamOutcome::Failed { error: ProviderError::classify(&e, None) };
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        if let Some(u) = &item.usage {
            let cached = u.prompt_tokens_details.as_ref().and_then(|d| d.cached_tokens).unwrap_or(0);
            received.usage = Some(TokenUsage {
                input: u.prompt_tokens as u64,
                cached_input: cached as u64,
                output: u.completion_tokens as u64,
            });
        }
        for choice in &item.choices {
            if let Some(reason) = choice.finish_reason {
                finish_reason = Some(reason);
            }
            let Some(delta) = choice.delta.content.as_deref().filter(|d| !d.is_empty()) else { continue };
            text.push_str(delta);
            pending.push_str(delta);
            chars += delta.chars().count();
            if let Some(every) = check_every.as_ref().filter(|_| chars >= check_at) {
                check_at = chars + every.chars;
                // Dropping the stream aborts the upstream request; the pending text is never sent.
                // An outage is left to the check of the complete answer, which fails open or closed.
                match moderation::check(ctx, every.run, text).await {
                    Ok(Verdict::Flagged(categories)) => {
                        return StreamOutcome::Withdrawn(moderation::flagged(&categories));
                    }
                    Ok(Verdict::Passed | Verdict::Unavailable(_)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot record a moderation check; the answer is checked when complete")
                    }
                }
            }
            match last_emit {
                None => {
                    ctx.metrics.ttft.observe(claimed_at.elapsed().as_secs_f64());
                    attempt
                        .emit(
                            EventKind::Delta,
                            json!({"text": pending}),
                            std::mem::take(&mut pending),
                            Some(Utc::now()),
                        )
                        .await;
                    last_emit = Some(Instant::now());
                }
                Some(t) if t.elapsed() >= coalesce => {
                    attempt.emit(EventKind::Delta, json!({"text": pending}), std::mem::take(&mut pending), None).await;
                    last_emit = Some(Instant::now());
                }
                Some(_) => {}
            }
        }
    }
    if !pending.is_empty() {
        attempt.emit(EventKind::Delta, json!({"text": pending}), std::mem::take(&mut pending), None).await;
    }
    // Only a finish reason followed by `[DONE]` ends an answer; a stream closed before either
    // was cut. Usage is optional: many OpenAI-compatible servers send none when streaming.
    match finish_reason {
        Some(reason) if stream.ended_with_done() => {
            StreamOutcome::Done { finish_reason: finish_reason_str(reason).into() }
        }
        reason => StreamOutcome::Failed {
            error: ProviderError::truncated(if reason.is_none() {
                "stream ended without a finish reason"
            } else {
                "stream ended without [DONE]"
            }),
        },
    }
}

fn finish_reason_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::FunctionCall => "function_call",
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
