//! `POST /v1/embeddings`: deterministic hashed bag-of-words vectors.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::OpenAiError;
use crate::state::Shared;
use crate::tokens::embedding_tokens;

/// OpenAI's limit on inputs per request.
const MAX_INPUTS: usize = 2048;
/// Largest `dimensions` any OpenAI embedding model accepts (text-embedding-3-large).
const MAX_DIMENSIONS: usize = 3072;

/// Handles one embeddings request.
pub(crate) async fn create(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    shared.embeddings.fetch_add(1, Ordering::Relaxed);
    match respond(&body) {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

fn respond(body: &[u8]) -> Result<Value, OpenAiError> {
    let request: Value = serde_json::from_slice(body).map_err(|_| OpenAiError::malformed_json())?;
    let model = match request.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(OpenAiError::missing_model()),
    };
    let inputs = inputs(request.get("input"))?;
    let default_dims = if model.contains("3-large") { 3072 } else { 1536 };
    let dims = match request.get("dimensions") {
        None | Some(Value::Null) => default_dims,
        Some(v) => match v.as_u64().and_then(|d| usize::try_from(d).ok()) {
            Some(d @ 1..=MAX_DIMENSIONS) => d,
            _ => {
                return Err(OpenAiError::invalid_request(
                    format!("Invalid 'dimensions': must be an integer between 1 and {MAX_DIMENSIONS}."),
                    Some("dimensions"),
                    Some("invalid_value"),
                ));
            }
        },
    };
    let base64 = match request.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(OpenAiError::invalid_request(
                format!("Invalid value: '{other}'. Supported values are: 'float' and 'base64'."),
                Some("encoding_format"),
                Some("invalid_value"),
            ));
        }
    };

    let mut prompt_tokens = 0u32;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            prompt_tokens = prompt_tokens.saturating_add(embedding_tokens(text));
            let vector = embed(text, dims);
            let embedding = if base64 { Value::String(encode_base64_f32(&vector)) } else { json!(vector) };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
}

/// Accepts a string or an array of 1..=2048 strings; token-id arrays are not supported.
fn inputs(input: Option<&Value>) -> Result<Vec<&str>, OpenAiError> {
    let invalid =
        |message: &str| OpenAiError::invalid_request(message.to_owned(), Some("input"), Some("invalid_value"));
    match input {
        None | Some(Value::Null) => Err(OpenAiError::invalid_request(
            "Missing required parameter: 'input'.",
            Some("input"),
            Some("missing_required_parameter"),
        )),
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(items)) if items.is_empty() => {
            Err(invalid("'$.input' is invalid: expected a non-empty array."))
        }
        Some(Value::Array(items)) if items.len() > MAX_INPUTS => Err(invalid(&format!(
            "Too many inputs. The max number of inputs is {MAX_INPUTS}. We recommend batching \
             your embedding requests."
        ))),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str().ok_or_else(|| invalid("'$.input' is invalid: chatq-fake-openai accepts only strings."))
            })
            .collect(),
        Some(_) => Err(invalid("'$.input' is invalid: expected a string or an array of strings.")),
    }
}

/// Hashes lowercase alphanumeric words and word bigrams into `dims` signed buckets and
/// L2-normalises, so texts sharing words get a high cosine. Empty text maps to `e_0`. Public so
/// benchmarks can fill a base with the very vectors this server would return.
pub fn embed(text: &str, dims: usize) -> Vec<f32> {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let mut vector = vec![0f32; dims];
    let mut add = |hash: u64| {
        // Low bits pick the bucket, the top bit the sign: independent enough for a fake.
        let bucket = usize::try_from(hash % dims as u64).unwrap_or(0);
        vector[bucket] += if hash >> 63 == 0 { 1.0 } else { -1.0 };
    };
    for word in &words {
        add(fnv1a(&[b"u:", word.as_bytes()]));
    }
    for pair in words.windows(2) {
        add(fnv1a(&[b"b:", pair[0].as_bytes(), b" ", pair[1].as_bytes()]));
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        vector[0] = 1.0;
    } else {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

/// 64-bit FNV-1a over the concatenation of `parts`: stable across runs and platforms.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Standard base64 (with padding) of the little-endian `f32` bytes, as OpenAI sends.
fn encode_base64_f32(vector: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_test_vectors() {
        // 1.0f32 = 00 00 80 3f
        assert_eq!(encode_base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(encode_base64_f32(&[]), "");
    }

    #[test]
    fn fnv1a_is_the_published_algorithm() {
        assert_eq!(fnv1a(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
    }
}
