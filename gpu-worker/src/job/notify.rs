//! A job's webhook: when the job reaches a status its webhook wants, the
//! worker publishes a `WebhookDelivery` to `<ns>.webhooks` (confirmed,
//! persistent) in the same step that ends it: after the outcome is stored,
//! before the ack. A dispatcher's sender POSTs it (`dispatcher/src/webhooks`).
//!
//! At least once: a worker that dies between the outcome and the publish
//! leaves the job unacked; its redelivery finds the record final and
//! publishes again (`notify_again`), with the same Standard Webhooks id
//! (`"{job_id}.{status}"`), so a receiver drops the duplicate. A webhook
//! never changes the job: when the queue does not exist (no dispatcher runs
//! a sender) the delivery is dropped with a WARN, and the job ends as it
//! would have.

use gpuq_common::webhook::{WebhookDelivery, WebhookRequest};
use gpuq_common::wire::value_map_to_json_string;
use gpuq_common::{now_ms, JobError, JobStatus, ValueMap};
use serde_json::{json, Value};

use super::InFlight;
use crate::amqp::BrokerError;

/// Largest result carried in a webhook's payload, bytes of JSON; a larger
/// one is left out (`result_omitted`), for the receiver to fetch.
const MAX_RESULT_JSON: usize = 64 * 1024;

/// What a webhook says about the job.
pub(super) struct Announced<'a> {
    pub status: JobStatus,
    pub error: Option<&'a JobError>,
    /// The outputs, as JSON, for a completed job (when at hand).
    pub result: Option<Value>,
    pub attempt: Option<u32>,
}

impl InFlight<'_> {
    /// The job's webhook: its own, else `webhooks.default`.
    fn webhook(&self) -> Option<&WebhookRequest> {
        self.job
            .webhook
            .as_ref()
            .or(self.ctx.config.webhooks.default.as_ref())
    }

    /// Publishes the webhook for `announced.status` if the job's webhook
    /// wants it. `Err` only when the broker failed: the caller requeues the
    /// job, and its redelivery publishes again.
    pub(super) async fn notify(&self, announced: Announced<'_>) -> Result<(), BrokerError> {
        let Some(webhook) = self.webhook() else {
            return Ok(());
        };
        let status = announced.status.as_str();
        if !webhook.wants(status) {
            return Ok(());
        }
        let payload = self.payload(&announced);
        let delivery =
            WebhookDelivery::new(&self.job.job_id, status, &webhook.url, payload, now_ms());
        if !self.ctx.broker.publish_webhook(&delivery).await? {
            tracing::warn!(
                event = status,
                "webhook not queued: no dispatcher has declared the webhooks queue (webhooks.allow_hosts empty there?)"
            );
        } else {
            tracing::debug!(event = status, "webhook queued");
        }
        Ok(())
    }

    /// The redelivery of a job that already ended: publishes its final
    /// status's webhook again, from the record (the first delivery may have
    /// died before publishing it). Best effort, like `reply_again`.
    pub(super) async fn notify_again(&self, status: JobStatus) {
        let Some(webhook) = self.webhook() else {
            return;
        };
        if !webhook.wants(status.as_str()) {
            return;
        }
        let record = self.ctx.store.recorded_outcome(&self.job.job_id).await;
        let record = record.ok().flatten();
        let error = record.as_ref().and_then(|r| r.error.clone());
        let announced = Announced {
            status,
            error: error.as_ref(),
            result: record.and_then(|r| r.result),
            attempt: None,
        };
        if let Err(error) = self.notify(announced).await {
            tracing::warn!(%error, "webhook not queued again");
        }
    }

    /// The POSTed JSON: `{"type": "job.<status>", "timestamp_ms", "data": {...}}`.
    fn payload(&self, announced: &Announced<'_>) -> Value {
        let job = &self.job;
        let mut data = json!({
            "job_id": job.job_id,
            "status": announced.status.as_str(),
            "feature": job.feature,
            "model": self.model.id,
            "tenant": self.tenant(),
            "attempt": announced.attempt,
            "worker": self.ctx.worker_id,
        });
        if let Some(error) = announced.error {
            data["error"] = json!({"code": error.code.to_string(), "message": error.message});
        }
        if let Some(result) = &announced.result {
            if result.to_string().len() <= MAX_RESULT_JSON {
                data["result"] = result.clone();
            } else {
                data["result_omitted"] = json!(true);
            }
        }
        json!({
            "type": format!("job.{}", announced.status.as_str()),
            "timestamp_ms": now_ms(),
            "data": data,
        })
    }
}

/// A job's outputs as webhook JSON.
pub(super) fn result_json(result: Option<&ValueMap>) -> Option<Value> {
    let result = result?;
    serde_json::from_str(&value_map_to_json_string(result)).ok()
}
