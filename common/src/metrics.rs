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
    /// Jobs given back because their size class needs more VRAM than the
    /// worker has (`gpu-worker`'s give-back step).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vram_give_backs: u64,
    /// Jobs and run time by tenant: at most `tenants.max_labels` tenants by
    /// name, the rest together under [`OTHER_TENANT`], so a client that
    /// makes up tenant names cannot grow the metrics without bound.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, TenantMetrics>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The label of every tenant past `tenants.max_labels`.
pub const OTHER_TENANT: &str = "other";

/// One tenant's jobs on one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantMetrics {
    /// Jobs ended, by final status.
    pub jobs: BTreeMap<String, u64>,
    /// GPU time its jobs used (run time), seconds: what fair share divides.
    pub run_seconds_sum: f64,
}

impl ModelMetrics {
    /// The entry of `tenant`, or of [`OTHER_TENANT`] once `max_labels`
    /// tenants have one.
    pub fn tenant(&mut self, tenant: &str, max_labels: usize) -> &mut TenantMetrics {
        let named = self.tenants.keys().filter(|t| *t != OTHER_TENANT).count();
        let label = if self.tenants.contains_key(tenant) || named < max_labels {
            tenant
        } else {
            OTHER_TENANT
        };
        self.tenants.entry(label.to_owned()).or_default()
    }
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

    #[test]
    fn tenants_past_the_label_limit_count_as_other() {
        let mut model = ModelMetrics::default();
        for tenant in ["a", "b", "c", "d", "a"] {
            model.tenant(tenant, 2).run_seconds_sum += 1.0;
        }
        let labels: Vec<&str> = model.tenants.keys().map(String::as_str).collect();
        assert_eq!(labels, ["a", "b", "other"]);
        assert_eq!(model.tenants["a"].run_seconds_sum, 2.0);
        assert_eq!(model.tenants["other"].run_seconds_sum, 2.0);
    }
}
