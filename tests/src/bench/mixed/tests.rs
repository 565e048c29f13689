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
        let text = system_config(mode, &MODELS, 3, true);
        Config::parse(&text, None, &ConfigOverrides::default()).unwrap();
        assert_eq!(text.matches("[[dispatcher.gpus]]").count(), 3);
        assert_eq!(text.matches("runtime = \"sleep\"").count(), MODELS.len());
        let enabled = format!("[placement]\nenabled = {}\n", mode == Mode::Placement);
        assert!(text.contains(&enabled), "{text}");
    }
}
