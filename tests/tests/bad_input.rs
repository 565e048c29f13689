//! Bad input never takes a process down or loses another job: each case gets a
//! clear, recorded error, and the same worker serves the next job.

use std::time::Duration;

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::TestSystem;

const WAIT: Duration = Duration::from_secs(30);
const WORKER: &str = "host-a-gpu0-slot0";

/// (routing key, body, content type, message id, expected error code)
type BadCase<'a> = (&'a str, Vec<u8>, Option<&'a str>, &'a str, &'a str);

fn system() -> TestSystem {
    ConfigBuilder::echo_and_sleep()
        .section("[queues]\nmax_message_bytes = 4096")
        .system()
}

async fn assert_next_job_completes(system: &TestSystem, pid_before: &str) {
    let id = format!("good-after-{}", uuid::Uuid::new_v4().simple());
    let body = format!(r#"{{"job_id": "{id}", "feature": "echo", "inputs": {{"ok": true}}}}"#);
    system
        .publish_raw("echo", body.as_bytes(), Some("application/json"), None)
        .await;
    let record = system
        .wait_for_status(&id, &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    let pid_after = system.worker_field(WORKER, "pid").await.unwrap();
    assert_eq!(pid_before, pid_after, "the worker process restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_bad_message_gets_a_recorded_error() {
    let system = system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let pid_before = system
        .worker_field(WORKER, "pid")
        .await
        .expect("worker record");

    let oversized = format!(
        r#"{{"feature": "echo", "inputs": {{"blob": "{}"}}}}"#,
        "x".repeat(10_000)
    );
    let cases: Vec<BadCase> = vec![
        (
            "echo",
            b"\xc1\xc1 not msgpack".to_vec(),
            Some("application/msgpack"),
            "bad-msgpack",
            "malformed_message",
        ),
        (
            "echo",
            b"feature=echo".to_vec(),
            Some("text/plain"),
            "bad-content-type",
            "unsupported_content_type",
        ),
        (
            "echo",
            br#"{"schema_version": 7, "feature": "echo"}"#.to_vec(),
            Some("application/json"),
            "bad-schema",
            "unsupported_schema_version",
        ),
        (
            "echo",
            oversized.into_bytes(),
            Some("application/json"),
            "bad-oversized",
            "payload_too_large",
        ),
        (
            "echo",
            br#"{"feature": "echo", "model": "no_such_model"}"#.to_vec(),
            None,
            "bad-model",
            "unknown_model",
        ),
        (
            "echo",
            br#"{"feature": "echo", "timeout_s": 999999999}"#.to_vec(),
            None,
            "bad-timeout",
            "invalid_parameter",
        ),
        (
            "echo",
            br#"{"feature": "echo", "webhook": "not an object"}"#.to_vec(),
            None,
            "bad-webhook",
            "malformed_message",
        ),
        (
            "echo",
            br#"{"feature": "echo", "priority": 77}"#.to_vec(),
            None,
            "bad-priority",
            "invalid_parameter",
        ),
        (
            "echo",
            br#"{"feature": "sleep", "inputs": {}}"#.to_vec(),
            None,
            "bad-feature-for-queue",
            "invalid_parameter",
        ),
        (
            "sleep",
            br#"{"feature": "sleep", "inputs": {"duration_ms": "soon"}}"#.to_vec(),
            None,
            "bad-input-type",
            "invalid_input",
        ),
        (
            "sleep",
            br#"{"feature": "sleep", "inputs": {"fail": "yes"}}"#.to_vec(),
            None,
            "bad-input-type-2",
            "invalid_input",
        ),
    ];
    for (routing_key, body, content_type, id, _) in &cases {
        system
            .publish_raw(routing_key, body, *content_type, Some(id))
            .await;
    }
    for (_, _, _, id, code) in &cases {
        let record = system
            .wait_for_status(id, &["failed", "completed"], WAIT)
            .await;
        assert_eq!(record["status"], "failed", "{id}: {record:?}");
        assert_eq!(record["error_code"], *code, "{id}: {record:?}");
        assert!(!record["error_message"].is_empty(), "{id}: no message");
        assert_eq!(record["attempts"], "0", "{id} must not have run");
    }
    // A message with no job id anywhere cannot get a record: it is noted and dead-lettered.
    system
        .publish_raw("echo", br#"{"feature": "echo"}"#, None, None)
        .await;
    gpuq_integration_tests::eventually("missing_job_id dead-letter note", WAIT, || async {
        system
            .dead_letter_notes()
            .await
            .iter()
            .any(|n| n.contains("missing_job_id"))
    })
    .await;
    assert_next_job_completes(&system, &pid_before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_model_fails_its_job_and_the_worker_keeps_serving() {
    let system = system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;
    let pid_before = system
        .worker_field(WORKER, "pid")
        .await
        .expect("worker record");

    system
        .publish_raw("sleep", br#"{"job_id": "crash-1", "feature": "sleep", "inputs": {"fail": true, "duration_ms": 5}}"#, None, None)
        .await;
    let record = system
        .wait_for_status("crash-1", &["failed", "completed"], WAIT)
        .await;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["error_code"], "model_failed");
    assert_eq!(record["attempts"], "1");
    assert_next_job_completes(&system, &pid_before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_model_times_out_and_its_slot_recovers() {
    let system = system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;
    let pid_before = system
        .worker_field(WORKER, "pid")
        .await
        .expect("worker record");

    system
        .publish_raw(
            "sleep",
            br#"{"job_id": "hang-1", "feature": "sleep", "timeout_s": 1, "inputs": {"duration_ms": 600000}}"#,
            None,
            None,
        )
        .await;
    let record = system
        .wait_for_status("hang-1", &["timed_out", "failed", "completed"], WAIT)
        .await;
    assert_eq!(record["status"], "timed_out", "{record:?}");
    assert_eq!(record["error_code"], "timeout");

    // The stuck worker process is replaced and the slot serves again.
    gpuq_integration_tests::eventually("a new worker process", WAIT, || async {
        system
            .worker_field(WORKER, "pid")
            .await
            .is_some_and(|pid| pid != pid_before)
    })
    .await;
    let body = br#"{"job_id": "after-hang", "feature": "sleep", "inputs": {"duration_ms": 1}}"#;
    system.publish_raw("sleep", body, None, None).await;
    let record = system
        .wait_for_status("after-hang", &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");
}
