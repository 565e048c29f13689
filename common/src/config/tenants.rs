//! `[tenants]`: how many users share one fleet.
//!
//! A tenant is a name on each job (the gateway's token name, `--tenant`, or
//! the body of a job published straight to AMQP). This section says what a
//! tenant may use: its share of GPU time (`weight`), how much it may have
//! waiting or running, how fast it may submit, and the highest priority it
//! may ask for. A tenant with no table gets the defaults: weight 1, no limits.
//!
//! ```toml
//! [tenants]
//! fair_share = true      # per-tenant sub-queues, scheduled by GPU time
//! max_labels = 20        # tenants named in metrics; the rest are `other`
//! max_sub_queues = 32    # per model; past it new tenants share the model's queue
//! [tenants.acme]
//! weight = 3
//! max_queued = 5000
//! rate_per_s = 50
//! burst = 100
//! max_priority = 6
//! webhook = { url = "https://hooks.acme.example/gpuq" }  # for jobs naming none
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[tenants]`: the fair-share switch, the metrics bound, and one table per
/// named tenant (any key other than the two settings names a tenant).
#[derive(Debug, Clone, Deserialize)]
pub struct TenantsConfig {
    /// Jobs of each tenant and priority level wait in their own sub-queue of
    /// the model, and workers pick among them by GPU time used per weight
    /// (`false`: one queue per model, first in first out, as before).
    #[serde(default = "default_fair_share")]
    pub fair_share: bool,
    /// Tenants named in metric labels; the others count as `other`.
    #[serde(default = "default_max_labels")]
    pub max_labels: u32,
    /// Sub-queues one model may have (each is a broker queue: a quorum
    /// queue holds files and a Raft member). Past it, jobs of tenants and
    /// levels without one wait in the model's own queue (default share).
    #[serde(default = "default_max_sub_queues")]
    pub max_sub_queues: u64,
    /// Per-tenant settings, by tenant name.
    #[serde(flatten)]
    pub named: BTreeMap<String, TenantLimits>,
}

fn default_fair_share() -> bool {
    true
}
fn default_max_labels() -> u32 {
    20
}
fn default_max_sub_queues() -> u64 {
    32
}

impl Default for TenantsConfig {
    fn default() -> Self {
        TenantsConfig {
            fair_share: default_fair_share(),
            max_labels: default_max_labels(),
            max_sub_queues: default_max_sub_queues(),
            named: BTreeMap::new(),
        }
    }
}

/// What one tenant may use.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// Share of GPU time against other backlogged tenants (default 1).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Jobs waiting (queued, not started) past which a submit is refused
    /// with `quota_exceeded`.
    #[serde(default)]
    pub max_queued: Option<u64>,
    /// Jobs running at once across the fleet.
    #[serde(default)]
    pub max_running: Option<u64>,
    /// Sustained submits per second (a token bucket shared by every
    /// gateway and producer through Redis).
    #[serde(default)]
    pub rate_per_s: Option<f64>,
    /// Submits allowed at once above the rate (the bucket's size); default
    /// `max(1, rate_per_s)`.
    #[serde(default)]
    pub burst: Option<u64>,
    /// Highest priority (0 to 9) the tenant's jobs get; a higher one is
    /// lowered to it, and the record says so.
    #[serde(default)]
    pub max_priority: Option<u8>,
    /// The webhook of this tenant's jobs that name none (`url`, `events`),
    /// before `webhooks.default`; checked against `[webhooks]` at load.
    #[serde(default)]
    pub webhook: Option<crate::webhook::WebhookRequest>,
}

fn default_weight() -> f64 {
    1.0
}

impl Default for TenantLimits {
    fn default() -> Self {
        TenantLimits {
            weight: default_weight(),
            max_queued: None,
            max_running: None,
            rate_per_s: None,
            burst: None,
            max_priority: None,
            webhook: None,
        }
    }
}

impl TenantLimits {
    /// The token bucket's size: `burst`, or the rate rounded up (at least 1).
    pub fn bucket_size(&self) -> Option<u64> {
        let rate = self.rate_per_s?;
        Some(self.burst.unwrap_or_else(|| rate.ceil().max(1.0) as u64))
    }
}

impl TenantsConfig {
    /// The settings of `tenant` (the defaults for an unnamed one).
    pub fn limits(&self, tenant: &str) -> TenantLimits {
        self.named.get(tenant).cloned().unwrap_or_default()
    }

    /// A tenant's weight (1 for an unnamed one).
    pub fn weight(&self, tenant: &str) -> f64 {
        self.named.get(tenant).map_or(1.0, |t| t.weight)
    }

    /// A tenant's default webhook, checked like a job's.
    pub(super) fn validate_webhooks(
        &self,
        webhooks: &super::WebhooksConfig,
    ) -> Result<(), ConfigError> {
        for (name, limits) in &self.named {
            if let Some(webhook) = &limits.webhook {
                crate::webhook::check_url(webhooks, &webhook.url)
                    .and_then(|_| crate::webhook::check_events(&webhook.events))
                    .map_err(|e| invalid(format!("tenants.{name}.webhook"), e.to_string()))?;
            }
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_labels == 0 {
            return Err(invalid("tenants.max_labels", "must be at least 1"));
        }
        for (name, limits) in &self.named {
            let key = |field: &str| format!("tenants.{name}.{field}");
            if let Err(error) = crate::wire::validate_tenant(name) {
                return Err(invalid(format!("tenants.{name}"), error.message));
            }
            if !(limits.weight.is_finite() && limits.weight > 0.0 && limits.weight <= 1000.0) {
                return Err(invalid(key("weight"), "must be above 0 and at most 1000"));
            }
            if limits.max_queued == Some(0) {
                return Err(invalid(key("max_queued"), "must be at least 1"));
            }
            if limits.max_running == Some(0) {
                return Err(invalid(key("max_running"), "must be at least 1"));
            }
            if let Some(rate) = limits.rate_per_s {
                if !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0) {
                    return Err(invalid(
                        key("rate_per_s"),
                        "must be above 0 and at most 1000000",
                    ));
                }
            } else if limits.burst.is_some() {
                return Err(invalid(key("burst"), "needs rate_per_s"));
            }
            if limits.burst == Some(0) {
                return Err(invalid(key("burst"), "must be at least 1"));
            }
            if limits.max_priority.is_some_and(|p| p > 9) {
                return Err(invalid(key("max_priority"), "must be 0 to 9"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::ConfigOverrides;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, None, &ConfigOverrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn tables_name_tenants_beside_the_two_settings() {
        let config = parse(
            "[tenants]\nfair_share = false\nmax_labels = 5\n[tenants.acme]\nweight = 3\nmax_queued = 10\nrate_per_s = 2.5\n",
        )
        .unwrap();
        assert!(!config.tenants.fair_share);
        assert_eq!(config.tenants.max_labels, 5);
        let acme = config.tenants.limits("acme");
        assert_eq!(acme.weight, 3.0);
        assert_eq!(acme.max_queued, Some(10));
        assert_eq!(acme.bucket_size(), Some(3));
        assert_eq!(config.tenants.weight("nobody"), 1.0);
        assert!(parse("").unwrap().tenants.fair_share);
    }

    #[test]
    fn impossible_values_name_their_key() {
        for (text, key) in [
            ("[tenants.a]\nweight = 0", "tenants.a.weight"),
            ("[tenants.a]\nmax_queued = 0", "tenants.a.max_queued"),
            ("[tenants.a]\nburst = 3", "tenants.a.burst"),
            ("[tenants.a]\nmax_priority = 12", "tenants.a.max_priority"),
            ("[tenants.\"a b\"]\nweight = 1", "tenants.a b"),
            ("[tenants]\nmax_labels = 0", "tenants.max_labels"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(key), "{text}: {error}");
        }
        assert!(parse("[tenants.a]\nwieght = 2").is_err());
    }

    #[test]
    fn a_tenant_s_default_webhook_is_checked_like_a_job_s() {
        let webhooks = "[webhooks]\nallow_hosts = [\"hooks.example.com\"]\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n";
        let ok = format!(
            "{webhooks}[tenants.a]\nwebhook = {{ url = \"https://hooks.example.com/a\" }}\n"
        );
        let config = parse(&ok).unwrap();
        let webhook = config.tenants.limits("a").webhook.unwrap();
        assert_eq!(webhook.url, "https://hooks.example.com/a");
        for (tenant, reason) in [
            (
                "url = \"https://evil.example.com/a\"",
                "not in webhooks.allow_hosts",
            ),
            ("url = \"http://hooks.example.com/a\"", "scheme"),
            (
                "url = \"https://hooks.example.com/a\", events = [\"done\"]",
                "unknown webhook event",
            ),
        ] {
            let text = format!("{webhooks}[tenants.a]\nwebhook = {{ {tenant} }}\n");
            let error = parse(&text).unwrap_err();
            assert!(error.contains("tenants.a.webhook"), "{error}");
            assert!(error.contains(reason), "{error}");
        }
    }
}
