//! Durations a client sends are range-checked before they are multiplied or
//! handed to RabbitMQ: an absurd `queue_timeout_s` is a 422 for its sender and
//! nothing for anyone else (before, the broker closed the publishing channel
//! every submission shares), and a job published straight to AMQP with
//! overflowing numbers neither panics nor stops its worker.

use std::time::Duration;

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::http::start_gateway;
use reqwest::Method;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn scenario() -> ConfigBuilder {
    ConfigBuilder::one_host().echo("echo")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_durations_are_refused_and_never_hurt_concurrent_submits() {
    let system = scenario().system();
    let gateway = start_gateway(&system).await;
    let bad_bodies = [
        json!({"feature": "echo", "queue_timeout_s": 10_000_000_000u64}),
        json!({"feature": "echo", "timeout_s": 10_000_000_000u64}),
        json!({"feature": "echo", "queue_timeout_s": 0}),
        json!({"feature": "echo", "timeout_s": 0}),
        json!({"feature": "echo", "queue_timeout_s": u64::MAX}),
    ];
    for body in &bad_bodies {
        let (status, answer, _) = gateway
            .call(Method::POST, "/v1/jobs", Some(body.clone()), None)
            .await;
        assert_eq!(status, 422, "{body} -> {answer}");
        assert_eq!(answer["error"]["code"], "invalid_parameter", "{answer}");
    }
    // Good and bad submissions at once: every good one is queued.
    let mut calls = Vec::new();
    for n in 0..40 {
        let body = if n % 2 == 0 {
            json!({"feature": "echo", "inputs": {"n": n}, "queue_timeout_s": 600})
        } else {
            json!({"feature": "echo", "queue_timeout_s": 10_000_000_000u64})
        };
        let gateway = &gateway;
        calls.push(async move {
            let (status, answer, _) = gateway
                .call(Method::POST, "/v1/jobs", Some(body), None)
                .await;
            (n, status, answer)
        });
    }
    for (n, status, answer) in futures_util::future::join_all(calls).await {
        let expected = if n % 2 == 0 { 201 } else { 422 };
        assert_eq!(status, expected, "submission {n}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowing_numbers_published_to_amqp_do_not_stop_the_worker() {
    let system = scenario().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    // queue_timeout_s times 1000 overflows u64; so would the AMQP timestamp.
    let body = json!({
        "job_id": "overflowing-1", "feature": "echo", "inputs": {"a": 1},
        "queue_timeout_s": u64::MAX, "submitted_at_ms": u64::MAX,
    });
    system
        .publish_raw(
            "echo",
            &serde_json::to_vec(&body).unwrap(),
            Some("application/json"),
            None,
        )
        .await;
    let record = system
        .wait_for_status("overflowing-1", &["completed", "failed", "timed_out"], WAIT)
        .await;
    assert_eq!(
        record.get("status").map(String::as_str),
        Some("completed"),
        "{record:?}"
    );
    // The same worker process takes the next job (a restarted worker keeps
    // its id, so compare pids).
    let worker = record.get("worker").cloned().unwrap();
    let pid = system.worker_field(&worker, "pid").await;
    assert!(pid.is_some());
    system
        .publish_raw(
            "echo",
            &serde_json::to_vec(&json!({"job_id": "after-overflow-1", "feature": "echo"})).unwrap(),
            Some("application/json"),
            None,
        )
        .await;
    let next = system
        .wait_for_status("after-overflow-1", &["completed"], WAIT)
        .await;
    assert_eq!(next.get("worker"), Some(&worker));
    assert_eq!(system.worker_field(&worker, "pid").await, pid);
}
