//! Every AMQP and Redis name gpuq uses, derived from one namespace.
//!
//! Keeping the naming in one place is what lets other clients (pika, redis-cli, a
//! dashboard) find things, and lets tests run side by side under their own
//! namespace. AMQP names use `.` as separator, Redis keys use `:`.

/// Names for one namespace (config key `namespace`, default `gpuq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    namespace: String,
}

impl Names {
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Durable direct exchange that every job is published to.
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.namespace)
    }

    /// Exchange that receives rejected and unusable messages.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.namespace)
    }

    /// Queue bound to the dead-letter exchange with `#`-like catch-all binding.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    /// Queue where a failed attempt waits out its back-off before going back to
    /// the model's queue (per-message TTL, then dead-lettered to it).
    pub fn retry_queue(&self, model_id: &str) -> String {
        format!("{}.retry.{model_id}", self.namespace)
    }

    /// Second copy of every dead letter, consumed by dispatchers to record the
    /// fate of jobs the broker dead-lettered (expired, delivery limit).
    pub fn dead_letter_events_queue(&self) -> String {
        format!("{}.dead.events", self.namespace)
    }

    /// Durable queue of webhook deliveries ([`crate::webhook::WebhookDelivery`],
    /// JSON): workers publish to it, the dispatchers' senders consume it.
    pub fn webhooks_queue(&self) -> String {
        format!("{}.webhooks", self.namespace)
    }

    /// Queue where a failed webhook delivery waits `delay_s` seconds (queue
    /// TTL) before the broker dead-letters it back to [`Self::webhooks_queue`].
    pub fn webhooks_retry_queue(&self, delay_s: u64) -> String {
        format!("{}.webhooks.retry.{delay_s}", self.namespace)
    }

    /// Webhook deliveries given up on (too old, or refused for good), for people.
    pub fn webhooks_dead_queue(&self) -> String {
        format!("{}.webhooks.dead", self.namespace)
    }

    /// Pub/sub channel carrying cancel requests (job ids).
    pub fn cancel_channel(&self) -> String {
        format!("{}:cancel", self.namespace)
    }

    /// Durable queue holding the jobs of one model.
    pub fn model_queue(&self, model_id: &str) -> String {
        format!("{}.model.{model_id}", self.namespace)
    }

    /// Redis set of a model's sub-queues in use (`<level>/<tenant>`; see
    /// `crate::fair_share`).
    pub fn sub_queues_key(&self, model_id: &str) -> String {
        format!("{}:subqueues:{model_id}", self.namespace)
    }

    /// Routing key that reaches a feature's default model.
    pub fn feature_routing_key(feature: &str) -> String {
        feature.to_owned()
    }

    /// Routing key that reaches one model of a feature.
    pub fn pinned_routing_key(feature: &str, model_id: &str) -> String {
        format!("{feature}.{model_id}")
    }

    /// Hash with a job's status, timings, error and result.
    pub fn job_key(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}", self.namespace)
    }

    /// Hash about one stored artifact: `owner`, the gateway token name that
    /// uploaded it or whose job produced it. Expires with the artifact.
    pub fn artifact_key(&self, artifact_id: &str) -> String {
        format!("{}:artifact:{artifact_id}", self.namespace)
    }

    /// Sorted set of job ids by creation time (unix ms): the recent-jobs index,
    /// trimmed to `jobs.finished_ttl_s`.
    pub fn jobs_index(&self) -> String {
        format!("{}:jobs", self.namespace)
    }

    /// Sorted set of the ids of jobs whose status is `status`, by creation
    /// time; kept by every script that changes a status (see `job_index`).
    pub fn jobs_by_status(&self, status: &str) -> String {
        format!("{}:jobs:status:{status}", self.namespace)
    }

    /// Sorted set of the ids of one feature's jobs, by creation time.
    pub fn jobs_by_feature(&self, feature: &str) -> String {
        format!("{}:jobs:feature:{feature}", self.namespace)
    }

    /// Sorted set of the ids of the jobs one gateway token submitted, by creation time.
    pub fn jobs_by_submitter(&self, submitted_by: &str) -> String {
        format!("{}:jobs:by:{submitted_by}", self.namespace)
    }

    /// Sorted set of the ids of one tenant's jobs, by creation time.
    pub fn jobs_by_tenant(&self, tenant: &str) -> String {
        format!("{}:jobs:tenant:{tenant}", self.namespace)
    }

    /// Hash of one tenant's job counts by status (`queued`, `processing`):
    /// kept by the record scripts in the step that changes a record's
    /// status, read by the quota check of a new job's `queued` record.
    pub fn tenant_load_key(&self, tenant: &str) -> String {
        format!("{}:tenant_load:{tenant}", self.namespace)
    }

    /// Hash of one tenant's submit token bucket (`tokens`, `ts_us`), shared by
    /// every gateway and producer of the namespace
    /// (`tenants.<name>.rate_per_s`); expires once it would be full again.
    pub fn tenant_bucket_key(&self, tenant: &str) -> String {
        format!("{}:tenant_bucket:{tenant}", self.namespace)
    }

    /// Pub/sub channel carrying every status transition as JSON.
    pub fn events_channel(&self) -> String {
        format!("{}:events", self.namespace)
    }

    /// Hash describing one worker process; expires unless its heartbeat renews it.
    pub fn worker_key(&self, worker_id: &str) -> String {
        format!("{}:worker:{worker_id}", self.namespace)
    }

    /// Set of worker ids that have announced themselves (entries may have expired).
    pub fn workers_set(&self) -> String {
        format!("{}:workers", self.namespace)
    }

    /// Hash describing one dispatcher host; expires unless its heartbeat renews it.
    pub fn host_key(&self, host_id: &str) -> String {
        format!("{}:host:{host_id}", self.namespace)
    }

    /// String: JSON [`crate::host_lease::HostLeaseHolder`] of the one
    /// dispatcher running under `host_id`; it expires unless that dispatcher
    /// renews it.
    pub fn host_lease(&self, host_id: &str) -> String {
        format!("{}:host:{host_id}:lease", self.namespace)
    }

    /// Set of host ids that have announced themselves (entries may have expired).
    pub fn hosts_set(&self) -> String {
        format!("{}:hosts", self.namespace)
    }

    /// Capped list of recent dead-lettered messages, newest first, as JSON.
    pub fn dead_letters_list(&self) -> String {
        format!("{}:dead", self.namespace)
    }

    /// String naming the dispatcher that places models for the whole
    /// namespace; it expires unless that dispatcher renews it.
    pub fn placement_lease(&self) -> String {
        format!("{}:placement:lease", self.namespace)
    }

    /// JSON [`crate::record::Assignment`]: the queues a worker consumes;
    /// expires unless the placing dispatcher renews it.
    pub fn assignment_key(&self, worker_id: &str) -> String {
        format!("{}:assignment:{worker_id}", self.namespace)
    }

    /// Pub/sub channel carrying the id of each worker whose assignment changed.
    pub fn assignments_channel(&self) -> String {
        format!("{}:assignments", self.namespace)
    }

    /// Pub/sub channel where a worker that ran out of jobs announces its id,
    /// so the placing dispatcher decides again at once.
    pub fn idle_channel(&self) -> String {
        format!("{}:idle", self.namespace)
    }

    /// Hash of measured model VRAM, `<model>/<worker>` to JSON
    /// [`crate::vram::ModelVram`] (each field written by its worker only).
    pub fn model_vram(&self) -> String {
        format!("{}:model_vram", self.namespace)
    }

    /// Hash of measured model VRAM merged over workers, model id to JSON
    /// [`crate::vram::ModelVram`]; written only by the placing dispatcher
    /// (`crate::vram::stored`), expiring when none renews it.
    pub fn model_vram_merged(&self) -> String {
        format!("{}:model_vram_merged", self.namespace)
    }

    /// Hash of measured model timings, model id to JSON [`crate::record::ModelTimings`].
    pub fn model_timings(&self) -> String {
        format!("{}:model_timings", self.namespace)
    }

    /// Pattern matching every Redis key of this namespace.
    pub fn redis_pattern(&self) -> String {
        format!("{}:*", self.namespace)
    }
}

/// Fields of the job hash (`<namespace>:job:<id>`); see docs/protocol.md.
pub mod job_field {
    pub const STATUS: &str = "status";
    pub const FEATURE: &str = "feature";
    pub const MODEL: &str = "model";
    pub const WORKER: &str = "worker";
    pub const HOST: &str = "host";
    pub const GPU: &str = "gpu";
    pub const ATTEMPTS: &str = "attempts";
    pub const PROGRESS: &str = "progress";
    pub const CREATED_MS: &str = "created_ms";
    pub const STARTED_MS: &str = "started_ms";
    pub const FINISHED_MS: &str = "finished_ms";
    pub const ERROR_CODE: &str = "error_code";
    pub const ERROR_MESSAGE: &str = "error_message";
    pub const RESULT: &str = "result";
    pub const METADATA: &str = "metadata";
    /// The job's inputs as JSON, when the producer recorded them
    /// (`jobs.record_inputs_max_bytes`).
    pub const INPUTS: &str = "inputs";
    /// Name of the gateway token that submitted the job (absent for other publishers).
    pub const SUBMITTED_BY: &str = "submitted_by";
    /// The tenant the job belongs to (`default` when it named none); absent
    /// on records written before tenants, and on a job refused for an
    /// invalid tenant.
    pub const TENANT: &str = "tenant";
    /// The job's priority (0 to 9) after `tenants.<name>.max_priority`;
    /// absent when the job asked for none.
    pub const PRIORITY: &str = "priority";
    /// The priority the job asked for, when its tenant's `max_priority`
    /// lowered it; absent otherwise.
    pub const PRIORITY_LOWERED_FROM: &str = "priority_lowered_from";
    /// A `reply_to` the worker refused to answer (not direct reply-to, nor
    /// under `jobs.reply_prefix`); absent when there was none.
    pub const REPLY_TO_IGNORED: &str = "reply_to_ignored";
}

/// Headers added to a dead-lettered message.
pub mod dead_letter_header {
    pub const ERROR_CODE: &str = "x-gpuq-error-code";
    pub const ERROR_MESSAGE: &str = "x-gpuq-error";
    pub const SOURCE_QUEUE: &str = "x-gpuq-source-queue";
    pub const WORKER: &str = "x-gpuq-worker";
}

/// Headers the webhook sender puts on a delivery it parks for a retry or
/// gives up on (the body, a `crate::webhook::WebhookDelivery`, never changes).
pub mod webhook_header {
    /// Attempts made so far (an integer); absent before the first.
    pub const ATTEMPT: &str = "x-gpuq-attempt";
    /// Why the latest attempt failed.
    pub const LAST_ERROR: &str = "x-gpuq-last-error";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_scheme() {
        let names = Names::new("gpuq");
        assert_eq!(names.jobs_exchange(), "gpuq.jobs");
        assert_eq!(names.model_queue("trellis"), "gpuq.model.trellis");
        assert_eq!(names.dead_letter_queue(), "gpuq.dead");
        assert_eq!(
            Names::pinned_routing_key("mesh_segmentation", "partfield"),
            "mesh_segmentation.partfield"
        );
        assert_eq!(names.job_key("abc"), "gpuq:job:abc");
        assert_eq!(names.events_channel(), "gpuq:events");
        assert_eq!(names.worker_key("h-gpu0-slot0"), "gpuq:worker:h-gpu0-slot0");
        assert_eq!(names.redis_pattern(), "gpuq:*");
        assert_eq!(names.jobs_by_status("failed"), "gpuq:jobs:status:failed");
        assert_eq!(names.jobs_by_feature("echo"), "gpuq:jobs:feature:echo");
        assert_eq!(names.jobs_by_submitter("alice"), "gpuq:jobs:by:alice");
        assert_eq!(names.jobs_by_tenant("acme"), "gpuq:jobs:tenant:acme");
        assert_eq!(names.tenant_load_key("acme"), "gpuq:tenant_load:acme");
        assert_eq!(names.tenant_bucket_key("acme"), "gpuq:tenant_bucket:acme");
        assert_eq!(names.assignment_key("w"), "gpuq:assignment:w");
        assert_eq!(names.placement_lease(), "gpuq:placement:lease");
        assert_eq!(names.host_lease("host-a"), "gpuq:host:host-a:lease");
    }

    #[test]
    fn webhook_queue_names() {
        let names = Names::new("gpuq");
        assert_eq!(names.webhooks_queue(), "gpuq.webhooks");
        assert_eq!(names.webhooks_retry_queue(64), "gpuq.webhooks.retry.64");
        assert_eq!(names.webhooks_dead_queue(), "gpuq.webhooks.dead");
    }
}
