//! Injected failures and stream faults, as the client sees them.

use std::time::{Duration, Instant};

use async_openai::error::{OpenAIError, StreamError};
use async_openai::types::chat::{CreateChatCompletionRequestArgs, FinishReason};
use futures::StreamExt;
use serde_json::json;

use crate::helpers::{api_status, client, contents, post_raw, request, start, stream_all, user};

fn finish_reasons(items: &crate::helpers::Items) -> Vec<FinishReason> {
    items.iter().filter_map(|i| i.as_ref().ok()).flat_map(|c| &c.choices).filter_map(|c| c.finish_reason).collect()
}

fn has_usage(items: &crate::helpers::Items) -> bool {
    items.iter().any(|i| i.as_ref().is_ok_and(|c| c.usage.is_some()))
}

#[tokio::test]
async fn fail_500x2_fails_twice_then_succeeds() {
    let fake = start().await;
    let client = client(&fake);
    let req = || request(vec![user("retry me [[fake fail=500x2 tokens=3]]")]);

    let first = stream_all(&client, req()).await;
    let second = stream_all(&client, req()).await;
    let third = stream_all(&client, req()).await.unwrap();

    assert_eq!(api_status(&first), 500);
    assert_eq!(api_status(&second), 500);
    assert_eq!(contents(&third).concat(), "Echo: retry me");
    assert_eq!(fake.stats().chat_failed.get(&500), Some(&2));
}

#[tokio::test]
async fn a_rate_limit_429_has_an_openai_body_and_retry_after_headers() {
    let fake = start().await;
    let client = client(&fake);

    let result = stream_all(&client, request(vec![user("x [[fake fail=429]]")])).await;
    match result {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 429);
            assert_eq!(e.api_error.r#type.as_deref(), Some("tokens"));
            assert_eq!(e.api_error.code.as_deref(), Some("rate_limit_exceeded"));
        }
        other => panic!("expected a 429 ApiError, got {other:?}"),
    }

    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x [[fake fail=429]]"}]});
    let response = post_raw(&fake, "/chat/completions", &body).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(response.headers()["retry-after-ms"], "1000");
    assert_eq!(response.headers()["x-ratelimit-remaining-tokens"], "0");

    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "x [[fake fail=429 retry_after_ms=2500]]"}]});
    let response = post_raw(&fake, "/chat/completions", &body).await;
    assert_eq!(response.headers()["retry-after"], "3");
    assert_eq!(response.headers()["retry-after-ms"], "2500");
}

#[tokio::test]
async fn insufficient_quota_is_a_429_without_retry_after() {
    let fake = start().await;
    let client = client(&fake);

    let result = stream_all(&client, request(vec![user("x [[fake fail=insufficient_quota]]")])).await;
    match result {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 429);
            assert_eq!(e.api_error.r#type.as_deref(), Some("insufficient_quota"));
            assert_eq!(e.api_error.code.as_deref(), Some("insufficient_quota"));
        }
        other => panic!("expected a 429 ApiError, got {other:?}"),
    }

    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x [[fake fail=insufficient_quota]]"}]});
    let response = post_raw(&fake, "/chat/completions", &body).await;
    assert_eq!(response.status(), 429);
    assert!(!response.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn fail_400_is_a_parsed_invalid_request_error() {
    let fake = start().await;
    let client = client(&fake);

    let result = stream_all(&client, request(vec![user("x [[fake fail=400]]")])).await;

    match result {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 400);
            assert_eq!(e.api_error.r#type.as_deref(), Some("invalid_request_error"));
            assert_eq!(e.api_error.code.as_deref(), Some("invalid_value"));
        }
        other => panic!("expected a 400 ApiError, got {other:?}"),
    }
}

#[tokio::test]
async fn server_errors_and_proxy_html_reach_the_client_as_their_status() {
    let fake = start().await;
    let client = client(&fake);

    let overloaded = stream_all(&client, request(vec![user("x [[fake fail=503]]")])).await;
    assert_eq!(api_status(&overloaded), 503);

    let proxy = client
        .chat()
        .create(
            CreateChatCompletionRequestArgs::default()
                .model("m")
                .messages(vec![user("x [[fake fail=502html]]")])
                .build()
                .unwrap(),
        )
        .await;
    match proxy {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 502);
            assert!(e.api_error.message.contains("<html>"));
        }
        other => panic!("expected a 502 ApiError, got {other:?}"),
    }

    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x [[fake fail=404]]"}]});
    let response = post_raw(&fake, "/chat/completions", &body).await;
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn cut_after_3_ends_the_stream_after_three_chunks_without_finish_or_usage() {
    let fake = start().await;
    let client = client(&fake);

    let items = stream_all(&client, request(vec![user("a b c d e [[fake cut_after=3]]")])).await.unwrap();

    assert_eq!(contents(&items), ["Echo:", " a", " b"]);
    assert!(finish_reasons(&items).is_empty());
    assert!(!has_usage(&items));
    // The connection is aborted, which the client reports as one transport error at most.
    let errors: Vec<_> = items.iter().filter_map(|i| i.as_ref().err()).collect();
    assert!(errors.len() <= 1, "{errors:?}");
    assert!(
        errors.iter().all(|e| matches!(e, OpenAIError::StreamError(s) if matches!(**s, StreamError::EventStream(_)))),
        "{errors:?}"
    );
    assert_eq!(fake.stats().chat_interrupted, 1);
}

#[tokio::test]
async fn garbage_after_2_yields_one_deserialize_error_and_the_stream_continues() {
    let fake = start().await;
    let client = client(&fake);

    let items = stream_all(&client, request(vec![user("x [[fake garbage_after=2 tokens=5]]")])).await.unwrap();

    let errors: Vec<_> = items.iter().filter_map(|i| i.as_ref().err()).collect();
    assert_eq!(errors.len(), 1);
    assert!(matches!(errors[0], OpenAIError::JSONDeserialize(_, raw) if raw.contains("oops")));
    // role chunk, 2 content chunks, then the garbage
    assert!(items[3].is_err());
    assert_eq!(contents(&items).concat(), "Echo: x lorem ipsum dolor");
    assert_eq!(finish_reasons(&items), [FinishReason::Stop]);
    assert!(has_usage(&items));
}

#[tokio::test]
async fn error_after_2_sends_an_in_band_error_and_closes() {
    let fake = start().await;
    let client = client(&fake);

    let items = stream_all(&client, request(vec![user("x [[fake error_after=2]]")])).await.unwrap();

    assert_eq!(contents(&items), ["Echo:", " x"]);
    let last = items.last().unwrap();
    match last {
        Err(OpenAIError::JSONDeserialize(_, raw)) => {
            let body: serde_json::Value = serde_json::from_str(raw).unwrap();
            assert_eq!(body["error"]["type"], "server_error");
        }
        other => panic!("expected the in-band error last, got {other:?}"),
    }
    assert!(finish_reasons(&items).is_empty());
}

#[tokio::test]
async fn ttft_and_delay_slow_the_stream_down() {
    let fake = start().await;
    let client = client(&fake);
    let started = Instant::now();

    let mut stream =
        client.chat().create_stream(request(vec![user("x [[fake ttft_ms=300 delay_ms=50 tokens=3]]")])).await.unwrap();
    let role = stream.next().await.unwrap().unwrap();
    assert_eq!(role.choices[0].delta.content.as_deref(), Some(""));
    let first = stream.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    while let Some(item) = stream.next().await {
        item.unwrap();
    }
    let total = started.elapsed();

    assert_eq!(first.choices[0].delta.content.as_deref(), Some("Echo:"));
    assert!(first_at >= Duration::from_millis(300), "{first_at:?}");
    assert!(total >= Duration::from_millis(400), "{total:?}");
}

/// The raw SSE body of a streamed reply to `content`, asking for usage.
async fn raw_stream(fake: &chatq_fake_openai::FakeHandle, content: &str) -> String {
    let body = json!({
        "model": "m",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": content}],
    });
    post_raw(fake, "/chat/completions", &body).await.text().await.unwrap()
}

#[tokio::test]
async fn no_usage_finishes_the_stream_without_any_usage_even_when_asked() {
    let fake = start().await;
    let client = client(&fake);

    let items = stream_all(&client, request(vec![user("x [[fake no_usage tokens=3]]")])).await.unwrap();

    assert!(items.iter().all(Result::is_ok), "{items:?}");
    assert_eq!(contents(&items).concat(), "Echo: x lorem");
    assert_eq!(finish_reasons(&items), [FinishReason::Stop]);
    assert!(!has_usage(&items));
    let raw = raw_stream(&fake, "x [[fake no_usage tokens=3]]").await;
    assert!(!raw.contains("\"usage\""), "not even \"usage\":null: {raw}");
    assert!(raw.ends_with("data: [DONE]\n\n"), "{raw}");

    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x [[fake no_usage]]"}]});
    let reply: serde_json::Value = post_raw(&fake, "/chat/completions", &body).await.json().await.unwrap();
    assert!(reply.get("usage").is_none(), "{reply}");
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn no_finish_leaves_out_the_finish_chunk_but_not_usage_or_done() {
    let fake = start().await;
    let client = client(&fake);

    let items = stream_all(&client, request(vec![user("x [[fake no_finish tokens=3]]")])).await.unwrap();

    assert!(items.iter().all(Result::is_ok), "{items:?}");
    assert_eq!(contents(&items).concat(), "Echo: x lorem");
    assert!(finish_reasons(&items).is_empty());
    assert!(has_usage(&items));
    let raw = raw_stream(&fake, "x [[fake no_finish tokens=3]]").await;
    assert!(!raw.contains("\"finish_reason\":\"stop\""), "{raw}");
    assert!(raw.ends_with("data: [DONE]\n\n"), "{raw}");
}

#[tokio::test]
async fn no_done_closes_the_stream_cleanly_after_finish_and_usage() {
    let fake = start().await;
    let client = client(&fake);

    let items = stream_all(&client, request(vec![user("x [[fake no_done tokens=3]]")])).await.unwrap();

    // async-openai cannot tell this from a stream ended by [DONE].
    assert!(items.iter().all(Result::is_ok), "{items:?}");
    assert_eq!(finish_reasons(&items), [FinishReason::Stop]);
    assert!(has_usage(&items));
    let raw = raw_stream(&fake, "x [[fake no_done tokens=3]]").await;
    assert!(raw.contains("\"finish_reason\":\"stop\""), "{raw}");
    assert!(raw.contains("\"prompt_tokens\""), "{raw}");
    assert!(!raw.contains("[DONE]"), "{raw}");
}
