use gpuq_common::metrics::{ModelMetrics, WorkerMetrics};
use gpuq_common::record::ResidentModel;
use gpuq_common::{Config, ConfigOverrides};

use super::*;

const NOW: u64 = 1_000_000;

fn config() -> Config {
    Config::parse(
        r#"
[placement.models.a]
pin = ["w2"]
[[models]]
id = "a"
feature = "a"
runtime = "sleep"
vram_mib = 1000
[models.params]
load_ms = 1500
duration_ms = 300
[[models]]
id = "b"
feature = "b"
runtime = "echo"
vram_mib = 2000
"#,
        None,
        &ConfigOverrides::default(),
    )
    .unwrap()
}

fn worker(id: &str) -> WorkerRecord {
    WorkerRecord {
        worker_id: id.into(),
        host: "h1".into(),
        gpu: "0".into(),
        pid: 1,
        state: "busy".into(),
        vram_budget_mib: 8000,
        models: vec!["a".into(), "b".into()],
        consuming: Vec::new(),
        waiting: BTreeMap::new(),
        current_jobs: Vec::new(),
        jobs_done: 0,
        jobs_failed: 0,
        resident_models: Vec::new(),
        model_loads: 0,
        model_unloads: 0,
        peak_resident_mib: 0,
        metrics: WorkerMetrics::default(),
        amqp: Default::default(),
        started_ms: 0,
        heartbeat_ms: NOW,
    }
}

fn measured(loads: u64, load_s: f64, runs: u64, run_s: f64, done: u64) -> ModelMetrics {
    let mut metrics = ModelMetrics {
        loads,
        load_seconds_sum: load_s,
        ..ModelMetrics::default()
    };
    metrics.run.count = runs;
    metrics.run.sum_s = run_s;
    metrics.jobs.insert("completed".into(), done);
    metrics
}

#[test]
fn measured_timings_average_over_every_worker_and_skip_models_never_run() {
    let mut w1 = worker("w1");
    w1.metrics
        .models
        .insert("a".into(), measured(1, 2.0, 4, 2.0, 4));
    let mut w2 = worker("w2");
    w2.metrics
        .models
        .insert("a".into(), measured(1, 4.0, 4, 6.0, 4));
    w2.metrics
        .models
        .insert("b".into(), measured(1, 1.0, 0, 0.0, 0));
    let timings = measured_timings(&[w1, w2]);
    assert_eq!(
        timings.get("a"),
        Some(&ModelTimings {
            load_ms: 3000,
            run_ms: 1000
        })
    );
    assert!(
        !timings.contains_key("b"),
        "a model that never ran has no run time"
    );
}

#[test]
fn the_snapshot_counts_backlogs_running_jobs_pins_and_declared_timings() {
    let config = config();
    let mut w1 = worker("w1");
    w1.waiting.insert("a".into(), 2);
    w1.resident_models.push(ResidentModel {
        model: "a".into(),
        vram_mib: 1000,
        in_use: 1,
        loaded_at_ms: NOW - 5000,
        load_ms: 1500,
        jobs: 3,
    });
    let w2 = worker("w2");
    let ready = BTreeMap::from([("a".to_owned(), 5), ("b".to_owned(), 0)]);
    let mut history = History::default();
    let snapshot = snapshot(
        &config,
        NOW,
        &ready,
        &[w1, w2],
        &HashMap::new(),
        &mut history,
    );

    let a = snapshot.models.iter().find(|m| m.id == "a").unwrap();
    assert_eq!(
        (a.waiting, a.running),
        (7, 1),
        "5 ready + 2 held, 1 running"
    );
    assert_eq!(
        (a.load_ms, a.run_ms),
        (1500, 300),
        "the sleep model's declared timings"
    );
    assert_eq!(a.unserved_since_ms, None, "it has a running job");
    let b = snapshot.models.iter().find(|m| m.id == "b").unwrap();
    assert_eq!((b.load_ms, b.run_ms), (DEFAULT_LOAD_MS, DEFAULT_RUN_MS));

    let w1 = snapshot.workers.iter().find(|w| w.id == "w1").unwrap();
    assert_eq!(w1.resident, vec![("a".to_owned(), NOW - 5000)]);
    assert_eq!(w1.running, vec!["a".to_owned()]);
    assert_eq!(w1.budget_mib, Some(8000));
    let w2 = snapshot.workers.iter().find(|w| w.id == "w2").unwrap();
    assert_eq!(w2.pinned, vec!["a".to_owned()]);
}

#[test]
fn arrivals_are_estimated_from_one_round_to_the_next() {
    let config = config();
    let mut history = History::default();
    let ready = |n| BTreeMap::from([("a".to_owned(), n), ("b".to_owned(), 0)]);
    snapshot(&config, NOW, &ready(0), &[], &HashMap::new(), &mut history);
    // 10 jobs arrived in one second: the smoothed rate moves half way to 10/s.
    let next = snapshot(
        &config,
        NOW + 1000,
        &ready(10),
        &[],
        &HashMap::new(),
        &mut history,
    );
    let a = next.models.iter().find(|m| m.id == "a").unwrap();
    assert!(
        (a.arrivals_per_s - 5.0).abs() < 1e-9,
        "{}",
        a.arrivals_per_s
    );
    assert_eq!(
        a.unserved_since_ms,
        Some(NOW + 1000),
        "a backlog nobody runs"
    );
}

#[test]
fn assignments_report_only_changes_and_keep_when_a_main_model_began() {
    let mut history = History::default();
    let mut decision = Decision::default();
    decision
        .assignments
        .insert("w1".into(), vec!["a".into(), "b".into()]);
    decision.main.insert("w1".into(), "a".into());
    let (all, changed) = assignments(&decision, "host", NOW, &mut history);
    assert_eq!(all.len(), 1);
    assert_eq!(changed, vec!["w1".to_owned()]);
    assert_eq!(all[0].1.by, "host");

    let (_, changed) = assignments(&decision, "host", NOW + 500, &mut history);
    assert!(
        changed.is_empty(),
        "the same assignment is not announced again"
    );
    assert_eq!(
        history.published["w1"].1,
        Some(("a".to_owned(), NOW)),
        "the main model keeps the time it began"
    );

    decision.assignments.clear();
    decision.main.clear();
    assignments(&decision, "host", NOW + 1000, &mut history);
    assert!(history.published.is_empty(), "workers gone are forgotten");
}

#[test]
fn a_round_places_by_learned_vram_measures_timings_and_keeps_them() {
    let config = config();
    let mut w1 = worker("w1");
    w1.metrics
        .models
        .insert("a".into(), measured(2, 4.0, 10, 5.0, 10));
    let ready = BTreeMap::from([("a".to_owned(), 3), ("b".to_owned(), 0)]);
    // Model b measured over 25 jobs at 3 GiB: admitted at 3 GiB + the margin.
    let mut vram = gpuq_common::vram::ModelVram::new("b", "*", 2000);
    for _ in 0..25 {
        vram.observe("any", 3072, NOW);
    }
    let learned = BTreeMap::from([("b".to_owned(), vram)]);
    let mut history = History::default();
    let round = round(&config, "h1", NOW, &ready, &[w1], &learned, &mut history);
    let b = round.snapshot.models.iter().find(|m| m.id == "b").unwrap();
    assert_eq!(b.vram_mib, 3072 + config.gpu.vram_margin_mib);
    let a = round.snapshot.models.iter().find(|m| m.id == "a").unwrap();
    assert_eq!((a.load_ms, a.run_ms, a.vram_mib), (2000, 500, 1000));
    assert_eq!(
        round.timings.get("a"),
        Some(&ModelTimings {
            load_ms: 2000,
            run_ms: 500
        })
    );
    // The timings are kept for rounds in which no worker reports any.
    assert_eq!(history.stored_timings.get("a"), round.timings.get("a"));
    assert_eq!(round.decision.main.get("w1").map(String::as_str), Some("a"));
    assert_eq!(round.changed, vec!["w1".to_owned()]);
    assert_eq!(round.assignments[0].1.main.as_deref(), Some("a"));
    assert_eq!(round.assignments[0].1.by, "h1");
}
