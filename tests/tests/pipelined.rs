//! The pipelined path (issue 18): a worker holding a job behind a running
//! one claims it ahead, shortly before the running job is expected to end,
//! so the freed slot runs it without a Redis round trip in between. These
//! tests stop the worker at the steps only that path has: a job claimed and
//! waiting for its slot (killed or cancelled there), and a job running
//! beside the previous one's unacked outcome (killed there).

use std::path::Path;
use std::time::Duration;

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::jobs::run_counts as runs;
use gpuq_integration_tests::{eventually, PrivateRedis, TestSystem};

const WAIT: Duration = Duration::from_secs(60);
const WORKER: &str = "host-a-gpu0-slot0";

/// One slot holding two deliveries (`worker.prefetch = 2`), a synthetic
/// sleep model that logs every run to `runs_log`.
fn system(runs_log: &Path) -> TestSystem {
    ConfigBuilder::new()
        .section("[jobs]\nretry_backoff_s = 1")
        .section("[worker]\nprefetch = 2")
        .host("host-a")
        .dispatcher("restart_backoff_initial_ms = 100")
        .dispatcher("restart_backoff_max_ms = 500")
        .gpu(8192)
        .sleep_model("sleep", 1024, 10)
        .model_keys("timeout_s = 60")
        .run_log(runs_log)
        .system()
}

async fn submit(system: &TestSystem, job_id: &str, inputs: &str) {
    let fields = format!(r#", "inputs": {inputs}"#);
    gpuq_integration_tests::jobs::publish(system, "sleep", job_id, &fields).await;
}

/// Starts a 4 s job and holds a second behind it; returns once the second
/// is claimed (`processing`) while the first still runs and the second has
/// not: the first job's model has no run time measured yet, so it is
/// expected to end after 1 s, and the second is claimed about then.
async fn claim_one_ahead(system: &TestSystem, log: &Path) {
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;
    submit(
        system,
        "running",
        r#"{"tag": "running", "duration_ms": 4000}"#,
    )
    .await;
    system
        .wait_for_status("running", &["processing"], WAIT)
        .await;
    submit(system, "ahead", r#"{"tag": "ahead"}"#).await;
    system.wait_for_status("ahead", &["processing"], WAIT).await;
    assert_eq!(
        system.job_hash("running").await["status"],
        "processing",
        "claimed ahead only while the first job runs"
    );
    let runs = runs(log);
    assert!(
        !runs.contains_key("ahead"),
        "it waits for the slot: {runs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_a_job_claimed_ahead_loses_neither_job() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs.log");
    let system = system(&log);
    let _dispatcher = system.dispatcher(&[]);
    claim_one_ahead(&system, &log).await;

    system.kill_worker(WORKER).await;

    for job in ["running", "ahead"] {
        let record = system
            .wait_for_status(job, &["completed", "failed", "cancelled"], WAIT)
            .await;
        assert_eq!(record["status"], "completed", "{job}: {record:?}");
        assert_eq!(
            record["attempts"], "2",
            "{job}: claimed again after the kill"
        );
    }
    let runs = runs(&log);
    assert_eq!(
        runs["running"], 2,
        "killed mid-run, then run again: {runs:?}"
    );
    assert_eq!(runs["ahead"], 1, "never ran before the kill: {runs:?}");
    let depth = system
        .queue_depth(&system.names.model_queue("sleep"))
        .await
        .unwrap()
        .0;
    assert_eq!(depth, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_claimed_ahead_ends_at_once_and_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs.log");
    let system = system(&log);
    let _dispatcher = system.dispatcher(&[]);
    claim_one_ahead(&system, &log).await;
    let pid = system.worker_field(WORKER, "pid").await.unwrap();

    let output = system.gpuq(&["cancel", "ahead"], WAIT);
    assert!(output.status.success(), "{output:?}");
    let record = system
        .wait_for_status("ahead", &["cancelled", "completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "cancelled", "{record:?}");
    // It ended without waiting for the slot: the first job still runs.
    assert_eq!(system.job_hash("running").await["status"], "processing");

    let record = system
        .wait_for_status("running", &["completed", "failed", "cancelled"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    // The slot was never lost: a later job runs on it.
    submit(&system, "after", r#"{"tag": "after"}"#).await;
    let record = system
        .wait_for_status("after", &["completed", "failed", "cancelled"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    let runs = runs(&log);
    assert!(
        !runs.contains_key("ahead"),
        "the cancelled job ran: {runs:?}"
    );
    assert_eq!((runs["running"], runs["after"]), (1, 1), "{runs:?}");
    // Nothing was running to stop, so the worker did not restart.
    assert_eq!(
        system.worker_field(WORKER, "pid").await.as_deref(),
        Some(pid.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_the_next_job_runs_beside_an_unacked_outcome_loses_neither() {
    // Against a Redis with no replica, `min_replicas_acked = 1` keeps every
    // outcome written but unconfirmed, so the finished job stays unacked
    // (retrying) while the next one runs on the slot it freed.
    let redis = PrivateRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs.log");
    let body = ConfigBuilder::new()
        .section("[redis]\nmin_replicas_acked = 1\nwait_timeout_ms = 100")
        .section("[worker]\nprefetch = 2\nredis_retry_s = 300")
        .host("host-a")
        .dispatcher("restart_backoff_initial_ms = 100")
        .gpu(8192)
        .sleep_model("sleep", 1024, 10)
        .model_keys("timeout_s = 60")
        .run_log(&log)
        .build();
    let system = TestSystem::with_redis(&body, &redis.url());
    let dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;
    submit(&system, "first", r#"{"tag": "first"}"#).await;
    submit(&system, "next", r#"{"tag": "next", "duration_ms": 3000}"#).await;
    system.wait_for_status("first", &["completed"], WAIT).await;
    eventually("the next job runs", WAIT, || async {
        runs(&log).contains_key("next")
    })
    .await;
    // The first job is still unacked: its outcome awaits a replica, retried.
    eventually("the first outcome waits for a replica", WAIT, || async {
        (dispatcher.log()).contains("outcome confirmed by 0 of 1 replicas within 100 ms")
    })
    .await;
    assert_eq!(runs(&log).get("next"), Some(&1), "the next job still runs");
    assert!(
        !dispatcher
            .log()
            .contains("cannot record the outcome in redis"),
        "the first job was requeued before the kill"
    );

    system.kill_worker(WORKER).await;
    // The first job's redelivery finds its outcome and is acked unrun; the
    // next one runs again and its outcome is written (then awaits its WAIT).
    eventually("the redelivery is acked without running", WAIT, || async {
        dispatcher
            .log()
            .contains("job already final; acking the redelivery without running it")
    })
    .await;
    eventually("the next job ran again", WAIT, || async {
        runs(&log).get("next") == Some(&2)
    })
    .await;
    let record = system.wait_for_status("next", &["completed"], WAIT).await;
    assert_eq!(record["attempts"], "2", "{record:?}");
    let first = system.job_hash("first").await;
    assert_eq!(
        (first["status"].as_str(), first["attempts"].as_str()),
        ("completed", "1")
    );
    assert_eq!(
        runs(&log)["first"],
        1,
        "an outcome written is never run again"
    );
}
