//! The sections of `gpuq.toml`, with their defaults. Each field's doc gives
//! its meaning, unit and default; `Config::load` validates them together.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::tokens::{AccessToken, TokenEntry};

/// Kind of the per-model queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    /// Replicated across a RabbitMQ cluster, with a delivery limit. The default.
    #[default]
    Quorum,
    /// Single-node queues; they honour message priorities.
    Classic,
}

/// How processes use RabbitMQ (the nodes are `amqp_url` / `amqp_urls`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// Longest wait for the broker's confirm of one publish (jobs, forwards,
    /// replies), milliseconds, re-sends after a failover included; past it
    /// the publish is an error to the caller, never silently dropped.
    /// Default 15000.
    pub publish_timeout_ms: u64,
    /// Whether each process starts at a random node of `amqp_urls` (so a
    /// fleet's connections spread over the cluster), or at the first. After
    /// a connection loss it always tries the next node. Default true.
    pub shuffle_nodes: bool,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            publish_timeout_ms: 15_000,
            shuffle_nodes: true,
        }
    }
}

impl AmqpConfig {
    pub fn publish_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.publish_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// `quorum` (default) or `classic`.
    #[serde(rename = "type")]
    pub queue_type: QueueType,
    /// Quorum queues: deliveries of one message before the broker dead-letters it. Default 5.
    pub delivery_limit: u32,
    /// Largest accepted job body in bytes; larger ones fail `payload_too_large`. Default 16 MiB.
    pub max_message_bytes: u64,
    /// Quorum queues: replicas of each queue at creation
    /// (`x-quorum-initial-group-size`), capped by RabbitMQ at the cluster's
    /// size; 0 leaves it to the broker (all nodes). Default 3.
    pub replicas: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            queue_type: QueueType::Quorum,
            delivery_limit: 5,
            max_message_bytes: 16 * 1024 * 1024,
            replicas: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// How long a finished job's record stays in Redis, seconds. Default 86400 (24 h).
    pub finished_ttl_s: u64,
    /// Largest `timeout_s` a job may ask for, seconds. Default 86400.
    pub max_timeout_s: u64,
    /// Starts of one job (worker deaths and retryable failures included) before
    /// it ends `failed` with `too_many_attempts` and a copy in the dead-letter queue. Default 3.
    pub max_attempts: u32,
    /// Back-off before the second attempt after a retryable failure, seconds;
    /// doubles each attempt. Default 2.
    pub retry_backoff_s: u64,
    /// Longest back-off, seconds. Default 300.
    pub retry_backoff_max_s: u64,
    /// Default longest wait in the queue before a job ends `timed_out`, seconds;
    /// 0 means none. A job's `queue_timeout_s` overrides it. Default 0.
    pub queue_timeout_s: u64,
    /// Most artifact references (`{"$artifact": id}`) in one job's inputs; a
    /// job with more ends `invalid_input` before anything is fetched (and the
    /// gateway answers 422). Default 16.
    pub max_artifact_refs: usize,
    /// A job's AMQP `reply_to` is honoured only for RabbitMQ's direct reply-to
    /// (`amq.rabbitmq.reply-to*`) and for queue names starting with this prefix;
    /// any other queue gets no reply (a WARN, and `reply_to_ignored` on the
    /// job's record), so a publisher cannot make workers write into job or
    /// other clients' queues. Empty: every queue (trusted publishers only).
    /// Default `gpuq.reply.`.
    pub reply_prefix: String,
    /// Tenant of the jobs this process's library and CLI submit without
    /// one (`gpuq submit --tenant` overrides it; the gateway never uses it:
    /// its tenant is the token's name). 1 to 64 of `A-Za-z0-9._-`.
    /// Default `default`.
    pub default_tenant: String,
    /// Inputs the gpuq producer copies into the job's record (field
    /// `inputs`, JSON) when their JSON is at most this many bytes, so the job
    /// page shows them and an admin can re-submit the job; larger inputs
    /// are left out of the record (they still travel in the message).
    /// 0: never. Default 65536.
    pub record_inputs_max_bytes: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            finished_ttl_s: 86_400,
            max_timeout_s: 86_400,
            max_attempts: 3,
            retry_backoff_s: 2,
            retry_backoff_max_s: 300,
            queue_timeout_s: 0,
            max_artifact_refs: 16,
            reply_prefix: "gpuq.reply.".into(),
            default_tenant: crate::wire::DEFAULT_TENANT.into(),
            record_inputs_max_bytes: 65_536,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address `gpuq serve` listens on. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Bearer tokens accepted: strings (admin tokens) or `[[gateway.tokens]]`
    /// tables with `token`, `role` (`submit` or `admin`) and a unique `name`.
    /// Each at least 16 characters, no whitespace. Empty means no auth, which
    /// `gpuq serve` allows only on a loopback address (or with
    /// `allow_anonymous`). Env `GPUQ_GATEWAY_TOKENS` (comma-separated) adds
    /// admin tokens. Default none.
    pub tokens: Vec<TokenEntry>,
    /// Lets `gpuq serve` listen on a non-loopback address without tokens:
    /// everyone who reaches the port is admin. Default `false`.
    pub allow_anonymous: bool,
    /// Ready jobs in a model's queue above which submissions are refused with
    /// 503 and Retry-After (backpressure); 0 means no limit. Default 0.
    pub max_queue_depth: u32,
    /// Largest request body, bytes. Default 16 MiB.
    pub max_body_bytes: usize,
    /// Live event streams (`/v1/events`, `/v1/jobs/{id}/events`) one gateway
    /// serves at once; past it, 503 `too_many_streams`. Default 1024.
    pub max_streams: u32,
    /// Longest a client may take to send a request's headers, seconds; the
    /// connection is closed after it. Default 10.
    pub header_timeout_s: u64,
    /// Longest a client may take to send a request's body, seconds; the
    /// request fails after it. Default 60.
    pub body_timeout_s: u64,
    /// Tokens from `GPUQ_GATEWAY_TOKENS` (admin), kept apart so errors name
    /// their source; `Debug` redacts them.
    #[serde(skip)]
    pub env_tokens: Vec<TokenEntry>,
    /// `tokens` and `env_tokens`, validated by `Config::load`.
    #[serde(skip)]
    pub(super) access: Vec<AccessToken>,
}

impl GatewayConfig {
    /// Every accepted token with its name and role (validated at load).
    pub fn access_tokens(&self) -> &[AccessToken] {
        &self.access
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            tokens: Vec::new(),
            allow_anonymous: false,
            env_tokens: Vec::new(),
            access: Vec::new(),
            max_queue_depth: 0,
            max_body_bytes: 16 * 1024 * 1024,
            max_streams: 1024,
            header_timeout_s: 10,
            body_timeout_s: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactsConfig {
    /// Where artifacts live: `file:///dir` (one host or a shared mount) or
    /// `s3://bucket/prefix` (many hosts; build with feature `s3`).
    /// Default `file:///var/tmp/gpuq-artifacts`.
    pub url: String,
    /// Byte strings up to this size travel inline in jobs and results; larger
    /// outputs are moved to the store and referenced by id. Default 1 MiB.
    pub inline_max_bytes: u64,
    /// Store options, e.g. `aws_endpoint`, `aws_region`, `aws_allow_http` for an
    /// S3-compatible store; `AWS_*` environment variables add to them.
    pub options: BTreeMap<String, String>,
    /// Most bytes a worker fetches from the store for one job (the sum of its
    /// referenced artifacts, read with `head` before any download); a job over
    /// it ends `invalid_input`. The worker holds these bytes in memory while the
    /// job runs. Default 4 GiB.
    pub max_fetch_bytes: u64,
    /// How long an artifact lives, seconds from its upload or its last write:
    /// dispatchers delete older ones (local and S3). At least 1. Default
    /// `jobs.finished_ttl_s`, so an artifact lives as long as the job records
    /// that name it; resolved by `Config::load`.
    pub ttl_s: Option<u64>,
}

impl ArtifactsConfig {
    /// `ttl_s` as a duration (`jobs.finished_ttl_s`'s default when unresolved).
    pub fn ttl(&self) -> std::time::Duration {
        let default_s = JobsConfig::default().finished_ttl_s;
        std::time::Duration::from_secs(self.ttl_s.unwrap_or(default_s))
    }

    /// Checks `[artifacts]`; `jobs` gives the default `ttl_s`.
    pub(super) fn validate(&mut self, jobs: &JobsConfig) -> Result<(), super::ConfigError> {
        let ttl_s = *self.ttl_s.get_or_insert(jobs.finished_ttl_s);
        if ttl_s == 0 {
            return Err(super::invalid(
                "artifacts.ttl_s",
                "must be at least 1 second",
            ));
        }
        if self.max_fetch_bytes == 0 {
            return Err(super::invalid(
                "artifacts.max_fetch_bytes",
                "must be at least 1 byte",
            ));
        }
        if jobs.max_artifact_refs > 10_000 {
            return Err(super::invalid(
                "jobs.max_artifact_refs",
                "must be at most 10000",
            ));
        }
        Ok(())
    }
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        Self {
            url: "file:///var/tmp/gpuq-artifacts".into(),
            inline_max_bytes: 1024 * 1024,
            options: BTreeMap::new(),
            max_fetch_bytes: 4 * 1024 * 1024 * 1024,
            ttl_s: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Model runs one worker has at once. Default 1. A job whose run has
    /// ended records its outcome and acks beside the next run.
    pub concurrency: u32,
    /// Deliveries a worker holds per queue (AMQP prefetch); 0 means `concurrency`.
    /// `concurrency + 1` hides the broker round trip between short jobs (the
    /// held job is claimed ahead and starts the moment a slot frees), at the
    /// price of one job waiting behind a running one. Default 0.
    pub prefetch: u32,
    /// How often a worker refreshes its record in Redis, milliseconds. Default 2000.
    pub heartbeat_interval_ms: u64,
    /// After how long without a heartbeat a worker's record expires, milliseconds. Default 10000.
    pub heartbeat_ttl_ms: u64,
    /// How long a stopping worker lets in-flight jobs finish, seconds. Default 30.
    pub shutdown_grace_s: u64,
    /// How long a worker keeps retrying a job's Redis writes (holding the job,
    /// unacked) before requeueing it, seconds. Default 300.
    pub redis_retry_s: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 1,
            prefetch: 0,
            heartbeat_interval_ms: 2_000,
            heartbeat_ttl_ms: 10_000,
            shutdown_grace_s: 30,
            redis_retry_s: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherConfig {
    /// Host id in Redis and worker ids; default the machine's hostname.
    pub host_id: Option<String>,
    /// Worker processes (slots) per GPU. Default 1.
    pub workers_per_gpu: u32,
    /// Models one worker may keep loaded at once. Default 2.
    pub max_models_per_worker: u32,
    /// VRAM per GPU kept free for the driver and others, MiB. Default 512.
    pub vram_reserve_mib: u64,
    /// Path of the `gpuq-worker` binary; default: next to `gpuq-dispatcher`.
    pub worker_bin: Option<PathBuf>,
    /// First delay before restarting a worker that exited, milliseconds. Default 500.
    pub restart_backoff_initial_ms: u64,
    /// Longest delay between restarts, milliseconds. Default 30000.
    pub restart_backoff_max_ms: u64,
    /// Consecutive quick crashes (within 30 s of start) after which a slot is marked failed. Default 5.
    pub crash_loop_limit: u32,
    /// Address of the host's Prometheus `/metrics`; empty disables it.
    /// Default `127.0.0.1:9464`.
    pub metrics_listen: String,
    /// Serve only these models on this host (default: every model that fits).
    pub models: Option<Vec<String>>,
    /// GPUs declared by hand, used where NVML is unavailable.
    pub gpus: Vec<DeclaredGpu>,
    /// Explicit slots; a GPU with any replaces its `workers_per_gpu` equal slots.
    pub slots: Vec<SlotConfig>,
}

/// An explicit worker slot (`[[dispatcher.slots]]`), e.g. one dedicated to a heavy
/// model while light models share another.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    /// GPU index the slot runs on.
    pub gpu: u32,
    /// Budget in MiB; default an equal share of what the GPU's other slots leave.
    #[serde(default)]
    pub vram_mib: Option<u64>,
    /// Models this slot serves; default every model that fits its budget.
    #[serde(default)]
    pub models: Option<Vec<String>>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            host_id: None,
            workers_per_gpu: 1,
            max_models_per_worker: 2,
            vram_reserve_mib: 512,
            worker_bin: None,
            restart_backoff_initial_ms: 500,
            restart_backoff_max_ms: 30_000,
            crash_loop_limit: 5,
            metrics_listen: "127.0.0.1:9464".into(),
            models: None,
            gpus: Vec::new(),
            slots: Vec::new(),
        }
    }
}

/// A GPU declared in config (`[[dispatcher.gpus]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredGpu {
    /// Device index as CUDA numbers it.
    pub index: u32,
    /// Total memory, MiB.
    pub memory_mib: u64,
    /// Display name; default `declared-gpu-<index>`.
    #[serde(default)]
    pub name: Option<String>,
}

/// Backlog-aware placement (`[placement]`): which models each worker holds
/// and which queues it consumes, decided from the backlog across all hosts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    /// `false` turns placement off: every worker consumes every queue its
    /// budget fits and loads models on demand (LRU). Default `true`.
    pub enabled: bool,
    /// How often the placing dispatcher re-decides, milliseconds. Default 500.
    pub interval_ms: u64,
    /// A model a worker loaded for its backlog stays its main model at least
    /// this long, unless another model starves, milliseconds. Default 15000.
    pub min_residency_ms: u64,
    /// Longest time a model's backlog may go unserved before it pre-empts a
    /// warm model on some worker, milliseconds. Default 30000.
    pub max_queue_wait_ms: u64,
    /// Per-model policy, by model id.
    pub models: BTreeMap<String, ModelPlacement>,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 500,
            min_residency_ms: 15_000,
            max_queue_wait_ms: 30_000,
            models: BTreeMap::new(),
        }
    }
}

impl PlacementConfig {
    /// How long an assignment stays valid without being renewed: past it, a
    /// worker falls back to consuming every model it can serve.
    pub fn assignment_ttl_ms(&self) -> u64 {
        (self.interval_ms * 5).max(5_000)
    }
}

/// `[placement.models.<id>]`: replicas bounds and pinning of one model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelPlacement {
    /// Workers that consume this model's queue even without a backlog. Default 0.
    pub min_replicas: u32,
    /// Most workers given to this model's backlog; 0 means no limit. Default 0.
    pub max_replicas: u32,
    /// Worker ids (e.g. `host-a-gpu0-slot0`) that always hold this model.
    pub pin: Vec<String>,
}
