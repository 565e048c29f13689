//! `gpuq-bench --placement-sim`: the simulated placement run of every
//! seed × worker count of one trace shape, several jitter seeds each, and
//! its table (the same figure as `scripts/placement-stability.sh`,
//! makespan / LB, from the model).

use serde::Serialize;

use super::super::best_static::best_static;
use super::super::clairvoyant::{load_log, search, static_schedule, Budget, Clairvoyant, Rules};
use super::super::shapes::TraceShape;
use super::super::{
    lower_bound, SyntheticModel, TraceJob, GPU_MEMORY_MIB, MAX_MODELS_PER_WORKER,
    TARGET_OVER_LOWER_BOUND,
};
use super::{placement_schedule, simulate_oracle, simulate_static, SimRun};

/// One case of a simulated study: a trace and worker count, run once per jitter seed.
#[derive(Debug, Clone, Serialize)]
pub struct SimCase {
    pub seed: u64,
    pub workers: usize,
    pub lower_bound_ms: f64,
    pub runs: Vec<SimRun>,
    /// The best static assignment's replays in the model, one per jitter seed.
    pub static_runs: Vec<SimRun>,
    /// The replanning oracle's runs (`sim/replan.rs`), one per jitter seed.
    pub oracle_runs: Vec<SimRun>,
    /// The best clairvoyant dynamic schedule found (`clairvoyant`): makespan, ms.
    pub clairvoyant_ms: f64,
    /// Its loads.
    pub clairvoyant_loads: usize,
    /// The same search without loading ahead of a job's arrival, ms.
    pub clairvoyant_online_ms: f64,
}

impl SimCase {
    /// Makespan / LB of each placement run.
    pub fn ratios(&self) -> Vec<f64> {
        self.over_lb(&self.runs)
    }

    /// Makespan / LB of each of `runs`, sorted.
    fn over_lb(&self, runs: &[SimRun]) -> Vec<f64> {
        let mut ratios: Vec<f64> = runs
            .iter()
            .map(|r| r.makespan_ms / self.lower_bound_ms)
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios
    }
}

/// The traces of a study: their shape and scale (`--mixed-shape`,
/// `--mixed-scale`), and how long to search each for a clairvoyant schedule.
#[derive(Debug, Clone, Copy)]
pub struct StudyTraces {
    pub shape: TraceShape,
    pub scale: f64,
    pub search: Budget,
}

/// `gpuq-bench --placement-sim RUNS`: every seed × worker count of one
/// trace shape, `runs_per_case` jitter seeds each, with placement, with
/// the best static assignment (searched over the whole trace, as
/// `--mixed-best-static` does) and with the replanning oracle.
pub fn study(
    traces: StudyTraces,
    seeds: &[u64],
    workers: &[usize],
    runs_per_case: u64,
) -> Vec<SimCase> {
    let models = &traces.shape.models();
    let mut cases = Vec::new();
    for &w in workers {
        for &seed in seeds {
            let trace = traces.shape.trace(w, traces.scale, seed);
            let lower_bound_ms = lower_bound(&trace, models, w).value_ms;
            let limits = (GPU_MEMORY_MIB, MAX_MODELS_PER_WORKER);
            let sets = best_static(&trace, models, w, limits)
                .map(|best| best.workers)
                .unwrap_or_default();
            let static_runs = (0..runs_per_case)
                .filter(|_| !sets.is_empty())
                .map(|jitter| simulate_static(&trace, models, &sets, jitter))
                .collect();
            let placed: Vec<(SimRun, Vec<Vec<usize>>)> = (0..runs_per_case)
                .map(|jitter| placement_schedule(&trace, models, w, jitter))
                .collect();
            // The best placement run's schedule is a start of the search too.
            let placement_best = placed
                .iter()
                .min_by(|a, b| a.0.makespan_ms.total_cmp(&b.0.makespan_ms))
                .map(|(_, schedule)| schedule.clone());
            let runs = placed.into_iter().map(|(run, _)| run).collect();
            let oracle_runs = (0..runs_per_case)
                .map(|jitter| simulate_oracle(&trace, models, w, jitter))
                .collect();
            let starts: Vec<Vec<Vec<usize>>> = placement_best.into_iter().collect();
            let clairvoyant =
                clairvoyant(&trace, models, (w, &sets), starts, (traces.search, seed));
            cases.push(SimCase {
                seed,
                workers: w,
                lower_bound_ms,
                runs,
                static_runs,
                oracle_runs,
                clairvoyant_ms: clairvoyant[0].makespan_ms,
                clairvoyant_loads: clairvoyant[0].loads,
                clairvoyant_online_ms: clairvoyant[1].makespan_ms,
            });
        }
    }
    cases
}

/// `--placement-sim-log`'s second part: the loads of the best schedule
/// found knowing the trace, without loading ahead of arrivals (placement's
/// own class of schedule), started from this placement run's schedule; and
/// its makespan, ms.
pub fn clairvoyant_loads(
    traces: StudyTraces,
    (seed, workers): (u64, usize),
    jitter: u64,
) -> (f64, Vec<String>) {
    let models = &traces.shape.models();
    let trace = traces.shape.trace(workers, traces.scale, seed);
    let sets = best_static(
        &trace,
        models,
        workers,
        (GPU_MEMORY_MIB, MAX_MODELS_PER_WORKER),
    )
    .map(|best| best.workers)
    .unwrap_or_default();
    let (_, ran) = placement_schedule(&trace, models, workers, jitter);
    // Only the no-preload search: the one with preloading is not printed.
    let starts: Vec<Vec<Vec<usize>>> = std::iter::once(ran)
        .chain(static_schedule(&trace, models, &sets, rules(false)))
        .collect();
    let online = search(
        &trace,
        models,
        (workers, rules(false)),
        &starts,
        (traces.search, seed),
    );
    let lines = load_log(&trace, models, &online.workers, rules(false));
    (
        online.makespan_ms,
        lines.into_iter().map(|(_, line)| line).collect(),
    )
}

/// What a schedule of the benchmark's workers may do.
pub(super) fn rules(preload: bool) -> Rules<'static> {
    Rules {
        memory_mib: GPU_MEMORY_MIB,
        max_models: MAX_MODELS_PER_WORKER,
        preload,
        begin: &[],
    }
}

/// The best schedules found knowing the whole trace: with preloading, and
/// without; from the static sets' schedule and the caller's `starts`.
fn clairvoyant(
    trace: &[TraceJob],
    models: &[SyntheticModel],
    (w, sets): (usize, &[Vec<usize>]),
    mut starts: Vec<Vec<Vec<usize>>>,
    (budget, seed): (Budget, u64),
) -> [Clairvoyant; 2] {
    starts.extend(static_schedule(trace, models, sets, rules(false)));
    // Without preloading first: its schedule is also one with preloading,
    // and a start for that search.
    let online = search(trace, models, (w, rules(false)), &starts, (budget, seed));
    starts.push(online.workers.clone());
    [
        search(trace, models, (w, rules(true)), &starts, (budget, seed)),
        online,
    ]
}

/// The study as a table: per case min, median and max of makespan / LB,
/// mean loads, load and idle time, the best static assignment's median
/// against LB and placement's against it; then the worst run and how many
/// runs are over the target.
pub fn render_study(cases: &[SimCase]) -> String {
    let mut out = String::from(
        "simulated placement (a model of the system, not a replay): makespan / LB;\n\
         means over the runs of loads and worker-seconds loading and idle; medians of\n\
         the best static assignment replayed in the model (search: `best_static`); the\n\
         best clairvoyant dynamic schedule found (`clairvoyant`) over LB, its loads, and\n\
         the best found when no load starts before its job arrives, over LB; the\n\
         replanning oracle's runs (`sim/replan.rs`) over LB, median and max, and mean loads\n\
         | workers | seed | min | median | max | loads | load s | idle, jobs waiting s | idle, none waiting s | best static / LB | placement / best static | clairvoyant / LB | its loads | no preload / LB | oracle median | oracle max | oracle loads |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let (mut all, mut all_oracle) = (Vec::new(), Vec::new());
    for case in cases {
        let ratios = case.ratios();
        let oracle = case.over_lb(&case.oracle_runs);
        let mean = |f: fn(&SimRun) -> f64| {
            case.runs.iter().map(f).sum::<f64>() / case.runs.len().max(1) as f64
        };
        let oracle_loads = case.oracle_runs.iter().map(|r| r.loads as f64).sum::<f64>()
            / case.oracle_runs.len().max(1) as f64;
        let static_over_lb = median(
            case.static_runs
                .iter()
                .map(|r| r.makespan_ms / case.lower_bound_ms),
        );
        if let (Some(min), Some(max)) = (ratios.first(), ratios.last()) {
            out.push_str(&format!(
                "| {} | {} | {min:.3} | {:.3} | {max:.3} | {:.1} | {:.1} | {:.1} | {:.1} | {static_over_lb:.3} | {:.3} | {:.3} | {} | {:.3} | {:.3} | {:.3} | {oracle_loads:.1} |\n",
                case.workers,
                case.seed,
                ratios[ratios.len() / 2],
                mean(|r| r.loads as f64),
                mean(|r| r.load_s),
                mean(|r| r.idle_with_backlog_s),
                mean(|r| r.idle_empty_s),
                ratios[ratios.len() / 2] / static_over_lb,
                case.clairvoyant_ms / case.lower_bound_ms,
                case.clairvoyant_loads,
                case.clairvoyant_online_ms / case.lower_bound_ms,
                median(oracle.iter().copied()),
                oracle.last().copied().unwrap_or(f64::NAN),
            ));
        }
        all.extend(ratios);
        all_oracle.extend(oracle);
    }
    for (label, ratios) in [
        ("runs", &mut all),
        ("replanning oracle runs", &mut all_oracle),
    ] {
        ratios.sort_by(f64::total_cmp);
        let over = ratios
            .iter()
            .filter(|r| **r > TARGET_OVER_LOWER_BOUND)
            .count();
        if let Some(worst) = ratios.last() {
            out.push_str(&format!(
                "{label}: {}, median {:.3}, worst {worst:.3}, over {}: {over}\n",
                ratios.len(),
                ratios[ratios.len() / 2],
                TARGET_OVER_LOWER_BOUND,
            ));
        }
    }
    for (name, makespan) in [
        ("clairvoyant", (|c| c.clairvoyant_ms) as fn(&SimCase) -> f64),
        ("no preload", |c| c.clairvoyant_online_ms),
    ] {
        let ratios: Vec<f64> = cases
            .iter()
            .map(|case| makespan(case) / case.lower_bound_ms)
            .collect();
        let worst = ratios.iter().copied().fold(0.0, f64::max);
        let over = ratios
            .iter()
            .filter(|r| **r > TARGET_OVER_LOWER_BOUND)
            .count();
        out.push_str(&format!(
            "{name} schedules found: worst {worst:.3}, cases over {TARGET_OVER_LOWER_BOUND}: {over} of {}\n",
            cases.len()
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
