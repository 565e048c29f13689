//! `redis.min_replicas_acked`: a worker acks a job only once that many
//! replicas confirmed its outcome (`WAIT` in the outcome's pipeline). Against
//! a Redis with no replica, the outcome is written but never confirmed: the
//! worker retries for `worker.redis_retry_s`, then requeues the delivery
//! instead of acking it, and the redelivery finds the record final and is
//! acked without running the job again. (The failover itself, with a
//! replica that confirms, is `ha_redis.rs`.)

use std::time::Duration;

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::jobs::publish;
use gpuq_integration_tests::{eventually, PrivateRedis, TestSystem};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_no_replica_confirmed_is_requeued_not_acked() {
    let redis = PrivateRedis::start();
    let runs_dir = tempfile::tempdir().unwrap();
    let run_log = runs_dir.path().join("runs.log");
    let body = ConfigBuilder::new()
        .section("[redis]\nmin_replicas_acked = 1\nwait_timeout_ms = 100")
        .section(
            "[worker]\nheartbeat_interval_ms = 200\nheartbeat_ttl_ms = 2000\n\
             shutdown_grace_s = 10\nredis_retry_s = 2",
        )
        .host("host-a")
        .gpu(8192)
        .sleep_model("sleep", 1024, 10)
        .run_log(&run_log)
        .build();
    let system = TestSystem::with_redis(&body, &redis.url());
    let dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;

    publish(
        &system,
        "sleep",
        "unconfirmed",
        r#", "inputs": {"tag": "u"}"#,
    )
    .await;
    let record = system
        .wait_for_status("unconfirmed", &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");

    // Written, yet not acked: requeued once the retries ran out, then the
    // redelivery is acked without a second run.
    eventually("the redelivery is acked without running", WAIT, || async {
        dispatcher
            .log()
            .contains("job already final; acking the redelivery without running it")
    })
    .await;
    let log = dispatcher.log();
    assert!(
        log.contains("outcome confirmed by 0 of 1 replicas within 100 ms"),
        "no WAIT shortfall in the log:\n{log}"
    );
    assert!(
        log.contains("cannot record the outcome in redis; requeueing the job"),
        "the unconfirmed job was not requeued:\n{log}"
    );
    let runs = std::fs::read_to_string(&run_log).unwrap_or_default();
    assert_eq!(runs.lines().count(), 1, "ran once: {runs}");
}
