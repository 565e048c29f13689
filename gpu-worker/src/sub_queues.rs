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

/// The queues to consume for the placed `models`: each one's own queue and
/// its listed sub-queues; and the VRAM tiers (`SubQueue::vram_mib`) that a
/// worker with `budget_mib` fits, of every served model in `known` whether
/// placed here or not (a tier holds jobs given back by smaller workers, and
/// waits for a worker big enough, not for placement).
pub fn queue_keys(
    models: &BTreeSet<String>,
    known: &KnownSubQueues,
    budget_mib: Option<u64>,
) -> BTreeSet<QueueKey> {
    let mut keys = BTreeSet::new();
    let key = |model: &str, sub: &SubQueue| QueueKey {
        model: model.to_owned(),
        sub: sub.clone(),
    };
    for model in models {
        keys.insert(key(model, &SubQueue::main()));
    }
    for (model, subs) in known {
        for sub in subs {
            let wanted = match sub.vram_mib {
                None => models.contains(model),
                Some(_) => sub.fits(budget_mib),
            };
            if wanted {
                keys.insert(key(model, sub));
            }
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
        let keys = queue_keys(&models, &known, None);
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

    #[test]
    fn vram_tiers_go_to_workers_they_fit_placed_there_or_not() {
        let placed: BTreeSet<String> = ["a".to_owned()].into();
        let tier = SubQueue::main().with_vram(12_000);
        let acme = SubQueue::for_job("acme", None, true);
        // "b" is served (listed) but not placed here.
        let known: KnownSubQueues = [
            ("a".to_owned(), [tier.clone(), acme.clone()].into()),
            ("b".to_owned(), [tier.clone(), acme.clone()].into()),
        ]
        .into();
        let keys = |budget| -> BTreeSet<(String, SubQueue)> {
            queue_keys(&placed, &known, budget)
                .into_iter()
                .map(|k| (k.model, k.sub))
                .collect()
        };
        let small = keys(Some(8_192));
        assert_eq!(
            small,
            [("a".into(), SubQueue::main()), ("a".into(), acme.clone())].into()
        );
        let big = keys(Some(16_384));
        assert_eq!(big.len(), 4, "{big:?}");
        assert!(big.contains(&("a".into(), tier.clone())));
        assert!(big.contains(&("b".into(), tier)));
        assert!(
            !big.contains(&("b".into(), acme)),
            "not placed: no tenant sub-queue"
        );
    }
}
