//! The worker's life: pick the models its budget allows, consume their queues,
//! run jobs up to its concurrency, heartbeat, and stop cleanly.
//!
//! Shutdown (token cancelled) stops the consumers first, lets in-flight jobs
//! finish for `worker.shutdown_grace_s`, then closes the connection: whatever is
//! still unacked goes back to its queue, so nothing is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use gpuq_common::config::Config;
use gpuq_common::record::AmqpLink;
use gpuq_common::redact_url;
use gpuq_common::registry::{ModelConfig, Registry};
use gpuq_common::topology::Topology;
use gpuq_common::vram::admitted_models;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::amqp::{Broker, BrokerNodes};
use crate::fair::FairScheduler;
use crate::job::{CancelRegistry, JobContext};
use crate::pool::{Loader, ModelPool};
use crate::runtime;
use crate::session::{consume, ExitReason, Session, SessionEnd};
use crate::stats::WorkerStats;
use crate::store::{Store, StoreError};
use crate::sub_queues::KnownSubQueues;

/// Who this worker is and what it may serve; set by the dispatcher or by flags.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub worker_id: String,
    pub host_id: String,
    /// GPU index as the dispatcher numbers it (`-` without a GPU).
    pub gpu: String,
    /// VRAM this worker may use, MiB; `None` means no limit.
    pub vram_budget_mib: Option<u64>,
    /// Serve only these models (still subject to the budget); `None` means all.
    pub models: Option<Vec<String>>,
    /// The `CUDA_VISIBLE_DEVICES` this worker runs with (for the free-memory check).
    pub cuda_visible_devices: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("no model can be served: {0}")]
    NoModels(String),
    #[error("unknown model '{0}' in --models; it is not in the registry")]
    UnknownModel(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Artifacts(#[from] gpuq_common::artifacts::ArtifactError),
}

/// Models this worker serves: those in `filter` (all when `None`) whose declared
/// VRAM fits the budget. Returns the chosen models and, for each refused one, why.
pub fn select_models(
    registry: &Registry,
    budget_mib: Option<u64>,
    filter: Option<&[String]>,
) -> Result<(Vec<ModelConfig>, Vec<String>), WorkerError> {
    if let Some(filter) = filter {
        if let Some(unknown) = filter.iter().find(|id| registry.model(id).is_none()) {
            return Err(WorkerError::UnknownModel(unknown.clone()));
        }
    }
    let mut chosen = Vec::new();
    let mut refused = Vec::new();
    for model in registry.models() {
        if filter.is_some_and(|f| !f.contains(&model.id)) {
            continue;
        }
        match budget_mib {
            Some(budget) if model.vram_mib > budget => refused.push(format!(
                "model '{}' needs {} MiB, more than this worker's budget of {budget} MiB",
                model.id, model.vram_mib
            )),
            _ => chosen.push(model.clone()),
        }
    }
    if chosen.is_empty() {
        let reason = if refused.is_empty() {
            "the registry has no models".to_owned()
        } else {
            refused.join("; ")
        };
        return Err(WorkerError::NoModels(reason));
    }
    Ok((chosen, refused))
}

/// Runs the worker until `shutdown` is cancelled or a model gets stuck.
pub async fn run(
    config: Config,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> Result<ExitReason, WorkerError> {
    let config = Arc::new(config);
    let names = config.names();
    tracing::info!(amqp = %redact_url(&config.amqp_nodes().join(",")), redis = %config.redis.target(), "connecting");
    let store = Store::connect(&config.redis, names.clone(), config.jobs.finished_ttl_s).await?;
    // Models are admitted by what they were measured to use, where known.
    let ids: Vec<String> = config.registry().ids();
    let learned = store.learned_vram(&ids).await.unwrap_or_default();
    let admitted = Registry::new(&admitted_models(
        config.registry().models(),
        &learned,
        &config.gpu,
    ));
    let filter = options.models.as_deref();
    let (served, refused) = match select_models(&admitted, options.vram_budget_mib, filter) {
        Ok(chosen) => chosen,
        // Every model it may serve was measured past its budget: it stays
        // up serving none (its heartbeat keeps the dispatcher from starting
        // it again and again) until one fits again (`vram::watch_learned`).
        Err(WorkerError::NoModels(reason))
            if select_models(config.registry(), options.vram_budget_mib, filter).is_ok() =>
        {
            tracing::warn!(%reason, "every model this worker may serve was measured past its budget; serving none until one fits");
            (Vec::new(), Vec::new())
        }
        Err(error) => return Err(error),
    };
    for reason in &refused {
        tracing::info!("not consuming: {reason}");
    }
    // Heartbeat from here on, so the dispatcher sees a live worker while models load.
    let stats = Arc::new(WorkerStats::default());
    let served_ids: Vec<String> = served.iter().map(|m| m.id.clone()).collect();
    let loader: Loader = Arc::new(|model| Box::pin(async move { runtime::load(&model).await }));
    let pool = ModelPool::new(
        options.vram_budget_mib,
        config.dispatcher.max_models_per_worker as usize,
        loader,
        crate::gpu::free_memory_probe(options.cuda_visible_devices.as_deref()),
    );
    let stopping = CancellationToken::new();
    // The heartbeat outlives `serve` (the record says `stopping` while jobs drain).
    let background = TaskTracker::new();
    background.spawn(crate::heartbeat::run(
        store.clone(),
        Arc::clone(&config),
        options.clone(),
        served_ids.clone(),
        Arc::clone(&stats),
        Arc::clone(&pool),
        stopping.clone(),
    ));
    let result = serve(
        &config,
        &options,
        served,
        store.clone(),
        Arc::clone(&stats),
        pool,
        shutdown,
    )
    .await;
    stopping.cancel();
    background.close();
    background.wait().await;
    if let Err(error) = store.remove_worker(&options.worker_id).await {
        tracing::warn!(%error, "worker record not removed; it will expire");
    }
    tracing::info!(reason = ?result.as_ref().ok(), "worker stopped");
    result
}

/// Delays between reconnection attempts to RabbitMQ.
const RECONNECT_INITIAL: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Consumes the served models' queues and runs jobs until told to stop,
/// reconnecting to RabbitMQ with backoff whenever the connection is lost. Jobs
/// running when it drops finish and record their outcome; their acks are lost
/// with the channel, so the broker redelivers them and the claim in Redis acks
/// them without running them again.
// Longer than 80 lines: the reconnect loop and the drain after it, in the order they happen.
async fn serve(
    config: &Arc<Config>,
    options: &WorkerOptions,
    served: Vec<ModelConfig>,
    store: Store,
    stats: Arc<WorkerStats>,
    pool: Arc<ModelPool>,
    shutdown: CancellationToken,
) -> Result<ExitReason, WorkerError> {
    let (assignment_sender, mut assignment) = watch::channel(None);
    // The assignment watcher and the cancel listener live as long as this
    // function: a child token stops them whichever way it ends.
    let watching = shutdown.child_token();
    let background = TaskTracker::new();
    if config.placement.enabled {
        background.spawn(crate::placement::watch_assignment(
            store.clone(),
            options.worker_id.clone(),
            Duration::from_millis(config.worker.heartbeat_interval_ms),
            assignment_sender,
            watching.clone(),
        ));
    }
    let served_ids: Vec<String> = served.iter().map(|m| m.id.clone()).collect();
    let fair = Arc::new(std::sync::Mutex::new(FairScheduler::new(
        config.tenants.clone(),
    )));
    let (known_sender, mut known) = watch::channel(KnownSubQueues::new());
    background.spawn(crate::sub_queues::watch_sub_queues(
        store.clone(),
        served_ids.clone(),
        crate::sub_queues::POLL,
        known_sender,
        Arc::clone(&fair),
        watching.clone(),
    ));
    let models: HashMap<String, ModelConfig> =
        served.into_iter().map(|m| (m.id.clone(), m)).collect();
    let artifacts = gpuq_common::artifacts::ArtifactStore::open(&config.artifacts)?;
    let mut topology = Topology::for_config(config);
    // With webhooks on, the worker declares their queues too: a job that
    // ends before any dispatcher's sender has declared them keeps its webhook.
    if config.webhooks.enabled() {
        topology
            .queues
            .extend(gpuq_common::webhook::queues::queue_specs(config));
    }
    let restart = CancellationToken::new();
    let (vram, learned) = crate::vram::start(
        config,
        options,
        &store,
        (&models, &pool),
        (&background, &restart, &watching),
    )
    .await;
    let cancels = Arc::new(CancelRegistry::default());
    background.spawn(listen_for_cancels(
        store.clone(),
        Arc::clone(&cancels),
        watching.clone(),
    ));
    let permits = Arc::new(Semaphore::new(config.worker.concurrency as usize));
    let tracker = TaskTracker::new();
    let nodes = BrokerNodes::for_config(config);
    let outcome = loop {
        let Some(broker) =
            connect_with_backoff(config, &nodes, &options.worker_id, &topology, &shutdown).await
        else {
            break ExitReason::Shutdown;
        };
        stats.set_amqp(AmqpLink {
            node: nodes.connected_node(),
            reconnects: nodes.reconnects(),
        });
        let context = Arc::new(JobContext {
            config: Arc::clone(config),
            names: config.names(),
            worker_id: options.worker_id.clone(),
            host_id: options.host_id.clone(),
            gpu: options.gpu.clone(),
            store: store.clone(),
            broker: Arc::clone(&broker),
            models: models.clone(),
            pool: Arc::clone(&pool),
            artifacts: artifacts.clone(),
            cancels: Arc::clone(&cancels),
            stats: Arc::clone(&stats),
            restart: restart.clone(),
            vram: vram.clone(),
            learned: Arc::clone(&learned),
        });
        let session = Session {
            served: &served_ids,
            permits: &permits,
            tracker: &tracker,
            shutdown: &shutdown,
            restart: &restart,
            fair: &fair,
        };
        let end = consume(context, session, &mut assignment, &mut known).await;
        broker.cancel_consumers().await;
        match end {
            SessionEnd::Stop(reason) => {
                wait_for_in_flight(&tracker, config).await;
                broker.close().await;
                break reason;
            }
            SessionEnd::Lost(error) => {
                tracing::warn!(%error, "rabbitmq connection lost; reconnecting to the next node");
                nodes.connection_lost(broker.node);
                stats.set_amqp(AmqpLink {
                    node: None,
                    reconnects: nodes.reconnects(),
                });
                broker.close().await;
            }
        }
    };
    tracker.close();
    wait_for_in_flight(&tracker, config).await;
    watching.cancel();
    background.close();
    background.wait().await;
    pool.unload_all().await;
    Ok(outcome)
}

/// Connects to a RabbitMQ node (each in turn), retrying with back-off;
/// `None` once `shutdown` is cancelled.
async fn connect_with_backoff(
    config: &Config,
    nodes: &BrokerNodes,
    worker_id: &str,
    topology: &Topology,
    shutdown: &CancellationToken,
) -> Option<Arc<Broker>> {
    let mut backoff = RECONNECT_INITIAL;
    loop {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return None,
            connected = Broker::connect(nodes, worker_id, config.names(), topology, config.amqp.publish_timeout()) => connected,
        };
        match connected {
            Ok(broker) => return Some(Arc::new(broker)),
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "cannot connect to rabbitmq");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
            }
        }
    }
}

/// Relays cancel requests to the jobs running here, resubscribing if Redis drops.
async fn listen_for_cancels(
    store: Store,
    cancels: Arc<CancelRegistry>,
    shutdown: CancellationToken,
) {
    loop {
        match store.cancel_requests().await {
            Ok(requests) => {
                let mut requests = std::pin::pin!(requests);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        request = requests.next() => match request {
                            Some(job_id) => {
                                if cancels.cancel(&job_id) {
                                    tracing::info!(job_id = %job_id, "cancel requested");
                                }
                            }
                            None => break,
                        },
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot subscribe to cancel requests; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn wait_for_in_flight(tracker: &TaskTracker, config: &Config) {
    tracker.close();
    let grace = Duration::from_secs(config.worker.shutdown_grace_s);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            grace_s = grace.as_secs(),
            "in-flight jobs outlived the grace period; they go back to their queues"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuq_common::ConfigOverrides;

    fn registry() -> Registry {
        let text = r#"
[[models]]
id = "small"
feature = "f"
runtime = "echo"
vram_mib = 1000
[[models]]
id = "big"
feature = "g"
runtime = "echo"
vram_mib = 20000
"#;
        Config::parse(text, None, &ConfigOverrides::default())
            .unwrap()
            .registry()
            .clone()
    }

    #[test]
    fn models_over_budget_are_refused_with_a_reason() {
        let (chosen, refused) = select_models(&registry(), Some(8000), None).unwrap();
        assert_eq!(
            chosen.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["small"]
        );
        assert!(refused[0].contains("'big' needs 20000 MiB"), "{refused:?}");
    }

    #[test]
    fn no_budget_serves_everything_and_filter_narrows() {
        assert_eq!(select_models(&registry(), None, None).unwrap().0.len(), 2);
        let only_big = ["big".to_string()];
        assert_eq!(
            select_models(&registry(), None, Some(&only_big)).unwrap().0[0].id,
            "big"
        );
    }

    #[test]
    fn nothing_fitting_or_unknown_filter_is_an_error() {
        assert!(matches!(
            select_models(&registry(), Some(10), None),
            Err(WorkerError::NoModels(_))
        ));
        let unknown = ["nope".to_string()];
        assert!(matches!(
            select_models(&registry(), None, Some(&unknown)),
            Err(WorkerError::UnknownModel(_))
        ));
    }
}
