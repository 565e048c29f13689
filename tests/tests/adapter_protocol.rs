//! The adapter protocol's request ids: a reply that does not echo its
//! request's id is a protocol error that fails that job and restarts the
//! adapter, so a stray line can never become the next job's result.

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::jobs::{result, submit, WAIT};

/// An adapter written against the protocol by hand, that can answer with the
/// wrong request id on purpose: `mode` "stale" answers with the previous
/// request's id, "missing" with none, "double" answers right and then writes a
/// stray second result.
const STRAY_LINE_ADAPTER: &str = r#"
import json, os, sys
last = "r0"
def out(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()
for line in sys.stdin:
    request = json.loads(line)
    op, rid = request.get("op"), request.get("id")
    if op == "load":
        out({"type": "ready", "id": rid})
    elif op == "run":
        inputs = request.get("inputs") or {}
        mode, tag = inputs.get("mode"), inputs.get("tag")
        outputs = {"tag": tag, "pid": os.getpid()}
        if mode == "stale":
            out({"type": "result", "id": last, "outputs": outputs})
        elif mode == "missing":
            out({"type": "result", "outputs": outputs})
        else:
            out({"type": "result", "id": rid, "outputs": outputs})
            if mode == "double":
                out({"type": "result", "id": rid, "outputs": {"tag": "stray", "pid": os.getpid()}})
        last = rid
    elif op == "unload":
        break
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_replies_with_a_wrong_id_fail_their_job_and_never_become_the_next_result() {
    let scripts = tempfile::tempdir().unwrap();
    let script = scripts.path().join("stray_adapter.py");
    std::fs::write(&script, STRAY_LINE_ADAPTER).unwrap();
    let system = ConfigBuilder::new()
        .host("host-a")
        .gpu(16384)
        .adapter("stray", "stray", 512, &script, "")
        .model_keys("timeout_s = 30")
        .system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("stray"), 1, WAIT)
        .await;
    let tag = |record: &std::collections::HashMap<String, String>| {
        result(record)["tag"].as_str().map(str::to_owned)
    };
    let protocol_error = |record: &std::collections::HashMap<String, String>| {
        assert_eq!(
            (record["status"].as_str(), record["error_code"].as_str()),
            ("failed", "model_failed"),
            "{record:?}"
        );
        assert!(
            record["error_message"].contains("broke the protocol"),
            "{record:?}"
        );
    };

    let record = submit(&system, "stray", "first", r#", "inputs": {"tag": "first"}"#).await;
    assert_eq!(tag(&record).as_deref(), Some("first"), "{record:?}");
    let first_pid = result(&record)["pid"].as_u64().unwrap();

    // A reply carrying the previous request's id: a protocol error, not a result.
    let record = submit(
        &system,
        "stray",
        "stale",
        r#", "inputs": {"tag": "stale", "mode": "stale"}"#,
    )
    .await;
    protocol_error(&record);
    let record = submit(
        &system,
        "stray",
        "after-stale",
        r#", "inputs": {"tag": "after-stale"}"#,
    )
    .await;
    assert_eq!(tag(&record).as_deref(), Some("after-stale"), "{record:?}");
    let second_pid = result(&record)["pid"].as_u64().unwrap();
    assert_ne!(first_pid, second_pid, "the adapter was restarted");

    // A reply without an id.
    let record = submit(
        &system,
        "stray",
        "missing",
        r#", "inputs": {"tag": "missing", "mode": "missing"}"#,
    )
    .await;
    protocol_error(&record);

    // A stray second result after a good one: the next job reads it first and
    // fails; it never becomes that job's result, and the job after gets its own.
    let record = submit(
        &system,
        "stray",
        "double",
        r#", "inputs": {"tag": "double", "mode": "double"}"#,
    )
    .await;
    assert_eq!(tag(&record).as_deref(), Some("double"), "{record:?}");
    let record = submit(
        &system,
        "stray",
        "victim",
        r#", "inputs": {"tag": "victim"}"#,
    )
    .await;
    protocol_error(&record);
    let record = submit(&system, "stray", "last", r#", "inputs": {"tag": "last"}"#).await;
    assert_eq!(tag(&record).as_deref(), Some("last"), "{record:?}");
}
