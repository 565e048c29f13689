//! Per-tenant quotas (issue 15) on the real broker and Redis: past
//! `tenants.<name>.max_queued` a submit is refused (gateway 429
//! `quota_exceeded`, CLI error) and leaves no record; the `rate_per_s` token
//! bucket is one for every gateway of a namespace; a priority above
//! `max_priority` is lowered and the record says so; and a tenant whose jobs
//! finish may submit again (the load count follows the records).
//!
//! Jobs of a named tenant may wait in per-tenant sub-queues, so nothing here
//! reads a queue's depth: the records, listings and load counts say it all.

use std::time::Duration;

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::http::{start_gateway, Gateway};
use gpuq_integration_tests::{first_line, TestSystem};
use reqwest::Method;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

const ACME: &str = "acme-submit-token-000001";

/// An `echo` system whose gateway token `acme` is tenant `acme`, held to
/// `limits` (the inside of `[tenants.acme]`); no worker.
fn acme_system(limits: &str) -> TestSystem {
    ConfigBuilder::one_host()
        .section(&format!(
            "[[gateway.tokens]]\ntoken = \"{ACME}\"\nrole = \"submit\"\nname = \"acme\"\n[tenants.acme]\n{limits}"
        ))
        .echo("echo")
        .system()
}

async fn post(gateway: &Gateway, body: Value) -> (u16, Value, reqwest::header::HeaderMap) {
    gateway
        .call(Method::POST, "/v1/jobs", Some(body), Some(ACME))
        .await
}

/// The ids `GET /v1/jobs?tenant=acme` lists.
async fn listed(gateway: &Gateway) -> Vec<String> {
    let (status, body, _) = gateway
        .call(Method::GET, "/v1/jobs?tenant=acme", None, Some(ACME))
        .await;
    assert_eq!(status, 200, "{body}");
    body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The tenant's `queued` load count.
async fn queued_count(system: &TestSystem, tenant: &str) -> u64 {
    let mut redis = system.redis().await;
    let count: Option<u64> = redis::cmd("HGET")
        .arg(system.names.tenant_load_key(tenant))
        .arg("queued")
        .query_async(&mut redis)
        .await
        .unwrap();
    count.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_429_past_max_queued_and_writes_nothing() {
    let system = acme_system("max_queued = 3\nmax_priority = 4");
    let gateway = start_gateway(&system).await;
    let mut accepted = Vec::new();
    for n in 0..3 {
        let (status, body, _) =
            post(&gateway, json!({"feature": "echo", "inputs": {"n": n}})).await;
        assert_eq!(status, 201, "{body}");
        accepted.push(body["job_id"].as_str().unwrap().to_owned());
    }
    let fourth = format!("{}-fourth", system.names.namespace());
    let (status, body, headers) =
        post(&gateway, json!({"feature": "echo", "job_id": fourth})).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("'acme'") && message.contains("tenants.acme.max_queued = 3"),
        "{message}"
    );
    assert!(
        headers.get("retry-after").is_none(),
        "a count, not a rate: no time to wait"
    );
    assert!(system.job_hash(&fourth).await.is_empty(), "no record");
    let (status, _, _) = gateway
        .call(Method::GET, &format!("/v1/jobs/{fourth}"), None, Some(ACME))
        .await;
    assert_eq!(status, 404);
    let mut listed = listed(&gateway).await;
    listed.sort();
    accepted.sort();
    assert_eq!(listed, accepted);
    assert_eq!(queued_count(&system, "acme").await, 3);
}

/// The CLI past `max_queued`: an error naming `quota_exceeded`, a non-zero
/// exit, no record. Before that, `--priority` above `max_priority` is
/// lowered, and `gpuq status` shows both numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_fails_past_max_queued_and_lowers_a_priority_above_max_priority() {
    let system = acme_system("max_queued = 2\nmax_priority = 4");
    let submit = |extra: &[&str]| {
        let mut args = vec!["submit", "echo", "--tenant", "acme"];
        args.extend_from_slice(extra);
        system.gpuq(&args, WAIT)
    };
    let lowered = submit(&["--priority", "9"]);
    assert!(lowered.status.success(), "{lowered:?}");
    let lowered = first_line(&lowered);
    let record = system.job_hash(&lowered).await;
    assert_eq!(
        (
            record["priority"].as_str(),
            record["priority_lowered_from"].as_str()
        ),
        ("4", "9"),
        "{record:?}"
    );
    let status = system.gpuq(&["status", &lowered, "--json"], WAIT);
    let shown: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        (&shown["priority"], &shown["priority_lowered_from"]),
        (&json!(4), &json!(9)),
        "{shown}"
    );
    let status = system.gpuq(&["status", &lowered], WAIT);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("priority: 4 (lowered from 9"), "{text}");
    // At or under the cap: kept, and nothing noted.
    let kept = submit(&["--priority", "3"]);
    assert!(kept.status.success(), "{kept:?}");
    let record = system.job_hash(&first_line(&kept)).await;
    assert_eq!(record["priority"], "3");
    assert!(!record.contains_key("priority_lowered_from"), "{record:?}");

    let third = format!("{}-third", system.names.namespace());
    let refused = submit(&["--job-id", &third]);
    assert!(!refused.status.success(), "{refused:?}");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        output.contains("quota_exceeded") && output.contains("tenants.acme.max_queued = 2"),
        "{output}"
    );
    assert!(system.job_hash(&third).await.is_empty(), "no record");
    let jobs = system.gpuq(&["jobs", "--tenant", "acme", "--json"], WAIT);
    let jobs: Vec<Value> = serde_json::from_slice(&jobs.stdout).unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
}

/// Two gateway processes on one namespace share the tenant's bucket: with
/// a burst of 4 and a token every 1000 s, six submits alternating between
/// them get exactly four through; the others are 429 with a `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_token_bucket() {
    let system = acme_system("rate_per_s = 0.001\nburst = 4");
    let gateways = [start_gateway(&system).await, start_gateway(&system).await];
    let mut accepted = Vec::new();
    let mut refused = 0;
    for n in 0..6 {
        let gateway = &gateways[n % 2];
        let (status, body, headers) = post(gateway, json!({"feature": "echo"})).await;
        match status {
            201 => accepted.push(body["job_id"].as_str().unwrap().to_owned()),
            429 => {
                refused += 1;
                assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("tenants.acme.rate_per_s"),
                    "{body}"
                );
                let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(retry_after >= 1, "{retry_after}");
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!((accepted.len(), refused), (4, 2), "{accepted:?}");
    let mut listed = listed(&gateways[0]).await;
    listed.sort();
    accepted.sort();
    assert_eq!(listed, accepted, "the refused submits left no record");
}

/// Jobs that finish leave the tenant's queued count: once a worker has run
/// them, the tenant may submit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_submits_again_once_its_queued_jobs_have_run() {
    let system = acme_system("max_queued = 2");
    let submit = || system.gpuq(&["submit", "echo", "--tenant", "acme"], WAIT);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let output = submit();
        assert!(output.status.success(), "{output:?}");
        ids.push(first_line(&output));
    }
    let refused = submit();
    assert!(!refused.status.success(), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("quota_exceeded"));

    let _dispatcher = system.dispatcher(&[]);
    for id in &ids {
        let record = system.wait_for_status(id, &["completed"], WAIT).await;
        assert_eq!(record["tenant"], "acme", "{record:?}");
    }
    assert_eq!(queued_count(&system, "acme").await, 0);
    let again = system.gpuq(
        &["submit", "echo", "--tenant", "acme", "--wait", "--json"],
        WAIT,
    );
    assert!(again.status.success(), "{again:?}");
    let stdout = String::from_utf8_lossy(&again.stdout);
    let (_, record) = stdout.split_once('\n').unwrap();
    let record: Value = serde_json::from_str(record).unwrap();
    assert_eq!(record["status"], "completed", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_published_straight_to_amqp_past_max_queued_fails_quota_exceeded() {
    // `huge` fits no GPU: acme's job on it stays queued, holding the quota.
    let system = ConfigBuilder::one_host()
        .section("[tenants.acme]\nmax_queued = 1")
        .gpu(8192)
        .echo("echo")
        .model("huge", "sleep", 999_999)
        .system();
    let queued = system.gpuq(&["submit", "huge", "--tenant", "acme"], WAIT);
    assert!(queued.status.success(), "{queued:?}");
    assert_eq!(queued_count(&system, "acme").await, 1);
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;

    // Published by a client that bypasses the producer: no record, not counted.
    gpuq_integration_tests::jobs::publish(&system, "echo", "direct-acme", r#", "tenant": "acme""#)
        .await;
    gpuq_integration_tests::jobs::publish(&system, "echo", "direct-other", r#", "tenant": "zed""#)
        .await;
    let refused = system
        .wait_for_status("direct-acme", &["completed", "failed"], WAIT)
        .await;
    assert_eq!(
        (refused["status"].as_str(), refused["error_code"].as_str()),
        ("failed", "quota_exceeded"),
        "{refused:?}"
    );
    assert!(
        refused["error_message"].contains("max_queued"),
        "{refused:?}"
    );
    let other = system
        .wait_for_status("direct-other", &["completed", "failed"], WAIT)
        .await;
    assert_eq!(
        other["status"], "completed",
        "another tenant is not held to acme's quota"
    );
}
