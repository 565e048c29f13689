//! Pull mode: for a model with more than one queue, a busy worker fetches
//! the job it runs instead of holding one delivery of every queue.
//!
//! A worker consumes each queue with a prefetch of `worker.prefetch` per
//! consumer, so a model with a sub-queue per tenant and priority level
//! (`gpuq_common::fair_share`) has a job of each waiting at every busy
//! worker: with six sub-queues, five jobs sit behind one running job while
//! another worker of the model is idle. On the mixed five-model trace with
//! three tenants that cost placement 5 to 10 % of makespan (issue 15,
//! docs/benchmarks.md). A per-channel prefetch would not do: the broker, not
//! the fair scheduler, would then choose which tenant's job comes next.
//!
//! So such a model's queues are consumed only while the worker has a free
//! slot and nothing to run: it *listens*, and a job published then starts at
//! once. When its slots fill, those consumers are cancelled (what they were
//! sent meanwhile is held and runs here, never requeued: a requeue counts
//! towards a quorum queue's delivery limit). When a slot frees, the worker
//! fetches (`basic.get`) one job, trying the model's queues in the fair
//! scheduler's order ([`FairScheduler::order`]), and runs it; only when
//! every queue is empty does it listen again. Nothing polls: an idle
//! worker waits on consumers. A fetched job is unacked until its outcome is
//! stored, as a delivered one is, so a worker death redelivers it.
//!
//! Models with a single queue (one tenant, one level: the common case, and
//! the no-op benchmarks) keep plain consumers: prefetch there is what keeps
//! the next job a round trip closer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use tokio::time::Instant;

use gpuq_common::fair_share::SubQueue;

use crate::amqp::{Broker, BrokerError};
use crate::consumers::{Held, QueueKey};
use crate::fair::{lock, Candidate, FairScheduler};
use crate::placement::{Affinity, Queues};

pub struct PullMode {
    /// The queues of each model fetched rather than consumed while busy.
    models: BTreeMap<String, Vec<SubQueue>>,
    /// Their consumers run: a slot was free and every queue was empty.
    listening: bool,
    /// When each model's queues were last tried.
    tried: HashMap<String, Instant>,
}

impl PullMode {
    /// A new session's worker is idle: it listens.
    pub fn new() -> PullMode {
        PullMode {
            models: BTreeMap::new(),
            listening: true,
            tried: HashMap::new(),
        }
    }

    /// Takes the queues served now: the models with more than one are
    /// fetched from.
    pub fn set_served(&mut self, serve: &BTreeSet<QueueKey>) {
        let mut by_model: BTreeMap<String, Vec<SubQueue>> = BTreeMap::new();
        for key in serve {
            by_model
                .entry(key.model.clone())
                .or_default()
                .push(key.sub.clone());
        }
        by_model.retain(|_, subs| subs.len() > 1);
        let now = Instant::now();
        for model in by_model.keys() {
            self.tried.entry(model.clone()).or_insert(now);
        }
        self.tried.retain(|model, _| by_model.contains_key(model));
        self.models = by_model;
    }

    /// The queues to consume now: every served one while listening, else
    /// those of models not in pull mode.
    pub fn consumed(&self, serve: &BTreeSet<QueueKey>) -> BTreeSet<QueueKey> {
        let pushed = |key: &&QueueKey| self.listening || !self.models.contains_key(&key.model);
        serve.iter().filter(pushed).cloned().collect()
    }

    /// No model is in pull mode.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    pub fn listening(&self) -> bool {
        self.listening
    }

    /// A free slot should fetch (consumers of pull models are paused).
    pub fn due(&self) -> bool {
        !self.listening && !self.models.is_empty()
    }

    /// Every queue was empty: consume them until the slots fill.
    pub fn listen(&mut self) {
        self.listening = true;
    }

    /// The slots are full: stop consuming the pull models' queues. `true`
    /// when that changes what is consumed.
    pub fn pause(&mut self) -> bool {
        let changed = self.listening && !self.models.is_empty();
        self.listening = false;
        changed
    }

    /// The models to try, in order. With placement: a model not tried for
    /// `starve_after` first (its jobs would otherwise wait behind a loaded
    /// model's backlog forever), then the main model, then loaded ones, then
    /// the rest; without, one group of every queue (fair share across
    /// models, as among held jobs).
    fn groups(
        &self,
        loaded: &BTreeSet<String>,
        queues: &Queues,
        affinity: Option<Affinity>,
        now: Instant,
    ) -> Vec<Vec<(&str, &SubQueue)>> {
        fn queues_of<'a>(
            (model, subs): (&'a String, &'a Vec<SubQueue>),
        ) -> Vec<(&'a str, &'a SubQueue)> {
            subs.iter().map(|sub| (model.as_str(), sub)).collect()
        }
        let Some(affinity) = affinity else {
            return vec![self.models.iter().flat_map(queues_of).collect()];
        };
        let rank = |model: &String| {
            let tried = self.tried.get(model).copied().unwrap_or(now);
            if now.duration_since(tried) >= affinity.starve_after {
                0
            } else if queues.main.as_ref() == Some(model) {
                1
            } else if loaded.contains(model) {
                2
            } else {
                3
            }
        };
        let mut models: Vec<(&String, &Vec<SubQueue>)> = self.models.iter().collect();
        models.sort_by_key(|(model, _)| rank(model));
        models.into_iter().map(queues_of).collect()
    }

    /// Fetches the job a free slot runs: of the first model (in
    /// [`Self::groups`] order) with one, from its queue that fair share
    /// puts first. `None` when every queue of every pull model is empty
    /// (or holds only jobs of tenants at their `max_running`).
    pub async fn fetch(
        &mut self,
        broker: &Broker,
        scheduler: &Mutex<FairScheduler>,
        loaded: &BTreeSet<String>,
        queues: &Queues,
        affinity: Option<Affinity>,
    ) -> Result<Option<Held>, BrokerError> {
        let now = Instant::now();
        let groups = self.groups(loaded, queues, affinity, now);
        let mut tried = Vec::new();
        let mut found = None;
        'groups: for group in &groups {
            let order = {
                let candidates: Vec<Candidate<'_>> = group
                    .iter()
                    .map(|(model, sub)| Candidate {
                        tenant: &sub.tenant,
                        level: sub.level,
                        model,
                    })
                    .collect();
                lock(scheduler).order(&candidates)
            };
            tried.extend(group.iter().map(|(model, _)| model.to_string()));
            for index in order {
                let (model, sub) = group[index];
                if let Some(delivery) = broker.get(model, sub).await? {
                    found = Some(Held {
                        model: model.to_owned(),
                        sub: sub.clone(),
                        delivery,
                        received: now,
                    });
                    break 'groups;
                }
            }
        }
        for model in tried {
            self.tried.insert(model, now);
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuq_common::fair_share::Level;
    use std::time::Duration;

    fn key(model: &str, tenant: &str) -> QueueKey {
        QueueKey {
            model: model.into(),
            sub: SubQueue {
                tenant: tenant.into(),
                level: Level::Normal,
                vram_mib: None,
            },
        }
    }

    fn served() -> BTreeSet<QueueKey> {
        // m: main queue and a tenant's; n: main queue only.
        [key("m", "default"), key("m", "t1"), key("n", "default")].into()
    }

    #[test]
    fn only_models_with_several_queues_pause_when_busy() {
        let mut pull = PullMode::new();
        pull.set_served(&served());
        assert!(pull.listening() && !pull.due());
        assert_eq!(pull.consumed(&served()), served(), "idle: everything");
        assert!(pull.pause());
        assert!(pull.due());
        assert_eq!(pull.consumed(&served()), [key("n", "default")].into());
        assert!(!pull.pause(), "already paused");
        pull.listen();
        assert_eq!(pull.consumed(&served()), served());
        // One queue per model: nothing to pause.
        let mut single = PullMode::new();
        single.set_served(&[key("n", "default")].into());
        assert!(single.is_empty() && !single.pause() && !single.due());
    }

    #[test]
    fn models_are_tried_starving_then_main_then_loaded() {
        let mut pull = PullMode::new();
        let serve: BTreeSet<QueueKey> = ["a", "b", "c"]
            .iter()
            .flat_map(|m| [key(m, "default"), key(m, "t1")])
            .collect();
        pull.set_served(&serve);
        let queues = Queues {
            models: ["a", "b", "c"].iter().map(|m| m.to_string()).collect(),
            main: Some("c".into()),
        };
        let affinity = Affinity {
            starve_after: Duration::from_secs(5),
            grace: Duration::from_millis(50),
        };
        let loaded: BTreeSet<String> = ["b".to_string()].into();
        let first_models = |pull: &PullMode, now| -> Vec<String> {
            let groups = pull.groups(&loaded, &queues, Some(affinity), now);
            groups.iter().map(|g| g[0].0.to_string()).collect()
        };
        let now = Instant::now();
        assert_eq!(first_models(&pull, now), ["c", "b", "a"]);
        // a has not been tried for longer than starve_after: it goes first.
        let later = now + Duration::from_secs(6);
        for model in ["b", "c"] {
            pull.tried.insert(model.into(), later);
        }
        assert_eq!(first_models(&pull, later), ["a", "c", "b"]);
        // Without placement: one group of every queue.
        let all = pull.groups(&loaded, &queues, None, now);
        assert_eq!((all.len(), all[0].len()), (1, 6));
    }
}
