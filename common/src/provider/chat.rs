//! Streaming chat completions with usage.

use std::{
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
};

use async_openai::{
    error::OpenAIError,
    types::chat::{
        ChatCompletionRequestAssistantMessageArgs, ChatCompletionRequestMessage,
        ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs, ChatCompletionResponseStream,
        ChatCompletionStreamOptions, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
        CreateChatCompletionStreamResponse,
    },
};
use futures::Stream;

use super::{Provider, ProviderError, Seen};

/// Who wrote a message sent to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptRole {
    /// Instructions.
    System,
    /// The end user.
    User,
    /// An earlier answer.
    Assistant,
}

/// One message of a prompt.
#[derive(Clone, Debug)]
pub struct PromptMessage {
    /// Author.
    pub role: PromptRole,
    /// Text.
    pub content: String,
}

/// A streaming chat request.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    /// Model name.
    pub model: String,
    /// The conversation, oldest first.
    pub messages: Vec<PromptMessage>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Cap on the answer length.
    pub max_output_tokens: Option<u32>,
}

/// An open streaming chat completion: its chunks, and whether it ended with `data: [DONE]`.
pub struct ChatStream {
    chunks: ChatCompletionResponseStream,
    seen: Arc<Seen>,
}

impl ChatStream {
    /// Whether the provider sent `data: [DONE]`. Once the stream has ended, false means the
    /// connection was closed before the terminator: the answer may be incomplete.
    pub fn ended_with_done(&self) -> bool {
        self.seen.done.load(Ordering::Acquire)
    }
}

impl Stream for ChatStream {
    type Item = Result<CreateChatCompletionStreamResponse, OpenAIError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.chunks.as_mut().poll_next(cx)
    }
}

impl Provider {
    /// Opens a streaming chat completion with `include_usage`.
    pub async fn stream_chat(&self, req: &ChatRequest) -> Result<ChatStream, ProviderError> {
        let request = build_request(req).map_err(|e| ProviderError::classify(&e, None))?;
        let seen = Arc::new(Seen { watch_done: true, ..Seen::default() });
        let chunks =
            self.call_seen(seen.clone(), |client| async move { client.chat().create_stream(request).await }).await?;
        Ok(ChatStream { chunks, seen })
    }
}

fn build_request(req: &ChatRequest) -> Result<CreateChatCompletionRequest, OpenAIError> {
    let mut messages: Vec<ChatCompletionRequestMessage> = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let msg = match m.role {
            PromptRole::System => {
                ChatCompletionRequestSystemMessageArgs::default().content(m.content.as_str()).build()?.into()
            }
            PromptRole::User => {
                ChatCompletionRequestUserMessageArgs::default().content(m.content.as_str()).build()?.into()
            }
            PromptRole::Assistant => {
                ChatCompletionRequestAssistantMessageArgs::default().content(m.content.as_str()).build()?.into()
            }
        };
        messages.push(msg);
    }
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model(req.model.as_str())
        .messages(messages)
        .stream_options(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: Some(false) });
    if let Some(t) = req.temperature {
        args.temperature(t);
    }
    if let Some(n) = req.max_output_tokens {
        args.max_completion_tokens(n);
    }
    args.build()
}
