//! The dispatcher's life: discover GPUs, plan slots, declare the AMQP topology,
//! supervise one worker per slot, keep the host record fresh, stop cleanly.
//!
//! Shutdown stops every worker with SIGTERM (each finishes or returns its
//! in-flight jobs within `worker.shutdown_grace_s`), then removes the host record.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpuq_common::amqp::{connect, declare_topology};
use gpuq_common::config::Config;
use gpuq_common::process::LogFormat;
use gpuq_common::record::{HostRecord, SlotRecord};
use gpuq_common::topology::Topology;
use gpuq_common::{now_ms, redact_url};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gpu::{discover, DiscoveryError, GpuInfo, GpuSource};
use crate::plan::{plan, Plan};
use crate::store::Store;
use crate::supervisor::{
    supervise_slot, RestartPolicy, SharedSlotStatus, SlotStatus, WorkerCommand,
};

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct DispatcherOptions {
    /// The config file, passed on to workers.
    pub config_path: PathBuf,
    /// Overrides `dispatcher.host_id`.
    pub host_id: Option<String>,
    /// Serve only these models.
    pub models: Option<Vec<String>>,
    /// Overrides `dispatcher.worker_bin`.
    pub worker_bin: Option<PathBuf>,
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("worker binary {0} not found; set dispatcher.worker_bin or --worker-bin")]
    WorkerBinary(PathBuf),
    #[error("unknown model '{0}' in --models; it is not in the registry")]
    UnknownModel(String),
    #[error("no slot on this host can serve any model:\n{0}")]
    NothingToServe(String),
    #[error("rabbitmq: {0}")]
    Broker(#[from] lapin::Error),
    #[error("redis: {0}")]
    Store(#[from] redis::RedisError),
    #[error("config path {path}: {source}")]
    ConfigPath {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn worker_binary(options: &DispatcherOptions, config: &Config) -> Result<PathBuf, DispatcherError> {
    let path = options
        .worker_bin
        .clone()
        .or_else(|| config.dispatcher.worker_bin.clone())
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("gpuq-worker")))
        })
        .unwrap_or_else(|| PathBuf::from("gpuq-worker"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(DispatcherError::WorkerBinary(path))
    }
}

/// Runs the dispatcher until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    options: DispatcherOptions,
    shutdown: CancellationToken,
) -> Result<(), DispatcherError> {
    let host_id = options
        .host_id
        .clone()
        .or_else(|| config.dispatcher.host_id.clone())
        .unwrap_or_else(gpuq_common::process::default_host_id);
    if let Some(unknown) = options
        .models
        .iter()
        .flatten()
        .find(|id| config.registry().model(id).is_none())
    {
        return Err(DispatcherError::UnknownModel(unknown.clone()));
    }
    let program = worker_binary(&options, &config)?;
    let config_path = std::fs::canonicalize(&options.config_path).map_err(|source| {
        DispatcherError::ConfigPath {
            path: options.config_path.clone(),
            source,
        }
    })?;
    let (gpus, source) = discover(&config.dispatcher.gpus)?;
    let plan = plan(
        &host_id,
        &gpus,
        &config.dispatcher,
        config.registry(),
        options.models.as_deref(),
    );
    tracing::info!(host = %host_id, gpus = gpus.len(), "plan:\n{}", plan.describe());
    if plan.slots.iter().all(|s| s.models.is_empty()) {
        return Err(DispatcherError::NothingToServe(plan.describe()));
    }

    tracing::info!(amqp = %redact_url(&config.amqp_url), redis = %redact_url(&config.redis_url), "connecting");
    let connection = connect(&config.amqp_url, &format!("gpuq-dispatcher {host_id}")).await?;
    let channel = connection.create_channel().await?;
    declare_topology(&channel, &Topology::for_config(&config)).await?;
    let _ = channel.close(200, "topology declared".into()).await;
    let _ = connection.close(200, "topology declared".into()).await;
    let store = Store::connect(&config.redis_url, config.names()).await?;

    let command = Arc::new(WorkerCommand {
        program,
        config_path,
        host_id: host_id.clone(),
        log_format: options.log_format,
    });
    let policy = RestartPolicy {
        initial_backoff: Duration::from_millis(config.dispatcher.restart_backoff_initial_ms),
        max_backoff: Duration::from_millis(config.dispatcher.restart_backoff_max_ms),
        crash_loop_limit: config.dispatcher.crash_loop_limit,
        stable_after: Duration::from_secs(30),
        stop_grace: Duration::from_secs(config.worker.shutdown_grace_s + 5),
    };
    let tracker = TaskTracker::new();
    let mut statuses = Vec::new();
    for slot in &plan.slots {
        let status: SharedSlotStatus = Arc::new(Mutex::new(SlotStatus {
            state: "idle",
            ..SlotStatus::default()
        }));
        statuses.push(Arc::clone(&status));
        if slot.models.is_empty() {
            continue;
        }
        tracker.spawn(supervise_slot(
            slot.clone(),
            Arc::clone(&command),
            policy.clone(),
            status,
            shutdown.clone(),
        ));
    }
    tracker.close();

    let started_ms = now_ms();
    let interval = Duration::from_millis(config.worker.heartbeat_interval_ms);
    let ttl = Duration::from_millis(config.worker.heartbeat_ttl_ms);
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let record = host_record(&host_id, started_ms, &gpus, source, &plan, &statuses);
        if let Err(error) = store.heartbeat(&record, ttl).await {
            tracing::warn!(%error, "host heartbeat not written");
        }
    }
    tracing::info!("stopping workers");
    tracker.wait().await;
    if let Err(error) = store.remove_host(&host_id).await {
        tracing::warn!(%error, "host record not removed; it will expire");
    }
    tracing::info!("dispatcher stopped");
    Ok(())
}

fn host_record(
    host_id: &str,
    started_ms: u64,
    gpus: &[GpuInfo],
    source: GpuSource,
    plan: &Plan,
    statuses: &[SharedSlotStatus],
) -> HostRecord {
    let slots = plan
        .slots
        .iter()
        .zip(statuses)
        .map(|(slot, status)| {
            let status = status.lock().expect("slot status lock").clone();
            SlotRecord {
                worker_id: slot.worker_id.clone(),
                gpu: slot.gpu,
                vram_budget_mib: slot.vram_budget_mib,
                models: slot.models.clone(),
                state: status.state.to_owned(),
                pid: status.pid,
                restarts: status.restarts,
                last_exit: status.last_exit,
            }
        })
        .collect();
    HostRecord {
        host_id: host_id.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        gpu_source: source.as_str().to_owned(),
        gpus: gpus.iter().map(GpuInfo::to_record).collect(),
        slots,
        unplaced_models: plan.unplaced.clone(),
        started_ms,
        heartbeat_ms: now_ms(),
    }
}
