//! `/v1/admin`: trigger the maintenance cleanup and see what a maintenance job did.

use axum::{extract::State, http::StatusCode};
use chatq_common::{
    db::{self, maintenance::Requested},
    domain::{MaintenanceKind, MaintenanceStatus},
    jobs::{self, Cleanup},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::Principal,
    error::{ApiError, ApiErrorCode},
    extract::{Json, Path},
    state::AppState,
    validate::{Problems, Validate},
};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(cleanup)).routes(routes!(get_job))
}

/// A cleanup request.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanupIn {
    /// Count what would be deleted and delete nothing.
    #[serde(default)]
    pub dry_run: bool,
}

impl Validate for CleanupIn {
    fn validate(&self, _: &mut Problems) {}
}

/// A maintenance job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobOut {
    /// Id.
    pub id: Uuid,
    /// Always `maintenance_job`.
    pub object: &'static str,
    /// What it does.
    pub kind: MaintenanceKind,
    /// Where it is.
    pub status: MaintenanceStatus,
    /// Counted only.
    pub dry_run: bool,
    /// Counts by kind of data (`threads`, `messages`, `runs`, `run_events`, `old_run_events`,
    /// `document_chunks`, `document_blobs`, `redis`), `duration_ms`, or `error`.
    #[schema(value_type = Object)]
    pub stats: Value,
    /// When it was requested.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<db::maintenance::Job> for JobOut {
    fn from(j: db::maintenance::Job) -> Self {
        Self {
            id: j.id,
            object: "maintenance_job",
            kind: j.kind,
            status: j.status,
            dry_run: j.dry_run,
            stats: j.stats,
            created_at: j.created_at,
            finished_at: j.finished_at,
        }
    }
}

/// Run the cleanup now (admin). At most one cleanup is queued or running: a second trigger
/// gets the active job (202), or 409 `cleanup_running` if that one differs in `dry_run`.
#[utoipa::path(post, path = "/v1/admin/cleanup", tag = "admin", request_body = CleanupIn,
    responses((status = 202, body = JobOut), (status = 403), (status = 409), (status = 503)))]
pub async fn cleanup(
    State(state): State<AppState>,
    principal: Principal,
    Json(input): Json<CleanupIn>,
) -> Result<(StatusCode, Json<JobOut>), ApiError> {
    principal.require_admin()?;
    let requested =
        db::maintenance::request(&state.pool, MaintenanceKind::Cleanup, input.dry_run, Some(principal.key_id))
            .await
            .map_err(|e| match e {
                db::maintenance::RequestError::Db(e) => ApiError::from(e),
                e => ApiError::Internal(e.into()),
            })?;
    let outcome = if matches!(requested, Requested::New(_)) { "new" } else { "existing" };
    state.metrics.cleanup_requests.with_label_values(&[outcome]).inc();
    let job = requested.job().clone();
    if job.dry_run != input.dry_run {
        return Err(ApiError::Conflict {
            code: ApiErrorCode::CleanupRunning,
            message: "another cleanup is queued or running; try again when it has finished".into(),
            details: json!({"job_id": job.id, "dry_run": job.dry_run}),
        });
    }
    // Pushed again for an existing job too: apalis drops the duplicate id, and if Redis lost
    // the job this brings it back. The worker's lock makes a second delivery a no-op.
    let storage = jobs::storage::<jobs::Cleanup>(state.redis.clone(), &state.queues);
    let task = Cleanup { job_id: Some(job.id), dry_run: job.dry_run };
    if let Err(e) = jobs::push(&storage, task, format!("cleanup-{}", job.id)).await {
        tracing::warn!(job.id = %job.id, error = %e, "cannot enqueue cleanup");
        db::maintenance::finish(
            &state.pool,
            job.id,
            MaintenanceStatus::Failed,
            &json!({"error": "could not be queued"}),
        )
        .await?;
        return Err(ApiError::Unavailable("the job queue is unavailable, try again shortly"));
    }
    Ok((StatusCode::ACCEPTED, Json(job.into())))
}

/// A maintenance job with its status and counts (admin).
#[utoipa::path(get, path = "/v1/admin/jobs/{id}", tag = "admin", params(("id" = Uuid, Path)),
    responses((status = 200, body = JobOut), (status = 404)))]
pub async fn get_job(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<JobOut>, ApiError> {
    principal.require_admin()?;
    let job = db::maintenance::get(&state.pool, id).await?.ok_or(ApiError::NotFound("job"))?;
    Ok(Json(job.into()))
}
