//! The placement loop. Every dispatcher runs it; only the holder of the
//! placement lease in Redis decides, for every worker of every host, so two
//! hosts never fight over a worker. If the holder dies its lease expires and
//! another dispatcher takes over within a few intervals; meanwhile workers
//! keep their last assignment until it expires, then consume everything.
//!
//! Rounds run every `placement.interval_ms`, and at once when a worker
//! announces it ran out of jobs. Each round: read the queue depths (passive declares: ready messages and
//! consumers), every live worker record (models it may serve, loaded models,
//! jobs running and held), measured model timings; estimate arrivals; run
//! [`decide`]; write each worker's assignment with an expiry, and announce
//! the ones that changed on the assignments channel.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::StreamExt;
use gpuq_common::config::Config;
use gpuq_common::record::{Assignment, ModelTimings, WorkerRecord};
use gpuq_common::registry::{ModelConfig, RuntimeParams};
use gpuq_common::{now_ms, Names};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;

use crate::placement::{decide, Decision, ModelState, Policy, Snapshot, WorkerState};
use crate::store::Store;

/// Load time assumed for a model nobody has loaded yet, milliseconds.
const DEFAULT_LOAD_MS: u64 = 10_000;
/// Run time assumed for a model that has not run yet, milliseconds.
const DEFAULT_RUN_MS: u64 = 1_000;
/// Shortest gap between two rounds triggered by idle workers.
const EARLIEST_REPEAT: Duration = Duration::from_millis(100);

/// A worker's last published queues, and its main model with since when.
type Published = (Vec<String>, Option<(String, u64)>);

/// What the placer remembers between rounds.
#[derive(Default)]
struct History {
    /// Per model: jobs in the system and jobs finished at the last round, and when.
    previous: BTreeMap<String, (u64, u64, u64)>,
    arrivals_per_s: BTreeMap<String, f64>,
    unserved_since_ms: BTreeMap<String, u64>,
    /// Last published assignment of each worker.
    published: BTreeMap<String, Published>,
    stored_timings: HashMap<String, ModelTimings>,
}

/// Runs placement rounds until `shutdown`; gives the lease up on the way out.
pub async fn run(config: Config, host_id: String, store: Store, shutdown: CancellationToken) {
    let placement = &config.placement;
    let interval = Duration::from_millis(placement.interval_ms);
    let lease_ttl = interval * 3;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut broker: Option<(Connection, Channel)> = None;
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
                history = History {
                    stored_timings: store.model_timings().await.unwrap_or_default(),
                    ..History::default()
                };
            }
        }
        if !held {
            continue;
        }
        if let Err(error) = round(&config, &host_id, &store, &mut broker, &mut history).await {
            tracing::warn!(%error, "placement round skipped");
            broker = None;
        }
    }
    if let Some((connection, _)) = broker {
        let _ = connection.close(200, "dispatcher stopping".into()).await;
    }
    if leading {
        if let Err(error) = store.release_placement_lease(&host_id).await {
            tracing::warn!(%error, "placement lease not released; it will expire");
        }
    }
}

/// Why a placement round could not finish; the next round tries again.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("rabbitmq: {0}")]
    Broker(#[from] lapin::Error),
    #[error("queue of model {model}: {source}")]
    Queue {
        model: String,
        #[source]
        source: lapin::Error,
    },
    #[error("redis: {0}")]
    Store(#[from] redis::RedisError),
}

async fn round(
    config: &Config,
    host_id: &str,
    store: &Store,
    broker: &mut Option<(Connection, Channel)>,
    history: &mut History,
) -> Result<(), RoundError> {
    let names = config.names();
    if broker.is_none() {
        let connection = gpuq_common::amqp::connect_with_frame_max(
            &config.amqp_url,
            &format!("gpuq-placer {host_id}"),
            gpuq_common::amqp::CONTROL_FRAME_MAX,
        )
        .await?;
        let channel = connection.create_channel().await?;
        *broker = Some((connection, channel));
    }
    let (_, channel) = broker.as_ref().expect("connected above");
    let ready = queue_depths(channel, &names, config.registry().models()).await?;
    let now = now_ms();
    let ttl_ms = config.worker.heartbeat_ttl_ms;
    let workers: Vec<WorkerRecord> = store
        .all_worker_records()
        .await?
        .into_iter()
        .filter(|w| now.saturating_sub(w.heartbeat_ms) < ttl_ms)
        .collect();
    let timings = measured_timings(&workers);
    let snapshot = snapshot(config, now, &ready, &workers, &timings, history);
    let decision = decide(&snapshot, &policy(config));
    for model in &decision.unservable {
        tracing::warn!(model = %model, "model has jobs but no live worker can serve it");
    }
    let (assignments, changed) = assignments(&decision, host_id, now, history);
    history.stored_timings.extend(timings.clone());
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

fn policy(config: &Config) -> Policy {
    Policy {
        min_residency_ms: config.placement.min_residency_ms,
        max_queue_wait_ms: config.placement.max_queue_wait_ms,
        lookahead_ms: config.placement.interval_ms * 3,
    }
}

/// Ready messages in each model's queue.
async fn queue_depths(
    channel: &Channel,
    names: &Names,
    models: &[ModelConfig],
) -> Result<BTreeMap<String, u64>, RoundError> {
    let mut depths = BTreeMap::new();
    for model in models {
        let queue = channel
            .queue_declare(
                names.model_queue(&model.id).into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| RoundError::Queue {
                model: model.id.clone(),
                source,
            })?;
        depths.insert(model.id.clone(), u64::from(queue.message_count()));
    }
    Ok(depths)
}

/// Mean load and run times per model, from every worker's metrics.
fn measured_timings(workers: &[WorkerRecord]) -> HashMap<String, ModelTimings> {
    let mut sums: BTreeMap<&str, (f64, u64, f64, u64)> = BTreeMap::new();
    for worker in workers {
        for (model, metrics) in &worker.metrics.models {
            let entry = sums.entry(model).or_default();
            entry.0 += metrics.load_seconds_sum;
            entry.1 += metrics.loads;
            entry.2 += metrics.run.sum_s;
            entry.3 += metrics.run.count;
        }
    }
    sums.into_iter()
        .filter(|(_, (_, loads, _, runs))| *loads > 0 && *runs > 0)
        .map(|(model, (load_s, loads, run_s, runs))| {
            (
                model.to_owned(),
                ModelTimings {
                    load_ms: (load_s * 1000.0 / loads as f64).round() as u64,
                    run_ms: (run_s * 1000.0 / runs as f64).round().max(1.0) as u64,
                },
            )
        })
        .collect()
}

/// Timings before any measurement: a synthetic model's declared ones, else defaults.
fn estimated_timings(model: &ModelConfig) -> ModelTimings {
    match model.runtime_params() {
        Ok(RuntimeParams::Sleep(sleep)) => ModelTimings {
            load_ms: sleep.load_ms,
            run_ms: sleep.duration_ms.max(1),
        },
        _ => ModelTimings {
            load_ms: DEFAULT_LOAD_MS,
            run_ms: DEFAULT_RUN_MS,
        },
    }
}

fn snapshot(
    config: &Config,
    now: u64,
    ready: &BTreeMap<String, u64>,
    workers: &[WorkerRecord],
    timings: &HashMap<String, ModelTimings>,
    history: &mut History,
) -> Snapshot {
    let mut models = Vec::new();
    for model in config.registry().models() {
        let id = &model.id;
        let held: u64 = workers.iter().filter_map(|w| w.waiting.get(id)).sum();
        let running: u64 = workers
            .iter()
            .flat_map(|w| &w.resident_models)
            .filter(|r| &r.model == id)
            .map(|r| r.in_use as u64)
            .sum();
        let finished: u64 = workers
            .iter()
            .filter_map(|w| w.metrics.models.get(id))
            .flat_map(|m| m.jobs.values())
            .sum();
        let waiting = ready.get(id).copied().unwrap_or(0) + held;
        let in_system = waiting + running;
        if let Some((before, finished_before, at)) = history.previous.get(id).copied() {
            let seconds = now.saturating_sub(at) as f64 / 1000.0;
            if seconds > 0.0 {
                let arrived = (in_system + finished.saturating_sub(finished_before))
                    .saturating_sub(before) as f64;
                let rate = history.arrivals_per_s.entry(id.clone()).or_default();
                *rate = 0.5 * *rate + 0.5 * arrived / seconds;
            }
        }
        history
            .previous
            .insert(id.clone(), (in_system, finished, now));
        if waiting > 0 && running == 0 {
            history.unserved_since_ms.entry(id.clone()).or_insert(now);
        } else {
            history.unserved_since_ms.remove(id);
        }
        let timing = timings
            .get(id)
            .or_else(|| history.stored_timings.get(id))
            .copied()
            .unwrap_or_else(|| estimated_timings(model));
        let policy = config.placement.models.get(id).cloned().unwrap_or_default();
        models.push(ModelState {
            id: id.clone(),
            vram_mib: model.vram_mib,
            load_ms: timing.load_ms,
            run_ms: timing.run_ms,
            waiting,
            running,
            arrivals_per_s: history.arrivals_per_s.get(id).copied().unwrap_or(0.0),
            unserved_since_ms: history.unserved_since_ms.get(id).copied(),
            min_replicas: policy.min_replicas,
            max_replicas: policy.max_replicas,
        });
    }
    let workers = workers
        .iter()
        .map(|w| WorkerState {
            id: w.worker_id.clone(),
            host: w.host.clone(),
            budget_mib: (w.vram_budget_mib > 0).then_some(w.vram_budget_mib),
            max_models: config.dispatcher.max_models_per_worker as usize,
            eligible: w.models.clone(),
            resident: w
                .resident_models
                .iter()
                .map(|r| (r.model.clone(), r.loaded_at_ms))
                .collect(),
            running: w
                .resident_models
                .iter()
                .filter(|r| r.in_use > 0)
                .map(|r| r.model.clone())
                .collect(),
            pinned: config
                .placement
                .models
                .iter()
                .filter(|(_, p)| p.pin.contains(&w.worker_id))
                .map(|(id, _)| id.clone())
                .collect(),
            main: history
                .published
                .get(&w.worker_id)
                .and_then(|(_, main)| main.clone()),
            consuming: history
                .published
                .get(&w.worker_id)
                .map(|(models, _)| models.clone())
                .unwrap_or_default(),
        })
        .collect();
    Snapshot {
        now_ms: now,
        models,
        workers,
    }
}

/// Each worker's assignment, and the workers whose assignment changed.
fn assignments(
    decision: &Decision,
    host_id: &str,
    now: u64,
    history: &mut History,
) -> (Vec<(String, Assignment)>, Vec<String>) {
    let mut all = Vec::new();
    let mut changed = Vec::new();
    for (worker, models) in &decision.assignments {
        let main = decision.main.get(worker).cloned();
        let previous = history.published.get(worker);
        let main_since = match previous.and_then(|(_, m)| m.as_ref()) {
            Some((previous_main, since)) if Some(previous_main) == main.as_ref() => *since,
            _ => now,
        };
        if previous.is_none_or(|(previous_models, previous_main)| {
            previous_models != models || previous_main.as_ref().map(|(m, _)| m) != main.as_ref()
        }) {
            tracing::info!(worker = %worker, models = ?models, main = ?main, "placement: new assignment");
            changed.push(worker.clone());
        }
        history.published.insert(
            worker.clone(),
            (models.clone(), main.clone().map(|m| (m, main_since))),
        );
        all.push((
            worker.clone(),
            Assignment {
                models: models.clone(),
                main,
                by: host_id.to_owned(),
                decided_ms: now,
            },
        ));
    }
    history
        .published
        .retain(|worker, _| decision.assignments.contains_key(worker));
    (all, changed)
}
