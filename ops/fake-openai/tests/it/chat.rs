//! Chat completions: reply text, stream shape, usage and request recording.

use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessageArgs, ChatCompletionRequestMessageContentPartTextArgs,
    ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
    FinishReason, Role,
};
use serde_json::json;

use crate::helpers::{client, contents, post_raw, request, start, stream_all, user};

fn expected_prompt_tokens(contents: &[&str]) -> u32 {
    let bpe = tiktoken_rs::o200k_base_singleton();
    let per_message: usize = contents.iter().map(|c| bpe.encode_ordinary(c).len() + 3).sum();
    u32::try_from(per_message + 3).unwrap()
}

#[tokio::test]
async fn a_stream_has_a_role_chunk_the_deterministic_reply_stop_and_usage() {
    let fake = start().await;
    let client = client(&fake);
    let prompt = "hello   world [[fake tokens=6]]";

    let items = stream_all(&client, request(vec![user(prompt)])).await.unwrap();

    let chunks: Vec<_> = items.into_iter().map(Result::unwrap).collect();
    let first = &chunks[0];
    assert_eq!(first.choices[0].delta.role, Some(Role::Assistant));
    assert_eq!(first.choices[0].delta.content.as_deref(), Some(""));
    let text: String = chunks.iter().flat_map(|c| &c.choices).filter_map(|c| c.delta.content.as_deref()).collect();
    assert_eq!(text, "Echo: hello world lorem ipsum dolor");
    let finishes: Vec<_> = chunks.iter().flat_map(|c| &c.choices).filter_map(|c| c.finish_reason).collect();
    assert_eq!(finishes, [FinishReason::Stop]);

    let last = chunks.last().unwrap();
    assert!(last.choices.is_empty());
    let usage = last.usage.as_ref().expect("usage chunk");
    assert_eq!(usage.completion_tokens, 6);
    assert_eq!(usage.prompt_tokens, expected_prompt_tokens(&[prompt]));
    assert_eq!(usage.total_tokens, usage.prompt_tokens + 6);
    let details = usage.prompt_tokens_details.as_ref().unwrap();
    assert_eq!(details.cached_tokens, Some(0));
    let completion = usage.completion_tokens_details.as_ref().unwrap();
    assert_eq!(completion.reasoning_tokens, Some(0));
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c.usage.is_none()));

    assert!(first.id.starts_with("chatcmpl-") && first.id.len() == 9 + 29);
    for chunk in &chunks {
        assert_eq!(chunk.id, first.id);
        assert_eq!(chunk.object, "chat.completion.chunk");
        assert_eq!(chunk.model, "gpt-4o-mini");
        assert_eq!(chunk.created, first.created);
    }
}

#[tokio::test]
async fn a_longer_history_costs_more_prompt_tokens() {
    let fake = start().await;
    let client = client(&fake);
    let usage_of = |items: &crate::helpers::Items| {
        items.iter().filter_map(|i| i.as_ref().ok()?.usage.clone()).next_back().expect("usage chunk")
    };

    let short = stream_all(&client, request(vec![user("how are you")])).await.unwrap();
    let history = vec![
        ChatCompletionRequestSystemMessageArgs::default().content("You are terse.").build().unwrap().into(),
        user("hi"),
        ChatCompletionRequestAssistantMessageArgs::default().content("Echo: hi").build().unwrap().into(),
        user("how are you"),
    ];
    let long = stream_all(&client, request(history)).await.unwrap();

    let (short, long) = (usage_of(&short), usage_of(&long));
    assert_eq!(short.prompt_tokens, expected_prompt_tokens(&["how are you"]));
    assert_eq!(long.prompt_tokens, expected_prompt_tokens(&["You are terse.", "hi", "Echo: hi", "how are you"]));
    assert!(long.prompt_tokens > short.prompt_tokens);
}

#[tokio::test]
async fn a_non_streaming_reply_carries_the_same_text_and_usage() {
    let fake = start().await;
    let client = client(&fake);
    let req = CreateChatCompletionRequestArgs::default()
        .model("gpt-5-mini")
        .messages(vec![user("ping [[fake tokens=4 cached=5]]")])
        .build()
        .unwrap();

    let response = client.chat().create(req).await.unwrap();

    assert_eq!(response.object, "chat.completion");
    assert_eq!(response.model, "gpt-5-mini");
    let choice = &response.choices[0];
    assert_eq!(choice.message.role, Role::Assistant);
    assert_eq!(choice.message.content.as_deref(), Some("Echo: ping lorem ipsum"));
    assert_eq!(choice.message.refusal, None);
    assert_eq!(choice.finish_reason, Some(FinishReason::Stop));
    let usage = response.usage.unwrap();
    assert_eq!(usage.completion_tokens, 4);
    assert_eq!(usage.prompt_tokens_details.unwrap().cached_tokens, Some(5));
}

#[tokio::test]
async fn max_completion_tokens_cuts_the_reply_with_finish_reason_length() {
    let fake = start().await;
    let client = client(&fake);
    let mut req = request(vec![user("one two three four five")]);
    req.max_completion_tokens = Some(3);

    let items = stream_all(&client, req).await.unwrap();

    assert_eq!(contents(&items).concat(), "Echo: one two");
    let finish = items.iter().filter_map(|i| i.as_ref().ok()).flat_map(|c| &c.choices).find_map(|c| c.finish_reason);
    assert_eq!(finish, Some(FinishReason::Length));
}

#[tokio::test]
async fn an_echo_longer_than_tokens_is_truncated_and_zero_tokens_is_empty() {
    let fake = start().await;
    let client = client(&fake);

    let items = stream_all(&client, request(vec![user("a b c d e [[fake tokens=3]]")])).await.unwrap();
    assert_eq!(contents(&items), ["Echo:", " a", " b"]);

    let items = stream_all(&client, request(vec![user("a b c [[fake tokens=0]]")])).await.unwrap();
    assert!(contents(&items).is_empty());
}

#[tokio::test]
async fn content_given_as_text_parts_is_echoed() {
    let fake = start().await;
    let client = client(&fake);
    let parts = vec![
        ChatCompletionRequestMessageContentPartTextArgs::default().text("first part").build().unwrap().into(),
        ChatCompletionRequestMessageContentPartTextArgs::default()
            .text("second [[fake tokens=4]]")
            .build()
            .unwrap()
            .into(),
    ];
    let message = ChatCompletionRequestUserMessageArgs::default().content(parts).build().unwrap().into();

    let items = stream_all(&client, request(vec![message])).await.unwrap();

    assert_eq!(contents(&items).concat(), "Echo: first part second");
}

#[tokio::test]
async fn echo_prompt_lists_every_message_the_client_sent() {
    let fake = start().await;
    let client = client(&fake);
    let history = vec![
        ChatCompletionRequestSystemMessageArgs::default().content("Be brief.").build().unwrap().into(),
        user("first [[fake tokens=2]]"),
        ChatCompletionRequestAssistantMessageArgs::default().content("Echo: first").build().unwrap().into(),
        user("second   question [[fake echo=prompt]]"),
    ];

    let items = stream_all(&client, request(history)).await.unwrap();

    assert_eq!(
        contents(&items).concat(),
        "system: Be brief.\nuser: first\nassistant: Echo: first\nuser: second question"
    );
}

#[tokio::test]
async fn every_chat_request_body_is_recorded_in_order() {
    let fake = start().await;
    let client = client(&fake);

    stream_all(&client, request(vec![user("one")])).await.unwrap();
    stream_all(&client, request(vec![user("two")])).await.unwrap();

    let bodies = fake.chat_requests();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["messages"], json!([{"role": "user", "content": "one"}]));
    assert_eq!(bodies[1]["messages"][0]["content"], "two");
    assert_eq!(bodies[1]["stream"], true);
    assert_eq!(bodies[1]["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn invalid_requests_get_openai_400s() {
    let fake = start().await;

    let no_model = post_raw(&fake, "/chat/completions", &json!({"messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(no_model.status(), 400);
    let body: serde_json::Value = no_model.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let no_messages = post_raw(&fake, "/chat/completions", &json!({"model": "m", "messages": []})).await;
    assert_eq!(no_messages.status(), 400);
    let body: serde_json::Value = no_messages.json().await.unwrap();
    assert_eq!(body["error"]["param"], "messages");

    let malformed = reqwest::Client::new()
        .post(format!("{}/chat/completions", fake.base_url()))
        .bearer_auth("sk-test")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let body: serde_json::Value = malformed.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(fake.stats().chat_failed.get(&400), Some(&3));
}

#[tokio::test]
async fn a_request_without_an_api_key_gets_401_invalid_api_key() {
    let fake = start().await;

    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", fake.base_url()))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert!(fake.chat_requests().is_empty());
}

#[tokio::test]
async fn responses_carry_openai_headers() {
    let fake = start().await;

    let response = post_raw(
        &fake,
        "/chat/completions",
        &json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;

    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["openai-version"], "2020-10-01");
    assert!(headers["x-request-id"].to_str().unwrap().starts_with("req_"));
    assert!(headers.contains_key("openai-processing-ms"));
    assert!(headers.contains_key("x-ratelimit-remaining-tokens"));
    let body = response.text().await.unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert!(!body.contains("\"usage\""), "no usage without include_usage");
}
