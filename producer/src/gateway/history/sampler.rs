//! The task that fills [`History`]: a point every [`SAMPLE_INTERVAL`](super::SAMPLE_INTERVAL) until
//! the gateway's shutdown token is cancelled.
//!
//! Each point costs what one `GET /v1/system` costs: the host and worker
//! records (one set read and one pipelined read each) and one passive queue
//! declare per model and listed sub-queue, so O(models + sub-queues +
//! workers), never a scan of the jobs.
//!
//! Jobs finished per second come from the job events the gateway already
//! receives (the process's one subscription, shared with the event streams):
//! every final status is published by the script that writes it, so counting
//! them costs Redis nothing. Not from the status indexes' sizes: those are
//! trimmed to the finished-job lifetime, so their growth falls to zero once a
//! day of jobs has passed; nor from the workers' counters, which know neither
//! cancelled jobs nor jobs timed out in their queue. When events are lost (the
//! subscription reconnected, or this task fell the shared ring's 1,024 events
//! behind) the point says `events_missed`.

use std::time::{Duration, Instant};

use gpuq_common::now_ms;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{FinishedCounts, History, Point};
use crate::producer::{EventReceiver, HubEvent, Producer};

/// Samples into `history` every `interval` until `shutdown`.
pub async fn run(
    producer: &Producer,
    history: &History,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut events: Option<EventReceiver> = None;
    let mut finished = FinishedCounts::default();
    let mut since = Instant::now();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            event = next_event(&mut events) => match event {
                Some(HubEvent::Status(event)) => finished.count(event.status),
                Some(HubEvent::Gap) => finished.missed = true,
                None => {
                    events = None;
                    finished.missed = true;
                }
            },
            _ = ticker.tick() => {
                if events.is_none() {
                    // Redis was down at start, or the hub ended: try again.
                    events = producer.subscribe_events().await.ok();
                    finished.missed |= events.is_none();
                }
                let status = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    status = producer.system_status() => status,
                };
                match status {
                    Ok(status) => {
                        let point = Point::from_status(now_ms(), &status, &finished, since.elapsed());
                        history.push(point);
                        finished = FinishedCounts::default();
                        since = Instant::now();
                        failing = false;
                    }
                    // Counts carry over to the next point that succeeds.
                    Err(error) if !failing => {
                        tracing::warn!(%error, "history sample failed; retrying every tick");
                        failing = true;
                    }
                    Err(error) => tracing::debug!(%error, "history sample failed"),
                }
            }
        }
    }
}

/// The next event, or never while there is no subscription.
async fn next_event(events: &mut Option<EventReceiver>) -> Option<HubEvent> {
    match events {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}
