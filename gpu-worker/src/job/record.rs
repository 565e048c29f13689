//! How a job ends: its outcome recorded in Redis, then the reply, then the
//! ack; or a forward to the model it pins. Every path writes Redis before it
//! acks, and a Redis that stays down past `worker.redis_retry_s` requeues the
//! job instead: it runs again rather than being lost.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gpuq_common::{now_ms, ErrorCode, JobError, JobStatus, StatusEvent, ValueMap};

use super::notify::{result_json, Announced};
use super::InFlight;
use crate::store::{Outcome, StoreError};

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

impl InFlight<'_> {
    /// Ends a job the checks refused, without claiming or running it.
    pub(super) async fn refuse(self, outcome: Outcome) {
        if let Some(error) = &outcome.error {
            tracing::warn!(status = %outcome.status, code = %error.code, message = %error.message, "job refused");
        }
        self.record(outcome, None).await;
    }

    /// Stores the outcome, replies if asked, then acks. If Redis stays
    /// unreachable the job is requeued instead.
    pub(super) async fn record(self, outcome: Outcome, attempt: Option<u32>) {
        let ctx = self.ctx;
        let job_id = &self.job.job_id;
        let finished_at_ms = now_ms();
        let event = StatusEvent {
            feature: Some(self.job.feature.clone()),
            model: Some(self.model.id.clone()),
            worker: Some(ctx.worker_id.clone()),
            attempt,
            error: outcome.error.clone(),
            tenant: self.tenant(),
            ts_ms: finished_at_ms,
            ..StatusEvent::new(job_id.clone(), outcome.status)
        };
        // Before the outcome, so that a final record already shows an ignored reply_to.
        let reply_to = self.checked_reply_to().await;
        // A try whose write landed but too few replicas confirmed it is
        // retried; the retry then finds the record final (its own write).
        let wrote_before = AtomicBool::new(false);
        let stored = with_retries(self.redis_retry(), || async {
            let stored = ctx.store.finish(job_id, &outcome, &event).await;
            if let Err(StoreError::ReplicasShort { wrote: true, .. }) = &stored {
                wrote_before.store(true, Ordering::Relaxed);
            }
            stored.map(|wrote| wrote || wrote_before.load(Ordering::Relaxed))
        })
        .await;
        match stored {
            Ok(true) => ctx
                .stats
                .job_finished(outcome.status == JobStatus::Completed),
            Ok(false) => tracing::info!("job already ended elsewhere; outcome dropped"),
            Err(error) => {
                tracing::error!(%error, "cannot record the outcome in redis; requeueing the job");
                return self.settle_requeue().await;
            }
        }
        // Stored, not acked: a webhook lost here is published by the redelivery.
        if matches!(stored, Ok(true)) {
            let announced = Announced {
                status: outcome.status,
                error: outcome.error.as_ref(),
                result: result_json(outcome.result.as_ref()),
                attempt,
            };
            if let Err(error) = self.notify(announced).await {
                tracing::error!(%error, "webhook not queued; requeueing the job (its outcome is stored)");
                return self.settle_requeue().await;
            }
        }
        if let Some(reply_to) = reply_to {
            self.reply(&outcome, &reply_to, finished_at_ms).await;
        }
        // Successes are routine (debug); every other end is worth a line.
        if outcome.status == JobStatus::Completed {
            tracing::debug!("job completed");
        } else {
            tracing::info!(status = %outcome.status, "job finished");
        }
        self.settle_ack().await;
    }

    /// Publishes the job under the routing key of the model it pins, then
    /// acks; a key nothing is bound to fails the job.
    pub(super) async fn forward(self, routing_key: &str) {
        match self.ctx.broker.forward(routing_key, &self.delivery).await {
            Ok(true) => {
                tracing::info!(routing_key, "job pins another model; forwarded");
                self.settle_ack().await;
            }
            Ok(false) => {
                let error = JobError::new(
                    ErrorCode::Unroutable,
                    format!("no queue is bound to routing key '{routing_key}'"),
                );
                self.refuse(failed(JobStatus::Failed, error)).await;
            }
            Err(error) => {
                tracing::error!(%error, "forwarding failed; requeueing the job");
                self.settle_requeue().await;
            }
        }
    }

    /// The last step of a job that ended (or moved elsewhere): the ack.
    pub(super) async fn settle_ack(self) {
        self.delivery.ack().await;
    }

    /// The job goes back to its queue, to run again.
    pub(super) async fn settle_requeue(self) {
        self.delivery.requeue().await;
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
