//! `/v1/threads/{id}/runs`, `/v1/runs/{id}` and `/v1/runs/{id}/cancel`: send a message, follow
//! its answer, stop it. Its event stream is in [`super::run_events`].

use std::time::Duration;

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use chatq_common::{
    db,
    db::runs::Run,
    domain::{RunErrorCode, RunStatus},
    jobs,
    redis_formats::{self, run_stream},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{List, PageQuery};
use crate::{
    auth::Principal,
    error::{ApiError, ApiErrorCode},
    extract::{Json, Path, Query},
    state::AppState,
    validate::{Problems, Validate},
};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_run, list_runs)).routes(routes!(get_run)).routes(routes!(cancel_run))
}

/// A message to answer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunIn {
    /// The user's message (not blank; at most `CHATQ_MAX_MESSAGE_BYTES`, else 413).
    #[schema(min_length = 1)]
    pub input: String,
    /// Answer with this assistant instead of the thread's.
    pub assistant_id: Option<Uuid>,
    /// Your id for this message: sending it again returns the same run.
    #[schema(min_length = 1, max_length = 200)]
    pub client_message_id: Option<String>,
    /// Answer with the run's event stream (SSE) instead of JSON.
    pub stream: Option<bool>,
}

impl Validate for RunIn {
    fn validate(&self, p: &mut Problems) {
        p.text("input", &self.input, 1, 0);
        p.opt_text("client_message_id", self.client_message_id.as_deref(), 1, MAX_CLIENT_ID);
    }
}

/// Token counts of a finished run.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageOut {
    /// Input tokens, cached included.
    pub input_tokens: i32,
    /// Cached input tokens.
    pub cached_input_tokens: i32,
    /// Output tokens.
    pub output_tokens: i32,
}

/// Why a run failed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorOut {
    /// Stable code.
    pub code: RunErrorCode,
    /// A message fit for an end user.
    pub message: String,
}

/// A run: the answer to one message, and its progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunOut {
    /// Id.
    pub id: Uuid,
    /// Always `run`.
    pub object: &'static str,
    /// Thread.
    pub thread_id: Uuid,
    /// Assistant answering.
    pub assistant_id: Uuid,
    /// The user message answered.
    pub user_message_id: Uuid,
    /// Where the run is.
    pub status: RunStatus,
    /// Attempts so far.
    pub attempt: i32,
    /// The model answering: the assistant's `model`, or the fallback model the run moved to; once
    /// finished, the model that produced the answer.
    pub model: String,
    /// The upstream (a provider of `CHATQ_PROVIDERS_FILE`, or `default`) answering; once
    /// finished, the one that produced the answer. `null` before the first attempt.
    pub upstream: Option<String>,
    /// The answer so far.
    pub output_text: String,
    /// Sequence number of the last stored event (resume the event stream after it).
    pub last_seq: i64,
    /// Why generation stopped (`stop`, `length`, ...).
    pub finish_reason: Option<String>,
    /// Tokens used, once completed.
    pub usage: Option<UsageOut>,
    /// Cost in USD, `null` until completed or when the model is unpriced.
    pub cost_usd: Option<f64>,
    /// Why it failed.
    pub error: Option<ErrorOut>,
    /// Why a queued run is waiting (a retry, the provider being down).
    pub waiting_reason: Option<String>,
    /// Sources cited by the answer.
    #[schema(value_type = Vec<Object>)]
    pub citations: Value,
    /// Submit time.
    pub created_at: DateTime<Utc>,
    /// First claim by a worker.
    pub started_at: Option<DateTime<Utc>>,
    /// First answer text.
    pub first_token_at: Option<DateTime<Utc>>,
    /// Terminal time.
    pub completed_at: Option<DateTime<Utc>>,
}

impl RunOut {
    fn new(r: Run, citations: Value) -> Self {
        let usage = match (r.input_tokens, r.cached_input_tokens, r.output_tokens) {
            (Some(i), c, Some(o)) => {
                Some(UsageOut { input_tokens: i, cached_input_tokens: c.unwrap_or(0), output_tokens: o })
            }
            _ => None,
        };
        let error = r.error_code.map(|code| ErrorOut { code, message: r.error_message.unwrap_or_default() });
        Self {
            id: r.id,
            object: "run",
            thread_id: r.thread_id,
            assistant_id: r.assistant_id,
            user_message_id: r.user_message_id,
            status: r.status,
            attempt: r.attempt,
            model: r.model,
            upstream: r.upstream,
            output_text: r.output_text,
            last_seq: r.last_seq,
            finish_reason: r.finish_reason,
            usage,
            cost_usd: r.cost_usd,
            error,
            waiting_reason: r.waiting_reason,
            citations,
            created_at: r.created_at,
            started_at: r.started_at,
            first_token_at: r.first_token_at,
            completed_at: r.completed_at,
        }
    }
}

impl From<Run> for RunOut {
    fn from(r: Run) -> Self {
        Self::new(r, json!([]))
    }
}

const MAX_CLIENT_ID: usize = 200;

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => {
            let s = v.to_str().map_err(|_| ApiError::BadRequest {
                code: ApiErrorCode::InvalidHeader,
                message: format!("{name} must be ASCII"),
            })?;
            if s.is_empty() || s.len() > MAX_CLIENT_ID {
                return Err(ApiError::BadRequest {
                    code: ApiErrorCode::InvalidHeader,
                    message: format!("{name} must be 1 to {MAX_CLIENT_ID} characters"),
                });
            }
            Ok(Some(s))
        }
    }
}

/// Send a message: stores it and queues its answer. 202 with the new run; 200 with the
/// original run when the `Idempotency-Key` or `client_message_id` was seen before; 409
/// `thread_busy` while another run of the thread is active. With `stream: true` or
/// `Accept: text/event-stream` the answer is the run's event stream (SSE) instead, starting
/// with `run.queued` (which carries the run id); disconnecting never cancels the run.
#[utoipa::path(post, path = "/v1/threads/{id}/runs", tag = "runs", request_body = RunIn,
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe")),
    responses((status = 202, body = RunOut), (status = 200, body = RunOut, description = "a repeated submit, or the SSE stream when asked for"),
              (status = 404), (status = 409, description = "thread_busy"), (status = 413), (status = 422),
              (status = 429, description = "rate_limited, budget_exhausted, or too_many_streams when asked for a stream, with Retry-After and RateLimit-* headers")))]
pub async fn create_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(thread_id): Path<Uuid>,
    headers: HeaderMap,
    Json(input): Json<RunIn>,
) -> Result<Response, ApiError> {
    let stream = input.stream == Some(true)
        || headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream"));
    // An event stream takes its place under the stream caps before the run is submitted, so a
    // refused stream submits nothing.
    let slot = if stream { Some(state.streams.acquire(&principal)?) } else { None };
    let sse_state = state.clone();
    let sse_principal = principal.clone();
    let answer = move |status: StatusCode, run: Run| -> Response {
        if let Some(slot) = slot {
            super::run_events::sse(sse_state.clone(), run.id, 0, run.is_terminal(), sse_principal.clone(), slot)
                .into_response()
        } else {
            (status, Json(RunOut::from(run))).into_response()
        }
    };
    let idempotency_key = header_str(&headers, "idempotency-key")?;
    if input.input.len() > state.config.limits.max_message_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "input must be at most {} bytes",
            state.config.limits.max_message_bytes
        )));
    }
    let thread =
        db::threads::get(&state.pool, thread_id, &principal.owner()).await?.ok_or(ApiError::NotFound("thread"))?;
    if let Some(id) = input.assistant_id
        && Some(id) != thread.assistant_id
        && !principal.may_choose_assistant(id)
    {
        return Err(ApiError::Forbidden("this user token is not allowed to use that assistant"));
    }

    // A repeated request returns the original run, never a second one.
    if let Some(existing) =
        find_duplicate(&state, &principal, thread.id, idempotency_key, input.client_message_id.as_deref()).await?
    {
        state.metrics.runs_submitted.with_label_values(&["duplicate"]).inc();
        return Ok(answer(StatusCode::OK, existing));
    }

    let assistant_id = input
        .assistant_id
        .or(thread.assistant_id)
        .ok_or_else(|| ApiError::invalid("assistant_id is required: the thread has no assistant"))?;
    let assistant = db::assistants::get(&state.pool, assistant_id).await?.ok_or(ApiError::NotFound("assistant"))?;
    crate::ratelimit::admit_run(&state, &principal, thread.end_user.as_deref()).await.inspect_err(|e| {
        if matches!(e, ApiError::RateLimited { .. }) {
            state.metrics.runs_submitted.with_label_values(&["rate_limited"]).inc();
        }
    })?;

    let new = db::runs::NewRun {
        thread_id: thread.id,
        assistant_id: assistant.id,
        model: &assistant.model,
        fallback_models: &assistant.fallback_models,
        api_key_id: principal.key_id,
        input: &input.input,
        client_message_id: input.client_message_id.as_deref(),
        idempotency_key,
        idempotency_user: principal.end_user.as_deref(),
    };
    // The active-run limit and the budget are checked again in the transaction that stores the
    // run: concurrent submits all passed the early checks above.
    let limits = crate::ratelimit::run_limits(&state, &principal, thread.end_user.as_deref());
    let run = match db::runs::submit_within(&state.pool, &new, limits).await {
        Ok(Ok(run)) => run,
        Ok(Err(refusal)) => {
            state.metrics.runs_submitted.with_label_values(&["rate_limited"]).inc();
            return Err(crate::ratelimit::refused(&state, &principal, refusal));
        }
        Err(e) => match db::violated_constraint(&e) {
            Some(db::runs::ONE_ACTIVE_PER_THREAD) => {
                state.metrics.runs_submitted.with_label_values(&["busy"]).inc();
                let active = db::runs::active_for_thread(&state.pool, thread.id).await?;
                return Err(ApiError::Conflict {
                    code: ApiErrorCode::ThreadBusy,
                    message: "another run of this thread is still active; wait for it or cancel it".into(),
                    details: json!({ "active_run_id": active.map(|r| r.id) }),
                });
            }
            // A concurrent duplicate won the race: answer with its run.
            Some(db::runs::IDEMPOTENCY_KEY | db::runs::CLIENT_MESSAGE_ID) => {
                let existing =
                    find_duplicate(&state, &principal, thread.id, idempotency_key, input.client_message_id.as_deref())
                        .await?
                        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("duplicate run vanished")))?;
                state.metrics.runs_submitted.with_label_values(&["duplicate"]).inc();
                return Ok(answer(StatusCode::OK, existing));
            }
            _ => return Err(e.into()),
        },
    };

    // The run is committed; if Redis is down the worker's reconciler pushes it later.
    match jobs::push(&state.chat_queue, jobs::ChatRun { run_id: run.id }, run.id.to_string()).await {
        Ok(()) => state.metrics.runs_submitted.with_label_values(&["accepted"]).inc(),
        Err(e) => {
            state.metrics.runs_submitted.with_label_values(&["enqueue_failed"]).inc();
            tracing::warn!(run.id = %run.id, error = %e, "run stored but not enqueued; the reconciler will enqueue it");
        }
    }
    Ok(answer(StatusCode::ACCEPTED, run))
}

async fn find_duplicate(
    state: &AppState,
    principal: &Principal,
    thread_id: Uuid,
    idempotency_key: Option<&str>,
    client_message_id: Option<&str>,
) -> Result<Option<Run>, ApiError> {
    if let Some(key) = idempotency_key
        && let Some(run) =
            db::runs::find_by_idempotency_key(&state.pool, principal.key_id, principal.end_user.as_deref(), key).await?
    {
        if run.thread_id != thread_id {
            return Err(ApiError::Conflict {
                code: ApiErrorCode::IdempotencyKeyReused,
                message: "this Idempotency-Key was used for another thread".into(),
                details: Value::Null,
            });
        }
        return Ok(Some(run));
    }
    if let Some(cmid) = client_message_id {
        return Ok(db::runs::find_by_client_message_id(&state.pool, thread_id, cmid).await?);
    }
    Ok(None)
}

/// A thread's runs, oldest first.
#[utoipa::path(get, path = "/v1/threads/{id}/runs", tag = "runs", params(("id" = Uuid, Path), PageQuery),
    responses((status = 200, body = List<RunOut>), (status = 404)))]
pub async fn list_runs(
    State(state): State<AppState>,
    principal: Principal,
    Path(thread_id): Path<Uuid>,
    Query(q): Query<PageQuery>,
) -> Result<Json<List<RunOut>>, ApiError> {
    let thread =
        db::threads::get(&state.pool, thread_id, &principal.owner()).await?.ok_or(ApiError::NotFound("thread"))?;
    let page = db::runs::list_for_thread(&state.pool, thread.id, q.after, q.limit()?).await?;
    Ok(Json(List::new(page, |r| r.id, RunOut::from)))
}

/// A run: status, the answer so far, usage, cost, error.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs", params(("id" = Uuid, Path)),
    responses((status = 200, body = RunOut), (status = 404)))]
pub async fn get_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<RunOut>, ApiError> {
    let run = visible_run(&state, &principal, id).await?;
    let citations = if run.status == RunStatus::Completed {
        db::messages::answer_citations(&state.pool, run.id).await?
    } else {
        json!([])
    };
    Ok(Json(RunOut::new(run, citations)))
}

/// The run if the caller may see its thread; 404 otherwise.
pub async fn visible_run(state: &AppState, principal: &Principal, id: Uuid) -> Result<Run, ApiError> {
    let run = db::runs::get(&state.pool, id).await?.ok_or(ApiError::NotFound("run"))?;
    db::threads::get(&state.pool, run.thread_id, &principal.owner()).await?.ok_or(ApiError::NotFound("run"))?;
    Ok(run)
}

/// Stop a run: a queued run is cancelled before it starts; a running one is stopped by its
/// worker within about a second, keeping the partial answer. Idempotent; a finished run is
/// returned unchanged.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", tag = "runs", params(("id" = Uuid, Path)),
    responses((status = 200, body = RunOut), (status = 404)))]
pub async fn cancel_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<RunOut>, ApiError> {
    let run = visible_run(&state, &principal, id).await?;
    if run.is_terminal() {
        return Ok(Json(run.into()));
    }
    if run.status == RunStatus::Queued
        && let Some(event) = db::runs::cancel_queued(&state.pool, run.id).await?
    {
        state.metrics.runs_cancel_requested.inc();
        run_stream::publish(&state.redis, state.queues.prefix(), &event, state.config.streaming.run_stream_ttl).await;
        let run = db::runs::get(&state.pool, run.id).await?.ok_or(ApiError::NotFound("run"))?;
        return Ok(Json(run.into()));
    }
    if db::runs::request_cancel(&state.pool, run.id).await? {
        state.metrics.runs_cancel_requested.inc();
    }
    // Tell every worker; the one running it stops. The Postgres flag covers a lost message.
    if let Err(e) = redis_formats::cancel::publish(&state.redis, state.queues.prefix(), run.id).await {
        tracing::warn!(run.id = %run.id, error = %e, "cannot publish the cancel signal; the worker sees the flag later");
    }
    // Answer with the final state when the worker is quick, as it usually is.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let run = db::runs::get(&state.pool, run.id).await?.ok_or(ApiError::NotFound("run"))?;
        if run.is_terminal() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(run.into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
