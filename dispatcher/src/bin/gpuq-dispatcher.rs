//! Launcher: parse flags, load config, start tracing, run the dispatcher.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use gpuq_common::process::{shutdown_on_signals, LogFormat};
use gpuq_dispatcher::DispatcherOptions;

/// Discovers this host's GPUs, plans worker slots and supervises gpuq-worker processes.
#[derive(Parser, Debug)]
#[command(name = "gpuq-dispatcher", version)]
struct Args {
    /// Config file.
    #[arg(long, env = "GPUQ_CONFIG", default_value = "gpuq.toml")]
    config: PathBuf,
    /// Host id in Redis (overrides dispatcher.host_id; default the hostname).
    #[arg(long)]
    host_id: Option<String>,
    /// Comma-separated model ids this host serves (default: all that fit).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Path of gpuq-worker (overrides dispatcher.worker_bin).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// Discover GPUs, print the plan and exit (no RabbitMQ or Redis needed).
    #[arg(long)]
    print_plan: bool,
    /// Log format, also passed to workers.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (config, overrides) =
        gpuq_common::process::start(args.log_format, &args.config).context("loading config")?;
    let options = DispatcherOptions {
        config_path: args.config.clone(),
        overrides,
        cuda_visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        host_id: args.host_id,
        models: args.models,
        worker_bin: args.worker_bin,
        log_format: args.log_format,
    };
    if args.print_plan {
        print!("{}", gpuq_dispatcher::plan_report(&config, &options)?);
        return Ok(());
    }
    let shutdown = shutdown_on_signals();
    gpuq_dispatcher::run(config, options, shutdown)
        .await
        .context("dispatcher failed")
}
