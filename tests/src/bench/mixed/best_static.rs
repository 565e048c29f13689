//! The strongest static baseline an operator could configure without gpuq's
//! placement (issue 18): each model pinned to a fixed set of workers, chosen
//! knowing the whole trace in advance, then replayed on the real system
//! (declared slots with their model lists, placement off). Pure, tested in
//! `tests.rs`.
//!
//! The search: where it is small enough, every multiset of per-worker model
//! sets that fit a worker's memory (at most `max_models`, so nothing is ever
//! unloaded) and serve every model; then, from the best of those (or, with
//! more models than can be pinned within memory, from each model on the
//! least loaded worker), a local search that adds or removes one worker of
//! one model at a time while the simulated makespan falls, keeping every
//! set within memory when the exhaustive search could. A set that does not
//! fit swaps models least recently used first, as a worker would.
//!
//! The simulation is list scheduling in arrival order: each job goes to the
//! worker of its model that would finish it first, paying the model's load
//! when that worker does not hold it. It only ranks assignments; the figure
//! reported is the replay's.

use super::{SyntheticModel, TraceJob};

/// Models per worker: indexes into the model list, sorted.
pub type ModelSet = Vec<usize>;

/// Exhaustive search up to this many assignments.
const EXHAUSTIVE_LIMIT: usize = 200_000;
/// Local-search passes over every (model, worker) pair.
const PASSES: usize = 6;

/// The best static assignment found and its simulated makespan.
#[derive(Debug, Clone, PartialEq)]
pub struct BestStatic {
    /// One model set per worker.
    pub workers: Vec<ModelSet>,
    pub simulated_ms: f64,
    /// Assignments scored.
    pub searched: usize,
}

/// Every non-empty set of at most `max_models` models whose VRAM fits `memory_mib`.
pub fn fitting_sets(
    models: &[SyntheticModel],
    memory_mib: u64,
    max_models: usize,
) -> Vec<ModelSet> {
    let mut sets = Vec::new();
    for mask in 1u64..(1 << models.len().min(20)) {
        if mask.count_ones() as usize > max_models {
            continue;
        }
        let set: ModelSet = (0..models.len()).filter(|i| mask & (1 << i) != 0).collect();
        let vram: u64 = set.iter().map(|&i| models[i].vram_mib).sum();
        if vram <= memory_mib {
            sets.push(set);
        }
    }
    sets
}

/// The simulated makespan of `trace` with each worker serving only its set, ms.
pub fn simulate(
    trace: &[TraceJob],
    models: &[SyntheticModel],
    workers: &[ModelSet],
    (memory_mib, max_models): (u64, usize),
) -> f64 {
    let mut free_at = vec![0u64; workers.len()];
    // Resident models per worker, least recently used first.
    let mut resident: Vec<Vec<usize>> = vec![Vec::new(); workers.len()];
    let mut makespan = 0u64;
    for job in trace {
        let best = (0..workers.len())
            .filter(|&w| workers[w].contains(&job.model))
            .map(|w| {
                let load = if resident[w].contains(&job.model) {
                    0
                } else {
                    models[job.model].load_ms
                };
                (free_at[w].max(job.arrival_ms) + load + job.duration_ms, w)
            })
            .min();
        let Some((done, w)) = best else {
            return f64::INFINITY; // a model no worker serves
        };
        free_at[w] = done;
        let held = &mut resident[w];
        held.retain(|&m| m != job.model);
        let vram = |held: &Vec<usize>| held.iter().map(|&m| models[m].vram_mib).sum::<u64>();
        while !held.is_empty()
            && (held.len() + 1 > max_models || vram(held) + models[job.model].vram_mib > memory_mib)
        {
            held.remove(0);
        }
        held.push(job.model);
        makespan = makespan.max(done);
    }
    makespan as f64
}

/// The best static assignment of `trace`'s models to `workers` workers.
pub fn best_static(
    trace: &[TraceJob],
    models: &[SyntheticModel],
    workers: usize,
    limits: (u64, usize),
) -> Option<BestStatic> {
    let mut needed = vec![false; models.len()];
    for job in trace {
        needed[job.model] = true;
    }
    // Where every model can be pinned within memory, the search stays
    // there: a set that swaps looks better in the simulation than on a real
    // worker, which alternates between its queues and reloads.
    let (start, mut searched, within_memory) =
        match exhaustive(trace, models, workers, limits, &needed) {
            Some(best) => (best.workers, best.searched, true),
            None => (spread(trace, models, workers), 0, false),
        };
    let fits = |set: &ModelSet| {
        set.len() <= limits.1 && set.iter().map(|&m| models[m].vram_mib).sum::<u64>() <= limits.0
    };
    let mut best = start;
    let mut best_ms = simulate(trace, models, &best, limits);
    for _ in 0..PASSES {
        let mut improved = false;
        for model in (0..models.len()).filter(|&m| needed[m]) {
            for w in 0..workers {
                let mut candidate = best.clone();
                match candidate[w].iter().position(|&m| m == model) {
                    // A worker keeps at least one model (an empty slot is not started).
                    Some(_) if candidate[w].len() == 1 => continue,
                    Some(i) => {
                        candidate[w].remove(i);
                    }
                    None => {
                        candidate[w].push(model);
                        candidate[w].sort_unstable();
                    }
                }
                if within_memory && !fits(&candidate[w]) {
                    continue;
                }
                searched += 1;
                let ms = simulate(trace, models, &candidate, limits);
                if ms < best_ms {
                    (best, best_ms, improved) = (candidate, ms, true);
                }
            }
        }
        if !improved {
            break;
        }
    }
    best_ms.is_finite().then_some(BestStatic {
        workers: best,
        simulated_ms: best_ms,
        searched,
    })
}

/// Every multiset of `workers` fitting sets that serves every needed model,
/// when there are at most [`EXHAUSTIVE_LIMIT`] of them.
fn exhaustive(
    trace: &[TraceJob],
    models: &[SyntheticModel],
    workers: usize,
    limits: (u64, usize),
    needed: &[bool],
) -> Option<BestStatic> {
    let sets = fitting_sets(models, limits.0, limits.1);
    // Multisets of size k from n: C(n + k - 1, k).
    let (n, k) = (sets.len(), workers);
    let mut count = 1f64;
    for i in 0..k {
        count = count * (n + i) as f64 / (i + 1) as f64;
    }
    if sets.is_empty() || count > EXHAUSTIVE_LIMIT as f64 {
        return None;
    }
    let mut best: Option<BestStatic> = None;
    let mut searched = 0;
    let mut choice = vec![0usize; workers];
    loop {
        let assignment: Vec<ModelSet> = choice.iter().map(|&c| sets[c].clone()).collect();
        let covers =
            (0..models.len()).all(|m| !needed[m] || assignment.iter().any(|set| set.contains(&m)));
        if covers {
            searched += 1;
            let simulated_ms = simulate(trace, models, &assignment, limits);
            if best.as_ref().is_none_or(|b| simulated_ms < b.simulated_ms) {
                best = Some(BestStatic {
                    workers: assignment,
                    simulated_ms,
                    searched: 0,
                });
            }
        }
        // Next non-decreasing sequence of set indexes.
        let Some(i) = (0..workers).rev().find(|&i| choice[i] + 1 < sets.len()) else {
            break;
        };
        let next = choice[i] + 1;
        for c in &mut choice[i..] {
            *c = next;
        }
    }
    best.map(|b| BestStatic { searched, ..b })
}

/// Each model on the worker with the least work so far, largest work first.
fn spread(trace: &[TraceJob], models: &[SyntheticModel], workers: usize) -> Vec<ModelSet> {
    let mut work = vec![0u64; models.len()];
    for job in trace {
        work[job.model] += job.duration_ms;
    }
    let mut order: Vec<usize> = (0..models.len()).filter(|&m| work[m] > 0).collect();
    order.sort_by_key(|&m| std::cmp::Reverse(work[m] + models[m].load_ms));
    let mut assigned = vec![Vec::new(); workers];
    let mut load = vec![0u64; workers];
    for m in order {
        let w = (0..workers).min_by_key(|&w| load[w]).unwrap_or(0);
        assigned[w].push(m);
        load[w] += work[m] + models[m].load_ms;
    }
    for set in &mut assigned {
        set.sort_unstable();
    }
    assigned
}
