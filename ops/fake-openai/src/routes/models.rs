//! `GET /v1/models` and `GET /v1/models/{id}`: a short static catalogue.

use axum::Json;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::OpenAiError;

/// `(id, created, owned_by)` of every model the fake lists. Chat accepts any model name;
/// this list only exists for clients that check the catalogue.
const MODELS: [(&str, u64, &str); 5] = [
    ("gpt-4o-mini", 1_721_172_741, "system"),
    ("gpt-4.1-mini", 1_744_318_173, "system"),
    ("gpt-5-mini", 1_754_425_928, "system"),
    ("text-embedding-3-small", 1_705_948_997, "system"),
    ("omni-moderation-latest", 1_731_689_265, "system"),
];

fn model(id: &str, created: u64, owned_by: &str) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": owned_by})
}

/// Lists the catalogue.
pub(crate) async fn list() -> Json<Value> {
    let data: Vec<Value> = MODELS.iter().map(|(id, c, o)| model(id, *c, o)).collect();
    Json(json!({"object": "list", "data": data}))
}

/// Returns one model, or OpenAI's 404 `model_not_found`.
pub(crate) async fn retrieve(Path(id): Path<String>) -> Response {
    match MODELS.iter().find(|(m, _, _)| *m == id) {
        Some((id, created, owned_by)) => Json(model(id, *created, owned_by)).into_response(),
        None => OpenAiError::model_not_found(&id).into_response(),
    }
}
