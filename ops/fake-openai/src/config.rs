//! Server-wide defaults for the fake, set once at start-up.

use std::net::{Ipv4Addr, SocketAddr};

/// Server-wide defaults. Per-request `[[fake ...]]` directives and the runtime default
/// directive override these key by key.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Address to bind. Port 0 (the default, on 127.0.0.1) lets tests run in parallel.
    pub listen: SocketAddr,
    /// Reply length in tokens (words) when no directive sets `tokens`.
    pub tokens: usize,
    /// Delay before the first content chunk of a stream, in milliseconds.
    pub ttft_ms: u64,
    /// Delay between content chunks of a stream, in milliseconds.
    pub delay_ms: u64,
    /// Moderation flags any input containing this word (case-insensitive).
    pub trigger_word: String,
    /// Initial server-wide default directive (`"key=value ..."`, without `[[fake ]]`);
    /// replaceable at run time with `FakeHandle::set_default_directive` or `PUT /_fake/directive`.
    pub directive: String,
    /// Keep every chat request body for `FakeHandle::chat_requests`. The binary turns it off
    /// so long benchmark runs do not grow memory without bound.
    pub record_requests: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tokens: 20,
            ttft_ms: 0,
            delay_ms: 0,
            trigger_word: "forbidden-topic".to_owned(),
            directive: String::new(),
            record_requests: true,
        }
    }
}
