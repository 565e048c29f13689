//! `[webhooks]`: where job webhooks may go, how they are signed, and how
//! long they are retried.
//!
//! ```toml
//! [webhooks]
//! allow_http = false          # plain http:// only when true
//! allow_hosts = []            # host, host:port, "*.example.com" or "*"; empty = off
//! secret = ""                 # default signing secret, "whsec_<base64>"
//! max_age_s = 86400           # retry for this long, then dead-letter
//! timeout_ms = 10000          # response timeout per attempt
//! max_response_bytes = 65536  # response body read limit
//! retry_delays_s = [1, 4, 16, 64, 256, 1024, 3600]  # retry tiers, seconds
//! [webhooks.secrets]          # per host or host:port, over `secret`
//! "hooks.example.com" = "whsec_..."
//! [webhooks.default]          # for jobs that name no webhook
//! url = "https://hooks.example.com/gpuq"
//! events = ["completed", "failed"]
//! ```
//!
//! The URL and address rules themselves live in `crate::webhook`. `Debug`
//! and every error hide the secrets.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{invalid, ConfigError};
use crate::webhook::{check_events, check_url, signing_key, HostPattern, WebhookRequest};

/// `[webhooks]`. Off (no webhook accepted or sent) while `allow_hosts` is empty.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Accept `http://` URLs too (tests, trusted networks). Default false.
    #[serde(default)]
    pub allow_http: bool,
    /// Hosts a webhook may go to: `host`, `host:port`, `[ipv6]:port`,
    /// `*.example.com` (names under it) or `*` (any public host). Only an
    /// exact entry may resolve to a loopback or private address. Empty (the
    /// default): webhooks are off.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Default signing secret, `whsec_<base64>` (Standard Webhooks).
    #[serde(default)]
    pub secret: String,
    /// Signing secrets by host, `host:port` or wildcard entry; the most
    /// specific match wins over `secret`.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// How long a delivery is retried after its event, seconds; then it goes
    /// to `<ns>.webhooks.dead`. Default 86400 (a day).
    #[serde(default = "default_max_age_s")]
    pub max_age_s: u64,
    /// Longest wait for one attempt (connect, send, response), milliseconds.
    /// Default 10000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most bytes of a response body read, bytes. Default 65536.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// The retry tiers, seconds, increasing: the `n`th failed attempt waits
    /// the `n`th or the next tier (at random), the last one past the end.
    /// Each tier is a queue, `<ns>.webhooks.retry.<s>`. Default
    /// `crate::webhook::queues::RETRY_TIERS_S` (1 s to 1 h, times 4).
    #[serde(default = "default_retry_delays_s")]
    pub retry_delays_s: Vec<u64>,
    /// The webhook of jobs that name none (`[webhooks.default]`: `url`,
    /// `events`); none by default.
    #[serde(default, deserialize_with = "default_webhook")]
    pub default: Option<WebhookRequest>,
}

fn default_max_age_s() -> u64 {
    86_400
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_response_bytes() -> u64 {
    65_536
}
fn default_retry_delays_s() -> Vec<u64> {
    crate::webhook::queues::RETRY_TIERS_S.to_vec()
}

/// Longest allowed `webhooks.timeout_ms` (5 minutes).
const MAX_TIMEOUT_MS: u64 = 300_000;
/// Largest allowed `webhooks.max_response_bytes` (16 MiB).
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;
/// Most retry tiers (each is a queue of the broker).
const MAX_RETRY_TIERS: usize = 16;
/// Longest retry tier, seconds (a day).
const MAX_RETRY_DELAY_S: u64 = 86_400;

/// `[webhooks.default]` as written: unknown keys refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultWebhook {
    url: String,
    #[serde(default)]
    events: Vec<String>,
}

fn default_webhook<'de, D: Deserializer<'de>>(d: D) -> Result<Option<WebhookRequest>, D::Error> {
    let written = Option::<DefaultWebhook>::deserialize(d)?;
    Ok(written.map(|w| WebhookRequest {
        url: w.url,
        events: w.events,
    }))
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            allow_http: false,
            allow_hosts: Vec::new(),
            secret: String::new(),
            secrets: BTreeMap::new(),
            max_age_s: default_max_age_s(),
            timeout_ms: default_timeout_ms(),
            max_response_bytes: default_max_response_bytes(),
            retry_delays_s: default_retry_delays_s(),
            default: None,
        }
    }
}

impl fmt::Debug for WebhooksConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |set: bool| if set { "<redacted>" } else { "" };
        let secrets: BTreeMap<&str, &str> = self
            .secrets
            .keys()
            .map(|host| (host.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("WebhooksConfig")
            .field("allow_http", &self.allow_http)
            .field("allow_hosts", &self.allow_hosts)
            .field("secret", &hidden(!self.secret.is_empty()))
            .field("secrets", &secrets)
            .field("max_age_s", &self.max_age_s)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("retry_delays_s", &self.retry_delays_s)
            .field("default", &self.default.as_ref().map(|d| &d.events))
            .finish()
    }
}

impl WebhooksConfig {
    /// Whether webhooks are on (`allow_hosts` names at least one host).
    pub fn enabled(&self) -> bool {
        !self.allow_hosts.is_empty()
    }

    /// `timeout_ms` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_age_s == 0 {
            return Err(invalid("webhooks.max_age_s", "must be at least 1 second"));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(invalid(
                "webhooks.timeout_ms",
                format!("must be between 1 and {MAX_TIMEOUT_MS}"),
            ));
        }
        if self.max_response_bytes > MAX_RESPONSE_BYTES {
            return Err(invalid(
                "webhooks.max_response_bytes",
                format!("must be at most {MAX_RESPONSE_BYTES} (16 MiB)"),
            ));
        }
        self.validate_retry_delays()?;
        self.validate_secrets()?;
        self.validate_hosts()?;
        if let Some(default) = &self.default {
            check_events(&default.events)
                .map_err(|error| invalid("webhooks.default.events", error.to_string()))?;
            check_url(self, &default.url)
                .map_err(|error| invalid("webhooks.default.url", error.to_string()))?;
        }
        Ok(())
    }

    /// 1 to 16 tiers, each 1 s to a day, increasing.
    fn validate_retry_delays(&self) -> Result<(), ConfigError> {
        let delays = &self.retry_delays_s;
        let in_range = delays.iter().all(|d| (1..=MAX_RETRY_DELAY_S).contains(d));
        let increasing = delays.windows(2).all(|pair| pair[0] < pair[1]);
        if delays.is_empty() || delays.len() > MAX_RETRY_TIERS || !in_range || !increasing {
            return Err(invalid(
                "webhooks.retry_delays_s",
                format!("must be 1 to {MAX_RETRY_TIERS} increasing delays of 1 to {MAX_RETRY_DELAY_S} seconds"),
            ));
        }
        Ok(())
    }

    /// Every secret decodes (the message never shows one).
    fn validate_secrets(&self) -> Result<(), ConfigError> {
        let form = "must be 'whsec_' followed by non-empty base64 (the Standard Webhooks form)";
        if !self.secret.is_empty() && signing_key(&self.secret).is_err() {
            return Err(invalid("webhooks.secret", form));
        }
        for (host, secret) in &self.secrets {
            let key = format!("webhooks.secrets.\"{host}\"");
            HostPattern::parse(host).map_err(|error| invalid(&key, error.to_string()))?;
            if signing_key(secret).is_err() {
                return Err(invalid(key, form));
            }
        }
        Ok(())
    }

    /// Every host entry parses and has a secret (its own or the default).
    fn validate_hosts(&self) -> Result<(), ConfigError> {
        let keys: Vec<HostPattern> = self
            .secrets
            .keys()
            .filter_map(|key| HostPattern::parse(key).ok())
            .collect();
        for (i, entry) in self.allow_hosts.iter().enumerate() {
            let key = format!("webhooks.allow_hosts[{i}]");
            let pattern = HostPattern::parse(entry).map_err(|e| invalid(&key, e.to_string()))?;
            let any_port = match &pattern {
                HostPattern::Exact {
                    host,
                    port: Some(_),
                } => Some(HostPattern::Exact {
                    host: host.clone(),
                    port: None,
                }),
                _ => None,
            };
            let has_secret = !self.secret.is_empty()
                || keys.contains(&pattern)
                || any_port.is_some_and(|p| keys.contains(&p));
            if !has_secret {
                return Err(invalid(
                    key,
                    format!("'{entry}' has no signing secret: set webhooks.secret, or webhooks.secrets.\"{entry}\""),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
