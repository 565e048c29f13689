//! Model runtimes through the whole path: the Python example adapter, every
//! adapter failure (crash on load, crash mid-job, hang, garbage), and model
//! residency with synthetic models of declared sizes. Replies with the wrong
//! request id are in `adapter_protocol.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::jobs::{result, submit};
use gpuq_integration_tests::TestSystem;

const WAIT: Duration = Duration::from_secs(60);

fn example_adapter() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../adapters/python/example_adapter.py")
        .canonicalize()
        .unwrap()
}

/// The example adapter twice: `toy_text_to_mesh` (loads in 0.1 s; job
/// timeouts of 30 s, 1 s at least) and `toy_broken_on_load`, which crashes
/// as it loads.
fn adapter_system() -> TestSystem {
    let script = example_adapter();
    ConfigBuilder::new()
        .section("[jobs]\nretry_backoff_s = 1")
        .host("host-a")
        .gpu(16384)
        .adapter(
            "toy_text_to_mesh",
            "text_to_mesh",
            512,
            &script,
            "load_seconds = 0.1",
        )
        .model_keys("timeout_s = 30\nmin_timeout_s = 1")
        .adapter(
            "toy_broken_on_load",
            "broken_mesh",
            512,
            &script,
            "crash_on_load = true",
        )
        .system()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_adapter_runs_jobs_and_survives_each_failure() {
    let system = adapter_system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("toy_text_to_mesh"), 1, WAIT)
        .await;

    // The whole path: an OBJ mesh comes back as bytes ({"$bytes": base64} in JSON).
    let record = submit(
        &system,
        "text_to_mesh",
        "mesh-1",
        r#", "inputs": {"prompt": "a crate", "size": 2}"#,
    )
    .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    assert_eq!(record["progress"], "1");
    let outputs = result(&record);
    assert_eq!(outputs["vertex_count"], 8);
    let mesh = base64::engine::general_purpose::STANDARD
        .decode(outputs["mesh"]["$bytes"].as_str().unwrap())
        .unwrap();
    let mesh = String::from_utf8(mesh).unwrap();
    assert!(
        mesh.starts_with("# a crate\nv -1 -1 -1")
            || mesh.starts_with("# a crate\nv -1.0 -1.0 -1.0"),
        "{mesh}"
    );
    let first_pid = outputs["pid"].as_u64().unwrap();

    // An input error reported by the adapter keeps the same process.
    let record = submit(
        &system,
        "text_to_mesh",
        "mesh-bad-input",
        r#", "inputs": {"size": 1}"#,
    )
    .await;
    assert_eq!(
        (record["status"].as_str(), record["error_code"].as_str()),
        ("failed", "invalid_input"),
        "{record:?}"
    );

    // Crash mid-job: retried with back-off (a fresh child each time), then given
    // up after jobs.max_attempts with the crash as the reason.
    let record = submit(
        &system,
        "text_to_mesh",
        "mesh-crash",
        r#", "inputs": {"fault": "crash"}"#,
    )
    .await;
    assert_eq!(
        (record["status"].as_str(), record["error_code"].as_str()),
        ("failed", "too_many_attempts"),
        "{record:?}"
    );
    assert_eq!(record["attempts"], "3");
    assert!(
        record["error_message"].contains("model_crashed: the adapter exited while running the job"),
        "{record:?}"
    );
    let record = submit(
        &system,
        "text_to_mesh",
        "mesh-after-crash",
        r#", "inputs": {"prompt": "x"}"#,
    )
    .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    let second_pid = result(&record)["pid"].as_u64().unwrap();
    assert_ne!(first_pid, second_pid, "the adapter was restarted");

    // Garbage on stdout: clear error, killed, fresh child.
    let record = submit(
        &system,
        "text_to_mesh",
        "mesh-garbage",
        r#", "inputs": {"fault": "garbage"}"#,
    )
    .await;
    assert_eq!(
        (record["status"].as_str(), record["error_code"].as_str()),
        ("failed", "model_failed"),
        "{record:?}"
    );
    assert!(
        record["error_message"].contains("invalid output"),
        "{record:?}"
    );

    // Hang past the job's timeout: timed out, killed, fresh child.
    let record = submit(
        &system,
        "text_to_mesh",
        "mesh-hang",
        r#", "timeout_s": 2, "inputs": {"fault": "hang"}"#,
    )
    .await;
    assert_eq!(
        (record["status"].as_str(), record["error_code"].as_str()),
        ("timed_out", "timeout"),
        "{record:?}"
    );
    let record = submit(
        &system,
        "text_to_mesh",
        "mesh-after-hang",
        r#", "inputs": {"prompt": "y"}"#,
    )
    .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    let third_pid = result(&record)["pid"].as_u64().unwrap();
    assert!(third_pid != second_pid && third_pid != first_pid);

    // Cancel while running: the adapter process is killed, the worker lives on.
    let body =
        br#"{"job_id": "mesh-cancel", "feature": "text_to_mesh", "inputs": {"fault": "hang"}}"#;
    system
        .publish_raw("text_to_mesh", body, Some("application/json"), None)
        .await;
    system
        .wait_for_status("mesh-cancel", &["processing"], WAIT)
        .await;
    let output = system.gpuq(&["cancel", "mesh-cancel"], WAIT);
    assert!(output.status.success(), "{output:?}");
    let record = system
        .wait_for_status(
            "mesh-cancel",
            &["cancelled", "completed", "failed", "timed_out"],
            WAIT,
        )
        .await;
    assert_eq!(record["status"], "cancelled", "{record:?}");
    let record = submit(
        &system,
        "text_to_mesh",
        "mesh-after-cancel",
        r#", "inputs": {"prompt": "w"}"#,
    )
    .await;
    assert_eq!(record["status"], "completed", "{record:?}");

    // Crash on load: retried, then a clear load error; the worker still serves the other model.
    let record = submit(&system, "broken_mesh", "broken-1", r#", "inputs": {}"#).await;
    assert_eq!(
        (record["status"].as_str(), record["error_code"].as_str()),
        ("failed", "too_many_attempts"),
        "{record:?}"
    );
    assert!(
        record["error_message"].contains("model_load_failed: model 'toy_broken_on_load' cannot be loaded: adapter exited while loading"),
        "{record:?}"
    );
    let record = submit(
        &system,
        "text_to_mesh",
        "mesh-last",
        r#", "inputs": {"prompt": "z"}"#,
    )
    .await;
    assert_eq!(record["status"], "completed", "{record:?}");

    // One worker process did all of this.
    let slots = system.host_slots("host-a").await;
    assert_eq!(slots[0]["restarts"], 0, "{slots:?}");
    // No adapter process is left behind once the system stops (checked by pid below).
    drop(_dispatcher);
    let alive = std::process::Command::new("kill")
        .arg("-0")
        .arg(third_pid.to_string())
        .status()
        .unwrap();
    assert!(
        !alive.success(),
        "adapter pid {third_pid} outlived its worker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residency_evicts_the_least_recently_used_model_within_the_budget() {
    // One slot with 10000 MiB, at most 2 models, three 4000 MiB synthetic models.
    let mut scenario = ConfigBuilder::new()
        .host("host-a")
        .dispatcher("vram_reserve_mib = 512")
        .dispatcher("max_models_per_worker = 2")
        .gpu(10512);
    for id in ["sleep_a", "sleep_b", "sleep_c"] {
        scenario = scenario.sleep_model(id, 4000, 5).params("load_ms = 200");
    }
    let system = scenario.system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep_c"), 1, WAIT)
        .await;
    let worker = "host-a-gpu0-slot0";

    for (i, model) in ["sleep_a", "sleep_b", "sleep_a", "sleep_c", "sleep_a"]
        .iter()
        .enumerate()
    {
        let record = submit(&system, model, &format!("res-{i}"), r#", "inputs": {}"#).await;
        assert_eq!(record["status"], "completed", "{record:?}");
    }
    gpuq_integration_tests::eventually("the worker record shows the loads", WAIT, || async {
        system.worker_field(worker, "model_loads").await.as_deref() == Some("3")
    })
    .await;
    // a, b loaded; a used again; c evicts b (least recently used); a is still resident.
    assert_eq!(
        system
            .worker_field(worker, "model_unloads")
            .await
            .as_deref(),
        Some("1")
    );
    assert_eq!(
        system
            .worker_field(worker, "peak_resident_mib")
            .await
            .as_deref(),
        Some("8000")
    );
    let resident: Vec<serde_json::Value> = serde_json::from_str(
        &system
            .worker_field(worker, "resident_models")
            .await
            .unwrap(),
    )
    .unwrap();
    let mut ids: Vec<&str> = resident
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["sleep_a", "sleep_c"]);
    assert!(
        resident
            .iter()
            .all(|r| r["load_ms"].as_u64().unwrap() >= 200),
        "{resident:?}"
    );
}
