//! Which sub-queues of its models a worker consumes: a model's own queue
//! always, and every sub-queue listed for it in Redis (a producer lists one
//! when it first publishes there; `gpuq_common::fair_share`). Read again
//! every poll, so a new tenant's first job waits at most one poll for a
//! consumer; a list Redis cannot give keeps the last one (consumers are
//! never dropped for a Redis outage). The same poll reads how many jobs of
//! each tenant with a `max_running` run across the fleet, for the fair
//! scheduler (`crate::fair`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpuq_common::fair_share::SubQueue;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::consumers::QueueKey;
use crate::fair::FairScheduler;
use crate::store::Store;

/// How often the lists are read: a new tenant's first job waits at most
/// this long for a consumer (one small pipelined read per worker).
pub const POLL: Duration = Duration::from_secs(1);

/// The sub-queues listed for each served model.
pub type KnownSubQueues = BTreeMap<String, BTreeSet<SubQueue>>;

/// The queues to consume for `models`: each model's own queue and its
/// listed sub-queues.
pub fn queue_keys(models: &BTreeSet<String>, known: &KnownSubQueues) -> BTreeSet<QueueKey> {
    let mut keys = BTreeSet::new();
    for model in models {
        keys.insert(QueueKey {
            model: model.clone(),
            sub: SubQueue::main(),
        });
        for sub in known.get(model).into_iter().flatten() {
            keys.insert(QueueKey {
                model: model.clone(),
                sub: sub.clone(),
            });
        }
    }
    keys
}

/// Keeps `sender` equal to the sub-queues listed for `models`, and
/// `scheduler`'s running counts current, read every `poll`.
pub async fn watch_sub_queues(
    store: Store,
    models: Vec<String>,
    poll: Duration,
    sender: watch::Sender<KnownSubQueues>,
    scheduler: Arc<Mutex<FairScheduler>>,
    stop: CancellationToken,
) {
    let limited = scheduler
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .limited_tenants();
    loop {
        if !limited.is_empty() {
            match store.tenants_running(&limited).await {
                Ok(running) => scheduler
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .set_running(running),
                Err(error) => tracing::warn!(%error, "cannot read the tenants' running jobs"),
            }
        }
        match store.sub_queues(&models).await {
            Ok(known) => {
                sender.send_if_modified(|current| {
                    let changed = *current != known;
                    if changed {
                        tracing::info!(sub_queues = ?known, "sub-queues listed");
                        *current = known;
                    }
                    changed
                });
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the sub-queue lists; keeping the current one")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_has_its_own_queue_and_its_listed_sub_queues() {
        let models: BTreeSet<String> = ["a".to_owned(), "b".to_owned()].into();
        let acme = SubQueue::for_job("acme", Some(9), true);
        let known: KnownSubQueues = [("a".to_owned(), [acme.clone()].into())].into();
        let keys = queue_keys(&models, &known);
        assert_eq!(keys.len(), 3);
        assert!(keys.contains(&QueueKey {
            model: "a".into(),
            sub: acme
        }));
        assert!(keys.contains(&QueueKey {
            model: "b".into(),
            sub: SubQueue::main()
        }));
    }
}
