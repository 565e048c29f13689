//! The one configuration file (`gpuq.toml`) shared by every gpuq process.
//!
//! Parse, validate, freeze: [`Config::load`] rejects unknown keys and impossible
//! values with an error that names the key, applies the environment overrides it
//! is handed (it never reads the environment itself), and returns a struct that
//! the processes only read. `config/gpuq.example.toml` documents every key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::names::Names;

mod gpu;
mod redact;
mod redis_target;
mod sections;
mod tenants;
mod tokens;
mod validate;
mod webhooks;
use crate::registry::{ModelConfig, Registry};
pub use gpu::{GpuConfig, VramSourceKind};
pub use redis_target::{RedisConfig, RedisTarget, SentinelTarget};
pub use sections::{
    AmqpConfig, ArtifactsConfig, DeclaredGpu, DispatcherConfig, GatewayConfig, JobsConfig,
    ModelPlacement, PlacementConfig, QueueConfig, QueueType, SlotConfig, WorkerConfig,
};
pub use tenants::{TenantLimits, TenantsConfig};
pub use tokens::{AccessToken, NamedToken, Role, TokenEntry, MIN_TOKEN_LEN};
pub use webhooks::WebhooksConfig;

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
    /// RabbitMQ URL (`amqp://` or `amqps://`); a comma-separated list names
    /// a cluster's nodes. Env `GPUQ_AMQP_URL` (one URL or a list) overrides
    /// both this and `amqp_urls`.
    #[serde(default = "default_amqp_url")]
    pub amqp_url: String,
    /// A RabbitMQ cluster's nodes, one URL each; when set, `amqp_url` is
    /// ignored. Each process fails over across them (see `amqp::BrokerNodes`).
    #[serde(default)]
    pub amqp_urls: Vec<String>,
    /// Redis URL (`redis://`, `rediss://`, or `redis+sentinel://` for a
    /// Sentinel-managed primary). Env `GPUQ_REDIS_URL` overrides.
    #[serde(default = "default_redis_url")]
    pub redis_url: String,
    /// `[redis]`: Sentinel as a table, and write durability (`WAIT`).
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub amqp: AmqpConfig,
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
    /// `[tenants]`: fair share, quotas and priority caps per tenant.
    #[serde(default)]
    pub tenants: TenantsConfig,
    /// `[gpu]`: measured VRAM (sampling, trust threshold, margin).
    #[serde(default)]
    pub gpu: GpuConfig,
    /// `[webhooks]`: allowed hosts, signing secrets and retry limits of job
    /// webhooks; off while `allow_hosts` is empty.
    #[serde(default)]
    pub webhooks: WebhooksConfig,
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
    /// The RabbitMQ nodes to connect to, in config order: `amqp_urls`, or
    /// the comma-separated `amqp_url`.
    pub fn amqp_nodes(&self) -> Vec<String> {
        if !self.amqp_urls.is_empty() {
            return self.amqp_urls.clone();
        }
        self.amqp_url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect()
    }

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
            config.amqp_urls.clear();
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
        let redis_url = config.redis_url.clone();
        config
            .redis
            .resolve(&redis_url, overrides.redis_url.is_some())?;
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
}

#[cfg(test)]
mod tests;
