//! Launcher: parse flags, load config, start tracing, run the worker.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use gpuq_common::process::{shutdown_on_signals, LogFormat};
use gpuq_worker::{ExitReason, WorkerOptions, EXIT_RESTART_REQUESTED};

/// Runs gpuq jobs for the models that fit this worker's VRAM budget.
#[derive(Parser, Debug)]
#[command(name = "gpuq-worker", version)]
struct Args {
    /// Config file.
    #[arg(long, env = "GPUQ_CONFIG", default_value = "gpuq.toml")]
    config: PathBuf,
    /// Worker id in Redis; default `<host>-pid<pid>`.
    #[arg(long)]
    worker_id: Option<String>,
    /// Host id in Redis; default the hostname.
    #[arg(long)]
    host_id: Option<String>,
    /// GPU index this worker runs on (informational; CUDA_VISIBLE_DEVICES selects the device).
    #[arg(long, default_value = "-")]
    gpu: String,
    /// VRAM budget in MiB: models needing more are not consumed. Default: no limit.
    #[arg(long)]
    vram_budget_mib: Option<u64>,
    /// Comma-separated model ids to serve (default: every model within the budget).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (config, _) =
        gpuq_common::process::start(args.log_format, &args.config).context("loading config")?;
    let host_id = args
        .host_id
        .unwrap_or_else(gpuq_common::process::default_host_id);
    let options = WorkerOptions {
        worker_id: args
            .worker_id
            .unwrap_or_else(|| format!("{host_id}-pid{}", std::process::id())),
        host_id,
        gpu: args.gpu,
        vram_budget_mib: args.vram_budget_mib,
        models: args.models,
        cuda_visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
    };
    let shutdown = shutdown_on_signals();
    match gpuq_worker::run(config, options, shutdown)
        .await
        .context("worker failed")?
    {
        ExitReason::Shutdown => Ok(()),
        ExitReason::RestartRequested => std::process::exit(EXIT_RESTART_REQUESTED),
    }
}
