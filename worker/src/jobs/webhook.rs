//! `WebhookDelivery`: one signed attempt of one webhook delivery. Idempotent: the delivery is
//! claimed in Postgres (pending, due, not being sent) before anything is sent, every attempt
//! is recorded there, and the next attempt is a new job pushed with the retry delay.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use apalis::prelude::{BoxDynError, Data};
use chatq_common::{
    config::Config,
    db::{self, webhooks::AttemptResult},
    jobs::{self, WebhookDelivery},
    webhooks::{self as hooks, SecretBox},
};
use chrono::Utc;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{WorkerCtx, jobs::Job};

/// How long the TCP (and TLS) connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the whole request may take, response headers included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a claimed delivery stays locked: longer than one attempt can last.
const LOCK_SECS: f64 = 60.0;

impl Job for WebhookDelivery {
    fn concurrency(config: &Config) -> usize {
        config.worker.webhook_concurrency
    }

    fn poll_interval(config: &Config) -> Duration {
        config.worker.chat_poll_interval.max(Duration::from_millis(50))
    }

    async fn recover(ctx: &WorkerCtx) -> Result<usize, sqlx::Error> {
        let stale = ctx.config.runs.reconcile_after.as_secs_f64();
        let ids = db::webhooks::take_stale(&ctx.pool, stale, 500).await?;
        let n = push_all(ctx, &ids).await;
        ctx.metrics.reconciler_recoveries.with_label_values(&["requeued"]).inc_by(n as u64);
        Ok(n)
    }
}

/// Pushes the jobs of deliveries written since the last call (after a run, document or batch
/// finished). Failures are logged: the reconciler pushes what is left.
pub async fn push_unpushed(ctx: &WorkerCtx) {
    match db::webhooks::take_unpushed(&ctx.pool, 500).await {
        Ok(ids) => {
            push_all(ctx, &ids).await;
        }
        Err(e) => tracing::warn!(error = %e, "cannot read new webhook deliveries; the reconciler will push them"),
    }
}

async fn push_all(ctx: &WorkerCtx, ids: &[Uuid]) -> usize {
    let storage = jobs::storage::<WebhookDelivery>(ctx.redis.clone(), &ctx.queues);
    let mut pushed = 0;
    for &delivery_id in ids {
        match jobs::push(&storage, WebhookDelivery { delivery_id }, jobs::fresh_task_id(delivery_id)).await {
            Ok(()) => pushed += 1,
            Err(e) => tracing::warn!(delivery.id = %delivery_id, error = %e, "cannot push a webhook delivery"),
        }
    }
    pushed
}

/// apalis entry point: only infrastructure errors go back to apalis for redelivery.
#[tracing::instrument(skip_all, fields(job.queue = %ctx.queues.webhooks(), delivery.id = %job.delivery_id))]
pub async fn handle(job: WebhookDelivery, ctx: Data<WorkerCtx>) -> Result<(), BoxDynError> {
    execute(&ctx, job.delivery_id).await.map_err(|e| {
        tracing::warn!(error = %e, "webhook delivery interrupted by an infrastructure error");
        Box::new(e) as BoxDynError
    })
}

/// Makes one attempt of a delivery if it can be claimed; records it and schedules the next.
pub async fn execute(ctx: &WorkerCtx, delivery_id: Uuid) -> Result<(), sqlx::Error> {
    let Some(d) = db::webhooks::claim(&ctx.pool, delivery_id, LOCK_SECS).await? else {
        tracing::debug!("delivery not claimable (delivered, given up, not due, being sent or deleted); skipping");
        return Ok(());
    };
    let attempt = d.attempt + 1;
    let body = match d.body {
        Some(body) => body,
        None => {
            let data = subject_data(ctx, &d.event_type, d.subject_id).await?;
            let body = json!({"type": d.event_type, "timestamp": d.event_at, "data": data}).to_string();
            db::webhooks::freeze_body(&ctx.pool, d.id, &body).await?
        }
    };
    let started = Instant::now();
    let secret = SecretBox::from_config(&ctx.config).and_then(|b| b.open(&d.secret_sealed));
    let result = match secret {
        Some(secret) => send(ctx, &d.url, &d.id.to_string(), &secret, &body).await,
        None => {
            Err(Refused::permanent("the signing secret cannot be opened: CHATQ_TOKEN_SECRET is missing or changed"))
        }
    };
    let latency_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
    let mut permanent = false;
    let (status_code, error) = match result {
        Ok(code) if (200..300).contains(&code) => (Some(code as i32), None),
        Ok(code) => (Some(code as i32), Some(format!("the receiver answered {code}"))),
        Err(e) => {
            permanent = e.permanent;
            (None, Some(e.reason))
        }
    };
    let (status, next) = if error.is_none() {
        ("succeeded", None)
    } else if permanent {
        ("failed", None)
    } else {
        match hooks::retry_delay(attempt) {
            Some(delay) => ("pending", Some(delay)),
            None => ("failed", None),
        }
    };
    let next_attempt_at = next.map(|d| Utc::now() + d);
    let outcome = AttemptResult { attempt, status_code, latency_ms, error: error.clone(), status, next_attempt_at };
    db::webhooks::record_attempt(&ctx.pool, d.id, &outcome).await?;
    let label = match status {
        "succeeded" => "succeeded",
        "pending" => "retrying",
        _ => "failed",
    };
    ctx.metrics.webhook_deliveries.with_label_values(&[label]).inc();
    match &error {
        None => tracing::info!(attempt, status_code, latency_ms, event = %d.event_type, "webhook delivered"),
        Some(e) => tracing::info!(attempt, status_code, error = %e, next = ?next, "webhook attempt failed"),
    }
    if let Some(delay) = next {
        let storage = jobs::storage::<WebhookDelivery>(ctx.redis.clone(), &ctx.queues);
        let task_id = format!("{}-a{attempt}", d.id);
        if let Err(e) = jobs::push_after(&storage, WebhookDelivery { delivery_id: d.id }, task_id, delay).await {
            tracing::warn!(error = %e, "cannot schedule the next webhook attempt; the reconciler will");
        }
    }
    Ok(())
}

/// The `data` of an event: its subject as the API returns it, or only its id when it has been
/// deleted since.
async fn subject_data(ctx: &WorkerCtx, event: &str, id: Uuid) -> Result<Value, sqlx::Error> {
    let data = if event.starts_with("run.") {
        match db::runs::get(&ctx.pool, id).await? {
            Some(run) => {
                let citations = if run.status == chatq_common::domain::RunStatus::Completed {
                    db::messages::answer_citations(&ctx.pool, id).await?
                } else {
                    json!([])
                };
                Some(hooks::run_data(&run, citations))
            }
            None => None,
        }
    } else if event.starts_with("document.") {
        db::knowledge::get_document(&ctx.pool, id).await?.map(|d| hooks::document_data(&d))
    } else {
        db::knowledge::get_batch(&ctx.pool, id).await?.map(|(b, docs)| hooks::batch_data(&b, &docs))
    };
    Ok(data.unwrap_or_else(|| json!({"id": id, "deleted": true})))
}

/// Why no response came: `permanent` when trying again cannot help (the destination is
/// refused, the secret cannot be opened), so the delivery fails at once.
struct Refused {
    reason: String,
    permanent: bool,
}

impl Refused {
    fn permanent(reason: &str) -> Self {
        Self { reason: reason.to_string(), permanent: true }
    }
}

impl From<String> for Refused {
    fn from(reason: String) -> Self {
        Self { reason, permanent: false }
    }
}

/// POSTs the signed body; returns the response status, or why no response came. Never
/// includes the body or the secret in the error.
async fn send(ctx: &WorkerCtx, url: &str, id: &str, secret: &str, body: &str) -> Result<u16, Refused> {
    let parsed = reqwest::Url::parse(url).map_err(|_| Refused::permanent("the webhook URL is invalid"))?;
    let host = parsed.host_str().ok_or(Refused::permanent("the webhook URL has no host"))?.to_string();
    let port = parsed.port_or_known_default().ok_or(Refused::permanent("the webhook URL has no port"))?;
    let addr = resolve(&host, port, ctx.config.worker.webhooks_allow_private).await?;
    // The client connects to the address checked above, never resolving the name again, so a
    // DNS answer that changes between the check and the connection cannot reach another host.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .no_proxy()
        .resolve(host.trim_start_matches('[').trim_end_matches(']'), addr)
        .user_agent(concat!("chatq-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let timestamp = Utc::now().timestamp();
    let signature =
        hooks::sign(secret, id, timestamp, body).ok_or(Refused::permanent("the signing secret is malformed"))?;
    let response = client
        .post(parsed)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "the receiver did not answer in time".to_string()
            } else if e.is_connect() {
                "cannot connect to the receiver".to_string()
            } else {
                "the request failed".to_string()
            }
        })?;
    Ok(response.status().as_u16())
}

/// The address to send to: the host resolved once; refused when any of its addresses is not
/// public, unless private destinations are allowed.
async fn resolve(host: &str, port: u16, allow_private: bool) -> Result<SocketAddr, Refused> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((bare, port)))
            .await
            .map_err(|_| "resolving the receiver's host timed out".to_string())?
            .map_err(|_| "cannot resolve the receiver's host".to_string())?
            .collect(),
    };
    let first = *addrs.first().ok_or_else(|| "the receiver's host has no address".to_string())?;
    if !allow_private && addrs.iter().any(|a| !hooks::is_public(a.ip())) {
        return Err(Refused::permanent(
            "refused: the receiver's host resolves to a private, loopback or link-local address \
             (set CHATQ_WEBHOOKS_ALLOW_PRIVATE=1 to allow)",
        ));
    }
    Ok(first)
}
