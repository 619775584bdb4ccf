//! The prompt of a run: the assistant's instructions, the numbered sources retrieved from its
//! knowledge bases, then the newest history that fits the token budget. [`build_request`] is a
//! pure function of those inputs; [`prepare`] loads them.

use std::time::Instant;

use chatq_common::{
    db::{self, assistants::Assistant, messages::Message, usage::NewUsage},
    domain::{MessageRole, UsageKind, UsageOutcome},
    pricing::TokenUsage,
    provider::{ChatRequest, PromptMessage, PromptRole, ProviderError},
    retrieval::{self, Source},
    tokens,
};
use chrono::Utc;
use uuid::Uuid;

use crate::{WorkerCtx, jobs::JobError};

/// Loads the assistant, the history up to the message being answered and the sources for it,
/// and builds the request. A run whose assistant is gone fails for good.
pub(super) async fn prepare(
    ctx: &WorkerCtx,
    run: &db::runs::Run,
) -> Result<(ChatRequest, Vec<Source>), JobError<ProviderError>> {
    let Some(assistant) = db::assistants::get_including_deleted(&ctx.pool, run.assistant_id).await? else {
        return Err(JobError::Permanent(ProviderError::assistant_missing()));
    };
    let recent = db::messages::recent_until(&ctx.pool, run.thread_id, run.user_message_id, 500).await?;
    let question = recent.first().map(|m| m.content.clone()).unwrap_or_default();
    let sources = retrieve(ctx, run, &assistant.knowledge_base_ids, &question).await?;
    let request = build_request(&assistant, &run.model, recent, &sources, ctx.config.runs.history_max_tokens);
    Ok((request, sources))
}

/// The request for `model`: instructions, the sources prompt, then the newest messages of
/// `recent` (newest first, the first one being the message answered) that fit `max_tokens`
/// with the rest, oldest first. The message answered is always sent, even alone over budget.
pub fn build_request(
    assistant: &Assistant,
    model: &str,
    recent: Vec<Message>,
    sources: &[Source],
    max_tokens: usize,
) -> ChatRequest {
    let sources_prompt = (!sources.is_empty()).then(|| retrieval::sources_prompt(sources));
    let mut budget = max_tokens.saturating_sub(tokens::message_tokens(&assistant.instructions));
    if let Some(p) = &sources_prompt {
        budget = budget.saturating_sub(tokens::message_tokens(p));
    }
    let mut history = Vec::new();
    for (i, m) in recent.into_iter().enumerate() {
        let cost = tokens::message_tokens(&m.content);
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
    let mut messages = Vec::with_capacity(history.len() + 2);
    if !assistant.instructions.trim().is_empty() {
        messages.push(PromptMessage { role: PromptRole::System, content: assistant.instructions.clone() });
    }
    if let Some(p) = sources_prompt {
        messages.push(PromptMessage { role: PromptRole::System, content: p });
    }
    messages.extend(history);
    ChatRequest {
        model: model.to_string(),
        messages,
        temperature: assistant.temperature,
        max_output_tokens: assistant.max_output_tokens.map(|n| n as u32),
    }
}

/// Knowledge bases `(id, embedding model, dimensions)` grouped by embedding model and
/// dimensions, in first-seen order: one query embedding serves a group.
fn group_by_embedding(kbs: Vec<(Uuid, String, usize)>) -> Vec<((String, usize), Vec<Uuid>)> {
    let mut groups: Vec<((String, usize), Vec<Uuid>)> = Vec::new();
    for (id, model, dims) in kbs {
        let key = (model, dims);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, ids)) => ids.push(id),
            None => groups.push((key, vec![id])),
        }
    }
    groups
}

/// Hybrid search over the assistant's knowledge bases (grouped by embedding model), within
/// `CHATQ_RETRIEVAL_TOP_K` and `CHATQ_RETRIEVAL_MAX_TOKENS`. The query embedding is recorded
/// as usage of the run. A failed query embedding degrades to keyword search.
pub(super) async fn retrieve(
    ctx: &WorkerCtx,
    run: &db::runs::Run,
    kb_ids: &[Uuid],
    question: &str,
) -> Result<Vec<Source>, sqlx::Error> {
    if kb_ids.is_empty() || question.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut kbs = Vec::with_capacity(kb_ids.len());
    for id in kb_ids {
        if let Some(kb) = db::knowledge::get_kb(&ctx.pool, *id).await? {
            kbs.push((*id, kb.embedding_model, kb.embedding_dims as usize));
        }
    }
    let groups = group_by_embedding(kbs);
    let (k, budget) = (ctx.config.knowledge.retrieval_top_k, ctx.config.knowledge.retrieval_max_tokens);
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
            (k, Some(budget)),
            ctx.config.knowledge.fusion,
        )
        .await
        {
            Ok(r) => r,
            Err(retrieval::RetrievalError::Db(e)) => return Err(e),
            // A failed index task fails the attempt like a database error: it is retried.
            Err(e @ retrieval::RetrievalError::Index(_)) => return Err(sqlx::Error::Protocol(e.to_string())),
        };
        let usage = TokenUsage { input: stats.embedding_tokens, cached_input: 0, output: 0 };
        let record = NewUsage {
            id: chatq_common::new_id(),
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
            estimated: false,
            upstream: None,
        };
        if let Err(e) = db::usage::insert(&ctx.pool, &record).await {
            tracing::warn!(error = %e, "cannot record query embedding usage");
        }
        all.extend(found);
    }
    all.sort_by(|a, b| b.score.total_cmp(&a.score));
    all.truncate(k);
    tracing::debug!(sources = all.len(), "sources retrieved");
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatq_common::domain::ModerationMode;

    fn assistant(instructions: &str) -> Assistant {
        Assistant {
            id: Uuid::now_v7(),
            name: "a".into(),
            instructions: instructions.into(),
            model: "m".into(),
            fallback_models: vec![],
            temperature: Some(0.5),
            max_output_tokens: Some(100),
            moderation: ModerationMode::Off,
            retention_days: None,
            metadata: serde_json::json!({}),
            knowledge_base_ids: vec![],
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn message(role: MessageRole, content: &str) -> Message {
        Message {
            id: Uuid::now_v7(),
            thread_id: Uuid::nil(),
            role,
            content: content.into(),
            run_id: None,
            client_message_id: None,
            citations: serde_json::json!([]),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn the_prompt_keeps_the_newest_history_that_fits_oldest_first_after_the_instructions() {
        let long = "word ".repeat(200);
        // Newest first, as `recent_until` returns it.
        let recent = vec![
            message(MessageRole::User, "question"),
            message(MessageRole::Assistant, "answer"),
            message(MessageRole::User, &long),
        ];
        let budget = tokens::message_tokens("be brief") + tokens::message_tokens("question") + 20;
        let request = build_request(&assistant("be brief"), "gpt", recent, &[], budget);
        let got: Vec<(PromptRole, &str)> = request.messages.iter().map(|m| (m.role, m.content.as_str())).collect();
        assert_eq!(
            got,
            [(PromptRole::System, "be brief"), (PromptRole::Assistant, "answer"), (PromptRole::User, "question")]
        );
        assert_eq!(request.model, "gpt");
        assert_eq!(request.max_output_tokens, Some(100));
    }

    #[test]
    fn the_message_answered_is_sent_even_alone_over_budget() {
        let long = "word ".repeat(200);
        let request = build_request(
            &assistant(""),
            "gpt",
            vec![message(MessageRole::User, &long), message(MessageRole::User, "old")],
            &[],
            10,
        );
        assert_eq!(request.messages.len(), 1);
        assert_eq!(request.messages[0].content, long);
    }

    #[test]
    fn knowledge_bases_sharing_an_embedding_model_share_a_query() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let groups = group_by_embedding(vec![(a, "m1".into(), 8), (b, "m2".into(), 8), (c, "m1".into(), 8)]);
        assert_eq!(groups, vec![(("m1".into(), 8), vec![a, c]), (("m2".into(), 8), vec![b])]);
    }
}
