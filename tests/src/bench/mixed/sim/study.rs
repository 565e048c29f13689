//! `gpuq-bench --placement-sim`: the simulated placement run of every
//! seed × worker count of one trace shape, several jitter seeds each, and
//! its table (the same figure as `scripts/placement-stability.sh`,
//! makespan / LB, from the model).

use serde::Serialize;

use super::super::best_static::best_static;
use super::super::shapes::TraceShape;
use super::super::{lower_bound, GPU_MEMORY_MIB, MAX_MODELS_PER_WORKER, TARGET_OVER_LOWER_BOUND};
use super::{simulate_placement, simulate_static, SimRun};

/// One case of a simulated study: a trace and worker count, run once per jitter seed.
#[derive(Debug, Clone, Serialize)]
pub struct SimCase {
    pub seed: u64,
    pub workers: usize,
    pub lower_bound_ms: f64,
    pub runs: Vec<SimRun>,
    /// The best static assignment's replays in the model, one per jitter seed.
    pub static_runs: Vec<SimRun>,
}

impl SimCase {
    /// Makespan / LB of each run.
    pub fn ratios(&self) -> Vec<f64> {
        self.runs
            .iter()
            .map(|r| r.makespan_ms / self.lower_bound_ms)
            .collect()
    }
}

/// The traces of a study: their shape and scale (`--mixed-shape`, `--mixed-scale`).
#[derive(Debug, Clone, Copy)]
pub struct StudyTraces {
    pub shape: TraceShape,
    pub scale: f64,
}

/// `gpuq-bench --placement-sim RUNS`: every seed × worker count of one
/// trace shape, `runs` jitter seeds each, with placement and with the
/// best static assignment (searched over the whole trace, as
/// `--mixed-best-static` does).
pub fn study(traces: StudyTraces, seeds: &[u64], workers: &[usize], runs: u64) -> Vec<SimCase> {
    let models = &traces.shape.models();
    let mut cases = Vec::new();
    for &w in workers {
        for &seed in seeds {
            let trace = traces.shape.trace(w, traces.scale, seed);
            let lower_bound_ms = lower_bound(&trace, models, w).value_ms;
            let sets = best_static(&trace, models, w, (GPU_MEMORY_MIB, MAX_MODELS_PER_WORKER))
                .map(|best| best.workers)
                .unwrap_or_default();
            let static_runs = (0..runs)
                .filter(|_| !sets.is_empty())
                .map(|jitter| simulate_static(&trace, models, &sets, jitter))
                .collect();
            let runs = (0..runs)
                .map(|jitter| simulate_placement(&trace, models, w, jitter))
                .collect();
            cases.push(SimCase {
                seed,
                workers: w,
                lower_bound_ms,
                runs,
                static_runs,
            });
        }
    }
    cases
}

/// The study as a table: per case min, median and max of makespan / LB,
/// mean loads, load and idle time, the best static assignment's median
/// against LB and placement's against it; then the worst run and how many
/// runs are over the target.
pub fn render_study(cases: &[SimCase]) -> String {
    let mut out = String::from(
        "simulated placement (a model of the system, not a replay): makespan / LB;\n\
         means over the runs of loads and worker-seconds loading and idle; medians of\n\
         the best static assignment replayed in the model (search: `best_static`)\n\
         | workers | seed | min | median | max | loads | load s | idle, jobs waiting s | idle, none waiting s | best static / LB | placement / best static |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut all = Vec::new();
    for case in cases {
        let mut ratios = case.ratios();
        ratios.sort_by(f64::total_cmp);
        let mean = |f: fn(&SimRun) -> f64| {
            case.runs.iter().map(f).sum::<f64>() / case.runs.len().max(1) as f64
        };
        let static_over_lb = median(
            case.static_runs
                .iter()
                .map(|r| r.makespan_ms / case.lower_bound_ms),
        );
        if let (Some(min), Some(max)) = (ratios.first(), ratios.last()) {
            out.push_str(&format!(
                "| {} | {} | {min:.3} | {:.3} | {max:.3} | {:.1} | {:.1} | {:.1} | {:.1} | {static_over_lb:.3} | {:.3} |\n",
                case.workers,
                case.seed,
                ratios[ratios.len() / 2],
                mean(|r| r.loads as f64),
                mean(|r| r.load_s),
                mean(|r| r.idle_with_backlog_s),
                mean(|r| r.idle_empty_s),
                ratios[ratios.len() / 2] / static_over_lb,
            ));
        }
        all.extend(ratios);
    }
    all.sort_by(f64::total_cmp);
    let over = all.iter().filter(|r| **r > TARGET_OVER_LOWER_BOUND).count();
    if let Some(worst) = all.last() {
        out.push_str(&format!(
            "runs: {}, median {:.3}, worst {worst:.3}, over {}: {over}\n",
            all.len(),
            all[all.len() / 2],
            TARGET_OVER_LOWER_BOUND,
        ));
    }
    out
}

/// The median of some figures (NaN when there are none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}
