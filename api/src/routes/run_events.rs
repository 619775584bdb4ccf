//! `/v1/runs/{id}/events`: a run's events as SSE with exact resume, or as a JSON long-poll page.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{FromRequestParts, State},
    http::{HeaderMap, request::Parts},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use chatq_common::{
    db,
    events::{EventKind, RunEvent},
};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::runs::visible_run;
use crate::{
    auth::{self, Principal},
    error::{ApiError, ApiErrorCode},
    extract::{Json, Path, Query},
    hub,
    state::AppState,
    stream_limits::StreamSlot,
};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(run_events))
}

/// Events read from Postgres/Redis per round trip.
const PAGE: usize = 1_000;
/// Longest JSON long-poll.
const MAX_WAIT_MS: u64 = 30_000;
/// Heartbeat comment interval.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Where to resume and how to answer.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Return events after this `seq` (`Last-Event-ID` wins when both are sent).
    pub after: Option<i64>,
    /// `json` for a JSON page instead of SSE.
    pub format: Option<String>,
    /// JSON only: wait up to this many milliseconds (max 30000) for a first event.
    pub wait_ms: Option<u64>,
    /// A user token, for `EventSource`, which cannot send headers.
    pub access_token: Option<String>,
}

impl crate::validate::Validate for EventsQuery {
    fn validate(&self, p: &mut crate::validate::Problems) {
        p.opt_text("format", self.format.as_deref(), 1, 16);
        p.opt_text("access_token", self.access_token.as_deref(), 1, 4096);
    }
}

/// One event in a JSON page.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventOut {
    /// Position in the run's log, gapless from 1.
    pub seq: i64,
    /// `run.queued`, `run.started`, `message.delta`, `run.reset`, `run.snapshot`, `citation`,
    /// `run.completed`, `run.failed` or `run.cancelled`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Payload.
    #[schema(value_type = Object)]
    pub data: Value,
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    /// Events in order.
    pub events: Vec<EventOut>,
    /// Pass as `after` for the next page.
    pub next_after: i64,
    /// The run is finished and every event was returned.
    pub done: bool,
}

/// The caller of the events route: a Bearer key or user token, or a user token in
/// `?access_token=` (API keys are never accepted in URLs).
pub struct EventsPrincipal(pub Principal);

impl FromRequestParts<AppState> for EventsPrincipal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if auth::has_bearer(parts) {
            return Principal::from_request_parts(parts, state).await.map(EventsPrincipal);
        }
        let token = parts
            .uri
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=")))
            .ok_or(ApiError::Unauthorized)?;
        if !token.starts_with(crate::user_token::PREFIX) {
            return Err(ApiError::Unauthorized);
        }
        auth::resolve_user_token(state, token).await.map(EventsPrincipal)
    }
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(v) => v.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()).filter(|n| *n >= 0).map(Some).ok_or(
            ApiError::BadRequest {
                code: ApiErrorCode::InvalidHeader,
                message: "Last-Event-ID must be an event seq".into(),
            },
        ),
    }
}

/// The run's events from `Last-Event-ID` or `?after=`: SSE (`id:` is the `seq`, `event:` the
/// type, `data:` JSON; heartbeat comments every 15 s; closes after the terminal event), or
/// with `?format=json` a page `{events, next_after, done}` that waits up to `wait_ms` for a
/// first event.
#[utoipa::path(get, path = "/v1/runs/{id}/events", tag = "runs", params(("id" = Uuid, Path), EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this seq")),
    responses((status = 200, description = "text/event-stream, or an events page with format=json", body = EventsPage),
              (status = 401), (status = 404),
              (status = 429, description = "too_many_streams, with Retry-After")))]
pub async fn run_events(
    State(state): State<AppState>,
    EventsPrincipal(principal): EventsPrincipal,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let run = visible_run(&state, &principal, id).await?;
    let requested = last_event_id(&headers)?.or(q.after).unwrap_or(0).max(0);
    let json = match q.format.as_deref() {
        None | Some("sse") => false,
        Some("json") => true,
        Some(_) => {
            return Err(ApiError::BadRequest {
                code: ApiErrorCode::InvalidQuery,
                message: "format must be sse or json".into(),
            });
        }
    };
    let slot = state.streams.acquire(&principal)?;
    // A cursor past the newest event would wait for events that never come: resume from the
    // newest event instead. Without Redis the newest is unknown; the stream then still ends
    // with its run (the run re-check), and the arithmetic on the cursor saturates.
    let newest = if run.is_terminal() {
        Some(run.last_seq)
    } else {
        hub::last_seq(&state.redis, &state.queues, run.id, run.last_seq).await
    };
    let after = newest.map_or(requested, |newest| requested.min(newest));
    if json {
        // Leave a second of the request timeout for the reads around the wait.
        let fit = state.config.http.request_timeout.saturating_sub(Duration::from_secs(1));
        let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(MAX_WAIT_MS)).min(fit);
        // A long-poll waits no longer than the user token that asked.
        let page = tokio::select! {
            page = page(&state, run.id, run.is_terminal(), after, wait) => page?,
            () = auth::lapsed(&state, &principal) => return Err(ApiError::Unauthorized),
        };
        drop(slot);
        Ok(Json(page).into_response())
    } else {
        Ok(sse(state, run.id, after, run.is_terminal(), principal, slot).into_response())
    }
}

async fn page(
    state: &AppState,
    run_id: Uuid,
    terminal: bool,
    after: i64,
    wait: Duration,
) -> Result<EventsPage, ApiError> {
    let fetch = || hub::catch_up(&state.pool, &state.redis, &state.queues, run_id, after, PAGE);
    let mut events = fetch().await?;
    if events.is_empty() && !terminal && !wait.is_zero() {
        // Subscribe, then look again: an event written in between is not missed.
        let mut sub = state.hub.subscribe(run_id, after).await;
        events = fetch().await?;
        if events.is_empty() {
            let deadline = tokio::time::Instant::now() + wait;
            let healthy = state.hub.healthy();
            loop {
                let poll = if healthy { wait } else { Duration::from_millis(250) };
                tokio::select! {
                    e = sub.rx.recv() => match e {
                        Some(e) if e.seq <= after => continue,
                        _ => {}
                    },
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = tokio::time::sleep(poll) => {}
                }
                events = fetch().await?;
                if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
        }
    }
    if let Some(s) = snapshot(state, run_id, after.saturating_add(1), &events).await? {
        events.insert(0, s);
    }
    let next_after = events.last().map_or(after, |e| e.seq);
    let done = events.last().is_some_and(|e| e.kind.is_terminal())
        || (events.is_empty() && db::runs::get(&state.pool, run_id).await?.is_some_and(|r| r.is_terminal()));
    let events = events.into_iter().map(|e| EventOut { seq: e.seq, kind: e.kind.as_str(), data: e.data }).collect();
    Ok(EventsPage { events, next_after, done })
}

/// The SSE response following a run from `after`. `finished`: the run was terminal before the
/// stream opened, so the log holds every event and the stream ends after replaying it. The
/// stream holds `slot` while open, ends when `principal`'s user token expires or is revoked, and
/// is closed after `CHATQ_STREAM_MAX_LIFETIME_SECS`; the client resumes with `Last-Event-ID`.
pub fn sse(
    state: AppState,
    run_id: Uuid,
    after: i64,
    finished: bool,
    principal: Principal,
    slot: StreamSlot,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let lifetime = state.config.http.stream_max_lifetime;
        tokio::select! {
            r = tokio::time::timeout(lifetime, follow(&state, Ids::Seq, run_id, after, finished, &tx)) => match r {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(run.id = %run_id, error = %e, "event stream ended by an error; the client can resume")
                }
                Err(_) => {
                    tracing::debug!(run.id = %run_id, "event stream reached its maximum lifetime; the client resumes")
                }
            },
            () = auth::lapsed(&state, &principal) => {}
        }
        drop(slot);
    });
    let stream = futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(HEARTBEAT))
}

/// How SSE `id:`s name an event: the run stream's `seq`, or the thread stream's `<run_id>:<seq>`
/// (a cursor that also says which run it is in).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ids {
    /// `id:` is the event's `seq`.
    Seq,
    /// `id:` is `<run_id>:<seq>`.
    RunSeq,
}

fn to_sse(ids: Ids, e: &RunEvent) -> Event {
    let id = match ids {
        Ids::Seq => e.seq.to_string(),
        Ids::RunSeq => format!("{}:{}", e.run_id, e.seq),
    };
    Event::default().id(id).event(e.kind.as_str()).data(e.data.to_string())
}

enum Stop {
    Done,
    Gone,
}

/// Why [`follow`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Every event of the run was sent (or the run was deleted).
    Finished,
    /// The client went away.
    ClientGone,
    /// The stream fell behind the hub; the client resumes from its last id.
    Lagged,
}

fn ended(stop: Stop) -> Ended {
    match stop {
        Stop::Done => Ended::Finished,
        Stop::Gone => Ended::ClientGone,
    }
}

/// Sends events in order from `next`; `Err(Stop)` when the stream must end.
async fn send_all(ids: Ids, tx: &mpsc::Sender<Event>, next: &mut i64, events: &[RunEvent]) -> Result<(), Stop> {
    for e in events {
        if e.seq != *next {
            continue;
        }
        tx.send(to_sse(ids, e)).await.map_err(|_| Stop::Gone)?;
        *next = next.saturating_add(1);
        if e.kind.is_terminal() {
            return Err(Stop::Done);
        }
    }
    Ok(())
}

/// A `run.snapshot` standing in for the events before `events` when the log skips ahead of
/// `next`: retention deleted the middle of a finished run, and the run's answer so far still
/// reaches the client. `None` when nothing is missing.
async fn snapshot(
    state: &AppState,
    run_id: Uuid,
    next: i64,
    events: &[RunEvent],
) -> Result<Option<RunEvent>, sqlx::Error> {
    let Some(first) = events.first().filter(|e| e.seq > next) else {
        return Ok(None);
    };
    let text = db::runs::get(&state.pool, run_id).await?.map(|r| r.output_text).unwrap_or_default();
    Ok(Some(RunEvent {
        run_id,
        seq: first.seq - 1,
        attempt: first.attempt,
        kind: EventKind::Snapshot,
        data: json!({ "text": text }),
    }))
}

/// Sends events read from the log from `next`, with a snapshot first when the log skips ahead.
async fn send_log(
    state: &AppState,
    ids: Ids,
    run_id: Uuid,
    tx: &mpsc::Sender<Event>,
    next: &mut i64,
    events: &[RunEvent],
) -> Result<Result<(), Stop>, sqlx::Error> {
    if let Some(s) = snapshot(state, run_id, *next, events).await? {
        if tx.send(to_sse(ids, &s)).await.is_err() {
            return Ok(Err(Stop::Gone));
        }
        *next = s.seq.saturating_add(1);
    }
    Ok(send_all(ids, tx, next, events).await)
}

/// Replays the log after `after`, then follows the live tail from the hub without a gap or a
/// duplicate: subscribe first, read the backlog, then take hub events in `seq` order, filling
/// any hole from the log.
pub(crate) async fn follow(
    state: &AppState,
    ids: Ids,
    run_id: Uuid,
    after: i64,
    finished: bool,
    tx: &mpsc::Sender<Event>,
) -> Result<Ended, sqlx::Error> {
    if finished {
        // Postgres has the whole log: replay what is after the cursor and close.
        let mut next = after.saturating_add(1);
        loop {
            let events = db::events::list_after(&state.pool, run_id, next - 1, PAGE as i64).await?;
            match send_log(state, ids, run_id, tx, &mut next, &events).await? {
                Err(stop) => return Ok(ended(stop)),
                Ok(()) if events.len() < PAGE => return Ok(Ended::Finished),
                Ok(()) => {}
            }
        }
    }
    let mut sub = state.hub.subscribe(run_id, after).await;
    let mut next = after.saturating_add(1);
    let catch_up = |from: i64| hub::catch_up(&state.pool, &state.redis, &state.queues, run_id, from - 1, PAGE);
    loop {
        let events = catch_up(next).await?;
        let full = events.len() >= PAGE;
        if let Err(stop) = send_log(state, ids, run_id, tx, &mut next, &events).await? {
            return Ok(ended(stop));
        }
        if !full {
            break;
        }
    }
    let mut ahead: BTreeMap<i64, Arc<RunEvent>> = BTreeMap::new();
    // A quiet stream re-reads its run this often: it ends when the run finished unseen (a lost
    // publish) or was deleted with its thread, which writes no terminal event.
    let run_recheck = state.config.http.stream_recheck;
    let mut run_checked = tokio::time::Instant::now();
    loop {
        let recheck = if !ahead.is_empty() {
            Duration::from_millis(50)
        } else if !state.hub.healthy() {
            Duration::from_secs(1)
        } else {
            run_recheck
        };
        let mut need_log = false;
        tokio::select! {
            e = sub.rx.recv() => match e {
                // Dropped for falling behind: end the stream; the client resumes from its last id.
                None => return Ok(Ended::Lagged),
                Some(e) if e.seq < next => {}
                Some(e) if e.seq == next => {
                    if let Err(stop) = send_all(ids, tx, &mut next, std::slice::from_ref(&e)).await {
                        return Ok(ended(stop));
                    }
                    while let Some(e) = ahead.remove(&next) {
                        if let Err(stop) = send_all(ids, tx, &mut next, std::slice::from_ref(&e)).await {
                            return Ok(ended(stop));
                        }
                    }
                }
                Some(e) => {
                    ahead.insert(e.seq, e);
                    need_log = ahead.len() == 1;
                }
            },
            _ = tokio::time::sleep(recheck) => need_log = true,
            _ = tx.closed() => return Ok(Ended::ClientGone),
        }
        if need_log {
            // Read the run before the log: a run terminal here has its whole log in Postgres.
            let run = if run_checked.elapsed() >= run_recheck {
                run_checked = tokio::time::Instant::now();
                Some(db::runs::get(&state.pool, run_id).await?)
            } else {
                None
            };
            let events = catch_up(next).await?;
            if let Err(stop) = send_log(state, ids, run_id, tx, &mut next, &events).await? {
                return Ok(ended(stop));
            }
            if run.is_some_and(|r| r.is_none_or(|r| r.is_terminal())) {
                return Ok(Ended::Finished);
            }
            ahead.retain(|seq, _| *seq >= next);
            while let Some(e) = ahead.remove(&next) {
                if let Err(stop) = send_all(ids, tx, &mut next, std::slice::from_ref(&e)).await {
                    return Ok(ended(stop));
                }
            }
        }
    }
}
