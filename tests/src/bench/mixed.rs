//! `gpuq-bench --mixed`: a mixed-workload benchmark of model placement (issue 8).
//!
//! One dispatcher declares `W` GPUs of 16 GiB, one worker each, and five
//! synthetic `sleep` models whose loads take seconds and whose VRAM lets a
//! worker hold one or two of them. The same seeded trace of bursty per-model
//! arrivals is replayed twice: with placement off (every worker consumes every
//! queue, loads on demand, evicts the least recently used model) and with
//! backlog-aware placement on. Each run reports its makespan against a lower
//! bound, how busy the GPUs were, how many loads it paid, and queue waits by
//! model.
//!
//! The trace, the lower bound and the figures are pure functions, tested here;
//! [`run`] needs the real RabbitMQ, Redis and gpuq binaries. [`sim`] is a
//! model of the placement run, for studies too long to run for real.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// The placement run uses the default policy (`[placement]` with no other key).
fn default_policy() -> gpuq_common::config::PlacementConfig {
    gpuq_common::config::PlacementConfig::default()
}
/// Target of placement makespan / lower bound.
pub const TARGET_OVER_LOWER_BOUND: f64 = 1.15;
/// Target of placement makespan / naive makespan.
pub const TARGET_OVER_NAIVE: f64 = 0.65;

/// Memory of each declared GPU (one worker per GPU, no reserve), MiB.
pub const GPU_MEMORY_MIB: u64 = 16_384;
/// `dispatcher.max_models_per_worker` of every run.
pub const MAX_MODELS_PER_WORKER: usize = 2;
/// Target of placement makespan / best static makespan (issue 18).
pub const TARGET_OVER_STATIC: f64 = 0.9;
/// Worker heartbeat (and record refresh) interval, ms.
const HEARTBEAT_INTERVAL_MS: u64 = 500;
/// Run work (sum of job durations) per worker at scale 1.0, ms.
pub const WORK_PER_WORKER_MS: f64 = 35_000.0;
/// Bursts start within this window at scale 1.0, ms; it shrinks with the scale
/// so that a quick run keeps the offered load of a full one.
pub const ARRIVAL_WINDOW_MS: f64 = 40_000.0;
/// Fewest and most bursts per model.
const BURSTS: (u64, u64) = (2, 4);
/// Range of the mean gap between arrivals within a burst (exponential gaps), ms.
const BURST_GAP_MEAN_MS: (f64, f64) = (50.0, 100.0);

/// A synthetic `sleep` model of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SyntheticModel {
    /// Model id, also its feature.
    pub id: &'static str,
    pub vram_mib: u64,
    pub load_ms: u64,
    pub duration_ms: u64,
}

/// The five models: a 16 GiB worker holds one or two of them.
pub const MODELS: [SyntheticModel; 5] = [
    SyntheticModel {
        id: "m1",
        vram_mib: 9000,
        load_ms: 3000,
        duration_ms: 300,
    },
    SyntheticModel {
        id: "m2",
        vram_mib: 7000,
        load_ms: 2000,
        duration_ms: 200,
    },
    SyntheticModel {
        id: "m3",
        vram_mib: 6000,
        load_ms: 1000,
        duration_ms: 150,
    },
    SyntheticModel {
        id: "m4",
        vram_mib: 8000,
        load_ms: 2500,
        duration_ms: 400,
    },
    SyntheticModel {
        id: "m5",
        vram_mib: 6000,
        load_ms: 1500,
        duration_ms: 250,
    },
];

/// What to run; `gpuq-bench --help` documents each flag.
#[derive(Debug, Clone)]
pub struct MixedOptions {
    /// Multiplies job counts (and the arrival window).
    pub scale: f64,
    pub seed: u64,
    /// GPUs, one worker each.
    pub workers: usize,
    /// Spread the trace's jobs over this many tenants (job i: `t{i % n}`),
    /// every 20th at priority 9 (0: every job the default tenant's, normal:
    /// the trace as issue 8 ran it).
    pub tenants: usize,
    /// `tenants.fair_share` of both runs.
    pub fair_share: bool,
    /// Skip the naive run (for iterating on placement; no placement/naive ratio).
    pub skip_naive: bool,
    /// Also replay the best static assignment (`best_static`), found by
    /// search over the whole trace, and report placement / best static.
    pub best_static: bool,
    /// Which trace: the bursts (issue 8's), a shifting hot spot or a long
    /// tail of rarely used models (`shapes`).
    pub shape: shapes::TraceShape,
    /// Write each run's per-job timeline (worker, model, created, started,
    /// finished) and the dispatcher's log here, to see what placement did.
    pub timeline: Option<std::path::PathBuf>,
}

/// The trace's random numbers: ChaCha8 is documented to give the same
/// sequence for a seed on every platform and release, so a seed names one trace.
struct TraceRng(ChaCha8Rng);

impl TraceRng {
    fn new(seed: u64) -> TraceRng {
        TraceRng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0.random::<f64>()
    }

    /// Uniform in [low, high].
    fn range(&mut self, low: u64, high: u64) -> u64 {
        self.0.random_range(low..=high)
    }

    /// Exponentially distributed with this mean (inverse transform).
    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// One job of the trace.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TraceJob {
    /// Milliseconds after the replay starts (the first job arrives at 0).
    pub arrival_ms: u64,
    /// Index into the model list.
    pub model: usize,
    pub duration_ms: u64,
}

/// Total work the trace aims at: `workers` × 35 s × `scale`, ms.
pub fn intended_work_ms(workers: usize, scale: f64) -> f64 {
    workers as f64 * WORK_PER_WORKER_MS * scale
}

/// A seeded trace of bursty per-model arrivals, in arrival order: each model
/// gets a random share of [`intended_work_ms`] as whole jobs of its duration,
/// split over 2 to 4 bursts that start at random times within the arrival
/// window, with exponential gaps (mean 50 to 100 ms) inside a burst.
pub fn generate_trace(
    models: &[SyntheticModel],
    workers: usize,
    scale: f64,
    seed: u64,
) -> Vec<TraceJob> {
    let mut rng = TraceRng::new(seed);
    let target = intended_work_ms(workers, scale);
    let window = ARRIVAL_WINDOW_MS * scale;
    let weights: Vec<f64> = models.iter().map(|_| 0.5 + rng.unit()).collect();
    let total_weight: f64 = weights.iter().sum();
    let mut trace = Vec::new();
    for (index, (model, weight)) in models.iter().zip(&weights).enumerate() {
        let share = target * weight / total_weight;
        let jobs = ((share / model.duration_ms as f64).round() as u64).max(1);
        let bursts = rng.range(BURSTS.0, BURSTS.1).min(jobs);
        // One job per burst, the rest spread at random over the bursts.
        let mut sizes = vec![1u64; bursts as usize];
        for _ in bursts..jobs {
            sizes[rng.range(0, bursts - 1) as usize] += 1;
        }
        for size in sizes {
            let mut at = rng.unit() * window;
            let gap_mean =
                BURST_GAP_MEAN_MS.0 + rng.unit() * (BURST_GAP_MEAN_MS.1 - BURST_GAP_MEAN_MS.0);
            for i in 0..size {
                if i > 0 {
                    at += rng.exponential(gap_mean);
                }
                trace.push(TraceJob {
                    arrival_ms: at.round() as u64,
                    model: index,
                    duration_ms: model.duration_ms,
                });
            }
        }
    }
    trace.sort_by_key(|job| (job.arrival_ms, job.model));
    let first = trace.first().map_or(0, |job| job.arrival_ms);
    for job in &mut trace {
        job.arrival_ms -= first;
    }
    trace
}

/// Everything `gpuq-bench --mixed` reports.
#[derive(Debug, Clone, Serialize)]
pub struct MixedReport {
    pub shape: shapes::TraceShape,
    pub seed: u64,
    pub scale: f64,
    pub workers: usize,
    pub jobs: usize,
    /// Jobs per model in the trace.
    pub trace_jobs: BTreeMap<String, usize>,
    pub total_work_s: f64,
    pub last_arrival_s: f64,
    pub lower_bound: LowerBound,
    /// The issue's bound, with the placement run's workers per model.
    pub lower_bound_issue_ms: f64,
    pub runs: Vec<RunFigures>,
    pub placement_over_lower_bound: f64,
    pub placement_over_lower_bound_issue: f64,
    pub placement_over_naive: f64,
    /// Worst per-model p95 queue wait of the placement run.
    pub worst_p95_wait_s: f64,
    pub max_queue_wait_ms: u64,
    pub placement_interval_ms: u64,
    pub min_residency_ms: u64,
    /// The best static assignment (model ids per worker), its simulated
    /// makespan, how many assignments were searched, and placement's
    /// makespan over the replayed static one; with `--mixed-best-static`.
    pub best_static: Option<StaticFigures>,
}

/// The best static baseline of one run.
#[derive(Debug, Clone, Serialize)]
pub struct StaticFigures {
    pub workers: Vec<Vec<String>>,
    pub simulated_s: f64,
    pub searched: usize,
    pub placement_over_static: f64,
    /// LB (strict) / the replayed static makespan: the lowest
    /// placement / best static that any schedule could reach on this trace.
    /// Where it is above [`TARGET_OVER_STATIC`], that target cannot be met.
    pub lower_bound_over_static: f64,
}

/// Replays the trace with placement off, then on, and compares the runs.
pub async fn run(options: &MixedOptions) -> Result<MixedReport> {
    if !(options.scale > 0.0 && options.scale.is_finite()) {
        bail!("--mixed-scale must be a positive number");
    }
    if options.workers == 0 {
        bail!("--mixed-workers must be at least 1");
    }
    let models = &options.shape.models()[..];
    let trace = options
        .shape
        .trace(options.workers, options.scale, options.seed);
    let bound = lower_bound(&trace, models, options.workers);
    let mut runs = Vec::new();
    let mut placement_workers_ran = vec![0; models.len()];
    let mut modes = Vec::new();
    if !options.skip_naive {
        modes.push(Mode::Naive);
    }
    let best = if options.best_static {
        let limits = (GPU_MEMORY_MIB, MAX_MODELS_PER_WORKER);
        let best = best_static::best_static(&trace, models, options.workers, limits);
        let Some(best) = best else {
            bail!("no static assignment serves every model of the trace");
        };
        modes.push(Mode::Static);
        Some(best)
    } else {
        None
    };
    modes.push(Mode::Placement);
    for mode in modes {
        let slots = (mode == Mode::Static)
            .then(|| best.as_ref().map(|b| b.workers.as_slice()))
            .flatten();
        let (jobs, metrics, lag) = replay::replay(mode, (models, &trace), options, slots).await?;
        let mut figures = figures(
            mode,
            models,
            options.workers,
            &jobs,
            &metrics,
            bound.value_ms,
        );
        figures.max_submit_lag_ms = lag;
        if mode == Mode::Placement {
            for (index, model) in models.iter().enumerate() {
                placement_workers_ran[index] =
                    figures.models.get(model.id).map_or(0, |m| m.workers_ran);
            }
        }
        runs.push(figures);
    }
    let issue = lower_bound_issue(&trace, models, &placement_workers_ran, options.workers);
    let placement = runs.last().expect("the placement run");
    let naive_makespan_s = runs
        .iter()
        .find(|r| r.mode == Mode::Naive.name())
        .map_or(f64::NAN, |r| r.makespan_s);
    let best_static = best.map(|best| {
        let static_s = runs
            .iter()
            .find(|r| r.mode == Mode::Static.name())
            .map_or(f64::NAN, |r| r.makespan_s);
        StaticFigures {
            workers: best
                .workers
                .iter()
                .map(|set| set.iter().map(|&m| models[m].id.to_owned()).collect())
                .collect(),
            simulated_s: best.simulated_ms / 1000.0,
            searched: best.searched,
            placement_over_static: placement.makespan_s / static_s,
            lower_bound_over_static: bound.value_ms / 1000.0 / static_s,
        }
    });
    let mut trace_jobs = BTreeMap::new();
    for job in &trace {
        *trace_jobs
            .entry(models[job.model].id.to_owned())
            .or_insert(0) += 1;
    }
    Ok(MixedReport {
        shape: options.shape,
        seed: options.seed,
        scale: options.scale,
        workers: options.workers,
        jobs: trace.len(),
        trace_jobs,
        total_work_s: trace.iter().map(|j| j.duration_ms).sum::<u64>() as f64 / 1000.0,
        last_arrival_s: trace.last().map_or(0, |j| j.arrival_ms) as f64 / 1000.0,
        lower_bound: bound,
        lower_bound_issue_ms: issue,
        placement_over_lower_bound: placement.makespan_over_lower_bound,
        placement_over_lower_bound_issue: placement.makespan_s * 1000.0 / issue,
        placement_over_naive: placement.makespan_s / naive_makespan_s,
        worst_p95_wait_s: placement.worst_p95_wait_s,
        max_queue_wait_ms: default_policy().max_queue_wait_ms,
        placement_interval_ms: default_policy().interval_ms,
        min_residency_ms: default_policy().min_residency_ms,
        best_static,
        runs,
    })
}

mod best_static;
mod bound;
pub mod clairvoyant;
mod config;
pub use config::{system_config, Mode};
mod figures;
pub mod shapes;
pub use figures::{figures, JobOutcome, ModelWait, RunFigures};
mod render;
mod replay;
pub mod sim;
pub use bound::{lower_bound, lower_bound_issue, LowerBound};
pub use render::render;
#[cfg(test)]
mod tests;
