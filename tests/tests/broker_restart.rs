//! RabbitMQ restarted while jobs are queued and running: producers get a clear
//! error, workers reconnect with back-off, and every persistent job completes.
//!
//! This restarts the machine's shared broker (`rabbitmqctl stop_app` /
//! `start_app`), so it lives alone in this file: cargo runs test files one after
//! another, never beside this one. The broker is started again even if the test
//! fails.

use std::process::Command;
use std::time::Duration;

use gpuq_integration_tests::eventually;
use gpuq_integration_tests::fixtures::ConfigBuilder;

const WAIT: Duration = Duration::from_secs(120);

/// Starts the broker's app again when dropped, whatever happened.
struct BrokerStopped;

impl BrokerStopped {
    fn stop() -> BrokerStopped {
        let status = Command::new("rabbitmqctl")
            .arg("stop_app")
            .status()
            .expect("rabbitmqctl");
        assert!(status.success(), "rabbitmqctl stop_app failed");
        BrokerStopped
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").status();
        let _ = Command::new("rabbitmqctl")
            .args(["await_startup", "--timeout", "60"])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_queued_and_running_through_a_broker_restart_all_complete() {
    let system = ConfigBuilder::one_host()
        .dispatcher("workers_per_gpu = 2")
        .model_with("sleep", "sleep", 1024, "[models.params]\nduration_ms = 300")
        .system();
    let _dispatcher = system.dispatcher(&[]);
    let queue = system.names.model_queue("sleep");
    system.wait_for_consumers(&queue, 2, WAIT).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _gateway = system.spawn("gpuq", &["serve", "--listen", &format!("127.0.0.1:{port}")]);
    let gateway = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually("the gateway is ready", WAIT, || async {
        http.get(format!("{gateway}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    let ids: Vec<String> = (0..20).map(|i| format!("through-restart-{i}")).collect();
    for id in &ids {
        let output = system.gpuq(&["submit", "sleep", "--job-id", id], WAIT);
        assert!(output.status.success(), "{output:?}");
    }
    system
        .wait_for_status(&ids[0], &["processing", "completed"], WAIT)
        .await;

    let broker = BrokerStopped::stop();
    // While it is down, a producer gets a clear error instead of a silent loss.
    let output = system.gpuq(
        &["submit", "sleep", "--job-id", "during-outage"],
        Duration::from_secs(30),
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("rabbitmq") || stderr.contains("connecting"),
        "{stderr}"
    );
    // The gateway says so too: 503 with Retry-After, and a JSON error.
    let ready = http.get(format!("{gateway}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.headers().contains_key("retry-after"));
    let submit = http
        .post(format!("{gateway}/v1/jobs"))
        .json(&serde_json::json!({"feature": "sleep"}))
        .send()
        .await
        .unwrap();
    assert_eq!(submit.status(), 503);
    let error: serde_json::Value = submit.json().await.unwrap();
    assert_eq!(error["error"]["code"], "backend_unavailable", "{error}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(broker);

    for id in &ids {
        let record = system
            .wait_for_status(id, &["completed", "failed", "timed_out"], WAIT)
            .await;
        assert_eq!(record["status"], "completed", "{id}: {record:?}");
    }
    // The workers reconnected (the same processes: no restart was needed).
    eventually("both workers consume again", WAIT, || async {
        system
            .queue_depth(&queue)
            .await
            .is_some_and(|(ready, consumers)| ready == 0 && consumers == 2)
    })
    .await;
    let slots = system.host_slots("host-a").await;
    assert!(slots.iter().all(|s| s["restarts"] == 0), "{slots:?}");
    // The gateway reconnected by itself.
    eventually("the gateway is ready again", WAIT, || async {
        http.get(format!("{gateway}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let submit = http
        .post(format!("{gateway}/v1/jobs"))
        .json(&serde_json::json!({"feature": "sleep"}))
        .send()
        .await
        .unwrap();
    assert_eq!(submit.status(), 201);
}
