//! The decision's data: what it knows of each model and worker (a
//! [`Snapshot`]), its knobs ([`Policy`]) and what it decides ([`Decision`]).
//! Plain values, built by `inputs` from the records and read by the rules.

use std::collections::BTreeMap;

/// What the placement knows of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelState {
    pub id: String,
    /// What it is admitted with (`gpuq_common::vram::admitted_mib`): a
    /// worker whose budget is smaller cannot serve it.
    pub vram_mib: u64,
    /// What it takes beside another model (`gpuq_common::vram::packed_mib`):
    /// the measured need, which may be below `vram_mib`.
    pub packed_mib: u64,
    /// Expected load time: measured where it has been, else an estimate.
    pub load_ms: u64,
    /// Expected run time of one job.
    pub run_ms: u64,
    /// Jobs waiting: ready in the queue, plus delivered to a worker but not started.
    pub waiting: u64,
    /// Jobs running now.
    pub running: u64,
    /// Recent arrivals, jobs per second.
    pub arrivals_per_s: f64,
    /// Since when this model has had waiting jobs and none running.
    pub unserved_since_ms: Option<u64>,
    pub min_replicas: u32,
    /// 0 means no limit.
    pub max_replicas: u32,
}

/// What the placement knows of one worker.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerState {
    pub id: String,
    pub host: String,
    /// VRAM budget, MiB; `None` means no limit.
    pub budget_mib: Option<u64>,
    /// Models it may keep loaded at once.
    pub max_models: usize,
    /// Models its slot may serve.
    pub eligible: Vec<String>,
    /// Loaded models, with when each was loaded (ms since the epoch).
    pub resident: Vec<(String, u64)>,
    /// Models with a job running here now.
    pub running: Vec<String>,
    /// Models pinned to this worker.
    pub pinned: Vec<String>,
    /// Its main model in the last decision, and since when it has had it.
    pub main: Option<(String, u64)>,
    /// Queues it was assigned in the last decision.
    pub consuming: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub min_residency_ms: u64,
    pub max_queue_wait_ms: u64,
    /// How far ahead arrivals count as work, milliseconds.
    pub lookahead_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub now_ms: u64,
    pub models: Vec<ModelState>,
    pub workers: Vec<WorkerState>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// Queues each worker consumes (model ids, sorted), by worker id.
    pub assignments: BTreeMap<String, Vec<String>>,
    /// Each worker's main model, where it has one.
    pub main: BTreeMap<String, String>,
    /// Models with work that no worker can serve.
    pub unservable: Vec<String>,
}

impl Decision {
    /// Workers whose main model is `model`.
    pub fn replicas(&self, model: &str) -> usize {
        self.main.values().filter(|m| *m == model).count()
    }
}
