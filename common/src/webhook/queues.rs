//! The webhook queues as plain data: `<ns>.webhooks`, one retry queue per
//! delay tier, and `<ns>.webhooks.dead`.
//!
//! A failed delivery is parked in the tier queue of its next delay; the
//! queue's TTL holds it there, then the broker dead-letters it (default
//! exchange) back to `<ns>.webhooks`. Tier queues with a fixed TTL, rather
//! than one queue with per-message TTLs, because the broker expires only the
//! message at the head of a queue: a 1 s retry must not wait behind a 1 h
//! one. Quorum when `queues.type` is quorum, like the job queues.

use crate::config::{Config, QueueType};
use crate::topology::{queue_type_arguments, ArgValue, QueueSpec};

/// The default retry tiers (`webhooks.retry_delays_s`), seconds: attempt
/// `n` waits one of the tiers for `4^(n-1)` and `4^n` seconds, chosen at
/// random, at most the last (an hour).
pub const RETRY_TIERS_S: [u64; 7] = [1, 4, 16, 64, 256, 1024, 3600];

/// Every webhook queue, for `crate::amqp::declare_topology` (no exchange:
/// everything is published through the default exchange).
pub fn queue_specs(config: &Config) -> Vec<QueueSpec> {
    let names = config.names();
    let quorum = config.queues.queue_type == QueueType::Quorum;
    let spec = |name: String, arguments| QueueSpec {
        name,
        arguments,
        bindings: Vec::new(),
        model_id: None,
        keep_existing: false,
    };
    let dead_lettered_to = |queue: String| {
        let mut args = queue_type_arguments(config);
        args.push((
            "x-dead-letter-exchange".into(),
            ArgValue::Str(String::new()),
        ));
        args.push(("x-dead-letter-routing-key".into(), ArgValue::Str(queue)));
        if quorum {
            args.push((
                "x-dead-letter-strategy".into(),
                ArgValue::Str("at-least-once".into()),
            ));
            args.push(("x-overflow".into(), ArgValue::Str("reject-publish".into())));
        }
        args
    };
    // A delivery that keeps killing its sender (past the delivery limit)
    // ends in the dead queue instead of being dropped.
    let mut main = dead_lettered_to(names.webhooks_dead_queue());
    if quorum {
        main.push((
            "x-delivery-limit".into(),
            ArgValue::Int(i64::from(config.queues.delivery_limit)),
        ));
    }
    let mut specs = vec![spec(names.webhooks_queue(), main)];
    for &delay_s in &config.webhooks.retry_delays_s {
        let mut args = dead_lettered_to(names.webhooks_queue());
        let ttl_ms = i64::try_from(delay_s * 1000).unwrap_or(i64::MAX);
        args.push(("x-message-ttl".into(), ArgValue::Int(ttl_ms)));
        specs.push(spec(names.webhooks_retry_queue(delay_s), args));
    }
    specs.push(spec(
        names.webhooks_dead_queue(),
        queue_type_arguments(config),
    ));
    specs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigOverrides;

    fn arg<'a>(spec: &'a QueueSpec, key: &str) -> Option<&'a ArgValue> {
        spec.arguments
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    #[test]
    fn webhook_retry_tiers_expire_back_to_the_webhooks_queue() {
        let config = Config::parse("namespace = \"t\"", None, &ConfigOverrides::default()).unwrap();
        let specs = queue_specs(&config);
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names[0], "t.webhooks");
        assert_eq!(names[1], "t.webhooks.retry.1");
        assert_eq!(names[7], "t.webhooks.retry.3600");
        assert_eq!(names[8], "t.webhooks.dead");
        let short = Config::parse(
            "[webhooks]\nretry_delays_s = [1, 2]",
            None,
            &ConfigOverrides::default(),
        )
        .unwrap();
        let short: Vec<String> = queue_specs(&short).into_iter().map(|s| s.name).collect();
        assert_eq!(
            short,
            [
                "gpuq.webhooks",
                "gpuq.webhooks.retry.1",
                "gpuq.webhooks.retry.2",
                "gpuq.webhooks.dead"
            ]
        );
        let tier = &specs[3];
        assert_eq!(tier.name, "t.webhooks.retry.16");
        assert_eq!(arg(tier, "x-message-ttl"), Some(&ArgValue::Int(16_000)));
        assert_eq!(
            arg(tier, "x-dead-letter-routing-key"),
            Some(&ArgValue::Str("t.webhooks".into()))
        );
        assert_eq!(
            arg(tier, "x-queue-type"),
            Some(&ArgValue::Str("quorum".into()))
        );
        assert_eq!(
            arg(&specs[0], "x-dead-letter-routing-key"),
            Some(&ArgValue::Str("t.webhooks.dead".into()))
        );
        let classic = Config::parse(
            "[queues]\ntype = \"classic\"",
            None,
            &ConfigOverrides::default(),
        )
        .unwrap();
        let specs = queue_specs(&classic);
        assert!(specs
            .iter()
            .all(|s| arg(s, "x-dead-letter-strategy").is_none()));
        assert!(arg(&specs[0], "x-delivery-limit").is_none());
    }
}
