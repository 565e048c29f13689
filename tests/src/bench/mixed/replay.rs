//! One run of the mixed benchmark on a fresh system: start a dispatcher,
//! replay the trace through the producer, wait for every job, read the jobs'
//! records and the workers' metrics, stop.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gpuq_common::metrics::WorkerMetrics;
use gpuq_common::record::WorkerRecord;
use gpuq_common::{Config, ConfigOverrides, JobStatus};
use gpuq_producer::{JobRequest, Producer};

use super::{
    system_config, JobOutcome, MixedOptions, Mode, SyntheticModel, TraceJob, HEARTBEAT_INTERVAL_MS,
};
use crate::TestSystem;

/// One run on a fresh system: start, replay, wait, read, stop. Returns the
/// jobs' outcomes in trace order, the workers' metrics, and the largest submit lag.
pub(super) async fn replay(
    mode: Mode,
    (models, trace): (&[SyntheticModel], &[TraceJob]),
    options: &MixedOptions,
    slots: Option<&[super::best_static::ModelSet]>,
) -> Result<(Vec<JobOutcome>, Vec<WorkerMetrics>, u64)> {
    let body = system_config(mode, models, options.workers, options.fair_share, slots);
    // TestSystem panics on a config gpuq rejects: check it first, for a plain error.
    Config::parse(&body, None, &ConfigOverrides::default())
        .with_context(|| format!("the {} run's config is rejected", mode.name()))?;
    let system = TestSystem::new(&body);
    let dispatcher = system.dispatcher(&[]);
    let ready = wait_for_workers(
        &system,
        (mode, models),
        options.workers,
        Duration::from_secs(90),
    )
    .await;
    if let Err(error) = ready {
        let log = dispatcher.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        bail!(
            "{error:#}\ndispatcher log (last lines):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let producer = Producer::connect(system.config.clone())
        .await
        .context("producer")?;

    let run_tag = uuid::Uuid::new_v4().simple().to_string();
    let mut ids = Vec::with_capacity(trace.len());
    let started = tokio::time::Instant::now();
    let mut max_lag_ms = 0u64;
    for (i, job) in trace.iter().enumerate() {
        let due = started + Duration::from_millis(job.arrival_ms);
        tokio::time::sleep_until(due).await;
        max_lag_ms = max_lag_ms.max(due.elapsed().as_millis() as u64);
        let model = &models[job.model];
        let mut request = JobRequest::new(model.id).input("duration_ms", job.duration_ms);
        let tag = mode.name().replace(' ', "-");
        request.job_id = Some(format!("mix-{tag}-{i}-{}", &run_tag[..8]));
        if options.tenants > 0 {
            request.tenant = Some(format!("t{}", i % options.tenants));
            request.priority = (i % 20 == 19).then_some(9);
        }
        let id = producer
            .submit(request)
            .await
            .with_context(|| format!("submitting job {i} ({})", model.id))?;
        ids.push(id);
    }

    // Every job may, at worst, pay its model's load: allow that, plus slack.
    let worst_ms: u64 = trace
        .iter()
        .map(|j| j.duration_ms + models[j.model].load_ms)
        .sum();
    let timeout = Duration::from_millis(60_000 + worst_ms * 3 / 2 / options.workers as u64);
    let mut connection = system.redis().await;
    wait_until_final(&system, &mut connection, &ids, timeout)
        .await
        .with_context(|| format!("the {} run", mode.name()))?;
    // Let every worker refresh its record (metrics) once more.
    tokio::time::sleep(Duration::from_millis(3 * HEARTBEAT_INTERVAL_MS)).await;

    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.cmd("HGETALL").arg(system.names.job_key(id));
    }
    let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut connection).await?;
    let number = |hash: &HashMap<String, String>, field: &str| {
        hash.get(field).and_then(|v| v.parse::<u64>().ok())
    };
    if let Some(dir) = &options.timeline {
        write_timeline(dir, mode, (models, trace), &hashes, &dispatcher.log())?;
    }
    let mut jobs = Vec::with_capacity(ids.len());
    for ((job, hash), id) in trace.iter().zip(&hashes).zip(&ids) {
        let model = models[job.model].id;
        if let Some(recorded) = hash.get("model").filter(|m| m.as_str() != model) {
            bail!("job {id} ran model {recorded}, not {model}");
        }
        jobs.push(JobOutcome {
            model: job.model,
            duration_ms: job.duration_ms,
            status: hash.get("status").cloned().unwrap_or_default(),
            created_ms: number(hash, "created_ms"),
            started_ms: number(hash, "started_ms"),
            finished_ms: number(hash, "finished_ms"),
        });
    }

    let worker_ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(system.names.workers_set())
        .query_async(&mut connection)
        .await?;
    let mut metrics = Vec::new();
    for worker_id in worker_ids {
        let hash: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(system.names.worker_key(&worker_id))
            .query_async(&mut connection)
            .await?;
        if let Some(record) = WorkerRecord::from_hash(&hash) {
            metrics.push(record.metrics);
        }
    }
    drop(connection);
    drop(producer);
    drop(dispatcher); // stops it and its workers
    drop(system);
    Ok((jobs, metrics, max_lag_ms))
}

/// `<dir>/<mode>-jobs.csv`: one line per job of the trace (index, model,
/// worker, created, started, finished ms); `<dir>/<mode>-dispatcher.log`.
fn write_timeline(
    dir: &std::path::Path,
    mode: Mode,
    (models, trace): (&[SyntheticModel], &[TraceJob]),
    hashes: &[HashMap<String, String>],
    log: &str,
) -> Result<()> {
    use std::fmt::Write as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tag = mode.name().replace(' ', "-");
    let mut csv = String::from("job,model,worker,created_ms,started_ms,finished_ms\n");
    for (i, (job, hash)) in trace.iter().zip(hashes).enumerate() {
        let field = |name: &str| hash.get(name).map_or("", String::as_str);
        let _ = writeln!(
            csv,
            "{i},{},{},{},{},{}",
            models[job.model].id,
            field("worker"),
            field("created_ms"),
            field("started_ms"),
            field("finished_ms")
        );
    }
    std::fs::write(dir.join(format!("{tag}-jobs.csv")), csv)?;
    std::fs::write(dir.join(format!("{tag}-dispatcher.log")), log)?;
    Ok(())
}

/// Waits until `workers` worker records say `idle` (or `busy`); with placement
/// off, also until every model queue has that many consumers (naive) or one
/// (static).
async fn wait_for_workers(
    system: &TestSystem,
    (mode, models): (Mode, &[SyntheticModel]),
    workers: usize,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut connection = system.redis().await;
    loop {
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(system.names.workers_set())
            .query_async(&mut connection)
            .await?;
        let mut ready = 0;
        for id in &ids {
            let state: Option<String> = redis::cmd("HGET")
                .arg(system.names.worker_key(id))
                .arg("state")
                .query_async(&mut connection)
                .await?;
            if matches!(state.as_deref(), Some("idle" | "busy")) {
                ready += 1;
            }
        }
        let mut consuming = true;
        // Naive: every worker on every queue; static: someone on each.
        let wanted = match mode {
            Mode::Naive => Some(workers),
            Mode::Static => Some(1),
            Mode::Placement => None,
        };
        if let Some(wanted) = wanted.filter(|_| ready >= workers) {
            for model in models {
                let depth = system
                    .queue_depth(&system.names.model_queue(model.id))
                    .await;
                consuming &= depth.is_some_and(|(_, c)| c as usize >= wanted);
            }
        }
        if ready >= workers && consuming {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} run: {ready} of {workers} workers ready (consuming every queue: {consuming}) after {timeout:?}",
                mode.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls the jobs' statuses until every one is final.
async fn wait_until_final(
    system: &TestSystem,
    connection: &mut redis::aio::MultiplexedConnection,
    ids: &[String],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<&String> = ids.iter().collect();
    while !pending.is_empty() {
        let mut pipe = redis::pipe();
        for id in &pending {
            pipe.cmd("HGET").arg(system.names.job_key(id)).arg("status");
        }
        let statuses: Vec<Option<String>> = pipe.query_async(connection).await?;
        pending = pending
            .into_iter()
            .zip(statuses)
            .filter(|(_, status)| {
                !status
                    .as_deref()
                    .and_then(JobStatus::parse)
                    .is_some_and(JobStatus::is_final)
            })
            .map(|(id, _)| id)
            .collect();
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {} jobs not final after {timeout:?} (e.g. {})",
                pending.len(),
                ids.len(),
                pending[0]
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}
