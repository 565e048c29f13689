use super::*;
use crate::bench::mixed::best_static::best_static;
use crate::bench::mixed::shapes::TraceShape;
use crate::bench::mixed::{lower_bound, GPU_MEMORY_MIB, MODELS};

const LIMITS: Rules = Rules {
    memory_mib: GPU_MEMORY_MIB,
    max_models: 2,
    preload: true,
    begin: &[],
};
const QUICK: Budget = Budget {
    rounds: 2,
    steps: 5_000,
    mean_weight: PLATEAUS,
};

fn job(arrival_ms: u64, model: usize) -> TraceJob {
    TraceJob {
        arrival_ms,
        model,
        duration_ms: MODELS[model].duration_ms,
    }
}

#[test]
fn a_load_starts_when_the_worker_frees_and_hides_in_idle_time() {
    // m3 loads in 1,000 ms; its jobs come at 5 s: the load is done by then.
    let trace = vec![job(5_000, 2), job(5_000, 2), job(9_000, 2)];
    let (end, loads) = timeline(&trace, &MODELS, &[0, 1, 2], LIMITS);
    assert_eq!((end, loads), (9_000 + 150, 1));
    // Without preloading, the load starts when the first job comes: the
    // first two jobs end at 5,000 + 1,000 + 2 × 150.
    let online = Rules {
        preload: false,
        ..LIMITS
    };
    assert_eq!(timeline(&trace, &MODELS, &[0, 1], online), (6_300, 1));
    assert_eq!(timeline(&trace, &MODELS, &[0, 1], LIMITS), (5_300, 1));
    // A job at 0 waits for the load.
    let trace = vec![job(0, 2), job(0, 2)];
    assert_eq!(timeline(&trace, &MODELS, &[0, 1], LIMITS), (1_300, 1));
}

#[test]
fn a_worker_begins_busy_and_holding_the_models_rules_say() {
    // Worker 0 is busy until 2 s and holds m3; worker 1 is past `begin`.
    let begin = [Start {
        free_ms: 2_000,
        resident: vec![2],
    }];
    let rules = Rules {
        begin: &begin,
        preload: false,
        ..LIMITS
    };
    let trace = vec![job(0, 2), job(0, 2)];
    // On worker 0, no load, from 2 s; on worker 1, one load from 0 (the
    // makespan still waits for worker 0 to free).
    let on = |w: usize| {
        let mut schedule = vec![Vec::new(); 2];
        schedule[w] = vec![0, 1];
        evaluate(&trace, &MODELS, &schedule, rules)
    };
    assert_eq!(on(0), (2_300, 0));
    assert_eq!(on(1), (2_000, 1));
    // Its models count in memory and in Belady's rule: m1 loads beside m3,
    // m4 unloads m1 (never used again), so m3 runs without a load.
    let trace = vec![job(0, 0), job(0, 3), job(0, 2)];
    assert_eq!(evaluate(&trace, &MODELS, &[vec![0, 1, 2]], rules).1, 2);
}

#[test]
fn a_load_unloads_the_model_used_again_last_within_memory() {
    // m3, m5 then m2 (6,000 + 6,000 + 7,000 MiB: two fit), then m3 again:
    // the load of m2 unloads m5 (never used again), so m3 stays.
    let trace = vec![job(0, 2), job(0, 4), job(0, 1), job(0, 2)];
    let (_, loads) = timeline(&trace, &MODELS, &[0, 1, 2, 3], LIMITS);
    assert_eq!(loads, 3);
    // m1 (9,000) and m4 (8,000) never fit together: each change reloads.
    let trace = vec![job(0, 0), job(0, 3), job(0, 0)];
    let (end, loads) = timeline(&trace, &MODELS, &[0, 1, 2], LIMITS);
    assert_eq!(loads, 3);
    assert_eq!(end, 3_000 + 300 + 2_500 + 400 + 3_000 + 300);
}

#[test]
fn two_models_that_cannot_share_a_worker_get_one_each() {
    // m1 and m4 alternate; on two workers the best schedule loads each once.
    let trace: Vec<TraceJob> = (0..20)
        .map(|i| job(i * 10, [0, 3][i as usize % 2]))
        .collect();
    let found = search(&trace, &MODELS, (2, LIMITS), &[], (QUICK, 1));
    assert_eq!(found.loads, 2);
    // m4's ten 400 ms jobs after its 2,500 ms load.
    assert_eq!(found.makespan_ms, 2_500.0 + 10.0 * 400.0);
    assert_eq!(
        evaluate(&trace, &MODELS, &found.workers, LIMITS),
        (6_500, 2)
    );
}

#[test]
fn the_search_keeps_the_best_start_and_never_goes_under_the_lower_bound() {
    for (shape, workers, seed) in [
        (TraceShape::Bursts, 3, 8),
        (TraceShape::HotSpot, 4, 21),
        (TraceShape::LongTail, 4, 3),
    ] {
        let models = shape.models();
        let trace = shape.trace(workers, 0.25, seed);
        let sets = best_static(
            &trace,
            &models,
            workers,
            (LIMITS.memory_mib, LIMITS.max_models),
        )
        .unwrap()
        .workers;
        let from_static = static_schedule(&trace, &models, &sets, LIMITS).unwrap();
        let greedy = greedy(&trace, &models, workers, LIMITS);
        let found = search(
            &trace,
            &models,
            (workers, LIMITS),
            std::slice::from_ref(&from_static),
            (QUICK, 5),
        );
        assert_eq!(
            found,
            search(
                &trace,
                &models,
                (workers, LIMITS),
                std::slice::from_ref(&from_static),
                (QUICK, 5)
            )
        );
        let (end, loads) = evaluate(&trace, &models, &found.workers, LIMITS);
        assert_eq!((end as f64, loads), (found.makespan_ms, found.loads));
        for start in [&from_static, &greedy] {
            let start_ms = evaluate(&trace, &models, start, LIMITS).0 as f64;
            assert!(
                found.makespan_ms <= start_ms,
                "{shape:?}: {} > {start_ms}",
                found.makespan_ms
            );
        }
        let bound = lower_bound(&trace, &models, workers).value_ms;
        assert!(
            found.makespan_ms >= bound,
            "{shape:?}: {} < LB {bound}",
            found.makespan_ms
        );
        // Every job runs once, and every model of the trace is loaded.
        assert!(complete(&found.workers, trace.len(), workers));
        assert!(complete(&greedy, trace.len(), workers));
        let used = (0..models.len())
            .filter(|&m| trace.iter().any(|j| j.model == m))
            .count();
        assert!(found.loads >= used);
    }
}

#[test]
fn one_worker_runs_a_models_jobs_together_out_of_arrival_order() {
    // m1 and m4 never fit together; in arrival order one worker loads four
    // times, run together twice.
    let trace = vec![job(0, 0), job(0, 3), job(0, 0), job(0, 3)];
    assert_eq!(evaluate(&trace, &MODELS, &[vec![0, 1, 2, 3]], LIMITS).1, 4);
    let found = search(&trace, &MODELS, (1, LIMITS), &[], (QUICK, 2));
    assert_eq!(found.loads, 2, "{found:?}");
    assert_eq!(
        found.makespan_ms,
        (3_000 + 2 * 300 + 2_500 + 2 * 400) as f64
    );
    // A schedule that drops or repeats a job is not a start.
    assert!(!complete(&[vec![0, 1, 2]], 4, 1));
    assert!(!complete(&[vec![0, 1, 2, 2]], 4, 1));
    assert!(!complete(&[vec![0, 1], vec![2, 3]], 4, 1));
}

#[test]
fn the_load_log_names_each_load_when_it_starts() {
    let trace = vec![job(0, 0), job(5_000, 3)];
    let log = load_log(&trace, &MODELS, &[vec![0, 1]], LIMITS);
    // m1 loads at 0; m4 (which does not fit beside it) once m1's job ends
    // at 3,300 with preloading, when its job arrives without.
    let starts: Vec<u64> = log.iter().map(|(at, _)| *at).collect();
    assert_eq!(starts, vec![0, 3_300]);
    assert!(
        log[1].1.contains("gpu000 load m4 (loaded: [\"m1\"])"),
        "{log:?}"
    );
    let online = Rules {
        preload: false,
        ..LIMITS
    };
    assert_eq!(load_log(&trace, &MODELS, &[vec![0, 1]], online)[1].0, 5_000);
}
