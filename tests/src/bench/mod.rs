//! `gpuq-bench`: gpuq's own overhead against the real RabbitMQ and Redis, beside
//! the broker's raw limit measured in the same run.
//!
//! Scenarios: end-to-end throughput of no-op (`echo`) jobs with CPU per job by
//! process; a bare lapin publisher and consumer on the same queue type; sequential
//! submit-and-wait latency; GPU-bound efficiency with 20 ms synthetic `sleep`
//! jobs; and the footprint of the dispatcher and of an idle worker. Each figure
//! is the median of several runs, with min and max.

pub mod fairness;
mod latency;
pub mod listing;
pub mod mixed;
pub mod procfs;
mod raw;
mod timer;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use gpuq_common::{StatusEvent, Value};
use gpuq_producer::{JobRequest, Producer};
use serde::Serialize;

use crate::{binary, TestSystem};

/// What to run; `gpuq-bench --help` documents each flag.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub jobs: usize,
    pub workers: usize,
    pub prefetch: u32,
    pub payload_bytes: usize,
    pub queue_type: String,
    pub runs: usize,
    pub latency_samples: usize,
    pub sleep_jobs: usize,
    pub sleep_ms: u64,
    /// Prefetch of the GPU-bound workers (concurrency 1).
    pub gpu_prefetch: u32,
    /// The GPU-bound workers measure VRAM (scripted source).
    pub sleep_vram_meter: bool,
}

/// One measured figure over several runs.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub unit: String,
    pub values: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Figure {
    pub fn new(name: &str, unit: &str, mut values: Vec<f64>) -> Figure {
        values.sort_by(f64::total_cmp);
        let median = if values.is_empty() {
            f64::NAN
        } else {
            values[values.len() / 2]
        };
        Figure {
            name: name.to_owned(),
            unit: unit.to_owned(),
            median,
            min: values.first().copied().unwrap_or(f64::NAN),
            max: values.last().copied().unwrap_or(f64::NAN),
            values,
        }
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn system_config(options: &BenchOptions, concurrency: u32, prefetch: u32, model: &str) -> String {
    format!(
        r#"
[queues]
type = "{queue_type}"
[worker]
concurrency = {concurrency}
prefetch = {prefetch}
heartbeat_interval_ms = 1000
heartbeat_ttl_ms = 5000
shutdown_grace_s = 10
[dispatcher]
host_id = "bench"
workers_per_gpu = {workers}
vram_reserve_mib = 0
[[dispatcher.gpus]]
index = 0
memory_mib = {memory}
{model}
"#,
        queue_type = options.queue_type,
        workers = options.workers,
        memory = 1024 * options.workers,
    )
}

const ECHO_MODEL: &str =
    "[[models]]\nid = \"echo\"\nfeature = \"echo\"\nruntime = \"echo\"\nvram_mib = 256\n";

/// A running system: its config, dispatcher and worker pids.
// Fields drop in order: the dispatcher (and its workers) stop before the
// system's clean-up deletes the topology, or a worker still running would
// declare its queues again and leave them on the shared broker.
struct BenchSystem {
    dispatcher: crate::ProcessGuard,
    producer: Producer,
    system: TestSystem,
}

impl BenchSystem {
    async fn start(
        options: &BenchOptions,
        concurrency: u32,
        prefetch: u32,
        model: &str,
        model_id: &str,
    ) -> Result<BenchSystem> {
        let system = TestSystem::new(&system_config(options, concurrency, prefetch, model));
        let dispatcher = system.dispatcher(&[]);
        system
            .wait_for_consumers(
                &system.names.model_queue(model_id),
                options.workers as u32,
                Duration::from_secs(60),
            )
            .await;
        let producer = Producer::connect(system.config.clone())
            .await
            .context("producer")?;
        Ok(BenchSystem {
            system,
            dispatcher,
            producer,
        })
    }

    async fn worker_pids(&self) -> Vec<u32> {
        let slots = self.system.host_slots("bench").await;
        slots
            .iter()
            .filter_map(|s| s["pid"].as_u64())
            .map(|p| p as u32)
            .collect()
    }
}

/// CPU seconds of each process group, to difference around a run.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    bench: f64,
    workers: f64,
    dispatcher: f64,
    broker: f64,
    redis: f64,
}

async fn cpu_now(system: &BenchSystem) -> Cpu {
    Cpu {
        bench: procfs::cpu_seconds(std::process::id()),
        workers: procfs::cpu_of(&system.worker_pids().await),
        dispatcher: procfs::cpu_seconds(system.dispatcher.pid()),
        broker: procfs::cpu_of(&procfs::pids_named("beam.smp")),
        redis: procfs::cpu_of(&procfs::pids_named("redis-server")),
    }
}

/// Submits `requests` and waits until each one's final event arrives; returns
/// the time from the first publish to the last outcome visible in Redis.
async fn run_batch(
    system: &BenchSystem,
    requests: Vec<JobRequest>,
    timeout: Duration,
) -> Result<Duration> {
    let expected: HashSet<String> = requests.iter().filter_map(|r| r.job_id.clone()).collect();
    let mut pubsub = redis::Client::open(system.system.config.redis_url.as_str())?
        .get_async_pubsub()
        .await?;
    pubsub
        .subscribe(system.system.names.events_channel())
        .await?;
    let mut events = pubsub.into_on_message();
    let started = Instant::now();
    // Windows of jobs in flight together, as a busy client would submit them.
    let submit = async {
        let mut windows = futures_util::stream::iter(
            requests
                .chunks(1000)
                .map(|chunk| system.producer.submit_many(chunk.to_vec())),
        )
        .buffer_unordered(4);
        while let Some(results) = windows.next().await {
            for result in results {
                result?;
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    let collect = async {
        let mut done = HashSet::new();
        while done.len() < expected.len() {
            let Some(message) = events.next().await else {
                bail!("events subscription ended")
            };
            if let Ok(event) = serde_json::from_slice::<StatusEvent>(message.get_payload_bytes()) {
                if event.status.is_final() && expected.contains(&event.job_id) {
                    if event.status != gpuq_common::JobStatus::Completed {
                        bail!("job {} ended {}", event.job_id, event.status);
                    }
                    done.insert(event.job_id);
                }
            }
        }
        Ok(started.elapsed())
    };
    let (submitted, elapsed) =
        tokio::time::timeout(timeout, async { tokio::join!(submit, collect) })
            .await
            .context("the batch did not finish in time")?;
    submitted?;
    elapsed
}

fn echo_requests(run: usize, jobs: usize, payload_bytes: usize) -> Vec<JobRequest> {
    (0..jobs)
        .map(|i| {
            let mut request =
                JobRequest::new("echo").input("blob", Value::Binary(vec![7; payload_bytes]));
            request.job_id = Some(format!("bench-{run}-{i}-{}", uuid::Uuid::new_v4().simple()));
            request
        })
        .collect()
}

/// Runs every scenario and returns the figures.
pub async fn run(options: &BenchOptions) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let timeout = Duration::from_secs(300);

    // 1 + 2: throughput beside the raw broker limit, run by run.
    let echo = BenchSystem::start(
        options,
        options.prefetch,
        options.prefetch,
        ECHO_MODEL,
        "echo",
    )
    .await?;
    run_batch(
        &echo,
        echo_requests(999, options.workers * 10, options.payload_bytes),
        timeout,
    )
    .await?; // warm-up
    let (mut throughput, mut raw_limit, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let mut cpu_rows: Vec<(&str, Vec<f64>)> = vec![
        ("bench process (producer)", vec![]),
        ("workers", vec![]),
        ("dispatcher", vec![]),
        ("rabbitmq", vec![]),
        ("redis", vec![]),
    ];
    for run in 0..options.runs {
        let before = cpu_now(&echo).await;
        let elapsed = run_batch(
            &echo,
            echo_requests(run, options.jobs, options.payload_bytes),
            timeout,
        )
        .await?;
        let after = cpu_now(&echo).await;
        let per_job_us = |a: f64, b: f64| (a - b) * 1e6 / options.jobs as f64;
        let rate = options.jobs as f64 / elapsed.as_secs_f64();
        throughput.push(rate);
        cpu_rows[0].1.push(per_job_us(after.bench, before.bench));
        cpu_rows[1]
            .1
            .push(per_job_us(after.workers, before.workers));
        cpu_rows[2]
            .1
            .push(per_job_us(after.dispatcher, before.dispatcher));
        cpu_rows[3].1.push(per_job_us(after.broker, before.broker));
        cpu_rows[4].1.push(per_job_us(after.redis, before.redis));
        let raw = raw::broker_limit(&echo.system, options).await?;
        raw_limit.push(raw);
        ratio.push(rate / raw);
    }
    figures.push(Figure::new(
        "throughput, end to end (echo)",
        "jobs/s",
        throughput,
    ));
    figures.push(Figure::new(
        "raw broker limit (bare lapin, same run)",
        "msgs/s",
        raw_limit,
    ));
    figures.push(Figure::new("throughput / raw broker limit", "ratio", ratio));
    for (name, values) in cpu_rows {
        figures.push(Figure::new(&format!("CPU per job: {name}"), "µs", values));
    }

    // 3: sequential submit-and-wait latency, per run.
    figures.extend(latency::figures(&echo, options).await?);

    // 5 (dispatcher half): footprint after all that work.
    let dispatcher_hwm = procfs::memory_mib(echo.dispatcher.pid(), "VmHWM").unwrap_or(f64::NAN);
    figures.push(Figure::new(
        "dispatcher peak RSS",
        "MiB",
        vec![dispatcher_hwm],
    ));
    let (idle_rss, startup) = idle_worker(&echo.system, options.runs.max(3)).await?;
    figures.push(Figure::new(
        "idle worker RSS (no model loaded)",
        "MiB",
        idle_rss,
    ));
    figures.push(Figure::new(
        "worker start-up (spawn to consuming)",
        "ms",
        startup,
    ));
    drop(echo);

    // 4: GPU-bound efficiency.
    let meter = if options.sleep_vram_meter {
        "[gpu]\nvram_source = \"scripted\"\n"
    } else {
        ""
    };
    let sleep_model = format!(
        "{meter}[[models]]\nid = \"sleep\"\nfeature = \"sleep\"\nruntime = \"sleep\"\nvram_mib = 256\n[models.params]\nduration_ms = {}\n",
        options.sleep_ms
    );
    // One job at a time per worker (a GPU), one more delivered ahead.
    let sleep = BenchSystem::start(options, 1, options.gpu_prefetch, &sleep_model, "sleep").await?;
    let (mut efficiency, mut overhead, mut late) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..options.runs {
        let requests: Vec<JobRequest> = (0..options.sleep_jobs)
            .map(|i| {
                let mut request = JobRequest::new("sleep");
                request.job_id = Some(format!("gpu-{run}-{i}-{}", uuid::Uuid::new_v4().simple()));
                request
            })
            .collect();
        // The model's last sleep is about half its duration.
        let overshoot = timer::Overshoot::start(Duration::from_millis(options.sleep_ms / 2));
        let makespan = run_batch(&sleep, requests, timeout).await?.as_secs_f64();
        late.push(overshoot.stop());
        let ideal =
            options.sleep_jobs as f64 * options.sleep_ms as f64 / 1000.0 / options.workers as f64;
        efficiency.push(makespan / ideal);
        overhead
            .push((makespan - ideal) * 1000.0 * options.workers as f64 / options.sleep_jobs as f64);
    }
    figures.push(Figure::new(
        &format!("GPU-bound makespan / ideal ({} ms jobs)", options.sleep_ms),
        "ratio",
        efficiency,
    ));
    figures.push(Figure::new("GPU-bound overhead per job", "ms", overhead));
    figures.push(Figure::new("GPU-bound floor: sleep lateness", "ms", late));
    Ok(figures)
}

/// Spawns fresh workers one at a time: RSS once idle, and spawn-to-consuming time.
async fn idle_worker(system: &TestSystem, samples: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut rss, mut startup) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let worker_id = format!("bench-idle-{i}");
        let started = Instant::now();
        let mut child = std::process::Command::new(binary("gpuq-worker"))
            .arg("--config")
            .arg(&system.config_path)
            .args(["--worker-id", &worker_id, "--models", "echo"])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if system.worker_field(&worker_id, "state").await.as_deref() == Some("idle") {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("idle worker never became ready");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        startup.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss.push(procfs::memory_mib(child.id(), "VmRSS").unwrap_or(f64::NAN));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
    }
    Ok((rss, startup))
}

/// The figures as a text table.
pub fn render(figures: &[Figure]) -> String {
    let mut out = format!(
        "{:<50} {:>12} {:>25}  {}\n",
        "figure", "median", "min – max", "unit"
    );
    for f in figures {
        out.push_str(&format!(
            "{:<50} {:>12.2} {:>25}  {}\n",
            f.name,
            f.median,
            format!("{:.2} – {:.2}", f.min, f.max),
            f.unit
        ));
    }
    out
}
