//! The first step: bytes to a job, or, for a body that cannot be a job, the
//! dead-letter path (a copy in the dead-letter queue with the reason in its
//! headers, a note in Redis and, when the message id is a job id, a failed
//! record), then the ack.

use gpuq_common::wire::{validate_job_id, Encoding};
use gpuq_common::{now_ms, ErrorCode, JobError, JobMessage, JobStatus, StatusEvent};

use super::record::{failed, with_retries};
use super::{InFlight, Received};

impl<'a> Received<'a> {
    /// The delivery as an in-flight job; `None` when the body is no job, in
    /// which case it has been dead-lettered and settled.
    pub(super) async fn decode(self) -> Option<InFlight<'a>> {
        match self.parse() {
            Ok((job, encoding)) => Some(InFlight {
                ctx: self.ctx,
                model: self.model,
                delivery: self.delivery,
                job,
                encoding,
            }),
            Err(error) => {
                self.dead_letter(error).await;
                None
            }
        }
    }

    fn parse(&self) -> Result<(JobMessage, Encoding), JobError> {
        let delivery = &self.delivery;
        let content_type = delivery.content_type();
        let max_bytes = self.ctx.config.queues.max_message_bytes;
        if delivery.body().len() as u64 > max_bytes {
            return Err(JobError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "job body is {} bytes; the limit (queues.max_message_bytes) is {max_bytes}",
                    delivery.body().len()
                ),
            ));
        }
        let (job, encoding) = JobMessage::decode_with_encoding(
            content_type,
            delivery.body(),
            self.message_id.as_deref(),
        )?;
        let span = tracing::Span::current();
        if self.message_id.is_none() {
            span.record("job_id", job.job_id.as_str());
        }
        span.record("feature", job.feature.as_str());
        Ok((job, encoding))
    }

    /// A message that is not a usable job: copy it to the dead-letter queue
    /// with the reason, note it in Redis (and on the job, when its id is
    /// known), then ack.
    async fn dead_letter(self, error: JobError) {
        let ctx = self.ctx;
        let retry = std::time::Duration::from_secs(ctx.config.worker.redis_retry_s);
        tracing::warn!(code = %error.code, message = %error.message, "unusable message dead-lettered");
        let source_queue = ctx.names.model_queue(&self.model.id);
        let note = serde_json::json!({
            "ts_ms": now_ms(),
            "queue": source_queue,
            "job_id": self.message_id,
            "worker": ctx.worker_id,
            "error_code": error.code,
            "error_message": error.message,
        });
        if let Err(store_error) = with_retries(retry, || ctx.store.note_dead_letter(&note)).await {
            tracing::warn!(error = %store_error, "dead letter not noted in redis");
        }
        let job_id = self
            .message_id
            .as_deref()
            .filter(|id| validate_job_id(id).is_ok());
        if let Some(job_id) = job_id {
            let event = StatusEvent {
                model: Some(self.model.id.clone()),
                worker: Some(ctx.worker_id.clone()),
                error: Some(error.clone()),
                ..StatusEvent::new(job_id.to_owned(), JobStatus::Failed)
            };
            let outcome = failed(JobStatus::Failed, error.clone());
            if let Err(store_error) =
                with_retries(retry, || ctx.store.finish(job_id, &outcome, &event)).await
            {
                tracing::warn!(error = %store_error, "failure of unusable job not recorded in redis");
            }
        }
        match ctx
            .broker
            .dead_letter(&self.delivery, &source_queue, &error, &ctx.worker_id)
            .await
        {
            Ok(()) => self.delivery.ack().await,
            // The queue's own dead-letter exchange still takes it, without our headers.
            Err(broker_error) => {
                tracing::warn!(error = %broker_error, "dead-letter publish failed; rejecting instead");
                self.delivery.reject_to_dead_letter().await;
            }
        }
    }
}
