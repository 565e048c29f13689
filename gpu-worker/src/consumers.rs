//! The queues a worker consumes in one broker session, and the jobs delivered
//! to it that have not started yet.
//!
//! A model's jobs wait in several queues (its own and its sub-queues, one
//! per tenant and priority level in use: `gpuq_common::fair_share`); each
//! is consumed separately, and a held job remembers which it came from.
//! Consumers start and stop while the worker runs (placement moves it between
//! models, new sub-queues appear) without touching jobs in flight. A cancelled
//! consumer is drained: what the broker sent before the cancel still arrives,
//! and goes back to its queue, so another worker takes it; unless the queue
//! is still served, only paused (pull mode, `crate::pull`), and then the job
//! is held here like any other.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use tokio_util::task::TaskTracker;

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::time::Instant;
use tokio_stream::StreamMap;

use gpuq_common::fair_share::SubQueue;

use crate::amqp::{Broker, BrokerError, Delivery};

/// One consumed queue: a model's sub-queue.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueKey {
    pub model: String,
    pub sub: SubQueue,
}

/// A consumer ended without being cancelled by us: the session is lost.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerLost {
    #[error("consumer of {queue}: {source}")]
    Failed {
        queue: String,
        #[source]
        source: BrokerError,
    },
    #[error("the broker cancelled the consumer of {queue}")]
    CancelledByBroker { queue: String },
}

/// A job delivered to this worker, not started yet.
pub struct Held {
    pub model: String,
    /// The sub-queue it came from (its tenant and priority level).
    pub sub: SubQueue,
    pub delivery: Delivery,
    pub received: Instant,
}

/// A delivery, or `None` when the consumer has ended.
type Event = (QueueKey, Option<Result<Delivery, BrokerError>>);

pub struct Consumers {
    broker: Arc<Broker>,
    worker_id: String,
    /// Deliveries of a job at or past this count are kept rather than requeued
    /// (one step before the queue's delivery limit dead-letters them).
    keep_from_delivery: u32,
    streams: StreamMap<String, BoxStream<'static, Event>>,
    /// Consumer tag of each consumed queue.
    active: BTreeMap<QueueKey, String>,
    /// Queues whose jobs this worker runs: the consumed ones and those
    /// paused in pull mode. Held jobs of any other go back.
    serve: BTreeSet<QueueKey>,
    /// Tags cancelled and still draining.
    cancelling: BTreeSet<String>,
    next_tag: u64,
    pub held: VecDeque<Held>,
    /// Where requeues of deliveries to cancelled consumers run: the session's
    /// job tracker, which shutdown waits for.
    requeues: TaskTracker,
}

impl Consumers {
    pub fn new(
        broker: Arc<Broker>,
        worker_id: &str,
        delivery_limit: u32,
        requeues: TaskTracker,
    ) -> Consumers {
        Consumers {
            broker,
            worker_id: worker_id.to_owned(),
            keep_from_delivery: delivery_limit.saturating_sub(1).max(1),
            streams: StreamMap::new(),
            active: BTreeMap::new(),
            serve: BTreeSet::new(),
            cancelling: BTreeSet::new(),
            next_tag: 0,
            held: VecDeque::new(),
            requeues,
        }
    }

    /// Models served now (consumed, or fetched in pull mode).
    pub fn serving(&self) -> BTreeSet<String> {
        self.serve.iter().map(|key| key.model.clone()).collect()
    }

    /// Queues consumed now.
    pub fn consuming_queues(&self) -> BTreeSet<QueueKey> {
        self.active.keys().cloned().collect()
    }

    /// Queues served now.
    pub fn serving_queues(&self) -> &BTreeSet<QueueKey> {
        &self.serve
    }

    /// Held jobs by model.
    pub fn waiting(&self) -> BTreeMap<String, u64> {
        let mut waiting = BTreeMap::new();
        for held in &self.held {
            *waiting.entry(held.model.clone()).or_default() += 1;
        }
        waiting
    }

    /// Starts and cancels consumers so that exactly `consume` is consumed,
    /// and serves `serve` (a superset: `consume` and the queues paused in
    /// pull mode); held jobs of queues no longer served go back to them.
    pub async fn apply(
        &mut self,
        consume: &BTreeSet<QueueKey>,
        serve: &BTreeSet<QueueKey>,
    ) -> Result<(), BrokerError> {
        self.serve = serve.union(consume).cloned().collect();
        let dropped: Vec<QueueKey> = self
            .active
            .keys()
            .filter(|key| !consume.contains(*key))
            .cloned()
            .collect();
        for key in dropped {
            let tag = self.active.remove(&key).expect("active queue");
            self.broker.cancel_consumer(&tag).await?;
            self.cancelling.insert(tag);
        }
        let (returned, kept): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| !self.serves(&h.model, &h.sub) && !self.should_keep(&h.delivery));
        self.held = kept.into();
        for held in returned {
            held.delivery.requeue().await;
        }
        for key in consume {
            if self.active.contains_key(key) {
                continue;
            }
            self.next_tag += 1;
            let tag = format!(
                "{}.{}.{}.{}",
                self.worker_id,
                key.model,
                key.sub.member(),
                self.next_tag
            );
            let deliveries = self
                .broker
                .start_consumer(&key.model, &key.sub, &tag)
                .await?;
            let (on_delivery, on_end) = (key.clone(), key.clone());
            let events = deliveries
                .map(move |delivery| (on_delivery.clone(), Some(delivery)))
                .chain(stream::once(async move { (on_end, None) }))
                .boxed();
            self.streams.insert(tag.clone(), events);
            self.active.insert(key.clone(), tag);
        }
        Ok(())
    }

    fn serves(&self, model: &str, sub: &SubQueue) -> bool {
        // Few queues per worker: a scan, not a key built per held job.
        self.serve.iter().any(|k| k.model == model && &k.sub == sub)
    }

    /// A job about to reach the delivery limit runs here instead of going back.
    fn should_keep(&self, delivery: &Delivery) -> bool {
        let count = delivery.header_u64("x-delivery-count").unwrap_or(0);
        count + 1 >= u64::from(self.keep_from_delivery)
    }

    /// Waits for the next delivery and holds it. `Err` when a consumer failed
    /// or ended without being cancelled: the session is lost. Cancel-safe.
    pub async fn receive(&mut self) -> Result<(), ConsumerLost> {
        if self.streams.is_empty() {
            return std::future::pending().await;
        }
        let Some((tag, (key, event))) = self.streams.next().await else {
            return std::future::pending().await;
        };
        match event {
            Some(Ok(delivery)) => {
                let returned = self.cancelling.contains(&tag) && !self.serve.contains(&key);
                if returned && !self.should_keep(&delivery) {
                    // In a task of its own: this future may be dropped by the
                    // caller's select, and the job must not be left unacked.
                    self.requeues.spawn(async move { delivery.requeue().await });
                } else {
                    self.held.push_back(Held {
                        model: key.model,
                        sub: key.sub,
                        delivery,
                        received: Instant::now(),
                    });
                }
                Ok(())
            }
            Some(Err(source)) => Err(ConsumerLost::Failed {
                queue: key.sub.queue_name(self.broker.names(), &key.model),
                source,
            }),
            None if self.cancelling.remove(&tag) => Ok(()),
            None => Err(ConsumerLost::CancelledByBroker {
                queue: key.sub.queue_name(self.broker.names(), &key.model),
            }),
        }
    }
}
