//! The TorchScript runtime through the whole path (feature `torch`): a tensor job
//! through RabbitMQ, run by tch in the worker, with the numeric output in Redis.
#![cfg(feature = "torch")]

use std::path::Path;
use std::time::Duration;

use gpuq_common::wire::Encoding;
use gpuq_common::{JobMessage, Value, ValueMap};
use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::TestSystem;

const WAIT: Duration = Duration::from_secs(60);

fn system() -> TestSystem {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/affine.pt")
        .canonicalize()
        .unwrap();
    ConfigBuilder::one_host()
        .model("affine", "torchscript", 256)
        .params(&format!("path = \"{}\"", fixture.display()))
        .params(r#"inputs = [{ name = "x", dtype = "float32", shape = [-1, 3] }]"#)
        .params(r#"outputs = ["y"]"#)
        .system()
}

fn floats(value: &serde_json::Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tensor_job_runs_on_the_torchscript_module_and_its_output_lands_in_redis() {
    let system = system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("affine"), 1, WAIT)
        .await;

    // JSON: nested numbers.
    let body = br#"{"job_id": "ts-json", "feature": "affine",
        "inputs": {"x": {"dtype": "float32", "shape": [2, 3], "data": [[1, 1, 1], [0, 1, 2]]}}}"#;
    system
        .publish_raw("affine", body, Some("application/json"), None)
        .await;
    let record = system
        .wait_for_status("ts-json", &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    let result: serde_json::Value = serde_json::from_str(&record["result"]).unwrap();
    assert_eq!(result["y"]["dtype"], "float32");
    assert_eq!(result["y"]["shape"], serde_json::json!([2, 2]));
    assert_eq!(floats(&result["y"]["data"]), [6.5, 14.0, 8.5, 16.0]);

    // msgpack: raw little-endian bytes.
    let bytes: Vec<u8> = [2.0f32, 0.0, -1.0]
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    let tensor = Value::Map(vec![
        (Value::from("dtype"), Value::from("float32")),
        (
            Value::from("shape"),
            Value::Array(vec![Value::from(1), Value::from(3)]),
        ),
        (Value::from("data"), Value::Binary(bytes)),
    ]);
    let mut inputs = ValueMap::new();
    inputs.insert("x".into(), tensor);
    let job = JobMessage {
        schema_version: 1,
        job_id: "ts-msgpack".into(),
        feature: "affine".into(),
        model: None,
        inputs,
        priority: None,
        timeout_s: None,
        metadata: ValueMap::new(),
        submitted_at_ms: None,
        queue_timeout_s: None,
        submitted_by: None,
        tenant: None,
        webhook: None,
    };
    let body = Encoding::Msgpack.encode(&job).unwrap();
    system
        .publish_raw("affine", &body, Some("application/msgpack"), None)
        .await;
    let record = system
        .wait_for_status("ts-msgpack", &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    let result: serde_json::Value = serde_json::from_str(&record["result"]).unwrap();
    // [2, 0, -1] -> [2 - 3 + 0.5, 8 - 6 - 1]
    assert_eq!(floats(&result["y"]["data"]), [-0.5, 1.0]);

    // A wrong shape is an input error, found before the model runs.
    let body = br#"{"job_id": "ts-bad-shape", "feature": "affine",
        "inputs": {"x": {"dtype": "float32", "shape": [2], "data": [1, 2]}}}"#;
    system
        .publish_raw("affine", body, Some("application/json"), None)
        .await;
    let record = system
        .wait_for_status("ts-bad-shape", &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["error_code"], "invalid_input", "{record:?}");
    assert!(
        record["error_message"].contains("must have shape [-1, 3]"),
        "{record:?}"
    );
    assert_eq!(record["attempts"], "0");

    // Load time and residency are visible in the worker's record.
    let resident = system
        .worker_field("host-a-gpu0-slot0", "resident_models")
        .await
        .unwrap();
    assert!(resident.contains("\"model\":\"affine\""), "{resident}");
}
