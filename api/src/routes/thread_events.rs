//! `/v1/threads/{id}/events`: one SSE stream following a whole thread across its runs.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    http::HeaderMap,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use chatq_common::db::{self, runs::Run, threads::Owner};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::run_events::{Ended, EventsPrincipal, Ids, follow};
use crate::{
    auth,
    error::{ApiError, ApiErrorCode},
    extract::{Path, Query},
    hub,
    state::AppState,
};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(thread_events))
}

/// How often a stream whose runs have all finished looks for the thread's next run.
const NEXT_RUN_POLL: Duration = Duration::from_secs(1);
/// Heartbeat comment interval.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Where to resume.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ThreadEventsQuery {
    /// Return events after this event id, `<run_id>:<seq>` (`Last-Event-ID` wins when both are sent).
    pub after: Option<String>,
    /// A user token, for `EventSource`, which cannot send headers.
    pub access_token: Option<String>,
}

impl crate::validate::Validate for ThreadEventsQuery {
    fn validate(&self, p: &mut crate::validate::Problems) {
        p.opt_text("after", self.after.as_deref(), 1, 64);
        p.opt_text("access_token", self.access_token.as_deref(), 1, 4096);
    }
}

/// A position in a thread's stream: after event `seq` of run `run_id` (`seq` 0 is the run's
/// `message.created`).
#[derive(Debug, Clone, Copy)]
struct Cursor {
    run_id: Uuid,
    seq: i64,
}

fn parse_cursor(s: &str) -> Option<Cursor> {
    let (run, seq) = s.trim().split_once(':')?;
    Some(Cursor { run_id: run.parse().ok()?, seq: seq.parse().ok().filter(|n: &i64| *n >= 0)? })
}

/// The resume position and the error code a bad one is reported with.
fn cursor(headers: &HeaderMap, q: &ThreadEventsQuery) -> Result<Option<(Cursor, ApiErrorCode)>, ApiError> {
    let (given, code, what) = match (headers.get("last-event-id"), q.after.as_deref()) {
        (Some(v), _) => (v.to_str().ok(), ApiErrorCode::InvalidHeader, "Last-Event-ID"),
        (None, Some(s)) => (Some(s), ApiErrorCode::InvalidQuery, "after"),
        (None, None) => return Ok(None),
    };
    given.and_then(parse_cursor).map(|c| Some((c, code))).ok_or(ApiError::BadRequest {
        code,
        message: format!("{what} must be an event id of this thread's stream, <run_id>:<seq>"),
    })
}

/// The thread's user messages and every event of its runs, in order, from `Last-Event-ID` or
/// `?after=`, live: `message.created` (`{id, role, content, created_at, run_id}`) for each run's
/// user message, then that run's events, then the next run's. `id:` is `<run_id>:<seq>` (the
/// message is `seq` 0). Heartbeat comments every 15 s; the stream ends when the thread is
/// deleted, when the user token expires or is revoked, and after
/// `CHATQ_STREAM_MAX_LIFETIME_SECS` (the client resumes with `Last-Event-ID`).
#[utoipa::path(get, path = "/v1/threads/{id}/events", tag = "threads", params(("id" = Uuid, Path), ThreadEventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id, `<run_id>:<seq>`")),
    responses((status = 200, description = "text/event-stream"),
              (status = 401), (status = 404),
              (status = 429, description = "too_many_streams, with Retry-After")))]
pub async fn thread_events(
    State(state): State<AppState>,
    EventsPrincipal(principal): EventsPrincipal,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Query(q): Query<ThreadEventsQuery>,
) -> Result<Response, ApiError> {
    let owner = principal.owner();
    db::threads::get(&state.pool, id, &owner).await?.ok_or(ApiError::NotFound("thread"))?;
    let start = match cursor(&headers, &q)? {
        None => None,
        Some((c, code)) => {
            let run = db::runs::get(&state.pool, c.run_id)
                .await?
                .filter(|r| r.thread_id == id)
                .ok_or(ApiError::BadRequest { code, message: "the event id names no run of this thread".into() })?;
            Some((run, c.seq))
        }
    };
    let slot = state.streams.acquire(&principal)?;
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let lifetime = state.config.http.stream_max_lifetime;
        tokio::select! {
            r = tokio::time::timeout(lifetime, follow_thread(&state, id, &owner, start, &tx)) => match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(thread.id = %id, error = %e, "thread stream ended by an error; the client can resume")
                }
                Err(_) => {
                    tracing::debug!(thread.id = %id, "thread stream reached its maximum lifetime; the client resumes")
                }
            },
            () = auth::lapsed(&state, &principal) => {}
        }
        drop(slot);
    });
    let stream = futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok::<_, Infallible>);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(HEARTBEAT)).into_response())
}

/// Follows the thread from `start` (a run and the last `seq` the client has of it; `None`: from
/// the thread's first run), one run after another in creation order, until the thread is
/// deleted or the client leaves.
async fn follow_thread(
    state: &AppState,
    thread_id: Uuid,
    owner: &Owner,
    start: Option<(Run, i64)>,
    tx: &mpsc::Sender<Event>,
) -> Result<(), sqlx::Error> {
    let mut current = start;
    let mut previous: Option<Uuid> = None;
    loop {
        let (run, after) = match current.take() {
            Some(c) => c,
            None => match next_run(state, thread_id, owner, previous, tx).await? {
                Some(run) => (run, -1),
                None => return Ok(()),
            },
        };
        previous = Some(run.id);
        if after < 0 {
            // The run's user message comes before its first event; a message deleted with its
            // thread is skipped, and `next_run` then finds the thread gone and ends the stream.
            if let Some(m) = db::messages::get(&state.pool, run.user_message_id).await? {
                let data = json!({
                    "id": m.id, "role": m.role, "content": m.content, "created_at": m.created_at, "run_id": run.id,
                });
                let event =
                    Event::default().id(format!("{}:0", run.id)).event("message.created").data(data.to_string());
                if tx.send(event).await.is_err() {
                    return Ok(());
                }
            }
        }
        // Re-read the run: a run terminal now has its whole log in Postgres.
        let Some(run) = db::runs::get(&state.pool, run.id).await? else {
            continue;
        };
        // A cursor past the newest event would wait for events that never come.
        let newest = if run.is_terminal() {
            Some(run.last_seq)
        } else {
            hub::last_seq(&state.redis, &state.queues, run.id, run.last_seq).await
        };
        let after = newest.map_or(after.max(0), |n| after.clamp(0, n));
        match follow(state, Ids::RunSeq, run.id, after, run.is_terminal(), tx).await? {
            Ended::Finished => {}
            Ended::ClientGone | Ended::Lagged => return Ok(()),
        }
    }
}

/// The thread's first run after `previous` (its first run when `None`), waiting for it to be
/// created; `None` when the thread is gone or the client left.
async fn next_run(
    state: &AppState,
    thread_id: Uuid,
    owner: &Owner,
    previous: Option<Uuid>,
    tx: &mpsc::Sender<Event>,
) -> Result<Option<Run>, sqlx::Error> {
    loop {
        // Run ids are time-ordered, so "after `previous`" is "created after it".
        if let Some(run) = db::runs::list_for_thread(&state.pool, thread_id, previous, 1).await?.rows.pop() {
            return Ok(Some(run));
        }
        if db::threads::get(&state.pool, thread_id, owner).await?.is_none() {
            return Ok(None);
        }
        tokio::select! {
            _ = tokio::time::sleep(NEXT_RUN_POLL) => {}
            _ = tx.closed() => return Ok(None),
        }
    }
}
