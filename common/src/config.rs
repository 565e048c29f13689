//! The one configuration file (`gpuq.toml`) shared by every gpuq process.
//!
//! Parse, validate, freeze: [`Config::load`] rejects unknown keys and impossible
//! values with an error that names the key, applies the environment overrides it
//! is handed (it never reads the environment itself), and returns a struct that
//! the processes only read. `config/gpuq.example.toml` documents every key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::names::Names;
use crate::registry::{ModelConfig, Registry};

/// Environment variable that overrides `amqp_url`.
pub const ENV_AMQP_URL: &str = "GPUQ_AMQP_URL";
/// Environment variable that overrides `redis_url`.
pub const ENV_REDIS_URL: &str = "GPUQ_REDIS_URL";

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config{}: {source}", path.as_ref().map(|p| format!(" file {}", p.display())).unwrap_or_default())]
    Parse {
        path: Option<PathBuf>,
        source: Box<toml::de::Error>,
    },
    #[error("invalid config key '{key}': {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Values that replace file settings, gathered by the binary (e.g. from the environment).
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    pub amqp_url: Option<String>,
    pub redis_url: Option<String>,
    /// Artifact store options (`AWS_*` variables, lowercased: `aws_endpoint`, ...).
    pub artifact_options: Vec<(String, String)>,
    /// Extra gateway bearer tokens (`GPUQ_GATEWAY_TOKENS`, comma-separated).
    pub gateway_tokens: Vec<String>,
}

impl ConfigOverrides {
    /// Reads `GPUQ_AMQP_URL` and `GPUQ_REDIS_URL` through `lookup` (pass `std::env::var`).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            amqp_url: lookup(ENV_AMQP_URL).filter(|v| !v.is_empty()),
            redis_url: lookup(ENV_REDIS_URL).filter(|v| !v.is_empty()),
            artifact_options: Vec::new(),
            gateway_tokens: lookup("GPUQ_GATEWAY_TOKENS")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Everything a binary takes from its environment: the URLs, and the
    /// standard `AWS_*` variables for an `s3://` artifact store.
    pub fn from_environment(vars: impl Iterator<Item = (String, String)>) -> Self {
        let vars: Vec<(String, String)> = vars.collect();
        let lookup = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let mut overrides = Self::from_lookup(lookup);
        overrides.artifact_options = vars
            .iter()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        overrides
    }
}

/// The whole, validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Prefix of every queue, exchange and Redis key. Default `gpuq`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// RabbitMQ URL (`amqp://` or `amqps://`). Env `GPUQ_AMQP_URL` overrides.
    #[serde(default = "default_amqp_url")]
    pub amqp_url: String,
    /// Redis URL (`redis://` or `rediss://`). Env `GPUQ_REDIS_URL` overrides.
    #[serde(default = "default_redis_url")]
    pub redis_url: String,
    #[serde(default)]
    pub queues: QueueConfig,
    #[serde(default)]
    pub jobs: JobsConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub dispatcher: DispatcherConfig,
    #[serde(default)]
    pub artifacts: ArtifactsConfig,
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// The model registry.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    #[serde(skip)]
    registry: Registry,
}

fn default_namespace() -> String {
    "gpuq".into()
}
fn default_amqp_url() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}
fn default_redis_url() -> String {
    "redis://127.0.0.1:6379/0".into()
}

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
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            queue_type: QueueType::Quorum,
            delivery_limit: 5,
            max_message_bytes: 16 * 1024 * 1024,
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
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address `gpuq serve` listens on. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Bearer tokens accepted; empty means no auth. Env `GPUQ_GATEWAY_TOKENS`
    /// (comma-separated) adds to them.
    pub tokens: Vec<String>,
    /// Ready jobs in a model's queue above which submissions are refused with
    /// 503 and Retry-After (backpressure); 0 means no limit. Default 0.
    pub max_queue_depth: u32,
    /// Largest request body, bytes. Default 16 MiB.
    pub max_body_bytes: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            tokens: Vec::new(),
            max_queue_depth: 0,
            max_body_bytes: 16 * 1024 * 1024,
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
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        Self {
            url: "file:///var/tmp/gpuq-artifacts".into(),
            inline_max_bytes: 1024 * 1024,
            options: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs one worker runs at once. Default 1.
    pub concurrency: u32,
    /// Deliveries a worker holds per queue (AMQP prefetch); 0 means `concurrency`.
    /// `concurrency + 1` hides the broker round trip between short jobs, at the
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

impl WorkerConfig {
    /// The AMQP prefetch per queue: `prefetch`, or `concurrency` when 0.
    pub fn effective_prefetch(&self) -> u16 {
        let prefetch = if self.prefetch == 0 {
            self.concurrency
        } else {
            self.prefetch
        };
        u16::try_from(prefetch).unwrap_or(u16::MAX)
    }
}

impl Config {
    /// Reads, parses and validates a config file, then applies `overrides`.
    pub fn load(path: &Path, overrides: &ConfigOverrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, Some(path), overrides)
    }

    /// Parses and validates config text (`path` only names the source in errors).
    pub fn parse(
        text: &str,
        path: Option<&Path>,
        overrides: &ConfigOverrides,
    ) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.map(Path::to_owned),
            source: Box::new(source),
        })?;
        if let Some(url) = &overrides.amqp_url {
            config.amqp_url = url.clone();
        }
        if let Some(url) = &overrides.redis_url {
            config.redis_url = url.clone();
        }
        config
            .gateway
            .tokens
            .extend(overrides.gateway_tokens.iter().cloned());
        for (key, value) in &overrides.artifact_options {
            config
                .artifacts
                .options
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
        config.validate()?;
        config.registry = Registry::new(&config.models);
        Ok(config)
    }

    /// The built-in defaults with no models: enough for a producer or the CLI.
    pub fn defaults(overrides: &ConfigOverrides) -> Config {
        Self::parse("", None, overrides).expect("the built-in defaults are valid")
    }

    pub fn names(&self) -> Names {
        Names::new(self.namespace.clone())
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_identifier("namespace", &self.namespace)?;
        check_url("amqp_url", &self.amqp_url, &["amqp", "amqps"])?;
        check_url(
            "redis_url",
            &self.redis_url,
            &["redis", "rediss", "redis+unix", "unix"],
        )?;
        if self.queues.delivery_limit == 0 {
            return Err(invalid("queues.delivery_limit", "must be at least 1"));
        }
        if self.queues.max_message_bytes < 1024 || self.queues.max_message_bytes > 512 * 1024 * 1024
        {
            return Err(invalid(
                "queues.max_message_bytes",
                "must be between 1024 and 536870912 (512 MiB, RabbitMQ's hard limit)",
            ));
        }
        if self.jobs.finished_ttl_s == 0 {
            return Err(invalid("jobs.finished_ttl_s", "must be at least 1 second"));
        }
        if self.jobs.max_timeout_s == 0 {
            return Err(invalid("jobs.max_timeout_s", "must be at least 1 second"));
        }
        if !(1..=100).contains(&self.jobs.max_attempts) {
            return Err(invalid("jobs.max_attempts", "must be between 1 and 100"));
        }
        if self.jobs.retry_backoff_s > self.jobs.retry_backoff_max_s {
            return Err(invalid(
                "jobs.retry_backoff_s",
                "must not exceed jobs.retry_backoff_max_s",
            ));
        }
        check_url(
            "artifacts.url",
            &self.artifacts.url,
            &["file", "s3", "memory"],
        )?;
        self.validate_worker()?;
        self.validate_dispatcher()?;
        self.validate_models()?;
        self.validate_model_references()
    }

    /// Model ids named outside `[[models]]` must be registered.
    fn validate_model_references(&self) -> Result<(), ConfigError> {
        let known = |id: &String| self.models.iter().any(|m| &m.id == id);
        if let Some(unknown) = self
            .dispatcher
            .models
            .iter()
            .flatten()
            .find(|id| !known(id))
        {
            return Err(invalid(
                "dispatcher.models",
                format!("model '{unknown}' is not in the registry"),
            ));
        }
        for (i, slot) in self.dispatcher.slots.iter().enumerate() {
            if let Some(unknown) = slot.models.iter().flatten().find(|id| !known(id)) {
                return Err(invalid(
                    format!("dispatcher.slots[{i}].models"),
                    format!("model '{unknown}' is not in the registry"),
                ));
            }
            if slot.vram_mib == Some(0) {
                return Err(invalid(
                    format!("dispatcher.slots[{i}].vram_mib"),
                    "must be at least 1 MiB",
                ));
            }
        }
        Ok(())
    }

    fn validate_worker(&self) -> Result<(), ConfigError> {
        let worker = &self.worker;
        if !(1..=256).contains(&worker.concurrency) {
            return Err(invalid("worker.concurrency", "must be between 1 and 256"));
        }
        if worker.prefetch > 1024 {
            return Err(invalid("worker.prefetch", "must be at most 1024"));
        }
        if worker.heartbeat_interval_ms < 100 {
            return Err(invalid(
                "worker.heartbeat_interval_ms",
                "must be at least 100",
            ));
        }
        if worker.heartbeat_ttl_ms < 2 * worker.heartbeat_interval_ms {
            return Err(invalid(
                "worker.heartbeat_ttl_ms",
                "must be at least twice worker.heartbeat_interval_ms, or live workers would flicker out",
            ));
        }
        Ok(())
    }

    fn validate_dispatcher(&self) -> Result<(), ConfigError> {
        let dispatcher = &self.dispatcher;
        if let Some(host_id) = &dispatcher.host_id {
            check_identifier("dispatcher.host_id", host_id)?;
        }
        if !(1..=64).contains(&dispatcher.workers_per_gpu) {
            return Err(invalid(
                "dispatcher.workers_per_gpu",
                "must be between 1 and 64",
            ));
        }
        if dispatcher.max_models_per_worker == 0 {
            return Err(invalid(
                "dispatcher.max_models_per_worker",
                "must be at least 1",
            ));
        }
        if dispatcher.restart_backoff_initial_ms == 0
            || dispatcher.restart_backoff_initial_ms > dispatcher.restart_backoff_max_ms
        {
            return Err(invalid(
                "dispatcher.restart_backoff_initial_ms",
                "must be at least 1 and at most dispatcher.restart_backoff_max_ms",
            ));
        }
        if dispatcher.crash_loop_limit == 0 {
            return Err(invalid("dispatcher.crash_loop_limit", "must be at least 1"));
        }
        let mut indices = BTreeSet::new();
        for (i, gpu) in dispatcher.gpus.iter().enumerate() {
            if !indices.insert(gpu.index) {
                return Err(invalid(
                    format!("dispatcher.gpus[{i}].index"),
                    format!("GPU index {} is declared twice", gpu.index),
                ));
            }
            if gpu.memory_mib <= dispatcher.vram_reserve_mib {
                return Err(invalid(
                    format!("dispatcher.gpus[{i}].memory_mib"),
                    format!(
                        "{} MiB leaves nothing after dispatcher.vram_reserve_mib = {} MiB",
                        gpu.memory_mib, dispatcher.vram_reserve_mib
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_models(&self) -> Result<(), ConfigError> {
        let mut ids = BTreeSet::new();
        let mut defaults: BTreeMap<&str, &str> = BTreeMap::new();
        for (i, model) in self.models.iter().enumerate() {
            let key = |field: &str| format!("models[{i}].{field}");
            check_identifier(&key("id"), &model.id)?;
            check_identifier(&key("feature"), &model.feature)?;
            if !ids.insert(model.id.as_str()) {
                return Err(invalid(
                    key("id"),
                    format!("model id '{}' is registered twice", model.id),
                ));
            }
            if model.vram_mib == 0 {
                return Err(invalid(key("vram_mib"), "must be at least 1 MiB"));
            }
            if model.timeout_s == 0 || model.timeout_s > self.jobs.max_timeout_s {
                return Err(invalid(
                    key("timeout_s"),
                    format!(
                        "must be between 1 and jobs.max_timeout_s = {}",
                        self.jobs.max_timeout_s
                    ),
                ));
            }
            if model.default {
                if let Some(other) = defaults.insert(&model.feature, &model.id) {
                    return Err(invalid(
                        key("default"),
                        format!(
                            "feature '{}' already has default model '{other}'",
                            model.feature
                        ),
                    ));
                }
            }
            model
                .runtime_params()
                .map_err(|message| invalid(key("params"), message))?;
        }
        Ok(())
    }
}

/// Names that become parts of AMQP names, routing keys and Redis keys:
/// 1 to 64 of `a-z`, `0-9`, `_`, `-`. No `.`, which separates routing-key parts.
fn check_identifier(key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("'{value}' must be 1 to 64 characters of a-z, 0-9, '_' or '-'"),
        ))
    }
}

fn check_url(key: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some(scheme) if schemes.contains(&scheme) => Ok(()),
        _ => Err(invalid(
            key,
            format!(
                "'{}' must start with one of: {}",
                crate::redact_url(url),
                schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
