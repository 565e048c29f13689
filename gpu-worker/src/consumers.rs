//! The queues a worker consumes in one broker session, and the jobs delivered
//! to it that have not started yet.
//!
//! Consumers start and stop while the worker runs (placement moves it between
//! models) without touching jobs in flight. A cancelled consumer is drained:
//! what the broker sent before the cancel still arrives, and goes back to its
//! queue, so another worker takes it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use tokio_util::task::TaskTracker;

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::time::Instant;
use tokio_stream::StreamMap;

use crate::amqp::{Broker, BrokerError, Delivery};

/// A consumer ended without being cancelled by us: the session is lost.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerLost {
    #[error("consumer of {model}: {source}")]
    Failed {
        model: String,
        #[source]
        source: BrokerError,
    },
    #[error("the broker cancelled the consumer of {model}")]
    CancelledByBroker { model: String },
}

/// A job delivered to this worker, not started yet.
pub struct Held {
    pub model: String,
    pub delivery: Delivery,
    pub received: Instant,
}

/// A delivery, or `None` when the consumer has ended.
type Event = (String, Option<Result<Delivery, BrokerError>>);

pub struct Consumers {
    broker: Arc<Broker>,
    worker_id: String,
    /// Deliveries of a job at or past this count are kept rather than requeued
    /// (one step before the queue's delivery limit dead-letters them).
    keep_from_delivery: u32,
    streams: StreamMap<String, BoxStream<'static, Event>>,
    /// Consumer tag of each consumed model.
    active: BTreeMap<String, String>,
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
            cancelling: BTreeSet::new(),
            next_tag: 0,
            held: VecDeque::new(),
            requeues,
        }
    }

    /// Models consumed now.
    pub fn consuming(&self) -> BTreeSet<String> {
        self.active.keys().cloned().collect()
    }

    /// Held jobs by model.
    pub fn waiting(&self) -> BTreeMap<String, u64> {
        let mut waiting = BTreeMap::new();
        for held in &self.held {
            *waiting.entry(held.model.clone()).or_default() += 1;
        }
        waiting
    }

    /// Starts and cancels consumers so that exactly `desired` is consumed;
    /// held jobs of dropped models go back to their queues.
    pub async fn apply(&mut self, desired: &BTreeSet<String>) -> Result<(), BrokerError> {
        let dropped: Vec<String> = self
            .active
            .keys()
            .filter(|m| !desired.contains(*m))
            .cloned()
            .collect();
        for model in dropped {
            let tag = self.active.remove(&model).expect("active model");
            self.broker.cancel_consumer(&tag).await?;
            self.cancelling.insert(tag);
            let (returned, kept): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
                .into_iter()
                .partition(|h| h.model == model && !self.should_keep(&h.delivery));
            self.held = kept.into();
            for held in returned {
                held.delivery.requeue().await;
            }
        }
        for model in desired {
            if self.active.contains_key(model) {
                continue;
            }
            self.next_tag += 1;
            let tag = format!("{}.{model}.{}", self.worker_id, self.next_tag);
            let deliveries = self.broker.start_consumer(model, &tag).await?;
            let (on_delivery, on_end) = (model.clone(), model.clone());
            let events = deliveries
                .map(move |delivery| (on_delivery.clone(), Some(delivery)))
                .chain(stream::once(async move { (on_end, None) }))
                .boxed();
            self.streams.insert(tag.clone(), events);
            self.active.insert(model.clone(), tag);
        }
        Ok(())
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
        let Some((tag, (model, event))) = self.streams.next().await else {
            return std::future::pending().await;
        };
        match event {
            Some(Ok(delivery)) => {
                if self.cancelling.contains(&tag) && !self.should_keep(&delivery) {
                    // In a task of its own: this future may be dropped by the
                    // caller's select, and the job must not be left unacked.
                    self.requeues.spawn(async move { delivery.requeue().await });
                } else {
                    self.held.push_back(Held {
                        model,
                        delivery,
                        received: Instant::now(),
                    });
                }
                Ok(())
            }
            Some(Err(source)) => Err(ConsumerLost::Failed { model, source }),
            None if self.cancelling.remove(&tag) => Ok(()),
            None => Err(ConsumerLost::CancelledByBroker { model }),
        }
    }
}
