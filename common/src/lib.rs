//! gpuq's contract: everything that crosses a process boundary.
//!
//! - [`wire`]: job, reply and status-event messages, msgpack and JSON encodings.
//! - [`config`]: the `gpuq.toml` file, parsed, validated and frozen.
//! - [`registry`]: the model registry and routing rules.
//! - [`placement_lease`]: the placement lease's compare-and-set scripts.
//! - [`host_lease`]: the host lease (one dispatcher per host id): its holder
//!   and compare-and-set scripts.
//! - [`names`]: every queue, exchange and Redis key name.
//! - [`topology`]: the AMQP topology as plain data.
//! - [`record`]: the Redis job, worker and host records, parsed for readers.
//! - [`job_record`]: the job record's one author: its state machine (pure)
//!   and every Lua script that writes a record.
//! - [`job_index`]: the per-status, per-feature, per-submitter and per-tenant job indexes,
//!   kept by the Lua prelude every status-writing script shares.
//! - [`vram`]: measured VRAM per model: the decaying peak histograms
//!   workers write and the admitted figure every process uses.
//! - [`webhook`]: job webhooks: the request a job carries, the delivery a
//!   worker publishes, the URL and SSRF address rules, Standard Webhooks
//!   signing, and the webhook queues as plain data.
//! - `amqp` (feature `amqp`): declares the topology with lapin.
//! - `artifacts` (feature `artifacts`): the artifact store (object_store).
//! - `heartbeat` (feature `redis`): the heartbeat pipeline of worker and host records.
//! - `redis_link` (feature `redis`): the connection to the Redis primary, followed
//!   through a Sentinel failover; every process's store sends through it.
//! - `process` (feature `process`): logging, signal shutdown, host id for binaries.
//!
//! It owns no IO beyond reading the config file and, with `amqp`, declaring topology.

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "artifacts")]
pub mod artifacts;
pub mod config;
pub mod fair_share;
#[cfg(feature = "redis")]
pub mod heartbeat;
pub mod host_lease;
pub mod job_index;
pub mod job_record;
pub mod metrics;
pub mod names;
pub mod placement_lease;
#[cfg(feature = "process")]
pub mod process;
pub mod record;
#[cfg(feature = "redis")]
pub mod redis_link;
pub mod registry;
pub mod topology;
pub mod vram;
pub mod webhook;
pub mod wire;

pub use config::{Config, ConfigError, ConfigOverrides};
pub use names::Names;
pub use wire::{ErrorCode, JobError, JobMessage, JobStatus, StatusEvent, Value, ValueMap};

/// Milliseconds since the unix epoch, the unit of every timestamp gpuq writes.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Hides the password of a URL (`amqp://user:secret@host` -> `amqp://user:***@host`)
/// so that URLs can be logged.
///
/// The user info ends at the *last* `@` of the URL, so a password that holds
/// `/`, `@` or `:` unescaped (`amqp://u:pa/ss@host`) is hidden whole. When in
/// doubt it hides more: an `@` in a path or query counts as the end of user info.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, after)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{after}"),
        None => format!("{scheme}://{userinfo}@{after}"),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(redact_url("rediss://:pw@host/1"), "rediss://:***@host/1");
        assert_eq!(redact_url("amqp://user@host"), "amqp://user@host");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn redact_url_hides_passwords_holding_slash_at_and_colon() {
        for (url, shown) in [
            ("amqp://u:pa/ss@host/%2f", "amqp://u:***@host/%2f"),
            ("amqp://u:p@ss@host:5672/vh", "amqp://u:***@host:5672/vh"),
            ("redis://:a:b/c@d@redis:6379/0", "redis://:***@redis:6379/0"),
            ("amqps://user:p/a@s:s?x@host", "amqps://user:***@host"),
        ] {
            let redacted = redact_url(url);
            assert_eq!(redacted, shown, "{url}");
        }
    }
}
