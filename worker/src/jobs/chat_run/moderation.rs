//! Moderation of a run: the message being answered before any generation (`input`), the answer
//! before it is kept (`output`), or both. A flagged answer is withdrawn from clients and from the
//! log and replaced by a refusal.

use std::time::Instant;

use chatq_common::{
    db::{self, runs::Outcome, usage::NewUsage},
    domain::{ModerationMode, UsageKind, UsageOutcome},
    events::EventKind,
    pricing::TokenUsage,
    provider::ProviderError,
};
use chrono::Utc;
use serde_json::json;

use super::attempt::Attempt;
use crate::WorkerCtx;

/// The text kept, and shown to the visitor, in place of an answer that moderation flagged.
pub(super) const REFUSAL: &str = "Sorry, I can't share that answer: it was withheld by content moderation.";

/// What one moderation check decided.
pub(super) enum Verdict {
    /// Not flagged, or the endpoint is down and the assistant answers unchecked (fail-open).
    Passed,
    /// Flagged in these categories.
    Flagged(Vec<String>),
    /// The endpoint is down and `CHATQ_MODERATION_FAIL_CLOSED` is set: the text must not be
    /// used unchecked (retried like any provider outage).
    Unavailable(ProviderError),
}

/// What the run's assistant moderates; `off` when the assistant row is gone.
pub(super) async fn mode(ctx: &WorkerCtx, run: &db::runs::Run) -> Result<ModerationMode, sqlx::Error> {
    let assistant = db::assistants::get_including_deleted(&ctx.pool, run.assistant_id).await?;
    Ok(assistant.map_or(ModerationMode::Off, |a| a.moderation))
}

/// Input moderation (assistant `moderation: input` or `both`): the user message is checked
/// before any generation. `Some(error)` stops the run: flagged (permanent, `moderation_flagged`
/// with the categories), or the endpoint is down and the check fails closed.
pub(super) async fn check_input(
    ctx: &WorkerCtx,
    run: &db::runs::Run,
    mode: ModerationMode,
) -> Result<Option<ProviderError>, sqlx::Error> {
    if !mode.checks_input() {
        return Ok(None);
    }
    let Some(message) = db::messages::get(&ctx.pool, run.user_message_id).await? else { return Ok(None) };
    Ok(match check(ctx, run, &message.content).await? {
        Verdict::Passed => None,
        Verdict::Flagged(categories) => Some(ProviderError::moderation_flagged(&categories)),
        Verdict::Unavailable(e) => Some(e.moderation_unavailable()),
    })
}

/// Classifies `text` with the moderation endpoint, recording the call as a usage record of
/// kind `moderation` (outcome `ok`, `flagged` or the error) and in the metrics.
pub(super) async fn check(ctx: &WorkerCtx, run: &db::runs::Run, text: &str) -> Result<Verdict, sqlx::Error> {
    let started = Instant::now();
    let verdict = ctx.provider.moderate(text).await;
    let outcome = match &verdict {
        Ok(v) if v.flagged => UsageOutcome::Flagged,
        Ok(_) => UsageOutcome::Ok,
        Err(e) => e.code.into(),
    };
    let model = chatq_common::provider::MODERATION_MODEL;
    let record = NewUsage {
        id: chatq_common::new_id(),
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
        estimated: false,
        upstream: None,
    };
    db::usage::insert(&ctx.pool, &record).await?;
    match verdict {
        Ok(v) if v.flagged => {
            ctx.metrics.moderation_checks.with_label_values(&["flagged"]).inc();
            Ok(Verdict::Flagged(v.categories))
        }
        Ok(_) => {
            ctx.metrics.moderation_checks.with_label_values(&["passed"]).inc();
            Ok(Verdict::Passed)
        }
        Err(e) if ctx.config.provider.moderation_fail_closed => {
            ctx.metrics.moderation_checks.with_label_values(&["unavailable_closed"]).inc();
            tracing::warn!(detail = %e.detail, "moderation unavailable; refusing to use the text unchecked (fail-closed)");
            Ok(Verdict::Unavailable(e))
        }
        Err(e) => {
            ctx.metrics.moderation_checks.with_label_values(&["unavailable_open"]).inc();
            tracing::warn!(detail = %e.detail, "moderation unavailable; going on unchecked (fail-open)");
            Ok(Verdict::Passed)
        }
    }
}

/// Why an answer cannot be kept, and what replaces it.
pub(super) struct Withdrawal {
    /// The run's error: `moderation_flagged` (permanent), or the endpoint's outage when the
    /// check fails closed (retryable).
    pub error: ProviderError,
    /// The text shown and kept in place of the answer: the refusal for a flagged answer, nothing
    /// for one that could not be checked.
    pub refusal: Option<&'static str>,
}

/// Output moderation (assistant `moderation: output` or `both`) of an answer about to be kept:
/// a complete answer, or the partial text of a run that was cancelled or failed. `None` when it
/// may be kept (clean, empty, not checked by this assistant, or unchecked by fail-open).
pub(super) async fn check_output(
    ctx: &WorkerCtx,
    run: &db::runs::Run,
    mode: ModerationMode,
    text: &str,
) -> Result<Option<Withdrawal>, sqlx::Error> {
    if !mode.checks_output() || text.trim().is_empty() {
        return Ok(None);
    }
    Ok(match check(ctx, run, text).await? {
        Verdict::Passed => None,
        Verdict::Flagged(categories) => Some(flagged(&categories)),
        Verdict::Unavailable(e) => Some(Withdrawal { error: e.answer_unchecked(), refusal: None }),
    })
}

/// The withdrawal of an answer flagged in `categories`: replaced by the refusal.
pub(super) fn flagged(categories: &[String]) -> Withdrawal {
    Withdrawal { error: ProviderError::answer_flagged(categories), refusal: Some(REFUSAL) }
}

/// Withdraws the answer shown so far and fails the run with the withdrawal's error: a `run.reset` with reason
/// `moderation` tells clients to clear the text, a `message.delta` carries the refusal (when
/// there is one) so that, as after any reset, the text shown is the deltas since the reset; the
/// finish blanks the withdrawn deltas in the log and keeps the refusal as the assistant's message.
pub(super) async fn withdraw(
    mut attempt: Attempt<'_>,
    run: &db::runs::Run,
    Withdrawal { error, refusal }: Withdrawal,
    usage: Option<NewUsage>,
    claimed_at: Instant,
) -> Result<(), sqlx::Error> {
    tracing::warn!(code = %error.code, detail = %error.detail, "answer withdrawn");
    attempt.emit(EventKind::Reset, json!({"attempt": run.attempt, "reason": "moderation"}), String::new(), None).await;
    if let Some(refusal) = refusal {
        attempt.emit(EventKind::Delta, json!({"text": refusal}), String::new(), None).await;
    }
    let outcome = Outcome::Withdrawn { code: error.code, message: error.message, refusal: refusal.map(str::to_owned) };
    attempt.finish(outcome, usage, claimed_at).await
}
