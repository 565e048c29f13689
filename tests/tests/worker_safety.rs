//! No client can kill, cycle or misuse a worker: crash injection needs the
//! operator's switch, a job's tiny `timeout_s` is raised to the model's floor,
//! and replies go only to queues a client may own.

use std::time::Duration;

use futures_util::StreamExt;
use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::TestSystem;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;

const WAIT: Duration = Duration::from_secs(60);
const WORKER: &str = "host-a-gpu0-slot0";

async fn worker_pid(system: &TestSystem) -> String {
    system
        .worker_field(WORKER, "pid")
        .await
        .expect("worker record")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_worker_without_the_operator_switch_is_invalid_input_and_the_worker_lives() {
    // The usual sleep model: no params.allow_crash_inputs.
    let system = ConfigBuilder::echo_and_sleep().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;
    let pid_before = worker_pid(&system).await;

    let body =
        br#"{"job_id": "kill-attempt", "feature": "sleep", "inputs": {"abort_worker": true}}"#;
    system
        .publish_raw("sleep", body, Some("application/json"), None)
        .await;
    let record = system
        .wait_for_status("kill-attempt", &["failed", "completed"], WAIT)
        .await;
    assert_eq!(
        (record["status"].as_str(), record["error_code"].as_str()),
        ("failed", "invalid_input"),
        "{record:?}"
    );
    assert!(
        record["error_message"].contains("allow_crash_inputs"),
        "{record:?}"
    );
    assert_ne!(
        record.get("attempts").map(String::as_str),
        Some("2"),
        "an input error is not retried: {record:?}"
    );

    let body =
        br#"{"job_id": "after-kill-attempt", "feature": "sleep", "inputs": {"duration_ms": 1}}"#;
    system
        .publish_raw("sleep", body, Some("application/json"), None)
        .await;
    let record = system
        .wait_for_status("after-kill-attempt", &["failed", "completed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    assert_eq!(
        worker_pid(&system).await,
        pid_before,
        "the worker process restarted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_timeout_below_the_models_min_timeout_runs_with_the_floor() {
    let system = ConfigBuilder::new()
        .host("host-a")
        .gpu(16384)
        .model_with("sleep", "sleep", 1024, "timeout_s = 60\nmin_timeout_s = 3")
        .system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;
    let pid_before = worker_pid(&system).await;

    // Asks for 1 s but runs 2 s: within the 3 s floor, so it completes.
    let body = br#"{"job_id": "short-fuse", "feature": "sleep", "timeout_s": 1, "inputs": {"duration_ms": 2000}}"#;
    system
        .publish_raw("sleep", body, Some("application/json"), None)
        .await;
    let record = system
        .wait_for_status("short-fuse", &["completed", "failed", "timed_out"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    assert_eq!(
        worker_pid(&system).await,
        pid_before,
        "the worker process restarted"
    );
}

/// Publishes a JSON job with `reply_to` and a correlation id, confirmed.
async fn publish_with_reply_to(
    system: &TestSystem,
    channel: &lapin::Channel,
    job_id: &str,
    reply_to: &str,
) {
    let body = format!(r#"{{"job_id": "{job_id}", "feature": "echo", "inputs": {{"n": 1}}}}"#);
    channel
        .basic_publish(
            system.names.jobs_exchange().as_str().into(),
            "echo".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body.as_bytes(),
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_reply_to(reply_to.into())
                .with_correlation_id(job_id.into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn declare_exclusive(channel: &lapin::Channel, name: &str) {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_to_outside_the_reply_prefix_is_ignored_and_noted_while_prefixed_queues_get_replies()
{
    let system = ConfigBuilder::echo_and_sleep().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let connection = system.amqp().await;
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();

    // Not under jobs.reply_prefix: the job runs, no reply is sent there.
    let other = format!("some.other.queue.{}", system.names.namespace());
    declare_exclusive(&channel, &other).await;
    publish_with_reply_to(&system, &channel, "stray-reply", &other).await;
    let record = system
        .wait_for_status("stray-reply", &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    assert_eq!(
        record.get("reply_to_ignored").map(String::as_str),
        Some(other.as_str()),
        "{record:?}"
    );

    // Under the default prefix `gpuq.reply.`: the reply arrives.
    let mine = format!("gpuq.reply.{}", uuid::Uuid::new_v4().simple());
    declare_exclusive(&channel, &mine).await;
    let mut replies = channel
        .basic_consume(
            mine.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish_with_reply_to(&system, &channel, "good-reply", &mine).await;
    let reply = tokio::time::timeout(WAIT, replies.next())
        .await
        .expect("reply in time")
        .unwrap()
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply.data).unwrap();
    assert_eq!(
        (reply["job_id"].as_str(), reply["status"].as_str()),
        (Some("good-reply"), Some("completed"))
    );
    let record = system.job_hash("good-reply").await;
    assert!(!record.contains_key("reply_to_ignored"), "{record:?}");

    // One worker runs jobs in order: the first job's reply, had it been sent,
    // would be in its queue by now.
    let stray = channel
        .basic_get(other.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(
        stray.is_none(),
        "a reply reached a queue outside the prefix"
    );
    let _ = connection.close(200, "done".into()).await;
}
