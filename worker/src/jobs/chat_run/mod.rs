//! `ChatRun`: admit (circuit breaker), claim the run, check and build the prompt, stream the
//! answer, finish in one transaction. Idempotent: a redelivered or duplicate job for a run that
//! is finished or leased by a live worker does nothing; every write is fenced on the attempt
//! number. The steps live in the submodules; this one holds the job entry points and the claim.

mod attempt;
mod lease;
mod moderation;
pub mod prompt;
mod stream;

use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, Data};
use chatq_common::{
    config::Config,
    db::{self, runs::Outcome, usage::NewUsage},
    domain::{RunStatus, UsageKind, UsageOutcome},
    events::EventKind,
    jobs::{self, ChatRun},
    pricing::TokenUsage,
    provider::{ChatRequest, ErrorClass, ProviderError},
    redis_formats::run_lease,
    retrieval, tokens,
};
use chrono::Utc;
use scopeguard::defer;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use self::{
    attempt::Attempt,
    stream::{Received, StreamOutcome},
};
use crate::{
    WorkerCtx,
    breaker::Admission,
    jobs::{Job, JobError},
};

impl Job for ChatRun {
    fn concurrency(config: &Config) -> usize {
        config.worker.chat_concurrency
    }

    fn poll_interval(config: &Config) -> Duration {
        config.worker.chat_poll_interval
    }

    async fn recover(ctx: &WorkerCtx) -> Result<usize, sqlx::Error> {
        crate::reconciler::recover_runs(ctx).await
    }
}

/// apalis entry point. Only infrastructure failures (Postgres down) are returned as errors so
/// apalis redelivers; provider failures are recorded on the run.
#[tracing::instrument(skip_all, fields(job.queue = %ctx.queues.chat_runs()))]
pub async fn handle(job: ChatRun, ctx: Data<WorkerCtx>) -> Result<(), BoxDynError> {
    let result = execute(&ctx, job.run_id).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.jobs.with_label_values(&[&ctx.queues.chat_runs(), outcome]).inc();
    result.map_err(|e| {
        tracing::warn!(run.id = %job.run_id, error = %e, "chat run interrupted by an infrastructure error");
        Box::new(e) as BoxDynError
    })
}

/// Runs one attempt of a run, if it can be claimed.
#[tracing::instrument(skip_all, fields(run.id = %run_id, attempt = tracing::field::Empty, upstream = tracing::field::Empty))]
pub async fn execute(ctx: &WorkerCtx, run_id: Uuid) -> Result<(), sqlx::Error> {
    // The run's routes decide which breaker admits it: read it before the claim, so that a run
    // whose every remaining upstream is down waits without using an attempt.
    let Some(current) = db::runs::get(&ctx.pool, run_id).await? else { return Ok(()) };
    if current.status.is_terminal() {
        return Ok(());
    }
    let routes = ctx.upstreams.routes(&current);
    if routes.is_empty() {
        return fail_unrouted(ctx, run_id).await;
    }
    let (route_index, probe) = match admit(ctx, &routes, current.route) {
        Ok(admitted) => admitted,
        Err(retry_in) => return wait_for_provider(ctx, run_id, retry_in).await,
    };
    let route = &routes[route_index];
    let upstream = ctx.upstreams.get(route.upstream);
    tracing::Span::current().record("upstream", upstream.name.as_str());
    // A probe that ends without a provider verdict (not claimable, moderation refusal, an error)
    // must free the probe slot, or the breaker would wait for it forever. After a verdict the
    // slot is already free, so releasing it again is harmless.
    defer! {
        if probe {
            upstream.breaker.abandon_probe();
        }
    }
    // Watch for a cancel before claiming: a cancel flagged before the claim is seen by it, one
    // published after reaches this registration.
    let cancel = ctx.cancels.register(run_id);
    let Some(mut run) = claim(ctx, run_id).await? else {
        return Ok(());
    };
    let claimed_at = Instant::now();
    if run.attempt == 1 {
        let wait = (Utc::now() - run.created_at).num_milliseconds().max(0) as f64 / 1000.0;
        ctx.metrics.queue_wait.with_label_values(&[&ctx.queues.chat_runs()]).observe(wait);
    }
    ctx.metrics.runs_in_progress.inc();
    defer! { ctx.metrics.runs_in_progress.dec(); }
    tracing::Span::current().record("attempt", run.attempt);
    tracing::info!("run claimed");

    // Past the run's current route (its upstream's breaker is open): this attempt is the
    // first on the route it moves to. The run names the model and upstream asked from now on.
    let route_index = route_index.max(run.route.max(0) as usize).min(routes.len() - 1);
    let (route, upstream) = (&routes[route_index], ctx.upstreams.get(routes[route_index].upstream));
    if route_index as i32 != run.route || run.model != route.model || run.upstream.as_deref() != Some(&upstream.name) {
        let since = if route_index as i32 == run.route { run.route_attempt } else { run.attempt };
        if !db::runs::set_route(&ctx.pool, run.id, run.attempt, route_index as i32, &route.model, &upstream.name, since)
            .await?
        {
            return Ok(());
        }
        if route_index as i32 != run.route {
            tracing::info!(model = %route.model, "run moved to a fallback route: the upstream before is unavailable");
            ctx.metrics.run_fallbacks.with_label_values(&[run.upstream.as_deref().unwrap_or(""), &upstream.name]).inc();
        }
        (run.route, run.model, run.upstream, run.route_attempt) =
            (route_index as i32, route.model.clone(), Some(upstream.name.clone()), since);
    }
    let has_fallback = route_index + 1 < routes.len();
    let attempts = Attempts { on_route: run.attempt - run.route_attempt + 1, max: ctx.config.runs.max_attempts };

    let mut attempt = Attempt::new(ctx, &run);
    if run.cancel_requested_at.is_some() {
        return attempt.finish(Outcome::Cancelled { partial_text: String::new() }, None, claimed_at).await;
    }
    // A redelivery that beat the reconciler to a run whose workers kept dying: same bound.
    if attempts.on_route > attempts.max {
        let outcome = Outcome::Failed {
            code: db::runs::EXHAUSTED_CODE,
            message: db::runs::EXHAUSTED_MESSAGE.into(),
            partial_text: String::new(),
        };
        return attempt.finish(outcome, None, claimed_at).await;
    }
    let (model, upstream_name) = (run.model.clone(), upstream.name.clone());
    if run.attempt > 1 {
        // The partial answer of the previous attempt is void: clients clear it on this event.
        let reason = if run.route > 0 && run.route_attempt == run.attempt {
            "fallback"
        } else if run.previous_status == Some(RunStatus::InProgress) {
            "worker_lost"
        } else {
            "retry"
        };
        let data = json!({"attempt": run.attempt, "reason": reason, "model": model, "upstream": upstream_name});
        attempt.emit(EventKind::Reset, data, String::new(), None).await;
    }
    let data = json!({"attempt": run.attempt, "model": model, "upstream": upstream_name});
    attempt.emit(EventKind::Started, data, String::new(), None).await;

    // Renew the lease while we work; losing it means another worker took over: stop.
    let lost = CancellationToken::new();
    let renewer = tokio::spawn(
        lease::renew(ctx.clone(), run.id, run.attempt, lost.clone(), cancel.token.clone()).in_current_span(),
    );
    defer! { renewer.abort(); }

    let moderation = moderation::mode(ctx, &run).await?;
    if let Some(error) = moderation::check_input(ctx, &run, moderation).await? {
        if error.class == ErrorClass::Retryable && attempts.left() {
            return attempt.retry(error, None).await;
        }
        return attempt.fail(error, String::new(), claimed_at, None).await;
    }
    let (request, sources) = match prompt::prepare(ctx, &run).await {
        Ok(r) => r,
        Err(JobError::Permanent(e)) => return attempt.fail(e, String::new(), claimed_at, None).await,
        Err(JobError::Transient(e)) => return Err(e),
    };
    let started = Instant::now();
    let mut received = Received::default();
    let every = ctx.config.provider.moderation_output_every_chars;
    let check_every =
        (moderation.checks_output() && every > 0).then_some(stream::CheckEvery { run: &run, chars: every });
    let provider = &upstream.provider;
    let outcome = stream::stream_answer(
        &mut attempt,
        provider,
        &request,
        &mut received,
        &lost,
        &cancel.token,
        claimed_at,
        check_every,
    )
    .await;
    let latency_ms = started.elapsed().as_millis() as i64;
    let breaker = &upstream.breaker;
    let changed = match &outcome {
        StreamOutcome::Done { .. } => breaker.success(),
        StreamOutcome::Failed { error, .. } if error.class == ErrorClass::Retryable => breaker.failure(),
        // A permanent error is an answer: the provider is up.
        StreamOutcome::Failed { .. } => breaker.success(),
        // No verdict on the provider.
        StreamOutcome::Cancelled | StreamOutcome::LeaseLost | StreamOutcome::Released | StreamOutcome::Withdrawn(_) => {
            false
        }
    };
    if changed {
        ctx.breaker_changed(upstream).await;
    }
    if !matches!(outcome, StreamOutcome::Cancelled | StreamOutcome::LeaseLost | StreamOutcome::Released) {
        ctx.metrics.provider_latency.with_label_values(&[&upstream.name]).observe(latency_ms as f64 / 1000.0);
    }
    let call = Call { run: &run, upstream: &upstream.name, request: &request, received: &received, latency_ms };
    match outcome {
        StreamOutcome::Done { finish_reason } => {
            let (usage, estimated) = call.tokens();
            if estimated {
                tracing::info!("the provider sent no usage; the answer's tokens are estimated");
            }
            let cost = ctx.pricing.cost(&run.model, Utc::now().date_naive(), usage);
            ctx.metrics.provider_requests.with_label_values(&[&upstream.name, "ok"]).inc();
            let record = call.usage(ctx, UsageOutcome::Ok);
            let text = received.text;
            if let Some(w) = moderation::check_output(ctx, &run, moderation, &text).await? {
                // Fail-closed with the endpoint down: the whole answer is asked for again.
                if w.error.class == ErrorClass::Retryable && attempts.left() {
                    return attempt.retry(w.error, record).await;
                }
                return moderation::withdraw(attempt, &run, w, record, claimed_at).await;
            }
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
            attempt.finish(outcome, record, claimed_at).await
        }
        StreamOutcome::Failed { error } => {
            ctx.metrics.provider_requests.with_label_values(&[&upstream.name, error.code.as_str()]).inc();
            let retryable = error.class == ErrorClass::Retryable;
            // A call refused before its stream opened is recorded too, with no tokens, so that
            // failure rates count it.
            let record = call.usage(ctx, error.code.into()).or_else(|| Some(call.refused(error.code.into())));
            if retryable && attempts.left() {
                return attempt.retry(error, record).await;
            }
            // Out of retries on this route: the next model or upstream answers, from the start.
            if retryable && has_fallback {
                let next = &routes[route_index + 1];
                let to = ctx.upstreams.get(next.upstream);
                return attempt.fall_back(error, record, route_index as i32 + 1, &next.model, &to.name).await;
            }
            // The partial answer stays on the run: it is checked like a complete one.
            if let Some(w) = moderation::check_output(ctx, &run, moderation, &received.text).await? {
                return moderation::withdraw(attempt, &run, w, record, claimed_at).await;
            }
            attempt.fail(error, received.text, claimed_at, record).await
        }
        StreamOutcome::Withdrawn(w) => {
            let record = call.usage(ctx, w.error.code.into());
            moderation::withdraw(attempt, &run, w, record, claimed_at).await
        }
        StreamOutcome::Released => {
            let record = call.usage(ctx, UsageOutcome::Released);
            attempt.release(record).await
        }
        StreamOutcome::Cancelled => {
            tracing::info!("run cancelled on request");
            let record = call.usage(ctx, UsageOutcome::Cancelled);
            // The partial answer is kept as the message: it is checked like a complete one.
            if let Some(w) = moderation::check_output(ctx, &run, moderation, &received.text).await? {
                return moderation::withdraw(attempt, &run, w, record, claimed_at).await;
            }
            attempt.finish(Outcome::Cancelled { partial_text: received.text }, record, claimed_at).await
        }
        StreamOutcome::LeaseLost => {
            tracing::warn!("lease lost; another worker owns the run now, or it is gone");
            // Not fenced: the call was billed whoever owns the run now.
            if let Some(record) = call.usage(ctx, UsageOutcome::LeaseLost) {
                db::usage::insert(&ctx.pool, &record).await?;
                attempt::count_usage(ctx, &record);
            }
            Ok(())
        }
    }
}

/// How many attempts the run made on its current route, and how many it may make there.
#[derive(Clone, Copy)]
struct Attempts {
    on_route: i32,
    max: i32,
}

impl Attempts {
    /// Whether a retryable failure may be retried on the same route.
    fn left(self) -> bool {
        self.on_route < self.max
    }
}

/// The first of `routes`, from the run's current route `from`, whose upstream's breaker lets a
/// call through, and whether that call is the breaker's probe; or, when every remaining
/// route's breaker is open, how long until the first may half-open. `routes` is not empty.
fn admit(ctx: &WorkerCtx, routes: &[chatq_common::upstreams::Route], from: i32) -> Result<(usize, bool), Duration> {
    // Past the last route (the configuration changed since): the last one.
    let from = (from.max(0) as usize).min(routes.len() - 1);
    let mut retry_in = Duration::MAX;
    // Stops at the first admission: `admit` takes the probe slot of a half-open breaker.
    for (i, r) in routes.iter().enumerate().skip(from) {
        match ctx.upstreams.get(r.upstream).breaker.admit() {
            Admission::Allow => return Ok((i, false)),
            Admission::Probe => return Ok((i, true)),
            Admission::Wait(d) => retry_in = retry_in.min(d),
        }
    }
    Err(retry_in)
}

/// A run none of whose models any upstream serves any more (the providers file changed since
/// it was submitted): it fails as the provider refusing it.
async fn fail_unrouted(ctx: &WorkerCtx, run_id: Uuid) -> Result<(), sqlx::Error> {
    let Some(run) = claim(ctx, run_id).await? else { return Ok(()) };
    tracing::warn!(model = %run.model, "no configured upstream serves the run's models");
    let attempt = Attempt::new(ctx, &run);
    attempt.fail(ProviderError::not_served(&run.model), String::new(), Instant::now(), None).await
}

/// The breaker is open: the run waits in `queued` (no attempt used) and is looked at again when
/// the breaker may half-open; past `CHATQ_PROVIDER_MAX_WAIT_SECS` from its submission it fails.
async fn wait_for_provider(ctx: &WorkerCtx, run_id: Uuid, retry_in: Duration) -> Result<(), sqlx::Error> {
    let Some(run) = db::runs::get(&ctx.pool, run_id).await? else { return Ok(()) };
    if run.status != RunStatus::Queued {
        return Ok(());
    }
    let waited = (Utc::now() - run.created_at).to_std().unwrap_or_default();
    let max_wait = ctx.config.provider.max_wait;
    if waited >= max_wait {
        let Some(run) = claim(ctx, run_id).await? else { return Ok(()) };
        let attempt = Attempt::new(ctx, &run);
        let error = ProviderError::breaker_open(max_wait);
        return attempt.fail(error, String::new(), Instant::now(), None).await;
    }
    let delay = retry_in.min(max_wait - waited) + Duration::from_millis(50);
    let reason = format!("The AI provider is unavailable; waiting for it to recover (up to {} s).", max_wait.as_secs());
    if db::runs::defer(&ctx.pool, run_id, delay.as_secs_f64(), &reason).await? {
        let task_id = format!("{run_id}-w{}", Utc::now().timestamp_millis());
        if let Err(e) = jobs::push_after(&ctx.chat_queue(), ChatRun { run_id }, task_id, delay).await {
            tracing::warn!(error = %e, "cannot push the waiting run; the reconciler will");
        }
    }
    Ok(())
}

/// Claims the run. A job delivered a little before the run's `next_attempt_at` (apalis
/// schedules by the whole second) waits for it, or is pushed again when it is further away,
/// so an early delivery never loses the retry. An in-progress run whose Postgres lease lapsed
/// is taken over only when its Redis lease lapsed too: its worker may be waiting for Postgres
/// to write the answer.
async fn claim(ctx: &WorkerCtx, run_id: Uuid) -> Result<Option<db::runs::Run>, sqlx::Error> {
    let lease = ctx.config.runs.lease.as_secs_f64();
    let take_over = match run_lease::is_held(&ctx.redis, ctx.queues.prefix(), run_id).await {
        Ok(held) => !held,
        // Without Redis the Postgres lease alone decides, as it always may.
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the run's Redis lease");
            true
        }
    };
    for _ in 0..2 {
        if let Some(run) = db::runs::claim(&ctx.pool, run_id, &ctx.worker_id, lease, take_over).await? {
            return Ok(Some(run));
        }
        let Some(run) = db::runs::get(&ctx.pool, run_id).await? else { return Ok(None) };
        let wait = match (run.status, run.next_attempt_at) {
            (RunStatus::Queued, Some(at)) => (at - Utc::now()).to_std().unwrap_or_default(),
            _ => {
                tracing::debug!(status = %run.status, "run not claimable (finished or leased); skipping");
                return Ok(None);
            }
        };
        if wait > Duration::from_secs(2) {
            let task_id = format!("{run_id}-{}", Utc::now().timestamp_millis());
            if let Err(e) = jobs::push_after(&ctx.chat_queue(), ChatRun { run_id }, task_id, wait).await {
                tracing::warn!(error = %e, "cannot push early-delivered run again; the reconciler will");
            }
            return Ok(None);
        }
        tokio::time::sleep(wait).await;
    }
    Ok(None)
}

/// One chat call of an attempt, and what it is billed on.
struct Call<'a> {
    run: &'a db::runs::Run,
    upstream: &'a str,
    request: &'a ChatRequest,
    received: &'a Received,
    latency_ms: i64,
}

impl Call<'_> {
    /// The usage record of the call, `None` when no stream was opened (nothing was billed).
    /// When the provider sent no usage (the stream was cut, cancelled or abandoned, or the
    /// server sends none), the tokens are counted with the tokenizer and the record is marked
    /// estimated.
    fn usage(&self, ctx: &WorkerCtx, outcome: UsageOutcome) -> Option<NewUsage> {
        if !self.received.opened {
            return None;
        }
        let (usage, estimated) = self.tokens();
        let cost = ctx.pricing.cost(&self.run.model, Utc::now().date_naive(), usage);
        Some(self.record(outcome, usage, cost, estimated))
    }

    /// The call's tokens as the provider reported them, or else counted with the tokenizer
    /// (then `true`: estimated).
    fn tokens(&self) -> (TokenUsage, bool) {
        match self.received.usage {
            Some(usage) => (usage, false),
            None => (estimate(self.request, &self.received.text), true),
        }
    }

    /// The record of a call the provider refused before streaming: no tokens, no cost.
    fn refused(&self, outcome: UsageOutcome) -> NewUsage {
        self.record(outcome, TokenUsage::default(), None, false)
    }

    fn record(&self, outcome: UsageOutcome, usage: TokenUsage, cost_usd: Option<f64>, estimated: bool) -> NewUsage {
        NewUsage {
            id: chatq_common::new_id(),
            kind: UsageKind::Chat,
            model: self.run.model.clone(),
            api_key_id: Some(self.run.api_key_id),
            assistant_id: Some(self.run.assistant_id),
            run_id: Some(self.run.id),
            document_id: None,
            input_tokens: usage.input as i64,
            cached_input_tokens: usage.cached_input as i64,
            output_tokens: usage.output as i64,
            cost_usd,
            outcome,
            latency_ms: self.latency_ms,
            estimated,
            upstream: Some(self.upstream.to_string()),
        }
    }
}

/// The tokens of a call the provider reported no usage for, counted the way OpenAI bills
/// them: every prompt message with its overhead plus the reply's priming, and the text
/// received.
fn estimate(request: &ChatRequest, received: &str) -> TokenUsage {
    let input: usize = request.messages.iter().map(|m| tokens::message_tokens(&m.content)).sum::<usize>() + 3;
    TokenUsage { input: input as u64, cached_input: 0, output: tokens::count(received) as u64 }
}
