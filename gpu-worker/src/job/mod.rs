//! One delivery, from bytes to ack: decode, check, claim, run, record, reply, ack.
//!
//! The order is the guarantee: the outcome is stored in Redis *before* the ack,
//! so a worker dying at any point leaves either a redelivery or a recorded
//! outcome, never a silent loss. A message that cannot be a job at all is copied
//! to the dead-letter queue with the reason in its headers, then acked.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gpuq_common::config::Config;
use gpuq_common::registry::ModelConfig;
use gpuq_common::wire::{value_map_to_json_string, Encoding, JobReply, SCHEMA_VERSION};
use gpuq_common::{
    now_ms, ErrorCode, JobError, JobMessage, JobStatus, Names, StatusEvent, ValueMap,
};
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use gpuq_common::artifacts::{self, ArtifactError, ArtifactStore};

use crate::amqp::{self, Broker};
use crate::pool::ModelPool;
use crate::runtime::{self, Progress, RunError};
use crate::stats::WorkerStats;
use crate::store::{Claim, ClaimContext, Outcome, Store, StoreError};

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
    pub stats: Arc<WorkerStats>,
    /// Cancelled when a model thread is stuck and the process must be restarted.
    pub restart: CancellationToken,
}

/// Where a decoded job goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Run here with this time limit.
    Run { timeout: Duration },
    /// The job pins another model of the same feature: publish it there.
    Forward { routing_key: String },
}

/// Decides what to do with a job found on `queue_model`'s queue.
pub fn route(
    job: &JobMessage,
    queue_model: &ModelConfig,
    config: &Config,
) -> Result<Route, JobError> {
    let registry = config.registry();
    if job.feature != queue_model.feature {
        let code = if registry.default_model(&job.feature).is_none() {
            ErrorCode::UnknownFeature
        } else {
            ErrorCode::InvalidParameter
        };
        return Err(JobError::new(
            code,
            format!(
                "job feature '{}' does not match queue of model '{}' (feature '{}'); publish with routing key '{}'",
                job.feature, queue_model.id, queue_model.feature, job.feature
            ),
        ));
    }
    if let Some(pinned) = job.model.as_deref().filter(|m| *m != queue_model.id) {
        return match registry.model(pinned) {
            Some(model) if model.feature == job.feature => Ok(Route::Forward {
                routing_key: Names::pinned_routing_key(&job.feature, pinned),
            }),
            _ => Err(JobError::new(
                ErrorCode::UnknownModel,
                format!(
                    "model '{pinned}' does not exist or does not serve feature '{}'",
                    job.feature
                ),
            )),
        };
    }
    if let Some(priority) = job.priority.filter(|p| *p > 9) {
        return Err(JobError::new(
            ErrorCode::InvalidParameter,
            format!("priority {priority} is out of range 0 to 9"),
        ));
    }
    let max = config.jobs.max_timeout_s;
    let timeout_s = match job.timeout_s {
        Some(t) if t == 0 || t > max => {
            return Err(JobError::new(
                ErrorCode::InvalidParameter,
                format!("timeout_s {t} is out of range 1 to {max}"),
            ))
        }
        Some(t) => t,
        None => queue_model.timeout_s,
    };
    Ok(Route::Run {
        timeout: Duration::from_secs(timeout_s),
    })
}

/// Handles one delivery from `model_id`'s queue to its ack (or requeue).
pub async fn handle_delivery(ctx: Arc<JobContext>, model_id: String, delivery: Delivery) {
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string());
    let span = tracing::info_span!("job", job_id = message_id.as_deref().unwrap_or("?"), model = %model_id);
    process(&ctx, &model_id, &delivery, message_id.as_deref())
        .instrument(span)
        .await;
}

async fn process(ctx: &JobContext, model_id: &str, delivery: &Delivery, message_id: Option<&str>) {
    let content_type = delivery
        .properties
        .content_type()
        .as_ref()
        .map(|ct| ct.to_string());
    let max_bytes = ctx.config.queues.max_message_bytes;
    let decoded = if delivery.data.len() as u64 > max_bytes {
        Err(JobError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "job body is {} bytes; the limit (queues.max_message_bytes) is {max_bytes}",
                delivery.data.len()
            ),
        ))
    } else {
        JobMessage::decode(content_type.as_deref(), &delivery.data, message_id)
    };
    let job = match decoded {
        Ok(job) => job,
        Err(error) => return dead_letter(ctx, model_id, delivery, message_id, error).await,
    };
    let encoding =
        Encoding::detect(content_type.as_deref(), &delivery.data).unwrap_or(Encoding::Msgpack);
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
    let checked = artifacts::referenced_ids(&job.inputs)
        .map_err(artifact_error)
        .and_then(|_| runtime::validate_with_references(model, &job.inputs));
    if let Err(error) = checked {
        return fail_without_running(ctx, &job, model_id, delivery, encoding, error).await;
    }
    let claim_ctx = ClaimContext {
        job_id: &job.job_id,
        feature: &job.feature,
        model: model_id,
        worker: &ctx.worker_id,
        host: &ctx.host_id,
        gpu: &ctx.gpu,
        metadata_json: (!job.metadata.is_empty()).then(|| value_map_to_json_string(&job.metadata)),
    };
    let attempt = match with_retries(|| ctx.store.claim(&claim_ctx)).await {
        Ok(Claim::Run { attempt }) => attempt,
        Ok(Claim::AlreadyFinal(status)) => {
            tracing::info!(%status, "job already final; acking the redelivery without running it");
            return amqp::ack(delivery).await;
        }
        Err(error) => {
            tracing::error!(%error, "cannot claim the job in redis; requeueing it");
            return amqp::requeue(delivery).await;
        }
    };
    tracing::debug!(attempt, "job claimed");
    let outcome = run_model(ctx, model, &job, timeout).await;
    record_and_ack(
        ctx,
        &job,
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
    let mut inputs = job.inputs.clone();
    if let Err(error) = ctx.artifacts.resolve_inputs(&mut inputs).await {
        return failed(JobStatus::Failed, artifact_error(error));
    }
    let progress = progress_reporter(ctx.store.clone(), job.job_id.clone());
    let result = lease.runtime.run(inputs, timeout, progress).await;
    drop(lease);
    match result {
        Ok(mut outputs) => match ctx
            .artifacts
            .offload_outputs(&mut outputs, ctx.config.artifacts.inline_max_bytes)
            .await
        {
            Ok(()) => completed(outputs),
            Err(error) => failed(JobStatus::Failed, artifact_error(error)),
        },
        Err(RunError::Job(error)) => failed(JobStatus::Failed, error),
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

/// A missing or malformed reference is the job's fault; a store failure is not.
fn artifact_error(error: ArtifactError) -> JobError {
    let code = match error {
        ArtifactError::InvalidId(_) | ArtifactError::NotFound(_) => ErrorCode::InvalidInput,
        ArtifactError::Url { .. } | ArtifactError::Store(_) => ErrorCode::ArtifactUnavailable,
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

fn completed(outputs: ValueMap) -> Outcome {
    Outcome {
        status: JobStatus::Completed,
        result: Some(outputs),
        error: None,
    }
}

fn failed(status: JobStatus, error: JobError) -> Outcome {
    Outcome {
        status,
        result: None,
        error: Some(error),
    }
}

async fn fail_without_running(
    ctx: &JobContext,
    job: &JobMessage,
    model_id: &str,
    delivery: &Delivery,
    encoding: Encoding,
    error: JobError,
) {
    tracing::warn!(code = %error.code, message = %error.message, "job refused");
    record_and_ack(
        ctx,
        job,
        model_id,
        delivery,
        encoding,
        failed(JobStatus::Failed, error),
        None,
    )
    .await;
}

/// Stores the outcome, replies if asked, then acks. If Redis stays unreachable
/// the job is requeued instead: it runs again rather than being lost.
async fn record_and_ack(
    ctx: &JobContext,
    job: &JobMessage,
    model_id: &str,
    delivery: &Delivery,
    encoding: Encoding,
    outcome: Outcome,
    attempt: Option<u32>,
) {
    let finished_at_ms = now_ms();
    let event = StatusEvent {
        job_id: job.job_id.clone(),
        status: outcome.status,
        ts_ms: finished_at_ms,
        feature: Some(job.feature.clone()),
        model: Some(model_id.to_owned()),
        worker: Some(ctx.worker_id.clone()),
        attempt,
        progress: None,
        error: outcome.error.clone(),
    };
    match with_retries(|| ctx.store.finish(&job.job_id, &outcome, &event)).await {
        Ok(true) => ctx
            .stats
            .job_finished(outcome.status == JobStatus::Completed),
        Ok(false) => tracing::info!("job already ended elsewhere; outcome dropped"),
        Err(error) => {
            tracing::error!(%error, "cannot record the outcome in redis; requeueing the job");
            return amqp::requeue(delivery).await;
        }
    }
    if let Some(reply_to) = delivery.properties.reply_to().as_ref() {
        send_reply(
            ctx,
            job,
            delivery,
            encoding,
            &outcome,
            reply_to.as_str(),
            finished_at_ms,
        )
        .await;
    }
    tracing::info!(status = %outcome.status, "job finished");
    amqp::ack(delivery).await;
}

async fn send_reply(
    ctx: &JobContext,
    job: &JobMessage,
    delivery: &Delivery,
    encoding: Encoding,
    outcome: &Outcome,
    reply_to: &str,
    finished_at_ms: u64,
) {
    let reply = JobReply {
        schema_version: SCHEMA_VERSION,
        job_id: job.job_id.clone(),
        status: outcome.status,
        result: outcome.result.clone(),
        error: outcome.error.clone(),
        finished_at_ms,
    };
    let correlation_id = delivery
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.to_string());
    let sent = match reply.encode(encoding) {
        Ok(body) => ctx
            .broker
            .reply(
                reply_to,
                correlation_id.as_deref(),
                encoding.content_type(),
                &body,
            )
            .await
            .map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    if let Err(error) = sent {
        // The outcome is in Redis; a lost reply only costs the client a lookup.
        tracing::warn!(%error, reply_to, "reply not delivered");
    }
}

async fn forward(
    ctx: &JobContext,
    job: &JobMessage,
    model_id: &str,
    delivery: &Delivery,
    encoding: Encoding,
    routing_key: &str,
) {
    match ctx.broker.forward(routing_key, delivery).await {
        Ok(true) => {
            tracing::info!(routing_key, "job pins another model; forwarded");
            amqp::ack(delivery).await;
        }
        Ok(false) => {
            let error = JobError::new(
                ErrorCode::Unroutable,
                format!("no queue is bound to routing key '{routing_key}'"),
            );
            fail_without_running(ctx, job, model_id, delivery, encoding, error).await;
        }
        Err(error) => {
            tracing::error!(%error, "forwarding failed; requeueing the job");
            amqp::requeue(delivery).await;
        }
    }
}

/// A message that is not a usable job: copy it to the dead-letter queue with the
/// reason, note it in Redis (and on the job, when its id is known), then ack.
async fn dead_letter(
    ctx: &JobContext,
    model_id: &str,
    delivery: &Delivery,
    message_id: Option<&str>,
    error: JobError,
) {
    tracing::warn!(code = %error.code, message = %error.message, "unusable message dead-lettered");
    let source_queue = ctx.names.model_queue(model_id);
    let note = serde_json::json!({
        "ts_ms": now_ms(),
        "queue": source_queue,
        "job_id": message_id,
        "worker": ctx.worker_id,
        "error_code": error.code,
        "error_message": error.message,
    });
    if let Err(store_error) = with_retries(|| ctx.store.note_dead_letter(&note)).await {
        tracing::warn!(error = %store_error, "dead letter not noted in redis");
    }
    if let Some(job_id) = message_id.filter(|id| gpuq_common::wire::validate_job_id(id).is_ok()) {
        let event = StatusEvent {
            job_id: job_id.to_owned(),
            status: JobStatus::Failed,
            ts_ms: now_ms(),
            feature: None,
            model: Some(model_id.to_owned()),
            worker: Some(ctx.worker_id.clone()),
            attempt: None,
            progress: None,
            error: Some(error.clone()),
        };
        let outcome = failed(JobStatus::Failed, error.clone());
        if let Err(store_error) = with_retries(|| ctx.store.finish(job_id, &outcome, &event)).await
        {
            tracing::warn!(error = %store_error, "failure of unusable job not recorded in redis");
        }
    }
    match ctx
        .broker
        .dead_letter(delivery, &source_queue, &error, &ctx.worker_id)
        .await
    {
        Ok(()) => amqp::ack(delivery).await,
        // The queue's own dead-letter exchange still takes it, without our headers.
        Err(broker_error) => {
            tracing::warn!(error = %broker_error, "dead-letter publish failed; rejecting instead");
            amqp::reject_to_dead_letter(delivery).await;
        }
    }
}

/// Delays between tries of a Redis write; about 6 s in all before giving up.
const RETRY_DELAYS_MS: [u64; 6] = [50, 150, 300, 600, 1_500, 3_000];

async fn with_retries<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut delays = RETRY_DELAYS_MS.iter();
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(error) => match delays.next() {
                Some(ms) => {
                    tracing::warn!(%error, retry_in_ms = ms, "redis write failed");
                    tokio::time::sleep(Duration::from_millis(*ms)).await;
                }
                None => return Err(error),
            },
        }
    }
}

#[cfg(test)]
mod tests;
