//! Nothing lost, nothing run twice by surprise: idempotent redelivery, worker
//! death, poison jobs, queue timeouts, cancellation and a Redis outage, with the
//! real processes. (The broker restart and the chaos test have files of their
//! own: cargo runs test files one after another, so restarting the shared
//! broker there cannot disturb other tests.)

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::{eventually, PrivateRedis, TestSystem};
use nix::sys::signal::kill;
use nix::unistd::Pid;

const WAIT: Duration = Duration::from_secs(60);
const WORKER: &str = "host-a-gpu0-slot0";

/// One GPU, one slot, a synthetic sleep model that logs every run to
/// `runs.log` in `runs_dir` and may crash its worker on request (the
/// poison-job test), and a `huge` model that fits no GPU.
fn scenario(runs_dir: &Path) -> ConfigBuilder {
    ConfigBuilder::new()
        .section("[jobs]\nretry_backoff_s = 1")
        .host("host-a")
        .dispatcher("restart_backoff_initial_ms = 100")
        .dispatcher("restart_backoff_max_ms = 500")
        .gpu(8192)
        .sleep_model("sleep", 1024, 10)
        .model_keys("timeout_s = 60")
        .run_log(&runs_dir.join("runs.log"))
        .params("allow_crash_inputs = true")
        .model("huge", "sleep", 999999)
}

fn system() -> (TestSystem, tempfile::TempDir) {
    let runs = tempfile::tempdir().unwrap();
    let system = scenario(runs.path()).system();
    (system, runs)
}

/// How many times each tag ran, from the synthetic model's run log.
fn runs(dir: &tempfile::TempDir) -> HashMap<String, Vec<u64>> {
    let mut runs: HashMap<String, Vec<u64>> = HashMap::new();
    let text = std::fs::read_to_string(dir.path().join("runs.log")).unwrap_or_default();
    for line in text.lines() {
        let (tag, at) = line.split_once(' ').unwrap();
        runs.entry(tag.to_owned())
            .or_default()
            .push(at.parse().unwrap());
    }
    runs
}

/// Publishes a `sleep` job with these inputs (JSON) and more fields.
async fn submit(system: &TestSystem, job_id: &str, inputs: &str, extra: &str) {
    let fields = format!(r#", "inputs": {inputs}{extra}"#);
    gpuq_integration_tests::jobs::publish(system, "sleep", job_id, &fields).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_completed_job_is_acked_without_running_again() {
    let (system, dir) = system();
    let _dispatcher = system.dispatcher(&[]);
    let queue = system.names.model_queue("sleep");
    system.wait_for_consumers(&queue, 1, WAIT).await;

    submit(&system, "once", r#"{"tag": "once"}"#, "").await;
    system.wait_for_status("once", &["completed"], WAIT).await;
    // The same job id again, as a redelivery would bring it.
    submit(&system, "once", r#"{"tag": "once"}"#, "").await;
    submit(&system, "marker", r#"{"tag": "marker"}"#, "").await;
    system.wait_for_status("marker", &["completed"], WAIT).await;
    assert_eq!(runs(&dir)["once"].len(), 1, "the completed job ran again");
    assert_eq!(system.job_hash("once").await["attempts"], "1");
    assert_eq!(
        system.queue_depth(&queue).await.unwrap().0,
        0,
        "the duplicate was acked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_nothing_and_the_job_completes() {
    let (system, dir) = system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;

    submit(
        &system,
        "survivor",
        r#"{"tag": "survivor", "duration_ms": 1500}"#,
        "",
    )
    .await;
    eventually("the job is running", WAIT, || async {
        runs(&dir).contains_key("survivor")
    })
    .await;
    system.kill_worker(WORKER).await;

    let record = system
        .wait_for_status("survivor", &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    assert_eq!(record["attempts"], "2", "redelivered once after the kill");
    assert_eq!(runs(&dir)["survivor"].len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_worker_every_time_ends_failed_with_a_dead_letter_copy() {
    let (system, dir) = system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;

    submit(
        &system,
        "poison",
        r#"{"tag": "poison", "abort_worker": true}"#,
        "",
    )
    .await;
    let record = system
        .wait_for_status("poison", &["failed", "completed"], WAIT)
        .await;
    assert_eq!(record["error_code"], "too_many_attempts", "{record:?}");
    assert!(
        record["error_message"].contains("started 3 time(s) without finishing"),
        "{record:?}"
    );
    assert_eq!(
        record["attempts"], "4",
        "three deadly runs, then refused at the fourth claim"
    );
    assert_eq!(runs(&dir)["poison"].len(), 3, "never run a fourth time");
    // A copy with the reason is in the dead-letter queue, and the slot serves again.
    let notes = system.dead_letter_notes().await;
    let dead = system
        .queue_depth(&system.names.dead_letter_queue())
        .await
        .unwrap()
        .0;
    assert!(dead >= 1, "no dead-letter copy ({notes:?})");
    submit(&system, "after-poison", r#"{"tag": "after"}"#, "").await;
    assert_eq!(
        system
            .wait_for_status("after-poison", &["completed", "failed"], WAIT)
            .await["status"],
        "completed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_past_their_queue_timeout_end_timed_out_without_running() {
    let (system, dir) = system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;

    // Seen by a worker too late: refused before it runs.
    let stale = gpuq_common::now_ms() - 10_000;
    submit(
        &system,
        "stale",
        r#"{"tag": "stale"}"#,
        &format!(r#", "submitted_at_ms": {stale}, "queue_timeout_s": 5"#),
    )
    .await;
    let record = system
        .wait_for_status("stale", &["timed_out", "completed", "failed"], WAIT)
        .await;
    assert_eq!(
        (record["status"].as_str(), record["error_code"].as_str()),
        ("timed_out", "timeout"),
        "{record:?}"
    );
    assert!(
        record["error_message"].contains("in the queue"),
        "{record:?}"
    );

    // Never seen by any worker (no host can fit the model): the broker expires it,
    // and the dispatcher's dead-letter watcher records it.
    let output = system.gpuq(
        &[
            "submit",
            "huge",
            "--job-id",
            "expired-1",
            "--queue-timeout-s",
            "1",
        ],
        WAIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let record = system
        .wait_for_status("expired-1", &["timed_out", "failed"], WAIT)
        .await;
    assert_eq!(
        (record["status"].as_str(), record["error_code"].as_str()),
        ("timed_out", "timeout"),
        "{record:?}"
    );
    assert!(record["error_message"].contains("expired"), "{record:?}");
    assert!(!runs(&dir).contains_key("stale"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_jobs_never_run_and_running_ones_are_stopped() {
    let (system, dir) = system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;

    // The only slot is busy with a long job; the next one waits in the queue.
    submit(
        &system,
        "long",
        r#"{"tag": "long", "duration_ms": 60000}"#,
        "",
    )
    .await;
    system.wait_for_status("long", &["processing"], WAIT).await;
    let output = system.gpuq(
        &[
            "submit",
            "sleep",
            "--job-id",
            "queued",
            "--input",
            "tag=queued",
        ],
        WAIT,
    );
    assert!(output.status.success(), "{output:?}");
    let output = system.gpuq(&["cancel", "queued"], WAIT);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("cancelled queued (was queued)"),
        "{output:?}"
    );

    // Cancel the running one: its worker (a thread it cannot interrupt) restarts.
    let pid = system.worker_field(WORKER, "pid").await.unwrap();
    let output = system.gpuq(&["cancel", "long"], WAIT);
    assert!(output.status.success(), "{output:?}");
    let record = system
        .wait_for_status("long", &["cancelled", "completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "cancelled");
    eventually("the worker restarted", WAIT, || async {
        system
            .worker_field(WORKER, "pid")
            .await
            .is_some_and(|p| p != pid)
    })
    .await;

    submit(&system, "after-cancel", r#"{"tag": "after"}"#, "").await;
    system
        .wait_for_status("after-cancel", &["completed"], WAIT)
        .await;
    assert_eq!(system.job_hash("queued").await["status"], "cancelled");
    assert!(
        !runs(&dir).contains_key("queued"),
        "a cancelled queued job ran"
    );
    assert_eq!(
        system
            .queue_depth(&system.names.model_queue("sleep"))
            .await
            .unwrap()
            .0,
        0
    );
    let output = system.gpuq(&["cancel", "after-cancel"], WAIT);
    assert_eq!(
        output.status.code(),
        Some(2),
        "cancelling a finished job is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_its_model_loads_never_runs() {
    let runs_dir = tempfile::tempdir().unwrap();
    // A model that takes 4 s to load: a job claimed on a cold worker waits
    // that long before its run.
    let system = ConfigBuilder::new()
        .host("host-a")
        .gpu(8192)
        .sleep_model("sleep", 1024, 10)
        .params("load_ms = 4000")
        .run_log(&runs_dir.path().join("runs.log"))
        .system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;
    let pid = system.worker_field(WORKER, "pid").await.unwrap();

    submit(&system, "cancel-in-load", r#"{"tag": "in-load"}"#, "").await;
    system
        .wait_for_status("cancel-in-load", &["processing"], WAIT)
        .await;
    let output = system.gpuq(&["cancel", "cancel-in-load"], WAIT);
    assert!(output.status.success(), "{output:?}");

    // The model loads for the next job; the cancelled one never runs.
    submit(&system, "after-load", r#"{"tag": "after"}"#, "").await;
    let record = system
        .wait_for_status("after-load", &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    let record = system.job_hash("cancel-in-load").await;
    assert_eq!(record["status"], "cancelled", "{record:?}");
    let runs = runs(&runs_dir);
    assert!(
        !runs.contains_key("in-load"),
        "the cancelled job ran: {runs:?}"
    );
    assert_eq!(runs["after"].len(), 1);
    // Nothing was running to stop, so the worker did not restart.
    assert_eq!(
        system.worker_field(WORKER, "pid").await.as_deref(),
        Some(pid.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_delays_the_outcome_but_loses_nothing() {
    let mut redis = PrivateRedis::start();
    let runs_dir = tempfile::tempdir().unwrap();
    let system = TestSystem::with_redis(&scenario(runs_dir.path()).build(), &redis.url());
    let dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;
    let pid = system.worker_field(WORKER, "pid").await.unwrap();

    submit(
        &system,
        "through-outage",
        r#"{"tag": "t", "duration_ms": 1500}"#,
        "",
    )
    .await;
    system
        .wait_for_status("through-outage", &["processing"], WAIT)
        .await;
    redis.kill();
    tokio::time::sleep(Duration::from_secs(3)).await; // the job ends while Redis is down
    redis.restart();

    let record = system
        .wait_for_status("through-outage", &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    assert_eq!(runs(&runs_dir)["t"].len(), 1, "ran once");
    // Nothing crashed: same worker process, dispatcher alive.
    eventually("the worker heart-beats again", WAIT, || async {
        system.worker_field(WORKER, "pid").await.as_deref() == Some(pid.as_str())
    })
    .await;
    assert!(kill(Pid::from_raw(dispatcher.pid() as i32), None).is_ok());
}
