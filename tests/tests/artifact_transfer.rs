//! Files through the artifact store, end to end: a large input uploaded
//! and fetched by the worker, a large output offloaded and downloaded, ids
//! that cannot escape the store, and the same over an S3-compatible store.

use std::time::Duration;

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::jobs::submit;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_travel_through_the_artifact_store_and_ids_cannot_escape_it() {
    let system = ConfigBuilder::one_host()
        .section("[artifacts]\ninline_max_bytes = 1024")
        .echo("echo")
        .system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;

    // A 200 kB "mesh" goes up as an artifact; the echo model returns it, and the
    // worker stores the large output as an artifact again.
    let mesh: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let big = system.dir().join("mesh.glb");
    let small = system.dir().join("thumb.png");
    std::fs::write(&big, &mesh).unwrap();
    std::fs::write(&small, b"tiny").unwrap();
    let output = system.gpuq(
        &[
            "submit",
            "echo",
            "--input",
            &format!("mesh=@{}", big.display()),
            "--input",
            &format!("thumb=@{}", small.display()),
            "--wait",
            "--json",
        ],
        WAIT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let record: serde_json::Value =
        serde_json::from_str(stdout.split_once('\n').unwrap().1).unwrap();
    assert_eq!(record["status"], "completed");
    assert_eq!(record["result"]["thumb"]["$bytes"], "dGlueQ==");
    assert_eq!(record["result"]["mesh"]["size_bytes"], 200_000);
    let id = record["result"]["mesh"]["$artifact"]
        .as_str()
        .unwrap()
        .to_owned();
    let fetched = system.dir().join("fetched.glb");
    let output = system.gpuq(
        &["artifact", "get", &id, "-o", fetched.to_str().unwrap()],
        WAIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read(&fetched).unwrap(), mesh);

    // Only ids, never paths: a traversal attempt fails before the job is claimed.
    let record = submit(
        &system,
        "echo",
        "escape-1",
        r#", "inputs": {"x": {"$artifact": "../../../etc/passwd"}}"#,
    )
    .await;
    assert_eq!(
        (record["status"].as_str(), record["error_code"].as_str()),
        ("failed", "invalid_input"),
        "{record:?}"
    );
    assert_eq!(record["attempts"], "0");
    let record = submit(
        &system,
        "echo",
        "missing-1",
        r#", "inputs": {"x": {"$artifact": "art_nosuchthing"}}"#,
    )
    .await;
    assert_eq!(
        (record["status"].as_str(), record["error_code"].as_str()),
        ("failed", "invalid_input"),
        "{record:?}"
    );
    assert!(record["error_message"].contains("not found"), "{record:?}");
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_travel_through_an_s3_compatible_store() {
    let moto = gpuq_integration_tests::MotoS3::start("gpuq-artifacts");
    let system = ConfigBuilder::one_host()
        .section(&moto.artifacts_config("gpuq-artifacts"))
        .echo("echo")
        .system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;

    let image: Vec<u8> = (0..50_000u32).map(|i| (i % 199) as u8).collect();
    let file = system.dir().join("photo.png");
    std::fs::write(&file, &image).unwrap();
    let output = system.gpuq(
        &[
            "submit",
            "echo",
            "--input",
            &format!("image=@{}", file.display()),
            "--wait",
            "--json",
        ],
        WAIT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let record: serde_json::Value =
        serde_json::from_str(stdout.split_once('\n').unwrap().1).unwrap();
    let id = record["result"]["image"]["$artifact"]
        .as_str()
        .unwrap()
        .to_owned();
    // Both the input and the output artifact are objects in the bucket.
    let keys = moto.keys("gpuq-artifacts");
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.contains(&format!("gpuq/{id}")), "{keys:?}");
    let fetched = system.dir().join("fetched.png");
    let output = system.gpuq(
        &["artifact", "get", &id, "-o", fetched.to_str().unwrap()],
        WAIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read(&fetched).unwrap(), image);
    assert!(
        !system.dir().join("artifacts").exists(),
        "nothing went to a local directory"
    );
}
