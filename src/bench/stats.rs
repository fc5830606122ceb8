//! Latency percentiles from every recorded sample (no histogram buckets: a run keeps at
//! most a few million `u64`, and exact order statistics need no resolution argument).

use serde::Serialize;

/// Order statistics of one run's latencies, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Summarises latencies given in nanoseconds (sorted in place).
    pub fn from_ns(samples_ns: &mut [u64]) -> Latency {
        if samples_ns.is_empty() {
            return Latency::default();
        }
        samples_ns.sort_unstable();
        let total: u128 = samples_ns.iter().map(|&v| v as u128).sum();
        let ms = |ns: u64| ns as f64 / 1e6;
        Latency {
            samples: samples_ns.len(),
            mean_ms: total as f64 / samples_ns.len() as f64 / 1e6,
            p50_ms: ms(nearest_rank(samples_ns, 0.50)),
            p90_ms: ms(nearest_rank(samples_ns, 0.90)),
            p99_ms: ms(nearest_rank(samples_ns, 0.99)),
            p999_ms: ms(nearest_rank(samples_ns, 0.999)),
            max_ms: ms(*samples_ns.last().expect("not empty")),
        }
    }
}

/// The nearest-rank percentile of sorted, non-empty samples.
fn nearest_rank(sorted: &[u64], quantile: f64) -> u64 {
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of a few figures (repeated runs of one scenario).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest rank: p50 of 1..=100 is 50, p99 is 99, max is 100.
    #[test]
    fn percentiles_by_nearest_rank() {
        let mut samples: Vec<u64> = (1..=100).map(|v| v * 1_000_000).collect();
        let latency = Latency::from_ns(&mut samples);
        assert_eq!(latency.p50_ms, 50.0);
        assert_eq!(latency.p99_ms, 99.0);
        assert_eq!(latency.max_ms, 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }
}
