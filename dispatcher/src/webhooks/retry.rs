//! When a failed webhook is tried again (pure): a growing delay with
//! jitter, until the delivery is older than `webhooks.max_age_s`.
//!
//! The `n`th failure waits in one of two tier queues of
//! `webhooks.retry_delays_s`, the `n`th or the next, picked at random, so
//! receivers that come back see the retries of many jobs spread out rather
//! than in step. With the default tiers that is `4^(n-1)` or `4^n` seconds,
//! and from the 7th failure on, one try an hour (the last tier).

use gpuq_common::config::WebhooksConfig;

/// What to do with a delivery whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Park it in the tier queue of this delay, seconds.
    Retry { delay_s: u64 },
    /// Too old: to `<ns>.webhooks.dead`.
    GiveUp,
}

/// The tier of the `failures`th failure (1 for the first): the lower or the
/// higher of its two tiers, as `higher` says; the last past the end.
pub fn retry_delay_s(tiers: &[u64], failures: u64, higher: bool) -> u64 {
    debug_assert!(!tiers.is_empty(), "config validation keeps a tier");
    let last = tiers.len().saturating_sub(1);
    let tier = |n: u64| {
        let index = usize::try_from(n).unwrap_or(last).min(last);
        tiers.get(index).copied().unwrap_or(1)
    };
    if higher {
        tier(failures)
    } else {
        tier(failures.saturating_sub(1))
    }
}

/// Retry, or give up once the delivery's event is more than
/// `webhooks.max_age_s` old.
pub fn next_step(
    config: &WebhooksConfig,
    now_ms: u64,
    created_ms: u64,
    failures: u64,
    higher: bool,
) -> Next {
    if now_ms.saturating_sub(created_ms) > config.max_age_s.saturating_mul(1000) {
        return Next::GiveUp;
    }
    Next::Retry {
        delay_s: retry_delay_s(&config.retry_delays_s, failures, higher),
    }
}

/// [`next_step`] now, with a fair coin for the jitter.
pub fn next_step_now(config: &WebhooksConfig, created_ms: u64, failures: u64) -> Next {
    let now_ms = gpuq_common::now_ms();
    next_step(config, now_ms, created_ms, failures, rand::random::<bool>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuq_common::webhook::queues::RETRY_TIERS_S;

    /// `4^k` seconds up to 1024, then the hour cap.
    fn tier(k: u64) -> u64 {
        if k <= 5 {
            4u64.pow(u32::try_from(k).unwrap())
        } else {
            3600
        }
    }

    #[test]
    fn webhook_retry_tiers_grow_by_four_within_jitter_bounds() {
        for failures in 1..=12u64 {
            let low = retry_delay_s(&RETRY_TIERS_S, failures, false);
            let high = retry_delay_s(&RETRY_TIERS_S, failures, true);
            let expected = (tier(failures - 1), tier(failures));
            assert_eq!((low, high), expected, "{failures}");
        }
        assert_eq!(retry_delay_s(&RETRY_TIERS_S, 6, true), 3600);
        assert_eq!(retry_delay_s(&RETRY_TIERS_S, u64::MAX, false), 3600);
        assert_eq!(retry_delay_s(&[1, 2], 1, false), 1);
        assert_eq!(retry_delay_s(&[1, 2], 1, true), 2);
        assert_eq!(retry_delay_s(&[1, 2], 5, false), 2);
    }

    #[test]
    fn webhook_jitter_picks_both_tiers_and_nothing_else() {
        let config = WebhooksConfig::default();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            match next_step_now(&config, gpuq_common::now_ms(), 3) {
                Next::Retry { delay_s } => seen.insert(delay_s),
                Next::GiveUp => panic!("a fresh delivery is retried"),
            };
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![16, 64]);
    }

    #[test]
    fn webhook_retries_stop_at_max_age() {
        let config = WebhooksConfig {
            max_age_s: 10,
            ..WebhooksConfig::default()
        };
        let created = 1_000_000;
        assert_eq!(
            next_step(&config, created + 5_000, created, 2, false),
            Next::Retry { delay_s: 4 }
        );
        assert_eq!(
            next_step(&config, created + 10_000, created, 2, true),
            Next::Retry { delay_s: 16 }
        );
        let late = next_step(&config, created + 10_001, created, 2, true);
        assert_eq!(late, Next::GiveUp);
        // A clock behind the publisher's is not an old delivery.
        let early = next_step(&config, 0, created, 1, false);
        assert!(matches!(early, Next::Retry { .. }));
    }
}
