//! The HTTP gateway (`gpuq serve`) against a running system: every route, the
//! error codes, idempotent retries, auth on and off, Server-Sent Events and
//! backpressure.

use std::time::Duration;

use futures_util::StreamExt;
use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::http::start_gateway;
use gpuq_integration_tests::TestSystem;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn scenario() -> ConfigBuilder {
    ConfigBuilder::one_host()
        .section("[gateway]\nmax_queue_depth = 1")
        .echo("echo")
        .model("sleep", "sleep", 256)
        .model("huge", "echo", 999_999)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_with_the_documented_codes() {
    use reqwest::Method;
    let system = scenario().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let gateway = start_gateway(&system).await;

    let (status, created, _) = gateway
        .call(
            Method::POST,
            "/v1/jobs",
            Some(json!({"feature": "echo", "inputs": {"prompt": "a chair"}})),
            None,
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["job_id"].as_str().unwrap().to_owned();
    let job = gateway.wait_final(&id).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["result"]["prompt"], "a chair");

    // Idempotent retry: the same key twice is one job, run once.
    let first = gateway
        .client
        .post(format!("{}/v1/jobs", gateway.base))
        .header("Idempotency-Key", "retry-me-1")
        .json(&json!({"feature": "echo", "inputs": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 201);
    gateway.wait_final("retry-me-1").await;
    let again = gateway
        .client
        .post(format!("{}/v1/jobs", gateway.base))
        .header("Idempotency-Key", "retry-me-1")
        .json(&json!({"feature": "echo", "inputs": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        (
            again["job_id"].as_str(),
            again["status"].as_str(),
            again["attempts"].as_u64()
        ),
        (Some("retry-me-1"), Some("completed"), Some(1))
    );

    let (status, error, _) = gateway
        .call(Method::GET, "/v1/jobs/no-such-job", None, None)
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (404, Some("job_not_found"))
    );
    let (status, error, _) = gateway
        .call(
            Method::POST,
            "/v1/jobs",
            Some(json!({"feature": "nope"})),
            None,
        )
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("unknown_feature")),
        "{error}"
    );
    let (status, error, _) = gateway
        .call(Method::POST, "/v1/jobs", Some(json!({"inputs": {}})), None)
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("invalid_request")),
        "{error}"
    );
    let (status, error, _) = gateway
        .call(
            Method::POST,
            "/v1/jobs",
            Some(json!({"feature": "echo", "priority": 42})),
            None,
        )
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("invalid_parameter")),
        "{error}"
    );
    let (status, error, _) = gateway
        .call(Method::DELETE, &format!("/v1/jobs/{id}"), None, None)
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (409, Some("already_final"))
    );
    let (status, _, _) = gateway
        .call(Method::DELETE, "/v1/jobs/no-such-job", None, None)
        .await;
    assert_eq!(status, 404);

    // Cancel a queued job (its model has no consumer).
    let (_, created, _) = gateway
        .call(
            Method::POST,
            "/v1/jobs",
            Some(json!({"feature": "huge"})),
            None,
        )
        .await;
    let queued = created["job_id"].as_str().unwrap().to_owned();
    // Backpressure: the queue holds max_queue_depth jobs already.
    let mut full = (0, Value::Null, reqwest::header::HeaderMap::new());
    for _ in 0..50 {
        full = gateway
            .call(
                Method::POST,
                "/v1/jobs",
                Some(json!({"feature": "huge"})),
                None,
            )
            .await;
        if full.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (full.0, full.1["error"]["code"].as_str()),
        (503, Some("queue_full")),
        "{}",
        full.1
    );
    assert_eq!(full.2.get("retry-after").unwrap(), "5");
    let (status, cancelled, _) = gateway
        .call(Method::DELETE, &format!("/v1/jobs/{queued}"), None, None)
        .await;
    assert_eq!(
        (
            status,
            cancelled["status"].as_str(),
            cancelled["was"].as_str()
        ),
        (200, Some("cancelled"), Some("queued"))
    );

    let (status, models, _) = gateway.call(Method::GET, "/v1/models", None, None).await;
    assert_eq!(status, 200);
    let echo = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "echo")
        .unwrap();
    assert_eq!(echo["served_by"], json!(["host-a"]));
    let huge = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "huge")
        .unwrap();
    assert_eq!(huge["served_by"], json!([]));
    let (status, features, _) = gateway.call(Method::GET, "/v1/features", None, None).await;
    assert_eq!(
        (status, features["features"].as_array().unwrap().len()),
        (200, 3)
    );
    let (status, system_view, _) = gateway.call(Method::GET, "/v1/system", None, None).await;
    assert_eq!(
        (status, system_view["hosts"][0]["host_id"].as_str()),
        (200, Some("host-a"))
    );
    // Recent jobs, newest first, with filters; the CLI shows the same.
    let (status, listed, _) = gateway
        .call(
            Method::GET,
            "/v1/jobs?status=completed&feature=echo",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["retry-me-1", id.as_str()], "{listed}");
    let (status, listed, _) = gateway
        .call(Method::GET, "/v1/jobs?status=cancelled", None, None)
        .await;
    assert_eq!(
        (status, listed["jobs"][0]["job_id"].as_str()),
        (200, Some(queued.as_str()))
    );
    let (status, _, _) = gateway
        .call(Method::GET, "/v1/jobs?status=sleeping", None, None)
        .await;
    assert_eq!(status, 422);
    let output = system.gpuq(&["jobs", "--status", "completed"], WAIT);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.lines()
            .next()
            .unwrap_or_default()
            .starts_with("retry-me-1  completed"),
        "{text}"
    );

    let (status, ready, _) = gateway.call(Method::GET, "/readyz", None, None).await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_only_healthz_answers_without_one() {
    use reqwest::Method;
    let system = TestSystem::new(&scenario().build().replace(
        "[gateway]\n",
        "[gateway]\ntokens = [\"s3cret-token-0123456789\"]\n",
    ));
    let gateway = start_gateway(&system).await;
    let (status, body, _) = gateway.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, body), (200, Value::String("ok".into())));
    for path in ["/v1/system", "/v1/models", "/v1/jobs/x", "/readyz"] {
        let (status, error, _) = gateway.call(Method::GET, path, None, None).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{path}"
        );
        let (status, _, _) = gateway.call(Method::GET, path, None, Some("wrong")).await;
        assert_eq!(status, 401, "{path}");
    }
    let (status, _, _) = gateway
        .call(
            Method::POST,
            "/v1/jobs",
            Some(json!({"feature": "echo"})),
            None,
        )
        .await;
    assert_eq!(status, 401);
    let (status, _, _) = gateway
        .call(
            Method::GET,
            "/v1/models",
            None,
            Some("s3cret-token-0123456789"),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_deliver_a_jobs_transitions_until_it_ends() {
    let system = scenario().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;
    let gateway = start_gateway(&system).await;

    let (_, created, _) = gateway
        .call(
            reqwest::Method::POST,
            "/v1/jobs",
            Some(json!({"feature": "sleep", "inputs": {"duration_ms": 800}})),
            None,
        )
        .await;
    let id = created["job_id"].as_str().unwrap().to_owned();
    let response = gateway
        .client
        .get(format!("{}/v1/jobs/{id}/events", gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let read = tokio::time::timeout(WAIT, async {
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the stream did not end after the final event: {text}"
    );
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert!(names.contains(&"processing"), "{text}");
    assert_eq!(names.last(), Some(&"completed"), "{text}");
    assert!(
        text.contains("\"progress\":0.5"),
        "progress events too: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_megabyte_artifact_uploads_feeds_a_job_and_downloads_intact() {
    let system = scenario().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let gateway = start_gateway(&system).await;

    let mesh: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(mesh.clone()).file_name("chair.glb"),
    );
    let response = gateway
        .client
        .post(format!("{}/v1/artifacts", gateway.base))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let uploaded: Value = response.json().await.unwrap();
    assert_eq!(uploaded["size_bytes"], 3_000_000);
    let id = uploaded["artifact_id"].as_str().unwrap().to_owned();

    // The echo model gets the bytes and returns them: a new artifact, same content.
    let (status, created, _) = gateway
        .call(
            reqwest::Method::POST,
            "/v1/jobs",
            Some(json!({"feature": "echo", "inputs": {"mesh": {"$artifact": id}}})),
            None,
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let job = gateway
        .wait_final(created["job_id"].as_str().unwrap())
        .await;
    let returned = job["result"]["mesh"]["$artifact"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(returned, id);
    let downloaded = gateway
        .client
        .get(format!("{}/v1/artifacts/{returned}", gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(downloaded.status().as_u16(), 200);
    assert_eq!(downloaded.bytes().await.unwrap().to_vec(), mesh);

    let (status, error, _) = gateway
        .call(
            reqwest::Method::GET,
            "/v1/artifacts/art_missing",
            None,
            None,
        )
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (404, Some("artifact_not_found"))
    );
    let (status, _, _) = gateway
        .call(
            reqwest::Method::GET,
            "/v1/artifacts/..%2F..%2Fetc%2Fpasswd",
            None,
            None,
        )
        .await;
    assert_eq!(status, 422);
}
