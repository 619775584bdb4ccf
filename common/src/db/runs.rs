//! `runs`: submit, claim with a lease, progress, finish. Every worker write is fenced on
//! `attempt` so a worker that lost its lease cannot change the run. Statuses written are bound
//! [`RunStatus`] values; those in `WHERE` clauses stay literal so Postgres can match them to
//! the predicates of the partial indexes (`runs_one_active_per_thread`).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{Page, events, usage};
use crate::{
    domain::{MessageRole, RunErrorCode, RunStatus},
    events::{EventKind, RunEvent},
};

/// Name of the partial unique index allowing one active run per thread.
pub const ONE_ACTIVE_PER_THREAD: &str = "runs_one_active_per_thread";
/// Name of the unique constraint on `(api_key_id, idempotency_user, idempotency_key)`.
pub const IDEMPOTENCY_KEY: &str = "runs_idempotency_key_key";
/// Name of the unique constraint on `(thread_id, client_message_id)`.
pub const CLIENT_MESSAGE_ID: &str = "messages_client_message_id_key";

/// A run as stored.
#[derive(Debug, Clone)]
pub struct Run {
    /// Id.
    pub id: Uuid,
    /// Thread.
    pub thread_id: Uuid,
    /// Assistant answering.
    pub assistant_id: Uuid,
    /// Key that submitted it.
    pub api_key_id: Uuid,
    /// The user message it answers.
    pub user_message_id: Uuid,
    /// Where the run is.
    pub status: RunStatus,
    /// Claims so far.
    pub attempt: i32,
    /// Worker holding the lease.
    pub lease_owner: Option<String>,
    /// When the lease lapses unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Earliest time of the next attempt (retries).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Why a queued run waits, for clients.
    pub waiting_reason: Option<String>,
    /// The client's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// The model of the current route: once the run finished, the model that answered.
    pub model: String,
    /// The models to try in order, as submitted (the assistant's `model`, then its
    /// `fallback_models`); empty for runs submitted before fallbacks existed (then: `model`).
    pub models: Vec<String>,
    /// Which of the run's routes (see [`crate::upstreams::Upstreams::routes`]) it is on.
    pub route: i32,
    /// The first attempt made on the current route: retries are counted per route.
    pub route_attempt: i32,
    /// The upstream of the current route: once the run finished, the upstream that answered.
    pub upstream: Option<String>,
    /// Answer so far.
    pub output_text: String,
    /// Last event sequence number written to Postgres.
    pub last_seq: i64,
    /// Why generation stopped.
    pub finish_reason: Option<String>,
    /// Stable error code of a failed run.
    pub error_code: Option<RunErrorCode>,
    /// End-user message of a failed run.
    pub error_message: Option<String>,
    /// Input tokens (cached included).
    pub input_tokens: Option<i32>,
    /// Cached input tokens.
    pub cached_input_tokens: Option<i32>,
    /// Output tokens.
    pub output_tokens: Option<i32>,
    /// Cost in USD, `None` when unpriced or unfinished.
    pub cost_usd: Option<f64>,
    /// Submit time.
    pub created_at: DateTime<Utc>,
    /// First claim.
    pub started_at: Option<DateTime<Utc>>,
    /// First answer text.
    pub first_token_at: Option<DateTime<Utc>>,
    /// Terminal time.
    pub completed_at: Option<DateTime<Utc>>,
    /// Cancel requested.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// Set by [`claim`] only: the status the run had before this claim (`queued` after a
    /// retry, `in_progress` when the previous worker died), for the `run.reset` reason.
    pub previous_status: Option<RunStatus>,
}

impl Run {
    /// Whether the run reached a final status.
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }
}

/// A run to submit.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// Thread.
    pub thread_id: Uuid,
    /// Assistant.
    pub assistant_id: Uuid,
    /// Model of the assistant at submit time.
    pub model: &'a str,
    /// The assistant's fallback models at submit time, tried in order after `model`.
    pub fallback_models: &'a [String],
    /// Submitting key.
    pub api_key_id: Uuid,
    /// The user's text.
    pub input: &'a str,
    /// Client's message id.
    pub client_message_id: Option<&'a str>,
    /// Client's idempotency key.
    pub idempotency_key: Option<&'a str>,
    /// The end user whose namespace `idempotency_key` is in: a user token's user; `None` for
    /// the API key's own.
    pub idempotency_user: Option<&'a str>,
}

/// Why a run was not admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// The end user has `active` active (queued or in-progress) runs, the most allowed.
    TooManyActive {
        /// Active runs of the end user.
        active: i64,
    },
    /// The key's spend this month, with its runs in flight reserved, reached its budget.
    BudgetExhausted,
}

/// The limits a new run is admitted under.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits<'a> {
    /// The end user and the most active runs they may have.
    pub active_per_user: Option<(&'a str, i64)>,
    /// The key's monthly budget in USD.
    pub monthly_budget_usd: Option<f64>,
}

/// [`submit`] within `limits`. The checks and the insert are one transaction serialised per end
/// user and per key with a budget (advisory locks, taken in that order so that two submits
/// never wait on each other in a cycle), so N concurrent submits admit exactly as many runs as
/// the limits allow. The budget counts the key's runs in flight at
/// [`keys::committed_this_month`](super::keys::committed_this_month).
pub async fn submit_within(
    pool: &PgPool,
    new: &NewRun<'_>,
    limits: Limits<'_>,
) -> Result<Result<Run, Refusal>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some((end_user, max_active)) = limits.active_per_user {
        sqlx::query!(
            "SELECT pg_advisory_xact_lock(hashtextextended($1::uuid::text || '/' || $2, 0))",
            new.api_key_id,
            end_user
        )
        .execute(&mut *tx)
        .await?;
        let active = active_for_user(&mut *tx, new.api_key_id, end_user).await?;
        if active >= max_active {
            return Ok(Err(Refusal::TooManyActive { active }));
        }
    }
    if let Some(budget) = limits.monthly_budget_usd {
        sqlx::query!("SELECT pg_advisory_xact_lock(hashtextextended('budget/' || $1::uuid::text, 0))", new.api_key_id)
            .execute(&mut *tx)
            .await?;
        if super::keys::committed_this_month(&mut *tx, new.api_key_id).await? >= budget {
            return Ok(Err(Refusal::BudgetExhausted));
        }
    }
    insert_submitted(tx, new).await.map(Ok)
}

/// In one transaction: the user message, the queued run and its `run.queued` event.
/// Unique violations surface as errors naming [`ONE_ACTIVE_PER_THREAD`], [`IDEMPOTENCY_KEY`]
/// or [`CLIENT_MESSAGE_ID`].
pub async fn submit(pool: &PgPool, new: &NewRun<'_>) -> Result<Run, sqlx::Error> {
    insert_submitted(pool.begin().await?, new).await
}

async fn insert_submitted(mut tx: Transaction<'_, Postgres>, new: &NewRun<'_>) -> Result<Run, sqlx::Error> {
    let run_id = crate::new_id();
    let message_id = crate::new_id();
    sqlx::query!(
        "INSERT INTO messages (id, thread_id, role, content, run_id, client_message_id) VALUES ($1, $2, $6, $3, $4, $5)",
        message_id,
        new.thread_id,
        new.input,
        run_id,
        new.client_message_id,
        MessageRole::User as _,
    )
    .execute(&mut *tx)
    .await?;
    let run = sqlx::query_as!(
        Run,
        r#"INSERT INTO runs (id, thread_id, assistant_id, api_key_id, user_message_id, idempotency_key, model, last_seq,
                           idempotency_user, models)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, array_prepend($7, $9::text[]))
         RETURNING id, thread_id, assistant_id, api_key_id, user_message_id, status AS "status: RunStatus", attempt,
           lease_owner, lease_expires_at, next_attempt_at, waiting_reason, idempotency_key, model, models, route, route_attempt, upstream,
           output_text,
           last_seq, finish_reason, error_code AS "error_code: RunErrorCode", error_message, input_tokens,
           cached_input_tokens, output_tokens, cost_usd::float8 AS cost_usd, created_at, started_at, first_token_at,
           completed_at, cancel_requested_at, NULL::text AS "previous_status: RunStatus""#,
        run_id,
        new.thread_id,
        new.assistant_id,
        new.api_key_id,
        message_id,
        new.idempotency_key,
        new.model,
        new.idempotency_user.unwrap_or(""),
        new.fallback_models,
    )
    .fetch_one(&mut *tx)
    .await?;
    events::insert(&mut *tx, &RunEvent::queued(run_id)).await?;
    touch_thread(&mut tx, new.thread_id).await?;
    tx.commit().await?;
    Ok(run)
}

/// One run.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as!(
        Run,
        r#"SELECT id, thread_id, assistant_id, api_key_id, user_message_id, status AS "status: RunStatus", attempt,
           lease_owner, lease_expires_at, next_attempt_at, waiting_reason, idempotency_key, model, models, route, route_attempt, upstream,
           output_text,
           last_seq, finish_reason, error_code AS "error_code: RunErrorCode", error_message, input_tokens,
           cached_input_tokens, output_tokens, cost_usd::float8 AS cost_usd, created_at, started_at, first_token_at,
           completed_at, cancel_requested_at, NULL::text AS "previous_status: RunStatus"
         FROM runs WHERE id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await
}

/// The run a key created with this `Idempotency-Key`, in the namespace of `end_user` (a user
/// token's user; `None` for the key's own).
pub async fn find_by_idempotency_key(
    pool: &PgPool,
    api_key_id: Uuid,
    end_user: Option<&str>,
    key: &str,
) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as!(
        Run,
        r#"SELECT id, thread_id, assistant_id, api_key_id, user_message_id, status AS "status: RunStatus", attempt,
           lease_owner, lease_expires_at, next_attempt_at, waiting_reason, idempotency_key, model, models, route, route_attempt, upstream,
           output_text,
           last_seq, finish_reason, error_code AS "error_code: RunErrorCode", error_message, input_tokens,
           cached_input_tokens, output_tokens, cost_usd::float8 AS cost_usd, created_at, started_at, first_token_at,
           completed_at, cancel_requested_at, NULL::text AS "previous_status: RunStatus"
         FROM runs WHERE api_key_id = $1 AND idempotency_user = $3 AND idempotency_key = $2"#,
        api_key_id,
        key,
        end_user.unwrap_or(""),
    )
    .fetch_optional(pool)
    .await
}

/// The run started by the user message with this client id.
pub async fn find_by_client_message_id(pool: &PgPool, thread_id: Uuid, cmid: &str) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as!(
        Run,
        r#"SELECT id, thread_id, assistant_id, api_key_id, user_message_id, status AS "status: RunStatus", attempt,
           lease_owner, lease_expires_at, next_attempt_at, waiting_reason, idempotency_key, model, models, route, route_attempt, upstream,
           output_text,
           last_seq, finish_reason, error_code AS "error_code: RunErrorCode", error_message, input_tokens,
           cached_input_tokens, output_tokens, cost_usd::float8 AS cost_usd, created_at, started_at, first_token_at,
           completed_at, cancel_requested_at, NULL::text AS "previous_status: RunStatus"
         FROM runs WHERE user_message_id =
           (SELECT id FROM messages WHERE thread_id = $1 AND client_message_id = $2)"#,
        thread_id,
        cmid,
    )
    .fetch_optional(pool)
    .await
}

/// The queued or in-progress run of a thread.
pub async fn active_for_thread(pool: &PgPool, thread_id: Uuid) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as!(
        Run,
        r#"SELECT id, thread_id, assistant_id, api_key_id, user_message_id, status AS "status: RunStatus", attempt,
           lease_owner, lease_expires_at, next_attempt_at, waiting_reason, idempotency_key, model, models, route, route_attempt, upstream,
           output_text,
           last_seq, finish_reason, error_code AS "error_code: RunErrorCode", error_message, input_tokens,
           cached_input_tokens, output_tokens, cost_usd::float8 AS cost_usd, created_at, started_at, first_token_at,
           completed_at, cancel_requested_at, NULL::text AS "previous_status: RunStatus"
         FROM runs WHERE thread_id = $1 AND status IN ('queued', 'in_progress')"#,
        thread_id
    )
    .fetch_optional(pool)
    .await
}

/// Runs of a thread, oldest first after the cursor.
pub async fn list_for_thread(
    pool: &PgPool,
    thread_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Page<Run>, sqlx::Error> {
    let rows = sqlx::query_as!(
        Run,
        r#"SELECT id, thread_id, assistant_id, api_key_id, user_message_id, status AS "status: RunStatus", attempt,
           lease_owner, lease_expires_at, next_attempt_at, waiting_reason, idempotency_key, model, models, route, route_attempt, upstream,
           output_text,
           last_seq, finish_reason, error_code AS "error_code: RunErrorCode", error_message, input_tokens,
           cached_input_tokens, output_tokens, cost_usd::float8 AS cost_usd, created_at, started_at, first_token_at,
           completed_at, cancel_requested_at, NULL::text AS "previous_status: RunStatus"
         FROM runs WHERE thread_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"#,
        thread_id,
        after,
        limit + 1,
    )
    .fetch_all(pool)
    .await?;
    Ok(Page::from_overfetch(rows, limit))
}

/// Claims a run for `owner`: a queued run that is due, or, when `take_over`, an in-progress run
/// whose lease lapsed (its worker died). Increments `attempt`, which fences every later write.
/// `None` when the run is terminal, not due, or leased by a live worker.
pub async fn claim(
    pool: &PgPool,
    id: Uuid,
    owner: &str,
    lease_secs: f64,
    take_over: bool,
) -> Result<Option<Run>, sqlx::Error> {
    // `old` is read before the update: it tells a retry (queued) from a crash (in_progress).
    sqlx::query_as!(
        Run,
        r#"UPDATE runs r SET status = $4, attempt = r.attempt + 1, lease_owner = $2,
                lease_expires_at = now() + make_interval(secs => $3), started_at = COALESCE(r.started_at, now()),
                next_attempt_at = NULL, waiting_reason = NULL, output_text = ''
         FROM (SELECT id, status AS previous_status FROM runs WHERE id = $1) old
         WHERE r.id = $1 AND old.id = r.id
           AND ((r.status = 'queued' AND (r.next_attempt_at IS NULL OR r.next_attempt_at <= now()))
                OR ($5 AND r.status = 'in_progress' AND r.lease_expires_at < now()))
         RETURNING r.id, r.thread_id, r.assistant_id, r.api_key_id, r.user_message_id, r.status AS "status: RunStatus",
           r.attempt, r.lease_owner, r.lease_expires_at, r.next_attempt_at, r.waiting_reason, r.idempotency_key,
           r.model, r.models, r.route, r.route_attempt, r.upstream, r.output_text, r.last_seq, r.finish_reason, r.error_code AS "error_code: RunErrorCode",
           r.error_message, r.input_tokens, r.cached_input_tokens, r.output_tokens, r.cost_usd::float8 AS cost_usd,
           r.created_at, r.started_at, r.first_token_at, r.completed_at, r.cancel_requested_at,
           old.previous_status AS "previous_status: RunStatus""#,
        id,
        owner,
        lease_secs,
        RunStatus::InProgress as _,
        take_over,
    )
    .fetch_optional(pool)
    .await
}

/// Puts an attempt that hit a retryable error back in the queue, due after `delay`, with a
/// reason clients can see. Fenced on `attempt`; `false` when the attempt no longer owns the run.
pub async fn requeue(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    delay_secs: f64,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query!(
        "UPDATE runs SET status = $5, lease_owner = NULL, lease_expires_at = NULL,
                next_attempt_at = now() + make_interval(secs => $3), waiting_reason = $4, enqueued_at = now()
         WHERE id = $1 AND attempt = $2 AND status = 'in_progress'",
        id,
        attempt,
        delay_secs,
        reason,
        RunStatus::Queued as _,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Moves the run to route `route` (`model` on `upstream`), counting its attempts from
/// `route_attempt`. Fenced on `attempt`; `false` when the attempt no longer owns the run.
pub async fn set_route(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    route: i32,
    model: &str,
    upstream: &str,
    route_attempt: i32,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query!(
        "UPDATE runs SET route = $3, model = $4, upstream = $5, route_attempt = $6
         WHERE id = $1 AND attempt = $2 AND status = 'in_progress'",
        id,
        attempt,
        route,
        model,
        upstream,
        route_attempt,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Extends the lease of an attempt; `false` when the attempt no longer owns the run.
pub async fn renew_lease(pool: &PgPool, id: Uuid, attempt: i32, lease_secs: f64) -> Result<bool, sqlx::Error> {
    let n = sqlx::query!(
        "UPDATE runs SET lease_expires_at = now() + make_interval(secs => $3)
         WHERE id = $1 AND attempt = $2 AND status = 'in_progress'",
        id,
        attempt,
        lease_secs,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Progress of one run since the last flush, applied by the batched event writer.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Run.
    pub run_id: Uuid,
    /// Attempt that produced it (fence).
    pub attempt: i32,
    /// Text to append to `output_text`.
    pub append: String,
    /// Highest event seq written in this flush.
    pub last_seq: i64,
    /// When the first text arrived, if in this flush.
    pub first_token_at: Option<DateTime<Utc>>,
}

/// Applies the progress of many runs in one statement. The `last_seq` guard makes a retried
/// flush harmless: text already appended is not appended again.
pub async fn apply_progress(tx: &mut Transaction<'_, Postgres>, items: &[Progress]) -> Result<u64, sqlx::Error> {
    if items.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = items.iter().map(|p| p.run_id).collect();
    let attempts: Vec<i32> = items.iter().map(|p| p.attempt).collect();
    let appends: Vec<&str> = items.iter().map(|p| p.append.as_str()).collect();
    let seqs: Vec<i64> = items.iter().map(|p| p.last_seq).collect();
    let firsts: Vec<Option<DateTime<Utc>>> = items.iter().map(|p| p.first_token_at).collect();
    let n = sqlx::query!(
        "UPDATE runs r SET output_text = r.output_text || u.append, last_seq = u.last_seq,
                first_token_at = COALESCE(r.first_token_at, u.first_token_at)
         FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::bigint[], $5::timestamptz[])
              AS u(id, attempt, append, last_seq, first_token_at)
         WHERE r.id = u.id AND r.attempt = u.attempt AND r.status = 'in_progress' AND r.last_seq < u.last_seq",
        &ids,
        &attempts,
        &appends as _,
        &seqs,
        &firsts as _,
    )
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(n)
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The answer is complete.
    Completed {
        /// Full answer.
        output_text: String,
        /// Provider's finish reason.
        finish_reason: String,
        /// Input tokens.
        input_tokens: i64,
        /// Cached input tokens.
        cached_input_tokens: i64,
        /// Output tokens.
        output_tokens: i64,
        /// Cost, `None` when unpriced.
        cost_usd: Option<f64>,
        /// Citations of the answer.
        citations: Value,
    },
    /// The run failed for good.
    Failed {
        /// Stable error code.
        code: RunErrorCode,
        /// End-user message.
        message: String,
        /// Text produced before the failure (kept on the run, not as a message).
        partial_text: String,
    },
    /// The run was stopped on request; the partial answer is kept as the message.
    Cancelled {
        /// Text produced before the cancel.
        partial_text: String,
    },
    /// The run failed and its answer is withdrawn: output moderation flagged it, or could not
    /// check it and the assistant must not answer unchecked. The text of every `message.delta`
    /// before the run's `run.reset` with reason `moderation` is blanked in the log, so a replay
    /// never shows it; `refusal`, when given, is the run's output text and the assistant's
    /// message in place of the answer.
    Withdrawn {
        /// Stable error code.
        code: RunErrorCode,
        /// End-user message.
        message: String,
        /// The text kept in place of the answer.
        refusal: Option<String>,
    },
}

/// Everything a finish writes besides the run itself.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The run.
    pub run_id: Uuid,
    /// The attempt finishing it (fence).
    pub attempt: i32,
    /// Sequence number of the terminal event.
    pub seq: i64,
    /// How it ended.
    pub outcome: Outcome,
    /// The provider call to record, if one was made; written even when the attempt lost the run.
    pub usage: Option<usage::NewUsage>,
}

/// Finishes a run in one transaction: run fields, the assistant message (completed or
/// cancelled with text), the terminal event and the usage record. Returns the terminal event,
/// or `None` when the attempt no longer owns the run (then only the usage record is written).
/// Safe to retry: the fence and the usage record's id make a second call write nothing new.
pub async fn finish(pool: &PgPool, f: &Finish) -> Result<Option<RunEvent>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let (status, text, finish_reason, code, message, tokens, cost, citations) = match &f.outcome {
        Outcome::Completed {
            output_text,
            finish_reason,
            input_tokens,
            cached_input_tokens,
            output_tokens,
            cost_usd,
            citations,
        } => (
            RunStatus::Completed,
            output_text.as_str(),
            Some(finish_reason.as_str()),
            None,
            None,
            Some((*input_tokens, *cached_input_tokens, *output_tokens)),
            *cost_usd,
            citations.clone(),
        ),
        Outcome::Failed { code, message, partial_text } => {
            (RunStatus::Failed, partial_text.as_str(), None, Some(*code), Some(message.as_str()), None, None, json!([]))
        }
        Outcome::Cancelled { partial_text } => {
            (RunStatus::Cancelled, partial_text.as_str(), None, None, None, None, None, json!([]))
        }
        Outcome::Withdrawn { code, message, refusal } => (
            RunStatus::Failed,
            refusal.as_deref().unwrap_or_default(),
            None,
            Some(*code),
            Some(message.as_str()),
            None,
            None,
            json!([]),
        ),
    };
    let thread_id = sqlx::query_scalar!(
        "UPDATE runs SET status = $3, output_text = $4, finish_reason = $5, error_code = $6, error_message = $7,
                input_tokens = $8, cached_input_tokens = $9, output_tokens = $10, cost_usd = $11::float8::numeric,
                completed_at = now(), lease_owner = NULL, lease_expires_at = NULL, last_seq = $12
         WHERE id = $1 AND attempt = $2 AND status = 'in_progress'
         RETURNING thread_id",
        f.run_id,
        f.attempt,
        status as _,
        text,
        finish_reason,
        code as _,
        message,
        tokens.map(|t| t.0 as i32),
        tokens.map(|t| t.1 as i32),
        tokens.map(|t| t.2 as i32),
        cost,
        f.seq,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(thread_id) = thread_id else {
        // The attempt no longer owns the run (taken over, or deleted with its thread), yet its
        // provider call was made and billed: the record is written all the same.
        if let Some(u) = &f.usage {
            usage::insert(&mut *tx, u).await?;
            tx.commit().await?;
        }
        return Ok(None);
    };
    let keep_message = status == RunStatus::Completed
        || (status == RunStatus::Cancelled && !text.is_empty())
        || matches!(f.outcome, Outcome::Withdrawn { refusal: Some(_), .. });
    if let Outcome::Withdrawn { .. } = f.outcome {
        events::blank_withdrawn_deltas(&mut *tx, f.run_id).await?;
    }
    if keep_message {
        sqlx::query!(
            "INSERT INTO messages (id, thread_id, role, content, run_id, citations) VALUES ($1, $2, $6, $3, $4, $5)",
            crate::new_id(),
            thread_id,
            text,
            f.run_id,
            &citations,
            MessageRole::Assistant as _,
        )
        .execute(&mut *tx)
        .await?;
    }
    let data = match &f.outcome {
        Outcome::Completed { finish_reason, input_tokens, cached_input_tokens, output_tokens, cost_usd, .. } => json!({
            "usage": {"input_tokens": input_tokens, "cached_input_tokens": cached_input_tokens, "output_tokens": output_tokens},
            "cost_usd": cost_usd,
            "finish_reason": finish_reason,
        }),
        Outcome::Failed { code, message, .. } | Outcome::Withdrawn { code, message, .. } => {
            json!({"error": {"code": code, "message": message}})
        }
        Outcome::Cancelled { .. } => json!({}),
    };
    let kind = match f.outcome {
        Outcome::Completed { .. } => EventKind::Completed,
        Outcome::Failed { .. } | Outcome::Withdrawn { .. } => EventKind::Failed,
        Outcome::Cancelled { .. } => EventKind::Cancelled,
    };
    let event = RunEvent { run_id: f.run_id, seq: f.seq, attempt: f.attempt, kind, data };
    events::insert(&mut *tx, &event).await?;
    if let Some(u) = &f.usage {
        usage::insert(&mut *tx, u).await?;
    }
    if let Some(hook) = webhook_event(status) {
        super::webhooks::record(&mut tx, hook, f.run_id).await?;
    }
    touch_thread(&mut tx, thread_id).await?;
    tx.commit().await?;
    Ok(Some(event))
}

/// The webhook event of a run ending with `status`, if there is one.
fn webhook_event(status: RunStatus) -> Option<&'static str> {
    match status {
        RunStatus::Completed => Some("run.completed"),
        RunStatus::Failed => Some("run.failed"),
        _ => None,
    }
}

/// Marks runs whose job may be lost as re-enqueued and returns them: queued runs that are due,
/// and in-progress runs whose lease lapsed (their worker died) with fewer than `max_attempts`
/// attempts on their current route, not pushed for `stale_secs`. Runs in `held` are being worked on whatever their
/// lease in Postgres says.
pub async fn take_stale(
    pool: &PgPool,
    stale_secs: f64,
    max_attempts: i32,
    held: &[Uuid],
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "UPDATE runs SET enqueued_at = now() WHERE id IN (
            SELECT id FROM runs
            WHERE ((status = 'queued' AND (next_attempt_at IS NULL OR next_attempt_at <= now()))
                   OR (status = 'in_progress' AND lease_expires_at < now() AND attempt - route_attempt + 1 < $3
                       AND NOT (id = ANY($4))))
              AND enqueued_at < now() - make_interval(secs => $1)
            ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING id",
        stale_secs,
        limit,
        max_attempts,
        held,
    )
    .fetch_all(pool)
    .await
}

/// The error code and message of a run whose workers kept dying.
pub const EXHAUSTED_CODE: RunErrorCode = RunErrorCode::Internal;
/// End-user message of [`EXHAUSTED_CODE`] runs.
pub const EXHAUSTED_MESSAGE: &str =
    "The answer could not be produced because processing was interrupted too many times. Please try again.";

/// A run [`fail_exhausted`] failed: its terminal event, and its assistant for the metrics.
pub struct Exhausted {
    /// The `run.failed` event stored for it.
    pub event: RunEvent,
    /// The run's assistant.
    pub assistant_id: Uuid,
}

/// Fails in-progress runs whose lease lapsed after `max_attempts` attempts on their current
/// route (each attempt's worker died): status `failed` with [`EXHAUSTED_CODE`], the partial output kept on the run,
/// and the terminal event appended to the log. Runs in `held` are left alone: their worker is
/// alive. Returns the runs failed, with the terminal events to publish.
pub async fn fail_exhausted(
    pool: &PgPool,
    max_attempts: i32,
    held: &[Uuid],
    limit: i64,
) -> Result<Vec<Exhausted>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query!(
        "SELECT id, attempt, assistant_id FROM runs
         WHERE status = 'in_progress' AND lease_expires_at < now() AND attempt - route_attempt + 1 >= $1
           AND NOT (id = ANY($3))
         ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        max_attempts,
        limit,
        held,
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let (id, attempt) = (row.id, row.attempt);
        // After the highest stored event: the dead worker may have flushed some.
        let seq =
            sqlx::query_scalar!(r#"SELECT COALESCE(max(seq), 0) + 1 AS "seq!" FROM run_events WHERE run_id = $1"#, id)
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query!(
            "UPDATE runs SET status = $5, error_code = $2, error_message = $3, completed_at = now(),
                    lease_owner = NULL, lease_expires_at = NULL, last_seq = $4
             WHERE id = $1",
            id,
            EXHAUSTED_CODE as _,
            EXHAUSTED_MESSAGE,
            seq,
            RunStatus::Failed as _,
        )
        .execute(&mut *tx)
        .await?;
        let event = RunEvent {
            run_id: id,
            seq,
            attempt,
            kind: EventKind::Failed,
            data: json!({"error": {"code": EXHAUSTED_CODE, "message": EXHAUSTED_MESSAGE}}),
        };
        events::insert(&mut *tx, &event).await?;
        super::webhooks::record(&mut tx, "run.failed", id).await?;
        out.push(Exhausted { event, assistant_id: row.assistant_id });
    }
    tx.commit().await?;
    Ok(out)
}

/// Active (queued or in-progress) runs of one end user of a key.
pub async fn active_for_user<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    api_key_id: Uuid,
    end_user: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM runs r JOIN threads t ON t.id = r.thread_id
         WHERE r.status IN ('queued', 'in_progress') AND t.api_key_id = $1 AND t.end_user = $2"#,
        api_key_id,
        end_user,
    )
    .fetch_one(exec)
    .await
}

/// Makes a queued run wait (the provider is down): due after `delay_secs`, with a reason
/// clients can see. The attempt count is not touched: waiting is not an attempt.
pub async fn defer(pool: &PgPool, id: Uuid, delay_secs: f64, reason: &str) -> Result<bool, sqlx::Error> {
    let n = sqlx::query!(
        "UPDATE runs SET next_attempt_at = now() + make_interval(secs => $2), waiting_reason = $3, enqueued_at = now()
         WHERE id = $1 AND status = 'queued'",
        id,
        delay_secs,
        reason,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Cancels a run that is still queued, in one transaction: status `cancelled` and the terminal
/// `run.cancelled` event. `None` when the run is not queued (a worker has it, or it finished).
pub async fn cancel_queued(pool: &PgPool, id: Uuid) -> Result<Option<RunEvent>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query!(
        "UPDATE runs SET status = $2, cancel_requested_at = COALESCE(cancel_requested_at, now()),
                completed_at = now(), next_attempt_at = NULL, waiting_reason = NULL, lease_owner = NULL,
                lease_expires_at = NULL,
                last_seq = GREATEST(last_seq, (SELECT COALESCE(max(seq), 0) FROM run_events WHERE run_id = $1)) + 1
         WHERE id = $1 AND status = 'queued'
         RETURNING last_seq, attempt, thread_id",
        id,
        RunStatus::Cancelled as _,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let event =
        RunEvent { run_id: id, seq: row.last_seq, attempt: row.attempt, kind: EventKind::Cancelled, data: json!({}) };
    events::insert(&mut *tx, &event).await?;
    touch_thread(&mut tx, row.thread_id).await?;
    tx.commit().await?;
    Ok(Some(event))
}

/// Flags an active run for cancellation; `true` when this call set the flag.
pub async fn request_cancel(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let n = sqlx::query!(
        "UPDATE runs SET cancel_requested_at = now()
         WHERE id = $1 AND cancel_requested_at IS NULL AND status IN ('queued', 'in_progress')",
        id,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Whether cancellation of the run was requested (the worker's fallback when it missed the
/// Redis signal).
pub async fn cancel_requested(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let flag = sqlx::query_scalar!(r#"SELECT cancel_requested_at IS NOT NULL AS "flag!" FROM runs WHERE id = $1"#, id)
        .fetch_optional(pool)
        .await?;
    Ok(flag.unwrap_or(false))
}

/// Marks the thread active now (its retention counts from its last message or run).
async fn touch_thread(tx: &mut Transaction<'_, Postgres>, thread_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!("UPDATE threads SET last_activity_at = now() WHERE id = $1", thread_id).execute(&mut **tx).await?;
    Ok(())
}
