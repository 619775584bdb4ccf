//! `POST /v1/chat/completions`: deterministic replies, streamed or not, with usage,
//! failure injection and stream faults driven by directives.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::directive::{Directive, extract};
use crate::error::{OpenAiError, fail_response};
use crate::reply::{Message, cited_reply, echo_reply, prompt_reply};
use crate::state::Shared;
use crate::tokens::prompt_tokens;
use crate::util::{random_alphanumeric, unix_now};

/// Reported as `system_fingerprint` on every completion.
const SYSTEM_FINGERPRINT: &str = "fp_c0ffee4fa6";
/// What `garbage_after` sends: an event whose data is not JSON.
const GARBAGE_EVENT: &[u8] = b"data: {\"id\": oops\n\n";
/// The terminator OpenAI sends after the last chunk.
const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";
/// `retry-after-ms` of an injected 429 unless `retry_after_ms` says otherwise.
const DEFAULT_RETRY_AFTER_MS: u64 = 1000;

/// Handles one chat completion request.
pub(crate) async fn create(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    shared.chat_requests.fetch_add(1, Ordering::Relaxed);
    let (response, delay) = respond(&shared, &body);
    let status = response.status();
    if !status.is_success() {
        shared.count_failure(status.as_u16());
    }
    // A non-streaming reply takes as long as its stream would have.
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    response
}

/// The parts of a chat request the fake acts on.
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    stream: bool,
    include_usage: bool,
    include_obfuscation: bool,
    max_tokens: Option<usize>,
}

impl ChatRequest {
    /// Validates like OpenAI: an object with a `model` and a non-empty `messages` array.
    fn parse(value: &Value) -> Result<Self, OpenAiError> {
        let Some(obj) = value.as_object() else {
            return Err(OpenAiError::invalid_request(
                "Invalid type for request body: expected an object.",
                None,
                Some("invalid_type"),
            ));
        };
        let model = match obj.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => return Err(OpenAiError::missing_model()),
        };
        let messages = match obj.get("messages") {
            None | Some(Value::Null) => {
                return Err(OpenAiError::invalid_request(
                    "Missing required parameter: 'messages'.",
                    Some("messages"),
                    Some("missing_required_parameter"),
                ));
            }
            Some(Value::Array(items)) if items.is_empty() => {
                return Err(OpenAiError::invalid_request(
                    "Invalid 'messages': empty array. Expected an array with minimum length 1, \
                     but got an empty array instead.",
                    Some("messages"),
                    Some("empty_array"),
                ));
            }
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    Message::from_value(item).ok_or_else(|| {
                        let param = format!("messages[{i}].role");
                        OpenAiError::invalid_request(
                            format!("Missing required parameter: '{param}'."),
                            Some(&param),
                            Some("missing_required_parameter"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => {
                return Err(OpenAiError::invalid_request(
                    "Invalid type for 'messages': expected an array of objects.",
                    Some("messages"),
                    Some("invalid_type"),
                ));
            }
        };
        let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let options = obj.get("stream_options").filter(|o| !o.is_null());
        if options.is_some() && !stream {
            return Err(OpenAiError::invalid_request(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                Some("stream_options"),
                None,
            ));
        }
        let option = |key: &str| options.and_then(|o| o.get(key)).and_then(Value::as_bool);
        let max_tokens = obj
            .get("max_completion_tokens")
            .and_then(Value::as_u64)
            .or_else(|| obj.get("max_tokens").and_then(Value::as_u64))
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        Ok(Self {
            model,
            messages,
            stream,
            include_usage: option("include_usage").unwrap_or(false),
            include_obfuscation: option("include_obfuscation").unwrap_or(true),
            max_tokens,
        })
    }
}

/// Builds the response and, for non-streaming replies, how long to wait before sending it.
fn respond(shared: &Arc<Shared>, body: &[u8]) -> (Response, Duration) {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            return (OpenAiError::malformed_json().into_response(), Duration::ZERO);
        }
    };
    shared.record_request(&value);
    let request = match ChatRequest::parse(&value) {
        Ok(r) => r,
        Err(e) => return (e.into_response(), Duration::ZERO),
    };

    // Directives act from the last user message only, over the server-wide default.
    let default = shared.default_directive();
    let (echo, own_text) =
        request.messages.iter().rev().find(|m| m.role == "user").map(|m| extract(&m.content)).unwrap_or_default();
    let own = Directive::parse(&own_text);
    let eff = default.directive.overlay(&own);
    let prompt_tokens = prompt_tokens(request.messages.iter().map(|m| m.content.as_str()));

    if let Some(fail) = eff.fail {
        let seen = if own.fail.is_some() {
            let key = own_text.split_whitespace().collect::<Vec<_>>().join(" ");
            shared.bump_fail_counter(&key)
        } else {
            default.fail_seen.fetch_add(1, Ordering::Relaxed)
        };
        if fail.times.is_none_or(|n| seen < n) {
            let retry_after_ms = eff.retry_after_ms.unwrap_or(DEFAULT_RETRY_AFTER_MS);
            let response = fail_response(fail, &request.model, prompt_tokens, retry_after_ms);
            return (response, Duration::ZERO);
        }
    }

    let config = &shared.config;
    let mut tokens = if eff.echo_prompt == Some(true) {
        prompt_reply(&request.messages)
    } else if let Some(cited) = cited_reply(&request.messages, eff.cite.unwrap_or(1)) {
        cited
    } else {
        echo_reply(&echo, eff.tokens.unwrap_or(config.tokens))
    };
    if let Some(word) = eff.trigger_at.and_then(|k| tokens.get_mut(k.checked_sub(1)?)) {
        *word = if word.starts_with(' ') { format!(" {}", config.trigger_word) } else { config.trigger_word.clone() };
    }
    let mut finish_reason = "stop";
    if let Some(max) = request.max_tokens
        && tokens.len() > max
    {
        tokens.truncate(max);
        finish_reason = "length";
    }
    let completion_tokens = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
    let cached = eff.cached.map_or(0, |c| c.min(prompt_tokens));
    let usage = usage_json(prompt_tokens, completion_tokens, cached);
    let send_usage = eff.no_usage != Some(true);
    let ttft = Duration::from_millis(eff.ttft_ms.unwrap_or(config.ttft_ms));
    let delay = Duration::from_millis(eff.delay_ms.unwrap_or(config.delay_ms));
    let id = format!("chatcmpl-{}", random_alphanumeric(29));
    let created = unix_now();

    if request.stream {
        shared.chat_streamed.fetch_add(1, Ordering::Relaxed);
        let model = Value::String(request.model).to_string();
        let plan = StreamPlan {
            prefix: format!(
                "data: {{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"created\":{created},\
                 \"model\":{model},\"service_tier\":\"default\",\
                 \"system_fingerprint\":\"{SYSTEM_FINGERPRINT}\",\"choices\":["
            ),
            usage_null: request.include_usage && send_usage,
            obfuscate: request.include_obfuscation,
            tokens,
            finish_reason,
            usage: (request.include_usage && send_usage).then(|| usage.to_string()),
            finish: eff.no_finish != Some(true),
            done: eff.no_done != Some(true),
            ttft,
            delay,
            finish_pause: Duration::from_millis(eff.finish_ms.unwrap_or(0)),
            cut_after: eff.cut_after,
            garbage_after: eff.garbage_after,
            error_after: eff.error_after,
            stamp: eff.stamp.unwrap_or(false),
            shared: Arc::clone(shared),
        };
        let response =
            ([(header::CONTENT_TYPE, "text/event-stream")], Body::from_stream(plan.into_stream())).into_response();
        return (response, Duration::ZERO);
    }

    // Stream faults have non-streaming equivalents: a truncated body, a 500, or a 200 that
    // is not JSON.
    if eff.error_after.is_some() {
        let error = OpenAiError::for_status(500, &request.model, prompt_tokens, 0);
        return (error.into_response(), Duration::ZERO);
    }
    if eff.garbage_after.is_some() {
        let response =
            ([(header::CONTENT_TYPE, "application/json")], &GARBAGE_EVENT[6..GARBAGE_EVENT.len() - 2]).into_response();
        return (response, Duration::ZERO);
    }
    let text = tokens.concat();
    let mut body = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    });
    if !send_usage && let Some(fields) = body.as_object_mut() {
        fields.remove("usage");
    }
    let wait = ttft + delay.saturating_mul(completion_tokens.saturating_sub(1));
    if eff.cut_after.is_some() {
        shared.chat_interrupted.fetch_add(1, Ordering::Relaxed);
        let full = Bytes::from(body.to_string());
        let half = full.slice(..full.len() / 2);
        let body = futures::stream::once(async move { Ok(half) }).chain(futures::stream::once(async {
            flush_point().await;
            Err(cut_error())
        }));
        let response = ([(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response();
        return (response, wait);
    }
    ((StatusCode::OK, axum::Json(body)).into_response(), wait)
}

/// The usage object of OpenAI's chat completions, every detail field present.
fn usage_json(prompt_tokens: u32, completion_tokens: u32, cached_tokens: u32) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens.saturating_add(completion_tokens),
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    })
}

/// The body error that makes hyper abort the connection instead of ending it cleanly.
fn cut_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "cut_after: connection dropped on purpose by chatq-fake-openai")
}

/// Returns `Pending` once so hyper flushes the chunks it has buffered: it drops the
/// connection on a body error without writing what is still in its buffer, and the client
/// must see the chunks sent before the cut.
async fn flush_point() {
    tokio::task::yield_now().await;
}

/// Everything a stream needs, computed once per request so each chunk is a few string
/// copies into one buffer.
struct StreamPlan {
    /// `data: {"id":...,"choices":[` shared by every chunk.
    prefix: String,
    /// Whether chunks carry `"usage":null` (only with `include_usage`).
    usage_null: bool,
    /// Whether chunks carry random `obfuscation` padding, as OpenAI does by default.
    obfuscate: bool,
    tokens: Vec<String>,
    finish_reason: &'static str,
    /// The serialised usage object for the final chunk, when `include_usage` is set (and
    /// `no_usage` is not).
    usage: Option<String>,
    /// Whether the finish chunk is sent (`no_finish` leaves it out).
    finish: bool,
    /// Whether `[DONE]` ends the stream (`no_done` closes it cleanly without).
    done: bool,
    ttft: Duration,
    delay: Duration,
    /// Pause between the last content chunk and the finish chunk.
    finish_pause: Duration,
    cut_after: Option<usize>,
    garbage_after: Option<usize>,
    error_after: Option<usize>,
    stamp: bool,
    shared: Arc<Shared>,
}

/// Where a stream is.
#[derive(Debug, Clone, Copy)]
enum Step {
    Role,
    /// `emitted` content chunks are out; `garbage_sent` once the garbage event went out here.
    Content {
        emitted: usize,
        garbage_sent: bool,
    },
    Usage,
    Done,
    End,
}

impl StreamPlan {
    fn into_stream(self) -> impl futures::Stream<Item = Result<Bytes, io::Error>> + Send {
        futures::stream::unfold((self, Step::Role), |(plan, step)| async move {
            let (item, next) = plan.step(step).await?;
            Some((item, (plan, next)))
        })
    }

    async fn step(&self, step: Step) -> Option<(Result<Bytes, io::Error>, Step)> {
        match step {
            Step::Role => {
                let choice = r#"{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}"#;
                let next = Step::Content { emitted: 0, garbage_sent: false };
                Some((Ok(self.chunk(choice)), next))
            }
            Step::Content { emitted, garbage_sent } => self.content_step(emitted, garbage_sent).await,
            tail => self.tail(tail),
        }
    }

    /// What follows the finish chunk: the usage chunk, `[DONE]`, the end.
    fn tail(&self, step: Step) -> Option<(Result<Bytes, io::Error>, Step)> {
        match step {
            Step::Usage => {
                let usage = self.usage.as_deref().unwrap_or("null");
                let mut out = String::with_capacity(self.prefix.len() + usage.len() + 40);
                out.push_str(&self.prefix);
                out.push_str("],\"usage\":");
                out.push_str(usage);
                self.finish_chunk(&mut out);
                Some((Ok(Bytes::from(out)), Step::Done))
            }
            Step::Done if self.done => Some((Ok(Bytes::from_static(DONE_EVENT)), Step::End)),
            _ => None,
        }
    }

    async fn content_step(&self, emitted: usize, garbage_sent: bool) -> Option<(Result<Bytes, io::Error>, Step)> {
        let total = self.tokens.len();
        // A fault "after K chunks" with K past the end fires before the finish chunk.
        let due = |k: Option<usize>| k.is_some_and(|k| k.min(total) == emitted);
        if !garbage_sent && due(self.garbage_after) {
            let next = Step::Content { emitted, garbage_sent: true };
            return Some((Ok(Bytes::from_static(GARBAGE_EVENT)), next));
        }
        if due(self.error_after) {
            self.shared.chat_interrupted.fetch_add(1, Ordering::Relaxed);
            let error = OpenAiError::for_status(500, "", 0, 0).body();
            return Some((Ok(Bytes::from(format!("data: {error}\n\n"))), Step::End));
        }
        if due(self.cut_after) {
            self.shared.chat_interrupted.fetch_add(1, Ordering::Relaxed);
            flush_point().await;
            return Some((Err(cut_error()), Step::End));
        }
        if let Some(token) = self.tokens.get(emitted) {
            let pause = if emitted == 0 { self.ttft } else { self.delay };
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let content = if self.stamp {
                let micros =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
                format!("\" @{micros}\"")
            } else {
                Value::String(token.clone()).to_string()
            };
            let choice =
                format!("{{\"index\":0,\"delta\":{{\"content\":{content}}},\"logprobs\":null,\"finish_reason\":null}}");
            let next = Step::Content { emitted: emitted + 1, garbage_sent: false };
            return Some((Ok(self.chunk(&choice)), next));
        }
        if !self.finish_pause.is_zero() {
            tokio::time::sleep(self.finish_pause).await;
        }
        let next = if self.usage.is_some() { Step::Usage } else { Step::Done };
        if !self.finish {
            return self.tail(next);
        }
        let choice =
            format!("{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"{}\"}}", self.finish_reason);
        Some((Ok(self.chunk(&choice)), next))
    }

    /// One `data:` event with a single choice.
    fn chunk(&self, choice: &str) -> Bytes {
        let mut out = String::with_capacity(self.prefix.len() + choice.len() + 48);
        out.push_str(&self.prefix);
        out.push_str(choice);
        out.push(']');
        if self.usage_null {
            out.push_str(",\"usage\":null");
        }
        self.finish_chunk(&mut out);
        Bytes::from(out)
    }

    /// Appends the optional obfuscation padding and closes the event.
    fn finish_chunk(&self, out: &mut String) {
        if self.obfuscate {
            let len = rand::random_range(1..=12);
            out.push_str(",\"obfuscation\":\"");
            out.push_str(&random_alphanumeric(len));
            out.push('"');
        }
        out.push_str("}\n\n");
    }
}
