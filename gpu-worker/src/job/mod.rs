//! One delivery, from bytes to ack: decode, check, claim, run, record, reply, ack.
//!
//! The order is the guarantee: the outcome is stored in Redis *before* the ack,
//! so a worker dying at any point leaves either a redelivery or a recorded
//! outcome, never a silent loss. A message that cannot be a job at all is copied
//! to the dead-letter queue with the reason in its headers, then acked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::amqp::Delivery;
use gpuq_common::config::Config;
use gpuq_common::registry::ModelConfig;
use gpuq_common::wire::{value_map_to_json_string, Encoding};
use gpuq_common::{now_ms, ErrorCode, JobError, JobMessage, JobStatus, Names, ValueMap};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use gpuq_common::artifacts::{self, ArtifactError, ArtifactStore, FetchLimits};

use self::finish::{
    completed, dead_letter, end_without_running, fail_without_running, failed, forward, give_up,
    record_and_ack, retry_later, with_retries,
};
use crate::amqp::{self, Broker};
use crate::pool::ModelPool;
use crate::runtime::{self, Progress, RunError};
use crate::stats::WorkerStats;
use crate::store::{Claim, Outcome, Store};
use gpuq_common::job_record::scripts::Claimant;

/// Everything a delivery handler needs, shared by all in-flight jobs.
pub struct JobContext {
    pub config: Arc<Config>,
    pub names: Names,
    pub worker_id: String,
    pub host_id: String,
    pub gpu: String,
    pub store: Store,
    pub broker: Arc<Broker>,
    /// Registry entries of the models whose queues this worker consumes.
    pub models: HashMap<String, ModelConfig>,
    /// The loaded models.
    pub pool: Arc<ModelPool>,
    /// Where artifact references in inputs and large outputs live.
    pub artifacts: ArtifactStore,
    /// Cancel signals of the jobs running now.
    pub cancels: Arc<CancelRegistry>,
    pub stats: Arc<WorkerStats>,
    /// Cancelled when a model thread is stuck and the process must be restarted.
    pub restart: CancellationToken,
}

/// Cancel tokens of running jobs, by job id; fed by the cancel channel.
#[derive(Default)]
pub struct CancelRegistry {
    running: parking_lot::Mutex<HashMap<String, CancellationToken>>,
}

impl CancelRegistry {
    fn register(&self, job_id: &str) -> CancellationToken {
        let token = CancellationToken::new();
        self.running.lock().insert(job_id.to_owned(), token.clone());
        token
    }

    fn forget(&self, job_id: &str) {
        self.running.lock().remove(job_id);
    }

    /// Cancels the job if it runs here; returns whether it did.
    pub fn cancel(&self, job_id: &str) -> bool {
        match self.running.lock().get(job_id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

impl JobContext {
    /// How long Redis writes of one job are retried before it is requeued.
    fn redis_retry(&self) -> Duration {
        Duration::from_secs(self.config.worker.redis_retry_s)
    }
}

/// Handles one delivery from `model_id`'s queue to its ack (or requeue).
pub async fn handle_delivery(ctx: Arc<JobContext>, model_id: String, delivery: Delivery) {
    let message_id = delivery.message_id();
    let span = tracing::info_span!(
        "job",
        job_id = tracing::field::Empty,
        model = %model_id,
        feature = tracing::field::Empty,
        trace_id = tracing::field::Empty
    );
    // W3C trace context from the publisher (`traceparent`), when it sent one.
    if let Some(trace_id) = delivery
        .header_str("traceparent")
        .and_then(|t| t.split('-').nth(1))
    {
        span.record("trace_id", trace_id);
    }
    if let Some(id) = message_id.as_deref() {
        span.record("job_id", id);
    }
    process(&ctx, &model_id, &delivery, message_id.as_deref())
        .instrument(span)
        .await;
}

async fn process(ctx: &JobContext, model_id: &str, delivery: &Delivery, message_id: Option<&str>) {
    let (mut job, encoding) = match decode(ctx, delivery, message_id) {
        Ok(decoded) => decoded,
        Err(error) => return dead_letter(ctx, model_id, delivery, message_id, error).await,
    };
    let model = &ctx.models[model_id];
    let timeout = match route(&job, model, &ctx.config) {
        Ok(Route::Run { timeout }) => timeout,
        Ok(Route::Forward { routing_key }) => {
            return forward(ctx, &job, model_id, delivery, encoding, &routing_key).await
        }
        Err(error) => {
            return fail_without_running(ctx, &job, model_id, delivery, encoding, error).await
        }
    };
    let limits = FetchLimits::from_config(&ctx.config);
    let checked = artifacts::check_reference_count(&job.inputs, &limits)
        .map_err(artifact_error)
        .and_then(|_| runtime::validate_with_references(model, &job.inputs));
    if let Err(error) = checked {
        return fail_without_running(ctx, &job, model_id, delivery, encoding, error).await;
    }
    if let Some(error) = queue_timeout_exceeded(&job, delivery, &ctx.config, now_ms()) {
        let outcome = failed(JobStatus::TimedOut, error);
        return end_without_running(ctx, &job, model_id, delivery, encoding, outcome).await;
    }
    let Some(attempt) = claim(ctx, &job, model_id, delivery).await else {
        return;
    };
    tracing::debug!(attempt, "job claimed");
    let max_attempts = ctx.config.jobs.max_attempts;
    if attempt > max_attempts {
        let error = JobError::new(
            ErrorCode::TooManyAttempts,
            format!(
                "the job was started {} time(s) without finishing (jobs.max_attempts = {max_attempts}); its worker died each time",
                attempt - 1
            ),
        );
        return give_up(ctx, &job, model_id, delivery, encoding, error, attempt).await;
    }
    // The inputs move to the model: the job keeps its ids, never a second copy.
    let inputs = std::mem::take(&mut job.inputs);
    let outcome = run_model(ctx, model, &job, inputs, timeout).await;
    conclude(ctx, &job, model_id, delivery, encoding, outcome, attempt).await;
}

/// The delivery's job and how it was encoded; the error says why the body
/// is no job (it is dead-lettered).
fn decode(
    ctx: &JobContext,
    delivery: &Delivery,
    message_id: Option<&str>,
) -> Result<(JobMessage, Encoding), JobError> {
    let content_type = delivery.content_type();
    let max_bytes = ctx.config.queues.max_message_bytes;
    let decoded = if delivery.body().len() as u64 > max_bytes {
        Err(JobError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "job body is {} bytes; the limit (queues.max_message_bytes) is {max_bytes}",
                delivery.body().len()
            ),
        ))
    } else {
        JobMessage::decode(content_type.as_deref(), delivery.body(), message_id)
    };
    let job = decoded?;
    let span = tracing::Span::current();
    if message_id.is_none() {
        span.record("job_id", job.job_id.as_str());
    }
    span.record("feature", job.feature.as_str());
    let encoding =
        Encoding::detect(content_type.as_deref(), delivery.body()).unwrap_or(Encoding::Msgpack);
    Ok((job, encoding))
}

/// Claims the job in Redis; its attempt number, or `None` when the delivery
/// was already settled (acked: the job had ended; requeued: Redis is down).
async fn claim(
    ctx: &JobContext,
    job: &JobMessage,
    model_id: &str,
    delivery: &Delivery,
) -> Option<u32> {
    let metadata_json = (!job.metadata.is_empty()).then(|| value_map_to_json_string(&job.metadata));
    let claimant = Claimant {
        feature: &job.feature,
        model: model_id,
        worker: &ctx.worker_id,
        host: &ctx.host_id,
        gpu: &ctx.gpu,
        metadata_json: metadata_json.as_deref(),
    };
    let attempt = match with_retries(ctx.redis_retry(), || {
        ctx.store.claim(&job.job_id, &claimant)
    })
    .await
    {
        Ok(Claim::Run { attempt }) => attempt,
        Ok(Claim::AlreadyFinal(status)) => {
            tracing::info!(%status, "job already final; acking the redelivery without running it");
            amqp::ack(delivery).await;
            return None;
        }
        Err(error) => {
            tracing::error!(%error, "cannot claim the job in redis; requeueing it");
            amqp::requeue(delivery).await;
            return None;
        }
    };
    Some(attempt)
}

/// After the run: a retryable failure goes back to its queue (or, out of
/// attempts, is given up); anything else is recorded, then acked.
async fn conclude(
    ctx: &JobContext,
    job: &JobMessage,
    model_id: &str,
    delivery: &Delivery,
    encoding: Encoding,
    outcome: Outcome,
    attempt: u32,
) {
    let max_attempts = ctx.config.jobs.max_attempts;
    if let Some(error) = outcome
        .error
        .as_ref()
        .filter(|e| outcome.status == JobStatus::Failed && e.code.is_retryable())
    {
        if attempt < max_attempts {
            return retry_later(ctx, job, model_id, delivery, error, attempt).await;
        }
        let error = JobError::new(
            ErrorCode::TooManyAttempts,
            format!(
                "failed {attempt} time(s) (jobs.max_attempts = {max_attempts}); last error: {}: {}",
                error.code, error.message
            ),
        );
        return give_up(ctx, job, model_id, delivery, encoding, error, attempt).await;
    }
    record_and_ack(
        ctx,
        job,
        model_id,
        delivery,
        encoding,
        outcome,
        Some(attempt),
    )
    .await;
}

async fn run_model(
    ctx: &JobContext,
    model: &ModelConfig,
    job: &JobMessage,
    mut inputs: ValueMap,
    timeout: Duration,
) -> Outcome {
    let _running = ctx.stats.job_started(&job.job_id);
    let lease = match ctx.pool.acquire(model).await {
        Ok(lease) => lease,
        Err(error) => {
            tracing::error!(%error, "model load failed");
            return failed(JobStatus::Failed, error.to_job_error());
        }
    };
    let limits = FetchLimits::from_config(&ctx.config);
    if let Err(error) = ctx.artifacts.resolve_inputs(&mut inputs, &limits).await {
        return failed(JobStatus::Failed, artifact_error(error));
    }
    if let Some(load) = lease.loaded_in {
        ctx.stats.record_load(&model.id, load.as_secs_f64());
    }
    let queue_wait_s = job
        .submitted_at_ms
        .map(|at| now_ms().saturating_sub(at) as f64 / 1000.0);
    let run_started = std::time::Instant::now();
    let progress = progress_reporter(ctx.store.clone(), job.job_id.clone());
    let cancel = ctx.cancels.register(&job.job_id);
    let result = tokio::select! {
        result = lease.runtime.run(inputs, timeout, progress) => result,
        _ = cancel.cancelled() => Err(RunError::Cancelled),
    };
    ctx.cancels.forget(&job.job_id);
    if result == Err(RunError::Cancelled) {
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
    let aborted = result == Err(RunError::Cancelled) && lease.runtime.can_abort();
    drop(lease);
    if aborted {
        ctx.pool.evict(&model.id).await;
    }
    let outcome = outcome_of(ctx, model, job, result, timeout).await;
    ctx.stats.record_job(
        &model.id,
        outcome.status.as_str(),
        queue_wait_s,
        Some(run_s),
    );
    outcome
}

/// The outcome of a run: outputs offloaded to the artifact store and owned
/// by the submitter, or the failure as recorded; a broken model is evicted,
/// a stuck thread restarts the worker.
async fn outcome_of(
    ctx: &JobContext,
    model: &ModelConfig,
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
                    finish::own_outputs(ctx, job, &returned, &outputs).await;
                    completed(outputs)
                }
                Err(error) => failed(JobStatus::Failed, artifact_error(error)),
            }
        }
        Err(RunError::Job(error)) => failed(JobStatus::Failed, error),
        Err(RunError::Cancelled) => failed(
            JobStatus::Cancelled,
            JobError::new(ErrorCode::Cancelled, "cancelled while running"),
        ),
        Err(RunError::ModelBroken(error)) => {
            tracing::warn!(code = %error.code, "model broken; unloading it");
            ctx.pool.evict(&model.id).await;
            failed(JobStatus::Failed, error)
        }
        Err(RunError::TimedOut { stuck }) => {
            if stuck {
                // The model thread cannot be interrupted; the process restarts once
                // the outcome is recorded, so its slot (and VRAM) comes back clean.
                tracing::error!(
                    timeout_s = timeout.as_secs(),
                    "job timed out on a stuck thread; the worker will restart"
                );
                ctx.restart.cancel();
            } else {
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
fn artifact_error(error: ArtifactError) -> JobError {
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

mod finish;
mod reply;
mod route;
pub use route::{queue_timeout_exceeded, route, Route};
#[cfg(test)]
mod tests;
