//! The simulated workers and broker: deliveries with a prefetch of one per
//! queue, the worker's pick among held jobs, loads that unload the least
//! recently used model, and the record a worker writes (see `super`).

use std::collections::{BTreeMap, VecDeque};

use gpuq_common::record::WorkerRecord;

use super::records::{worker_record, RecordParts};
use super::{
    Busy, Event, Sim, AFFINITY_GRACE_US, DELIVERY_US, DRY_CONFIRM_US, HEARTBEAT_MIN_GAP_US,
    JOB_OVERHEAD_US, LOAD_OVERHEAD_US,
};
use crate::bench::mixed::{GPU_MEMORY_MIB, MAX_MODELS_PER_WORKER};

impl Sim<'_> {
    /// Sends queued jobs of `model` to its consumers with credit, in turn.
    pub(super) fn pump(&mut self, model: usize) {
        let n = self.workers.len();
        while !self.queues[model].is_empty() {
            let start = self.rotation[model];
            let Some(w) = (0..n).map(|i| (start + i) % n).find(|&w| {
                let worker = &self.workers[w];
                worker.consuming.contains(&model) && !worker.unacked.contains_key(&model)
            }) else {
                return;
            };
            self.rotation[model] = (w + 1) % n;
            let job = self.queues[model].pop_front().expect("not empty");
            self.workers[w].unacked.insert(model, (job, None));
            let delay = self.draw(DELIVERY_US);
            self.at(self.now + delay, Event::Deliver { worker: w, job });
        }
    }

    pub(super) fn deliver(&mut self, w: usize, job: usize) {
        let model = self.trace[job].model;
        if !self.workers[w].consuming.contains(&model) {
            // Sent before its consumer was cancelled: back to the queue.
            self.workers[w].unacked.remove(&model);
            self.queues[model].push_front(job);
            self.pump(model);
            return;
        }
        self.workers[w].unacked.insert(model, (job, Some(self.now)));
        self.changed(w);
        self.try_start(w);
    }

    /// A free worker picks a held job as `gpu_worker::placement::choose` does.
    pub(super) fn try_start(&mut self, w: usize) {
        let worker = &self.workers[w];
        if worker.busy.is_some() {
            return;
        }
        let mut held: Vec<(u64, usize, usize)> = worker
            .unacked
            .iter()
            .filter_map(|(&model, &(job, at))| Some((at?, model, job)))
            .collect();
        held.sort_unstable();
        let loaded = |m: usize| worker.resident.iter().any(|r| r.0 == m);
        if !self.placement {
            let Some(&(_, model, job)) = held.first() else {
                return;
            };
            return self.start(w, model, job);
        }
        let pick = held
            .iter()
            .find(|(at, _, _)| self.now - at >= super::starve_after_us())
            .or_else(|| held.iter().find(|(_, m, _)| Some(*m) == worker.main))
            .or_else(|| held.iter().find(|(_, m, _)| loaded(*m)));
        let pick = match pick {
            Some(pick) => *pick,
            None => {
                let Some(oldest) = held.first() else { return };
                let deadline = worker.free_since + AFFINITY_GRACE_US;
                let worth_waiting =
                    worker.main.is_some() || worker.consuming.iter().any(|&m| loaded(m));
                if worth_waiting && self.now < deadline {
                    self.at(deadline, Event::Wake(w));
                    return;
                }
                *oldest
            }
        };
        let (_, model, job) = pick;
        self.start(w, model, job);
    }

    pub(super) fn start(&mut self, w: usize, model: usize, job: usize) {
        self.workers[w].unacked.insert(model, (job, None));
        let loaded = self.workers[w].resident.iter().any(|r| r.0 == model);
        if loaded {
            let now = self.now;
            if let Some(r) = self.workers[w].resident.iter_mut().find(|r| r.0 == model) {
                r.2 = now;
            }
            self.workers[w].busy = Some(Busy {
                job,
                loading: false,
                ends_us: self.now + self.trace[job].duration_ms * 1000,
            });
            let run = self.trace[job].duration_ms * 1000 + self.draw(JOB_OVERHEAD_US);
            self.at(self.now + run, Event::RunDone(w));
        } else {
            self.unload_for(w, model);
            self.loads += 1;
            if let Some(log) = &mut self.log {
                let resident: Vec<&str> = self.workers[w]
                    .resident
                    .iter()
                    .map(|r| self.models[r.0].id)
                    .collect();
                log.push(format!(
                    "{:9.3} gpu{w:03} load {} (loaded: {resident:?}; queued: {:?})",
                    self.now as f64 / 1e6,
                    self.models[model].id,
                    self.queues.iter().map(VecDeque::len).collect::<Vec<_>>(),
                ));
            }
            let ends_us =
                self.now + (self.models[model].load_ms + self.trace[job].duration_ms) * 1000;
            self.workers[w].busy = Some(Busy {
                job,
                loading: true,
                ends_us,
            });
            let load = self.models[model].load_ms * 1000 + self.draw(LOAD_OVERHEAD_US);
            self.at(self.now + load, Event::LoadDone(w));
        }
        self.workers[w].dry_announced = false;
        self.changed(w);
    }

    /// Unloads least recently used models until `model` fits beside the rest.
    pub(super) fn unload_for(&mut self, w: usize, model: usize) {
        let models = self.models;
        let worker = &mut self.workers[w];
        let resident = &mut worker.resident;
        resident.sort_by_key(|r| r.2);
        let vram =
            |held: &[(usize, u64, u64)]| -> u64 { held.iter().map(|r| models[r.0].vram_mib).sum() };
        while !resident.is_empty()
            && (resident.len() >= MAX_MODELS_PER_WORKER
                || vram(resident) + models[model].vram_mib > GPU_MEMORY_MIB)
        {
            resident.remove(0);
        }
    }

    pub(super) fn run_done(&mut self, w: usize) {
        let busy = self.workers[w].busy.take().expect("a job running");
        self.ran[w].push(busy.job);
        let model = self.trace[busy.job].model;
        self.workers[w].unacked.remove(&model);
        // The worker times the run call, the job's sleep; the drawn
        // overhead is its bookkeeping around it.
        let id = self.models[model].id.to_owned();
        let metrics = self.workers[w].metrics.models.entry(id).or_default();
        *metrics.jobs.entry("completed".to_owned()).or_default() += 1;
        metrics
            .run
            .observe(self.trace[busy.job].duration_ms as f64 / 1000.0);
        self.workers[w].free_since = self.now;
        self.done += 1;
        self.makespan = self.makespan.max(self.now);
        self.changed(w);
        self.pump(model);
        self.try_start(w);
        let worker = &self.workers[w];
        if worker.busy.is_none() && worker.unacked.is_empty() && !worker.dry_announced {
            self.workers[w].dry_announced = true;
            self.at(self.now + DRY_CONFIRM_US, Event::DryCheck(w));
        }
    }

    /// The worker's record is rewritten at once, or at most every 100 ms.
    pub(super) fn changed(&mut self, w: usize) {
        let worker = &self.workers[w];
        if worker.publish_pending {
            return;
        }
        match worker.published_at {
            Some(at) if self.now < at + HEARTBEAT_MIN_GAP_US => {
                self.workers[w].publish_pending = true;
                self.at(at + HEARTBEAT_MIN_GAP_US, Event::Publish(w));
            }
            _ => self.publish(w),
        }
    }

    pub(super) fn publish(&mut self, w: usize) {
        self.records[w] = self.record(w);
        self.workers[w].published_at = Some(self.now);
    }

    /// Worker `w`'s record as it would write it now.
    pub(super) fn record(&self, w: usize) -> WorkerRecord {
        let worker = &self.workers[w];
        let running = worker
            .busy
            .filter(|b| !b.loading)
            .map(|b| self.trace[b.job].model);
        let mut waiting = BTreeMap::new();
        for (&model, &(_, at)) in &worker.unacked {
            if at.is_some() {
                *waiting.entry(model).or_insert(0) += 1;
            }
        }
        let resident: Vec<(usize, u64)> = worker.resident.iter().map(|r| (r.0, r.1)).collect();
        let state = RecordParts {
            resident: &resident,
            running,
            waiting: &waiting,
            metrics: &worker.metrics,
        };
        worker_record(w, self.models, state, self.now / 1000)
    }
}
