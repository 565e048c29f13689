//! Signed webhooks end to end: a job names a URL, its worker publishes the
//! delivery when the job ends, a dispatcher's sender POSTs it signed per the
//! Standard Webhooks spec, and a receiver verifies it with the
//! `standardwebhooks` Python package (tests/fixtures/webhook_receiver.py),
//! not with gpuq's code. Retries survive failures and a dispatcher restart;
//! a URL the config does not allow is refused at submit.

use std::time::Duration;

use gpuq_integration_tests::eventually;
use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::webhook_receiver::WebhookReceiver;
use gpuq_integration_tests::{ProcessGuard, TestSystem};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// An echo system whose webhooks may go to the receiver's port only, with
/// short retry delays so a test sees several tries.
fn system(port: u16) -> TestSystem {
    ConfigBuilder::one_host()
        .echo("echo")
        .section(&format!(
            "[webhooks]\nallow_http = true\nallow_hosts = [\"127.0.0.1:{port}\"]\n\
             secret = \"{SECRET}\"\nretry_delays_s = [1, 2]\ntimeout_ms = 2000\n"
        ))
        .system()
}

/// [`system`] with its dispatcher running and the echo queue consumed.
async fn running(port: u16) -> (TestSystem, ProcessGuard) {
    let system = system(port);
    let dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    (system, dispatcher)
}

fn submit(system: &TestSystem, port: u16, extra: &[&str]) -> String {
    let url = format!("http://127.0.0.1:{port}/hook");
    let mut args = vec!["submit", "echo", "--input", "x=1", "--webhook", &url];
    args.extend_from_slice(extra);
    args.push("--wait");
    let output = system.gpuq(&args, WAIT);
    assert!(output.status.success(), "{output:?}");
    gpuq_integration_tests::first_line(&output)
}

async fn wait_for_requests(receiver: &WebhookReceiver, count: usize) -> Vec<Value> {
    eventually(&format!("{count} webhook requests"), WAIT, || async {
        receiver.requests().len() >= count
    })
    .await;
    receiver.requests()
}

fn body(request: &Value) -> Value {
    serde_json::from_str(request["body"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_posts_a_verifiable_signed_webhook() {
    let mut receiver = WebhookReceiver::new(SECRET);
    let port = receiver.port;
    receiver.start(0);
    let (system, _dispatcher) = running(port).await;

    // Default events: the final status only.
    let job = submit(&system, port, &[]);
    let requests = wait_for_requests(&receiver, 1).await;
    let request = &requests[0];
    assert_eq!(request["verified"], true, "{request}");
    assert_eq!(request["status"], 200);
    assert_eq!(request["id"], format!("{job}.completed"));
    let payload = body(request);
    assert_eq!(payload["type"], "job.completed", "{payload}");
    assert_eq!(payload["data"]["job_id"], job.as_str());
    assert_eq!(payload["data"]["status"], "completed");
    assert_eq!(payload["data"]["feature"], "echo");
    assert!(payload["data"]["result"].is_object(), "{payload}");

    // Asked for: `processing` too, then the final status.
    let second = submit(
        &system,
        port,
        &[
            "--webhook-event",
            "processing",
            "--webhook-event",
            "completed",
        ],
    );
    let requests = wait_for_requests(&receiver, 3).await;
    let ids: Vec<&str> = requests[1..]
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&format!("{second}.processing").as_str()),
        "{ids:?}"
    );
    assert!(
        ids.contains(&format!("{second}.completed").as_str()),
        "{ids:?}"
    );
    assert!(requests.iter().all(|r| r["verified"] == true));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        receiver.requests().len(),
        3,
        "nothing sent twice after a 200"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_retries_until_it_answers_then_nothing_more() {
    let mut receiver = WebhookReceiver::new(SECRET);
    let port = receiver.port;
    receiver.start(3);
    let (system, _dispatcher) = running(port).await;
    let job = submit(&system, port, &[]);
    let requests = wait_for_requests(&receiver, 4).await;
    let statuses: Vec<i64> = requests
        .iter()
        .map(|r| r["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [500, 500, 500, 200]);
    for request in &requests {
        assert_eq!(request["verified"], true, "{request}");
        assert_eq!(
            request["id"],
            format!("{job}.completed"),
            "one message id for every try"
        );
    }
    // Delivered once: no fifth try after the 200.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(receiver.requests().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_waits_out_a_receiver_outage_across_a_dispatcher_restart() {
    let mut receiver = WebhookReceiver::new(SECRET);
    let port = receiver.port;
    let (system, mut dispatcher) = running(port).await;
    // The receiver is down: the job still completes (a webhook never holds it).
    let job = submit(&system, port, &[]);
    let status = system.gpuq(&["status", &job, "--json"], WAIT);
    assert!(String::from_utf8_lossy(&status.stdout).contains("completed"));
    // Let a few tries fail, then restart the dispatcher with the receiver up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    dispatcher.stop(Duration::from_secs(20));
    assert!(receiver.requests().is_empty());
    receiver.start(0);
    let _dispatcher = system.dispatcher(&[]);
    let requests = wait_for_requests(&receiver, 1).await;
    assert_eq!(requests[0]["verified"], true);
    assert_eq!(requests[0]["status"], 200);
    assert_eq!(requests[0]["id"], format!("{job}.completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_the_config_does_not_allow_is_refused_at_submit() {
    let port = gpuq_integration_tests::http::free_port();
    let system = system(port);
    for (url, reason) in [
        ("https://hooks.example.com/x", "not in webhooks.allow_hosts"),
        ("http://127.0.0.1:1/x", "not in webhooks.allow_hosts"),
        (
            "http://user:pw@127.0.0.1:9/x",
            "must not carry a user name or password",
        ),
        ("ftp://127.0.0.1/x", "scheme"),
    ] {
        let url = url.replace(":9/", &format!(":{port}/"));
        let output = system.gpuq(&["submit", "echo", "--webhook", &url], WAIT);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url} was accepted");
        assert!(stderr.contains("invalid_parameter"), "{url}: {stderr}");
        assert!(stderr.contains(reason), "{url}: {stderr}");
    }
    // An unknown event name is refused the same way.
    let url = format!("http://127.0.0.1:{port}/hook");
    let output = system.gpuq(
        &[
            "submit",
            "echo",
            "--webhook",
            &url,
            "--webhook-event",
            "done",
        ],
        WAIT,
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown webhook event"));
    // Nothing was queued.
    let jobs = system.gpuq(&["jobs", "--json"], WAIT);
    assert_eq!(String::from_utf8_lossy(&jobs.stdout).trim(), "[]");
}

/// A trusted AMQP publisher's job with a webhook the config does not allow
/// still completes; its delivery is refused at send time (the sender checks
/// every URL again) and lands in the dead queue that `gpuq system` counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disallowed_webhook_from_amqp_is_dead_lettered_and_the_job_completes() {
    let port = gpuq_integration_tests::http::free_port();
    let (system, _dispatcher) = running(port).await;
    let id = format!("amqp-hook-{}", uuid::Uuid::new_v4().simple());
    let body = format!(
        r#"{{"job_id": "{id}", "feature": "echo", "webhook": {{"url": "https://hooks.example.com/x"}}}}"#
    );
    system
        .publish_raw("echo", body.as_bytes(), Some("application/json"), None)
        .await;
    let record = system
        .wait_for_status(&id, &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    eventually("the refused delivery in the dead queue", WAIT, || async {
        let output = system.gpuq(&["system", "--json"], WAIT);
        let status: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        status["webhook_dead_letters"] == 1
    })
    .await;
}

/// A job the broker ends (its queue timeout expired: no GPU fits its model)
/// sends its webhook from the dispatcher that records the dead letter; the
/// webhook is the tenant's default, since the job names none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_broker_times_out_sends_its_tenant_s_default_webhook() {
    let mut receiver = WebhookReceiver::new(SECRET);
    let port = receiver.port;
    receiver.start(0);
    let system = ConfigBuilder::one_host()
        .echo("echo")
        .model("huge", "sleep", 999_999)
        .section(&format!(
            "[webhooks]\nallow_http = true\nallow_hosts = [\"127.0.0.1:{port}\"]\n\
             secret = \"{SECRET}\"\nretry_delays_s = [1, 2]\n\
             [tenants.acme]\nwebhook = {{ url = \"http://127.0.0.1:{port}/acme\" }}\n"
        ))
        .system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let output = system.gpuq(
        &[
            "submit",
            "huge",
            "--tenant",
            "acme",
            "--queue-timeout-s",
            "1",
        ],
        WAIT,
    );
    assert!(output.status.success(), "{output:?}");
    let job = gpuq_integration_tests::first_line(&output);
    let requests = wait_for_requests(&receiver, 1).await;
    assert_eq!(requests[0]["verified"], true);
    assert_eq!(requests[0]["id"], format!("{job}.timed_out"));
    let payload = body(&requests[0]);
    assert_eq!(payload["type"], "job.timed_out", "{payload}");
    assert_eq!(payload["data"]["tenant"], "acme");
    assert_eq!(payload["data"]["error"]["code"], "timeout");
}

/// A job cancelled while it waits sends its `cancelled` webhook when a
/// worker takes its message and finds the record final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_queued_sends_its_cancelled_webhook() {
    let mut receiver = WebhookReceiver::new(SECRET);
    let port = receiver.port;
    receiver.start(0);
    let system = ConfigBuilder::one_host()
        .sleep_model("slow", 256, 1_500)
        .section(&format!(
            "[webhooks]\nallow_http = true\nallow_hosts = [\"127.0.0.1:{port}\"]\n\
             secret = \"{SECRET}\"\nretry_delays_s = [1, 2]\n"
        ))
        .system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("slow"), 1, WAIT)
        .await;
    let url = format!("http://127.0.0.1:{port}/hook");
    // The first job holds the only worker; the second waits behind it.
    let first = system.gpuq(&["submit", "slow"], WAIT);
    assert!(first.status.success());
    let waiting = system.gpuq(&["submit", "slow", "--webhook", &url], WAIT);
    let job = gpuq_integration_tests::first_line(&waiting);
    let cancel = system.gpuq(&["cancel", &job], WAIT);
    assert!(cancel.status.success(), "{cancel:?}");
    let requests = wait_for_requests(&receiver, 1).await;
    assert_eq!(requests[0]["verified"], true);
    assert_eq!(requests[0]["id"], format!("{job}.cancelled"));
    assert_eq!(body(&requests[0])["data"]["status"], "cancelled");
}
