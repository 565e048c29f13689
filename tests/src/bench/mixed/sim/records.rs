//! What the simulated placement round reads, and the round itself.
//!
//! Each simulated worker writes a [`WorkerRecord`] as the real worker does:
//! its loaded models (not one being loaded), the model it runs, the jobs it
//! holds, and the job and load metrics the timings are measured from. The
//! round is the dispatcher's own [`placement_round`], the pure part of the
//! placement loop (timings, snapshot, decision, assignments, history), run
//! on the benchmark's own config ([`system_config`] of a placement run). So
//! the model holds no copy of the dispatcher's arithmetic: what changes in
//! the loop changes here.

use std::collections::{BTreeMap, BTreeSet};

use gpuq_common::metrics::WorkerMetrics;
use gpuq_common::record::{ResidentModel, WorkerRecord};
use gpuq_common::{Config, ConfigOverrides};
use gpuq_dispatcher::{placement_round, PlacementHistory};

use super::super::config::{system_config, Mode};
use super::super::{SyntheticModel, GPU_MEMORY_MIB};
use super::{Event, Sim, ROUND_TAKES_US};

/// The host id the simulated dispatcher decides as.
const HOST: &str = "bench";

fn worker_id(w: usize) -> String {
    format!("gpu{w:03}")
}

/// What a simulated worker's record is written from.
pub struct RecordParts<'a> {
    /// Loaded models, with when they were loaded (ms).
    pub resident: &'a [(usize, u64)],
    /// The model of the job running (not one being loaded for).
    pub running: Option<usize>,
    /// Jobs delivered and not started, by model.
    pub waiting: &'a BTreeMap<usize, u64>,
    pub metrics: &'a WorkerMetrics,
}

/// Worker `w`'s record at `now_ms`, as a worker with one job at a time
/// writes it.
pub fn worker_record(
    w: usize,
    models: &[SyntheticModel],
    state: RecordParts,
    now_ms: u64,
) -> WorkerRecord {
    let id = |m: usize| models[m].id.to_owned();
    WorkerRecord {
        worker_id: worker_id(w),
        host: HOST.to_owned(),
        gpu: w.to_string(),
        pid: 0,
        state: if state.running.is_some() {
            "busy"
        } else {
            "idle"
        }
        .to_owned(),
        vram_budget_mib: GPU_MEMORY_MIB,
        models: models.iter().map(|m| m.id.to_owned()).collect(),
        consuming: Vec::new(),
        waiting: state.waiting.iter().map(|(&m, &n)| (id(m), n)).collect(),
        current_jobs: Vec::new(),
        jobs_done: 0,
        jobs_failed: 0,
        resident_models: state
            .resident
            .iter()
            .map(|&(m, loaded_at_ms)| ResidentModel {
                model: id(m),
                vram_mib: models[m].vram_mib,
                in_use: usize::from(state.running == Some(m)),
                loaded_at_ms,
                load_ms: models[m].load_ms,
                jobs: 0,
            })
            .collect(),
        model_loads: 0,
        model_unloads: 0,
        peak_resident_mib: 0,
        metrics: state.metrics.clone(),
        amqp: Default::default(),
        started_ms: 0,
        heartbeat_ms: now_ms,
    }
}

/// The simulated dispatcher: its config and the history its rounds keep.
pub struct Rounds {
    config: Config,
    history: PlacementHistory,
}

impl Rounds {
    /// The dispatcher of a placement run of `models` on `workers` workers.
    pub fn new(models: &[SyntheticModel], workers: usize) -> Rounds {
        let body = system_config(Mode::Placement, models, workers, false, None);
        let config = Config::parse(&body, None, &ConfigOverrides::default())
            .expect("the mixed benchmark's config is valid");
        Rounds {
            config,
            history: PlacementHistory::default(),
        }
    }

    /// One round at `now_us` from the ready jobs per model and every
    /// worker's last record: each worker's queues and main model, by index.
    pub fn run(
        &mut self,
        models: &[SyntheticModel],
        ready: &[u64],
        records: &[WorkerRecord],
        now_us: u64,
    ) -> Vec<(BTreeSet<usize>, Option<usize>)> {
        let ready: BTreeMap<String, u64> = models
            .iter()
            .zip(ready)
            .map(|(model, &n)| (model.id.to_owned(), n))
            .collect();
        let round = placement_round(
            &self.config,
            HOST,
            now_us / 1000,
            &ready,
            records,
            &BTreeMap::new(),
            &mut self.history,
        );
        let index = |id: &str| models.iter().position(|m| m.id == id);
        let by_id: BTreeMap<&str, _> = round
            .assignments
            .iter()
            .map(|(worker, assignment)| (worker.as_str(), assignment))
            .collect();
        (0..records.len())
            .map(|w| match by_id.get(worker_id(w).as_str()) {
                Some(assignment) => (
                    assignment.models.iter().filter_map(|m| index(m)).collect(),
                    assignment.main.as_deref().and_then(index),
                ),
                None => (BTreeSet::new(), None),
            })
            .collect()
    }
}

impl Sim<'_> {
    /// A placement round (or the oracle's): its decision, applied to each
    /// worker after the drawn time a round and an assignment take.
    pub(super) fn round(&mut self) {
        self.last_round = self.now;
        let ready: Vec<u64> = self.queues.iter().map(|q| q.len() as u64).collect();
        let round = self.decisions.len();
        let per_worker = if self.oracle {
            self.replan(round)
        } else {
            self.rounds
                .run(self.models, &ready, &self.records, self.now)
        };
        self.decisions.push(per_worker);
        for w in 0..self.workers.len() {
            let delay = self.draw(ROUND_TAKES_US);
            self.at(self.now + delay, Event::Apply { worker: w, round });
        }
    }

    pub(super) fn apply(&mut self, w: usize, round: usize) {
        let (queues, main) = self.decisions[round][w].clone();
        if self.workers[w].consuming == queues && self.workers[w].main == main {
            return;
        }
        if let Some(log) = &mut self.log {
            let name = |m: &usize| self.models[*m].id;
            log.push(format!(
                "{:9.3} gpu{w:03} main {:?}, queues {:?}",
                self.now as f64 / 1e6,
                main.as_ref().map(name),
                queues.iter().map(name).collect::<Vec<_>>(),
            ));
        }
        let worker = &mut self.workers[w];
        let dropped: Vec<usize> = worker.consuming.difference(&queues).copied().collect();
        worker.consuming = queues;
        worker.main = main;
        for model in dropped {
            // Its held job (not one running or on its way) goes back.
            if let Some(&(job, Some(_))) = self.workers[w].unacked.get(&model) {
                self.workers[w].unacked.remove(&model);
                self.queues[model].push_front(job);
                self.pump(model);
            }
        }
        for model in 0..self.models.len() {
            self.pump(model);
        }
        self.changed(w);
        self.try_start(w);
    }
}
