//! Starting a fake and talking to it.

use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions,
    CreateChatCompletionRequest, CreateChatCompletionRequestArgs, CreateChatCompletionStreamResponse,
};
use chatq_fake_openai::{FakeConfig, FakeHandle, spawn};
use futures::StreamExt;

/// Upper bound for anything a test waits on; generous for a loaded 2-core CI box.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A fake with default settings.
pub async fn start() -> FakeHandle {
    start_with(FakeConfig::default()).await
}

/// A fake with the given settings.
pub async fn start_with(config: FakeConfig) -> FakeHandle {
    let (_, handle) = spawn(config).await.expect("fake starts");
    handle
}

/// The real client, pointed at the fake, with its internal retries removed.
pub fn client(fake: &FakeHandle) -> Client<OpenAIConfig> {
    let config = OpenAIConfig::new().with_api_base(fake.base_url()).with_api_key("sk-test");
    let http = reqwest::Client::new();
    Client::build(http.clone(), config).with_http_service(ReqwestService::new(http))
}

/// A user message.
pub fn user(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessageArgs::default().content(text).build().expect("valid message").into()
}

/// A chat request asking for usage in the stream.
pub fn request(messages: Vec<ChatCompletionRequestMessage>) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .messages(messages)
        .stream_options(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: None })
        .build()
        .expect("valid request")
}

/// Everything a stream produced, until it ended.
pub type Items = Vec<Result<CreateChatCompletionStreamResponse, OpenAIError>>;

/// Opens a stream and collects every item, failing the test if it does not end in time.
pub async fn stream_all(
    client: &Client<OpenAIConfig>,
    request: CreateChatCompletionRequest,
) -> Result<Items, OpenAIError> {
    let mut stream = client.chat().create_stream(request).await?;
    let collect = async {
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            items.push(item);
        }
        items
    };
    Ok(tokio::time::timeout(DEADLINE, collect).await.expect("stream ends before the deadline"))
}

/// Content deltas of successful chunks, in order.
pub fn contents(items: &Items) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.content.clone())
        .filter(|c| !c.is_empty())
        .collect()
}

/// Status of an `ApiError`, or a panic naming what came instead.
pub fn api_status<T: std::fmt::Debug>(result: &Result<T, OpenAIError>) -> u16 {
    match result {
        Err(OpenAIError::ApiError(e)) => e.status_code.as_u16(),
        other => panic!("expected an ApiError, got {other:?}"),
    }
}

/// POSTs JSON with a bearer token, returning the raw response.
pub async fn post_raw(fake: &FakeHandle, path: &str, body: &serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", fake.base_url()))
        .bearer_auth("sk-test")
        .json(body)
        .send()
        .await
        .expect("request reaches the fake")
}
