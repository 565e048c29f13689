use super::*;
use crate::bench::mixed::clairvoyant::{Budget, PLATEAUS};
use crate::bench::mixed::shapes::TraceShape;
use crate::bench::mixed::{generate_trace, lower_bound, MODELS};

/// A short search: the tests check the study's shape, not its figures.
const QUICK: Budget = Budget {
    rounds: 1,
    steps: 2_000,
    mean_weight: PLATEAUS,
};

#[test]
fn every_job_runs_and_the_makespan_is_above_the_lower_bound() {
    for (workers, seed) in [(3, 8), (4, 21), (6, 3)] {
        let trace = generate_trace(&MODELS, workers, 0.25, seed);
        let bound = lower_bound(&trace, &MODELS, workers);
        let run = simulate_placement(&trace, &MODELS, workers, 1);
        assert!(run.makespan_ms.is_finite());
        assert!(
            run.makespan_ms >= bound.value_ms,
            "{workers} workers, seed {seed}: {} ms under LB {} ms",
            run.makespan_ms,
            bound.value_ms
        );
        // Every model of the trace was loaded at least once.
        assert!(run.loads >= MODELS.len() as u64, "{} loads", run.loads);
    }
}

#[test]
fn the_replanning_oracle_runs_every_job_repeatably_above_the_lower_bound() {
    for (workers, seed) in [(3, 8), (4, 21)] {
        let trace = generate_trace(&MODELS, workers, 0.25, seed);
        let bound = lower_bound(&trace, &MODELS, workers).value_ms;
        let run = simulate_oracle(&trace, &MODELS, workers, 1);
        assert!(run.makespan_ms.is_finite(), "{run:?}");
        assert!(run.makespan_ms >= bound, "{run:?} under LB {bound} ms");
        assert!(run.loads >= MODELS.len() as u64, "{run:?}");
        assert_eq!(run, simulate_oracle(&trace, &MODELS, workers, 1));
    }
}

#[test]
fn a_placement_runs_schedule_runs_every_job_once() {
    use crate::bench::mixed::clairvoyant::complete;
    let trace = generate_trace(&MODELS, 4, 0.25, 21);
    let (run, schedule) = placement_schedule(&trace, &MODELS, 4, 3);
    assert_eq!(run, simulate_placement(&trace, &MODELS, 4, 3));
    assert!(complete(&schedule, trace.len(), 4), "{schedule:?}");
}

#[test]
fn the_log_of_the_schedule_found_names_each_of_its_loads() {
    let traces = StudyTraces {
        shape: TraceShape::Bursts,
        scale: 0.25,
        search: QUICK,
    };
    let (makespan_ms, loads) = clairvoyant_loads(traces, (8, 3), 1);
    let trace = generate_trace(&MODELS, 3, 0.25, 8);
    assert!(makespan_ms >= lower_bound(&trace, &MODELS, 3).value_ms);
    // Every model of the trace loads at least once, each on its own line, in time order.
    assert!(loads.len() >= MODELS.len(), "{loads:?}");
    assert!(loads.iter().all(|l| l.contains(" load m")), "{loads:?}");
    let starts: Vec<f64> = loads
        .iter()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{loads:?}");
}

#[test]
fn a_jitter_seed_names_one_run() {
    let trace = generate_trace(&MODELS, 3, 0.25, 8);
    let a = simulate_placement(&trace, &MODELS, 3, 7);
    assert_eq!(a, simulate_placement(&trace, &MODELS, 3, 7));
    let others: Vec<SimRun> = (8..12)
        .map(|j| simulate_placement(&trace, &MODELS, 3, j))
        .collect();
    assert!(others.iter().any(|b| b.makespan_ms != a.makespan_ms));
}

#[test]
fn one_model_on_one_worker_runs_back_to_back_after_one_load() {
    let model = MODELS[2];
    let trace: Vec<TraceJob> = (0..10)
        .map(|i| TraceJob {
            arrival_ms: i,
            model: 0,
            duration_ms: model.duration_ms,
        })
        .collect();
    let run = simulate_placement(&trace, &[model], 1, 3);
    assert_eq!(run.loads, 1);
    let ideal = (model.load_ms + 10 * model.duration_ms) as f64;
    // Per-job and load overheads are milliseconds, not a job's length.
    assert!(
        run.makespan_ms >= ideal && run.makespan_ms < ideal + 100.0,
        "{run:?}"
    );
}

#[test]
fn the_study_renders_every_case() {
    let bursts = StudyTraces {
        shape: TraceShape::Bursts,
        scale: 1.0,
        search: QUICK,
    };
    let cases = study(bursts, &[8], &[3], 2);
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].runs.len(), 2);
    assert_eq!(cases[0].static_runs.len(), 2);
    assert_eq!(cases[0].oracle_runs.len(), 2);
    let text = render_study(&cases);
    assert!(text.contains("| 3 | 8 |"), "{text}");
    assert!(text.contains("runs: 2"), "{text}");
    assert!(text.contains("clairvoyant schedules found"), "{text}");
    assert!(text.contains("replanning oracle runs: 2"), "{text}");
}

#[test]
fn a_static_replay_whose_sets_fit_never_loads_a_model_twice() {
    let trace = generate_trace(&MODELS, 3, 0.25, 8);
    // m1 + m2 and m4 + m3 fit a 16 GiB worker; m5 alone.
    let sets = vec![vec![0, 1], vec![2, 3], vec![4]];
    let run = simulate_static(&trace, &MODELS, &sets, 2);
    assert!(run.makespan_ms.is_finite());
    assert!(run.loads <= 5, "{run:?}");
    assert!(run.makespan_ms >= lower_bound(&trace, &MODELS, 3).value_ms);
}

#[test]
fn the_log_names_every_load_and_agrees_with_the_run() {
    let trace = generate_trace(&MODELS, 3, 0.25, 21);
    let (run, log) = placement_log(&trace, &MODELS, 3, 4);
    assert_eq!(run, simulate_placement(&trace, &MODELS, 3, 4));
    let loads = log.iter().filter(|line| line.contains(" load ")).count();
    assert_eq!(loads as u64, run.loads);
    assert!(
        log.iter().any(|line| line.contains(" main Some(")),
        "{log:?}"
    );
}

#[test]
fn the_dispatchers_round_on_the_models_records_keeps_a_loaded_model_and_serves_a_waiting_one() {
    use gpuq_common::metrics::WorkerMetrics;
    use records::{worker_record, RecordParts, Rounds};

    let mut metrics = WorkerMetrics::default();
    let m0 = metrics.models.entry(MODELS[0].id.to_owned()).or_default();
    m0.loads = 1;
    m0.load_seconds_sum = MODELS[0].load_ms as f64 / 1000.0;
    m0.run.observe(MODELS[0].duration_ms as f64 / 1000.0);
    *m0.jobs.entry("completed".to_owned()).or_default() += 1;
    let held = BTreeMap::from([(0, 1)]);
    let none = BTreeMap::new();
    let busy = RecordParts {
        resident: &[(0, 1_000)],
        running: Some(0),
        waiting: &held,
        metrics: &metrics,
    };
    let empty = WorkerMetrics::default();
    let free = RecordParts {
        resident: &[],
        running: None,
        waiting: &none,
        metrics: &empty,
    };
    let records = vec![
        worker_record(0, &MODELS, busy, 9_000),
        worker_record(1, &MODELS, free, 9_000),
    ];
    assert_eq!(records[0].resident_models[0].in_use, 1);
    let mut rounds = Rounds::new(&MODELS, 2);
    // Four jobs of m0 ready beside the one held, six of m2.
    let per_worker = rounds.run(&MODELS, &[4, 0, 6, 0, 0], &records, 10_000_000);
    assert_eq!(per_worker.len(), 2);
    assert_eq!(per_worker[0].1, Some(0), "{per_worker:?}");
    assert!(per_worker[0].0.contains(&0), "{per_worker:?}");
    assert_eq!(per_worker[1].1, Some(2), "{per_worker:?}");
    assert!(per_worker[1].0.contains(&2), "{per_worker:?}");
}

#[test]
fn the_hot_spot_and_long_tail_traces_run_every_job_with_placement_and_static_sets() {
    for shape in [TraceShape::HotSpot, TraceShape::LongTail] {
        let traces = StudyTraces {
            shape,
            scale: 0.25,
            search: QUICK,
        };
        let cases = study(traces, &[8], &[3], 2);
        let case = &cases[0];
        let models = shape.models();
        let trace = shape.trace(3, 0.25, 8);
        assert_eq!(
            case.lower_bound_ms,
            lower_bound(&trace, &models, 3).value_ms
        );
        assert_eq!(case.static_runs.len(), 2, "{shape:?}");
        let used: BTreeSet<usize> = trace.iter().map(|j| j.model).collect();
        for run in case.runs.iter().chain(&case.static_runs) {
            assert!(
                run.makespan_ms.is_finite() && run.makespan_ms >= case.lower_bound_ms,
                "{shape:?}: {run:?}"
            );
            // Every model with a job was loaded somewhere.
            assert!(run.loads >= used.len() as u64, "{shape:?}: {run:?}");
        }
        // The schedule found without preloading is a start of the search
        // with it, so that search ends no higher; both are real schedules.
        assert!(
            case.clairvoyant_ms <= case.clairvoyant_online_ms,
            "{case:?}"
        );
        assert!(case.clairvoyant_ms >= case.lower_bound_ms, "{case:?}");
        assert!(case.clairvoyant_loads >= used.len(), "{case:?}");
    }
}
