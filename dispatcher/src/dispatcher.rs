//! The dispatcher's life: discover GPUs, plan slots, declare the AMQP topology,
//! supervise one worker per slot, keep the host record fresh, take part in
//! placement (see `placement_loop`), reload on SIGHUP, stop cleanly.
//!
//! Before any worker starts it takes the host lease (`host_lease`): a second
//! dispatcher under the same host id refuses to start.
//!
//! Shutdown stops every worker with SIGTERM (each finishes or returns its
//! in-flight jobs within `worker.shutdown_grace_s`), then removes the host
//! record and releases the host lease. A worker whose heartbeat goes stale is
//! killed and restarted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuq_common::config::Config;
use gpuq_common::process::LogFormat;
use gpuq_common::record::HostRecord;
use gpuq_common::registry::Registry;
use gpuq_common::vram::{admitted_models, ModelVram};
use gpuq_common::{now_ms, redact_url, ConfigOverrides};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::gpu::{choose_gpus, DiscoveryError, GpuInfo, GpuSource, VisibleDevices};
use crate::host_lease::{lease_ttl, HostLease, HostLeaseError};
use crate::nvml::NvmlReader;
use crate::slots::Slots;
use crate::store::Store;
use crate::supervisor::{RestartPolicy, WorkerCommand};
use crate::vram_plan::{plan, OverCommitted, Plan};

/// Settings from the command line and environment, gathered by `main`.
#[derive(Debug, Clone)]
pub struct DispatcherOptions {
    /// The config file, passed on to workers and re-read on SIGHUP.
    pub config_path: PathBuf,
    /// Environment overrides, re-applied on reload.
    pub overrides: ConfigOverrides,
    /// Overrides `dispatcher.host_id`.
    pub host_id: Option<String>,
    /// Serve only these models (overrides `dispatcher.models`).
    pub models: Option<Vec<String>>,
    /// Overrides `dispatcher.worker_bin`.
    pub worker_bin: Option<PathBuf>,
    /// The host's `CUDA_VISIBLE_DEVICES`: which GPUs it may use.
    pub cuda_visible_devices: Option<String>,
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error(transparent)]
    Plan(#[from] OverCommitted),
    #[error("worker binary {0} not found; set dispatcher.worker_bin or --worker-bin")]
    WorkerBinary(PathBuf),
    #[error("unknown model '{0}' in --models; it is not in the registry")]
    UnknownModel(String),
    #[error("no slot on this host can serve any model:\n{0}")]
    NothingToServe(String),
    #[error(transparent)]
    Broker(#[from] crate::amqp::BrokerError),
    #[error("redis: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    HostLease(#[from] HostLeaseError),
    #[error("config path {path}: {source}")]
    ConfigPath {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Artifacts(#[from] gpuq_common::artifacts::ArtifactError),
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

/// Plans the slots with each model's admitted VRAM: its declaration, or
/// what it was measured to use once known (`gpuq_common::vram`).
fn make_plan(
    host_id: &str,
    gpus: &[GpuInfo],
    config: &Config,
    options: &DispatcherOptions,
    learned: &BTreeMap<String, ModelVram>,
) -> Result<Plan, DispatcherError> {
    if let Some(unknown) = options
        .models
        .iter()
        .flatten()
        .find(|id| config.registry().model(id).is_none())
    {
        return Err(DispatcherError::UnknownModel(unknown.clone()));
    }
    let admitted = Registry::new(&admitted_models(
        config.registry().models(),
        learned,
        &config.gpu,
    ));
    let plan = plan(
        host_id,
        gpus,
        &config.dispatcher,
        &admitted,
        options.models.as_deref(),
    )?;
    if plan.slots.iter().all(|s| s.models.is_empty()) {
        return Err(DispatcherError::NothingToServe(plan.describe()));
    }
    Ok(plan)
}

/// What the host knows about its GPUs.
struct Gpus {
    list: Vec<GpuInfo>,
    source: GpuSource,
    nvml: Option<NvmlReader>,
    nvml_error: Option<String>,
}

impl Gpus {
    fn discover(config: &Config, options: &DispatcherOptions) -> Result<Gpus, DiscoveryError> {
        let visible = VisibleDevices::parse(options.cuda_visible_devices.as_deref());
        let reader = NvmlReader::open();
        let readings = reader
            .as_ref()
            .map_err(Clone::clone)
            .and_then(NvmlReader::read)
            .map_err(|error| error.to_string());
        let (list, source, nvml_error) = choose_gpus(
            readings,
            &config.dispatcher.gpus,
            &visible,
            options.cuda_visible_devices.as_deref(),
        )?;
        match &nvml_error {
            Some(reason) => tracing::warn!("{reason}; using the GPU inventory declared in config (live GPU memory is not read)"),
            None => tracing::info!(gpus = list.len(), "GPUs discovered with NVML"),
        }
        Ok(Gpus {
            list,
            source,
            nvml: if source == GpuSource::Nvml {
                reader.ok()
            } else {
                None
            },
            nvml_error,
        })
    }

    /// Refreshes live memory, utilization and temperature from NVML.
    fn refresh(&mut self, our_pids: &[u32]) {
        let Some(reader) = &self.nvml else { return };
        match reader.read() {
            Ok(devices) => {
                for gpu in &mut self.list {
                    if let Some(device) =
                        devices.iter().find(|d| Some(&d.uuid) == gpu.uuid.as_ref())
                    {
                        *gpu = GpuInfo::from_nvml(device, our_pids);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "NVML refresh failed"),
        }
    }
}

/// Discovers the GPUs and plans the slots without starting anything: the
/// `--print-plan` dry run. Touches neither RabbitMQ nor Redis.
pub fn plan_report(
    config: &Config,
    options: &DispatcherOptions,
) -> Result<String, DispatcherError> {
    let host_id = options
        .host_id
        .clone()
        .or_else(|| config.dispatcher.host_id.clone())
        .unwrap_or_else(gpuq_common::process::default_host_id);
    let gpus = Gpus::discover(config, options)?;
    let mut out = format!("host {host_id}: GPUs from {}", gpus.source.as_str());
    if let Some(reason) = &gpus.nvml_error {
        out.push_str(&format!(" ({reason})"));
    }
    out.push('\n');
    for gpu in &gpus.list {
        out.push_str(&format!(
            "  GPU {} {} uuid={} total={} MiB used={} MiB used-by-others={} MiB util={} temp={} processes={}\n",
            gpu.index,
            gpu.name,
            gpu.uuid.as_deref().unwrap_or("-"),
            gpu.memory_total_mib,
            gpu.memory_used_mib,
            gpu.foreign_used_mib,
            gpu.utilization_percent.map_or("-".into(), |u| format!("{u}%")),
            gpu.temperature_c.map_or("-".into(), |t| format!("{t}C")),
            gpu.processes.len(),
        ));
    }
    // A dry run reads no Redis: declared VRAM.
    let plan = make_plan(&host_id, &gpus.list, config, options, &BTreeMap::new())?;
    out.push_str("plan:\n");
    out.push_str(&plan.describe());
    out.push('\n');
    for slot in &plan.slots {
        out.push_str(&format!(
            "  {} gets CUDA_VISIBLE_DEVICES={}\n",
            slot.worker_id, slot.cuda_visible_devices
        ));
    }
    Ok(out)
}

/// Runs the dispatcher until `shutdown` is cancelled.
// Longer than 80 lines: the daemon's whole life in order: start, heartbeat loop, stop.
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
    let program = worker_binary(&options, &config)?;
    let config_path = std::fs::canonicalize(&options.config_path).map_err(|source| {
        DispatcherError::ConfigPath {
            path: options.config_path.clone(),
            source,
        }
    })?;
    let mut gpus = Gpus::discover(&config, &options)?;
    tracing::info!(amqp = %redact_url(&config.amqp_url), redis = %config.redis.target(), "connecting");
    let store = Store::connect(config.redis.target(), config.names()).await?;
    let learned = store.learned_vram().await.unwrap_or_default();
    let mut current_plan = make_plan(&host_id, &gpus.list, &config, &options, &learned)?;
    tracing::info!(host = %host_id, gpus = gpus.list.len(), "plan:\n{}", current_plan.describe());
    crate::amqp::declare(&config, &host_id).await?;
    // Opened (and a local directory checked) before any worker starts.
    let artifacts = gpuq_common::artifacts::ArtifactStore::open(&config.artifacts)?;
    // Held from here until the workers are stopped; nothing below fails before then.
    let interval = Duration::from_millis(config.worker.heartbeat_interval_ms);
    let Some(lease) = HostLease::acquire(&store, &host_id, lease_ttl(interval), &shutdown).await?
    else {
        return Ok(());
    };
    let lease = lease.keep(interval, shutdown.clone());

    let command = Arc::new(WorkerCommand {
        program,
        config_path,
        host_id: host_id.clone(),
        log_format: options.log_format,
    });
    let mut slots = Slots::new(command, restart_policy(&config), shutdown.clone());
    slots.apply(&current_plan);
    let metrics_view: crate::metrics::SharedView = Default::default();
    let background = crate::background::start(
        &config,
        &host_id,
        &store,
        artifacts,
        &metrics_view,
        &shutdown,
    );

    let started = Instant::now();
    let started_ms = now_ms();
    let ttl = Duration::from_millis(config.worker.heartbeat_ttl_ms);
    let mut ticker = tokio::time::interval(interval);
    let mut hangup = signal(SignalKind::hangup()).expect("installing SIGHUP handler");
    let slots_changed = slots.changed();
    let mut watchdog = Watchdog::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = slots_changed.notified() => {}
            _ = hangup.recv() => {
                if let Some(new_plan) = reload(&options, &host_id, &gpus.list, &store).await {
                    let summary = slots.apply(&new_plan);
                    tracing::info!(?summary, "config reloaded; plan:\n{}", new_plan.describe());
                    current_plan = new_plan;
                }
                continue;
            }
            _ = ticker.tick() => {}
        }
        gpus.refresh(&slots.worker_pids());
        watchdog.check(&store, &slots, ttl).await;
        let record = host_record(&host_id, &gpus, &slots, &current_plan, started_ms);
        *metrics_view.lock() = (record.gpus.clone(), record.slots.clone());
        if let Err(error) = store.heartbeat(&record, ttl).await {
            tracing::warn!(%error, "host heartbeat not written");
        }
    }
    tracing::info!("stopping workers");
    slots.stop_all(started).await;
    // Every background task ends on the shutdown token.
    background.close();
    background.wait().await;
    // Lost to another dispatcher: the host record is its now.
    let lease = lease.stop().await?;
    if let Err(error) = store.remove_host(&host_id).await {
        tracing::warn!(%error, "host record not removed; it will expire");
    }
    lease.release().await;
    tracing::info!("dispatcher stopped");
    Ok(())
}

fn restart_policy(config: &Config) -> RestartPolicy {
    RestartPolicy {
        initial_backoff: Duration::from_millis(config.dispatcher.restart_backoff_initial_ms),
        max_backoff: Duration::from_millis(config.dispatcher.restart_backoff_max_ms),
        crash_loop_limit: config.dispatcher.crash_loop_limit,
        stable_after: Duration::from_secs(30),
        stop_grace: Duration::from_secs(config.worker.shutdown_grace_s + 5),
    }
}

/// This host's record as of now.
fn host_record(
    host_id: &str,
    gpus: &Gpus,
    slots: &Slots,
    plan: &Plan,
    started_ms: u64,
) -> HostRecord {
    HostRecord {
        host_id: host_id.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        gpu_source: gpus.source.as_str().to_owned(),
        nvml_error: gpus.nvml_error.clone(),
        gpus: gpus.list.iter().map(GpuInfo::to_record).collect(),
        slots: slots.records(),
        unplaced_models: plan.unplaced.clone(),
        amqp: crate::amqp::link(),
        started_ms,
        heartbeat_ms: now_ms(),
    }
}

/// Re-reads the config and re-plans with the measured VRAM, as at start;
/// on any error keeps the running plan. Heartbeat, restart and shutdown
/// settings keep their start-up values.
async fn reload(
    options: &DispatcherOptions,
    host_id: &str,
    gpus: &[GpuInfo],
    store: &Store,
) -> Option<Plan> {
    tracing::info!(path = %options.config_path.display(), "SIGHUP: reloading config");
    let result = async {
        let config =
            Config::load(&options.config_path, &options.overrides).map_err(|e| e.to_string())?;
        let learned = store.learned_vram().await.unwrap_or_default();
        let plan =
            make_plan(host_id, gpus, &config, options, &learned).map_err(|e| e.to_string())?;
        crate::amqp::declare(&config, host_id)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(plan)
    }
    .await;
    match result {
        Ok(reloaded) => Some(reloaded),
        Err(error) => {
            tracing::error!(%error, "reload failed; keeping the running plan");
            None
        }
    }
}

/// What the watchdog last saw of each worker: its heartbeat value (or none)
/// and when, by the dispatcher's clock, that value was first seen; and which
/// other processes it found writing a worker's record (each told once).
#[derive(Default)]
struct Watchdog {
    seen: HashMap<(String, u32), (Option<u64>, Instant)>,
    foreign_writers: HashSet<(String, u32)>,
}

impl Watchdog {
    /// Kills workers whose heartbeat has not changed for `ttl`, as observed
    /// here (so a Redis outage or clock skew never reads as a dead worker);
    /// their supervisors restart them. Workers beat from the moment Redis
    /// answers, before loading models, so a new worker gets `2 × ttl` to start.
    async fn check(&mut self, store: &Store, slots: &Slots, ttl: Duration) {
        let workers = slots.settled_workers(ttl * 2);
        self.seen.retain(|key, _| workers.contains(key));
        self.foreign_writers
            .retain(|(id, _)| workers.iter().any(|(worker, _)| worker == id));
        if workers.is_empty() {
            return;
        }
        let ids: Vec<String> = workers.iter().map(|(id, _)| id.clone()).collect();
        let heartbeats = match store.worker_heartbeats(&ids).await {
            Ok(heartbeats) => heartbeats,
            Err(error) => {
                tracing::warn!(%error, "cannot read worker heartbeats; watchdog skipped");
                return;
            }
        };
        let now = Instant::now();
        for (key, heartbeat) in workers.into_iter().zip(heartbeats) {
            if let Some((_, writer)) = heartbeat.filter(|(_, pid)| *pid != key.1) {
                if self.foreign_writers.insert((key.0.clone(), writer)) {
                    tracing::error!(
                        worker = %key.0,
                        pid = key.1,
                        writer,
                        "this worker's record is written by another process (pid {writer}): \
                         something else runs under this worker id; its beats do not count as ours"
                    );
                }
            }
            let beat = heartbeat.filter(|(_, pid)| *pid == key.1).map(|(at, _)| at);
            let entry = self.seen.entry(key.clone()).or_insert((beat, now));
            if entry.0 != beat {
                *entry = (beat, now);
            } else if now.duration_since(entry.1) > ttl {
                slots.kill_unresponsive(&key.0, key.1);
                self.seen.remove(&key);
            }
        }
    }
}
