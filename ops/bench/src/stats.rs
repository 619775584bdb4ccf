//! Latency samples and their percentile summaries, shared by every scenario.

use serde::Serialize;

/// A set of latency samples in milliseconds, collected during a scenario.
///
/// Samples are kept whole (not bucketed) so percentiles are exact; a bench run records at most
/// a few hundred thousand values, which is a few MiB.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    values: Vec<f64>,
}

impl Samples {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one sample. Non-finite values (NaN, infinity) are dropped: they can only come from
    /// a broken clock reading and would poison the sort.
    pub fn record(&mut self, ms: f64) {
        if ms.is_finite() {
            self.values.push(ms);
        }
    }

    /// Adds every sample of `other` to this set.
    pub fn extend(&mut self, other: &Samples) {
        self.values.extend_from_slice(&other.values);
    }

    /// How many samples were recorded.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no sample was recorded.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The percentile summary of the samples recorded so far.
    pub fn summary(&self) -> Summary {
        Summary::of(&self.values)
    }
}

/// Percentiles of one latency measure, as printed in the JSON result.
///
/// Every field is `null` in JSON when there were no samples, so a scenario where nothing
/// completed cannot be mistaken for one with zero latency.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples the percentiles were taken over.
    pub count: usize,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest sample.
    pub max: Option<f64>,
    /// Arithmetic mean.
    pub mean: Option<f64>,
}

impl Summary {
    /// Summarises `values` (any order). Values are rounded to microseconds (3 decimals of a
    /// millisecond) for readable output.
    pub fn of(values: &[f64]) -> Summary {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let mean =
            if sorted.is_empty() { None } else { Some(round3(sorted.iter().sum::<f64>() / sorted.len() as f64)) };
        Summary {
            count: sorted.len(),
            p50: percentile(&sorted, 50.0).map(round3),
            p90: percentile(&sorted, 90.0).map(round3),
            p99: percentile(&sorted, 99.0).map(round3),
            max: sorted.last().copied().map(round3),
            mean,
        }
    }
}

/// The `p`-th percentile (0–100) of an ascending-sorted slice by the nearest-rank method: the
/// smallest sample such that at least `p` percent of the samples are less than or equal to it.
///
/// Nearest-rank always returns a value that was actually observed (no interpolation), which is
/// what latency targets such as "p99 ≤ 50 ms" mean. `None` for an empty slice.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let n = sorted.len();
    // rank is 1-based; p = 0 maps to the minimum.
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    let index = rank.clamp(1, n) - 1;
    Some(sorted[index])
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_to_hundred() -> Vec<f64> {
        (1..=100).map(f64::from).collect()
    }

    #[test]
    fn nearest_rank_percentiles_of_one_to_a_hundred_are_the_obvious_values() {
        let v = one_to_hundred();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 90.0), Some(90.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
    }

    #[test]
    fn percentile_of_an_empty_set_is_none() {
        assert_eq!(percentile(&[], 50.0), None);
        let s = Samples::new().summary();
        assert_eq!(s.count, 0);
        assert_eq!((s.p50, s.p90, s.p99, s.max, s.mean), (None, None, None, None, None));
    }

    #[test]
    fn a_single_sample_is_every_percentile() {
        let s = Summary::of(&[7.5]);
        assert_eq!((s.p50, s.p90, s.p99, s.max), (Some(7.5), Some(7.5), Some(7.5), Some(7.5)));
    }

    #[test]
    fn percentiles_pick_observed_values_and_round_up_the_rank() {
        // n = 10: p50 is rank 5, p90 rank 9, p99 rank ceil(9.9) = 10.
        let v: Vec<f64> = (1..=10).map(|i| f64::from(i) * 10.0).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 90.0), Some(90.0));
        assert_eq!(percentile(&v, 99.0), Some(100.0));
        // n = 3: p50 is rank ceil(1.5) = 2.
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
    }

    #[test]
    fn summary_sorts_unordered_input_and_ignores_non_finite_values() {
        let mut samples = Samples::new();
        for v in [30.0, f64::NAN, 10.0, 20.0, f64::INFINITY, 40.0] {
            samples.record(v);
        }
        assert_eq!(samples.len(), 4);
        let s = samples.summary();
        assert_eq!(s.p50, Some(20.0));
        assert_eq!(s.max, Some(40.0));
        assert_eq!(s.mean, Some(25.0));
        // Summary::of filters too, for callers that pass raw slices.
        assert_eq!(Summary::of(&[f64::NAN, 1.0]).count, 1);
    }

    #[test]
    fn one_slow_outlier_shows_in_p99_and_max_but_not_p50() {
        let mut v = vec![1.0; 999];
        v.push(5000.0);
        let s = Summary::of(&v);
        assert_eq!(s.p50, Some(1.0));
        assert_eq!(s.p99, Some(1.0));
        assert_eq!(s.max, Some(5000.0));
        v.extend(std::iter::repeat_n(5000.0, 10));
        assert_eq!(Summary::of(&v).p99, Some(5000.0));
    }

    #[test]
    fn summary_rounds_to_microseconds() {
        let s = Summary::of(&[1.234_567_8]);
        assert_eq!(s.p50, Some(1.235));
    }

    #[test]
    fn summary_serializes_empty_percentiles_as_null() {
        let json = serde_json::to_value(Summary::of(&[])).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"count": 0, "p50": null, "p90": null, "p99": null, "max": null, "mean": null})
        );
    }
}
