//! The state machine of one attempt: events out (`emit`), then exactly one way out: `finish`
//! (completed, failed, cancelled), `fail`, `retry` (back to `queued` with a delay) or `release`
//! (given back at shutdown). Every write is fenced on the attempt number.

use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable as _};
use chatq_common::{
    db::{self, runs::Outcome, usage::NewUsage},
    domain::RunStatus,
    events::{EventKind, RunEvent},
    jobs::{self, ChatRun},
    provider::ProviderError,
};
use chrono::Utc;
use uuid::Uuid;

use crate::WorkerCtx;

/// The state of one attempt: the next event number and the fence.
pub(super) struct Attempt<'a> {
    pub(super) ctx: &'a WorkerCtx,
    run_id: Uuid,
    assistant_id: Uuid,
    attempt: i32,
    seq: i64,
}

impl<'a> Attempt<'a> {
    /// The attempt of a run just claimed; its events continue after the run's last one.
    pub(super) fn new(ctx: &'a WorkerCtx, run: &db::runs::Run) -> Self {
        Self { ctx, run_id: run.id, assistant_id: run.assistant_id, attempt: run.attempt, seq: run.last_seq }
    }

    /// Sends the next event of the run; `append` is the text it adds to the answer.
    pub(super) async fn emit(
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

    /// Ends the run as failed with `e`, keeping the partial answer.
    pub(super) async fn fail(
        self,
        e: ProviderError,
        partial: String,
        claimed_at: Instant,
        usage: Option<NewUsage>,
    ) -> Result<(), sqlx::Error> {
        tracing::warn!(code = %e.code, detail = %e.detail, "run failed");
        let outcome = Outcome::Failed { code: e.code, message: e.message.clone(), partial_text: partial };
        self.finish(outcome, usage, claimed_at).await
    }

    /// Puts the run back in the queue after a retryable error: the events so far are flushed
    /// (the next attempt continues the sequence after a `run.reset`), the failed call is
    /// recorded, the run waits in `queued` with a visible reason, and a delayed job is pushed.
    pub(super) async fn retry(self, e: ProviderError, usage: Option<NewUsage>) -> Result<(), sqlx::Error> {
        let ctx = self.ctx;
        ctx.sink.flush().await;
        if let Some(usage) = &usage {
            db::usage::insert(&ctx.pool, usage).await?;
            count_usage(ctx, usage);
        }
        let delay =
            crate::retry::delay(self.attempt, ctx.config.runs.retry_base, ctx.config.runs.retry_max, e.retry_after);
        let reason = format!(
            "Retrying after a provider error ({}): attempt {} of {} in {:.1} s.",
            e.code,
            self.attempt + 1,
            ctx.config.runs.max_attempts,
            delay.as_secs_f64()
        );
        if !db::runs::requeue(&ctx.pool, self.run_id, self.attempt, delay.as_secs_f64(), &reason).await? {
            tracing::warn!("run changed owner before it could be retried");
            return Ok(());
        }
        ctx.metrics.run_retries.with_label_values(&[e.code.as_str()]).inc();
        tracing::info!(code = %e.code, detail = %e.detail, delay_ms = delay.as_millis() as u64, "run will be retried");
        // Short delays are waited out by the claim (apalis schedules by the whole second).
        let push_delay = if delay <= Duration::from_secs(2) { Duration::ZERO } else { delay };
        let task_id = format!("{}-a{}", self.run_id, self.attempt + 1);
        let job = ChatRun { run_id: self.run_id };
        if let Err(err) = jobs::push_after(&ctx.chat_queue(), job, task_id, push_delay).await {
            tracing::warn!(error = %err, "cannot push the retry; the reconciler will");
        }
        Ok(())
    }

    /// Moves the run to its next route after a retryable error that used up the retries of
    /// the current one: the run is queued again at once on route `route` (`model` on
    /// `upstream`), with that route's attempts counted from the next one, which starts over
    /// after a `run.reset` with reason `fallback`.
    pub(super) async fn fall_back(
        self,
        e: ProviderError,
        usage: Option<NewUsage>,
        route: i32,
        model: &str,
        upstream: &str,
    ) -> Result<(), sqlx::Error> {
        let ctx = self.ctx;
        ctx.sink.flush().await;
        if let Some(usage) = &usage {
            db::usage::insert(&ctx.pool, usage).await?;
            count_usage(ctx, usage);
        }
        let next = self.attempt + 1;
        if !db::runs::set_route(&ctx.pool, self.run_id, self.attempt, route, model, upstream, next).await? {
            tracing::warn!("run changed owner before it could fall back");
            return Ok(());
        }
        let reason = format!("Answering with the fallback model {model} after a provider error ({}).", e.code);
        if !db::runs::requeue(&ctx.pool, self.run_id, self.attempt, 0.0, &reason).await? {
            tracing::warn!("run changed owner before it could fall back");
            return Ok(());
        }
        let from = usage.as_ref().and_then(|u| u.upstream.as_deref()).unwrap_or("");
        ctx.metrics.run_fallbacks.with_label_values(&[from, upstream]).inc();
        tracing::info!(code = %e.code, detail = %e.detail, to.model = %model, to.upstream = %upstream, "run falls back");
        let task_id = format!("{}-f{next}", self.run_id);
        if let Err(err) = jobs::push(&ctx.chat_queue(), ChatRun { run_id: self.run_id }, task_id).await {
            tracing::warn!(error = %err, "cannot push the fallback; the reconciler will");
        }
        Ok(())
    }

    /// Gives the run back on shutdown: queued again at once, for another worker, with the
    /// call made so far recorded. The next attempt starts over after a `run.reset`.
    pub(super) async fn release(self, usage: Option<NewUsage>) -> Result<(), sqlx::Error> {
        let ctx = self.ctx;
        ctx.sink.flush().await;
        if let Some(usage) = &usage {
            db::usage::insert(&ctx.pool, usage).await?;
            count_usage(ctx, usage);
        }
        let reason = "The worker answering was restarted; the answer starts again.";
        if db::runs::requeue(&ctx.pool, self.run_id, self.attempt, 0.0, reason).await? {
            let task_id = format!("{}-s{}", self.run_id, self.attempt);
            if let Err(e) = jobs::push(&ctx.chat_queue(), ChatRun { run_id: self.run_id }, task_id).await {
                tracing::warn!(error = %e, "cannot push released run; the reconciler will");
            }
            tracing::info!("run released at shutdown");
        }
        Ok(())
    }

    /// Flushes this run's events, then writes the final state in one transaction and
    /// publishes the terminal event. While Postgres is unavailable the outcome is kept here and
    /// the write retried (100 ms doubling to 2 s) for up to `CHATQ_FINISH_RETRY_SECS`; the lease
    /// renewer keeps the run's Redis lease meanwhile, so no other worker takes the run over and
    /// asks the provider again.
    pub(super) async fn finish(
        self,
        outcome: Outcome,
        usage: Option<NewUsage>,
        claimed_at: Instant,
    ) -> Result<(), sqlx::Error> {
        let ctx = self.ctx;
        ctx.sink.flush().await;
        let (status, code) = match &outcome {
            Outcome::Completed { .. } => (RunStatus::Completed, ""),
            Outcome::Failed { code, .. } | Outcome::Withdrawn { code, .. } => (RunStatus::Failed, code.as_str()),
            Outcome::Cancelled { .. } => (RunStatus::Cancelled, ""),
        };
        let finish = db::runs::Finish { run_id: self.run_id, attempt: self.attempt, seq: self.seq + 1, outcome, usage };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_factor(2.0)
            .with_max_delay(Duration::from_secs(2))
            .without_max_times();
        let give_up_at = Instant::now() + ctx.config.runs.finish_retry;
        let event = (|| db::runs::finish(&ctx.pool, &finish))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e| db::is_unavailable(e) && Instant::now() < give_up_at)
            .notify(|e, _| tracing::warn!(error = %e, "cannot finish run yet; retrying"))
            .await?;
        // Counted once the usage record is committed, with its value, so the counters add up
        // to `usage_records`. The record is written even when the run changed owner.
        if let Some(u) = &finish.usage {
            count_usage(ctx, u);
        }
        match event {
            Some(event) => {
                ctx.sink.publish(&event).await;
                crate::jobs::webhook::push_unpushed(ctx).await;
                let assistant = ctx.metrics.assistants.label(Some(self.assistant_id));
                ctx.metrics.runs_finished.with_label_values(&[status.as_str(), code, &assistant]).inc();
                ctx.metrics
                    .run_duration
                    .with_label_values(&[status.as_str()])
                    .observe(claimed_at.elapsed().as_secs_f64());
                tracing::info!(status = %status, "run finished");
            }
            None => {
                tracing::warn!("run changed owner before finishing; only its usage was recorded")
            }
        }
        Ok(())
    }
}

/// Counts a committed chat usage record in the token and cost metrics. A billed call of an
/// unknown model is counted apart, never as free.
pub(super) fn count_usage(ctx: &WorkerCtx, u: &NewUsage) {
    let assistant = ctx.metrics.assistants.label(u.assistant_id);
    for (kind, n) in [("input", u.input_tokens), ("cached_input", u.cached_input_tokens), ("output", u.output_tokens)] {
        ctx.metrics.tokens.with_label_values(&[&u.model, kind, &assistant]).inc_by(n.max(0) as u64);
    }
    match u.cost_usd {
        Some(c) => ctx.metrics.cost_usd.with_label_values(&[&u.model, &assistant]).inc_by(c),
        None if u.outcome.is_ok() || u.estimated => ctx.metrics.unpriced_requests.with_label_values(&[&u.model]).inc(),
        None => {}
    }
}
