//! gpuq's contract: everything that crosses a process boundary.
//!
//! - [`wire`]: job, reply and status-event messages, msgpack and JSON encodings.
//! - [`config`]: the `gpuq.toml` file, parsed, validated and frozen.
//! - [`registry`]: the model registry and routing rules.
//! - [`names`]: every queue, exchange and Redis key name.
//! - [`topology`]: the AMQP topology as plain data.
//! - [`record`]: the Redis job, worker and host records, parsed for readers.
//! - `amqp` (feature `amqp`): declares the topology with lapin.
//! - `artifacts` (feature `artifacts`): the artifact store (object_store).
//! - `process` (feature `process`): logging, signal shutdown, host id for binaries.
//!
//! It owns no IO beyond reading the config file and, with `amqp`, declaring topology.

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "artifacts")]
pub mod artifacts;
pub mod config;
pub mod metrics;
pub mod names;
#[cfg(feature = "process")]
pub mod process;
pub mod record;
pub mod registry;
pub mod topology;
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
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                format!("{scheme}://{user}@{host}{path}")
            }
        }
        None => url.to_owned(),
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
}
