//! `Json`, `Path` and `Query` extractors whose rejections use the error envelope. `Json` and
//! `Query` also check the value's [`Validate`] rules, so handlers see only storable input.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::request::Parts,
};
use serde::de::DeserializeOwned;

use crate::{
    error::{ApiError, ApiErrorCode},
    validate::{self, Problem, Validate},
};

/// JSON body; bad JSON is a 400, unknown fields, wrong types and broken [`Validate`] rules
/// a 422 naming each field.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned + Validate,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        match validate::check(&value) {
            None => Ok(Json(value)),
            Some(problems) => Err(ApiError::invalid_fields(problems)),
        }
    }
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// Path parameters; a malformed id is a 400 envelope.
#[derive(FromRequestParts, Debug)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Query string; a malformed or out-of-range parameter is a 400 `invalid_query` naming it.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned + Validate,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        let value: T = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let problem = problem_at(&e.path().to_string(), &e.inner().to_string());
            ApiError::invalid_query(vec![problem])
        })?;
        match validate::check(&value) {
            None => Ok(Query(value)),
            Some(problems) => Err(ApiError::invalid_query(problems)),
        }
    }
}

/// The problem of a serde error at `path`. Errors about the whole object (a missing or
/// unknown field) sit at the root path `.`; their message names the field in backticks.
pub(crate) fn problem_at(path: &str, message: &str) -> Problem {
    let field = if path == "." || path.is_empty() {
        message.split('`').nth(1).unwrap_or("body").to_string()
    } else {
        path.to_string()
    };
    Problem { field, message: message.to_string() }
}

/// The field a JSON body's data error is about, from axum's rejection (which wraps a
/// `serde_path_to_error` error two levels down).
pub(crate) fn json_data_problem(rejection: &axum::extract::rejection::JsonDataError) -> Problem {
    use std::error::Error as _;
    let mut source = rejection.source();
    while let Some(err) = source {
        if let Some(e) = err.downcast_ref::<serde_path_to_error::Error<serde_json::Error>>() {
            return problem_at(&e.path().to_string(), &e.inner().to_string());
        }
        source = err.source();
    }
    Problem { field: "body".into(), message: rejection.body_text() }
}

impl ApiError {
    /// A 422 `invalid_request` listing `problems` in `details.problems`.
    pub fn invalid_fields(problems: Vec<Problem>) -> Self {
        ApiError::Invalid {
            message: validate::summary(&problems),
            details: serde_json::json!({ "problems": problems }),
        }
    }

    /// A 400 `invalid_query` listing `problems` in `details.problems`.
    pub fn invalid_query(problems: Vec<Problem>) -> Self {
        ApiError::BadRequestWithDetails {
            code: ApiErrorCode::InvalidQuery,
            message: validate::summary(&problems),
            details: serde_json::json!({ "problems": problems }),
        }
    }
}
