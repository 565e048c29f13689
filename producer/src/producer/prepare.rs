//! Checking a job request and turning it into what is published: the
//! registry check, every limit a client's numbers must respect, the body and
//! the AMQP properties.
//!
//! All of it runs before anything is written, so a refused job leaves no
//! record, and nothing a client sends reaches RabbitMQ in a form the broker
//! would refuse by closing the publishing channel every submission shares.

use gpuq_common::artifacts::FetchLimits;
use gpuq_common::fair_share::SubQueue;
use gpuq_common::webhook::{check_events, check_url, WebhookRequest};
use gpuq_common::wire::{
    validate_job_id, validate_tenant, value_map_to_json_string, Encoding, DEFAULT_TENANT,
    SCHEMA_VERSION,
};
use gpuq_common::{ErrorCode, JobError, JobMessage, Names, ValueMap};

use super::{JobRequest, Producer, SubmitError};

/// A client's duration must be 1 s to `jobs.max_timeout_s`: it is multiplied
/// into milliseconds and handed to RabbitMQ, which refuses absurd values by
/// closing the channel every submission shares.
fn check_duration_s(key: &str, value: Option<u64>, max_s: u64) -> Result<(), SubmitError> {
    match value {
        Some(s) if s == 0 || s > max_s => Err(SubmitError::Invalid(JobError::new(
            ErrorCode::InvalidParameter,
            format!("{key} must be between 1 and {max_s} seconds (jobs.max_timeout_s), got {s}"),
        ))),
        _ => Ok(()),
    }
}

/// A checked job, ready to publish.
pub(super) struct PreparedJob {
    pub(super) message: JobMessage,
    pub(super) body: Vec<u8>,
    /// Where it is published: the jobs exchange and the feature's (or
    /// pinned model's) routing key, or, for a sub-queue, the default
    /// exchange and the sub-queue's name.
    pub(super) exchange: String,
    pub(super) routing_key: String,
    /// The sub-queue it waits in, to declare before the publish; `None` for
    /// the model's own queue.
    pub(super) sub_queue: Option<SubQueueTarget>,
    pub(super) properties: crate::amqp::JobProperties,
    /// The priority the request asked for, when its tenant's `max_priority`
    /// lowered it (the message carries the lowered one).
    pub(super) priority_lowered_from: Option<u8>,
    /// The inputs as JSON for the record, when small enough.
    pub(super) inputs_json: Option<String>,
}

/// A sub-queue a job is published to (see `gpuq_common::fair_share`).
#[derive(Clone)]
pub(super) struct SubQueueTarget {
    pub(super) model: String,
    pub(super) sub: SubQueue,
}

impl Producer {
    /// Checks the request against the registry (when there is one).
    fn check(&self, request: &JobRequest) -> Result<(), SubmitError> {
        let registry = self.config.registry();
        if registry.is_empty() {
            return Ok(());
        }
        if registry.default_model(&request.feature).is_none() {
            return Err(SubmitError::UnknownFeature {
                feature: request.feature.clone(),
                known: registry.features().map(str::to_owned).collect(),
            });
        }
        if let Some(model) = &request.model {
            if registry
                .model(model)
                .is_none_or(|m| m.feature != request.feature)
            {
                return Err(SubmitError::UnknownModel {
                    model: model.clone(),
                    feature: request.feature.clone(),
                    known: registry
                        .models_for(&request.feature)
                        .map(|m| m.id.clone())
                        .collect(),
                });
            }
        }
        Ok(())
    }

    /// A job's webhook must pass the URL rules of `[webhooks]` (https, an
    /// allowed host with a secret) and name known events; refused at submit,
    /// never discovered when the job ends.
    fn check_webhook(
        &self,
        webhook: Option<WebhookRequest>,
    ) -> Result<Option<WebhookRequest>, SubmitError> {
        let Some(webhook) = webhook else {
            return Ok(None);
        };
        let invalid = |e: gpuq_common::webhook::WebhookError| {
            SubmitError::Invalid(JobError::new(ErrorCode::InvalidParameter, e.to_string()))
        };
        check_url(&self.config.webhooks, &webhook.url).map_err(invalid)?;
        check_events(&webhook.events).map_err(invalid)?;
        Ok(Some(webhook))
    }

    /// Checks a request and builds its message, body and AMQP properties.
    pub(super) fn prepare(
        &self,
        request: JobRequest,
        created_ms: u64,
    ) -> Result<PreparedJob, SubmitError> {
        self.check(&request)?;
        let job_id = request
            .job_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        validate_job_id(&job_id).map_err(SubmitError::Invalid)?;
        if request.priority.is_some_and(|p| p > 9) {
            return Err(SubmitError::Invalid(JobError::new(
                ErrorCode::InvalidParameter,
                "priority must be 0 to 9",
            )));
        }
        let tenant = request
            .tenant
            .unwrap_or_else(|| self.config.jobs.default_tenant.clone());
        validate_tenant(&tenant).map_err(SubmitError::Invalid)?;
        // Above the tenant's `max_priority`: lowered to it, and the record says so.
        let max_priority = self.config.tenants.limits(&tenant).max_priority;
        let (priority, priority_lowered_from) = match (request.priority, max_priority) {
            (Some(asked), Some(max)) if asked > max => (Some(max), Some(asked)),
            (asked, _) => (asked, None),
        };
        let max_s = self.config.jobs.max_timeout_s;
        check_duration_s("timeout_s", request.timeout_s, max_s)?;
        check_duration_s("queue_timeout_s", request.queue_timeout_s, max_s)?;
        // A malformed reference, or too many, would end `invalid_input` at the worker.
        gpuq_common::artifacts::check_reference_count(
            &request.inputs,
            &FetchLimits::from_config(&self.config),
        )
        .map_err(|e| SubmitError::Invalid(JobError::new(ErrorCode::InvalidInput, e.to_string())))?;
        let webhook = self.check_webhook(request.webhook)?;
        let mut message = JobMessage {
            schema_version: SCHEMA_VERSION,
            job_id,
            feature: request.feature,
            model: request.model,
            inputs: request.inputs,
            priority,
            timeout_s: request.timeout_s,
            metadata: request.metadata,
            submitted_at_ms: Some(created_ms),
            queue_timeout_s: request
                .queue_timeout_s
                .or(Some(self.config.jobs.queue_timeout_s))
                .filter(|s| *s > 0),
            submitted_by: request.submitted_by,
            tenant: Some(tenant),
            webhook,
        };
        let body = Encoding::Msgpack.encode(&message).map_err(|e| {
            SubmitError::Invalid(JobError::new(ErrorCode::InvalidInput, e.to_string()))
        })?;
        // A small copy for the record (job page, re-submit); then the body
        // carries the inputs: holding them twice until the confirm is waste.
        let limit = self.config.jobs.record_inputs_max_bytes;
        let inputs_json = (limit > 0)
            .then(|| value_map_to_json_string(&message.inputs))
            .filter(|json| json.len() <= limit);
        message.inputs = ValueMap::new();
        if body.len() as u64 > self.config.queues.max_message_bytes {
            return Err(SubmitError::Invalid(JobError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "job body is {} bytes; the limit is {}",
                    body.len(),
                    self.config.queues.max_message_bytes
                ),
            )));
        }
        let (exchange, routing_key, sub_queue) = self.route(&message);
        let properties = crate::amqp::job_properties(&message, created_ms);
        Ok(PreparedJob {
            message,
            body,
            exchange,
            routing_key,
            sub_queue,
            properties,
            priority_lowered_from,
            inputs_json,
        })
    }

    /// Where a job is published. A job of the default tenant at `normal`
    /// goes through the jobs exchange to its model's own queue, as any
    /// client's would; any other waits in its model's sub-queue (a queue
    /// per priority level, and per tenant with `tenants.fair_share`), which
    /// needs the model: without a registry the producer cannot name it, and
    /// the job takes the exchange route too.
    fn route(&self, message: &JobMessage) -> (String, String, Option<SubQueueTarget>) {
        let tenant = message.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
        let sub = SubQueue::for_job(tenant, message.priority, self.config.tenants.fair_share);
        let registry = self.config.registry();
        let model = match &message.model {
            Some(model) => registry.model(model),
            None => registry.default_model(&message.feature),
        };
        match model {
            Some(model) if !sub.is_main() => (
                String::new(),
                sub.queue_name(&self.names, &model.id),
                Some(SubQueueTarget {
                    model: model.id.clone(),
                    sub,
                }),
            ),
            _ => {
                let (exchange, routing_key) = self.exchange_route(message);
                (exchange, routing_key, None)
            }
        }
    }

    /// The route through the jobs exchange to the model's own queue.
    pub(super) fn exchange_route(&self, message: &JobMessage) -> (String, String) {
        let routing_key = match &message.model {
            Some(model) => Names::pinned_routing_key(&message.feature, model),
            None => Names::feature_routing_key(&message.feature),
        };
        (self.names.jobs_exchange(), routing_key)
    }
}
