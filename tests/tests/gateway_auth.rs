//! Gateway authentication and authorisation against a running system: token
//! roles (a `submit` token sees only its own jobs and artifacts, admin-only
//! routes answer it 403), `?access_token=` decoding, the refusal to serve a
//! public address without tokens, and token validation at start.

use std::time::Duration;

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::http::{free_port, start_gateway, start_gateway_on, Gateway};
use reqwest::Method;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

const ALICE: &str = "alice-submit-token-0001";
const BOB: &str = "bob-submit-token-000002";
/// An admin token with the characters that need percent-encoding in a query.
const OPS: &str = "ops+admin/token=0003==";

/// No dispatcher and no tokens: the gateway alone, `echo` its only feature.
fn echo_only() -> ConfigBuilder {
    ConfigBuilder::new().echo("echo")
}

/// Alice and Bob submit, ops administers; one host serves `echo`, and
/// outputs over 1 KiB become artifacts.
fn scenario() -> ConfigBuilder {
    let tokens = [
        (ALICE, "submit", "alice"),
        (BOB, "submit", "bob"),
        (OPS, "admin", "ops"),
    ]
    .map(|(token, role, name)| {
        format!("[[gateway.tokens]]\ntoken = \"{token}\"\nrole = \"{role}\"\nname = \"{name}\"")
    });
    ConfigBuilder::one_host()
        .section(&tokens.join("\n"))
        .section("[artifacts]\ninline_max_bytes = 1024")
        .echo("echo")
}

fn code(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

async fn submit(gateway: &Gateway, token: &str, inputs: Value) -> String {
    let (status, created, _) = gateway
        .call(
            Method::POST,
            "/v1/jobs",
            Some(json!({"feature": "echo", "inputs": inputs})),
            Some(token),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created["job_id"].as_str().unwrap().to_owned()
}

async fn listed_ids(gateway: &Gateway, token: &str) -> Vec<String> {
    let (status, list, _) = gateway
        .call(Method::GET, "/v1/jobs?limit=100", None, Some(token))
        .await;
    assert_eq!(status, 200, "{list}");
    list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["job_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_token_sees_only_its_own_jobs_and_another_s_answer_404() {
    let system = scenario().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let gateway = start_gateway(&system).await;

    let alices = submit(&gateway, ALICE, json!({"secret": "alice's"})).await;
    let job = gateway.wait_final_as(&alices, Some(ALICE)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["submitted_by"], "alice", "{job}");
    let bobs = submit(&gateway, BOB, json!({"n": 1})).await;
    gateway.wait_final_as(&bobs, Some(BOB)).await;

    // Bob gets exactly what a missing job answers, on every job route.
    let (_, missing, _) = gateway
        .call(Method::GET, "/v1/jobs/no-such-job", None, Some(BOB))
        .await;
    for (method, path) in [
        (Method::GET, format!("/v1/jobs/{alices}")),
        (Method::DELETE, format!("/v1/jobs/{alices}")),
        (Method::GET, format!("/v1/jobs/{alices}/events")),
    ] {
        let (status, error, _) = gateway.call(method.clone(), &path, None, Some(BOB)).await;
        assert_eq!(
            (status, code(&error)),
            (404, Some("job_not_found")),
            "{method} {path}"
        );
        assert_eq!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .replace(&alices, "no-such-job"),
            missing["error"]["message"].as_str().unwrap()
        );
        assert!(!error.to_string().contains("alice's"), "{error}");
    }
    // Alice still reaches her own job (cancelling a finished one is 409, not 404).
    let (status, error, _) = gateway
        .call(
            Method::DELETE,
            &format!("/v1/jobs/{alices}"),
            None,
            Some(ALICE),
        )
        .await;
    assert_eq!((status, code(&error)), (409, Some("already_final")));
    let (status, _, _) = gateway
        .call(Method::GET, &format!("/v1/jobs/{alices}"), None, Some(OPS))
        .await;
    assert_eq!(status, 200, "an admin reads every job");

    // Listing: each submit token its own, the admin both.
    let listed = listed_ids(&gateway, ALICE).await;
    assert!(
        listed.contains(&alices) && !listed.contains(&bobs),
        "{listed:?}"
    );
    let listed = listed_ids(&gateway, BOB).await;
    assert!(
        listed.contains(&bobs) && !listed.contains(&alices),
        "{listed:?}"
    );
    let listed = listed_ids(&gateway, OPS).await;
    assert!(
        listed.contains(&bobs) && listed.contains(&alices),
        "{listed:?}"
    );

    // An idempotent retry returns the record to its submitter only.
    let retry = |token: &'static str| {
        gateway
            .client
            .post(format!("{}/v1/jobs", gateway.base))
            .bearer_auth(token)
            .header("Idempotency-Key", alices.clone())
            .json(&json!({"feature": "echo", "inputs": {"n": 2}}))
            .send()
    };
    let again = retry(ALICE).await.unwrap();
    assert_eq!(again.status().as_u16(), 200);
    let stolen = retry(BOB).await.unwrap();
    assert_eq!(stolen.status().as_u16(), 409);
    let stolen: Value = stolen.json().await.unwrap();
    assert_eq!(code(&stolen), Some("duplicate_job_id"));
    assert!(!stolen.to_string().contains("alice's"), "{stolen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_only_routes_answer_403_to_a_submit_token() {
    let system = scenario().system();
    let gateway = start_gateway(&system).await;
    for path in ["/v1/system", "/v1/events", "/metrics"] {
        let response = gateway
            .client
            .get(format!("{}{path}", gateway.base))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 403, "{path}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(code(&error), Some("forbidden"), "{path}");
        // Headers only: /v1/events is an endless stream.
        let response = gateway
            .client
            .get(format!("{}{path}", gateway.base))
            .bearer_auth(OPS)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
    for path in [
        "/v1/models",
        "/v1/features",
        "/readyz",
        "/openapi.json",
        "/",
    ] {
        let (status, body, _) = gateway.call(Method::GET, path, None, Some(ALICE)).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_downloadable_only_by_their_owner_and_job_outputs_by_the_submitter() {
    let system = scenario().system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let gateway = start_gateway(&system).await;
    let mesh: Vec<u8> = (0..5_000u32).map(|i| (i % 251) as u8).collect();
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(mesh.clone()).file_name("chair.glb"),
    );
    let uploaded: Value = gateway
        .client
        .post(format!("{}/v1/artifacts", gateway.base))
        .bearer_auth(ALICE)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = uploaded["artifact_id"].as_str().unwrap().to_owned();
    let download = |token: &'static str, id: String| {
        let gateway = &gateway;
        async move {
            let response = gateway
                .client
                .get(format!("{}/v1/artifacts/{id}", gateway.base))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.bytes().await.unwrap().to_vec())
        }
    };
    assert_eq!(download(ALICE, id.clone()).await, (200, mesh.clone()));
    assert_eq!(download(OPS, id.clone()).await.0, 200);
    let (status, body) = download(BOB, id.clone()).await;
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, code(&error)), (404, Some("artifact_not_found")));

    // Nor can Bob read it through a job.
    let (status, error, _) = gateway
        .call(
            Method::POST,
            "/v1/jobs",
            Some(json!({"feature": "echo", "inputs": {"mesh": {"$artifact": id}}})),
            Some(BOB),
        )
        .await;
    assert_eq!(
        (status, code(&error)),
        (422, Some("invalid_input")),
        "{error}"
    );

    // Alice's job returns the mesh as a new artifact, which is hers.
    let job_id = submit(&gateway, ALICE, json!({"mesh": {"$artifact": id}})).await;
    let job = gateway.wait_final_as(&job_id, Some(ALICE)).await;
    let output = job["result"]["mesh"]["$artifact"]
        .as_str()
        .unwrap_or_else(|| panic!("no output artifact: {job}"))
        .to_owned();
    assert_ne!(output, id);
    assert_eq!(download(ALICE, output.clone()).await, (200, mesh));
    assert_eq!(download(BOB, output).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_token_in_the_query_is_percent_decoded() {
    let system = scenario().system();
    let gateway = start_gateway(&system).await;
    let encoded: String = url_encode(OPS);
    assert!(
        encoded.contains("%2B") && encoded.contains("%3D"),
        "{encoded}"
    );
    for query in [encoded.as_str(), OPS] {
        let (status, body, _) = gateway
            .call(
                Method::GET,
                &format!("/v1/system?access_token={query}"),
                None,
                None,
            )
            .await;
        assert_eq!(status, 200, "?access_token={query}: {body}");
    }
    let (status, _, _) = gateway
        .call(
            Method::GET,
            "/v1/models?access_token=ops%2Badmin",
            None,
            None,
        )
        .await;
    assert_eq!(status, 401);
    let (status, page, _) = gateway
        .call(
            Method::GET,
            &format!("/?access_token={encoded}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
    // The dashboard page itself (its script is served from /assets).
    assert!(page
        .as_str()
        .unwrap_or_default()
        .contains("/assets/dashboard.js"));
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_public_address_without_tokens() {
    let system = echo_only().system();
    let address = format!("0.0.0.0:{}", free_port());
    let mut process = system.spawn("gpuq", &["serve", "--listen", &address]);
    let code = process.wait_exit(WAIT).unwrap();
    let log = process.log();
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {log}");
    assert!(log.contains("gateway.allow_anonymous"), "{log}");
    assert!(log.contains("gateway.tokens"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_anonymous_serves_a_public_address_with_a_warning() {
    let system = echo_only()
        .section("[gateway]\nallow_anonymous = true")
        .system();
    let gateway = start_gateway_on(&system, "0.0.0.0").await;
    let (status, ready, _) = gateway.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "ready");
    assert!(
        ready["warning"]
            .as_str()
            .is_some_and(|w| w.starts_with("anonymous access")),
        "{ready}"
    );
    let log = gateway.process.log();
    assert!(
        log.contains("WARN") && log.contains("anonymous access"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_stops_serve_naming_the_key_without_printing_the_token() {
    let short = "short-token-15c";
    let system = echo_only().system();
    // Written by hand: the harness refuses to write an invalid config.
    let bad = system.dir().join("bad-token.toml");
    std::fs::write(
        &bad,
        format!(
            "namespace = \"{}\"\n\
             [[gateway.tokens]]\ntoken = \"{ALICE}\"\nrole = \"submit\"\nname = \"alice\"\n\
             [[gateway.tokens]]\ntoken = \"{short}\"\nrole = \"admin\"\nname = \"ops\"\n",
            system.names.namespace()
        ),
    )
    .unwrap();
    let mut process = system.spawn_with_config("gpuq", &bad, &["serve", "--listen", "127.0.0.1:0"]);
    let code = process.wait_exit(WAIT).unwrap();
    let log = process.log();
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {log}");
    assert!(log.contains("gateway.tokens[1].token"), "{log}");
    assert!(!log.contains(short), "the token is printed: {log}");
}
