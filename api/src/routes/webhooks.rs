//! `/v1/webhooks` (admin): subscriptions to run, document and batch events, their deliveries
//! and a manual retry. The signing secret is shown once, at creation; it is stored sealed.

use axum::{extract::State, http::StatusCode};
use chatq_common::{
    db::{self, webhooks::Webhook},
    jobs::{self, WebhookDelivery},
    webhooks::{self as hooks, SecretBox},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::Principal,
    error::ApiError,
    extract::{Json, Path, Query},
    routes::{List, PageQuery},
    state::AppState,
    validate::{Problems, Validate},
};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, delete_webhook))
        .routes(routes!(list_deliveries))
        .routes(routes!(retry_delivery))
}

/// A new subscription.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookIn {
    /// Where deliveries are POSTed: an `http` or `https` URL without credentials. Private,
    /// loopback and link-local destinations are refused at send time unless the worker has
    /// `CHATQ_WEBHOOKS_ALLOW_PRIVATE=1`.
    #[schema(max_length = 2048)]
    pub url: String,
    /// The events to receive (at least one): `run.completed`, `run.failed`, `document.ready`,
    /// `document.failed`, `batch.completed`.
    pub events: Vec<String>,
    /// Free text (at most 500 characters).
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

impl Validate for WebhookIn {
    fn validate(&self, p: &mut Problems) {
        p.text("url", &self.url, 1, 2048);
        if let Some(problem) = hooks::url_problem(&self.url) {
            p.add("url", problem);
        }
        if self.events.is_empty() {
            p.add("events", "name at least one event");
        }
        for e in &self.events {
            if !hooks::EVENTS.contains(&e.as_str()) {
                p.add("events", format!("unknown event {e:?}; known: {}", hooks::EVENTS.join(", ")));
            }
        }
        p.opt_text("description", self.description.as_deref(), 0, 500);
    }
}

/// A subscription.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookOut {
    /// Id.
    pub id: Uuid,
    /// Always `webhook`.
    pub object: &'static str,
    /// Destination.
    pub url: String,
    /// Events it receives.
    pub events: Vec<String>,
    /// Free text.
    pub description: Option<String>,
    /// The signing secret (`whsec_` + base64), only in the answer to the creation: keep it,
    /// it is never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl From<Webhook> for WebhookOut {
    fn from(w: Webhook) -> Self {
        Self {
            id: w.id,
            object: "webhook",
            url: w.url,
            events: w.events,
            description: w.description,
            secret: None,
            created_at: w.created_at,
        }
    }
}

fn secret_box(state: &AppState) -> Result<SecretBox, ApiError> {
    SecretBox::from_config(&state.config).ok_or(ApiError::Unavailable(
        "webhooks need CHATQ_TOKEN_SECRET (on the API and the worker) to seal their secrets",
    ))
}

/// Subscribe to events. The answer carries the signing secret, the only time it is shown.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = WebhookIn,
    responses((status = 201, body = WebhookOut), (status = 403), (status = 422), (status = 503)))]
pub async fn create_webhook(
    State(state): State<AppState>,
    principal: Principal,
    Json(input): Json<WebhookIn>,
) -> Result<(StatusCode, Json<WebhookOut>), ApiError> {
    principal.require_admin()?;
    let sealer = secret_box(&state)?;
    let secret = hooks::new_secret();
    let mut events = input.events;
    events.sort();
    events.dedup();
    let sealed = sealer.seal(&secret);
    let new = db::webhooks::NewWebhook {
        url: &input.url,
        events: &events,
        description: input.description.as_deref(),
        secret_sealed: &sealed,
    };
    let webhook = db::webhooks::create(&state.pool, &new).await?;
    tracing::info!(webhook.id = %webhook.id, events = ?webhook.events, "webhook created");
    let mut out = WebhookOut::from(webhook);
    out.secret = Some(secret);
    Ok((StatusCode::CREATED, Json(out)))
}

/// List subscriptions (without their secrets).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", params(PageQuery),
    responses((status = 200, body = List<WebhookOut>), (status = 403)))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<PageQuery>,
) -> Result<Json<List<WebhookOut>>, ApiError> {
    principal.require_admin()?;
    let page = db::webhooks::list(&state.pool, q.after, q.limit()?).await?;
    Ok(Json(List::new(page, |w| w.id, WebhookOut::from)))
}

/// Get a subscription (without its secret).
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 200, body = WebhookOut), (status = 404)))]
pub async fn get_webhook(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<WebhookOut>, ApiError> {
    principal.require_admin()?;
    let w = db::webhooks::get(&state.pool, id).await?.ok_or(ApiError::NotFound("webhook"))?;
    Ok(Json(w.into()))
}

/// Delete a subscription and its delivery records; pending deliveries are not sent.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete_webhook(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    principal.require_admin()?;
    if db::webhooks::delete(&state.pool, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("webhook"))
    }
}

/// How many deliveries to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// The latest this many deliveries, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

impl Validate for DeliveriesQuery {
    fn validate(&self, p: &mut Problems) {
        p.range("limit", self.limit, 1, 100);
    }
}

/// One attempt of a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptOut {
    /// 1 for the first.
    pub attempt: i32,
    /// HTTP status the receiver answered, `null` when none came (refused, timeout, no connection).
    pub status_code: Option<i32>,
    /// Time to the answer or the error, in milliseconds.
    pub latency_ms: i32,
    /// Why it failed, `null` when it succeeded.
    pub error: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// One event sent (or to be sent) to one subscription.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryOut {
    /// Id, sent as the `webhook-id` header: the same on every attempt.
    pub id: Uuid,
    /// Always `webhook_delivery`.
    pub object: &'static str,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The run, document or batch it is about.
    pub subject_id: Uuid,
    /// `pending` (an attempt is due at `next_attempt_at`), `succeeded` or `failed` (gave up).
    pub status: String,
    /// Attempts made.
    pub attempt: i32,
    /// HTTP status of the last attempt.
    pub status_code: Option<i32>,
    /// Latency of the last attempt, in milliseconds.
    pub latency_ms: Option<i32>,
    /// Error of the last attempt.
    pub error: Option<String>,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptOut>,
    /// When the event happened.
    pub created_at: DateTime<Utc>,
}

/// The latest deliveries of a subscription, newest first, each with its attempts.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = Uuid, Path), DeliveriesQuery),
    responses((status = 200, body = List<DeliveryOut>), (status = 404)))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<List<DeliveryOut>>, ApiError> {
    principal.require_admin()?;
    db::webhooks::get(&state.pool, id).await?.ok_or(ApiError::NotFound("webhook"))?;
    let rows = db::webhooks::list_deliveries(&state.pool, id, q.limit.unwrap_or(20)).await?;
    let data = rows
        .into_iter()
        .map(|(d, attempts)| DeliveryOut {
            id: d.id,
            object: "webhook_delivery",
            event_type: d.event_type,
            subject_id: d.subject_id,
            status: d.status.clone(),
            attempt: d.attempt,
            status_code: d.last_status_code,
            latency_ms: attempts.last().map(|a| a.latency_ms),
            error: d.last_error,
            next_attempt_at: if d.status == "pending" { d.next_attempt_at } else { None },
            attempts: attempts
                .into_iter()
                .map(|a| AttemptOut {
                    attempt: a.attempt,
                    status_code: a.status_code,
                    latency_ms: a.latency_ms,
                    error: a.error,
                    created_at: a.created_at,
                })
                .collect(),
            created_at: d.created_at,
        })
        .collect();
    Ok(Json(List { data, next_after: None }))
}

/// Send a delivery again now, whatever its state (a failed one gets one more attempt). The
/// body and `webhook-id` stay the same, so a receiver that already has it can drop it.
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/retry", tag = "webhooks",
    params(("id" = Uuid, Path), ("delivery_id" = Uuid, Path)),
    responses((status = 202), (status = 404), (status = 503)))]
pub async fn retry_delivery(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, delivery_id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    principal.require_admin()?;
    if !db::webhooks::retry_now(&state.pool, id, delivery_id).await? {
        return Err(ApiError::NotFound("delivery"));
    }
    let storage = jobs::storage::<WebhookDelivery>(state.redis.clone(), &state.queues);
    // Pushed now; if this push fails the reconciler pushes the delivery once it is stale.
    if let Err(e) = jobs::push(&storage, WebhookDelivery { delivery_id }, jobs::fresh_task_id(delivery_id)).await {
        tracing::warn!(delivery.id = %delivery_id, error = %e, "cannot push a webhook retry; the reconciler will");
    }
    Ok(StatusCode::ACCEPTED)
}
