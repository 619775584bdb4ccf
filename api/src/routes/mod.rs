//! Every route, one file per resource, merged here into one router and one OpenAPI document.

pub mod admin;
pub mod assistants;
pub mod error_responses;
pub mod health;
pub mod knowledge;
pub mod messages;
pub mod run_events;
pub mod runs;
pub mod thread_events;
pub mod threads;
pub mod usage;
pub mod user_tokens;
pub mod webhooks;
pub mod widget;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use crate::{
    error::{ApiError, ApiErrorCode},
    state::AppState,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "chatq API", version = "1", description = "Self-hostable backend for AI chat assistants."),
    modifiers(&BearerAuth),
    components(schemas(
        crate::error::ErrorResponse,
        crate::error::ErrorBody,
        crate::error::ApiErrorCode,
        crate::validate::Problem
    )),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route and the complete OpenAPI document, its error responses included.
pub fn api() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut openapi) = router().split_for_parts();
    error_responses::document(&mut openapi);
    (router, openapi)
}

/// All routes with their OpenAPI description.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::router())
        .merge(assistants::router())
        .merge(threads::router())
        .merge(messages::router())
        .merge(runs::router())
        .merge(usage::router())
        .merge(admin::router())
        .merge(knowledge::router())
        .merge(run_events::router())
        .merge(thread_events::router())
        .merge(user_tokens::router())
        .merge(webhooks::router())
        .merge(widget::router())
}

/// Cursor pagination: `?after=<id>&limit=<1..100>`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Return items after this id (the `next_after` of the previous page).
    pub after: Option<Uuid>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

impl crate::validate::Validate for PageQuery {
    fn validate(&self, p: &mut crate::validate::Problems) {
        p.range("limit", self.limit, 1, 100);
    }
}

impl PageQuery {
    /// The validated page size.
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(20),
            Some(n) if (1..=100).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::BadRequest {
                code: ApiErrorCode::InvalidQuery,
                message: "limit must be between 1 and 100".into(),
            }),
        }
    }
}

/// A page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T> {
    /// The items.
    pub data: Vec<T>,
    /// Cursor of the next page, `null` on the last page.
    pub next_after: Option<String>,
}

impl<T> List<T> {
    /// Builds a page from rows, using `id` of the last row as the cursor when more follow.
    pub fn new<R>(page: chatq_common::db::Page<R>, id: impl Fn(&R) -> Uuid, map: impl Fn(R) -> T) -> Self {
        let next_after = if page.has_more { page.rows.last().map(|r| id(r).to_string()) } else { None };
        Self { data: page.rows.into_iter().map(map).collect(), next_after }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_lists_every_error_code() {
        let (_, openapi) = super::router().split_for_parts();
        let doc = serde_json::to_value(&openapi).unwrap();
        let codes = &doc["components"]["schemas"]["ApiErrorCode"]["enum"];
        for code in ["invalid_request", "thread_busy", "budget_exhausted", "internal"] {
            assert!(codes.as_array().unwrap().iter().any(|c| c == code), "{code} missing from {codes}");
        }
        assert!(doc["components"]["schemas"]["ErrorResponse"].is_object());
    }
}
