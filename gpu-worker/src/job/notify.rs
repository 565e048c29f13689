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

use gpuq_common::webhook::payload::JobEvent;
use gpuq_common::webhook::{WebhookDelivery, WebhookRequest};
use gpuq_common::wire::value_map_to_json_string;
use gpuq_common::{now_ms, JobError, JobStatus, ValueMap};
use serde_json::Value;

use super::InFlight;
use crate::amqp::BrokerError;

/// What a webhook says about the job.
pub(super) struct Announced<'a> {
    pub status: JobStatus,
    pub error: Option<&'a JobError>,
    /// The outputs, as JSON, for a completed job (when at hand).
    pub result: Option<Value>,
    pub attempt: Option<u32>,
}

impl InFlight<'_> {
    /// The job's webhook: its own, else its tenant's, else `webhooks.default`.
    fn webhook(&self) -> Option<&WebhookRequest> {
        let config = &self.ctx.config;
        let tenant = self.job.tenant().ok();
        self.job
            .webhook
            .as_ref()
            .or_else(|| config.tenants.named.get(tenant?)?.webhook.as_ref())
            .or(config.webhooks.default.as_ref())
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

    /// The POSTed JSON (`gpuq_common::webhook::payload`).
    fn payload(&self, announced: &Announced<'_>) -> Value {
        let tenant = self.tenant();
        JobEvent {
            job_id: &self.job.job_id,
            status: announced.status,
            feature: &self.job.feature,
            model: Some(&self.model.id),
            tenant: tenant.as_deref(),
            attempt: announced.attempt,
            worker: Some(&self.ctx.worker_id),
            error: announced.error,
            result: announced.result.as_ref(),
        }
        .payload(now_ms())
    }
}

/// A job's outputs as webhook JSON.
pub(super) fn result_json(result: Option<&ValueMap>) -> Option<Value> {
    let result = result?;
    serde_json::from_str(&value_map_to_json_string(result)).ok()
}
