//! `gpuq-bench --fairness`: fair share and priorities (issue 15), measured
//! with fair share on and off (`tenants.fair_share`) in one run.
//!
//! One host, `workers` workers running one synthetic `sleep` job at a time
//! (`run_ms` each; nothing runs on a GPU). For each mode, on one system:
//! 1. tenant `a` floods `2000 × scale` jobs at t = 0; tenant `b` submits
//!    one job every 500 ms from t = 5 s until the flood has finished: b's
//!    queue waits, and the throughput of all jobs;
//! 2. tenants `heavy` (weight 3) and `light` (weight 1), both backlogged
//!    (heavy's `1500 × scale` jobs submitted first, then light's `500 ×
//!    scale`): heavy's share of GPU time in every 30 s window (stepping
//!    5 s) while both still have jobs to start;
//! 3. a `high` job submitted 2 s into a `2000 × scale` backlog of its own
//!    tenant: its queue wait.
//!
//! Each tenant and level runs one job first, so every sub-queue exists and
//! is consumed before the clock starts (a new sub-queue is found within
//! `gpu-worker`'s one-second poll).

mod figures;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use gpuq_producer::{JobRequest, Producer};
use serde::Serialize;

pub use figures::{share_range, spread, throughput, Spread, Timing};

use crate::fixtures::ConfigBuilder;
use crate::TestSystem;

/// What to run; `gpuq-bench --help` documents each flag.
#[derive(Debug, Clone)]
pub struct FairnessOptions {
    /// Multiplies the backlogs (1.0: the 2,000 jobs).
    pub scale: f64,
    pub workers: usize,
    pub run_ms: u64,
}

/// The three measurements of one mode.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    pub fair_share: bool,
    /// 1: b's queue waits behind a's flood, ms.
    pub small_tenant_wait_ms: Spread,
    /// 1: all jobs (a's and b's) per second.
    pub flood_throughput_jobs_s: f64,
    /// 2: heavy's lowest and highest share of GPU time over 30 s windows.
    pub weighted_share_low: f64,
    pub weighted_share_high: f64,
    pub weighted_windows: usize,
    /// 2: all jobs per second.
    pub weighted_throughput_jobs_s: f64,
    /// 3: the high job's queue wait, ms.
    pub high_job_wait_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FairnessReport {
    pub workers: usize,
    pub run_ms: u64,
    pub flood_jobs: usize,
    pub modes: Vec<ModeReport>,
}

const MODEL: &str = "fair";
const TIMEOUT: Duration = Duration::from_secs(900);

fn config(options: &FairnessOptions, fair_share: bool) -> String {
    ConfigBuilder::new()
        .section(&format!(
            "[worker]\nheartbeat_interval_ms = 500\n[tenants]\nfair_share = {fair_share}\n[tenants.heavy]\nweight = 3"
        ))
        .host("bench")
        .dispatcher(&format!("workers_per_gpu = {}", options.workers))
        .dispatcher("vram_reserve_mib = 0")
        .gpu(1024 * options.workers as u64)
        .sleep_model(MODEL, 1024, options.run_ms)
        .model_keys("timeout_s = 60")
        .build()
}

fn job(tenant: &str, priority: Option<u8>) -> JobRequest {
    let mut request = JobRequest::new(MODEL);
    request.tenant = Some(tenant.to_owned());
    request.priority = priority;
    request
}

/// Submits in batches of 500; the ids.
async fn submit(producer: &Producer, jobs: Vec<JobRequest>) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(jobs.len());
    let mut jobs = jobs.into_iter().peekable();
    while jobs.peek().is_some() {
        let batch: Vec<JobRequest> = jobs.by_ref().take(500).collect();
        for result in producer.submit_many(batch).await {
            ids.push(result.context("submit")?);
        }
    }
    Ok(ids)
}

/// Waits for every job to end; their timings (an error unless all completed).
async fn timings(producer: &Producer, ids: &[String]) -> Result<Vec<Timing>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let record = producer.wait(id, TIMEOUT).await?.context("no record")?;
        if record.status != Some(gpuq_common::JobStatus::Completed) {
            bail!("job {id} ended {:?}", record.status);
        }
        let (Some(created_ms), Some(started_ms), Some(finished_ms)) =
            (record.created_ms, record.started_ms, record.finished_ms)
        else {
            bail!("job {id} has no timings");
        };
        out.push(Timing {
            tenant: record.tenant.unwrap_or_default(),
            created_ms,
            started_ms,
            finished_ms,
        });
    }
    Ok(out)
}

pub async fn run(options: &FairnessOptions) -> Result<FairnessReport> {
    let flood_jobs = ((2000.0 * options.scale).round() as usize).max(1);
    let mut modes = Vec::new();
    for fair_share in [true, false] {
        modes.push(run_mode(options, fair_share, flood_jobs).await?);
    }
    Ok(FairnessReport {
        workers: options.workers,
        run_ms: options.run_ms,
        flood_jobs,
        modes,
    })
}

async fn run_mode(options: &FairnessOptions, fair_share: bool, flood: usize) -> Result<ModeReport> {
    let system = TestSystem::new(&config(options, fair_share));
    let _dispatcher = system.dispatcher(&[]);
    let queue = system.names.model_queue(MODEL);
    system
        .wait_for_consumers(&queue, options.workers as u32, Duration::from_secs(60))
        .await;
    let producer = Producer::connect(system.config.clone()).await?;
    let warm: Vec<JobRequest> = ["a", "b", "heavy", "light", "c"]
        .into_iter()
        .map(|t| job(t, None))
        .chain([job("c", Some(9))])
        .collect();
    let warm = submit(&producer, warm).await?;
    timings(&producer, &warm).await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // 1: a floods, b trickles.
    let a_ids = submit(&producer, (0..flood).map(|_| job("a", None)).collect()).await?;
    let done = Arc::new(AtomicBool::new(false));
    let trickle = {
        let (producer, done) = (
            Producer::connect(system.config.clone()).await?,
            done.clone(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let mut ids = Vec::new();
            while !done.load(Ordering::Relaxed) {
                ids.push(producer.submit(job("b", None)).await?);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            anyhow::Ok(ids)
        })
    };
    let a = timings(&producer, &a_ids).await?;
    done.store(true, Ordering::Relaxed);
    let b_ids = trickle.await??;
    let b = timings(&producer, &b_ids).await?;
    let all: Vec<Timing> = a.iter().chain(&b).cloned().collect();

    // 2: heavy (weight 3) and light, both backlogged.
    let weighted_ids = submit(
        &producer,
        (0..flood)
            .map(|i| job(if i < flood * 3 / 4 { "heavy" } else { "light" }, None))
            .collect(),
    )
    .await?;
    let weighted = timings(&producer, &weighted_ids).await?;
    let (low, high, windows) = share_range(&weighted, "heavy", 30_000, 5_000);

    // 3: a high job 2 s into a backlog of its own tenant.
    let backlog = submit(&producer, (0..flood).map(|_| job("c", None)).collect()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let urgent = submit(&producer, vec![job("c", Some(9))]).await?;
    let urgent = timings(&producer, &urgent).await?;
    timings(&producer, &backlog).await?;

    Ok(ModeReport {
        fair_share,
        small_tenant_wait_ms: spread(b.iter().map(Timing::wait_ms).collect()),
        flood_throughput_jobs_s: throughput(&all),
        weighted_share_low: low,
        weighted_share_high: high,
        weighted_windows: windows,
        weighted_throughput_jobs_s: throughput(&weighted),
        high_job_wait_ms: urgent[0].wait_ms(),
    })
}

pub fn render(report: &FairnessReport) -> String {
    let mut out = format!(
        "gpuq-bench --fairness: {} workers, {} ms synthetic jobs, backlogs of {} jobs\n",
        report.workers, report.run_ms, report.flood_jobs
    );
    out.push_str(&format!(
        "{:<52} {:>14} {:>14}\n",
        "measurement", "fair share on", "fair share off"
    ));
    let row = |name: &str, value: &dyn Fn(&ModeReport) -> String| {
        let cells: Vec<String> = report.modes.iter().map(value).collect();
        format!("{name:<52} {:>14} {:>14}\n", cells[0], cells[1])
    };
    out.push_str(&row("1. b's queue wait p50 (ms)", &|m| {
        format!("{:.0}", m.small_tenant_wait_ms.p50)
    }));
    out.push_str(&row("1. b's queue wait p95 (ms)", &|m| {
        format!("{:.0}", m.small_tenant_wait_ms.p95)
    }));
    out.push_str(&row("1. b's queue wait max (ms)", &|m| {
        format!("{:.0}", m.small_tenant_wait_ms.max)
    }));
    out.push_str(&row("1. b's jobs", &|m| {
        m.small_tenant_wait_ms.samples.to_string()
    }));
    out.push_str(&row("1. throughput, a + b (jobs/s)", &|m| {
        format!("{:.2}", m.flood_throughput_jobs_s)
    }));
    out.push_str(&row(
        "2. heavy's GPU-time share, lowest 30 s window",
        &|m| format!("{:.3}", m.weighted_share_low),
    ));
    out.push_str(&row(
        "2. heavy's GPU-time share, highest 30 s window",
        &|m| format!("{:.3}", m.weighted_share_high),
    ));
    out.push_str(&row("2. windows", &|m| m.weighted_windows.to_string()));
    out.push_str(&row("2. throughput (jobs/s)", &|m| {
        format!("{:.2}", m.weighted_throughput_jobs_s)
    }));
    out.push_str(&row("3. high job's queue wait (ms)", &|m| {
        format!("{:.0}", m.high_job_wait_ms)
    }));
    out
}
