//! When a failed webhook is tried again (pure): a growing delay with
//! jitter, until the delivery is older than `webhooks.max_age_s`.
//!
//! Attempt `n` (the `n`th failure) waits in one of the two tier queues for
//! `4^(n-1)` and `4^n` seconds, picked at random, so receivers that come
//! back see the retries of many jobs spread out rather than in step. The
//! tiers stop at an hour: from the 7th failure on, one try an hour.

use gpuq_common::webhook::queues::RETRY_TIERS_S;

/// What to do with a delivery whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Park it in the tier queue of this delay, seconds.
    Retry { delay_s: u64 },
    /// Too old: to `<ns>.webhooks.dead`.
    GiveUp,
}

/// The tier of the `failures`th failure (1 for the first): the lower or the
/// higher of its two tiers, as `higher` says.
pub fn retry_delay_s(failures: u64, higher: bool) -> u64 {
    let last = RETRY_TIERS_S.len() - 1;
    let tier = |n: u64| RETRY_TIERS_S[usize::try_from(n).unwrap_or(last).min(last)];
    if higher {
        tier(failures)
    } else {
        tier(failures.saturating_sub(1))
    }
}

/// Retry, or give up once the delivery's event is more than `max_age_s` old.
pub fn next_step(now_ms: u64, created_ms: u64, max_age_s: u64, failures: u64, higher: bool) -> Next {
    if now_ms.saturating_sub(created_ms) > max_age_s.saturating_mul(1000) {
        return Next::GiveUp;
    }
    Next::Retry {
        delay_s: retry_delay_s(failures, higher),
    }
}

/// [`next_step`] with a fair coin for the jitter.
pub fn next_step_now(created_ms: u64, max_age_s: u64, failures: u64) -> Next {
    next_step(
        gpuq_common::now_ms(),
        created_ms,
        max_age_s,
        failures,
        rand::random::<bool>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let low = retry_delay_s(failures, false);
            let high = retry_delay_s(failures, true);
            assert_eq!((low, high), (tier(failures - 1), tier(failures)), "{failures}");
        }
        assert_eq!((retry_delay_s(1, false), retry_delay_s(1, true)), (1, 4));
        assert_eq!((retry_delay_s(6, false), retry_delay_s(6, true)), (1024, 3600));
        assert_eq!((retry_delay_s(7, false), retry_delay_s(7, true)), (3600, 3600));
        assert_eq!(retry_delay_s(u64::MAX, true), 3600);
    }

    #[test]
    fn webhook_jitter_picks_both_tiers_and_nothing_else() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            match next_step_now(gpuq_common::now_ms(), 3600, 3) {
                Next::Retry { delay_s } => seen.insert(delay_s),
                Next::GiveUp => panic!("a fresh delivery is retried"),
            };
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![16, 64]);
    }

    #[test]
    fn webhook_retries_stop_at_max_age() {
        let created = 1_000_000;
        assert_eq!(
            next_step(created + 5_000, created, 10, 2, false),
            Next::Retry { delay_s: 4 }
        );
        assert_eq!(
            next_step(created + 10_000, created, 10, 2, true),
            Next::Retry { delay_s: 16 }
        );
        assert_eq!(next_step(created + 10_001, created, 10, 2, true), Next::GiveUp);
        // A clock behind the publisher's is not an old delivery.
        assert!(matches!(next_step(0, created, 10, 1, false), Next::Retry { .. }));
    }
}
