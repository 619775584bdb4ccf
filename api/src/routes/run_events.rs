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
use chatq_common::{db, events::RunEvent};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
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
};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(run_events))
}

/// Events read from Postgres/Redis per round trip.
const PAGE: usize = 1_000;
/// Longest JSON long-poll.
const MAX_WAIT_MS: u64 = 30_000;
/// How often an idle SSE subscriber re-checks the log (covers a lost Redis publish).
const IDLE_RECHECK: Duration = Duration::from_secs(30);
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
    /// `run.queued`, `run.started`, `message.delta`, `run.reset`, `citation`, `run.completed`,
    /// `run.failed` or `run.cancelled`.
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
              (status = 401), (status = 404)))]
pub async fn run_events(
    State(state): State<AppState>,
    EventsPrincipal(principal): EventsPrincipal,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let run = visible_run(&state, &principal, id).await?;
    let after = last_event_id(&headers)?.or(q.after).unwrap_or(0).max(0);
    match q.format.as_deref() {
        None | Some("sse") => Ok(sse(state, run.id, after, run.is_terminal()).into_response()),
        Some("json") => {
            let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(MAX_WAIT_MS));
            Ok(Json(page(&state, run.id, run.is_terminal(), after, wait).await?).into_response())
        }
        Some(_) => {
            Err(ApiError::BadRequest { code: ApiErrorCode::InvalidQuery, message: "format must be sse or json".into() })
        }
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
    let next_after = events.last().map_or(after, |e| e.seq);
    let done = events.last().is_some_and(|e| e.kind.is_terminal())
        || (events.is_empty() && db::runs::get(&state.pool, run_id).await?.is_some_and(|r| r.is_terminal()));
    let events = events.into_iter().map(|e| EventOut { seq: e.seq, kind: e.kind.as_str(), data: e.data }).collect();
    Ok(EventsPage { events, next_after, done })
}

/// The SSE response following a run from `after`. `finished`: the run was terminal before the
/// stream opened, so the log holds every event and the stream ends after replaying it.
pub fn sse(
    state: AppState,
    run_id: Uuid,
    after: i64,
    finished: bool,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        if let Err(e) = follow(&state, run_id, after, finished, &tx).await {
            tracing::warn!(run.id = %run_id, error = %e, "event stream ended by an error; the client can resume");
        }
    });
    let stream = futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(HEARTBEAT))
}

fn to_sse(e: &RunEvent) -> Event {
    Event::default().id(e.seq.to_string()).event(e.kind.as_str()).data(e.data.to_string())
}

enum Stop {
    Done,
    Gone,
}

/// Sends events in order from `next`; `Err(Stop)` when the stream must end.
async fn send_all(tx: &mpsc::Sender<Event>, next: &mut i64, events: &[RunEvent]) -> Result<(), Stop> {
    for e in events {
        if e.seq != *next {
            continue;
        }
        tx.send(to_sse(e)).await.map_err(|_| Stop::Gone)?;
        *next += 1;
        if e.kind.is_terminal() {
            return Err(Stop::Done);
        }
    }
    Ok(())
}

/// Replays the log after `after`, then follows the live tail from the hub without a gap or a
/// duplicate: subscribe first, read the backlog, then take hub events in `seq` order, filling
/// any hole from the log.
async fn follow(
    state: &AppState,
    run_id: Uuid,
    after: i64,
    finished: bool,
    tx: &mpsc::Sender<Event>,
) -> Result<(), sqlx::Error> {
    if finished {
        // Postgres has the whole log: replay what is after the cursor and close.
        let mut next = after + 1;
        loop {
            let events = db::events::list_after(&state.pool, run_id, next - 1, PAGE as i64).await?;
            if send_all(tx, &mut next, &events).await.is_err() || events.len() < PAGE {
                return Ok(());
            }
        }
    }
    let mut sub = state.hub.subscribe(run_id, after).await;
    let mut next = after + 1;
    let catch_up = |from: i64| hub::catch_up(&state.pool, &state.redis, &state.queues, run_id, from - 1, PAGE);
    loop {
        let events = catch_up(next).await?;
        let full = events.len() >= PAGE;
        if send_all(tx, &mut next, &events).await.is_err() {
            return Ok(());
        }
        if !full {
            break;
        }
    }
    let mut ahead: BTreeMap<i64, Arc<RunEvent>> = BTreeMap::new();
    loop {
        let recheck = if !ahead.is_empty() {
            Duration::from_millis(50)
        } else if !state.hub.healthy() {
            Duration::from_secs(1)
        } else {
            IDLE_RECHECK
        };
        let mut need_log = false;
        tokio::select! {
            e = sub.rx.recv() => match e {
                // Dropped for falling behind: end the stream; the client resumes from its last id.
                None => return Ok(()),
                Some(e) if e.seq < next => {}
                Some(e) if e.seq == next => {
                    if send_all(tx, &mut next, std::slice::from_ref(&e)).await.is_err() {
                        return Ok(());
                    }
                    while let Some(e) = ahead.remove(&next) {
                        if send_all(tx, &mut next, std::slice::from_ref(&e)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                Some(e) => {
                    ahead.insert(e.seq, e);
                    need_log = ahead.len() == 1;
                }
            },
            _ = tokio::time::sleep(recheck) => need_log = true,
            _ = tx.closed() => return Ok(()),
        }
        if need_log {
            let events = catch_up(next).await?;
            if send_all(tx, &mut next, &events).await.is_err() {
                return Ok(());
            }
            ahead.retain(|seq, _| *seq >= next);
            while let Some(e) = ahead.remove(&next) {
                if send_all(tx, &mut next, std::slice::from_ref(&e)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
