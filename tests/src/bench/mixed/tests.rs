use super::*;
use gpuq_common::metrics::WorkerMetrics;
use gpuq_common::{Config, ConfigOverrides};

#[test]
fn the_trace_is_deterministic_for_a_seed_and_sums_to_the_intended_work() {
    for (workers, scale) in [(4, 1.0), (4, 0.25), (2, 0.5)] {
        let a = generate_trace(&MODELS, workers, scale, 8);
        assert_eq!(a, generate_trace(&MODELS, workers, scale, 8));
        assert_ne!(a, generate_trace(&MODELS, workers, scale, 9));
        let work: u64 = a.iter().map(|j| j.duration_ms).sum();
        // Each model's share is rounded to whole jobs: off by at most half a job each.
        let slack: u64 = MODELS.iter().map(|m| m.duration_ms / 2 + 1).sum();
        let intended = intended_work_ms(workers, scale);
        assert!(
            (work as f64 - intended).abs() <= slack as f64,
            "work {work} ms, intended {intended} ms"
        );
        assert_eq!(a[0].arrival_ms, 0);
        assert!(a.windows(2).all(|w| w[0].arrival_ms <= w[1].arrival_ms));
        let window = ARRIVAL_WINDOW_MS * scale;
        // Bursts start within the window; their tails are short.
        assert!(a.last().unwrap().arrival_ms as f64 <= window + 30_000.0);
        for (index, model) in MODELS.iter().enumerate() {
            assert!(a
                .iter()
                .any(|j| j.model == index && j.duration_ms == model.duration_ms));
        }
    }
}

#[test]
fn a_model_gets_two_to_four_bursts() {
    let trace = generate_trace(&MODELS, 4, 1.0, 8);
    for index in 0..MODELS.len() {
        let arrivals: Vec<u64> = trace
            .iter()
            .filter(|j| j.model == index)
            .map(|j| j.arrival_ms)
            .collect();
        // Gaps of more than 3 s separate bursts (gaps within one average under 0.1 s).
        let breaks = arrivals.windows(2).filter(|w| w[1] - w[0] > 3_000).count();
        assert!(breaks < 4, "model {index}: {breaks} breaks");
    }
}

fn model(id: &'static str, load_ms: u64) -> SyntheticModel {
    SyntheticModel {
        id,
        vram_mib: 1,
        load_ms,
        duration_ms: 0,
    }
}

fn job(arrival_ms: u64, model: usize, duration_ms: u64) -> TraceJob {
    TraceJob {
        arrival_ms,
        model,
        duration_ms,
    }
}

#[test]
fn the_lower_bound_takes_the_largest_of_its_three_terms() {
    let models = [model("a", 100), model("b", 200), model("c", 5_000)];
    // Model c never appears: its load does not count.
    let trace = [
        job(0, 0, 1000),
        job(0, 1, 1000),
        job(500, 0, 1000),
        job(5000, 1, 300),
    ];
    let bound = lower_bound(&trace, &models, 2);
    assert_eq!(bound.work_ms, (3300.0 + 300.0) / 2.0);
    // t = 0: 1650; t = 500: 500 + 650; t = 5000: 5000 + 150.
    assert_eq!(bound.tail_ms, 5150.0);
    assert_eq!(bound.last_job_ms, 5300.0);
    assert_eq!(bound.value_ms, 5300.0);

    // Everything at once: the work term wins.
    let burst = [job(0, 0, 1000), job(0, 0, 1000), job(0, 1, 1000)];
    let bound = lower_bound(&burst, &models, 2);
    assert_eq!(bound.work_ms, 1650.0);
    assert_eq!(bound.tail_ms, 1500.0);
    assert_eq!(bound.last_job_ms, 1000.0);
    assert_eq!(bound.value_ms, 1650.0);

    // A late burst: the tail term wins.
    let late = [
        job(0, 0, 100),
        job(2000, 1, 1000),
        job(2000, 1, 1000),
        job(2000, 1, 1000),
    ];
    let bound = lower_bound(&late, &models, 2);
    assert_eq!(bound.tail_ms, 3500.0);
    assert_eq!(bound.value_ms, 3500.0);

    assert_eq!(
        lower_bound_issue(&trace, &models, &[2, 1, 0], 2),
        (3300.0 + 2.0 * 100.0 + 200.0) / 2.0
    );
}

#[test]
fn figures_follow_their_definitions() {
    let models = [model("a", 100), model("b", 200)];
    let outcome = |model, status: &str, created, started, finished| JobOutcome {
        model,
        duration_ms: 100,
        status: status.to_owned(),
        created_ms: Some(created),
        started_ms: started,
        finished_ms: finished,
    };
    let jobs = [
        outcome(0, "completed", 1_000, Some(1_000), Some(1_200)),
        outcome(0, "completed", 1_000, Some(2_000), Some(2_100)),
        outcome(1, "failed", 1_500, Some(1_600), Some(3_000)),
        outcome(1, "timed_out", 1_500, None, Some(2_500)),
    ];
    let mut metrics = WorkerMetrics::default();
    let a = metrics.models.entry("a".into()).or_default();
    a.loads = 2;
    a.load_seconds_sum = 0.25;
    a.jobs.insert("completed".into(), 2);
    let figures = figures(Mode::Naive, &models, 2, &jobs, &[metrics], 1_000.0);
    assert_eq!(figures.makespan_s, 2.0);
    assert_eq!(figures.makespan_over_lower_bound, 2.0);
    assert_eq!(figures.busy_fraction, (200.0 + 100.0 + 1400.0) / 4000.0);
    assert_eq!(figures.work_fraction, 200.0 / 4000.0);
    assert_eq!((figures.completed, figures.failed), (2, 2));
    assert_eq!((figures.loads, figures.load_s), (2, 0.25));
    assert_eq!(figures.models["a"].mean_wait_s, 0.5);
    assert_eq!(figures.models["a"].p95_wait_s, 1.0);
    assert_eq!(figures.models["a"].workers_ran, 1);
    assert_eq!(figures.models["b"].workers_ran, 0);
    assert_eq!(figures.worst_p95_model, "a");
}

#[test]
fn every_config_is_valid_and_declares_the_workers_and_models() {
    for mode in [Mode::Naive, Mode::Placement] {
        let text = system_config(mode, &MODELS, 3, true, None);
        Config::parse(&text, None, &ConfigOverrides::default()).unwrap();
        assert_eq!(text.matches("[[dispatcher.gpus]]").count(), 3);
        assert_eq!(text.matches("runtime = \"sleep\"").count(), MODELS.len());
        let enabled = format!("[placement]\nenabled = {}\n", mode == Mode::Placement);
        assert!(text.contains(&enabled), "{text}");
    }
}

#[test]
fn the_best_static_assignment_beats_every_fitting_one_and_serves_every_model() {
    use super::best_static::{best_static, fitting_sets, simulate};
    let limits = (GPU_MEMORY_MIB, 2);
    // Every set fits 16 GiB with at most two models; m1 + m4 (17000) does not.
    let sets = fitting_sets(&MODELS, GPU_MEMORY_MIB, 2);
    assert_eq!(sets.len(), 5 + 9);
    assert!(!sets.contains(&vec![0, 3]));
    let trace = generate_trace(&MODELS, 3, 0.1, 8);
    let best = best_static(&trace, &MODELS, 3, limits).unwrap();
    assert_eq!(best.workers.len(), 3);
    for m in 0..MODELS.len() {
        assert!(best.workers.iter().any(|set| set.contains(&m)));
    }
    assert!(best.workers.iter().all(|set| !set.is_empty()));
    // No assignment of fitting sets is better (the local search may only improve).
    for a in &sets {
        for b in &sets {
            for c in &sets {
                let makespan =
                    simulate(&trace, &MODELS, &[a.clone(), b.clone(), c.clone()], limits);
                assert!(best.simulated_ms <= makespan);
            }
        }
    }
    assert_eq!(
        simulate(&trace, &MODELS, &best.workers, limits),
        best.simulated_ms
    );
}

#[test]
fn the_simulation_pays_loads_and_swaps_least_recently_used_first() {
    use super::best_static::simulate;
    let limits = (GPU_MEMORY_MIB, 2);
    let job = |arrival_ms, model| TraceJob {
        arrival_ms,
        model,
        duration_ms: MODELS[model].duration_ms,
    };
    let trace = [job(0, 0), job(0, 0), job(10_000, 2)];
    // One worker with m1 and m3: m1 loads (3000), two jobs, then m3 loads (1000).
    assert_eq!(simulate(&trace, &MODELS, &[vec![0, 2]], limits), 11_150.0);
    // Two workers with m1: the two jobs run side by side, each after a load.
    assert_eq!(
        simulate(&trace[..2], &MODELS, &[vec![0], vec![0]], limits),
        3_300.0
    );
    // A model nobody serves cannot finish.
    assert!(simulate(&trace, &MODELS, &[vec![0]], limits).is_infinite());
    // m1 and m4 do not fit together: m1, m4, m1 loads three times.
    let swaps = [job(0, 0), job(0, 3), job(0, 0)];
    assert_eq!(
        simulate(&swaps, &MODELS, &[vec![0, 3]], limits),
        (3000 + 300 + 2500 + 400 + 3000 + 300) as f64
    );
}

#[test]
fn the_other_trace_shapes_are_seeded_and_shaped_as_documented() {
    use super::shapes::{TraceShape, HOT_SEGMENT_MS, RARE_MODELS};
    let hot = TraceShape::HotSpot.trace(4, 0.25, 3);
    assert_eq!(hot, TraceShape::HotSpot.trace(4, 0.25, 3));
    // In each segment, the hot model (segment k: model k) has most arrivals.
    let segment = (HOT_SEGMENT_MS * 0.25) as u64;
    for k in 0..MODELS.len() as u64 {
        let in_segment: Vec<_> = hot.iter().filter(|j| j.arrival_ms / segment == k).collect();
        let mine = in_segment.iter().filter(|j| j.model as u64 == k).count();
        assert!(
            mine * 2 > in_segment.len(),
            "segment {k}: {mine} of {}",
            in_segment.len()
        );
    }
    let tail = TraceShape::LongTail.trace(4, 0.25, 3);
    let models = TraceShape::LongTail.models();
    assert_eq!(models.len(), MODELS.len() + RARE_MODELS.len());
    for (index, rare) in models.iter().enumerate().skip(MODELS.len()) {
        let jobs = tail.iter().filter(|j| j.model == index).count();
        assert!((1..=3).contains(&jobs), "{}: {jobs}", rare.id);
    }
    // The long tail cannot be pinned within memory (17 models, 4 × 2):
    // the search starts from a spread and swaps.
    let best = super::best_static::best_static(&tail, &models, 4, (GPU_MEMORY_MIB, 2)).unwrap();
    assert!(best.simulated_ms.is_finite());
    for m in 0..models.len() {
        assert!(best.workers.iter().any(|set| set.contains(&m)));
    }
}
