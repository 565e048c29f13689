//! The figures of one mixed-workload run, from what it left in Redis: the
//! makespan against the bounds, GPU busy time, loads paid and queue waits by
//! model. Pure, tested in `tests.rs`.

use std::collections::BTreeMap;

use gpuq_common::metrics::WorkerMetrics;
use serde::Serialize;

use super::{Mode, SyntheticModel};
use crate::bench::percentile;

/// What one run left in Redis for one job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    /// Index into the model list (from the trace).
    pub model: usize,
    /// Duration the trace asked for, ms.
    pub duration_ms: u64,
    pub status: String,
    pub created_ms: Option<u64>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

/// Queue waits of one model's jobs in one run.
#[derive(Debug, Clone, Serialize)]
pub struct ModelWait {
    pub jobs: usize,
    pub mean_wait_s: f64,
    pub p95_wait_s: f64,
    /// Workers whose metrics show jobs of this model.
    pub workers_ran: usize,
    pub loads: u64,
    pub load_s: f64,
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub mode: String,
    pub jobs: usize,
    pub completed: usize,
    /// Jobs that ended other than `completed` (failed, timed out, cancelled).
    pub failed: usize,
    pub makespan_s: f64,
    /// Makespan / [`LowerBound::value_ms`].
    pub makespan_over_lower_bound: f64,
    /// Sum over jobs of finished − started (model loads included) / (W × makespan).
    pub busy_fraction: f64,
    /// Sum of completed jobs' durations / (W × makespan): time spent on the work itself.
    pub work_fraction: f64,
    pub loads: u64,
    pub load_s: f64,
    /// Largest p95 queue wait of any model, and that model.
    pub worst_p95_wait_s: f64,
    pub worst_p95_model: String,
    pub models: BTreeMap<String, ModelWait>,
    /// Worker records read at the end of the run.
    pub worker_records: usize,
    /// Latest a job was submitted after its trace time, ms.
    pub max_submit_lag_ms: u64,
}

/// Figures of a run from its jobs and its workers' metrics.
pub fn figures(
    mode: Mode,
    models: &[SyntheticModel],
    workers: usize,
    jobs: &[JobOutcome],
    metrics: &[WorkerMetrics],
    lower_bound_ms: f64,
) -> RunFigures {
    let w = workers.max(1) as f64;
    let first_submit = jobs.iter().filter_map(|j| j.created_ms).min().unwrap_or(0);
    let last_finish = jobs.iter().filter_map(|j| j.finished_ms).max().unwrap_or(0);
    let makespan_ms = last_finish.saturating_sub(first_submit) as f64;
    let busy_ms: u64 = jobs
        .iter()
        .filter_map(|j| Some(j.finished_ms?.saturating_sub(j.started_ms?)))
        .sum();
    let completed = jobs.iter().filter(|j| j.status == "completed").count();
    let work_ms: u64 = jobs
        .iter()
        .filter(|j| j.status == "completed")
        .map(|j| j.duration_ms)
        .sum();
    let mut per_model = BTreeMap::new();
    let (mut worst_p95_wait_s, mut worst_p95_model) = (0.0f64, String::new());
    for (index, model) in models.iter().enumerate() {
        let mut waits: Vec<f64> = jobs
            .iter()
            .filter(|j| j.model == index)
            .filter_map(|j| Some(j.started_ms?.saturating_sub(j.created_ms?) as f64 / 1000.0))
            .collect();
        let count = jobs.iter().filter(|j| j.model == index).count();
        if count == 0 {
            continue;
        }
        waits.sort_by(f64::total_cmp);
        let mean = if waits.is_empty() {
            f64::NAN
        } else {
            waits.iter().sum::<f64>() / waits.len() as f64
        };
        let p95 = percentile(&waits, 95.0);
        if p95 > worst_p95_wait_s || worst_p95_model.is_empty() {
            worst_p95_wait_s = p95;
            worst_p95_model = model.id.to_owned();
        }
        let of_model = || metrics.iter().filter_map(|m| m.models.get(model.id));
        per_model.insert(
            model.id.to_owned(),
            ModelWait {
                jobs: count,
                mean_wait_s: mean,
                p95_wait_s: p95,
                workers_ran: of_model()
                    .filter(|m| m.jobs.values().sum::<u64>() > 0)
                    .count(),
                loads: of_model().map(|m| m.loads).sum(),
                load_s: of_model().map(|m| m.load_seconds_sum).sum(),
            },
        );
    }
    let all_models = || metrics.iter().flat_map(|m| m.models.values());
    RunFigures {
        mode: mode.name().to_owned(),
        jobs: jobs.len(),
        completed,
        failed: jobs.len() - completed,
        makespan_s: makespan_ms / 1000.0,
        makespan_over_lower_bound: makespan_ms / lower_bound_ms,
        busy_fraction: busy_ms as f64 / (w * makespan_ms),
        work_fraction: work_ms as f64 / (w * makespan_ms),
        loads: all_models().map(|m| m.loads).sum(),
        load_s: all_models().map(|m| m.load_seconds_sum).sum(),
        worst_p95_wait_s,
        worst_p95_model,
        models: per_model,
        worker_records: metrics.len(),
        max_submit_lag_ms: 0,
    }
}
