//! From the records of one placement round to the decision's input, and from
//! the decision to the assignments to publish: the arithmetic between the
//! placement loop's I/O (`crate::placement_loop`) and the decision itself
//! ([`super::decide`]). Pure, so it is unit-tested below; the loop only
//! reads queues and records and writes what these functions return.
//!
//! [`round`] is one round's whole pure part in the loop's order. It is
//! public (as `gpuq_dispatcher::placement_round`) so that the mixed
//! benchmark's placement model (`tests/src/bench/mixed/sim.rs`) runs the
//! very code the loop runs, from records it writes as workers write them,
//! instead of a copy of this arithmetic that could drift from it.

use std::collections::{BTreeMap, HashMap};

use gpuq_common::config::Config;
use gpuq_common::record::{Assignment, ModelTimings, WorkerRecord};
use gpuq_common::registry::{ModelConfig, RuntimeParams};
use gpuq_common::vram::{admitted_mib, packed_mib, ModelVram};

use super::{decide, Decision, ModelState, Policy, Snapshot, WorkerState};

/// Load time assumed for a model nobody has loaded yet, milliseconds.
const DEFAULT_LOAD_MS: u64 = 10_000;
/// Run time assumed for a model that has not run yet, milliseconds.
const DEFAULT_RUN_MS: u64 = 1_000;

/// A worker's last published queues, and its main model with since when.
type Published = (Vec<String>, Option<(String, u64)>);

/// What the placement loop remembers between rounds.
#[derive(Default)]
pub struct History {
    /// Per model: jobs in the system and jobs finished at the last round, and when.
    previous: BTreeMap<String, (u64, u64, u64)>,
    arrivals_per_s: BTreeMap<String, f64>,
    unserved_since_ms: BTreeMap<String, u64>,
    /// Last published assignment of each worker.
    published: BTreeMap<String, Published>,
    /// Timings published at earlier rounds (kept when no worker reports any).
    pub stored_timings: HashMap<String, ModelTimings>,
    /// The oldest queued job per model (`crate::autoscaling`), when read
    /// (ms), and where the read was cut; read again only every few seconds.
    pub oldest: Option<(u64, BTreeMap<String, u64>, Option<u64>)>,
    /// Every worker's measured VRAM, merged (and written for the others)
    /// when (ms); merged again every `vram::stored::MERGE_INTERVAL_MS`.
    pub learned_vram: Option<(u64, BTreeMap<String, gpuq_common::vram::ModelVram>)>,
}

impl History {
    /// A fresh history for a loop that just took the lease, with the
    /// timings the previous lease holder published.
    pub fn resumed(stored_timings: HashMap<String, ModelTimings>) -> History {
        History {
            stored_timings,
            ..History::default()
        }
    }
}

/// What one round decided, and what it publishes.
pub struct Round {
    pub snapshot: Snapshot,
    pub decision: Decision,
    /// Each worker's assignment, and the workers whose assignment changed.
    pub assignments: Vec<(String, Assignment)>,
    pub changed: Vec<String>,
    /// The timings measured from the records, published with the assignments.
    pub timings: HashMap<String, ModelTimings>,
}

/// One placement round from what the loop read: each model's ready jobs,
/// the live workers' records and the learned VRAM. Measures the timings,
/// builds the snapshot (a model is placed by its admitted VRAM, where
/// learned), decides, and builds the assignments; `history` carries what
/// the next round needs.
pub fn round(
    config: &Config,
    host_id: &str,
    now: u64,
    ready: &BTreeMap<String, u64>,
    workers: &[WorkerRecord],
    learned: &BTreeMap<String, ModelVram>,
    history: &mut History,
) -> Round {
    let timings = measured_timings(workers);
    let mut snapshot = snapshot(config, now, ready, workers, &timings, history);
    for model in &mut snapshot.models {
        let measured = learned.get(&model.id);
        model.packed_mib = packed_mib(model.vram_mib, measured, &config.gpu);
        model.vram_mib = admitted_mib(model.vram_mib, measured, &config.gpu);
    }
    let decision = decide(&snapshot, &policy(config));
    let (assignments, changed) = assignments(&decision, host_id, now, history);
    history.stored_timings.extend(timings.clone());
    Round {
        snapshot,
        decision,
        assignments,
        changed,
        timings,
    }
}

pub fn policy(config: &Config) -> Policy {
    Policy {
        min_residency_ms: config.placement.min_residency_ms,
        max_queue_wait_ms: config.placement.max_queue_wait_ms,
        lookahead_ms: config.placement.interval_ms * 3,
    }
}

/// Mean load and run times per model, from every worker's metrics.
pub fn measured_timings(workers: &[WorkerRecord]) -> HashMap<String, ModelTimings> {
    let mut sums: BTreeMap<&str, (f64, u64, f64, u64)> = BTreeMap::new();
    for worker in workers {
        for (model, metrics) in &worker.metrics.models {
            let entry = sums.entry(model).or_default();
            entry.0 += metrics.load_seconds_sum;
            entry.1 += metrics.loads;
            entry.2 += metrics.run.sum_s;
            entry.3 += metrics.run.count;
        }
    }
    sums.into_iter()
        .filter(|(_, (_, loads, _, runs))| *loads > 0 && *runs > 0)
        .map(|(model, (load_s, loads, run_s, runs))| {
            (
                model.to_owned(),
                ModelTimings {
                    load_ms: (load_s * 1000.0 / loads as f64).round() as u64,
                    run_ms: (run_s * 1000.0 / runs as f64).round().max(1.0) as u64,
                },
            )
        })
        .collect()
}

/// Timings before any measurement: a synthetic model's declared ones, else defaults.
fn estimated_timings(model: &ModelConfig) -> ModelTimings {
    match model.runtime_params() {
        Ok(RuntimeParams::Sleep(sleep)) => ModelTimings {
            load_ms: sleep.load_ms,
            run_ms: sleep.duration_ms.max(1),
        },
        _ => ModelTimings {
            load_ms: DEFAULT_LOAD_MS,
            run_ms: DEFAULT_RUN_MS,
        },
    }
}

/// The decision's input: every model's backlog, timings and policy, every
/// live worker's state, from the records of one round. Updates `history`
/// (arrival rates, unserved-since times) as a round passes.
pub fn snapshot(
    config: &Config,
    now: u64,
    ready: &BTreeMap<String, u64>,
    workers: &[WorkerRecord],
    timings: &HashMap<String, ModelTimings>,
    history: &mut History,
) -> Snapshot {
    Snapshot {
        now_ms: now,
        models: model_states(config, now, ready, workers, timings, history),
        workers: worker_states(config, workers, history),
    }
}

/// Each model's backlog (ready in its queue plus held by workers), jobs
/// running, arrival rate (smoothed over rounds), timings and policy.
fn model_states(
    config: &Config,
    now: u64,
    ready: &BTreeMap<String, u64>,
    workers: &[WorkerRecord],
    timings: &HashMap<String, ModelTimings>,
    history: &mut History,
) -> Vec<ModelState> {
    let mut models = Vec::new();
    for model in config.registry().models() {
        let id = &model.id;
        let held: u64 = workers.iter().filter_map(|w| w.waiting.get(id)).sum();
        let running: u64 = workers
            .iter()
            .flat_map(|w| &w.resident_models)
            .filter(|r| &r.model == id)
            .map(|r| r.in_use as u64)
            .sum();
        let finished: u64 = workers
            .iter()
            .filter_map(|w| w.metrics.models.get(id))
            .flat_map(|m| m.jobs.values())
            .sum();
        let waiting = ready.get(id).copied().unwrap_or(0) + held;
        let in_system = waiting + running;
        if let Some((before, finished_before, at)) = history.previous.get(id).copied() {
            let seconds = now.saturating_sub(at) as f64 / 1000.0;
            if seconds > 0.0 {
                let arrived = (in_system + finished.saturating_sub(finished_before))
                    .saturating_sub(before) as f64;
                let rate = history.arrivals_per_s.entry(id.clone()).or_default();
                *rate = 0.5 * *rate + 0.5 * arrived / seconds;
            }
        }
        history
            .previous
            .insert(id.clone(), (in_system, finished, now));
        if waiting > 0 && running == 0 {
            history.unserved_since_ms.entry(id.clone()).or_insert(now);
        } else {
            history.unserved_since_ms.remove(id);
        }
        let timing = timings
            .get(id)
            .or_else(|| history.stored_timings.get(id))
            .copied()
            .unwrap_or_else(|| estimated_timings(model));
        let policy = config.placement.models.get(id).cloned().unwrap_or_default();
        models.push(ModelState {
            id: id.clone(),
            vram_mib: model.vram_mib,
            packed_mib: model.vram_mib,
            load_ms: timing.load_ms,
            run_ms: timing.run_ms,
            waiting,
            running,
            arrivals_per_s: history.arrivals_per_s.get(id).copied().unwrap_or(0.0),
            unserved_since_ms: history.unserved_since_ms.get(id).copied(),
            min_replicas: policy.min_replicas,
            max_replicas: policy.max_replicas,
        });
    }
    models
}

/// Each live worker as the decision sees it: what it may serve, holds,
/// runs, is pinned to, and was last given.
fn worker_states(config: &Config, workers: &[WorkerRecord], history: &History) -> Vec<WorkerState> {
    workers
        .iter()
        .map(|w| WorkerState {
            id: w.worker_id.clone(),
            host: w.host.clone(),
            budget_mib: (w.vram_budget_mib > 0).then_some(w.vram_budget_mib),
            max_models: config.dispatcher.max_models_per_worker as usize,
            eligible: w.models.clone(),
            resident: w
                .resident_models
                .iter()
                .map(|r| (r.model.clone(), r.loaded_at_ms))
                .collect(),
            running: w
                .resident_models
                .iter()
                .filter(|r| r.in_use > 0)
                .map(|r| r.model.clone())
                .collect(),
            pinned: config
                .placement
                .models
                .iter()
                .filter(|(_, p)| p.pin.contains(&w.worker_id))
                .map(|(id, _)| id.clone())
                .collect(),
            main: history
                .published
                .get(&w.worker_id)
                .and_then(|(_, main)| main.clone()),
            consuming: history
                .published
                .get(&w.worker_id)
                .map(|(models, _)| models.clone())
                .unwrap_or_default(),
        })
        .collect()
}

/// Each worker's assignment, and the workers whose assignment changed.
pub fn assignments(
    decision: &Decision,
    host_id: &str,
    now: u64,
    history: &mut History,
) -> (Vec<(String, Assignment)>, Vec<String>) {
    let mut all = Vec::new();
    let mut changed = Vec::new();
    for (worker, models) in &decision.assignments {
        let main = decision.main.get(worker).cloned();
        let previous = history.published.get(worker);
        let main_since = match previous.and_then(|(_, m)| m.as_ref()) {
            Some((previous_main, since)) if Some(previous_main) == main.as_ref() => *since,
            _ => now,
        };
        if previous.is_none_or(|(previous_models, previous_main)| {
            previous_models != models || previous_main.as_ref().map(|(m, _)| m) != main.as_ref()
        }) {
            tracing::info!(worker = %worker, models = ?models, main = ?main, "placement: new assignment");
            changed.push(worker.clone());
        }
        history.published.insert(
            worker.clone(),
            (models.clone(), main.clone().map(|m| (m, main_since))),
        );
        all.push((
            worker.clone(),
            Assignment {
                models: models.clone(),
                main,
                by: host_id.to_owned(),
                decided_ms: now,
            },
        ));
    }
    history
        .published
        .retain(|worker, _| decision.assignments.contains_key(worker));
    (all, changed)
}

#[cfg(test)]
mod tests;
