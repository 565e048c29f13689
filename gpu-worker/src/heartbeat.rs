//! The worker's heartbeat: its Redis record (state, models loaded and
//! consumed, jobs running and held, counters), written every
//! `worker.heartbeat_interval_ms` and whenever its state changes, so the
//! dispatcher sees a live worker and placement sees what it holds. An idle
//! worker also announces itself, so placement can decide at once.

use std::sync::Arc;
use std::time::Duration;

use gpuq_common::config::Config;
use gpuq_common::now_ms;
use gpuq_common::record::WorkerRecord;
use tokio_util::sync::CancellationToken;

use crate::pool::ModelPool;
use crate::stats::WorkerStats;
use crate::store::Store;
use crate::worker::WorkerOptions;

/// How long a worker must stay without jobs before it tells placement.
const DRY_CONFIRM: Duration = Duration::from_millis(50);

/// Shortest gap between two heartbeat writes triggered by state changes.
const HEARTBEAT_MIN_GAP: Duration = Duration::from_millis(100);

/// Writes the worker's record every heartbeat interval, and at once (at most
/// every [`HEARTBEAT_MIN_GAP`]) when its state changes, until `stopping`.
pub async fn run(
    store: Store,
    config: Arc<Config>,
    options: WorkerOptions,
    models: Vec<String>,
    stats: Arc<WorkerStats>,
    pool: Arc<ModelPool>,
    stopping: CancellationToken,
) {
    let started_ms = now_ms();
    let interval = Duration::from_millis(config.worker.heartbeat_interval_ms);
    let ttl = Duration::from_millis(config.worker.heartbeat_ttl_ms);
    let mut ticker = tokio::time::interval(interval);
    let mut announced_dry = false;
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = ticker.tick() => {}
            _ = stats.changed.notified() => {}
        }
        let current_jobs = stats.running_jobs();
        let (residents, pool_stats) = pool.snapshot();
        let (consuming, waiting) = stats.queues();
        let record = WorkerRecord {
            worker_id: options.worker_id.clone(),
            host: options.host_id.clone(),
            gpu: options.gpu.clone(),
            pid: std::process::id(),
            state: match (stats.is_ready(), current_jobs.is_empty()) {
                (false, _) => "starting",
                (true, true) => "idle",
                (true, false) => "busy",
            }
            .to_owned(),
            vram_budget_mib: options.vram_budget_mib.unwrap_or(0),
            models: models.clone(),
            consuming,
            waiting,
            current_jobs,
            jobs_done: stats.jobs_done(),
            jobs_failed: stats.jobs_failed(),
            resident_models: residents,
            model_loads: pool_stats.loads,
            model_unloads: pool_stats.unloads,
            peak_resident_mib: pool_stats.peak_resident_mib,
            metrics: stats.metrics(),
            amqp: stats.amqp(),
            started_ms,
            heartbeat_ms: now_ms(),
        };
        if let Err(error) = store.heartbeat(&record, ttl).await {
            tracing::warn!(%error, "heartbeat not written");
        }
        let dry = record.state == "idle" && record.waiting.is_empty();
        if config.placement.enabled && dry && !announced_dry {
            // Tell placement this worker ran out of jobs, unless the next one
            // was only a broker round trip away.
            tokio::select! {
                _ = stopping.cancelled() => return,
                _ = tokio::time::sleep(DRY_CONFIRM) => {}
            }
            if stats.running_jobs().is_empty() && stats.queues().1.is_empty() {
                if let Err(error) = store.announce_idle(&options.worker_id).await {
                    tracing::debug!(%error, "idle announcement not sent");
                }
            }
        }
        announced_dry = dry;
        // State changes are published at once, but at most this often, so a busy
        // worker does not turn its heartbeat into per-job writes.
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT_MIN_GAP) => {}
        }
    }
}
