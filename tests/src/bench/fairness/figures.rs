//! The figures of a fairness run, from job records: queue waits, GPU-time
//! shares over sliding windows, throughput. Pure, tested below.

use serde::Serialize;

/// What a finished job's record says about its timing, ms since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    pub tenant: String,
    pub created_ms: u64,
    pub started_ms: u64,
    pub finished_ms: u64,
}

impl Timing {
    pub fn wait_ms(&self) -> f64 {
        self.started_ms.saturating_sub(self.created_ms) as f64
    }
}

/// p50, p95 and max of some values (0 when there are none).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub samples: usize,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

pub fn spread(mut values: Vec<f64>) -> Spread {
    values.sort_by(f64::total_cmp);
    let at = |p: f64| crate::bench::percentile(&values, p);
    Spread {
        samples: values.len(),
        p50: if values.is_empty() { 0.0 } else { at(50.0) },
        p95: if values.is_empty() { 0.0 } else { at(95.0) },
        max: values.last().copied().unwrap_or(0.0),
    }
}

/// Jobs finished per second between the first start and the last finish.
pub fn throughput(jobs: &[Timing]) -> f64 {
    let first = jobs.iter().map(|j| j.started_ms).min().unwrap_or(0);
    let last = jobs.iter().map(|j| j.finished_ms).max().unwrap_or(0);
    if last <= first {
        return 0.0;
    }
    jobs.len() as f64 * 1000.0 / (last - first) as f64
}

/// `tenant`'s share of the GPU time used in each `window_ms` window
/// (stepping by `step_ms`) from the first start until the first moment
/// either tenant has no more jobs to start (both backlogged throughout).
/// Returns (lowest, highest) share and how many windows there were.
pub fn share_range(
    jobs: &[Timing],
    tenant: &str,
    window_ms: u64,
    step_ms: u64,
) -> (f64, f64, usize) {
    let first = jobs.iter().map(|j| j.started_ms).min().unwrap_or(0);
    // Both backlogged until the earlier of the two tenants' last starts.
    let mut last_starts = std::collections::BTreeMap::<&str, u64>::new();
    for job in jobs {
        let last = last_starts.entry(job.tenant.as_str()).or_default();
        *last = (*last).max(job.started_ms);
    }
    let backlogged_until = last_starts.values().copied().min().unwrap_or(first);
    let (mut low, mut high, mut windows) = (f64::INFINITY, f64::NEG_INFINITY, 0);
    let mut start = first;
    while start + window_ms <= backlogged_until {
        let end = start + window_ms;
        let (mut mine, mut all) = (0u64, 0u64);
        for job in jobs {
            let overlap = job
                .finished_ms
                .min(end)
                .saturating_sub(job.started_ms.max(start));
            all += overlap;
            if job.tenant == tenant {
                mine += overlap;
            }
        }
        if all > 0 {
            let share = mine as f64 / all as f64;
            low = low.min(share);
            high = high.max(share);
            windows += 1;
        }
        start += step_ms;
    }
    if windows == 0 {
        return (0.0, 0.0, 0);
    }
    (low, high, windows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(tenant: &str, created: u64, started: u64, finished: u64) -> Timing {
        Timing {
            tenant: tenant.into(),
            created_ms: created,
            started_ms: started,
            finished_ms: finished,
        }
    }

    #[test]
    fn waits_and_throughput() {
        let jobs = [job("a", 0, 100, 300), job("a", 0, 300, 500)];
        assert_eq!(
            spread(jobs.iter().map(Timing::wait_ms).collect()).max,
            300.0
        );
        assert!((throughput(&jobs) - 5.0).abs() < 1e-9);
        assert_eq!(spread(Vec::new()).samples, 0);
    }

    #[test]
    fn shares_count_time_inside_each_window() {
        // One slot: a runs 300 ms, then b 100 ms, repeated: a has 75 %.
        let mut jobs = Vec::new();
        for i in 0..100u64 {
            let t = i * 400;
            jobs.push(job("a", 0, t, t + 300));
            jobs.push(job("b", 0, t + 300, t + 400));
        }
        let (low, high, windows) = share_range(&jobs, "a", 4000, 1000);
        assert!(windows > 30, "{windows}");
        assert!(
            (low - 0.75).abs() < 1e-9 && (high - 0.75).abs() < 1e-9,
            "{low} {high}"
        );
    }
}
