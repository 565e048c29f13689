//! Measured VRAM end to end, without a GPU: the synthetic `sleep` model
//! reports through the scripted VRAM source (`gpu.vram_source =
//! "scripted"`, named as such) a peak of 6000 MiB while it declares 2000.
//! On a host with a 4 GiB and a 16 GiB GPU, the workers learn the real
//! figure from the first jobs (a job that ran out of memory on the small
//! GPU counts too); then the small worker stops serving the model,
//! placement sends it only to the big one, and no job runs out of memory.

use std::time::Duration;

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::{eventually, first_line, TestSystem};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const SMALL: &str = "host-a-gpu0-slot0";
const BIG: &str = "host-a-gpu1-slot0";

fn system() -> TestSystem {
    ConfigBuilder::new()
        .host("host-a")
        .gpu(4096)
        .gpu(16384)
        .section(
            "[gpu]\nvram_source = \"scripted\"\nmin_samples = 4\nsample_ms = 10\nvram_margin_mib = 256\n",
        )
        .model("big3d", "sleep", 2000)
        .params("duration_ms = 100\nvram_resident_mib = 1000\nvram_peak_mib = 6000")
        // The small worker has another model to serve once big3d leaves it.
        .echo("echo")
        .system()
}

fn submit(system: &TestSystem) -> String {
    let output = system.gpuq(&["submit", "big3d"], WAIT);
    assert!(output.status.success(), "{output:?}");
    first_line(&output)
}

fn vram_of(system: &TestSystem) -> Value {
    let output = system.gpuq(&["system", "--json"], WAIT);
    let status: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    status["vram"]
        .as_array()
        .and_then(|models| models.iter().find(|m| m["model"] == "big3d").cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_measured_above_its_declaration_is_placed_only_where_it_fits() {
    let system = system();
    let _dispatcher = system.dispatcher(&[]);
    for worker in [SMALL, BIG] {
        eventually(&format!("{worker} serves big3d"), WAIT, || async {
            system
                .worker_field(worker, "models")
                .await
                .is_some_and(|models| models.contains("big3d"))
        })
        .await;
    }
    // Learning: the declaration (2000 MiB) fits both workers.
    let learning: Vec<String> = (0..8).map(|_| submit(&system)).collect();
    for id in &learning {
        system
            .wait_for_status(id, &["completed", "failed"], WAIT)
            .await;
    }
    let vram = vram_of(&system);
    assert_eq!(vram["declared_mib"], 2000, "{vram}");
    assert!(
        vram["measured"]["peaks"]["samples"].as_u64() >= Some(4),
        "{vram}"
    );
    // Each job's own peak: the 6000 MiB the model reported (or more, for
    // one that ran out of memory on the small GPU).
    assert!(
        vram["measured"]["peaks"]["p50_mib"].as_u64() >= Some(6000),
        "{vram}"
    );
    assert!(vram["admitted_mib"].as_u64() >= Some(6256), "{vram}");
    assert_eq!(vram["over_declared"], true, "{vram}");
    let text = system.gpuq(&["system"], WAIT);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("over 120 % of its declared 2000 MiB"),
        "{text:?}"
    );

    // The small worker restarts without the model; the big one keeps it.
    eventually("the small worker drops big3d", WAIT, || async {
        system
            .worker_field(SMALL, "models")
            .await
            .is_some_and(|models| !models.contains("big3d"))
    })
    .await;
    assert!(system
        .worker_field(BIG, "models")
        .await
        .is_some_and(|models| models.contains("big3d")));

    // From now on every job runs on the big GPU, and none runs out of memory.
    let placed: Vec<String> = (0..10).map(|_| submit(&system)).collect();
    for id in &placed {
        let record = system
            .wait_for_status(id, &["completed", "failed"], WAIT)
            .await;
        assert_eq!(record["status"], "completed", "{id}: {record:?}");
        assert_eq!(record["worker"], BIG, "{id}: {record:?}");
    }
}

/// Two models declared at 5000 MiB each do not fit a 7680 MiB worker
/// together, so each job of the other evicts one; measured at 2000 MiB
/// (packed at 2256 with the margin), they then stay loaded side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_measured_below_their_declarations_stay_loaded_side_by_side() {
    const WORKER: &str = "host-a-gpu0-slot0";
    let params = "duration_ms = 20\nvram_resident_mib = 1500\nvram_peak_mib = 2000";
    let system = ConfigBuilder::new()
        .host("host-a")
        .gpu(8192)
        .section(
            "[gpu]\nvram_source = \"scripted\"\nmin_samples = 3\nsample_ms = 10\nvram_margin_mib = 256\n",
        )
        .model("a", "sleep", 5000)
        .params(params)
        .model("b", "sleep", 5000)
        .params(params)
        .system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("b"), 1, WAIT)
        .await;
    let run = |model: &'static str| {
        let output = system.gpuq(&["submit", model, "--wait"], WAIT);
        assert!(output.status.success(), "{model}: {output:?}");
    };
    let loads = || async {
        let loads = system.worker_field(WORKER, "model_loads").await;
        loads.and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
    };
    // Before min_samples, by declaration: every switch is a load.
    for _ in 0..2 {
        run("a");
        run("b");
    }
    eventually("four loads recorded", WAIT, || async { loads().await >= 4 }).await;
    assert_eq!(loads().await, 4, "each switch loaded");
    run("a");
    run("b");
    eventually("both measured", WAIT, || async {
        let output = system.gpuq(&["system", "--json"], WAIT);
        let status: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        status["vram"].as_array().is_some_and(|models| {
            models
                .iter()
                .all(|m| m["measured"]["peaks"]["samples"].as_u64() >= Some(3))
        })
    })
    .await;
    // The worker reads the learned figures every heartbeat interval.
    tokio::time::sleep(Duration::from_secs(1)).await;
    run("a");
    run("b");
    let before = loads().await;
    for _ in 0..3 {
        run("a");
        run("b");
    }
    assert_eq!(loads().await, before, "no load once both fit side by side");
    let resident = system
        .worker_field(WORKER, "resident_models")
        .await
        .unwrap_or_default();
    assert!(
        resident.contains("\"a\"") && resident.contains("\"b\""),
        "{resident}"
    );
    // What the measurements freed: 2 × (5000 declared − 2256 packed).
    let text = system.gpuq(&["system"], WAIT);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("free 5488 MiB"), "{text}");
}
