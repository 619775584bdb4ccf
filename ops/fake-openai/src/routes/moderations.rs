//! `POST /v1/moderations`: flags text containing the configured trigger word.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::error::OpenAiError;
use crate::state::Shared;
use crate::util::random_hex;

/// The 13 omni-moderation categories, and whether each also applies to images.
const CATEGORIES: [(&str, bool); 13] = [
    ("harassment", false),
    ("harassment/threatening", false),
    ("hate", false),
    ("hate/threatening", false),
    ("illicit", false),
    ("illicit/violent", false),
    ("self-harm", true),
    ("self-harm/intent", true),
    ("self-harm/instructions", true),
    ("sexual", true),
    ("sexual/minors", false),
    ("violence", true),
    ("violence/graphic", true),
];

/// Handles one moderation request.
pub(crate) async fn create(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let outage = shared.moderation_fail_status.load(std::sync::atomic::Ordering::Relaxed);
    if outage != 0 {
        return OpenAiError::for_status(outage, "omni-moderation-latest", 0, 1000).into_response();
    }
    shared.moderations.fetch_add(1, Ordering::Relaxed);
    match respond(&body, &shared.config.trigger_word) {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

/// One thing to moderate: its text and whether it included an image.
struct Item {
    text: String,
    has_image: bool,
}

fn respond(body: &[u8], trigger_word: &str) -> Result<Value, OpenAiError> {
    let request: Value = serde_json::from_slice(body).map_err(|_| OpenAiError::malformed_json())?;
    let model =
        request.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or("omni-moderation-latest");
    let trigger = trigger_word.to_lowercase();
    let results: Vec<Value> = items(request.get("input"))?
        .iter()
        .map(|item| {
            let flagged = !trigger.is_empty() && item.text.to_lowercase().contains(&trigger);
            result(flagged, item.has_image)
        })
        .collect();
    Ok(json!({
        "id": format!("modr-{}", random_hex(32)),
        "model": model,
        "results": results,
    }))
}

/// A string, an array of strings (one result each), or an array of content parts
/// (one result for all of them), as OpenAI accepts.
fn items(input: Option<&Value>) -> Result<Vec<Item>, OpenAiError> {
    let invalid =
        |message: &str| OpenAiError::invalid_request(message.to_owned(), Some("input"), Some("invalid_value"));
    match input {
        None | Some(Value::Null) => Err(OpenAiError::invalid_request(
            "Missing required parameter: 'input'.",
            Some("input"),
            Some("missing_required_parameter"),
        )),
        Some(Value::String(text)) => Ok(vec![Item { text: text.clone(), has_image: false }]),
        Some(Value::Array(parts)) if parts.is_empty() => {
            Err(invalid("'$.input' is invalid: expected a non-empty array."))
        }
        Some(Value::Array(parts)) if parts.iter().all(Value::is_string) => Ok(parts
            .iter()
            .filter_map(Value::as_str)
            .map(|text| Item { text: text.to_owned(), has_image: false })
            .collect()),
        Some(Value::Array(parts)) if parts.iter().all(Value::is_object) => {
            let mut item = Item { text: String::new(), has_image: false };
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                        item.text.push_str(text);
                        item.text.push('\n');
                    }
                    Some("image_url") => item.has_image = true,
                    _ => return Err(invalid("'$.input' is invalid: unknown content part type.")),
                }
            }
            Ok(vec![item])
        }
        Some(_) => {
            Err(invalid("'$.input' is invalid: expected a string, an array of strings or an array of content parts."))
        }
    }
}

/// One result with every category present, as async-openai requires.
fn result(flagged: bool, has_image: bool) -> Value {
    let mut categories = Map::new();
    let mut scores = Map::new();
    let mut applied = Map::new();
    for (name, image_too) in CATEGORIES {
        let (hit, score) = match name {
            "violence" if flagged => (true, 0.973_812),
            "harassment" if flagged => (true, 0.912_406),
            "harassment/threatening" if flagged => (false, 0.204_117),
            _ => (false, 0.000_012_3),
        };
        categories.insert(name.to_owned(), Value::Bool(hit));
        scores.insert(name.to_owned(), json!(score));
        let types = if image_too && has_image { json!(["text", "image"]) } else { json!(["text"]) };
        applied.insert(name.to_owned(), types);
    }
    json!({
        "flagged": flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
    })
}
