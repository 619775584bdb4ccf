//! State shared by every request: configuration, the runtime default directive,
//! failure counters, recorded requests and statistics.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde::Serialize;
use serde_json::Value;

use crate::config::FakeConfig;
use crate::directive::Directive;

/// The server-wide default directive together with its own failure counter, so that
/// replacing it (even with the same text) re-arms `fail=...xN`.
#[derive(Debug, Default)]
pub(crate) struct DefaultDirective {
    pub text: String,
    pub directive: Directive,
    /// How many requests the default `fail=` key has seen since this directive was set.
    pub fail_seen: AtomicU64,
}

impl DefaultDirective {
    pub fn new(text: &str) -> Self {
        let text = text.trim().to_owned();
        let directive = Directive::parse(&text);
        Self { text, directive, fail_seen: AtomicU64::new(0) }
    }
}

/// Request counters reported by `GET /_fake/stats` and [`crate::FakeHandle::stats`].
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct FakeStats {
    /// Chat completion requests received (valid or not).
    pub chat_requests: u64,
    /// Chat completions answered with a 200 event stream.
    pub chat_streamed: u64,
    /// Chat completions answered with an error status, keyed by status code.
    pub chat_failed: BTreeMap<u16, u64>,
    /// Streams deliberately ended early by `cut_after` or `error_after`.
    pub chat_interrupted: u64,
    /// Embedding requests received.
    pub embeddings: u64,
    /// Moderation requests received.
    pub moderations: u64,
}

/// Everything handlers share. Locks here are only ever held for a few instructions and
/// never across an `.await`, so 2,000 concurrent streams do not contend on them.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: FakeConfig,
    pub default: RwLock<Arc<DefaultDirective>>,
    /// Requests seen per exact per-request directive text that carries `fail=`.
    pub fail_seen: Mutex<HashMap<String, u64>>,
    pub requests: Mutex<Vec<Value>>,
    pub chat_requests: AtomicU64,
    pub chat_streamed: AtomicU64,
    pub chat_interrupted: AtomicU64,
    pub chat_failed: Mutex<BTreeMap<u16, u64>>,
    pub embeddings: AtomicU64,
    pub moderations: AtomicU64,
    /// When non-zero, `/v1/moderations` answers with this HTTP status (an outage).
    pub moderation_fail_status: std::sync::atomic::AtomicU16,
}

impl Shared {
    pub fn new(config: FakeConfig) -> Self {
        let default = Arc::new(DefaultDirective::new(&config.directive));
        Self {
            config,
            default: RwLock::new(default),
            fail_seen: Mutex::default(),
            requests: Mutex::default(),
            chat_requests: AtomicU64::new(0),
            chat_streamed: AtomicU64::new(0),
            chat_interrupted: AtomicU64::new(0),
            chat_failed: Mutex::default(),
            embeddings: AtomicU64::new(0),
            moderations: AtomicU64::new(0),
            moderation_fail_status: std::sync::atomic::AtomicU16::new(0),
        }
    }

    pub fn default_directive(&self) -> Arc<DefaultDirective> {
        self.default.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn set_default_directive(&self, text: &str) {
        let new = Arc::new(DefaultDirective::new(text));
        *self.default.write().unwrap_or_else(PoisonError::into_inner) = new;
    }

    /// Counts one more request carrying the per-request directive `key` and returns how
    /// many such requests came before it.
    pub fn bump_fail_counter(&self, key: &str) -> u64 {
        let mut seen = self.fail_seen.lock().unwrap_or_else(PoisonError::into_inner);
        let count = seen.entry(key.to_owned()).or_insert(0);
        *count += 1;
        *count - 1
    }

    pub fn record_request(&self, body: &Value) {
        if self.config.record_requests {
            self.requests.lock().unwrap_or_else(PoisonError::into_inner).push(body.clone());
        }
    }

    pub fn recorded_requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn count_failure(&self, status: u16) {
        *self.chat_failed.lock().unwrap_or_else(PoisonError::into_inner).entry(status).or_insert(0) += 1;
    }

    pub fn stats(&self) -> FakeStats {
        FakeStats {
            chat_requests: self.chat_requests.load(Ordering::Relaxed),
            chat_streamed: self.chat_streamed.load(Ordering::Relaxed),
            chat_failed: self.chat_failed.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            chat_interrupted: self.chat_interrupted.load(Ordering::Relaxed),
            embeddings: self.embeddings.load(Ordering::Relaxed),
            moderations: self.moderations.load(Ordering::Relaxed),
        }
    }
}
