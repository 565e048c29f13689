//! Job metrics a worker accumulates and publishes in its Redis record, for its
//! dispatcher to serve as Prometheus metrics of the whole host.
//!
//! Plain counters and fixed-bucket histograms, cumulative since the worker
//! started (Prometheus treats the reset after a restart as a counter reset).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Upper bounds of the duration buckets, seconds (the `+Inf` bucket is implied).
pub const DURATION_BUCKETS_S: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0,
];

/// A histogram over [`DURATION_BUCKETS_S`]: per-bucket (not cumulative) counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DurationHistogram {
    /// One count per bucket, then one for `+Inf`.
    pub counts: Vec<u64>,
    pub sum_s: f64,
    pub count: u64,
}

impl DurationHistogram {
    pub fn observe(&mut self, seconds: f64) {
        if self.counts.len() != DURATION_BUCKETS_S.len() + 1 {
            self.counts = vec![0; DURATION_BUCKETS_S.len() + 1];
        }
        let bucket = DURATION_BUCKETS_S
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(DURATION_BUCKETS_S.len());
        self.counts[bucket] += 1;
        self.sum_s += seconds;
        self.count += 1;
    }

    /// Cumulative counts per upper bound, as Prometheus exposes them.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        DURATION_BUCKETS_S
            .iter()
            .enumerate()
            .map(|(i, le)| {
                total += self.counts.get(i).copied().unwrap_or(0);
                (*le, total)
            })
            .collect()
    }
}

/// Per-model job metrics of one worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelMetrics {
    /// Jobs ended, by final status (`completed`, `failed`, `timed_out`, `cancelled`).
    pub jobs: BTreeMap<String, u64>,
    /// Time from submission to the start of the run.
    pub queue_wait: DurationHistogram,
    /// Run time of the model.
    pub run: DurationHistogram,
    pub loads: u64,
    pub load_seconds_sum: f64,
}

/// Everything a worker reports, by model id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerMetrics {
    pub models: BTreeMap<String, ModelMetrics>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_fall_in_their_buckets_and_accumulate() {
        let mut h = DurationHistogram::default();
        for s in [0.0005, 0.02, 0.02, 3.0, 1000.0] {
            h.observe(s);
        }
        assert_eq!(h.count, 5);
        let cumulative = h.cumulative();
        assert_eq!(cumulative[0], (0.001, 1));
        assert_eq!(cumulative[3], (0.025, 3));
        assert_eq!(cumulative.last().copied(), Some((600.0, 4)));
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<DurationHistogram>(&json).unwrap(), h);
    }
}
