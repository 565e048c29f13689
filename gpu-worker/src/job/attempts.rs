//! The attempt count and its limits: the claim that starts an attempt, the
//! retry after a retryable failure (with back-off), and giving up once
//! `jobs.max_attempts` is spent.

use std::time::Duration;

use gpuq_common::job_record::scripts::Claimant;
use gpuq_common::wire::value_map_to_json_string;
use gpuq_common::{ErrorCode, JobError, JobStatus, StatusEvent};

use super::notify::Announced;
use super::record::{failed, with_retries};
use super::InFlight;
use crate::amqp::Delivery;
use crate::store::{Claim, Outcome};

/// Back-off before attempt `attempt + 1`: `retry_backoff_s`, doubling, capped.
pub fn retry_backoff(jobs: &gpuq_common::config::JobsConfig, attempt: u32) -> Duration {
    let factor = 2u64.saturating_pow(attempt.saturating_sub(1));
    Duration::from_secs(
        jobs.retry_backoff_s
            .saturating_mul(factor)
            .min(jobs.retry_backoff_max_s),
    )
}

/// What a claim did with a job.
// Moved once, from the claim to `process`: boxing the job would cost an
// allocation per job on the hot path to save a copy of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
pub(super) enum Claimed<'a> {
    /// Ours to run: the job and its attempt number.
    Run(InFlight<'a>, u32),
    /// Acked or requeued: nothing more to do.
    Settled,
    /// Not claimed (its tenant is at `max_running`): hold it again.
    GivenBack(Delivery),
}

impl<'a> InFlight<'a> {
    /// Claims the job in Redis: the job and its attempt number; or the
    /// delivery was settled instead (acked: the job had ended; requeued:
    /// Redis is down); or, its tenant at `max_running`, the delivery to hold
    /// until the tenant may run again.
    pub(super) async fn claim(self) -> Claimed<'a> {
        let ctx = self.ctx;
        let job = &self.job;
        let metadata_json =
            (!job.metadata.is_empty()).then(|| value_map_to_json_string(&job.metadata));
        let tenant = job.tenant().ok();
        let limits = tenant.and_then(|t| ctx.config.tenants.named.get(t));
        let claimant = Claimant {
            feature: &job.feature,
            model: &self.model.id,
            worker: &ctx.worker_id,
            host: &ctx.host_id,
            gpu: &ctx.gpu,
            metadata_json: metadata_json.as_deref(),
            tenant,
            max_running: limits.and_then(|l| l.max_running),
            max_queued: limits.and_then(|l| l.max_queued),
        };
        let claimed = with_retries(self.redis_retry(), || {
            ctx.store.claim(&job.job_id, &claimant)
        })
        .await;
        match claimed {
            Ok(Claim::Run { attempt }) => {
                tracing::debug!(attempt, "job claimed");
                let processing = Announced {
                    status: JobStatus::Processing,
                    error: None,
                    result: None,
                    attempt: Some(attempt),
                };
                // Best effort: a `processing` webhook never holds the job back.
                if let Err(error) = self.notify(processing).await {
                    tracing::warn!(%error, "processing webhook not queued");
                }
                Claimed::Run(self, attempt)
            }
            Ok(Claim::TenantBusy) => {
                tracing::debug!("tenant at max_running; the job waits");
                Claimed::GivenBack(self.delivery)
            }
            Ok(Claim::QuotaExceeded) => {
                let tenant = tenant.unwrap_or_default().to_owned();
                let error = JobError::new(
                    ErrorCode::QuotaExceeded,
                    format!("tenant '{tenant}' has its tenants.{tenant}.max_queued jobs waiting; a job published straight to AMQP past it is not run"),
                );
                self.refuse(failed(JobStatus::Failed, error)).await;
                Claimed::Settled
            }
            Ok(Claim::AlreadyFinal(status)) => {
                tracing::info!(%status, "job already final; acking the redelivery without running it");
                // Its first delivery may have lost its reply with its connection.
                self.reply_again().await;
                self.notify_again(status).await;
                self.settle_ack().await;
                Claimed::Settled
            }
            Err(error) => {
                tracing::error!(%error, "cannot claim the job in redis; requeueing it");
                self.settle_requeue().await;
                Claimed::Settled
            }
        }
    }

    /// The error that ends a job whose worker died on each of its attempts.
    pub(super) fn out_of_attempts(&self, attempt: u32) -> Option<JobError> {
        let max_attempts = self.ctx.config.jobs.max_attempts;
        (attempt > max_attempts).then(|| {
            JobError::new(
                ErrorCode::TooManyAttempts,
                format!(
                    "the job was started {} time(s) without finishing (jobs.max_attempts = {max_attempts}); its worker died each time",
                    attempt - 1
                ),
            )
        })
    }

    /// After the run: a retryable failure goes back to its queue (or, out of
    /// attempts, is given up); anything else is recorded, then acked.
    pub(super) async fn conclude(self, outcome: Outcome, attempt: u32) {
        let max_attempts = self.ctx.config.jobs.max_attempts;
        let retryable = outcome
            .error
            .as_ref()
            .filter(|e| outcome.status == JobStatus::Failed && e.code.is_retryable());
        let Some(error) = retryable else {
            return self.record(outcome, Some(attempt)).await;
        };
        if attempt < max_attempts {
            let error = error.clone();
            return self.retry_later(&error, attempt).await;
        }
        let error = JobError::new(
            ErrorCode::TooManyAttempts,
            format!(
                "failed {attempt} time(s) (jobs.max_attempts = {max_attempts}); last error: {}: {}",
                error.code, error.message
            ),
        );
        self.give_up(error, attempt).await;
    }

    /// A retryable failure with attempts left: mark the job queued again with
    /// the error, park a copy in the model's retry queue for the back-off (the
    /// broker moves it back when it expires), then ack this delivery.
    async fn retry_later(self, error: &JobError, attempt: u32) {
        let ctx = self.ctx;
        let backoff = retry_backoff(&ctx.config.jobs, attempt);
        tracing::warn!(attempt, backoff_s = backoff.as_secs(), code = %error.code, message = %error.message, "retryable failure; retrying after a back-off");
        let event = StatusEvent {
            feature: Some(self.job.feature.clone()),
            model: Some(self.model.id.clone()),
            worker: Some(ctx.worker_id.clone()),
            attempt: Some(attempt),
            error: Some(error.clone()),
            tenant: self.tenant(),
            ..StatusEvent::new(self.job.job_id.clone(), JobStatus::Queued)
        };
        let job_id = &self.job.job_id;
        let marked = with_retries(self.redis_retry(), || {
            ctx.store.mark_retrying(job_id, &event, backoff)
        })
        .await;
        if let Err(store_error) = marked {
            tracing::error!(error = %store_error, "cannot record the retry in redis; requeueing the job");
            return self.settle_requeue().await;
        }
        let retry_queue = ctx.names.retry_queue(&self.model.id);
        match ctx.broker.park(&retry_queue, &self.delivery, backoff).await {
            Ok(()) => self.settle_ack().await,
            Err(broker_error) => {
                tracing::error!(error = %broker_error, "cannot park the job for its retry; requeueing it now");
                self.settle_requeue().await;
            }
        }
    }

    /// The job used up its attempts: copy it to the dead-letter queue with
    /// the reason, record it failed, then ack.
    pub(super) async fn give_up(self, error: JobError, attempt: u32) {
        let ctx = self.ctx;
        tracing::error!(attempt, code = %error.code, message = %error.message, "giving up on the job");
        let source_queue = ctx.names.model_queue(&self.model.id);
        if let Err(broker_error) = ctx
            .broker
            .dead_letter(&self.delivery, &source_queue, &error, &ctx.worker_id)
            .await
        {
            tracing::warn!(error = %broker_error, "dead-letter copy not published");
        }
        self.record(failed(JobStatus::Failed, error), Some(attempt))
            .await;
    }
}
