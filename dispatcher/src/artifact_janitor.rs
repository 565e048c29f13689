//! Gives artifacts a lifetime: every dispatcher sweeps the artifact store
//! (local directory or S3) and deletes what was written more than
//! `artifacts.ttl_s` ago, so uploads and offloaded outputs do not pile up
//! forever after the jobs that named them have expired from Redis.
//!
//! No lease or coordination: a sweep is a listing plus deletes, and deleting
//! an already-deleted artifact is not an error, so any number of dispatchers
//! may sweep the same store. The sweep runs every quarter of the lifetime,
//! at least every second and at most every ten minutes.

use std::time::Duration;

use gpuq_common::artifacts::ArtifactStore;
use tokio_util::sync::CancellationToken;

/// Most time between two sweeps, whatever the lifetime.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// Least time between two sweeps (tiny lifetimes in tests).
const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How often artifacts of lifetime `ttl` are swept: `ttl / 4`, within 1 s to 10 min.
pub fn sweep_interval(ttl: Duration) -> Duration {
    (ttl / 4).clamp(MIN_SWEEP_INTERVAL, MAX_SWEEP_INTERVAL)
}

/// Sweeps `store` until `shutdown` is cancelled; a failed sweep is logged and
/// the next one tries again.
pub async fn run(store: ArtifactStore, ttl: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(sweep_interval(ttl));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let swept = tokio::select! {
            _ = shutdown.cancelled() => return,
            swept = store.delete_expired(ttl) => swept,
        };
        match swept {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::info!(deleted, ttl_s = ttl.as_secs(), "expired artifacts deleted")
            }
            Err(error) => tracing::warn!(%error, "artifact sweep failed; retrying next round"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_run_every_quarter_lifetime_within_bounds() {
        assert_eq!(sweep_interval(Duration::from_secs(1)), MIN_SWEEP_INTERVAL);
        assert_eq!(
            sweep_interval(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(86_400)),
            MAX_SWEEP_INTERVAL
        );
    }
}
