//! The placement loop. Every dispatcher runs it; only the holder of the
//! placement lease in Redis decides, for every worker of every host, so two
//! hosts never fight over a worker. If the holder dies its lease expires and
//! another dispatcher takes over within a few intervals; meanwhile workers
//! keep their last assignment until it expires, then consume everything.
//!
//! Rounds run every `placement.interval_ms`, and at once when a worker
//! announces it ran out of jobs. Each round: read the queue depths (passive declares: ready messages and
//! consumers), every live worker record (models it may serve, loaded models,
//! jobs running and held) and the learned VRAM; then the round's pure part,
//! `placement_decision::inputs::round` (measured timings, arrivals, a model
//! placed by its admitted VRAM, `decide`, the assignments); write each
//! worker's assignment with an expiry, and announce the ones that changed
//! on the assignments channel; and keep the autoscaling gauges
//! (`crate::autoscaling`) from the same snapshot.

use std::time::Duration;

use futures_util::StreamExt;
use gpuq_common::config::Config;
use gpuq_common::now_ms;
use gpuq_common::record::WorkerRecord;
use tokio_util::sync::CancellationToken;

use crate::amqp::{BrokerError, QueueReader};
use crate::autoscaling::{self, SharedBacklog};
use crate::placement_decision::inputs::{round as placement_round, History, Round};
use crate::store::Store;

/// Shortest gap between two rounds triggered by idle workers.
const EARLIEST_REPEAT: Duration = Duration::from_millis(100);

/// Longest one placement round may take (its broker and Redis calls).
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs placement rounds until `shutdown`; gives the lease up on the way out.
pub async fn run(
    config: Config,
    host_id: String,
    store: Store,
    backlog: SharedBacklog,
    shutdown: CancellationToken,
) {
    let placement = &config.placement;
    let interval = Duration::from_millis(placement.interval_ms);
    let lease_ttl = interval * 3;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut broker: Option<QueueReader> = None;
    let mut history = History::default();
    let mut leading = false;
    let mut idle = None;
    let mut last_round = tokio::time::Instant::now();
    loop {
        if idle.is_none() {
            idle = store.idle_workers().await.ok().map(Box::pin);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
            announced = async { idle.as_mut()?.next().await }, if idle.is_some() => {
                match announced {
                    // A worker ran dry: decide now (at most every 100 ms), if leading.
                    Some(_) if leading && last_round.elapsed() >= EARLIEST_REPEAT => {}
                    Some(_) => continue,
                    None => {
                        idle = None;
                        continue;
                    }
                }
            }
        }
        last_round = tokio::time::Instant::now();
        let held = match store.hold_placement_lease(&host_id, lease_ttl).await {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(%error, "cannot reach redis for the placement lease");
                false
            }
        };
        if held != leading {
            leading = held;
            if held {
                tracing::info!("this dispatcher now places models for every host");
                history = History::resumed(store.model_timings().await.unwrap_or_default());
            }
        }
        if !held {
            // Only the placing dispatcher exports the autoscaling gauges.
            backlog.lock().take();
            continue;
        }
        // A RabbitMQ node going down may stop answering mid-round: bounded,
        // so the next round reconnects (to the next node).
        let bounded = tokio::time::timeout(
            ROUND_TIMEOUT,
            round(
                &config,
                &host_id,
                &store,
                &mut broker,
                &mut history,
                &backlog,
            ),
        );
        match bounded.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "placement round skipped");
                broker = None;
            }
            Err(_) => {
                tracing::warn!(
                    timeout_s = ROUND_TIMEOUT.as_secs(),
                    "placement round did not finish; reconnecting"
                );
                broker = None;
            }
        }
    }
    if let Some(reader) = broker {
        reader.close().await;
    }
    backlog.lock().take();
    if leading {
        if let Err(error) = store.release_placement_lease(&host_id).await {
            tracing::warn!(%error, "placement lease not released; it will expire");
        }
    }
}

/// Why a placement round could not finish; the next round tries again.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("redis: {0}")]
    Store(#[from] crate::store::StoreError),
}

async fn round(
    config: &Config,
    host_id: &str,
    store: &Store,
    broker: &mut Option<QueueReader>,
    history: &mut History,
    backlog: &SharedBacklog,
) -> Result<(), RoundError> {
    let reader = match broker {
        Some(reader) => reader,
        None => broker.insert(QueueReader::connect(config, host_id).await?),
    };
    let models: Vec<String> = config.registry().ids();
    let queues = store.job_queues(&models).await?;
    let ready = reader.ready_counts(&queues).await?;
    let now = now_ms();
    let ttl_ms = config.worker.heartbeat_ttl_ms;
    let workers: Vec<WorkerRecord> = store
        .all_worker_records()
        .await?
        .into_iter()
        .filter(|w| now.saturating_sub(w.heartbeat_ms) < ttl_ms)
        .collect();
    // Merged every few seconds, not every round: the raw hash grows with
    // workers × models, and the figures change slowly.
    let merged_at = history.learned_vram.as_ref().map_or(0, |(at, _)| *at);
    if now.saturating_sub(merged_at) >= gpuq_common::vram::stored::MERGE_INTERVAL_MS {
        history.learned_vram = Some((now, store.merge_learned_vram().await?));
    }
    let learned = history
        .learned_vram
        .as_ref()
        .map(|(_, learned)| learned.clone())
        .unwrap_or_default();
    let Round {
        snapshot,
        decision,
        assignments,
        changed,
        timings,
    } = placement_round(config, host_id, now, &ready, &workers, &learned, history);
    for model in &decision.unservable {
        tracing::warn!(model = %model, "model has jobs but no live worker can serve it");
    }
    // The oldest queued jobs cost a bounded but not small read: every few
    // seconds, not every round (a scraper does not look more often).
    // Also at once when a model has waiting jobs the last read did not see.
    let stale = history
        .oldest
        .as_ref()
        .is_none_or(|(read_ms, oldest, cut_at)| {
            now.saturating_sub(*read_ms) >= autoscaling::OLDEST_REFRESH_MS
                || (cut_at.is_none()
                    && snapshot
                        .models
                        .iter()
                        .any(|m| m.waiting > 0 && !oldest.contains_key(&m.id)))
        });
    if stale {
        let read = store.oldest_queued(autoscaling::OLDEST_SAMPLE).await?;
        let (oldest, cut_at) = autoscaling::oldest_by_model(config.registry(), &read);
        history.oldest = Some((now, oldest, cut_at));
    }
    if let Some((_, oldest, cut_at)) = &history.oldest {
        *backlog.lock() = Some(autoscaling::compute(&snapshot, &decision, oldest, *cut_at));
    }
    store
        .publish_placement(
            &assignments,
            &changed,
            Duration::from_millis(config.placement.assignment_ttl_ms()),
            &timings,
        )
        .await?;
    Ok(())
}
