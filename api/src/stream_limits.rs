//! Caps on the event streams (SSE and JSON long-polls) one API process holds open: in all, per
//! API key and per end user. Each open stream holds a [`StreamSlot`]; dropping it frees it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use chatq_common::config::HttpConfig;
use uuid::Uuid;

use crate::{
    auth::Principal,
    error::{ApiError, ApiErrorCode},
};

/// Seconds a client refused with `too_many_streams` is told to wait.
const RETRY_AFTER_SECS: u64 = 1;

#[derive(Default)]
struct Counts {
    total: usize,
    per_key: HashMap<Uuid, usize>,
    per_user: HashMap<(Uuid, String), usize>,
}

/// The open streams of this process, by key and by end user.
pub struct StreamLimits {
    max: usize,
    per_key: usize,
    per_user: usize,
    counts: Mutex<Counts>,
}

/// One open stream; frees its place when dropped.
pub struct StreamSlot {
    limits: Arc<StreamLimits>,
    key: Uuid,
    user: Option<String>,
}

impl StreamLimits {
    /// Limits from `CHATQ_STREAMS_MAX`, `CHATQ_STREAMS_PER_KEY` and `CHATQ_STREAMS_PER_USER`.
    pub fn new(config: &HttpConfig) -> Self {
        Self {
            max: config.max_streams,
            per_key: config.max_streams_per_key,
            per_user: config.max_streams_per_user,
            counts: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for one stream of `principal`, or fails with 429 `too_many_streams` when
    /// the process, its key or its end user is at the limit.
    pub fn acquire(self: &Arc<Self>, principal: &Principal) -> Result<StreamSlot, ApiError> {
        let mut counts = self.lock();
        let user = principal.end_user.as_ref().map(|u| (principal.key_id, u.clone()));
        let refused = if counts.total >= self.max {
            Some(("the server", self.max))
        } else if counts.per_key.get(&principal.key_id).copied().unwrap_or(0) >= self.per_key {
            Some(("this API key", self.per_key))
        } else if user.as_ref().is_some_and(|u| counts.per_user.get(u).copied().unwrap_or(0) >= self.per_user) {
            Some(("this user", self.per_user))
        } else {
            None
        };
        if let Some((who, limit)) = refused {
            return Err(ApiError::RateLimited {
                code: ApiErrorCode::TooManyStreams,
                message: format!("{who} has {limit} event streams open, the most allowed; close one first"),
                limit: limit as u64,
                remaining: 0,
                reset_secs: RETRY_AFTER_SECS,
            });
        }
        counts.total += 1;
        *counts.per_key.entry(principal.key_id).or_default() += 1;
        if let Some(u) = user {
            *counts.per_user.entry(u).or_default() += 1;
        }
        Ok(StreamSlot { limits: self.clone(), key: principal.key_id, user: principal.end_user.clone() })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self.limits.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_key.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_key.remove(&self.key);
            }
        }
        if let Some(user) = self.user.take() {
            let k = (self.key, user);
            if let Some(n) = counts.per_user.get_mut(&k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.per_user.remove(&k);
                }
            }
        }
    }
}
