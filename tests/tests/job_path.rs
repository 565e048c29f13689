//! The whole job path with real processes: CLI and plain-AMQP submissions,
//! VRAM budgets, unknown features and malformed messages.

use std::time::Duration;

use futures_util::StreamExt;
use gpuq_integration_tests::first_line;
use gpuq_integration_tests::fixtures::ConfigBuilder;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_submitted_with_the_cli_completes_with_its_result_in_redis() {
    let system = ConfigBuilder::echo_and_sleep().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;

    let output = system.gpuq(
        &[
            "submit",
            "echo",
            "--input",
            "text=hello gpu",
            "--input",
            "n=3",
            "--wait",
        ],
        WAIT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "gpuq failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("status: completed"), "{stdout}");

    let job_id = first_line(&output);
    let record = system.job_hash(&job_id).await;
    assert_eq!(record["status"], "completed");
    assert_eq!(record["feature"], "echo");
    assert_eq!(record["model"], "echo");
    assert_eq!(record["worker"], "host-a-gpu0-slot0");
    assert_eq!(record["attempts"], "1");
    let result: serde_json::Value = serde_json::from_str(&record["result"]).unwrap();
    assert_eq!(result, serde_json::json!({"text": "hello gpu", "n": 3}));
    for field in ["created_ms", "started_ms", "finished_ms"] {
        assert!(
            record[field].parse::<u64>().unwrap() > 0,
            "{field} missing: {record:?}"
        );
    }
    // Finished jobs expire (jobs.finished_ttl_s, default 24 h).
    let mut redis = system.redis().await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(system.names.job_key(&job_id))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(ttl > 86_000 && ttl <= 86_400, "ttl {ttl}");

    let status = system.gpuq(&["status", &job_id, "--json"], WAIT);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_job_from_a_plain_amqp_client_completes_and_replies() {
    let system = ConfigBuilder::echo_and_sleep().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;

    // Only lapin and a hand-written JSON body: what pika or amqplib would send.
    let connection = system.amqp().await;
    let channel = connection.create_channel().await.unwrap();
    // Replies go only to queues under jobs.reply_prefix (or direct reply-to).
    let reply_name = format!("gpuq.reply.{}", uuid::Uuid::new_v4().simple());
    let reply_queue = channel
        .queue_declare(
            reply_name.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut replies = channel
        .basic_consume(
            reply_queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let body = br#"{"job_id": "plain-json-1", "feature": "echo", "inputs": {"prompt": "a chair", "seed": 7}}"#;
    let exchange = format!("{}.jobs", system.names.namespace());
    let publish = |correlation_id: &'static str| {
        channel.basic_publish(
            exchange.as_str().into(),
            "echo".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_reply_to(reply_queue.name().clone())
                .with_correlation_id(correlation_id.into()),
        )
    };
    publish("corr-42").await.unwrap();

    let record = system
        .wait_for_status("plain-json-1", &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&record["result"]).unwrap(),
        serde_json::json!({"prompt": "a chair", "seed": 7})
    );

    let reply = tokio::time::timeout(WAIT, replies.next())
        .await
        .expect("reply in time")
        .unwrap()
        .unwrap();
    assert_eq!(
        reply.properties.correlation_id().as_ref().unwrap().as_str(),
        "corr-42"
    );
    assert_eq!(
        reply.properties.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    let reply: serde_json::Value = serde_json::from_slice(&reply.data).unwrap();
    assert_eq!(reply["job_id"], "plain-json-1");
    assert_eq!(reply["status"], "completed");
    assert_eq!(reply["result"]["prompt"], "a chair");

    // The same job delivered again (as after a failover lost the first
    // delivery's connection, reply and all): it does not run again, and its
    // reply is sent again from the record.
    publish("corr-43").await.unwrap();
    let again = tokio::time::timeout(WAIT, replies.next())
        .await
        .expect("reply sent again in time")
        .unwrap()
        .unwrap();
    assert_eq!(
        again.properties.correlation_id().as_ref().unwrap().as_str(),
        "corr-43"
    );
    let again: serde_json::Value = serde_json::from_slice(&again.data).unwrap();
    assert_eq!(again["status"], "completed");
    assert_eq!(
        again["result"],
        serde_json::json!({"prompt": "a chair", "seed": 7})
    );
    assert_eq!(system.job_hash("plain-json-1").await["attempts"], "1");
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_whose_budget_is_too_small_never_consumes_that_model() {
    let system = ConfigBuilder::new()
        .host("small-host")
        .dispatcher("vram_reserve_mib = 192")
        .gpu(8192)
        .echo("echo")
        .model_of_feature("huge", "text_to_textured_mesh", "sleep", 19456, "")
        .system();
    let _dispatcher = system.dispatcher(&[]);
    let huge_queue = system.names.model_queue("huge");
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;

    let output = system.gpuq(
        &[
            "submit",
            "text_to_textured_mesh",
            "--input",
            "prompt=castle",
        ],
        WAIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no worker consumes model 'huge'"),
        "{stderr}"
    );
    let job_id = first_line(&output);

    // Give the worker every chance to take it; it must not.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(system.queue_depth(&huge_queue).await, Some((1, 0)));
    assert_eq!(system.job_hash(&job_id).await["status"], "queued");

    let system_view = system.gpuq(&["system"], WAIT);
    let text = String::from_utf8_lossy(&system_view.stdout);
    assert!(text.contains("no GPU on host small-host has enough memory for model huge: needs 19456 MiB, largest slot has 8000 MiB"), "{text}");
    assert!(text.contains("model 'huge' has no consumer"), "{text}");
    // Which RabbitMQ node each process is on (one node here).
    assert!(text.contains("RABBITMQ CONNECTIONS"), "{text}");
    assert!(
        text.contains("dispatcher small-host") && text.contains("127.0.0.1:5672"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_feature_is_a_clear_error_at_submit() {
    let system = ConfigBuilder::echo_and_sleep().system();

    // With the registry: refused before anything is published.
    let output = system.gpuq(&["submit", "text_to_nothing", "--input", "x=1"], WAIT);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown feature 'text_to_nothing'; known features: echo, sleep"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());

    // Without a registry: the broker returns the unroutable job and the producer says so.
    let _dispatcher = system.dispatcher(&[]); // declares the exchange
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let bare = system.dir().join("bare.toml");
    std::fs::write(
        &bare,
        format!(
            "namespace = \"{}\"\namqp_url = \"{}\"\nredis_url = \"{}\"\n",
            system.names.namespace(),
            gpuq_integration_tests::amqp_url(),
            gpuq_integration_tests::redis_url()
        ),
    )
    .unwrap();
    let output = system.gpuq_with_config(
        &bare,
        &["submit", "text_to_nothing", "--job-id", "unroutable-1"],
        WAIT,
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no queue is bound to routing key 'text_to_nothing'"),
        "{stderr}"
    );
    let record = system.job_hash("unroutable-1").await;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["error_code"], "unroutable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_message_is_dead_lettered_and_the_worker_keeps_serving() {
    let system = ConfigBuilder::echo_and_sleep().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;

    let connection = system.amqp().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            format!("{}.jobs", system.names.namespace()).as_str().into(),
            "echo".into(),
            BasicPublishOptions::default(),
            b"{\"feature\": \"echo\", \"inputs\": [not json",
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id("broken-1".into()),
        )
        .await
        .unwrap();

    let record = system.wait_for_status("broken-1", &["failed"], WAIT).await;
    assert_eq!(record["error_code"], "malformed_message");
    assert!(
        record["error_message"].contains("not a valid JSON job"),
        "{record:?}"
    );

    // The dead-letter queue holds the original body with the reason in its headers.
    let dead_queue = system.names.dead_letter_queue();
    let mut dead = None;
    for _ in 0..100 {
        dead = channel
            .basic_get(dead_queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        if dead.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = dead.expect("a dead-lettered message");
    assert_eq!(
        dead.delivery.data,
        b"{\"feature\": \"echo\", \"inputs\": [not json"
    );
    let headers = dead.delivery.properties.headers().clone().unwrap();
    let header = |key: &str| match headers.inner().get(key) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("header {key}: {other:?}"),
    };
    assert_eq!(header("x-gpuq-error-code"), "malformed_message");
    assert_eq!(
        header("x-gpuq-source-queue"),
        system.names.model_queue("echo")
    );
    let _ = connection.close(200, "done".into()).await;

    // Also noted in Redis for people without AMQP access.
    let mut redis = system.redis().await;
    let notes: Vec<String> = redis::cmd("LRANGE")
        .arg(system.names.dead_letters_list())
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("broken-1") && n.contains("malformed_message")),
        "{notes:?}"
    );

    // Same worker process serves the next job.
    let worker_pid: String = redis::cmd("HGET")
        .arg(system.names.worker_key("host-a-gpu0-slot0"))
        .arg("pid")
        .query_async(&mut redis)
        .await
        .unwrap();
    let output = system.gpuq(&["submit", "echo", "--input", "after=1", "--wait"], WAIT);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let pid_after: String = redis::cmd("HGET")
        .arg(system.names.worker_key("host-a-gpu0-slot0"))
        .arg("pid")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(worker_pid, pid_after, "the worker restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpuq_watch_follows_a_job_until_it_ends() {
    let system = ConfigBuilder::echo_and_sleep().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;
    let output = system.gpuq(&["submit", "sleep", "--input", "duration_ms=800"], WAIT);
    let job_id = first_line(&output);
    let watched = system.gpuq(&["watch", &job_id], WAIT);
    let stdout = String::from_utf8_lossy(&watched.stdout);
    assert_eq!(watched.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("status: completed"), "{stdout}");
    let missing = system.gpuq(&["watch", "no-such-job"], WAIT);
    assert_eq!(missing.status.code(), Some(4));
}
