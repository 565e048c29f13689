//! What the simulated placement round reads and remembers: each worker's
//! last written record, and the round-to-round history the dispatcher keeps.
//! It follows `gpuq_dispatcher`'s `placement_decision::inputs` (backlog =
//! ready + held, running = jobs on loaded models, arrival rates halved
//! each round, unserved-since, main model with since when) with the
//! benchmark's synthetic timings, which are what the measured ones come to.

use std::collections::{BTreeMap, BTreeSet};

use gpuq_dispatcher::{Decision, ModelState, Policy, Snapshot, WorkerState};

use super::super::{SyntheticModel, GPU_MEMORY_MIB, MAX_MODELS_PER_WORKER};

/// The benchmark's `[placement]` policy (the defaults), as `inputs::policy`
/// derives it: arrivals look ahead three rounds.
fn policy() -> Policy {
    let config = super::super::default_policy();
    Policy {
        min_residency_ms: config.min_residency_ms,
        max_queue_wait_ms: config.max_queue_wait_ms,
        lookahead_ms: config.interval_ms * 3,
    }
}

/// A worker's record as last written: loaded models (with when, ms), the
/// model it runs (not one it is loading), jobs held by model, jobs finished.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub resident: Vec<(usize, u64)>,
    pub running: Option<usize>,
    pub waiting: BTreeMap<usize, u64>,
    pub finished: BTreeMap<usize, u64>,
}

/// One worker's last published assignment: its queues, and its main model
/// with since when (ms).
type Assigned = (BTreeSet<usize>, Option<(usize, u64)>);

#[derive(Debug, Default)]
pub struct RoundHistory {
    /// Per model: jobs in the system and jobs finished at the last round, and when (ms).
    previous: BTreeMap<usize, (u64, u64, u64)>,
    arrivals_per_s: BTreeMap<usize, f64>,
    unserved_since: BTreeMap<usize, u64>,
    published: BTreeMap<usize, Assigned>,
}

fn worker_id(w: usize) -> String {
    format!("gpu{w:03}")
}

impl RoundHistory {
    /// The decision's input at `now_us` from queue depths and records.
    pub fn snapshot(
        &mut self,
        models: &[SyntheticModel],
        ready: &[u64],
        records: &[&Record],
        now_us: u64,
    ) -> (Snapshot, Policy) {
        let now = now_us / 1000;
        let mut states = Vec::new();
        for (m, model) in models.iter().enumerate() {
            let held: u64 = records.iter().filter_map(|r| r.waiting.get(&m)).sum();
            let running = records.iter().filter(|r| r.running == Some(m)).count() as u64;
            let finished: u64 = records.iter().filter_map(|r| r.finished.get(&m)).sum();
            let waiting = ready[m] + held;
            let in_system = waiting + running;
            if let Some((before, finished_before, at)) = self.previous.get(&m).copied() {
                let seconds = now.saturating_sub(at) as f64 / 1000.0;
                if seconds > 0.0 {
                    let arrived = (in_system + finished.saturating_sub(finished_before))
                        .saturating_sub(before) as f64;
                    let rate = self.arrivals_per_s.entry(m).or_default();
                    *rate = 0.5 * *rate + 0.5 * arrived / seconds;
                }
            }
            self.previous.insert(m, (in_system, finished, now));
            if waiting > 0 && running == 0 {
                self.unserved_since.entry(m).or_insert(now);
            } else {
                self.unserved_since.remove(&m);
            }
            states.push(ModelState {
                id: model.id.to_owned(),
                vram_mib: model.vram_mib,
                packed_mib: model.vram_mib,
                load_ms: model.load_ms,
                run_ms: model.duration_ms.max(1),
                waiting,
                running,
                arrivals_per_s: self.arrivals_per_s.get(&m).copied().unwrap_or(0.0),
                unserved_since_ms: self.unserved_since.get(&m).copied(),
                min_replicas: 0,
                max_replicas: 0,
            });
        }
        let name = |m: usize| models[m].id.to_owned();
        let workers = records
            .iter()
            .enumerate()
            .map(|(w, record)| {
                let published = self.published.get(&w);
                WorkerState {
                    id: worker_id(w),
                    host: "bench".to_owned(),
                    budget_mib: Some(GPU_MEMORY_MIB),
                    max_models: MAX_MODELS_PER_WORKER,
                    eligible: models.iter().map(|m| m.id.to_owned()).collect(),
                    resident: record
                        .resident
                        .iter()
                        .map(|&(m, at)| (name(m), at))
                        .collect(),
                    running: record.running.into_iter().map(name).collect(),
                    pinned: Vec::new(),
                    main: published.and_then(|(_, main)| main.map(|(m, since)| (name(m), since))),
                    consuming: published
                        .map(|(queues, _)| queues.iter().map(|&m| name(m)).collect())
                        .unwrap_or_default(),
                }
            })
            .collect();
        let snapshot = Snapshot {
            now_ms: now,
            models: states,
            workers,
        };
        (snapshot, policy())
    }

    /// Records the decision as `inputs::assignments` does (a main model
    /// keeps its since while it stays) and returns each worker's queues and
    /// main model, by worker index.
    pub fn publish(
        &mut self,
        models: &[SyntheticModel],
        decision: &Decision,
        now_us: u64,
    ) -> Vec<(BTreeSet<usize>, Option<usize>)> {
        let now = now_us / 1000;
        let index = |id: &str| models.iter().position(|m| m.id == id);
        let workers = self.published.len().max(decision.assignments.len());
        let mut out = vec![(BTreeSet::new(), None); workers];
        for (w, slot) in out.iter_mut().enumerate() {
            let id = worker_id(w);
            let queues: BTreeSet<usize> = decision
                .assignments
                .get(&id)
                .map(|ids| ids.iter().filter_map(|m| index(m)).collect())
                .unwrap_or_default();
            let main = decision.main.get(&id).and_then(|m| index(m));
            let since = match self.published.get(&w).and_then(|(_, m)| *m) {
                Some((previous, since)) if Some(previous) == main => since,
                _ => now,
            };
            self.published
                .insert(w, (queues.clone(), main.map(|m| (m, since))));
            *slot = (queues, main);
        }
        out
    }
}
