//! `Json`, `Path` and `Query` extractors whose rejections use the error envelope.

use axum::extract::{FromRequest, FromRequestParts};

use crate::error::ApiError;

/// JSON body; bad JSON, unknown fields and wrong types become 400/422 envelopes.
#[derive(FromRequest, Debug)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// Path parameters; a malformed id is a 400 envelope.
#[derive(FromRequestParts, Debug)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Query string; a malformed parameter is a 400 envelope.
#[derive(FromRequestParts, Debug)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);
