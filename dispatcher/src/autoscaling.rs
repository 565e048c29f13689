//! Autoscaling signals: how much GPU work waits, per model and fleet-wide,
//! as Prometheus gauges a scaler (KEDA's Prometheus scaler, an HPA on
//! external metrics) can act on.
//!
//! Why not the queue length: a queue of 100 two-minute 3D jobs and one of
//! 100 20 ms jobs look the same to a message count (KEDA's RabbitMQ scaler),
//! but one wants more GPUs and the other does not. So the gauges are in
//! GPU-seconds, from the run times workers measure (`model_timings`).
//!
//! Only the placement lease holder computes them, once per placement round,
//! from the same snapshot and decision the round uses; every other
//! dispatcher exports none, so `sum()` over the fleet counts each model
//! once. A dispatcher that loses the lease clears them.
//!
//! Gauges:
//! - `gpuq_model_backlog_jobs{model}`: jobs not started yet (ready in any of
//!   the model's queues, or delivered to a worker and not started);
//! - `gpuq_model_backlog_seconds{model}`: those jobs × the model's mean run time;
//! - `gpuq_model_drain_seconds{model}`: backlog seconds ÷ workers consuming
//!   the model's queues; [`NO_WORKER_DRAIN_S`] when none does and jobs wait;
//! - `gpuq_model_oldest_wait_seconds{model}`: age of its oldest queued job;
//! - `gpuq_gpu_seconds_wanted`: GPU-seconds of work in the fleet, queued plus
//!   running (each running job counted at the model's mean run time).

use std::collections::BTreeMap;
use std::sync::Arc;

use gpuq_common::registry::Registry;
use prometheus::proto::{MetricFamily, MetricType};

use crate::metrics::{family, gauge};
use crate::placement_decision::{Decision, Snapshot};

/// The drain time shown for a model with jobs and no worker: a large finite
/// sentinel (Prometheus and KEDA handle it, unlike `+Inf` in some queries).
pub const NO_WORKER_DRAIN_S: f64 = 1.0e9;

/// How often the placing dispatcher reads the oldest queued jobs, ms (the
/// other gauges follow every placement round).
pub const OLDEST_REFRESH_MS: u64 = 5_000;

/// How many of the oldest queued jobs a round reads to find each model's
/// oldest (bounded, so a huge backlog costs one bounded read).
pub const OLDEST_SAMPLE: usize = 500;

/// One model's signals.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelBacklog {
    pub jobs: u64,
    pub seconds: f64,
    pub workers: u64,
    pub drain_seconds: f64,
    pub oldest_wait_seconds: f64,
}

/// The fleet's signals, as of one placement round.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FleetBacklog {
    pub models: BTreeMap<String, ModelBacklog>,
    pub gpu_seconds_wanted: f64,
}

/// The latest signals, shared between the placement loop (writer) and the
/// metrics endpoint (reader); `None` where this dispatcher does not place.
pub type SharedBacklog = Arc<parking_lot::Mutex<Option<FleetBacklog>>>;

/// The oldest queued jobs' creation times, by model: `oldest` is the job
/// index's first entries (oldest first) as (created_ms, feature, pinned
/// model); a job without a pinned model belongs to its feature's default.
/// When the read was cut at [`OLDEST_SAMPLE`], a model with waiting jobs
/// none of which were read gets the last one read: its oldest job is no
/// older than that, so the gauge is an upper bound for it.
pub fn oldest_by_model(
    registry: &Registry,
    oldest: &[(u64, String, Option<String>)],
) -> (BTreeMap<String, u64>, Option<u64>) {
    let mut by_model = BTreeMap::new();
    for (created_ms, feature, model) in oldest {
        let model = match model {
            Some(model) if !model.is_empty() => Some(model.clone()),
            _ => registry.default_model(feature).map(|m| m.id.clone()),
        };
        if let Some(model) = model {
            by_model.entry(model).or_insert(*created_ms);
        }
    }
    let cut_at = (oldest.len() >= OLDEST_SAMPLE)
        .then(|| oldest.last().map(|(created, _, _)| *created))
        .flatten();
    (by_model, cut_at)
}

/// The signals of one round, from its snapshot and decision.
pub fn compute(
    snapshot: &Snapshot,
    decision: &Decision,
    oldest: &BTreeMap<String, u64>,
    cut_at: Option<u64>,
) -> FleetBacklog {
    let mut fleet = FleetBacklog::default();
    for model in &snapshot.models {
        let run_s = model.run_ms.max(1) as f64 / 1000.0;
        let workers = decision
            .assignments
            .values()
            .filter(|models| models.contains(&model.id))
            .count() as u64;
        let seconds = model.waiting as f64 * run_s;
        let drain_seconds = match (model.waiting, workers) {
            (0, _) => 0.0,
            (_, 0) => NO_WORKER_DRAIN_S,
            (_, n) => seconds / n as f64,
        };
        let oldest_ms = match oldest.get(&model.id) {
            Some(created) => Some(*created),
            None if model.waiting > 0 => cut_at,
            None => None,
        };
        let oldest_wait_seconds = oldest_ms
            .map(|created| snapshot.now_ms.saturating_sub(created) as f64 / 1000.0)
            .unwrap_or(0.0);
        fleet.gpu_seconds_wanted += (model.waiting + model.running) as f64 * run_s;
        fleet.models.insert(
            model.id.clone(),
            ModelBacklog {
                jobs: model.waiting,
                seconds,
                workers,
                drain_seconds,
                oldest_wait_seconds,
            },
        );
    }
    fleet
}

/// The gauges of `backlog`.
pub fn families(backlog: &FleetBacklog) -> Vec<MetricFamily> {
    let per_model = |name: &str, help: &str, value: fn(&ModelBacklog) -> f64| {
        let metrics = backlog
            .models
            .iter()
            .map(|(model, b)| gauge(value(b), &[("model", model)]))
            .collect();
        family(name, help, MetricType::GAUGE, metrics)
    };
    vec![
        per_model(
            "gpuq_model_backlog_jobs",
            "Jobs of the model not started yet (placing dispatcher only).",
            |b| b.jobs as f64,
        ),
        per_model(
            "gpuq_model_backlog_seconds",
            "Estimated GPU-seconds of the model's queued jobs, from measured run times.",
            |b| b.seconds,
        ),
        per_model(
            "gpuq_model_drain_seconds",
            "Backlog seconds divided by the workers consuming the model; 1e9 when none does.",
            |b| b.drain_seconds,
        ),
        per_model(
            "gpuq_model_oldest_wait_seconds",
            "Age of the model's oldest queued job.",
            |b| b.oldest_wait_seconds,
        ),
        family(
            "gpuq_gpu_seconds_wanted",
            "Estimated GPU-seconds of work in the fleet: queued plus running jobs.",
            MetricType::GAUGE,
            vec![gauge(backlog.gpu_seconds_wanted, &[])],
        ),
    ]
}

#[cfg(test)]
mod tests;
