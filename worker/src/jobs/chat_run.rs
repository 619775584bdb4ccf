//! `ChatRun`: claim the run, build the prompt, stream the answer, finish in one transaction.
//! Idempotent: a redelivered or duplicate job for a run that is finished or leased by a live
//! worker does nothing; every write is fenced on the attempt number.

use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, Data};
use async_openai::types::chat::FinishReason;
use chatq_common::{
    db::{self, runs::Outcome, usage::NewUsage},
    events::{EventKind, RunEvent},
    jobs::ChatRun,
    pricing::TokenUsage,
    provider::{ChatRequest, PromptMessage, PromptRole, ProviderError},
    tokens,
};
use chrono::Utc;
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::WorkerCtx;

/// apalis entry point. Only infrastructure failures (Postgres down) are returned as errors so
/// apalis redelivers; provider failures are recorded on the run.
pub async fn handle(job: ChatRun, ctx: Data<WorkerCtx>) -> Result<(), BoxDynError> {
    execute(&ctx, job.run_id).await.map_err(|e| {
        tracing::warn!(run.id = %job.run_id, error = %e, "chat run interrupted by an infrastructure error");
        Box::new(e) as BoxDynError
    })
}

/// Runs one attempt of a run, if it can be claimed.
pub async fn execute(ctx: &WorkerCtx, run_id: Uuid) -> Result<(), sqlx::Error> {
    let lease = ctx.config.run_lease.as_secs_f64();
    // Watch for a cancel before claiming: a cancel flagged before the claim is seen by it, one
    // published after reaches this registration.
    let cancel = ctx.cancels.register(run_id);
    let Some(run) = db::runs::claim(&ctx.pool, run_id, &ctx.worker_id, lease).await? else {
        tracing::debug!(run.id = %run_id, "run not claimable (finished, not due, or leased); skipping");
        return Ok(());
    };
    let claimed_at = Instant::now();
    ctx.metrics.runs_in_progress.inc();
    let _in_progress = scopeguard(|| ctx.metrics.runs_in_progress.dec());
    tracing::info!(run.id = %run.id, attempt = run.attempt, "run claimed");

    let mut attempt = Attempt { ctx, run_id: run.id, attempt: run.attempt, seq: run.last_seq };
    if run.cancel_requested_at.is_some() {
        return attempt.finish(Outcome::Cancelled { partial_text: String::new() }, None, claimed_at).await;
    }
    if run.attempt > 1 {
        attempt.emit(EventKind::Reset, json!({"attempt": run.attempt, "reason": "retry"}), String::new(), None).await;
    }
    attempt.emit(EventKind::Started, json!({"attempt": run.attempt}), String::new(), None).await;

    // Renew the lease while we work; losing it means another worker took over: stop.
    let lost = CancellationToken::new();
    let renewer = tokio::spawn(renew_lease(ctx.clone(), run.id, run.attempt, lost.clone(), cancel.token.clone()));
    let _stop_renewer = scopeguard(move || renewer.abort());

    let request = match build_request(ctx, &run).await? {
        Ok(r) => r,
        Err(e) => return attempt.fail(e, String::new(), claimed_at, None).await,
    };
    let started = Instant::now();
    let outcome = stream_answer(&mut attempt, &request, &lost, &cancel.token, claimed_at).await;
    let latency_ms = started.elapsed().as_millis() as i64;
    match outcome {
        StreamOutcome::Done { text, finish_reason, usage } => {
            let cost = ctx.pricing.cost(&run.model, Utc::now().date_naive(), usage);
            ctx.metrics.provider_requests.with_label_values(&["ok"]).inc();
            for (kind, n) in [("input", usage.input), ("cached_input", usage.cached_input), ("output", usage.output)] {
                ctx.metrics.tokens.with_label_values(&[&run.model, kind]).inc_by(n);
            }
            let record = NewUsage {
                kind: "chat",
                model: run.model.clone(),
                api_key_id: Some(run.api_key_id),
                assistant_id: Some(run.assistant_id),
                run_id: Some(run.id),
                document_id: None,
                input_tokens: usage.input as i64,
                cached_input_tokens: usage.cached_input as i64,
                output_tokens: usage.output as i64,
                cost_usd: cost,
                outcome: "ok".into(),
                latency_ms,
            };
            let outcome = Outcome::Completed {
                output_text: text,
                finish_reason,
                input_tokens: usage.input as i64,
                cached_input_tokens: usage.cached_input as i64,
                output_tokens: usage.output as i64,
                cost_usd: cost,
                citations: json!([]),
            };
            attempt.finish(outcome, Some(record), claimed_at).await
        }
        StreamOutcome::Failed { error, partial } => {
            ctx.metrics.provider_requests.with_label_values(&[error.code]).inc();
            let record = NewUsage {
                kind: "chat",
                model: run.model.clone(),
                api_key_id: Some(run.api_key_id),
                assistant_id: Some(run.assistant_id),
                run_id: Some(run.id),
                document_id: None,
                input_tokens: 0,
                cached_input_tokens: 0,
                output_tokens: 0,
                cost_usd: None,
                outcome: error.code.to_string(),
                latency_ms,
            };
            attempt.fail(error, partial, claimed_at, Some(record)).await
        }
        StreamOutcome::Cancelled { partial } => {
            tracing::info!(run.id = %run.id, attempt = run.attempt, "run cancelled on request");
            attempt.finish(Outcome::Cancelled { partial_text: partial }, None, claimed_at).await
        }
        StreamOutcome::LeaseLost => {
            tracing::warn!(run.id = %run.id, attempt = run.attempt, "lease lost; another worker owns the run now");
            Ok(())
        }
    }
}

/// The state of one attempt: the next event number and the fence.
struct Attempt<'a> {
    ctx: &'a WorkerCtx,
    run_id: Uuid,
    attempt: i32,
    seq: i64,
}

impl Attempt<'_> {
    async fn emit(
        &mut self,
        kind: EventKind,
        data: serde_json::Value,
        append: String,
        first_token_at: Option<chrono::DateTime<Utc>>,
    ) {
        self.seq += 1;
        let event = RunEvent { run_id: self.run_id, seq: self.seq, attempt: self.attempt, kind, data };
        self.ctx.sink.emit(event, append, first_token_at).await;
    }

    async fn fail(
        self,
        e: ProviderError,
        partial: String,
        claimed_at: Instant,
        usage: Option<NewUsage>,
    ) -> Result<(), sqlx::Error> {
        tracing::warn!(run.id = %self.run_id, attempt = self.attempt, code = e.code, detail = %e.detail, "run failed");
        let outcome = Outcome::Failed { code: e.code.to_string(), message: e.message.clone(), partial_text: partial };
        self.finish(outcome, usage, claimed_at).await
    }

    /// Flushes this run's events, then writes the final state in one transaction and
    /// publishes the terminal event. Retries briefly while Postgres is unavailable.
    async fn finish(self, outcome: Outcome, usage: Option<NewUsage>, claimed_at: Instant) -> Result<(), sqlx::Error> {
        let ctx = self.ctx;
        ctx.sink.flush().await;
        let (status, code) = match &outcome {
            Outcome::Completed { .. } => ("completed", ""),
            Outcome::Failed { code, .. } => ("failed", code.as_str()),
            Outcome::Cancelled { .. } => ("cancelled", ""),
        };
        let code = code.to_string();
        let finish = db::runs::Finish { run_id: self.run_id, attempt: self.attempt, seq: self.seq + 1, outcome, usage };
        let mut delay = Duration::from_millis(100);
        let event = loop {
            match db::runs::finish(&ctx.pool, &finish).await {
                Ok(e) => break e,
                Err(e) if db::is_unavailable(&e) && delay < Duration::from_secs(10) => {
                    tracing::warn!(run.id = %self.run_id, error = %e, "cannot finish run yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(e),
            }
        };
        match event {
            Some(event) => {
                ctx.sink.publish(&event).await;
                ctx.metrics.runs_finished.with_label_values(&[status, &code]).inc();
                ctx.metrics.run_duration.with_label_values(&[status]).observe(claimed_at.elapsed().as_secs_f64());
                tracing::info!(run.id = %self.run_id, attempt = self.attempt, status, "run finished");
            }
            None => {
                tracing::warn!(run.id = %self.run_id, attempt = self.attempt, "run changed owner before finishing; nothing written")
            }
        }
        Ok(())
    }
}

enum StreamOutcome {
    Done { text: String, finish_reason: String, usage: TokenUsage },
    Failed { error: ProviderError, partial: String },
    Cancelled { partial: String },
    LeaseLost,
}

/// Streams the completion, coalescing deltas: the first one is emitted at once, later ones at
/// most every `CHATQ_STREAM_COALESCE_MS`.
async fn stream_answer(
    attempt: &mut Attempt<'_>,
    request: &ChatRequest,
    lost: &CancellationToken,
    cancel: &CancellationToken,
    claimed_at: Instant,
) -> StreamOutcome {
    let ctx = attempt.ctx;
    let coalesce = ctx.config.stream_coalesce;
    let mut text = String::new();
    let mut pending = String::new();
    let mut last_emit: Option<Instant> = None;
    let mut finish_reason: Option<FinishReason> = None;
    let mut usage: Option<TokenUsage> = None;

    let mut stream = tokio::select! {
        opened = ctx.provider.stream_chat(request) => match opened {
            Ok(s) => s.stream,
            Err(error) => return StreamOutcome::Failed { error, partial: text },
        },
        _ = lost.cancelled() => return StreamOutcome::LeaseLost,
        _ = cancel.cancelled() => return StreamOutcome::Cancelled { partial: text },
    };
    loop {
        let flush_at = last_emit.map(|t| t + coalesce).filter(|_| !pending.is_empty());
        let next = tokio::select! {
            item = tokio::time::timeout(ctx.provider.idle_timeout, stream.next()) => item,
            _ = lost.cancelled() => return StreamOutcome::LeaseLost,
            // Dropping the stream aborts the upstream request; what was written is kept.
            _ = cancel.cancelled() => {
                if !pending.is_empty() {
                    attempt.emit(EventKind::Delta, json!({"text": pending}), std::mem::take(&mut pending), None).await;
                }
                return StreamOutcome::Cancelled { partial: text };
            }
            _ = sleep_until_opt(flush_at) => {
                attempt.emit(EventKind::Delta, json!({"text": pending}), std::mem::take(&mut pending), None).await;
                last_emit = Some(Instant::now());
                continue;
            }
        };
        let item = match next {
            Err(_) => {
                return StreamOutcome::Failed {
                    error: ProviderError::timeout(ctx.provider.idle_timeout),
                    partial: text + &pending,
                };
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return StreamOutcome::Failed { error: ProviderError::classify(&e, None), partial: text + &pending };
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        if let Some(u) = &item.usage {
            let cached = u.prompt_tokens_details.as_ref().and_then(|d| d.cached_tokens).unwrap_or(0);
            usage = Some(TokenUsage {
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
    // A stream that ends without a finish reason or usage was cut: never report it as success.
    match (finish_reason, usage) {
        (Some(reason), Some(usage)) => {
            StreamOutcome::Done { text, finish_reason: finish_reason_str(reason).into(), usage }
        }
        (reason, usage) => StreamOutcome::Failed {
            error: ProviderError::truncated(format!(
                "stream ended without {}",
                if reason.is_none() {
                    "a finish reason"
                } else if usage.is_none() {
                    "usage"
                } else {
                    "[DONE]"
                }
            )),
            partial: text,
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

/// The prompt: instructions, then the newest history that fits the token budget, oldest first.
async fn build_request(
    ctx: &WorkerCtx,
    run: &db::runs::Run,
) -> Result<Result<ChatRequest, ProviderError>, sqlx::Error> {
    let Some(assistant) = db::assistants::get_including_deleted(&ctx.pool, run.assistant_id).await? else {
        return Ok(Err(ProviderError {
            class: chatq_common::provider::ErrorClass::Permanent,
            code: "internal",
            message: "The assistant of this run no longer exists.".into(),
            detail: "assistant missing".into(),
            status: None,
            retry_after: None,
        }));
    };
    let recent = db::messages::recent_until(&ctx.pool, run.thread_id, run.user_message_id, 500).await?;
    let mut budget = ctx.config.history_max_tokens.saturating_sub(tokens::message_tokens(&assistant.instructions));
    let mut history = Vec::new();
    for (i, m) in recent.into_iter().enumerate() {
        let cost = tokens::message_tokens(&m.content);
        // The message being answered is always sent, even alone over budget.
        if i > 0 && cost > budget {
            break;
        }
        budget = budget.saturating_sub(cost);
        let role = if m.role == "assistant" { PromptRole::Assistant } else { PromptRole::User };
        history.push(PromptMessage { role, content: m.content });
    }
    history.reverse();
    let mut messages = Vec::with_capacity(history.len() + 1);
    if !assistant.instructions.trim().is_empty() {
        messages.push(PromptMessage { role: PromptRole::System, content: assistant.instructions.clone() });
    }
    messages.extend(history);
    Ok(Ok(ChatRequest {
        model: run.model.clone(),
        messages,
        temperature: assistant.temperature,
        max_output_tokens: assistant.max_output_tokens.map(|n| n as u32),
    }))
}

async fn renew_lease(ctx: WorkerCtx, run_id: Uuid, attempt: i32, lost: CancellationToken, cancel: CancellationToken) {
    let every = ctx.config.run_lease / 3;
    loop {
        tokio::time::sleep(every).await;
        // The fallback for a cancel signal this process missed.
        if let Ok(true) = db::runs::cancel_requested(&ctx.pool, run_id).await {
            cancel.cancel();
        }
        match db::runs::renew_lease(&ctx.pool, run_id, attempt, ctx.config.run_lease.as_secs_f64()).await {
            Ok(true) => {}
            Ok(false) => {
                lost.cancel();
                return;
            }
            // Postgres unreachable: keep trying; the lease lasts three renewal periods.
            Err(e) => tracing::warn!(run.id = %run_id, error = %e, "cannot renew lease"),
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
