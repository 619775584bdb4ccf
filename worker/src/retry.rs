//! When to try a run again after a retryable provider error.

use std::time::Duration;

use rand::Rng as _;

/// The delay before attempt `attempt + 1`: the provider's `Retry-After` when it gave one
/// (capped at `max`), else exponential backoff from `base` (doubling per attempt, capped at
/// `max`) with up to 25 % jitter so retries of many runs do not arrive together.
pub fn delay(attempt: i32, base: Duration, max: Duration, retry_after: Option<Duration>) -> Duration {
    if let Some(after) = retry_after {
        return after.min(max);
    }
    let exp = 2f64.powi((attempt - 1).clamp(0, 20));
    let raw = (base.as_secs_f64() * exp).min(max.as_secs_f64());
    let jitter = 1.0 - 0.25 * rand::rng().random::<f64>();
    Duration::from_secs_f64(raw * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_cap() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(4);
        for attempt in 1..=6 {
            let d = delay(attempt, base, max, None).as_secs_f64();
            let full = (0.5 * 2f64.powi(attempt - 1)).min(4.0);
            assert!(d <= full && d >= full * 0.75, "attempt {attempt}: {d} not within jitter of {full}");
        }
    }

    #[test]
    fn a_retry_after_from_the_provider_wins_but_is_capped() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(30);
        assert_eq!(delay(1, base, max, Some(Duration::from_secs(7))), Duration::from_secs(7));
        assert_eq!(delay(1, base, max, Some(Duration::from_secs(600))), max);
    }
}
