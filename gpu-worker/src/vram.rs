//! The worker's side of measured VRAM (`gpuq_common::vram`): read the
//! process's GPU memory while models load and jobs run, keep this worker's
//! peak histograms per model, write them to Redis, and watch what every
//! worker learned.
//!
//! A job's peak is the process's highest reading while it ran (sampled every
//! `gpu.sample_ms`, plus one reading at its end) minus what the other loaded
//! models use at rest, so a model sharing the worker is not charged for
//! them. A model's resident size is the reading after its load minus the
//! reading right before it, after any eviction (taken by the pool).
//!
//! When the learned figure of a model this worker serves outgrows the
//! worker's budget, the worker restarts: at start it serves only the models
//! whose admitted VRAM fits ([`crate::worker::select_models`] over the
//! admitted registry), and placement, which reads the same figures, stops
//! sending it that model.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gpuq_common::config::{Config, VramSourceKind};
use gpuq_common::now_ms;
use gpuq_common::registry::ModelConfig;
use gpuq_common::vram::{admitted_mib, packed_mib, ModelVram};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gpu::VramSource;
use crate::pool::ModelPool;
use crate::store::Store;
use crate::worker::WorkerOptions;

#[cfg(all(test, feature = "torch"))]
mod gpu_check;
pub mod scripted;

/// Measures and records one worker's VRAM use.
pub struct VramMeter {
    source: Box<dyn VramSource>,
    sample: Duration,
    worker_id: String,
    store: Store,
    /// This worker's measurements, by model (its own Redis fields).
    own: Mutex<BTreeMap<String, ModelVram>>,
    /// Each model's declared `vram_mib` (the served copies carry the packed figure).
    declared: BTreeMap<String, u64>,
}

impl VramMeter {
    /// A meter on the configured source; `None` where it cannot be read
    /// (no NVML): nothing is measured, declarations stay in force.
    pub async fn open(
        config: &Config,
        worker_id: &str,
        cuda_visible_devices: Option<&str>,
        store: Store,
    ) -> Option<Arc<VramMeter>> {
        let source: Box<dyn VramSource> = match config.gpu.vram_source {
            VramSourceKind::Scripted => Box::new(scripted::ScriptedVram),
            VramSourceKind::Nvml => Box::new(crate::gpu::NvmlVram::open(
                cuda_visible_devices,
                std::process::id(),
            )?),
        };
        // Continue this worker's histograms across restarts.
        let ids: Vec<String> = config.registry().ids();
        let own = store.own_vram(worker_id, &ids).await.unwrap_or_default();
        Some(Arc::new(VramMeter {
            source,
            sample: Duration::from_millis(config.gpu.sample_ms),
            worker_id: worker_id.to_owned(),
            store,
            own: Mutex::new(own),
            declared: config
                .registry()
                .models()
                .iter()
                .map(|m| (m.id.clone(), m.vram_mib))
                .collect(),
        }))
    }

    pub fn used_mib(&self) -> Option<u64> {
        self.source.used_mib()
    }

    /// Runs `work`, reading the process's memory every `gpu.sample_ms`;
    /// returns its output and the highest reading (including one at the end).
    pub async fn measure<F: Future>(&self, work: F) -> (F::Output, Option<u64>) {
        sample_peak(self.source.as_ref(), self.sample, work).await
    }

    /// Records a model's resident size, measured around its load, and the
    /// highest it went while loading.
    pub async fn record_load(&self, model: &ModelConfig, resident: u64, load_peak: Option<u64>) {
        let json = {
            let mut own = self.own.lock();
            let vram = self.entry(&mut own, model);
            vram.resident_mib = Some(resident);
            vram.load_peak_mib = load_peak.or(vram.load_peak_mib);
            vram.updated_ms = now_ms();
            serde_json::to_string(vram)
        };
        self.write(model, json).await;
    }

    /// Records a job's peak (the process's, less the resident sizes of the
    /// other models `loaded` beside it while it ran) in its size class; an
    /// `out_of_memory` job counts as needing more than `oom_above_mib`.
    pub async fn record_job(
        &self,
        (model, class): (&ModelConfig, &str),
        process_peak_mib: u64,
        oom_above_mib: Option<u64>,
        loaded: &[String],
    ) {
        let json = {
            let mut own = self.own.lock();
            // Only models still loaded: an evicted one's memory is freed.
            let others: u64 = own
                .iter()
                .filter(|(id, _)| **id != model.id && loaded.contains(id))
                .filter_map(|(_, v)| v.resident_mib)
                .sum();
            let peak = process_peak_mib.saturating_sub(others);
            let vram = self.entry(&mut own, model);
            match oom_above_mib {
                Some(above) => vram.observe_out_of_memory(class, peak.max(above + 1), now_ms()),
                None => vram.observe(class, peak, now_ms()),
            }
            serde_json::to_string(vram)
        };
        self.write(model, json).await;
    }

    fn entry<'a>(
        &self,
        own: &'a mut BTreeMap<String, ModelVram>,
        model: &ModelConfig,
    ) -> &'a mut ModelVram {
        let declared = self
            .declared
            .get(&model.id)
            .copied()
            .unwrap_or(model.vram_mib);
        let vram = own
            .entry(model.id.clone())
            .or_insert_with(|| ModelVram::new(&model.id, &self.worker_id, declared));
        vram.declared_mib = declared;
        vram
    }

    async fn write(&self, model: &ModelConfig, json: serde_json::Result<String>) {
        let field = format!("{}/{}", model.id, self.worker_id);
        match json {
            Ok(json) => {
                if let Err(error) = self.store.write_vram(&field, &json).await {
                    tracing::warn!(%error, model = %model.id, "measured vram not written");
                }
            }
            Err(error) => tracing::warn!(%error, "measured vram not encoded"),
        }
    }
}

/// Runs `work`, reading `source` every `sample`; returns its output and
/// the highest reading (including one at the end).
pub async fn sample_peak<F: Future>(
    source: &dyn VramSource,
    sample: Duration,
    work: F,
) -> (F::Output, Option<u64>) {
    let mut peak = source.used_mib();
    let mut ticker = tokio::time::interval(sample);
    tokio::pin!(work);
    let output = loop {
        tokio::select! {
            output = &mut work => break output,
            _ = ticker.tick() => peak = peak.max(source.used_mib()),
        }
    };
    (output, peak.max(source.used_mib()))
}

/// The latest read of what every worker learned, by model (merged).
#[derive(Default)]
pub struct LearnedVram(Mutex<BTreeMap<String, ModelVram>>);

impl LearnedVram {
    /// `f` of a model's merged measurements (`None` if no worker measured
    /// it), read in place: the job path asks twice per job.
    pub fn with<R>(&self, model_id: &str, f: impl FnOnce(Option<&ModelVram>) -> R) -> R {
        f(self.0.lock().get(model_id))
    }

    pub fn set(&self, learned: BTreeMap<String, ModelVram>) {
        *self.0.lock() = learned;
    }
}

/// Opens the meter on the configured source (the pool reads the process's
/// usage through it; synthetic models' scripted allocations fail past the
/// worker's budget, as CUDA's would) and starts [`watch_learned`] on
/// `background`.
pub async fn start(
    config: &Arc<Config>,
    options: &WorkerOptions,
    store: &Store,
    (models, pool): (
        &std::collections::HashMap<String, ModelConfig>,
        &Arc<ModelPool>,
    ),
    (background, restart, stop): (&TaskTracker, &CancellationToken, &CancellationToken),
) -> (Option<Arc<VramMeter>>, Arc<LearnedVram>) {
    let meter = VramMeter::open(
        config,
        &options.worker_id,
        options.cuda_visible_devices.as_deref(),
        store.clone(),
    )
    .await;
    if let Some(meter) = &meter {
        let meter = Arc::clone(meter);
        let sample = meter.sample;
        pool.set_usage_probe(Arc::new(move || meter.used_mib()), sample);
    }
    if config.gpu.vram_source == VramSourceKind::Scripted {
        scripted::set_capacity(options.vram_budget_mib.unwrap_or(0));
    }
    let learned = Arc::new(LearnedVram::default());
    // What it may serve by declaration; those it does not serve now were
    // measured past its budget, and come back when they fit again.
    let candidates = crate::worker::select_models(
        config.registry(),
        options.vram_budget_mib,
        options.models.as_deref(),
    )
    .map(|(chosen, _)| chosen)
    .unwrap_or_default();
    let unserved = candidates
        .into_iter()
        .filter(|m| !models.contains_key(&m.id))
        .collect();
    background.spawn(watch_learned(
        Arc::clone(config),
        store.clone(),
        (models.values().cloned().collect(), unserved),
        (Arc::clone(pool), Arc::clone(&learned)),
        restart.clone(),
        stop.clone(),
    ));
    (meter, learned)
}

/// Every `interval`, reads what all workers learned (kept in `learned` for
/// the job path's give-back): gives the residency
/// pool each served model's measured need (`packed_mib`, which may be below
/// the declaration: two models whose measured peaks fit together then stay
/// loaded side by side), logs once per model a measured p99 over 120 % of
/// its declaration, and restarts the worker (`restart`) when a served
/// model's admitted VRAM no longer fits the pool's budget, or an `unserved`
/// one (refused at start for its measurement) fits again.
pub async fn watch_learned(
    config: Arc<Config>,
    store: Store,
    (served, unserved): (Vec<ModelConfig>, Vec<ModelConfig>),
    (pool, latest): (Arc<ModelPool>, Arc<LearnedVram>),
    restart: CancellationToken,
    stop: CancellationToken,
) {
    let budget_mib = pool.budget_mib();
    let interval = Duration::from_millis(config.worker.heartbeat_interval_ms.max(100));
    let mut warned = BTreeSet::new();
    let ids: Vec<String> = served
        .iter()
        .chain(&unserved)
        .map(|m| m.id.clone())
        .collect();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let Ok(learned) = store.learned_vram(&ids).await else {
            continue;
        };
        latest.set(learned.clone());
        pool.set_packed(
            served
                .iter()
                .filter_map(|model| {
                    let declared = config.registry().model(&model.id)?.vram_mib;
                    let packed = packed_mib(declared, learned.get(&model.id), &config.gpu);
                    Some((model.id.clone(), packed))
                })
                .collect(),
        );
        for model in &served {
            let Some(vram) = learned.get(&model.id) else {
                continue;
            };
            let declared = config.registry().model(&model.id).map_or(0, |m| m.vram_mib);
            if vram.over_declared(&config.gpu) && warned.insert(model.id.clone()) {
                tracing::warn!(model = %model.id, declared_mib = declared, p99_mib = vram.peaks.p99_mib,
                    "measured VRAM p99 is over 120 % of the declaration; admission uses the measurement");
            }
            let admitted = admitted_mib(declared, Some(vram), &config.gpu);
            if budget_mib.is_some_and(|budget| admitted > budget) {
                tracing::warn!(model = %model.id, admitted_mib = admitted, budget_mib = ?budget_mib,
                    "measured VRAM no longer fits this worker; restarting without the model");
                restart.cancel();
                return;
            }
        }
        for model in &unserved {
            let admitted = admitted_mib(model.vram_mib, learned.get(&model.id), &config.gpu);
            if budget_mib.is_none_or(|budget| admitted <= budget) {
                tracing::info!(model = %model.id, admitted_mib = admitted, budget_mib = ?budget_mib,
                    "a model measured past this worker's budget fits again; restarting to serve it");
                restart.cancel();
                return;
            }
        }
    }
}
