use super::*;
use crate::placement_decision::ModelState;
use gpuq_common::{Config, ConfigOverrides};

const NOW: u64 = 1_000_000;

fn model(id: &str, waiting: u64, running: u64, run_ms: u64) -> ModelState {
    ModelState {
        id: id.into(),
        vram_mib: 1_000,
        packed_mib: 1_000,
        load_ms: 5_000,
        run_ms,
        waiting,
        running,
        arrivals_per_s: 0.0,
        unserved_since_ms: None,
        min_replicas: 0,
        max_replicas: 0,
    }
}

fn decision(assignments: &[(&str, &[&str])]) -> Decision {
    Decision {
        assignments: assignments
            .iter()
            .map(|(w, models)| {
                (
                    w.to_string(),
                    models.iter().map(|m| m.to_string()).collect(),
                )
            })
            .collect(),
        ..Decision::default()
    }
}

#[test]
fn backlog_is_in_gpu_seconds_and_drains_over_the_workers_consuming_it() {
    let snapshot = Snapshot {
        now_ms: NOW,
        // 100 jobs of 2 minutes against 100 of 20 ms: the same count, not the same work.
        models: vec![
            model("mesh", 100, 2, 120_000),
            model("tiny", 100, 0, 20),
            model("idle", 0, 0, 1_000),
        ],
        workers: vec![],
    };
    let decision = decision(&[
        ("w1", &["mesh", "tiny"]),
        ("w2", &["mesh"]),
        ("w3", &["idle"]),
    ]);
    let oldest = BTreeMap::from([("mesh".to_string(), NOW - 90_000)]);
    let fleet = compute(&snapshot, &decision, &oldest, None);
    let mesh = &fleet.models["mesh"];
    assert_eq!(mesh.jobs, 100);
    assert_eq!(mesh.seconds, 12_000.0);
    assert_eq!(mesh.workers, 2);
    assert_eq!(mesh.drain_seconds, 6_000.0);
    assert_eq!(mesh.oldest_wait_seconds, 90.0);
    let tiny = &fleet.models["tiny"];
    assert!((tiny.seconds - 2.0).abs() < 1e-9, "{tiny:?}");
    assert_eq!(tiny.workers, 1);
    let idle = &fleet.models["idle"];
    assert_eq!(
        (idle.jobs, idle.drain_seconds, idle.oldest_wait_seconds),
        (0, 0.0, 0.0)
    );
    // Queued plus running: 102 × 120 s + 100 × 0.02 s.
    assert!((fleet.gpu_seconds_wanted - (102.0 * 120.0 + 2.0)).abs() < 1e-6);
}

#[test]
fn a_model_with_jobs_and_no_worker_shows_the_sentinel() {
    let snapshot = Snapshot {
        now_ms: NOW,
        models: vec![model("orphan", 3, 0, 1_000)],
        workers: vec![],
    };
    let fleet = compute(&snapshot, &Decision::default(), &BTreeMap::new(), None);
    assert_eq!(fleet.models["orphan"].drain_seconds, NO_WORKER_DRAIN_S);
    assert_eq!(fleet.models["orphan"].workers, 0);
}

#[test]
fn oldest_jobs_map_to_their_pinned_or_default_model() {
    let config = Config::parse(
        r#"
[[models]]
id = "a1"
feature = "a"
runtime = "echo"
vram_mib = 100
[[models]]
id = "a2"
feature = "a"
runtime = "echo"
vram_mib = 100
[[models]]
id = "b1"
feature = "b"
runtime = "echo"
vram_mib = 100
"#,
        None,
        &ConfigOverrides::default(),
    )
    .unwrap();
    let registry = config.registry();
    let oldest = vec![
        (10, "a".to_string(), None),
        (20, "a".to_string(), Some("a2".to_string())),
        (30, "a".to_string(), Some(String::new())),
        (40, "unknown".to_string(), None),
    ];
    let (by_model, cut_at) = oldest_by_model(registry, &oldest);
    assert_eq!(
        by_model,
        BTreeMap::from([("a1".into(), 10), ("a2".into(), 20)])
    );
    assert_eq!(
        cut_at, None,
        "fewer than the sample: every queued job was read"
    );

    // A read cut at the sample: a model with waiting jobs none of which was
    // read gets the last one read's age (its oldest is no older).
    let full: Vec<_> = (0..OLDEST_SAMPLE as u64)
        .map(|i| (100 + i, "a".to_string(), None))
        .collect();
    let (by_model, cut_at) = oldest_by_model(registry, &full);
    assert_eq!(cut_at, Some(100 + OLDEST_SAMPLE as u64 - 1));
    let snapshot = Snapshot {
        now_ms: 100_000,
        models: vec![model("a1", 600, 0, 100), model("b1", 4, 0, 100)],
        workers: vec![],
    };
    let fleet = compute(&snapshot, &Decision::default(), &by_model, cut_at);
    assert_eq!(
        fleet.models["a1"].oldest_wait_seconds,
        (100_000.0 - 100.0) / 1000.0
    );
    let b1 = (100_000 - (100 + OLDEST_SAMPLE as u64 - 1)) as f64 / 1000.0;
    assert_eq!(fleet.models["b1"].oldest_wait_seconds, b1);
}

#[test]
fn gauges_render_with_a_model_label() {
    let mut fleet = FleetBacklog::default();
    fleet.models.insert(
        "mesh".into(),
        ModelBacklog {
            jobs: 4,
            seconds: 480.0,
            workers: 0,
            drain_seconds: NO_WORKER_DRAIN_S,
            oldest_wait_seconds: 12.5,
        },
    );
    fleet.gpu_seconds_wanted = 600.0;
    let mut buffer = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &families(&fleet),
        &mut buffer,
    )
    .unwrap();
    let text = String::from_utf8(buffer).unwrap();
    for line in [
        r#"gpuq_model_backlog_jobs{model="mesh"} 4"#,
        r#"gpuq_model_backlog_seconds{model="mesh"} 480"#,
        r#"gpuq_model_drain_seconds{model="mesh"} 1000000000"#,
        r#"gpuq_model_oldest_wait_seconds{model="mesh"} 12.5"#,
        "gpuq_gpu_seconds_wanted 600",
    ] {
        assert!(text.contains(line), "{line} not in {text}");
    }
}
