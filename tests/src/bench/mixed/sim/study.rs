//! `gpuq-bench --placement-sim`: the simulated placement run of every
//! seed × worker count, several jitter seeds each, and its table (the same
//! figure as `scripts/placement-stability.sh`, makespan / LB, from the model).

use serde::Serialize;

use super::super::{generate_trace, lower_bound, MODELS, TARGET_OVER_LOWER_BOUND};
use super::{simulate_placement, SimRun};

/// One case of a simulated study: a trace and worker count, run once per jitter seed.
#[derive(Debug, Clone, Serialize)]
pub struct SimCase {
    pub seed: u64,
    pub workers: usize,
    pub lower_bound_ms: f64,
    pub runs: Vec<SimRun>,
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

/// `gpuq-bench --placement-sim RUNS`: every seed × worker count of the
/// bursts trace, `runs` jitter seeds each.
pub fn study(seeds: &[u64], workers: &[usize], runs: u64) -> Vec<SimCase> {
    let models = &MODELS;
    let mut cases = Vec::new();
    for &w in workers {
        for &seed in seeds {
            let trace = generate_trace(models, w, 1.0, seed);
            let lower_bound_ms = lower_bound(&trace, models, w).value_ms;
            let runs = (0..runs)
                .map(|jitter| simulate_placement(&trace, models, w, jitter))
                .collect();
            cases.push(SimCase {
                seed,
                workers: w,
                lower_bound_ms,
                runs,
            });
        }
    }
    cases
}

/// The study as a table: per case min, median and max of makespan / LB,
/// mean loads; then the worst run and how many runs are over the target.
pub fn render_study(cases: &[SimCase]) -> String {
    let mut out = String::from(
        "simulated placement (a model of the system, not a replay): makespan / LB\n\
         | workers | seed | min | median | max | loads (mean) |\n|---|---|---:|---:|---:|---:|\n",
    );
    let mut all = Vec::new();
    for case in cases {
        let mut ratios = case.ratios();
        ratios.sort_by(f64::total_cmp);
        let loads =
            case.runs.iter().map(|r| r.loads).sum::<u64>() as f64 / case.runs.len().max(1) as f64;
        if let (Some(min), Some(max)) = (ratios.first(), ratios.last()) {
            out.push_str(&format!(
                "| {} | {} | {min:.3} | {:.3} | {max:.3} | {loads:.1} |\n",
                case.workers,
                case.seed,
                ratios[ratios.len() / 2],
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
