//! How a delivery ends: the outcome recorded (then the ack), a reply, a
//! forward to another model's queue, a retry after a back-off, or a copy in the
//! dead-letter queue. Every path writes Redis before it acks.

use std::future::Future;
use std::time::Duration;

use crate::amqp::Delivery;
use gpuq_common::wire::{Encoding, JobReply, SCHEMA_VERSION};
use gpuq_common::{now_ms, ErrorCode, JobError, JobMessage, JobStatus, StatusEvent, ValueMap};

use super::JobContext;
use crate::amqp;
use crate::store::{Outcome, StoreError};

/// Records the job's submitter (a gateway token name) as the owner of the
/// artifacts the worker stored for its outputs, so that the submitter's
/// `submit` token may download them; `returned` are the references the model
/// returned as such (not stored here, so not given away). A failed write is
/// logged, not fatal: the result stays readable by admins.
pub(super) async fn own_outputs(
    ctx: &JobContext,
    job: &JobMessage,
    returned: &[String],
    outputs: &ValueMap,
) {
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

pub(super) fn completed(outputs: ValueMap) -> Outcome {
    Outcome {
        status: JobStatus::Completed,
        result: Some(outputs),
        error: None,
    }
}

pub(super) fn failed(status: JobStatus, error: JobError) -> Outcome {
    Outcome {
        status,
        result: None,
        error: Some(error),
    }
}

pub(super) async fn fail_without_running(
    ctx: &JobContext,
    job: &JobMessage,
    model_id: &str,
    delivery: &Delivery,
    encoding: Encoding,
    error: JobError,
) {
    end_without_running(
        ctx,
        job,
        model_id,
        delivery,
        encoding,
        failed(JobStatus::Failed, error),
    )
    .await;
}

pub(super) async fn end_without_running(
    ctx: &JobContext,
    job: &JobMessage,
    model_id: &str,
    delivery: &Delivery,
    encoding: Encoding,
    outcome: Outcome,
) {
    if let Some(error) = &outcome.error {
        tracing::warn!(status = %outcome.status, code = %error.code, message = %error.message, "job refused");
    }
    record_and_ack(ctx, job, model_id, delivery, encoding, outcome, None).await;
}

/// Back-off before attempt `attempt + 1`: `retry_backoff_s`, doubling, capped.
pub fn retry_backoff(jobs: &gpuq_common::config::JobsConfig, attempt: u32) -> Duration {
    let factor = 2u64.saturating_pow(attempt.saturating_sub(1));
    Duration::from_secs(
        jobs.retry_backoff_s
            .saturating_mul(factor)
            .min(jobs.retry_backoff_max_s),
    )
}

/// A retryable failure with attempts left: mark the job queued again with the
/// error, park a copy in the model's retry queue for the back-off (the broker
/// moves it back when it expires), then ack this delivery.
pub(super) async fn retry_later(
    ctx: &JobContext,
    job: &JobMessage,
    model_id: &str,
    delivery: &Delivery,
    error: &JobError,
    attempt: u32,
) {
    let backoff = retry_backoff(&ctx.config.jobs, attempt);
    tracing::warn!(attempt, backoff_s = backoff.as_secs(), code = %error.code, message = %error.message, "retryable failure; retrying after a back-off");
    let event = StatusEvent {
        feature: Some(job.feature.clone()),
        model: Some(model_id.to_owned()),
        worker: Some(ctx.worker_id.clone()),
        attempt: Some(attempt),
        error: Some(error.clone()),
        ..StatusEvent::new(job.job_id.clone(), JobStatus::Queued)
    };
    if let Err(store_error) = with_retries(ctx.redis_retry(), || {
        ctx.store.mark_retrying(&job.job_id, &event, backoff)
    })
    .await
    {
        tracing::error!(error = %store_error, "cannot record the retry in redis; requeueing the job");
        return amqp::requeue(delivery).await;
    }
    let retry_queue = ctx.names.retry_queue(model_id);
    match ctx.broker.park(&retry_queue, delivery, backoff).await {
        Ok(()) => amqp::ack(delivery).await,
        Err(broker_error) => {
            tracing::error!(error = %broker_error, "cannot park the job for its retry; requeueing it now");
            amqp::requeue(delivery).await;
        }
    }
}

/// The job used up its attempts: record it failed, copy it to the dead-letter
/// queue with the reason, then ack.
pub(super) async fn give_up(
    ctx: &JobContext,
    job: &JobMessage,
    model_id: &str,
    delivery: &Delivery,
    encoding: Encoding,
    error: JobError,
    attempt: u32,
) {
    tracing::error!(attempt, code = %error.code, message = %error.message, "giving up on the job");
    let source_queue = ctx.names.model_queue(model_id);
    if let Err(broker_error) = ctx
        .broker
        .dead_letter(delivery, &source_queue, &error, &ctx.worker_id)
        .await
    {
        tracing::warn!(error = %broker_error, "dead-letter copy not published");
    }
    record_and_ack(
        ctx,
        job,
        model_id,
        delivery,
        encoding,
        failed(JobStatus::Failed, error),
        Some(attempt),
    )
    .await;
}

/// Stores the outcome, replies if asked, then acks. If Redis stays unreachable
/// the job is requeued instead: it runs again rather than being lost.
pub(super) async fn record_and_ack(
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
        feature: Some(job.feature.clone()),
        model: Some(model_id.to_owned()),
        worker: Some(ctx.worker_id.clone()),
        attempt,
        error: outcome.error.clone(),
        ts_ms: finished_at_ms,
        ..StatusEvent::new(job.job_id.clone(), outcome.status)
    };
    // Before the outcome, so that a final record already shows an ignored reply_to.
    let reply_to = super::reply::checked_reply_to(ctx, &job.job_id, delivery).await;
    match with_retries(ctx.redis_retry(), || {
        ctx.store.finish(&job.job_id, &outcome, &event)
    })
    .await
    {
        Ok(true) => ctx
            .stats
            .job_finished(outcome.status == JobStatus::Completed),
        Ok(false) => tracing::info!("job already ended elsewhere; outcome dropped"),
        Err(error) => {
            tracing::error!(%error, "cannot record the outcome in redis; requeueing the job");
            return amqp::requeue(delivery).await;
        }
    }
    if let Some(reply_to) = reply_to {
        send_reply(
            ctx,
            job,
            delivery,
            encoding,
            &outcome,
            &reply_to,
            finished_at_ms,
        )
        .await;
    }
    // Successes are routine (debug); every other end is worth a line.
    if outcome.status == JobStatus::Completed {
        tracing::debug!("job completed");
    } else {
        tracing::info!(status = %outcome.status, "job finished");
    }
    amqp::ack(delivery).await;
}

pub(super) async fn send_reply(
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
    let correlation_id = delivery.correlation_id();
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

pub(super) async fn forward(
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
pub(super) async fn dead_letter(
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
    if let Err(store_error) =
        with_retries(ctx.redis_retry(), || ctx.store.note_dead_letter(&note)).await
    {
        tracing::warn!(error = %store_error, "dead letter not noted in redis");
    }
    if let Some(job_id) = message_id.filter(|id| gpuq_common::wire::validate_job_id(id).is_ok()) {
        let event = StatusEvent {
            model: Some(model_id.to_owned()),
            worker: Some(ctx.worker_id.clone()),
            error: Some(error.clone()),
            ..StatusEvent::new(job_id.to_owned(), JobStatus::Failed)
        };
        let outcome = failed(JobStatus::Failed, error.clone());
        if let Err(store_error) = with_retries(ctx.redis_retry(), || {
            ctx.store.finish(job_id, &outcome, &event)
        })
        .await
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

/// First and longest delay between tries of a Redis write.
const RETRY_FIRST: Duration = Duration::from_millis(50);

const RETRY_MAX: Duration = Duration::from_secs(2);

/// Retries a Redis operation with backoff for up to `budget`: a Redis restart
/// or failover costs a delay, not a job. Past the budget the caller requeues.
pub(super) async fn with_retries<T, F, Fut>(budget: Duration, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + budget;
    let mut delay = RETRY_FIRST;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(error) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "redis unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
            Err(error) => return Err(error),
        }
    }
}
