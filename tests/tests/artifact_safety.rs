//! What a client can make the artifact store and a worker do: bounded
//! references and fetched bytes per job (checked before any download),
//! artifacts that expire (local and S3), a local store that is ours alone and
//! never follows a planted symlink, and job inputs that are not copied twice.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::http::start_gateway;
use gpuq_integration_tests::{eventually, TestSystem};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// One host with a 16 GiB GPU serving `echo` (a 30 s timeout).
fn echo_host() -> ConfigBuilder {
    ConfigBuilder::new()
        .host("host-a")
        .gpu(16384)
        .echo("echo")
        .model_keys("timeout_s = 30")
}

/// An inputs object naming `ids` as artifact references.
fn references(ids: &[String]) -> serde_json::Value {
    let list: Vec<_> = ids.iter().map(|id| json!({"$artifact": id})).collect();
    json!({ "files": list })
}

/// Publishes a JSON job straight to the broker (no gateway, no producer
/// checks) and waits until it is final.
async fn publish(
    system: &TestSystem,
    job_id: &str,
    inputs: serde_json::Value,
) -> std::collections::HashMap<String, String> {
    let body = json!({"job_id": job_id, "feature": "echo", "inputs": inputs}).to_string();
    system
        .publish_raw("echo", body.as_bytes(), Some("application/json"), None)
        .await;
    system
        .wait_for_status(job_id, &["completed", "failed", "timed_out"], WAIT)
        .await
}

/// Stores `bytes` with `gpuq artifact put`; returns the id.
fn put(system: &TestSystem, bytes: &[u8]) -> String {
    let file = system.dir().join(format!("{}.bin", uuid::Uuid::new_v4()));
    std::fs::write(&file, bytes).unwrap();
    let output = system.gpuq(&["artifact", "put", file.to_str().unwrap()], WAIT);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    gpuq_integration_tests::first_line(&output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seventeen_artifact_references_are_invalid_input_from_amqp_and_the_gateway() {
    let system = echo_host().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let ids: Vec<String> = (0..17).map(|i| format!("art_missing{i}")).collect();

    // Straight to the broker: the worker refuses it before claiming it.
    let record = publish(&system, "refs-17", references(&ids)).await;
    assert_eq!(
        (record["status"].as_str(), record["error_code"].as_str()),
        ("failed", "invalid_input"),
        "{record:?}"
    );
    assert!(
        record["error_message"].contains("jobs.max_artifact_refs"),
        "{record:?}"
    );
    assert_eq!(record["attempts"], "0", "refused before any attempt");

    // Through the gateway: 422 at submit, no job queued.
    let gateway = start_gateway(&system).await;
    let (status, body, _) = gateway
        .call(
            reqwest::Method::POST,
            "/v1/jobs",
            Some(json!({"feature": "echo", "inputs": references(&ids)})),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_input")),
        "{body}"
    );
    // Sixteen is the default limit, and still allowed (then not found: invalid_input too,
    // but after the count).
    let record = publish(&system, "refs-16", references(&ids[..16])).await;
    assert!(record["error_message"].contains("not found"), "{record:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_over_max_fetch_bytes_are_invalid_input_before_download() {
    let system = echo_host()
        .section("[jobs]\nmax_attempts = 1")
        .section("[artifacts]\nmax_fetch_bytes = 1000\ninline_max_bytes = 4096")
        .system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let a = put(&system, &[1; 600]);
    let b = put(&system, &[2; 600]);

    let record = publish(&system, "too-big", references(&[a.clone(), b])).await;
    assert_eq!(
        (record["status"].as_str(), record["error_code"].as_str()),
        ("failed", "invalid_input"),
        "{record:?}"
    );
    let message = &record["error_message"];
    assert!(
        message.contains("total 1200 bytes") && message.contains("artifacts.max_fetch_bytes"),
        "{record:?}"
    );
    assert!(message.contains("nothing was fetched"), "{record:?}");

    // Under the limit the same artifact is fetched and echoed back inline.
    let record = publish(&system, "fits", references(&[a])).await;
    assert_eq!(record["status"], "completed", "{record:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_expire_from_a_local_store_written_0700_and_0600() {
    let system = echo_host().section("[artifacts]\nttl_s = 1").system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let store = system.dir().join("artifacts");
    let id = put(&system, b"short-lived");
    let path = store.join(&id);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&store), 0o700);
    assert_eq!(mode(&path), 0o600);
    eventually(
        "the dispatcher deletes the expired artifact",
        Duration::from_secs(20),
        || async { !path.exists() },
    )
    .await;
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_expire_from_an_s3_store() {
    let moto = gpuq_integration_tests::MotoS3::start("gpuq-expiry");
    let artifacts = moto.artifacts_config("gpuq-expiry").replace(
        "inline_max_bytes = 1024\n",
        "inline_max_bytes = 1024\nttl_s = 1\n",
    );
    let system = echo_host().section(&artifacts).system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let id = put(&system, b"short-lived in s3");
    assert!(moto.keys("gpuq-expiry").contains(&format!("gpuq/{id}")));
    eventually(
        "the dispatcher deletes the expired object",
        Duration::from_secs(20),
        || async { moto.keys("gpuq-expiry").is_empty() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_in_the_store_is_artifact_unavailable_never_followed() {
    let system = echo_host().section("[jobs]\nmax_attempts = 1").system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let secret = system.dir().join("passwd");
    std::fs::write(&secret, "root:x:0:0:secret-content").unwrap();
    let store = system.dir().join("artifacts");
    std::os::unix::fs::symlink(&secret, store.join("art_planted")).unwrap();

    let gateway = start_gateway(&system).await;
    let (status, body, _) = gateway
        .call(
            reqwest::Method::GET,
            "/v1/artifacts/art_planted",
            None,
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("artifact_unavailable")),
        "{body}"
    );
    assert!(!body.to_string().contains("secret-content"), "{body}");

    let record = publish(
        &system,
        "planted",
        json!({"x": {"$artifact": "art_planted"}}),
    )
    .await;
    assert_eq!(record["status"], "failed", "{record:?}");
    let message = &record["error_message"];
    assert!(
        message.contains("artifact_unavailable") && message.contains("symlink"),
        "{record:?}"
    );
    assert!(
        !record.values().any(|v| v.contains("secret-content")),
        "{record:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_world_writable_store_directory_stops_gpuq_with_a_clear_error() {
    let system = echo_host().system();
    let store = system.dir().join("artifacts");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o777)).unwrap();
    let file = system.dir().join("x.bin");
    std::fs::write(&file, b"x").unwrap();
    let output = system.gpuq(&["artifact", "put", file.to_str().unwrap()], WAIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("writable by every user"), "{stderr}");
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), 0);
}

/// Peak resident memory of a process, bytes.
fn peak_rss_bytes(pid: u32) -> u64 {
    let mib = gpuq_integration_tests::bench::procfs::memory_mib(pid, "VmHWM").expect("VmHWM");
    (mib * 1024.0 * 1024.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_job_does_not_multiply_the_workers_memory() {
    // No dispatcher: the test starts one worker itself and watches its memory.
    let system = ConfigBuilder::new()
        .model_with("sleep", "sleep", 256, "timeout_s = 60")
        .system();
    let worker = system.spawn("gpuq-worker", &["--worker-id", "w-mem", "--host-id", "mem"]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;
    let idle = peak_rss_bytes(worker.pid());

    // One array of f64 numbers (9 bytes each in msgpack), just under the 16 MiB
    // body limit; `sleep` ignores the array, so any copy is the worker's own.
    let limit = 16 * 1024 * 1024;
    let count = (limit - 1024) / 9;
    let numbers: Vec<rmpv::Value> = (0..count)
        .map(|i| rmpv::Value::F64(i as f64 * 0.5))
        .collect();
    let job = rmpv::Value::Map(vec![
        ("job_id".into(), "big-numbers".into()),
        ("feature".into(), "sleep".into()),
        (
            "inputs".into(),
            rmpv::Value::Map(vec![
                ("numbers".into(), rmpv::Value::Array(numbers)),
                ("duration_ms".into(), 0.into()),
            ]),
        ),
    ]);
    let mut body = Vec::new();
    rmpv::encode::write_value(&mut body, &job).unwrap();
    drop(job);
    assert!(body.len() <= limit, "{} bytes", body.len());
    system
        .publish_raw("sleep", &body, Some("application/msgpack"), None)
        .await;
    let record = system
        .wait_for_status("big-numbers", &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");

    // The worker's idle footprint (libtorch alone maps hundreds of MiB) is not
    // the job's: what the job adds to the peak is measured against the body.
    let peak = peak_rss_bytes(worker.pid());
    let added = peak.saturating_sub(idle);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "body {:.1} MiB; worker peak RSS idle {:.1} MiB, after the job {:.1} MiB: +{:.1} MiB ({:.1}x the body)",
        mib(body.len() as u64),
        mib(idle),
        mib(peak),
        mib(added),
        added as f64 / body.len() as f64
    );
    assert!(
        added < 8 * body.len() as u64,
        "the job raised the worker's peak RSS by {:.1} MiB, over 8x the {:.1} MiB body",
        mib(added),
        mib(body.len() as u64)
    );
}
