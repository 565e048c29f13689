//! The cross-field rules `Config::parse` checks before it freezes a config:
//! every impossible value stops the process at start with an error that
//! names its key and the fix, instead of surfacing later as odd behaviour.

use std::collections::{BTreeMap, BTreeSet};

use super::{invalid, Config, ConfigError};

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_identifier("namespace", &self.namespace)?;
        let amqp_key = if self.amqp_urls.is_empty() {
            "amqp_url"
        } else {
            "amqp_urls"
        };
        let nodes = self.amqp_nodes();
        if nodes.is_empty() {
            return Err(invalid(amqp_key, "names no RabbitMQ URL"));
        }
        for url in &nodes {
            check_url(amqp_key, url, &["amqp", "amqps"])?;
        }
        if self.amqp.publish_timeout_ms == 0 {
            return Err(invalid("amqp.publish_timeout_ms", "must be at least 1"));
        }
        check_url(
            "redis_url",
            &self.redis_url,
            &[
                "redis",
                "rediss",
                "redis+unix",
                "unix",
                "redis+sentinel",
                "rediss+sentinel",
            ],
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
        if let Err(error) = crate::wire::validate_tenant(&self.jobs.default_tenant) {
            return Err(invalid("jobs.default_tenant", error.message));
        }
        check_url(
            "artifacts.url",
            &self.artifacts.url,
            &["file", "s3", "memory"],
        )?;
        self.tenants.validate()?;
        self.gpu.validate()?;
        self.webhooks.validate()?;
        self.tenants.validate_webhooks(&self.webhooks)?;
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
                .map_err(|error| invalid(key("params"), error.to_string()))?;
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
