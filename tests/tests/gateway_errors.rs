//! The gateway's submission error codes that `gateway.rs` does not reach:
//! `unknown_model`, `invalid_input`, and both kinds of `payload_too_large`
//! (a request body over `gateway.max_body_bytes`, a job over
//! `queues.max_message_bytes` once encoded), each as docs/gateway.md says.

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::http::start_gateway;
use reqwest::Method;
use serde_json::{json, Value};

/// Bodies over 64 KiB are refused by the gateway; jobs over 8 KiB by the producer.
fn scenario() -> ConfigBuilder {
    ConfigBuilder::new()
        .section("[gateway]\nmax_body_bytes = 65536\n[queues]\nmax_message_bytes = 8192")
        .echo("echo")
}

fn code(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_and_invalid_input_answer_422() {
    let system = scenario().system();
    let gateway = start_gateway(&system).await;
    let (status, error, _) = gateway
        .call(
            Method::POST,
            "/v1/jobs",
            Some(json!({"feature": "echo", "model": "no-such-model"})),
            None,
        )
        .await;
    assert_eq!(
        (status, code(&error)),
        (422, Some("unknown_model")),
        "{error}"
    );
    let (status, error, _) = gateway
        .call(
            Method::POST,
            "/v1/jobs",
            Some(json!({"feature": "echo", "inputs": {"mesh": {"$bytes": "not base64!"}}})),
            None,
        )
        .await;
    assert_eq!(
        (status, code(&error)),
        (422, Some("invalid_input")),
        "{error}"
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("base64"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_jobs_answer_413_payload_too_large() {
    let system = scenario().system();
    let gateway = start_gateway(&system).await;

    // A JSON body over gateway.max_body_bytes. The gateway answers without
    // reading the body and closes the connection, so these requests ask for
    // `Connection: close`: a pooled, closed connection would fail the next one.
    let big = "x".repeat(100 * 1024);
    let response = gateway
        .client
        .post(format!("{}/v1/jobs", gateway.base))
        .header(reqwest::header::CONNECTION, "close")
        .json(&json!({"feature": "echo", "inputs": {"text": big}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let error: Value = response.json().await.unwrap();
    assert_eq!(code(&error), Some("payload_too_large"), "{error}");

    // An upload over it.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![7u8; 100 * 1024]).file_name("big.bin"),
    );
    let response = gateway
        .client
        .post(format!("{}/v1/artifacts", gateway.base))
        .header(reqwest::header::CONNECTION, "close")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let error: Value = response.json().await.unwrap();
    assert_eq!(code(&error), Some("payload_too_large"), "{error}");

    // A body the gateway accepts whose job is over queues.max_message_bytes.
    let medium = "x".repeat(16 * 1024);
    let (status, error, _) = gateway
        .call(
            Method::POST,
            "/v1/jobs",
            Some(json!({"feature": "echo", "inputs": {"text": medium}})),
            None,
        )
        .await;
    assert_eq!(
        (status, code(&error)),
        (413, Some("payload_too_large")),
        "{error}"
    );
    assert!(
        error["error"]["message"].as_str().unwrap().contains("8192"),
        "{error}"
    );
}
