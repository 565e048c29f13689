//! The examples in docs/protocol.md work as written, with clients that share no
//! code with gpuq: Python pika publishes, a Redis client reads.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gpuq_integration_tests::fixtures::ConfigBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_pika_example_gets_a_completed_reply() {
    let system = ConfigBuilder::echo_and_sleep().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(
            &system.names.model_queue("echo"),
            1,
            Duration::from_secs(30),
        )
        .await;

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} missing: run scripts/python-env.sh (scripts/test.sh does)",
        python.display()
    );
    let output = Command::new("timeout")
        .arg("90")
        .arg(&python)
        .arg(root.join("docs/examples/pika_submit.py"))
        .arg(system.names.namespace())
        .env("GPUQ_AMQP_URL", gpuq_integration_tests::amqp_url())
        .output()
        .expect("running the pika example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "example failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let job_id = stdout
        .lines()
        .next()
        .unwrap()
        .strip_prefix("submitted ")
        .unwrap()
        .to_owned();
    let reply: serde_json::Value = serde_json::from_str(stdout.lines().nth(1).unwrap()).unwrap();
    assert_eq!(reply["status"], "completed");
    assert_eq!(reply["result"]["prompt"], "a wooden chair");

    let record = system.job_hash(&job_id).await;
    assert_eq!(record["status"], "completed");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&record["metadata"]).unwrap()["client"],
        "pika-example"
    );
}
