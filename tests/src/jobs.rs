//! Jobs published straight to RabbitMQ, as any AMQP client would, and read
//! back from their Redis record: the two steps most end-to-end tests of the
//! worker side repeat.

use std::collections::HashMap;
use std::time::Duration;

use crate::TestSystem;

/// Longest a published job may take to end in these tests.
pub const WAIT: Duration = Duration::from_secs(60);

/// Publishes `{"job_id", "feature"<extra>}` (JSON) with `routing_key` (the
/// feature is its first part), confirmed; `extra` is more fields, e.g.
/// `, "inputs": {"tag": "a"}`.
pub async fn publish(system: &TestSystem, routing_key: &str, job_id: &str, extra: &str) {
    let feature = routing_key.split('.').next().unwrap_or(routing_key);
    let body = format!(r#"{{"job_id": "{job_id}", "feature": "{feature}"{extra}}}"#);
    system
        .publish_raw(routing_key, body.as_bytes(), Some("application/json"), None)
        .await;
}

/// [`publish`], then waits until the job is final; its record.
pub async fn submit(
    system: &TestSystem,
    routing_key: &str,
    job_id: &str,
    extra: &str,
) -> HashMap<String, String> {
    publish(system, routing_key, job_id, extra).await;
    system
        .wait_for_status(job_id, &["completed", "failed", "timed_out"], WAIT)
        .await
}

/// A final record's `result`, parsed (panics when it has none).
pub fn result(record: &HashMap<String, String>) -> serde_json::Value {
    serde_json::from_str(&record["result"]).expect("the record has a JSON result")
}

/// Publishes a JSON job body on a confirmed `channel` (mandatory,
/// persistent) without awaiting its confirm, as a busy client does: the
/// caller awaits all confirms together (`wait_for_confirms`).
pub async fn start_publish_json(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> lapin::PublisherConfirm {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            lapin::options::BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
        )
        .await
        .expect("publish")
}

/// How many times each tag ran, from a synthetic model's run log (one
/// `<tag> <unix ms>` line per run, `[models.params] run_log`).
pub fn run_counts(run_log: &std::path::Path) -> HashMap<String, usize> {
    let mut runs = HashMap::new();
    for line in std::fs::read_to_string(run_log).unwrap_or_default().lines() {
        if let Some((tag, _)) = line.split_once(' ') {
            *runs.entry(tag.to_owned()).or_default() += 1;
        }
    }
    runs
}
