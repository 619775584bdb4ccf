//! When a provider stream is a whole answer: a finish reason followed by `[DONE]`, with or
//! without a usage chunk (many OpenAI-compatible servers send none). A stream that lacks either
//! was cut and is retried, or fails once the attempts are used up.

use chatq_common::{db, domain::RunErrorCode, domain::RunStatus, tokens};
use chatq_worker::jobs::chat_run;
use sqlx::PgPool;

use crate::support::Setup;
use crate::usage::records;

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_stream_that_finishes_without_usage_completes_with_estimated_usage(pool: PgPool) {
    let s = Setup::new(pool.clone()).await;
    let ctx = s.ctx().await;
    let id = s.submit("alice", "hello there [[fake no_usage tokens=12]]").await;
    chat_run::execute(&ctx, id).await.unwrap();

    let run = db::runs::get(&pool, id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed, "a finish reason and [DONE] end the answer: {:?}", run.error_code);
    assert_eq!(run.attempt, 1);
    assert_eq!(run.finish_reason.as_deref(), Some("stop"));
    assert_eq!(run.output_text, "Echo: hello there lorem ipsum dolor sit amet consectetur adipiscing elit sed");

    let records = records(&pool, id).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r.outcome, "ok");
    assert!(r.estimated, "the provider sent no usage: {r:?}");
    // The tokenizer's count of what was sent and received, with OpenAI's message overheads.
    let sent = s.fake.chat_requests();
    assert_eq!(sent.len(), 1);
    let prompt: usize = sent[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| tokens::message_tokens(m["content"].as_str().unwrap()))
        .sum::<usize>()
        + 3;
    assert_eq!(r.input_tokens as usize, prompt);
    assert_eq!(r.output_tokens as usize, tokens::count(&run.output_text));
    let usage =
        chatq_common::pricing::TokenUsage { input: prompt as u64, cached_input: 0, output: r.output_tokens as u64 };
    let priced = ctx.pricing.cost("gpt-4o-mini", chrono::Utc::now().date_naive(), usage).expect("a priced model");
    let cost = r.cost_usd.expect("an estimated call is priced");
    assert!(cost > 0.0 && (cost - priced).abs() < 1e-9, "{cost} vs {priced}");
    // The run shows the same figures as its record.
    assert_eq!(run.input_tokens, Some(r.input_tokens));
    assert_eq!(run.output_tokens, Some(r.output_tokens));
    assert!(run.cost_usd.is_some_and(|c| (c - cost).abs() < 1e-9), "{:?}", run.cost_usd);
    s.shutdown();
}

/// Answers a run with `directive` on every attempt: the first attempt must be retried and the
/// second (the last allowed) must fail, keeping the partial text.
async fn assert_cut(s: &Setup, directive: &str) {
    let ctx = s.ctx().await;
    let id = s.submit("alice", &format!("hello there [[fake {directive} tokens=5]]")).await;
    chat_run::execute(&ctx, id).await.unwrap();
    let run = db::runs::get(&s.pool, id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Queued, "{directive}: the cut attempt is retried");

    sqlx::query("UPDATE runs SET next_attempt_at = now() WHERE id = $1").bind(id).execute(&s.pool).await.unwrap();
    chat_run::execute(&ctx, id).await.unwrap();
    let run = db::runs::get(&s.pool, id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed, "{directive}: the last attempt fails");
    assert_eq!(run.error_code, Some(RunErrorCode::ProviderUnavailable), "{directive}");
    assert_eq!(run.output_text, "Echo: hello there lorem ipsum", "{directive}: the partial text is kept");
    let records = records(&s.pool, id).await;
    assert_eq!(records.len(), 2, "{directive}: a record per call: {records:?}");
    assert!(records.iter().all(|r| r.outcome != "ok"), "{directive}: {records:?}");
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_stream_without_a_finish_reason_is_cut_even_with_usage_and_done(pool: PgPool) {
    let s = Setup::with_env(pool, &[("CHATQ_RUN_MAX_ATTEMPTS", "2")]).await;
    assert_cut(&s, "no_finish").await;
    assert_cut(&s, "no_finish no_usage").await;
    s.shutdown();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_stream_closed_after_its_finish_reason_without_done_is_cut(pool: PgPool) {
    let s = Setup::with_env(pool, &[("CHATQ_RUN_MAX_ATTEMPTS", "2")]).await;
    assert_cut(&s, "no_done").await;
    assert_cut(&s, "no_done no_usage").await;
    s.shutdown();
}
