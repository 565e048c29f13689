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
use gpuq_producer::{JobRequest, Producer};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const SMALL: &str = "host-a-gpu0-slot0";
const BIG: &str = "host-a-gpu1-slot0";

/// Scripted VRAM readings, learned from the fourth job on.
const SCRIPTED_GPU: &str =
    "[gpu]\nvram_source = \"scripted\"\nmin_samples = 4\nsample_ms = 10\nvram_margin_mib = 256\n";

/// A 4 GiB and a 16 GiB GPU, and `big3d` declared at 2000 MiB that peaks
/// at 6000 (each job taking `duration_ms`).
fn big3d_host(duration_ms: u64) -> ConfigBuilder {
    ConfigBuilder::new()
        .host("host-a")
        .gpu(4096)
        .gpu(16384)
        .section(SCRIPTED_GPU)
        .model("big3d", "sleep", 2000)
        .params(&format!(
            "duration_ms = {duration_ms}\nvram_resident_mib = 1000\nvram_peak_mib = 6000"
        ))
}

fn system() -> TestSystem {
    // The small worker has another model to serve once big3d leaves it.
    big3d_host(100).echo("echo").system()
}

fn submit(system: &TestSystem) -> String {
    let output = system.gpuq(&["submit", "big3d"], WAIT);
    assert!(output.status.success(), "{output:?}");
    first_line(&output)
}

fn vram_of(system: &TestSystem) -> Value {
    vram_of_model(system, "big3d")
}

fn vram_of_model(system: &TestSystem, model: &str) -> Value {
    let output = system.gpuq(&["system", "--json"], WAIT);
    let status: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    status["vram"]
        .as_array()
        .and_then(|models| models.iter().find(|m| m["model"] == model).cloned())
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
    // `gpuq system` reads the placing dispatcher's merged figures, as of its
    // last merge (every round): wait for a merge after the learning jobs.
    eventually(
        "the merged figures count the learning jobs",
        WAIT,
        || async { vram_of(&system)["measured"]["peaks"]["samples"].as_u64() >= Some(4) },
    )
    .await;
    let vram = vram_of(&system);
    assert_eq!(vram["declared_mib"], 2000, "{vram}");
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

    // The placing dispatcher keeps the merged figures (one field per
    // model) that workers and `gpuq system` read instead of every worker's
    // fields: the same histogram as the raw hash merged, as of its last merge.
    let mut redis = system.redis().await;
    let merged_key = format!("{}:model_vram_merged", system.names.namespace());
    eventually("the merged figures are written", WAIT, || {
        let mut redis = redis.clone();
        let key = merged_key.clone();
        async move {
            let json: Option<String> = redis::cmd("HGET")
                .arg(&key)
                .arg("big3d")
                .query_async(&mut redis)
                .await
                .unwrap_or(None);
            json.is_some()
        }
    })
    .await;
    let json: String = redis::cmd("HGET")
        .arg(&merged_key)
        .arg("big3d")
        .query_async(&mut redis)
        .await
        .unwrap();
    let merged: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(merged["worker"], "*", "{merged}");
    assert!(merged["peaks"]["samples"].as_u64() >= Some(4), "{merged}");
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&merged_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        ttl_ms > 0 && ttl_ms <= 10_000,
        "the merged hash expires: {ttl_ms}"
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

/// Jobs a worker gave back for want of VRAM (its `vram_give_backs` counter).
async fn give_backs(system: &TestSystem, worker: &str, model: &str) -> u64 {
    let metrics = system.worker_field(worker, "metrics").await;
    let metrics: Value = metrics
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default();
    metrics["models"][model]["vram_give_backs"]
        .as_u64()
        .unwrap_or(0)
}

async fn submit_all(producer: &Producer, jobs: Vec<JobRequest>) -> Vec<String> {
    let ids = producer.submit_many(jobs).await;
    ids.into_iter().map(|r| r.expect("submitted")).collect()
}

/// A rare input size that needs more than the small GPU has: the synthetic
/// model's peak follows its `vram_peak_mib` input, which is also its size
/// input, so each peak is a size class. The typical class (3000 MiB) fits
/// both workers and keeps the model on both; the rare one (12000 MiB) does
/// not fit the 8 GiB GPU. Once it was seen (one job, which may run out of
/// memory on the small GPU), the small worker gives jobs of that class back
/// to a VRAM tier that only the big worker consumes, and they complete there
/// while the small worker keeps serving the typical class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_class_too_big_for_a_worker_is_given_back_to_one_that_fits() {
    let system = ConfigBuilder::new()
        .host("host-a")
        .gpu(8192)
        .gpu(16384)
        .section(SCRIPTED_GPU)
        // Every worker consumes every model it may serve: both get big jobs.
        .section("[placement]\nenabled = false\n")
        .model_with(
            "gen3d",
            "sleep",
            2000,
            "vram_size_input = \"vram_peak_mib\"",
        )
        .params("duration_ms = 30\nvram_resident_mib = 1000\nvram_peak_mib = 3000")
        .system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("gen3d"), 2, WAIT)
        .await;
    let producer = Producer::connect(system.config.clone()).await.unwrap();
    let job = |peak: u64| JobRequest::new("gen3d").input("vram_peak_mib", peak);
    let wait_all = |ids: Vec<String>| {
        let system = &system;
        async move {
            let mut records = Vec::new();
            for id in ids {
                let record = system
                    .wait_for_status(&id, &["completed", "failed", "timed_out"], WAIT)
                    .await;
                records.push((id, record));
            }
            records
        }
    };

    // The typical class: 100 jobs (the rare ones stay under 10 % of all).
    for (id, record) in
        wait_all(submit_all(&producer, (0..100).map(|_| job(3000)).collect()).await).await
    {
        assert_eq!(record["status"], "completed", "{id}: {record:?}");
    }
    // The rare class, once: it runs out of memory on the small GPU or
    // completes on the big one; either way its class is now measured.
    let first = wait_all(submit_all(&producer, vec![job(12000)]).await).await;
    let (id, record) = &first[0];
    assert!(
        record["status"] == "completed" || record["error_code"] == "out_of_memory",
        "{id}: {record:?}"
    );
    eventually("the rare class is learned", WAIT, || async {
        let vram = vram_of_model(&system, "gen3d");
        vram["measured"]["classes"]["vram_peak_mib=12000"]["samples"].as_u64() >= Some(1)
    })
    .await;
    // Workers read the learned figures every heartbeat.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Two at a time, so that the small worker takes one: every one
    // completes on the big GPU, none runs out of memory.
    for _round in 0..3 {
        let ids = submit_all(&producer, vec![job(12000), job(12000)]).await;
        for (id, record) in wait_all(ids).await {
            assert_eq!(record["status"], "completed", "{id}: {record:?}");
            assert_eq!(record["worker"], BIG, "{id}: {record:?}");
        }
        if give_backs(&system, SMALL, "gen3d").await > 0 {
            break;
        }
    }
    eventually("the small worker gave a job back", WAIT, || async {
        give_backs(&system, SMALL, "gen3d").await > 0
    })
    .await;
    // The small worker still serves the model's typical jobs.
    assert!(system
        .worker_field(SMALL, "models")
        .await
        .is_some_and(|models| models.contains("gen3d")));
    let typical = wait_all(submit_all(&producer, (0..6).map(|_| job(3000)).collect()).await).await;
    assert!(
        typical.iter().all(|(_, r)| r["status"] == "completed"),
        "{typical:?}"
    );
    assert!(
        typical.iter().any(|(_, r)| r["worker"] == SMALL),
        "typical jobs still run on the small worker: {typical:?}"
    );

    // A class no worker can hold: once measured (out of memory on one
    // GPU, then the other), it fails at once with the figures instead of
    // waiting for a worker that does not exist.
    let mut refused = None;
    for _try in 0..4 {
        let (id, record) = wait_all(submit_all(&producer, vec![job(30000)]).await)
            .await
            .remove(0);
        assert_eq!(record["error_code"], "out_of_memory", "{id}: {record:?}");
        let message = record.get("error_message").cloned().unwrap_or_default();
        if message.contains("the largest worker slot has") {
            refused = Some(message);
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let message = refused.expect("a job of a class no worker fits is refused with the figures");
    assert!(message.contains("vram_peak_mib=30000"), "{message}");
}

/// A worker whose only model was measured past its budget stays up serving
/// nothing (heartbeating, one process) instead of exiting at every start
/// and being restarted in a loop; a reload (SIGHUP) re-plans with the
/// measurements, and the slot is no longer started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_only_model_outgrew_it_waits_instead_of_restarting_in_a_loop() {
    let system = big3d_host(50).system();
    let dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("big3d"), 2, WAIT)
        .await;
    let learning: Vec<String> = (0..8).map(|_| submit(&system)).collect();
    for id in &learning {
        system
            .wait_for_status(id, &["completed", "failed"], WAIT)
            .await;
    }
    eventually("the small worker drops big3d", WAIT, || async {
        system
            .worker_field(SMALL, "models")
            .await
            .is_some_and(|models| !models.contains("big3d"))
    })
    .await;
    let pid = system.worker_field(SMALL, "pid").await;
    assert!(pid.is_some());
    // Several heartbeats later: the same process, still serving nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(system.worker_field(SMALL, "pid").await, pid);
    assert!(system
        .worker_field(SMALL, "models")
        .await
        .is_some_and(|models| !models.contains("big3d")));
    // The big worker runs the model.
    let id = submit(&system);
    let record = system
        .wait_for_status(&id, &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    assert_eq!(record["worker"], BIG, "{record:?}");

    // A reload plans with the measurements too: the small GPU's slot has
    // no model left and is not started.
    dispatcher.signal(nix::sys::signal::Signal::SIGHUP);
    eventually("the reload", WAIT, || async {
        dispatcher.log().contains("config reloaded")
    })
    .await;
    let log = dispatcher.log();
    let reloaded = &log[log.find("config reloaded").expect("reloaded")..];
    eventually("the reload stops the small slot", WAIT, || async {
        let slots = system.host_slots("host-a").await;
        slots.iter().any(|slot| {
            slot["worker_id"] == SMALL
                && slot["state"] == "unused"
                && slot["models"].as_array().is_some_and(Vec::is_empty)
        })
    })
    .await;
    assert!(
        reloaded.contains(&format!(
            "{SMALL} on GPU 0: budget 3584 MiB, models: (no model fits; not started)"
        )),
        "{reloaded}"
    );
}
