//! The makespan lower bounds a mixed-workload run is measured against: the
//! strict one (work, arrival tail, last job) and the issue's (work plus each
//! model's load times the workers that ran it). Pure, tested in `tests.rs`.

use serde::Serialize;

use super::{SyntheticModel, TraceJob};

/// The makespan lower bound of a trace on `workers` GPUs and its three terms, ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LowerBound {
    /// (sum of job durations + one load of each model in the trace) / W.
    pub work_ms: f64,
    /// Max over arrival times t of t + (work arriving at or after t) / W.
    pub tail_ms: f64,
    /// Max over jobs of arrival + duration.
    pub last_job_ms: f64,
    /// The largest of the three.
    pub value_ms: f64,
}

pub fn lower_bound(trace: &[TraceJob], models: &[SyntheticModel], workers: usize) -> LowerBound {
    let w = workers.max(1) as f64;
    let work: u64 = trace.iter().map(|job| job.duration_ms).sum();
    let mut used = vec![false; models.len()];
    for job in trace {
        used[job.model] = true;
    }
    let loads: u64 = models
        .iter()
        .zip(&used)
        .filter(|(_, used)| **used)
        .map(|(model, _)| model.load_ms)
        .sum();
    let work_ms = (work + loads) as f64 / w;
    let mut sorted: Vec<&TraceJob> = trace.iter().collect();
    sorted.sort_by_key(|job| job.arrival_ms);
    // Walk back from the last arrival, summing the work that arrives at or after t.
    let (mut tail_ms, mut after) = (0.0f64, 0u64);
    for (i, job) in sorted.iter().enumerate().rev() {
        after += job.duration_ms;
        let first_at_t = i == 0 || sorted[i - 1].arrival_ms != job.arrival_ms;
        if first_at_t {
            tail_ms = tail_ms.max(job.arrival_ms as f64 + after as f64 / w);
        }
    }
    let last_job_ms = trace
        .iter()
        .map(|job| (job.arrival_ms + job.duration_ms) as f64)
        .fold(0.0, f64::max);
    LowerBound {
        work_ms,
        tail_ms,
        last_job_ms,
        value_ms: work_ms.max(tail_ms).max(last_job_ms),
    }
}

/// The issue's bound: (sum of job durations + each model's load × the number
/// of workers that ran it) / W, ms. `workers_ran[m]` counts model `m`'s workers.
pub fn lower_bound_issue(
    trace: &[TraceJob],
    models: &[SyntheticModel],
    workers_ran: &[usize],
    workers: usize,
) -> f64 {
    let work: u64 = trace.iter().map(|job| job.duration_ms).sum();
    let loads: u64 = models
        .iter()
        .zip(workers_ran)
        .map(|(model, n)| model.load_ms * *n as u64)
        .sum();
    (work + loads) as f64 / workers.max(1) as f64
}
