//! A Server-Sent Events client over reqwest for the run event streams. Parsing is
//! `eventsource-stream`'s: it decodes UTF-8 across network chunks, so a character split
//! between two chunks arrives intact.

use std::time::Duration;

use eventsource_stream::{EventStream, Eventsource as _};
use futures::{StreamExt as _, stream::BoxStream};
use reqwest::StatusCode;
use serde_json::Value;

/// One event of a run's stream.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// The event's `seq` (the SSE `id`).
    pub id: i64,
    /// The event type, e.g. `message.delta`.
    pub event: String,
    /// The JSON payload (`Null` if it is not JSON).
    pub data: Value,
}

/// Reads the events of one SSE response.
pub struct SseClient {
    events: EventStream<BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
}

impl SseClient {
    /// Wraps a response, asserting it is an event stream.
    pub async fn open(resp: reqwest::Response) -> Self {
        assert_eq!(resp.status(), StatusCode::OK, "SSE request refused");
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
        Self { events: resp.bytes_stream().boxed().eventsource() }
    }

    /// The next event with an id (heartbeat comments are skipped); `None` when the server
    /// closed the stream.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(20), self.events.next())
                .await
                .expect("an SSE event or a heartbeat within 20 s")?
                .ok()?;
            if let Ok(id) = event.id.parse() {
                let data = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                return Some(SseEvent { id, event: event.event, data });
            }
        }
    }
}
