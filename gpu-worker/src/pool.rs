//! Model residency: which models a worker keeps loaded, within its VRAM budget.
//!
//! Models load on first use. Up to `max_models_per_worker` stay resident; when a
//! model does not fit (by count or by declared VRAM), the least recently used
//! idle models are unloaded first. The sum of declared sizes never exceeds the
//! budget: a load that cannot make room waits for a model in use to go idle, and
//! a model bigger than the whole budget is refused. Where a free-memory probe is
//! given (NVML), a load is also refused when the GPU lacks the room.
//!
//! The pool lock is held while a model loads, so two jobs never load the same
//! model twice and the accounting is never optimistic.

use std::sync::Arc;

use parking_lot::Mutex as SyncMutex;
use std::time::Instant;
use tokio_util::task::TaskTracker;

use futures_util::future::BoxFuture;
use gpuq_common::record::ResidentModel;
use gpuq_common::registry::ModelConfig;
use gpuq_common::{now_ms, ErrorCode};
use serde::Serialize;
use tokio::sync::{Mutex, Notify};

use crate::runtime::{LoadError, Runtime};

/// Loads a model; the real one is [`crate::runtime::load`], tests pass fakes.
pub type Loader = Arc<
    dyn Fn(ModelConfig) -> BoxFuture<'static, Result<Arc<dyn Runtime>, LoadError>> + Send + Sync,
>;
/// Free GPU memory in MiB, when it can be read.
pub type FreeMemoryProbe = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

struct Resident {
    model_id: String,
    vram_mib: u64,
    runtime: Arc<dyn Runtime>,
    in_use: usize,
    last_used: Instant,
    loaded_at_ms: u64,
    load_ms: u64,
    jobs: u64,
}

/// Counters of the pool's life, for the worker's record.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PoolStats {
    pub loads: u64,
    pub unloads: u64,
    pub load_failures: u64,
    /// Largest sum of declared VRAM of resident models ever reached, MiB.
    pub peak_resident_mib: u64,
}

pub struct ModelPool {
    budget_mib: Option<u64>,
    max_models: usize,
    loader: Loader,
    free_memory: Option<FreeMemoryProbe>,
    residents: Mutex<Vec<Resident>>,
    idle: Notify,
    /// Copy of the residents for readers that must not wait on a load.
    snapshot: SyncMutex<(Vec<ResidentModel>, PoolStats)>,
    /// Lease releases (a `Drop` cannot await the pool lock); `unload_all`
    /// waits for them.
    releases: TaskTracker,
    /// Measured needs, MiB, by model (`crate::vram`), over the figure a
    /// model comes with; applied to loads from then on.
    packed: SyncMutex<std::collections::HashMap<String, u64>>,
    /// The process's GPU memory, MiB, read around each load and every
    /// interval during it (`crate::vram`).
    usage: SyncMutex<Option<(FreeMemoryProbe, std::time::Duration)>>,
}

/// A model in use by one job; returns it to the pool when dropped.
pub struct Lease {
    pool: Arc<ModelPool>,
    model_id: String,
    pub runtime: Arc<dyn Runtime>,
    /// How long loading took, when this acquire loaded the model.
    pub loaded_in: Option<std::time::Duration>,
    /// What the load added to the process's GPU memory, MiB (read right
    /// before and after the loader, after any eviction), where measured.
    pub resident_mib: Option<u64>,
    /// The highest the same reading went while it loaded.
    pub load_peak_mib: Option<u64>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let pool = Arc::clone(&self.pool);
        let model_id = std::mem::take(&mut self.model_id);
        // Release without blocking the dropping task on the pool lock.
        let releases = self.pool.releases.clone();
        releases.spawn(async move {
            let mut residents = pool.residents.lock().await;
            if let Some(resident) = residents.iter_mut().find(|r| r.model_id == model_id) {
                resident.in_use = resident.in_use.saturating_sub(1);
                resident.last_used = Instant::now();
            }
            pool.publish(&residents, |_| {});
            drop(residents);
            pool.idle.notify_waiters();
        });
    }
}

impl ModelPool {
    /// The worker's VRAM budget, MiB (`None`: no limit).
    pub fn budget_mib(&self) -> Option<u64> {
        self.budget_mib
    }

    pub fn new(
        budget_mib: Option<u64>,
        max_models: usize,
        loader: Loader,
        free_memory: Option<FreeMemoryProbe>,
    ) -> Arc<ModelPool> {
        Arc::new(ModelPool {
            budget_mib,
            max_models: max_models.max(1),
            loader,
            free_memory,
            residents: Mutex::new(Vec::new()),
            idle: Notify::new(),
            snapshot: SyncMutex::new((Vec::new(), PoolStats::default())),
            releases: TaskTracker::new(),
            packed: SyncMutex::new(std::collections::HashMap::new()),
            usage: SyncMutex::new(None),
        })
    }

    /// Reads the process's GPU memory with `probe` around each load and
    /// every `sample` while it loads.
    pub fn set_usage_probe(&self, probe: FreeMemoryProbe, sample: std::time::Duration) {
        *self.usage.lock() = Some((probe, sample));
    }

    fn usage_mib(&self) -> Option<u64> {
        let probe = self.usage.lock().clone();
        probe.and_then(|(read, _)| read())
    }

    /// Runs the loader, reading the process's memory every sample; returns
    /// its result and the highest reading (with one at the end).
    async fn load_measured(
        &self,
        model: &ModelConfig,
    ) -> (Result<Arc<dyn Runtime>, LoadError>, Option<u64>) {
        let probe = self.usage.lock().clone();
        let loading = (self.loader)(model.clone());
        let Some((read, sample)) = probe else {
            return (loading.await, None);
        };
        tokio::pin!(loading);
        let mut peak = read();
        let mut ticker = tokio::time::interval(sample);
        let loaded = loop {
            tokio::select! {
                loaded = &mut loading => break loaded,
                _ = ticker.tick() => peak = peak.max(read()),
            }
        };
        (loaded, peak.max(read()))
    }

    /// Sets the models' measured needs (what all workers learned).
    pub fn set_packed(&self, figures: std::collections::HashMap<String, u64>) {
        *self.packed.lock() = figures;
    }

    /// What a model is accounted with: its measured need where known.
    fn need(&self, model: &ModelConfig) -> u64 {
        self.packed
            .lock()
            .get(&model.id)
            .copied()
            .unwrap_or(model.vram_mib)
    }

    /// Resident models and counters, without waiting for a load in progress.
    pub fn snapshot(&self) -> (Vec<ResidentModel>, PoolStats) {
        self.snapshot.lock().clone()
    }

    fn publish(&self, residents: &[Resident], change: impl FnOnce(&mut PoolStats)) {
        let mut snapshot = self.snapshot.lock();
        change(&mut snapshot.1);
        let resident_mib: u64 = residents.iter().map(|r| r.vram_mib).sum();
        snapshot.1.peak_resident_mib = snapshot.1.peak_resident_mib.max(resident_mib);
        snapshot.0 = residents
            .iter()
            .map(|r| ResidentModel {
                model: r.model_id.clone(),
                vram_mib: r.vram_mib,
                in_use: r.in_use,
                loaded_at_ms: r.loaded_at_ms,
                load_ms: r.load_ms,
                jobs: r.jobs,
            })
            .collect();
    }

    fn fits(&self, residents: &[Resident], vram_mib: u64) -> bool {
        let used: u64 = residents.iter().map(|r| r.vram_mib).sum();
        residents.len() < self.max_models
            && self
                .budget_mib
                .is_none_or(|budget| used + vram_mib <= budget)
    }

    /// Whether `model_id`'s job, needing `room` MiB while it runs, fits
    /// beside the other resident models.
    fn fits_beside(&self, residents: &[Resident], model_id: &str, room: u64) -> bool {
        let others: u64 = residents
            .iter()
            .filter(|r| r.model_id != model_id)
            .map(|r| r.vram_mib)
            .sum();
        let own = residents
            .iter()
            .find(|r| r.model_id == model_id)
            .map_or(0, |r| r.vram_mib);
        self.budget_mib
            .is_none_or(|budget| others + own.max(room) <= budget)
    }

    /// Unloads the least recently used idle model other than `keep`;
    /// `false` when every other model is running a job.
    async fn evict_one_idle(
        &self,
        residents: &mut Vec<Resident>,
        keep: &str,
        for_model: &str,
    ) -> bool {
        let Some(victim) = residents
            .iter()
            .enumerate()
            .filter(|(_, r)| r.in_use == 0 && r.model_id != keep)
            .min_by_key(|(_, r)| r.last_used)
            .map(|(i, _)| i)
        else {
            return false;
        };
        let evicted = residents.remove(victim);
        tracing::info!(model = %evicted.model_id, for_model, "unloading least recently used model");
        evicted.runtime.unload().await;
        self.publish(residents, |stats| stats.unloads += 1);
        true
    }

    /// The model, loaded if needed, reserved for one job. `job_mib` is what
    /// the job's input size class was measured to need (`None`: unknown);
    /// when it is more than the model is accounted with, other idle models
    /// are unloaded until it fits beside them (capped at the budget: a job
    /// bigger than the whole budget is given back before it gets here).
    pub async fn acquire(
        self: &Arc<Self>,
        model: &ModelConfig,
        job_mib: Option<u64>,
    ) -> Result<Lease, LoadError> {
        let need = self.need(model);
        if let Some(budget) = self.budget_mib.filter(|b| need > *b) {
            return Err(LoadError::new(
                &model.id,
                format!("needs {need} MiB, more than this worker's budget of {budget} MiB"),
            ));
        }
        let room = need
            .max(job_mib.unwrap_or(0))
            .min(self.budget_mib.unwrap_or(u64::MAX));
        loop {
            let idle = self.idle.notified();
            let mut residents = self.residents.lock().await;
            if residents.iter().any(|r| r.model_id == model.id) {
                while !self.fits_beside(&residents, &model.id, room)
                    && self
                        .evict_one_idle(&mut residents, &model.id, &model.id)
                        .await
                {}
                if !self.fits_beside(&residents, &model.id, room) {
                    // The others are running jobs: wait for one to finish.
                    drop(residents);
                    idle.await;
                    continue;
                }
                let resident = residents
                    .iter_mut()
                    .find(|r| r.model_id == model.id)
                    .expect("resident");
                resident.in_use += 1;
                resident.jobs += 1;
                resident.last_used = Instant::now();
                let runtime = Arc::clone(&resident.runtime);
                self.publish(&residents, |_| {});
                return Ok(self.lease(&model.id, runtime, None));
            }
            while !self.fits(&residents, room)
                && self
                    .evict_one_idle(&mut residents, &model.id, &model.id)
                    .await
            {}
            if !self.fits(&residents, room) {
                // Every resident model is running a job: wait for one to finish.
                drop(residents);
                idle.await;
                continue;
            }
            self.check_free_memory(model, need)?;
            let before = self.usage_mib();
            let started = Instant::now();
            let (loaded, load_peak) = self.load_measured(model).await;
            let runtime = match loaded {
                Ok(runtime) => runtime,
                Err(error) => {
                    self.publish(&residents, |stats| stats.load_failures += 1);
                    return Err(error);
                }
            };
            let load_ms = started.elapsed().as_millis() as u64;
            tracing::info!(model = %model.id, load_ms, "model loaded");
            residents.push(Resident {
                model_id: model.id.clone(),
                vram_mib: need,
                runtime: Arc::clone(&runtime),
                in_use: 1,
                last_used: Instant::now(),
                loaded_at_ms: now_ms(),
                load_ms,
                jobs: 1,
            });
            debug_assert!(self.budget_mib.is_none_or(|b| residents
                .iter()
                .map(|r| r.vram_mib)
                .sum::<u64>()
                <= b));
            self.publish(&residents, |stats| stats.loads += 1);
            let mut lease = self.lease(&model.id, runtime, Some(started.elapsed()));
            lease.resident_mib = before
                .zip(self.usage_mib())
                .map(|(before, after)| after.saturating_sub(before));
            lease.load_peak_mib = before
                .zip(load_peak)
                .map(|(before, peak)| peak.saturating_sub(before));
            return Ok(lease);
        }
    }

    fn check_free_memory(&self, model: &ModelConfig, need: u64) -> Result<(), LoadError> {
        let Some(free_mib) = self.free_memory.as_ref().and_then(|probe| probe()) else {
            return Ok(());
        };
        if free_mib < need {
            return Err(LoadError {
                code: ErrorCode::OutOfMemory,
                ..LoadError::new(
                    &model.id,
                    format!("the GPU has {free_mib} MiB free, the model needs {need} MiB"),
                )
            });
        }
        Ok(())
    }

    fn lease(
        self: &Arc<Self>,
        model_id: &str,
        runtime: Arc<dyn Runtime>,
        loaded_in: Option<std::time::Duration>,
    ) -> Lease {
        Lease {
            pool: Arc::clone(self),
            model_id: model_id.to_owned(),
            runtime,
            loaded_in,
            resident_mib: None,
            load_peak_mib: None,
        }
    }

    /// Unloads a model that broke (crashed child, CUDA out of memory).
    pub async fn evict(&self, model_id: &str) {
        let mut residents = self.residents.lock().await;
        if let Some(i) = residents.iter().position(|r| r.model_id == model_id) {
            let broken = residents.remove(i);
            broken.runtime.unload().await;
            self.publish(&residents, |stats| stats.unloads += 1);
        }
        drop(residents);
        self.idle.notify_waiters();
    }

    /// Unloads everything (worker shutdown).
    pub async fn unload_all(&self) {
        self.releases.close();
        self.releases.wait().await;
        let mut residents = self.residents.lock().await;
        for resident in residents.drain(..) {
            resident.runtime.unload().await;
        }
        self.publish(&residents, |_| {});
    }
}

#[cfg(test)]
mod tests;
