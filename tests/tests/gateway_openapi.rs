//! The gateway's OpenAPI document matches its router, and the gateway counts
//! its own requests.

use std::time::Duration;

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::http::start_gateway;

fn scenario() -> ConfigBuilder {
    ConfigBuilder::new().echo("echo")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_the_routes_that_answer() {
    let system = scenario().system();
    let gateway = start_gateway(&system).await;
    let (status, doc, _) = gateway
        .call(reqwest::Method::GET, "/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    let mut documented: Vec<String> = Vec::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
            // Every documented route is routed: an unrouted path gives axum's empty
            // 404 or a 405; ours always answer with a body.
            let url = format!("{}{}", gateway.base, path.replace("{id}", "x"));
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = gateway
                .client
                .request(method, &url)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            let Ok(response) = response else { continue }; // event streams stay open: routed
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            assert!(
                status != 405 && !(status == 404 && body.is_empty()),
                "{path} is documented but not routed ({status})"
            );
        }
    }
    documented.sort();
    let mut routed = vec![
        "GET /",
        "GET /healthz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /readyz",
        "GET /v1/artifacts/{id}",
        "GET /v1/events",
        "GET /v1/features",
        "GET /v1/jobs",
        "GET /v1/jobs/{id}",
        "GET /v1/jobs/{id}/events",
        "GET /v1/models",
        "GET /v1/system",
        "GET /v1/history",
        "GET /jobs/{id}",
        "GET /assets/{name}",
        "POST /v1/artifacts",
        "POST /v1/jobs",
        "DELETE /v1/jobs/{id}",
    ];
    routed.sort();
    assert_eq!(
        documented, routed,
        "the router (src/gateway/mod.rs) and openapi.json disagree"
    );

    // The gateway counts its own requests.
    let (status, text, _) = gateway
        .call(reqwest::Method::GET, "/metrics", None, None)
        .await;
    assert_eq!(status, 200);
    let text = text.as_str().unwrap().to_owned();
    assert!(
        text.contains(
            r#"gpuq_gateway_requests_total{method="GET",route="/openapi.json",status="200"} 2"#
        ),
        "{text}"
    );
}
