//! `ChatRun`: claim the run, build the prompt, stream the answer, finish in one transaction.
//! Idempotent: a redelivered or duplicate job for a run that is finished or leased by a live
//! worker does nothing; every write is fenced on the attempt number.

use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, Data};
use async_openai::types::chat::FinishReason;
use chatq_common::{
    db::{self, runs::Outcome, usage::NewUsage},
    domain::{MessageRole, ModerationMode, RunStatus, UsageKind, UsageOutcome},
    events::{EventKind, RunEvent},
    jobs::{self, ChatRun},
    pricing::TokenUsage,
    provider::{ChatRequest, ErrorClass, PromptMessage, PromptRole, ProviderError},
    retrieval::{self, Source},
    tokens,
};
use chrono::Utc;
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{WorkerCtx, breaker::Admission};

/// apalis entry point. Only infrastructure failures (Postgres down) are returned as errors so
/// apalis redelivers; provider failures are recorded on the run.
pub async fn handle(job: ChatRun, ctx: Data<WorkerCtx>) -> Result<(), BoxDynError> {
    let queue = ctx.queues.chat_runs();
    let result = execute(&ctx, job.run_id).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.jobs.with_label_values(&[&queue, outcome]).inc();
    result.map_err(|e| {
        tracing::warn!(run.id = %job.run_id, error = %e, "chat run interrupted by an infrastructure error");
        Box::new(e) as BoxDynError
    })
}

/// Runs one attempt of a run, if it can be claimed.
pub async fn execute(ctx: &WorkerCtx, run_id: Uuid) -> Result<(), sqlx::Error> {
    let probe = match ctx.breaker.admit() {
        Admission::Wait(retry_in) => return wait_for_provider(ctx, run_id, retry_in).await,
        Admission::Probe => true,
        Admission::Allow => false,
    };
    // A probe that ends without a provider verdict (not claimable, moderation refusal, an error)
    // must free the probe slot, or the breaker would wait for it forever. After a verdict the
    // slot is already free, so releasing it again is harmless.
    let breaker = ctx.breaker.clone();
    let _probe_slot = scopeguard(move || {
        if probe {
            breaker.abandon_probe();
        }
    });
    // Watch for a cancel before claiming: a cancel flagged before the claim is seen by it, one
    // published after reaches this registration.
    let cancel = ctx.cancels.register(run_id);
    let Some(run) = claim(ctx, run_id).await? else {
        return Ok(());
    };
    let claimed_at = Instant::now();
    if run.attempt == 1 {
        let wait = (Utc::now() - run.created_at).num_milliseconds().max(0) as f64 / 1000.0;
        ctx.metrics.queue_wait.with_label_values(&[&ctx.queues.chat_runs()]).observe(wait);
    }
    ctx.metrics.runs_in_progress.inc();
    let _in_progress = scopeguard(|| ctx.metrics.runs_in_progress.dec());
    tracing::info!(run.id = %run.id, attempt = run.attempt, "run claimed");

    let mut attempt = Attempt { ctx, run_id: run.id, attempt: run.attempt, seq: run.last_seq };
    if run.cancel_requested_at.is_some() {
        return attempt.finish(Outcome::Cancelled { partial_text: String::new() }, None, claimed_at).await;
    }
    // A redelivery that beat the reconciler to a run whose workers kept dying: same bound.
    if run.attempt > ctx.config.run_max_attempts {
        let outcome = Outcome::Failed {
            code: db::runs::EXHAUSTED_CODE,
            message: db::runs::EXHAUSTED_MESSAGE.into(),
            partial_text: String::new(),
        };
        return attempt.finish(outcome, None, claimed_at).await;
    }
    if run.attempt > 1 {
        // The partial answer of the previous attempt is void: clients clear it on this event.
        let reason = if run.previous_status == Some(RunStatus::InProgress) { "worker_lost" } else { "retry" };
        attempt.emit(EventKind::Reset, json!({"attempt": run.attempt, "reason": reason}), String::new(), None).await;
    }
    attempt.emit(EventKind::Started, json!({"attempt": run.attempt}), String::new(), None).await;

    // Renew the lease while we work; losing it means another worker took over: stop.
    let lost = CancellationToken::new();
    let renewer = tokio::spawn(renew_lease(ctx.clone(), run.id, run.attempt, lost.clone(), cancel.token.clone()));
    let _stop_renewer = scopeguard(move || renewer.abort());

    if let Some(error) = check_input(ctx, &run).await? {
        if error.class == ErrorClass::Retryable && run.attempt < ctx.config.run_max_attempts {
            return attempt.retry(error, None).await;
        }
        return attempt.fail(error, String::new(), claimed_at, None).await;
    }
    let (request, sources) = match build_request(ctx, &run).await? {
        Ok(r) => r,
        Err(e) => return attempt.fail(e, String::new(), claimed_at, None).await,
    };
    let started = Instant::now();
    let outcome = stream_answer(&mut attempt, &request, &lost, &cancel.token, claimed_at).await;
    let latency_ms = started.elapsed().as_millis() as i64;
    let changed = match &outcome {
        StreamOutcome::Done { .. } => ctx.breaker.success(),
        StreamOutcome::Failed { error, .. } if error.class == ErrorClass::Retryable => ctx.breaker.failure(),
        // A permanent error is an answer: the provider is up.
        StreamOutcome::Failed { .. } => ctx.breaker.success(),
        // No verdict on the provider.
        StreamOutcome::Cancelled { .. } | StreamOutcome::LeaseLost | StreamOutcome::Released => false,
    };
    if changed {
        ctx.breaker_changed().await;
    }
    match outcome {
        StreamOutcome::Done { text, finish_reason, usage } => {
            let cost = ctx.pricing.cost(&run.model, Utc::now().date_naive(), usage);
            ctx.metrics.provider_requests.with_label_values(&[UsageOutcome::Ok]).inc();
            for (kind, n) in [("input", usage.input), ("cached_input", usage.cached_input), ("output", usage.output)] {
                ctx.metrics.tokens.with_label_values(&[&run.model, kind]).inc_by(n);
            }

            let record = chat_usage(&run, UsageOutcome::Ok, usage, cost, latency_ms);
            let cited = retrieval::citations(&text, &sources);
            for c in &cited {
                attempt.emit(EventKind::Citation, json!(c), String::new(), None).await;
            }
            let outcome = Outcome::Completed {
                output_text: text,
                finish_reason,
                input_tokens: usage.input as i64,
                cached_input_tokens: usage.cached_input as i64,
                output_tokens: usage.output as i64,
                cost_usd: cost,
                citations: json!(cited),
            };
            attempt.finish(outcome, Some(record), claimed_at).await
        }
        StreamOutcome::Failed { error, partial } => {
            ctx.metrics.provider_requests.with_label_values(&[error.code]).inc();
            let retry = error.class == ErrorClass::Retryable && run.attempt < ctx.config.run_max_attempts;
            let record = chat_usage(&run, error.code.into(), TokenUsage::default(), None, latency_ms);
            if retry {
                return attempt.retry(error, Some(record)).await;
            }
            attempt.fail(error, partial, claimed_at, Some(record)).await
        }
        StreamOutcome::Released => attempt.release().await,
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

/// The breaker is open: the run waits in `queued` (no attempt used) and is looked at again when
/// the breaker may half-open; past `CHATQ_PROVIDER_MAX_WAIT_SECS` from its submission it fails.
async fn wait_for_provider(ctx: &WorkerCtx, run_id: Uuid, retry_in: Duration) -> Result<(), sqlx::Error> {
    let Some(run) = db::runs::get(&ctx.pool, run_id).await? else { return Ok(()) };
    if run.status != RunStatus::Queued {
        return Ok(());
    }
    let waited = (Utc::now() - run.created_at).to_std().unwrap_or_default();
    let max_wait = ctx.config.provider_max_wait;
    if waited >= max_wait {
        let Some(run) = claim(ctx, run_id).await? else { return Ok(()) };
        let attempt = Attempt { ctx, run_id: run.id, attempt: run.attempt, seq: run.last_seq };
        let error = ProviderError::breaker_open(max_wait);
        return attempt.fail(error, String::new(), Instant::now(), None).await;
    }
    let delay = retry_in.min(max_wait - waited) + Duration::from_millis(50);
    let reason = format!("The AI provider is unavailable; waiting for it to recover (up to {} s).", max_wait.as_secs());
    if db::runs::defer(&ctx.pool, run_id, delay.as_secs_f64(), &reason).await? {
        let task_id = format!("{run_id}-w{}", Utc::now().timestamp_millis());
        if let Err(e) = jobs::push_chat_run_after(&ctx.chat_queue(), run_id, task_id, delay).await {
            tracing::warn!(run.id = %run_id, error = %e, "cannot push the waiting run; the reconciler will");
        }
    }
    Ok(())
}

/// Claims the run. A job delivered a little before the run's `next_attempt_at` (apalis
/// schedules by the whole second) waits for it, or is pushed again when it is further away,
/// so an early delivery never loses the retry.
async fn claim(ctx: &WorkerCtx, run_id: Uuid) -> Result<Option<db::runs::Run>, sqlx::Error> {
    let lease = ctx.config.run_lease.as_secs_f64();
    for _ in 0..2 {
        if let Some(run) = db::runs::claim(&ctx.pool, run_id, &ctx.worker_id, lease).await? {
            return Ok(Some(run));
        }
        let Some(run) = db::runs::get(&ctx.pool, run_id).await? else { return Ok(None) };
        let wait = match (run.status, run.next_attempt_at) {
            (RunStatus::Queued, Some(at)) => (at - Utc::now()).to_std().unwrap_or_default(),
            _ => {
                tracing::debug!(run.id = %run_id, status = %run.status, "run not claimable (finished or leased); skipping");
                return Ok(None);
            }
        };
        if wait > Duration::from_secs(2) {
            let task_id = format!("{run_id}-{}", Utc::now().timestamp_millis());
            if let Err(e) = jobs::push_chat_run_after(&ctx.chat_queue(), run_id, task_id, wait).await {
                tracing::warn!(run.id = %run_id, error = %e, "cannot push early-delivered run again; the reconciler will");
            }
            return Ok(None);
        }
        tokio::time::sleep(wait).await;
    }
    Ok(None)
}

/// The usage record of one chat call of `run`.
fn chat_usage(
    run: &db::runs::Run,
    outcome: UsageOutcome,
    usage: TokenUsage,
    cost_usd: Option<f64>,
    latency_ms: i64,
) -> NewUsage {
    NewUsage {
        kind: UsageKind::Chat,
        model: run.model.clone(),
        api_key_id: Some(run.api_key_id),
        assistant_id: Some(run.assistant_id),
        run_id: Some(run.id),
        document_id: None,
        input_tokens: usage.input as i64,
        cached_input_tokens: usage.cached_input as i64,
        output_tokens: usage.output as i64,
        cost_usd,
        outcome,
        latency_ms,
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
        tracing::warn!(run.id = %self.run_id, attempt = self.attempt, code = %e.code, detail = %e.detail, "run failed");
        let outcome = Outcome::Failed { code: e.code, message: e.message.clone(), partial_text: partial };
        self.finish(outcome, usage, claimed_at).await
    }

    /// Puts the run back in the queue after a retryable error: the events so far are flushed
    /// (the next attempt continues the sequence after a `run.reset`), the failed call is
    /// recorded, the run waits in `queued` with a visible reason, and a delayed job is pushed.
    async fn retry(self, e: ProviderError, usage: Option<NewUsage>) -> Result<(), sqlx::Error> {
        let ctx = self.ctx;
        ctx.sink.flush().await;
        if let Some(usage) = &usage {
            db::usage::insert(&ctx.pool, usage).await?;
        }
        let delay = crate::retry::delay(self.attempt, ctx.config.retry_base, ctx.config.retry_max, e.retry_after);
        let reason = format!(
            "Retrying after a provider error ({}): attempt {} of {} in {:.1} s.",
            e.code,
            self.attempt + 1,
            ctx.config.run_max_attempts,
            delay.as_secs_f64()
        );
        if !db::runs::requeue(&ctx.pool, self.run_id, self.attempt, delay.as_secs_f64(), &reason).await? {
            tracing::warn!(run.id = %self.run_id, attempt = self.attempt, "run changed owner before it could be retried");
            return Ok(());
        }
        ctx.metrics.run_retries.with_label_values(&[e.code]).inc();
        tracing::info!(run.id = %self.run_id, attempt = self.attempt, code = %e.code, detail = %e.detail,
            delay_ms = delay.as_millis() as u64, "run will be retried");
        // Short delays are waited out by the claim (apalis schedules by the whole second).
        let push_delay = if delay <= Duration::from_secs(2) { Duration::ZERO } else { delay };
        let task_id = format!("{}-a{}", self.run_id, self.attempt + 1);
        if let Err(err) = jobs::push_chat_run_after(&ctx.chat_queue(), self.run_id, task_id, push_delay).await {
            tracing::warn!(run.id = %self.run_id, error = %err, "cannot push the retry; the reconciler will");
        }
        Ok(())
    }

    /// Gives the run back on shutdown: queued again at once, for another worker. The next
    /// attempt starts over after a `run.reset`.
    async fn release(self) -> Result<(), sqlx::Error> {
        let ctx = self.ctx;
        ctx.sink.flush().await;
        let reason = "The worker answering was restarted; the answer starts again.";
        if db::runs::requeue(&ctx.pool, self.run_id, self.attempt, 0.0, reason).await? {
            let task_id = format!("{}-s{}", self.run_id, self.attempt);
            if let Err(e) = jobs::push_chat_run(&ctx.chat_queue(), self.run_id, task_id).await {
                tracing::warn!(run.id = %self.run_id, error = %e, "cannot push released run; the reconciler will");
            }
            tracing::info!(run.id = %self.run_id, attempt = self.attempt, "run released at shutdown");
        }
        Ok(())
    }

    /// Flushes this run's events, then writes the final state in one transaction and
    /// publishes the terminal event. Retries briefly while Postgres is unavailable.
    async fn finish(self, outcome: Outcome, usage: Option<NewUsage>, claimed_at: Instant) -> Result<(), sqlx::Error> {
        let ctx = self.ctx;
        ctx.sink.flush().await;
        let (status, code) = match &outcome {
            Outcome::Completed { .. } => (RunStatus::Completed, ""),
            Outcome::Failed { code, .. } => (RunStatus::Failed, code.as_str()),
            Outcome::Cancelled { .. } => (RunStatus::Cancelled, ""),
        };
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
                ctx.metrics.runs_finished.with_label_values(&[status.as_str(), code]).inc();
                // Counted once the usage record is committed, with its value, so the counters
                // add up to `usage_records` (an unknown model is counted apart, never as free).
                if let Some(u) = finish.usage.as_ref().filter(|u| u.outcome.is_ok()) {
                    match u.cost_usd {
                        Some(c) => ctx.metrics.cost_usd.with_label_values(&[&u.model]).inc_by(c),
                        None => ctx.metrics.unpriced_requests.with_label_values(&[&u.model]).inc(),
                    }
                }
                ctx.metrics.run_duration.with_label_values(&[status]).observe(claimed_at.elapsed().as_secs_f64());
                tracing::info!(run.id = %self.run_id, attempt = self.attempt, status = %status, "run finished");
            }
            None => {
                tracing::warn!(run.id = %self.run_id, attempt = self.attempt, "run changed owner before finishing; nothing written")
            }
        }
        Ok(())
    }
}

enum StreamOutcome {
    Done {
        text: String,
        finish_reason: String,
        usage: TokenUsage,
    },
    Failed {
        error: ProviderError,
        partial: String,
    },
    Cancelled {
        partial: String,
    },
    LeaseLost,
    /// The worker is shutting down and its grace period is over.
    Released,
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
            Ok(s) => s,
            Err(error) => return StreamOutcome::Failed { error, partial: text },
        },
        _ = lost.cancelled() => return StreamOutcome::LeaseLost,
        _ = ctx.release.cancelled() => return StreamOutcome::Released,
        _ = cancel.cancelled() => return StreamOutcome::Cancelled { partial: text },
    };
    loop {
        let flush_at = last_emit.map(|t| t + coalesce).filter(|_| !pending.is_empty());
        let next = tokio::select! {
            item = tokio::time::timeout(ctx.provider.idle_timeout, stream.next()) => item,
            _ = lost.cancelled() => return StreamOutcome::LeaseLost,
            _ = ctx.release.cancelled() => return StreamOutcome::Released,
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
                    partial: text,
                };
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return StreamOutcome::Failed { error: ProviderError::classify(&e, None), partial: text };
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

/// Input moderation (assistant `moderation: input`): the user message is checked before any
/// generation. `Some(error)` stops the run: flagged (permanent, `moderation_flagged` with the
/// categories), or the endpoint is down and `CHATQ_MODERATION_FAIL_CLOSED` is set (retried like
/// any provider outage). Fail-open answers unchecked and counts it.
async fn check_input(ctx: &WorkerCtx, run: &db::runs::Run) -> Result<Option<ProviderError>, sqlx::Error> {
    let Some(assistant) = db::assistants::get_including_deleted(&ctx.pool, run.assistant_id).await? else {
        return Ok(None);
    };
    if assistant.moderation != ModerationMode::Input {
        return Ok(None);
    }
    let Some(message) = db::messages::get(&ctx.pool, run.user_message_id).await? else { return Ok(None) };
    let started = Instant::now();
    let verdict = ctx.provider.moderate(&message.content).await;
    let outcome = match &verdict {
        Ok(v) if v.flagged => UsageOutcome::Flagged,
        Ok(_) => UsageOutcome::Ok,
        Err(e) => e.code.into(),
    };
    let model = chatq_common::provider::MODERATION_MODEL;
    let record = NewUsage {
        kind: UsageKind::Moderation,
        model: model.to_string(),
        api_key_id: Some(run.api_key_id),
        assistant_id: Some(run.assistant_id),
        run_id: Some(run.id),
        document_id: None,
        input_tokens: 0,
        cached_input_tokens: 0,
        output_tokens: 0,
        cost_usd: ctx.pricing.cost(model, Utc::now().date_naive(), TokenUsage::default()),
        outcome,
        latency_ms: started.elapsed().as_millis() as i64,
    };
    db::usage::insert(&ctx.pool, &record).await?;
    match verdict {
        Ok(v) if v.flagged => {
            ctx.metrics.moderation_checks.with_label_values(&["flagged"]).inc();
            Ok(Some(ProviderError::moderation_flagged(&v.categories)))
        }
        Ok(_) => {
            ctx.metrics.moderation_checks.with_label_values(&["passed"]).inc();
            Ok(None)
        }
        Err(e) if ctx.config.moderation_fail_closed => {
            ctx.metrics.moderation_checks.with_label_values(&["unavailable_closed"]).inc();
            tracing::warn!(run.id = %run.id, detail = %e.detail, "moderation unavailable; refusing to answer (fail-closed)");
            Ok(Some(e.moderation_unavailable()))
        }
        Err(e) => {
            ctx.metrics.moderation_checks.with_label_values(&["unavailable_open"]).inc();
            tracing::warn!(run.id = %run.id, detail = %e.detail, "moderation unavailable; answering unchecked (fail-open)");
            Ok(None)
        }
    }
}

/// The prompt: instructions, the numbered sources retrieved from the assistant's knowledge
/// bases for the message being answered, then the newest history that fits the token budget,
/// oldest first.
async fn build_request(
    ctx: &WorkerCtx,
    run: &db::runs::Run,
) -> Result<Result<(ChatRequest, Vec<Source>), ProviderError>, sqlx::Error> {
    let Some(assistant) = db::assistants::get_including_deleted(&ctx.pool, run.assistant_id).await? else {
        return Ok(Err(ProviderError::assistant_missing()));
    };
    let recent = db::messages::recent_until(&ctx.pool, run.thread_id, run.user_message_id, 500).await?;
    let question = recent.first().map(|m| m.content.clone()).unwrap_or_default();
    let sources = retrieve(ctx, run, &assistant.knowledge_base_ids, &question).await?;
    let sources_prompt = (!sources.is_empty()).then(|| retrieval::sources_prompt(&sources));
    let mut budget = ctx.config.history_max_tokens.saturating_sub(tokens::message_tokens(&assistant.instructions));
    if let Some(p) = &sources_prompt {
        budget = budget.saturating_sub(tokens::message_tokens(p));
    }
    let mut history = Vec::new();
    for (i, m) in recent.into_iter().enumerate() {
        let cost = tokens::message_tokens(&m.content);
        // The message being answered is always sent, even alone over budget.
        if i > 0 && cost > budget {
            break;
        }
        budget = budget.saturating_sub(cost);
        let role = match m.role {
            MessageRole::Assistant => PromptRole::Assistant,
            MessageRole::User => PromptRole::User,
        };
        history.push(PromptMessage { role, content: m.content });
    }
    history.reverse();
    let mut messages = Vec::with_capacity(history.len() + 1);
    if !assistant.instructions.trim().is_empty() {
        messages.push(PromptMessage { role: PromptRole::System, content: assistant.instructions.clone() });
    }
    if let Some(p) = sources_prompt {
        messages.push(PromptMessage { role: PromptRole::System, content: p });
    }
    messages.extend(history);
    let request = ChatRequest {
        model: run.model.clone(),
        messages,
        temperature: assistant.temperature,
        max_output_tokens: assistant.max_output_tokens.map(|n| n as u32),
    };
    Ok(Ok((request, sources)))
}

/// Hybrid search over the assistant's knowledge bases (grouped by embedding model), within
/// `CHATQ_RETRIEVAL_TOP_K` and `CHATQ_RETRIEVAL_MAX_TOKENS`. The query embedding is recorded
/// as usage of the run. A failed query embedding degrades to keyword search.
async fn retrieve(
    ctx: &WorkerCtx,
    run: &db::runs::Run,
    kb_ids: &[Uuid],
    question: &str,
) -> Result<Vec<Source>, sqlx::Error> {
    if kb_ids.is_empty() || question.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut groups: Vec<((String, usize), Vec<Uuid>)> = Vec::new();
    for id in kb_ids {
        let Some(kb) = db::knowledge::get_kb(&ctx.pool, *id).await? else { continue };
        let key = (kb.embedding_model, kb.embedding_dims as usize);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, ids)) => ids.push(*id),
            None => groups.push((key, vec![*id])),
        }
    }
    let (k, budget) = (ctx.config.retrieval_top_k, ctx.config.retrieval_max_tokens);
    let mut all = Vec::new();
    for ((model, dims), ids) in groups {
        let started = Instant::now();
        let (found, stats) = match retrieval::search(
            &ctx.pool,
            &ctx.provider,
            &ctx.vectors,
            &ids,
            (&model, dims),
            question,
            k,
            Some(budget),
        )
        .await
        {
            Ok(r) => r,
            Err(retrieval::RetrievalError::Db(e)) => return Err(e),
            // This job's error type is `sqlx::Error`: an index failure fails the job (retried)
            // as it always has.
            Err(e @ retrieval::RetrievalError::Index(_)) => return Err(sqlx::Error::Protocol(e.to_string())),
        };
        let usage = TokenUsage { input: stats.embedding_tokens, cached_input: 0, output: 0 };
        let record = NewUsage {
            kind: UsageKind::Embedding,
            model: model.clone(),
            api_key_id: Some(run.api_key_id),
            assistant_id: Some(run.assistant_id),
            run_id: Some(run.id),
            document_id: None,
            input_tokens: stats.embedding_tokens as i64,
            cached_input_tokens: 0,
            output_tokens: 0,
            cost_usd: ctx.pricing.cost(&model, Utc::now().date_naive(), usage),
            outcome: stats.embedding_error.as_ref().map_or(UsageOutcome::Ok, |e| e.code.into()),
            latency_ms: started.elapsed().as_millis() as i64,
        };
        if let Err(e) = db::usage::insert(&ctx.pool, &record).await {
            tracing::warn!(run.id = %run.id, error = %e, "cannot record query embedding usage");
        }
        all.extend(found);
    }
    all.sort_by(|a, b| b.score.total_cmp(&a.score));
    all.truncate(k);
    tracing::debug!(run.id = %run.id, sources = all.len(), "sources retrieved");
    Ok(all)
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
