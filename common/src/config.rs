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

mod redact;
mod sections;
mod tokens;
use crate::registry::{ModelConfig, Registry};
pub use sections::{
    ArtifactsConfig, DeclaredGpu, DispatcherConfig, GatewayConfig, JobsConfig, ModelPlacement,
    PlacementConfig, QueueConfig, QueueType, SlotConfig, WorkerConfig,
};
pub use tokens::{AccessToken, NamedToken, Role, TokenEntry, MIN_TOKEN_LEN};

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
    /// `message` is toml's error with every secret-looking value hidden.
    #[error("invalid config{}: {message}", path.as_ref().map(|p| format!(" file {}", p.display())).unwrap_or_default())]
    Parse {
        path: Option<PathBuf>,
        message: String,
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
    #[serde(default)]
    pub placement: PlacementConfig,
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
        let mut config: Config = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.map(Path::to_owned),
            message: redact::redacted_parse_error(text, &error),
        })?;
        if let Some(url) = &overrides.amqp_url {
            config.amqp_url = url.clone();
        }
        if let Some(url) = &overrides.redis_url {
            config.redis_url = url.clone();
        }
        config.gateway.env_tokens = overrides
            .gateway_tokens
            .iter()
            .cloned()
            .map(TokenEntry::Bare)
            .collect();
        for (key, value) in &overrides.artifact_options {
            config
                .artifacts
                .options
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
        config.validate()?;
        config.artifacts.validate(&config.jobs)?;
        config.gateway.access =
            tokens::resolve(&config.gateway.tokens, &config.gateway.env_tokens)?;
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
        self.validate_gateway_limits()?;
        self.validate_worker()?;
        self.validate_dispatcher()?;
        self.validate_models()?;
        self.validate_model_references()?;
        self.validate_placement()
    }

    fn validate_placement(&self) -> Result<(), ConfigError> {
        let placement = &self.placement;
        if placement.interval_ms < 100 {
            return Err(invalid("placement.interval_ms", "must be at least 100"));
        }
        if placement.max_queue_wait_ms < placement.interval_ms {
            return Err(invalid(
                "placement.max_queue_wait_ms",
                "must be at least placement.interval_ms",
            ));
        }
        for (id, model) in &placement.models {
            let key = format!("placement.models.{id}");
            if !self.models.iter().any(|m| &m.id == id) {
                return Err(invalid(key, format!("model '{id}' is not in the registry")));
            }
            if model.max_replicas != 0 && model.min_replicas > model.max_replicas {
                return Err(invalid(
                    format!("{key}.min_replicas"),
                    "must not exceed max_replicas",
                ));
            }
            if let Some(empty) = model.pin.iter().find(|w| w.trim().is_empty()) {
                return Err(invalid(
                    format!("{key}.pin"),
                    format!("worker id '{empty}' is empty"),
                ));
            }
        }
        Ok(())
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

    fn validate_gateway_limits(&self) -> Result<(), ConfigError> {
        let gateway = &self.gateway;
        if !(1..=100_000).contains(&gateway.max_streams) {
            return Err(invalid(
                "gateway.max_streams",
                "must be between 1 and 100000",
            ));
        }
        if !(1..=3600).contains(&gateway.header_timeout_s) {
            return Err(invalid(
                "gateway.header_timeout_s",
                "must be between 1 and 3600 seconds",
            ));
        }
        if !(1..=86_400).contains(&gateway.body_timeout_s) {
            return Err(invalid(
                "gateway.body_timeout_s",
                "must be between 1 and 86400 seconds",
            ));
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
            if let Some(min) = model.min_timeout_s_setting {
                if min == 0 || min > model.timeout_s {
                    return Err(invalid(
                        key("min_timeout_s"),
                        format!(
                            "must be between 1 and the model's timeout_s = {}",
                            model.timeout_s
                        ),
                    ));
                }
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
