//! A deployment made by an older gpuq keeps working: its classic retry
//! queues (new ones are quorum queues, replicated) and its model queues made
//! without `x-quorum-initial-group-size` are kept as they are, and jobs flow.

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::jobs::{submit, WAIT};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_an_older_gpuq_declared_are_kept_and_jobs_flow() {
    let system = ConfigBuilder::one_host().echo("echo").system();
    let names = &system.names;
    // What gpuq declared before: a classic retry queue, a model queue
    // without a replica count.
    let connection = system.amqp().await;
    let channel = connection.create_channel().await.unwrap();
    let mut retry_args = FieldTable::default();
    retry_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    retry_args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    retry_args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(names.model_queue("echo").as_str().into()),
    );
    let mut model_args = FieldTable::default();
    model_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    model_args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(names.dead_letter_exchange().as_str().into()),
    );
    model_args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(5));
    model_args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    model_args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    for (queue, arguments) in [
        (names.retry_queue("echo"), retry_args),
        (names.model_queue("echo"), model_args),
    ] {
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                arguments,
            )
            .await
            .unwrap_or_else(|e| panic!("declaring the old {queue}: {e}"));
    }
    let _ = connection.close(200, "old queues declared".into()).await;

    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&names.model_queue("echo"), 1, WAIT)
        .await;
    let record = submit(&system, "echo", "after-upgrade", r#", "inputs": {"a": 1}"#).await;
    assert_eq!(record["status"], "completed", "{record:?}");
    // The old retry queue is still there (kept, not replaced).
    assert!(system
        .queue_depth(&names.retry_queue("echo"))
        .await
        .is_some());
}
