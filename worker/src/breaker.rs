//! The circuit breaker in front of one chat upstream (each upstream has its own, see
//! [`crate::upstream`]). After `threshold` retryable failures in a row it opens: runs move to
//! their next fallback route, or wait in `queued`, instead of hammering an upstream that is down. After the
//! cool-down it half-opens and lets one run through as a probe; a success closes it, a failure
//! opens it again. The state is published to Redis
//! ([`chatq_common::redis_formats::breaker`]) so every API replica's `/readyz` can report
//! `degraded`.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

pub use chatq_common::redis_formats::breaker::BreakerState;

/// What a run may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Call the provider.
    Allow,
    /// Call the provider as the half-open probe; report the result.
    Probe,
    /// Do not call; the breaker should be looked at again after this long.
    Wait(Duration),
}

struct Inner {
    failures: u32,
    opened_at: Option<Instant>,
    probing: bool,
}

/// One breaker per upstream (per worker process).
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker opening after `threshold` failures in a row for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            inner: Mutex::new(Inner { failures: 0, opened_at: None, probing: false }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        let inner = self.lock();
        match inner.opened_at {
            None => BreakerState::Closed,
            Some(_) if inner.probing => BreakerState::HalfOpen,
            Some(at) if at.elapsed() >= self.cooldown => BreakerState::HalfOpen,
            Some(_) => BreakerState::Open,
        }
    }

    /// Whether a run may call the provider now.
    pub fn admit(&self) -> Admission {
        let mut inner = self.lock();
        match inner.opened_at {
            None => Admission::Allow,
            Some(at) if at.elapsed() < self.cooldown => Admission::Wait(self.cooldown - at.elapsed()),
            Some(_) if inner.probing => Admission::Wait(self.cooldown.min(Duration::from_secs(1))),
            Some(_) => {
                inner.probing = true;
                Admission::Probe
            }
        }
    }

    /// The provider answered (even with a permanent 4xx: it is up). Returns whether the state
    /// changed.
    pub fn success(&self) -> bool {
        let mut inner = self.lock();
        let changed = inner.opened_at.is_some();
        *inner = Inner { failures: 0, opened_at: None, probing: false };
        changed
    }

    /// A retryable failure (connection, timeout, 429, 5xx, cut stream). Returns whether the
    /// breaker (re)opened.
    pub fn failure(&self) -> bool {
        let mut inner = self.lock();
        inner.failures += 1;
        if inner.probing || (inner.opened_at.is_none() && inner.failures >= self.threshold) {
            inner.opened_at = Some(Instant::now());
            inner.probing = false;
            return true;
        }
        false
    }

    /// A probe ended without telling anything (cancelled, lease lost): let another probe go.
    pub fn abandon_probe(&self) {
        self.lock().probing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_then_probes_once_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_millis(30));
        assert!(!b.failure());
        assert!(!b.failure());
        assert_eq!(b.admit(), Admission::Allow);
        assert!(b.failure(), "third failure in a row opens it");
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(b.admit(), Admission::Wait(_)));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Admission::Probe);
        assert!(matches!(b.admit(), Admission::Wait(_)), "only one probe at a time");
        assert!(b.success());
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(), Admission::Allow);
    }

    #[test]
    fn a_failed_probe_opens_it_again_and_a_success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_millis(20));
        b.failure();
        b.success();
        assert!(!b.failure(), "the count restarted after a success");
        assert!(b.failure());
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(b.admit(), Admission::Probe);
        assert!(b.failure(), "a failed probe reopens");
        assert_eq!(b.state(), BreakerState::Open);
    }
}
