//! The run step: the model lease from the pool, the artifact references
//! resolved, the model run under its timeout and the job's cancel signal
//! (listened to since the claim: a job cancelled while it waits for its
//! slot or while its model loads is not run), and
//! the result turned into an outcome (outputs offloaded to the artifact store
//! and owned by the submitter). A broken model is evicted; a thread that
//! cannot be stopped restarts the worker once the outcome is recorded.
//!
//! It comes in two halves, so that the GPU slot never waits for bookkeeping
//! (issue 18): [`InFlight::run`] holds the slot and does what the next job
//! on it depends on (the run, the abort of a cancelled model process, the
//! eviction of an aborted or broken model, the restart of a stuck thread);
//! [`InFlight::outcome`] runs once the slot is free, beside the next job:
//! large outputs uploaded to the artifact store, their owner recorded, the
//! job's measured VRAM written to Redis, its metrics.

use std::sync::Arc;
use std::time::Duration;

use gpuq_common::artifacts::{self, ArtifactError, FetchLimits};
use gpuq_common::registry::ModelConfig;
use gpuq_common::wire::DEFAULT_TENANT;
use gpuq_common::{now_ms, ErrorCode, JobError, JobMessage, JobStatus, ValueMap};

use tokio_util::sync::CancellationToken;

use super::record::{completed, failed};
use super::{InFlight, JobContext};
use crate::runtime::{Progress, RunError};
use crate::store::{Outcome, Store};

/// How a run ended: what the slot was needed for is done; what is left
/// ([`InFlight::outcome`]) is not the GPU's.
pub(super) enum Ran {
    /// Ended without calling the model (cancelled first, no lease, inputs
    /// not resolved): the outcome, counted already where it was before.
    Early(Outcome),
    /// The model was called (or skipped, cancelled while it loaded).
    Called(Box<Called>),
}

/// A called model's result and what its bookkeeping needs.
pub(super) struct Called {
    result: Result<ValueMap, RunError>,
    size_class: String,
    /// Models loaded beside it as it started (their memory is not its).
    loaded: Vec<String>,
    /// The process's VRAM peak while it ran, when measured.
    process_peak: Option<u64>,
    queue_wait_s: Option<f64>,
    /// Seconds it ran; `None` when the model was not called.
    run_s: Option<f64>,
}

impl InFlight<'_> {
    /// Runs the claimed job; its inputs move to the model (the job keeps its
    /// ids, never a second copy of the inputs).
    /// `cancel` is the job's, heard since its claim (`job/slot.rs`).
    pub(super) async fn run(&mut self, timeout: Duration, cancel: &CancellationToken) -> Ran {
        let inputs = std::mem::take(&mut self.job.inputs);
        if cancel.is_cancelled() {
            // Cancelled before its slot: no slot, so no model lease either.
            tracing::info!("job cancelled before its run; not running it");
            return Ran::Early(self.ended_unrun(failed(JobStatus::Cancelled, cancelled_error())));
        }
        run_model(self.ctx, self.model, &self.job, inputs, timeout, cancel).await
    }

    /// The run's outcome, once its slot is free: outputs offloaded and
    /// owned, the measured VRAM recorded, the job counted.
    pub(super) async fn outcome(&self, ran: Ran, timeout: Duration) -> Outcome {
        match ran {
            Ran::Early(outcome) => outcome,
            Ran::Called(called) => {
                bookkeeping(self.ctx, self.model, &self.job, *called, timeout).await
            }
        }
    }

    /// Counts a job that ends before its run.
    fn ended_unrun(&self, outcome: Outcome) -> Outcome {
        let tenant = self.job.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
        let max_labels = self.ctx.config.tenants.max_labels as usize;
        let status = outcome.status.as_str();
        let queue_wait_s = queue_wait_s(&self.job);
        let labels = (tenant, max_labels);
        (self.ctx.stats).record_job(&self.model.id, labels, status, queue_wait_s, None);
        outcome
    }
}

fn cancelled_error() -> JobError {
    JobError::new(ErrorCode::Cancelled, "cancelled while running")
}

/// Seconds from submit to now, when the submitter said when it submitted.
fn queue_wait_s(job: &JobMessage) -> Option<f64> {
    job.submitted_at_ms
        .map(|at| now_ms().saturating_sub(at) as f64 / 1000.0)
}

async fn run_model(
    ctx: &JobContext,
    model: &ModelConfig,
    job: &JobMessage,
    mut inputs: ValueMap,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Ran {
    let _running = ctx.stats.job_started(&job.job_id);
    let meter = ctx.vram.as_deref();
    // What this job's size class was measured to need (artifact references
    // count as the size they name, so this is known before they resolve).
    let job_mib = ctx.learned.with(&model.id, |learned| {
        let learned = learned?;
        let class = gpuq_common::vram::size_class(&inputs, model.vram_size_input.as_deref());
        gpuq_common::vram::class_need_mib(learned, &class, &ctx.config.gpu)
    });
    let lease = match ctx.pool.acquire(model, job_mib).await {
        Ok(lease) => lease,
        Err(error) => {
            tracing::error!(%error, "model load failed");
            return Ran::Early(failed(JobStatus::Failed, error.to_job_error()));
        }
    };
    if let (Some(meter), Some(resident)) = (meter, lease.resident_mib) {
        meter
            .record_load(model, resident, lease.load_peak_mib)
            .await;
    }
    let limits = FetchLimits::from_config(&ctx.config);
    if let Err(error) = ctx.artifacts.resolve_inputs(&mut inputs, &limits).await {
        return Ran::Early(failed(JobStatus::Failed, artifact_error(error)));
    }
    let size_class = gpuq_common::vram::size_class(&inputs, model.vram_size_input.as_deref());
    if let Some(load) = lease.loaded_in {
        ctx.stats.record_load(&model.id, load.as_secs_f64());
    }
    let queue_wait_s = queue_wait_s(job);
    // The models loaded beside it as it starts (their memory is not its).
    let loaded: Vec<String> = ctx.pool.snapshot().0.into_iter().map(|r| r.model).collect();
    let run_started = std::time::Instant::now();
    // Cancelled while the model loaded: the model is not called at all.
    let skipped = cancel.is_cancelled();
    let progress = progress_reporter(ctx.store.clone(), job.job_id.clone());
    let running = async {
        tokio::select! {
            result = lease.runtime.run(inputs, timeout, progress) => result,
            _ = cancel.cancelled() => Err(RunError::Cancelled),
        }
    };
    let (result, process_peak) = match meter {
        _ if skipped => {
            drop(running); // never polled: the model is not called
            tracing::info!("job cancelled before its run; not running it");
            (Err(RunError::Cancelled), None)
        }
        Some(meter) => meter.measure(running).await,
        None => (running.await, None),
    };
    if result == Err(RunError::Cancelled) && !skipped {
        if lease.runtime.can_abort() {
            tracing::info!("job cancelled; stopping the model process");
            lease.runtime.abort().await;
        } else {
            // Its thread cannot be stopped: restart the worker once this is recorded.
            tracing::info!("job cancelled; the worker restarts to stop it");
            ctx.restart.cancel();
        }
    }
    let run_s = run_started.elapsed().as_secs_f64();
    let aborted = result == Err(RunError::Cancelled) && !skipped && lease.runtime.can_abort();
    drop(lease);
    if aborted {
        ctx.pool.evict(&model.id).await;
    }
    // What the next job on this slot depends on happens before it starts.
    match &result {
        Err(RunError::ModelBroken(error)) => {
            tracing::warn!(code = %error.code, "model broken; unloading it");
            ctx.pool.evict(&model.id).await;
        }
        Err(RunError::TimedOut { stuck: true }) => {
            // The model thread cannot be interrupted; the process restarts once
            // the outcome is recorded, so its slot (and VRAM) comes back clean.
            tracing::error!(
                timeout_s = timeout.as_secs(),
                "job timed out on a stuck thread; the worker will restart"
            );
            ctx.restart.cancel();
        }
        _ => {}
    }
    Ran::Called(Box::new(Called {
        result,
        size_class,
        loaded,
        process_peak,
        queue_wait_s,
        run_s: (!skipped).then_some(run_s),
    }))
}

/// The bookkeeping of a called model, off its slot: the outcome (outputs
/// offloaded and owned), the measured VRAM recorded, the job counted.
async fn bookkeeping(
    ctx: &JobContext,
    model: &ModelConfig,
    job: &JobMessage,
    called: Called,
    timeout: Duration,
) -> Outcome {
    let outcome = outcome_of(ctx, job, called.result, timeout).await;
    if let (Some(meter), Some(peak)) = (ctx.vram.as_deref(), called.process_peak) {
        let out_of_memory = outcome
            .error
            .as_ref()
            .is_some_and(|e| e.code == ErrorCode::OutOfMemory);
        // It needed more than the worker had: at least its budget.
        let oom_above = out_of_memory.then(|| ctx.pool.budget_mib().unwrap_or(peak));
        meter
            .record_job((model, &called.size_class), peak, oom_above, &called.loaded)
            .await;
    }
    let tenant = job.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
    let max_labels = ctx.config.tenants.max_labels as usize;
    ctx.stats.record_job(
        &model.id,
        (tenant, max_labels),
        outcome.status.as_str(),
        called.queue_wait_s,
        called.run_s,
    );
    outcome
}

/// The outcome of a run: outputs offloaded to the artifact store and owned
/// by the submitter, or the failure as recorded (a broken model was evicted
/// and a stuck thread's restart asked for in the run, before its slot freed).
async fn outcome_of(
    ctx: &JobContext,
    job: &JobMessage,
    result: Result<ValueMap, RunError>,
    timeout: Duration,
) -> Outcome {
    match result {
        Ok(mut outputs) => {
            let returned = artifacts::referenced_ids(&outputs).unwrap_or_default();
            match ctx
                .artifacts
                .offload_outputs(&mut outputs, ctx.config.artifacts.inline_max_bytes)
                .await
            {
                Ok(()) => {
                    own_outputs(ctx, job, &returned, &outputs).await;
                    completed(outputs)
                }
                Err(error) => failed(JobStatus::Failed, artifact_error(error)),
            }
        }
        Err(RunError::Job(error)) => failed(JobStatus::Failed, error),
        Err(RunError::Cancelled) => failed(JobStatus::Cancelled, cancelled_error()),
        Err(RunError::ModelBroken(error)) => failed(JobStatus::Failed, error),
        Err(RunError::TimedOut { stuck }) => {
            if !stuck {
                tracing::warn!(
                    timeout_s = timeout.as_secs(),
                    "job timed out; the model process was killed"
                );
            }
            failed(
                JobStatus::TimedOut,
                JobError::new(
                    ErrorCode::Timeout,
                    format!(
                        "the job ran longer than its timeout of {} s",
                        timeout.as_secs()
                    ),
                ),
            )
        }
    }
}

/// A missing or malformed reference, or one over the fetch limits, is the
/// job's fault (never retried); a store failure or an unsafe store path is not.
pub(super) fn artifact_error(error: ArtifactError) -> JobError {
    let code = if error.is_invalid_input() {
        ErrorCode::InvalidInput
    } else {
        ErrorCode::ArtifactUnavailable
    };
    JobError::new(code, error.to_string())
}

/// Shortest gap between two progress writes of one job.
const PROGRESS_MIN_GAP_MS: u64 = 250;

/// Writes a job's progress to Redis, at most every 250 ms; callable from any thread.
fn progress_reporter(store: Store, job_id: String) -> Progress {
    let handle = tokio::runtime::Handle::current();
    let last_write_ms = std::sync::atomic::AtomicU64::new(0);
    Arc::new(move |fraction: f64| {
        let now = now_ms();
        let last = last_write_ms.load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(last) < PROGRESS_MIN_GAP_MS && fraction < 1.0 {
            return;
        }
        last_write_ms.store(now, std::sync::atomic::Ordering::Relaxed);
        let (store, job_id) = (store.clone(), job_id.clone());
        handle.spawn(async move {
            if let Err(error) = store.set_progress(&job_id, fraction.clamp(0.0, 1.0)).await {
                tracing::debug!(%error, "progress not written");
            }
        });
    })
}

/// Records the job's submitter (a gateway token name) as the owner of the
/// artifacts the worker stored for its outputs, so that the submitter's
/// `submit` token may download them; `returned` are the references the model
/// returned as such (not stored here, so not given away). A failed write is
/// logged, not fatal: the result stays readable by admins.
async fn own_outputs(ctx: &JobContext, job: &JobMessage, returned: &[String], outputs: &ValueMap) {
    let Some(owner) = job.submitted_by.as_deref() else {
        return;
    };
    let stored: Vec<String> = gpuq_common::artifacts::referenced_ids(outputs)
        .unwrap_or_default()
        .into_iter()
        .filter(|id| !returned.contains(id))
        .collect();
    if stored.is_empty() {
        return;
    }
    let ttl_s = ctx.config.artifacts.ttl().as_secs();
    if let Err(error) = ctx.store.set_artifact_owners(&stored, owner, ttl_s).await {
        tracing::warn!(%error, "output artifacts stored without an owner");
    }
}
