//! A discrete-event model of the mixed benchmark's placement run, for
//! finding which placement decisions flip between runs (issue 18).
//!
//! A real run takes a minute and its figure moves by 0.05 between runs of
//! the same build, as much as a rule changes it; a study of 75 runs takes an
//! hour. This replays the same seeded trace in milliseconds of CPU, running
//! the dispatcher's own placement round (`gpuq_dispatcher::placement_round`,
//! which calls `decide`), against a model of what the real system does
//! around it:
//!
//! - workers as the mixed benchmark configures them: one job at a time, a
//!   prefetch of one per consumed queue (so a worker holds at most one job of
//!   each queue, the running one included, and alternates between queues),
//!   the worker's pick among held jobs (`gpu_worker::placement::choose`:
//!   main model first, then a loaded one, else the oldest after a 50 ms
//!   grace), loads that unload the least recently used model;
//! - the broker: a FIFO per model, deliveries round-robin over the
//!   consumers with credit, a cancelled queue's held jobs returned to it;
//! - the records placement reads: a worker's record is rewritten on a state
//!   change (at most every 100 ms) and every heartbeat, and lists loaded
//!   models, not one being loaded (`sim/records.rs`);
//! - placement rounds every 500 ms and when a worker runs dry, each the
//!   dispatcher's own `placement_round` on those records (timings measured
//!   from them, snapshot, decision, assignments), assignments applied a few
//!   milliseconds after the round (or, as a yardstick, the decision of a
//!   replanning oracle: `sim/replan.rs`).
//!
//! The jitter seed draws the delays the real system has and the model does
//! not know in advance (broker deliveries, per-job and per-load overheads,
//! how long a round and an assignment take): one jitter seed is one "run",
//! repeatable. It is a model, not the system: its figures rank policies and
//! find flipping decisions; the figures reported in docs/benchmarks.md are
//! the real replays'.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use gpuq_common::metrics::WorkerMetrics;
use gpuq_common::record::WorkerRecord;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::{SyntheticModel, TraceJob};

mod records;
mod replan;
mod study;
mod worker;
use records::Rounds;
pub use study::{clairvoyant_loads, render_study, study, SimCase, StudyTraces};

/// Shortest gap between two rounds triggered by dry workers, µs.
const EARLIEST_REPEAT_US: u64 = 100_000;
/// How long a worker stays dry before it announces it, µs.
const DRY_CONFIRM_US: u64 = 50_000;
/// Heartbeat interval and shortest gap between state-change writes, µs.
const HEARTBEAT_US: u64 = 500_000;
const HEARTBEAT_MIN_GAP_US: u64 = 100_000;
/// A free worker waits this long for a job of a loaded model, µs.
const AFFINITY_GRACE_US: u64 = 50_000;

/// Placement rounds, µs (the benchmark's `placement.interval_ms`).
fn round_us() -> u64 {
    super::default_policy().interval_ms * 1000
}

/// A held job this old runs next, loaded model or not (`max_queue_wait_ms`).
fn starve_after_us() -> u64 {
    super::default_policy().max_queue_wait_ms * 1000
}

/// A run still going after this long (an hour) has a job that never runs, µs.
const HORIZON_US: u64 = 3_600_000_000;

/// Ranges of the delays the jitter seed draws, µs.
const DELIVERY_US: (u64, u64) = (300, 1_500);
const JOB_OVERHEAD_US: (u64, u64) = (500, 3_000);
const LOAD_OVERHEAD_US: (u64, u64) = (2_000, 30_000);
const ROUND_TAKES_US: (u64, u64) = (2_000, 20_000);

/// What one simulated run gave.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SimRun {
    pub makespan_ms: f64,
    pub loads: u64,
    /// Worker-seconds spent loading.
    pub load_s: f64,
    /// Worker-seconds idle while jobs waited (queued or held anywhere).
    pub idle_with_backlog_s: f64,
    /// Worker-seconds idle with no job waiting anywhere.
    pub idle_empty_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrive(usize),
    /// A job the broker sent reaches the worker.
    Deliver {
        worker: usize,
        job: usize,
    },
    /// The worker's load (then run) of its current job ends.
    LoadDone(usize),
    RunDone(usize),
    /// A free worker's grace for a job of a loaded model ends.
    Wake(usize),
    Publish(usize),
    Heartbeat(usize),
    DryCheck(usize),
    Round,
    /// A round's assignment reaches the worker: its queues and main model.
    Apply {
        worker: usize,
        round: usize,
    },
}

/// The worker's job in progress.
#[derive(Debug, Clone, Copy)]
struct Busy {
    job: usize,
    loading: bool,
    /// When it should end (load and run, without the drawn overheads), µs.
    ends_us: u64,
}

#[derive(Debug, Default)]
struct Worker {
    /// Loaded models: model, when loaded (ms), last used (µs).
    resident: Vec<(usize, u64, u64)>,
    consuming: BTreeSet<usize>,
    main: Option<usize>,
    /// Jobs sent to it and not acked, by model (at most one each): the
    /// job, and when it was received (`None`: on its way, or running).
    unacked: BTreeMap<usize, (usize, Option<u64>)>,
    busy: Option<Busy>,
    free_since: u64,
    /// Jobs finished, loads and run times, by model id, as a worker counts them.
    metrics: WorkerMetrics,
    published_at: Option<u64>,
    publish_pending: bool,
    dry_announced: bool,
}

struct Sim<'a> {
    trace: &'a [TraceJob],
    models: &'a [SyntheticModel],
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    queues: Vec<VecDeque<usize>>,
    rotation: Vec<usize>,
    workers: Vec<Worker>,
    rounds: Rounds,
    /// Each round's decision: per worker, its queues and main model.
    decisions: Vec<Vec<(BTreeSet<usize>, Option<usize>)>>,
    last_round: u64,
    done: usize,
    makespan: u64,
    loads: u64,
    /// Worker-µs loading, idle with a backlog, idle without.
    time: [u64; 3],
    /// Placement on: rounds run, and workers pick their main model's jobs first.
    placement: bool,
    /// Rounds replan the jobs there with a search (`replan`), not placement's.
    oracle: bool,
    /// Loads and assignment changes, when asked for (`placement_log`).
    log: Option<Vec<String>>,
    /// Each worker's jobs in the order they ran (one at a time).
    ran: Vec<Vec<usize>>,
    /// Each worker's last written record, as placement reads it.
    records: Vec<WorkerRecord>,
}

/// Replays `trace` on `workers` simulated workers under the dispatcher's
/// placement; `jitter_seed` draws the delays (one seed, one run).
pub fn simulate_placement(
    trace: &[TraceJob],
    models: &[SyntheticModel],
    workers: usize,
    jitter_seed: u64,
) -> SimRun {
    placement_schedule(trace, models, workers, jitter_seed).0
}

/// [`simulate_placement`] with each round's decision taken by the
/// replanning oracle (`sim/replan.rs`) instead of placement's rules.
pub fn simulate_oracle(
    trace: &[TraceJob],
    models: &[SyntheticModel],
    workers: usize,
    jitter_seed: u64,
) -> SimRun {
    simulate(trace, models, workers, Control::Oracle, jitter_seed, false).0
}

/// One simulated placement run and its schedule: each worker's jobs
/// (indexes into the trace) in the order they ran.
pub fn placement_schedule(
    trace: &[TraceJob],
    models: &[SyntheticModel],
    workers: usize,
    jitter_seed: u64,
) -> (SimRun, Vec<Vec<usize>>) {
    let (run, _, ran) = simulate(
        trace,
        models,
        workers,
        Control::Placement,
        jitter_seed,
        false,
    );
    (run, ran)
}

/// One simulated placement run with its log: every load and assignment
/// change, by time and worker. Two jitter seeds' logs side by side show
/// where a good and a bad run of one trace part.
pub fn placement_log(
    trace: &[TraceJob],
    models: &[SyntheticModel],
    workers: usize,
    jitter_seed: u64,
) -> (SimRun, Vec<String>) {
    let (run, log, _) = simulate(
        trace,
        models,
        workers,
        Control::Placement,
        jitter_seed,
        true,
    );
    (run, log)
}

/// Replays `trace` with placement off and each worker consuming only its
/// set of models (the best static baseline's replay): jobs run in the
/// order they reach the worker.
pub fn simulate_static(
    trace: &[TraceJob],
    models: &[SyntheticModel],
    sets: &[Vec<usize>],
    jitter_seed: u64,
) -> SimRun {
    simulate(
        trace,
        models,
        sets.len(),
        Control::Static(sets),
        jitter_seed,
        false,
    )
    .0
}

/// What decides which queues the workers consume.
#[derive(Clone, Copy)]
enum Control<'a> {
    /// The dispatcher's placement round.
    Placement,
    /// Fixed sets of models, one per worker, and no rounds.
    Static(&'a [Vec<usize>]),
    /// The replanning oracle's rounds.
    Oracle,
}

fn simulate(
    trace: &[TraceJob],
    models: &[SyntheticModel],
    workers: usize,
    control: Control,
    jitter_seed: u64,
    log: bool,
) -> (SimRun, Vec<String>, Vec<Vec<usize>>) {
    let mut sim = Sim {
        trace,
        models,
        rng: ChaCha8Rng::seed_from_u64(jitter_seed),
        now: 0,
        seq: 0,
        events: BinaryHeap::new(),
        queues: vec![VecDeque::new(); models.len()],
        rotation: vec![0; models.len()],
        workers: (0..workers).map(|_| Worker::default()).collect(),
        rounds: Rounds::new(models, workers),
        decisions: Vec::new(),
        last_round: 0,
        done: 0,
        makespan: 0,
        loads: 0,
        time: [0; 3],
        placement: true,
        oracle: matches!(control, Control::Oracle),
        log: log.then(Vec::new),
        ran: vec![Vec::new(); workers],
        records: Vec::with_capacity(workers),
    };
    for w in 0..workers {
        // No assignment yet: a fresh worker consumes every model.
        sim.workers[w].consuming = match control {
            Control::Static(sets) => sets[w].iter().copied().collect(),
            _ => (0..models.len()).collect(),
        };
        let record = sim.record(w);
        sim.records.push(record);
        let phase = sim.rng.random_range(0..HEARTBEAT_US);
        sim.at(phase, Event::Heartbeat(w));
    }
    for (i, job) in trace.iter().enumerate() {
        sim.at(job.arrival_ms * 1000, Event::Arrive(i));
    }
    let first = sim.rng.random_range(0..round_us());
    if let Control::Static(_) = control {
        sim.placement = false;
    } else {
        sim.at(first, Event::Round);
    }
    while sim.done < trace.len() {
        let Some(Reverse((at, _, event))) = sim.events.pop() else {
            break;
        };
        if at > HORIZON_US {
            // A job that never runs: a bug of the model or of the policy.
            sim.makespan = u64::MAX;
            break;
        }
        sim.account(at);
        sim.now = at;
        sim.handle(event);
    }
    let run = SimRun {
        makespan_ms: if sim.makespan == u64::MAX {
            f64::INFINITY
        } else {
            sim.makespan as f64 / 1000.0
        },
        loads: sim.loads,
        load_s: sim.time[0] as f64 / 1e6,
        idle_with_backlog_s: sim.time[1] as f64 / 1e6,
        idle_empty_s: sim.time[2] as f64 / 1e6,
    };
    (run, sim.log.unwrap_or_default(), sim.ran)
}

impl Sim<'_> {
    fn at(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, event)));
    }

    /// Adds the time up to `at` to each worker's loading or idle total.
    fn account(&mut self, at: u64) {
        let dt = at - self.now;
        let backlog = self.queues.iter().any(|q| !q.is_empty())
            || self
                .workers
                .iter()
                .any(|w| w.unacked.values().any(|(_, held)| held.is_some()));
        for worker in &self.workers {
            match worker.busy {
                Some(Busy { loading: true, .. }) => self.time[0] += dt,
                Some(_) => {}
                None if backlog => self.time[1] += dt,
                None => self.time[2] += dt,
            }
        }
    }

    fn draw(&mut self, (low, high): (u64, u64)) -> u64 {
        self.rng.random_range(low..=high)
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Arrive(job) => {
                let model = self.trace[job].model;
                self.queues[model].push_back(job);
                self.pump(model);
            }
            Event::Deliver { worker, job } => self.deliver(worker, job),
            Event::LoadDone(w) => {
                let busy = self.workers[w].busy.expect("a load in progress");
                let model = self.trace[busy.job].model;
                let loaded_ms = self.now / 1000;
                self.workers[w].resident.push((model, loaded_ms, self.now));
                // The worker times the load call, the model's declared load
                // for the sleep runtime; the drawn overhead is around it.
                let id = self.models[model].id.to_owned();
                let metrics = self.workers[w].metrics.models.entry(id).or_default();
                metrics.loads += 1;
                metrics.load_seconds_sum += self.models[model].load_ms as f64 / 1000.0;
                let duration_us = self.trace[busy.job].duration_ms * 1000;
                self.workers[w].busy = Some(Busy {
                    loading: false,
                    ends_us: self.now + duration_us,
                    ..busy
                });
                let run = duration_us + self.draw(JOB_OVERHEAD_US);
                self.at(self.now + run, Event::RunDone(w));
                self.changed(w);
            }
            Event::RunDone(w) => self.run_done(w),
            Event::Wake(w) => self.try_start(w),
            Event::Publish(w) => {
                self.workers[w].publish_pending = false;
                self.publish(w);
            }
            Event::Heartbeat(w) => {
                self.publish(w);
                self.at(self.now + HEARTBEAT_US, Event::Heartbeat(w));
            }
            Event::DryCheck(w) => {
                let worker = &self.workers[w];
                let dry = worker.busy.is_none() && worker.unacked.is_empty();
                let repeat = self.now.saturating_sub(self.last_round) >= EARLIEST_REPEAT_US;
                if self.placement && dry && repeat {
                    self.round();
                }
            }
            Event::Round => {
                self.round();
                self.at(self.now + round_us(), Event::Round);
            }
            Event::Apply { worker, round } => self.apply(worker, round),
        }
    }
}

#[cfg(test)]
mod tests;
