//! This dispatcher's exclusive hold on its host id: the host lease
//! (`<ns>:host:<host_id>:lease`, holder and scripts in
//! `gpuq_common::host_lease`).
//!
//! Worker ids are `<host_id>-gpu<N>-slot<M>`, so two dispatchers under one
//! host id would run workers with the same ids and each one's watchdog would
//! kill the other's workers. Holding the host id exclusively keeps worker ids
//! unique across the fleet. The life of the lease:
//!
//! - **take** ([`HostLease::acquire`]) before any worker starts. A lease held
//!   by another is waited on until it would have expired plus a second (at
//!   most its holder's time to live + 1 s), so a restart right after a crash
//!   (SIGKILL: no release) starts once the dead holder's lease runs out; a
//!   lease still held then belongs to a live dispatcher, and this one refuses
//!   to start ([`HostLeaseError::Held`]).
//! - **renew** ([`HostLease::keep`]) every heartbeat interval, on a task of
//!   its own that outlives the shutdown token, so the lease stays held while
//!   the workers drain. Found taken by another (Redis lost the key and another
//!   dispatcher took it), it logs an error and cancels the shutdown token: this
//!   dispatcher stops its workers rather than fight ([`HostLeaseError::Lost`]).
//! - **release** ([`HostLease::release`]) once the workers are stopped and the
//!   host record removed, only if still ours.
//!
//! It does not decide placement (`placement_loop` has its own lease).

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuq_common::host_lease::{describe_value, HostLeaseHolder, Renewal};
use gpuq_common::now_ms;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::{Store, StoreError};

/// The shortest lease: a dispatcher whose heartbeat interval is short still
/// gets a few seconds of Redis or scheduling hiccups before losing it.
const MIN_TTL: Duration = Duration::from_secs(5);

/// How long past a found lease's expiry a starting dispatcher still waits
/// before it judges the holder alive (its renewal may be a little late).
const EXPIRY_SLACK: Duration = Duration::from_secs(1);

/// How often a starting dispatcher tries again to take a held lease.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// The lease's time to live: `max(3 × heartbeat interval, 5 s)`, where the
/// interval is `worker.heartbeat_interval_ms` (the dispatcher's heartbeat
/// too). Three intervals: two renewals may be missed before it expires.
pub fn lease_ttl(heartbeat_interval: Duration) -> Duration {
    (heartbeat_interval * 3).max(MIN_TTL)
}

#[derive(Debug, thiserror::Error)]
pub enum HostLeaseError {
    #[error(
        "host id '{host_id}' is in use by another dispatcher: {holder}; its lease {key} \
         was renewed while this one waited {waited:.1?} for it to expire, so that dispatcher \
         is alive; stop it, or give this one a distinct host id (dispatcher.host_id or --host-id)"
    )]
    Held {
        host_id: String,
        holder: String,
        key: String,
        waited: Duration,
    },
    #[error(
        "host id '{host_id}' was taken over by another dispatcher: {holder}; this one \
         stopped its workers rather than run two dispatchers under one host id; give each \
         a distinct host id (dispatcher.host_id or --host-id)"
    )]
    Lost { host_id: String, holder: String },
    #[error("host lease: {0}")]
    Store(#[from] StoreError),
}

/// The host id, held by this dispatcher.
#[derive(Clone)]
pub struct HostLease {
    store: Store,
    host_id: String,
    /// The stored value: this process's [`HostLeaseHolder`] as JSON.
    value: String,
    ttl: Duration,
}

impl HostLease {
    /// Takes the lease of `host_id`, waiting for a held one to expire (see
    /// the module doc). `Ok(None)` when `shutdown` came first.
    pub async fn acquire(
        store: &Store,
        host_id: &str,
        ttl: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Option<HostLease>, HostLeaseError> {
        let holder = HostLeaseHolder::new(
            gpuq_common::process::hostname(),
            std::process::id(),
            now_ms(),
        );
        let value = holder.to_value();
        let started = Instant::now();
        let mut deadline = None;
        loop {
            let Some(found) = store.take_host_lease(host_id, &value, ttl).await? else {
                tracing::info!(
                    host = host_id,
                    ttl_ms = ttl.as_millis() as u64,
                    "host id leased"
                );
                let lease = HostLease {
                    store: store.clone(),
                    host_id: host_id.to_owned(),
                    value,
                    ttl,
                };
                return Ok(Some(lease));
            };
            // Gone since the take: try again at once.
            let Some(found_value) = found.value else {
                continue;
            };
            let holder = describe_value(&found_value, now_ms());
            let deadline = *deadline.get_or_insert_with(|| {
                let wait = found.remaining.unwrap_or(ttl) + EXPIRY_SLACK;
                tracing::warn!(
                    host = host_id,
                    "host id is held by another dispatcher: {holder}; waiting up to {wait:.1?} for its lease to expire (a crashed holder's lease runs out)"
                );
                started + wait
            });
            let now = Instant::now();
            if now >= deadline {
                return Err(HostLeaseError::Held {
                    host_id: host_id.to_owned(),
                    holder,
                    key: store.host_lease_key(host_id),
                    waited: started.elapsed(),
                });
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(RETRY_EVERY.min(deadline - now)) => {}
            }
        }
    }

    /// Renews the lease every `interval` until [`Keeper::stop`]. Lost to
    /// another dispatcher, it cancels `shutdown`.
    pub fn keep(self, interval: Duration, shutdown: CancellationToken) -> Keeper {
        let keeper = Keeper {
            lease: self,
            stop: CancellationToken::new(),
            lost_to: Arc::default(),
            tracker: TaskTracker::new(),
        };
        keeper.tracker.spawn(renew(
            keeper.lease.clone(),
            interval,
            keeper.stop.clone(),
            shutdown,
            Arc::clone(&keeper.lost_to),
        ));
        keeper.tracker.close();
        keeper
    }

    /// Gives the lease up, if still ours; a failure only means it expires
    /// after its time to live.
    pub async fn release(self) {
        match self
            .store
            .release_host_lease(&self.host_id, &self.value)
            .await
        {
            Ok(true) => tracing::info!(host = %self.host_id, "host id released"),
            Ok(false) => tracing::warn!(host = %self.host_id, "host lease was no longer ours"),
            Err(error) => tracing::warn!(
                %error,
                ttl_ms = self.ttl.as_millis() as u64,
                "host lease not released; it expires after its time to live"
            ),
        }
    }
}

/// The renewal task of a held lease.
pub struct Keeper {
    lease: HostLease,
    stop: CancellationToken,
    /// Who took the lease, once it was lost.
    lost_to: Arc<Mutex<Option<String>>>,
    tracker: TaskTracker,
}

impl Keeper {
    /// Stops renewing; the lease back, or [`HostLeaseError::Lost`] if another
    /// dispatcher took it meanwhile (then nothing of this host id is ours to
    /// remove).
    pub async fn stop(self) -> Result<HostLease, HostLeaseError> {
        self.stop.cancel();
        self.tracker.wait().await;
        match self.lost_to.lock().take() {
            Some(holder) => Err(HostLeaseError::Lost {
                host_id: self.lease.host_id.clone(),
                holder,
            }),
            None => Ok(self.lease),
        }
    }
}

/// Renews `lease` every `interval` until `stop`; a Redis error is retried at
/// the next tick. Taken by another, it records who and cancels `shutdown`.
async fn renew(
    lease: HostLease,
    interval: Duration,
    stop: CancellationToken,
    shutdown: CancellationToken,
    lost_to: Arc<Mutex<Option<String>>>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let host = lease.host_id.as_str();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match lease
            .store
            .renew_host_lease(host, &lease.value, lease.ttl)
            .await
        {
            Ok(Renewal::Renewed) => {}
            Ok(Renewal::Retaken) => tracing::warn!(
                host,
                "host lease had vanished from Redis and nobody else held it; taken again"
            ),
            Ok(Renewal::HeldByAnother) => {
                let holder = match lease.store.host_lease_value(host).await {
                    Ok(Some(value)) => describe_value(&value, now_ms()),
                    Ok(None) => "it has since let it go".to_owned(),
                    Err(error) => format!("unreadable: {error}"),
                };
                tracing::error!(
                    host,
                    "host id taken over by another dispatcher: {holder}; stopping this one and its workers rather than fight"
                );
                *lost_to.lock() = Some(holder);
                shutdown.cancel();
                return;
            }
            Err(error) => tracing::warn!(%error, host, "host lease not renewed; trying again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ttl_is_three_heartbeats_and_at_least_five_seconds() {
        assert_eq!(lease_ttl(Duration::from_millis(200)), MIN_TTL);
        assert_eq!(lease_ttl(Duration::from_secs(2)), Duration::from_secs(6));
        assert_eq!(lease_ttl(Duration::from_secs(10)), Duration::from_secs(30));
    }

    #[test]
    fn the_refusal_names_the_holder_the_key_and_the_fix() {
        let error = HostLeaseError::Held {
            host_id: "host-a".into(),
            holder: "hostname gpu-box, pid 4242, since unix ms 1 (3 s ago)".into(),
            key: "gpuq:host:host-a:lease".into(),
            waited: Duration::from_millis(6_100),
        };
        let message = error.to_string();
        for part in [
            "host id 'host-a' is in use by another dispatcher",
            "hostname gpu-box, pid 4242",
            "gpuq:host:host-a:lease",
            "waited 6.1s",
            "dispatcher.host_id",
        ] {
            assert!(message.contains(part), "{part:?} not in {message}");
        }
    }
}
