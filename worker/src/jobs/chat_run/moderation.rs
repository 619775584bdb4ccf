//! Input moderation of the message being answered, before any generation.

use std::time::Instant;

use chatq_common::{
    db::{self, usage::NewUsage},
    domain::{ModerationMode, UsageKind, UsageOutcome},
    pricing::TokenUsage,
    provider::ProviderError,
};
use chrono::Utc;

use crate::WorkerCtx;

/// Input moderation (assistant `moderation: input`): the user message is checked before any
/// generation. `Some(error)` stops the run: flagged (permanent, `moderation_flagged` with the
/// categories), or the endpoint is down and `CHATQ_MODERATION_FAIL_CLOSED` is set (retried like
/// any provider outage). Fail-open answers unchecked and counts it.
pub(super) async fn check_input(ctx: &WorkerCtx, run: &db::runs::Run) -> Result<Option<ProviderError>, sqlx::Error> {
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
        Err(e) if ctx.config.provider.moderation_fail_closed => {
            ctx.metrics.moderation_checks.with_label_values(&["unavailable_closed"]).inc();
            tracing::warn!(detail = %e.detail, "moderation unavailable; refusing to answer (fail-closed)");
            Ok(Some(e.moderation_unavailable()))
        }
        Err(e) => {
            ctx.metrics.moderation_checks.with_label_values(&["unavailable_open"]).inc();
            tracing::warn!(detail = %e.detail, "moderation unavailable; answering unchecked (fail-open)");
            Ok(None)
        }
    }
}
