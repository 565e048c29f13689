//! One Redis subscription to the events channel per process, shared by every
//! `wait` and every live event stream of the gateway.
//!
//! Before, each Server-Sent-Events client opened a Redis connection of its
//! own and its events queued without bound behind a client that did not read:
//! a few thousand idle clients cost thousands of Redis connections and
//! unbounded memory. Here one subscription feeds a bounded broadcast ring
//! ([`STREAM_BUFFER_EVENTS`] events): a reader that falls that far behind is
//! told so ([`HubEvent::Gap`]) and is expected to re-read the record, never
//! buffered for. When the subscription drops (Redis restarted), every waiter
//! is woken to re-read, every stream gets a gap, and the hub subscribes again
//! with back-off. With Sentinel, the subscription also ends when the link
//! follows the primary elsewhere, and each new one is made on the primary
//! the sentinels name then (`gpuq_common::redis_link`).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use gpuq_common::redis_link::{Messages, RedisLink};
use gpuq_common::StatusEvent;
use parking_lot::Mutex;
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;

/// Events kept for slow readers; one that falls further behind gets a gap.
/// About 300 bytes each, shared by every reader.
pub const STREAM_BUFFER_EVENTS: usize = 1024;

/// What a stream reader receives.
#[derive(Debug, Clone)]
pub enum HubEvent {
    Status(Arc<StatusEvent>),
    /// Events were missed (the reader lagged, or the subscription was lost):
    /// re-read the records.
    Gap,
}

/// A reader of the shared subscription.
pub struct EventReceiver {
    inner: broadcast::Receiver<Arc<StatusEvent>>,
    gaps: broadcast::Receiver<()>,
}

impl EventReceiver {
    /// The next event; `None` once the hub is gone. A gap ends nothing by
    /// itself: the caller decides (the gateway ends the stream).
    pub async fn recv(&mut self) -> Option<HubEvent> {
        tokio::select! {
            biased;
            gap = self.gaps.recv() => match gap {
                Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => Some(HubEvent::Gap),
                Err(broadcast::error::RecvError::Closed) => None,
            },
            event = self.inner.recv() => match event {
                Ok(event) => Some(HubEvent::Status(event)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some(HubEvent::Gap),
                Err(broadcast::error::RecvError::Closed) => None,
            },
        }
    }
}

type Waiters = HashMap<String, Vec<oneshot::Sender<()>>>;

pub(super) struct EventHub {
    waiters: Mutex<Waiters>,
    events: broadcast::Sender<Arc<StatusEvent>>,
    gaps: broadcast::Sender<()>,
    /// Cancelled when the hub is dropped: the subscription task ends at once
    /// instead of at the next message.
    stop: CancellationToken,
}

impl Drop for EventHub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl EventHub {
    /// Subscribes (the first subscription must succeed, so a caller learns
    /// that Redis is down), then keeps the subscription alive in a task that
    /// ends when the hub is dropped.
    pub(super) async fn start(
        link: RedisLink,
        channel: String,
    ) -> Result<Arc<EventHub>, redis::RedisError> {
        let pubsub = link.subscribe(&channel).await?;
        let hub = Arc::new(EventHub {
            waiters: Mutex::new(HashMap::new()),
            events: broadcast::channel(STREAM_BUFFER_EVENTS).0,
            gaps: broadcast::channel(1).0,
            stop: CancellationToken::new(),
        });
        // Not joined by anyone: its life is the hub's (it ends on `stop`).
        tokio::spawn(run(
            Arc::downgrade(&hub),
            hub.stop.clone(),
            link,
            channel,
            pubsub,
        ));
        Ok(hub)
    }

    pub(super) fn receiver(&self) -> EventReceiver {
        EventReceiver {
            inner: self.events.subscribe(),
            gaps: self.gaps.subscribe(),
        }
    }

    pub(super) fn register(&self, job_id: &str) -> oneshot::Receiver<()> {
        let (sender, receiver) = oneshot::channel();
        self.lock_waiters()
            .entry(job_id.to_owned())
            .or_default()
            .push(sender);
        receiver
    }

    pub(super) fn forget(&self, job_id: &str) {
        let mut waiters = self.lock_waiters();
        if let Some(senders) = waiters.get_mut(job_id) {
            senders.retain(|s| !s.is_closed());
            if senders.is_empty() {
                waiters.remove(job_id);
            }
        }
    }

    fn deliver(&self, event: StatusEvent) {
        if event.status.is_final() {
            self.wake(&event.job_id);
        }
        // No receiver is not an error: nobody is streaming now.
        let _ = self.events.send(Arc::new(event));
    }

    fn wake(&self, job_id: &str) {
        if let Some(senders) = self.lock_waiters().remove(job_id) {
            for sender in senders {
                let _ = sender.send(());
            }
        }
    }

    /// The subscription was lost: every waiter re-reads, every stream has a gap.
    fn lost(&self) {
        let all: Vec<String> = self.lock_waiters().keys().cloned().collect();
        all.iter().for_each(|id| self.wake(id));
        let _ = self.gaps.send(());
    }

    fn lock_waiters(&self) -> parking_lot::MutexGuard<'_, Waiters> {
        self.waiters.lock()
    }
}

/// Reads the subscription into the hub; re-subscribes with back-off when it
/// drops; ends when the hub is gone.
async fn run(
    hub: Weak<EventHub>,
    stop: CancellationToken,
    link: RedisLink,
    channel: String,
    first: Messages,
) {
    let mut pubsub = Some(first);
    let mut backoff = Duration::from_millis(200);
    loop {
        if let Some(subscription) = pubsub.take() {
            backoff = Duration::from_millis(200);
            let mut messages = subscription;
            while let Some(message) = tokio::select! {
                _ = stop.cancelled() => return,
                message = messages.next() => message,
            } {
                let Some(hub) = hub.upgrade() else { return };
                if let Ok(event) =
                    serde_json::from_slice::<StatusEvent>(message.get_payload_bytes())
                {
                    hub.deliver(event);
                }
            }
            let Some(hub) = hub.upgrade() else { return };
            tracing::warn!("redis events subscription lost; resubscribing");
            hub.lost();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        match link.subscribe(&channel).await {
            Ok(subscription) => pubsub = Some(subscription),
            Err(error) => {
                tracing::warn!(%error, "redis events subscription failed; retrying");
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
