//! Tenant identity end to end (issue 15, first slice): a job belongs to a
//! tenant, taken from the gateway token's name (never the body of a `submit`
//! token), from `gpuq submit --tenant` or `jobs.default_tenant`, or from the
//! `tenant` field an AMQP publisher sends; it is in the job's record, in its
//! status events and in the per-tenant index that `gpuq jobs --tenant` and
//! `GET /v1/jobs?tenant=` read. An invalid tenant fails `invalid_parameter`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::http::{start_gateway, Gateway};
use gpuq_integration_tests::jobs::{publish, submit};
use gpuq_integration_tests::{redis_url, TestSystem};
use reqwest::Method;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

const ALICE: &str = "alice-submit-token-0001";
const OPS: &str = "ops-admin-token-00000003";

/// Every event published on the system's events channel while it lives.
struct Events {
    seen: Arc<Mutex<Vec<Value>>>,
    /// Dropped with `Events`: ends the subscription's task.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Events {
    async fn subscribe(system: &TestSystem) -> Events {
        let client = redis::Client::open(redis_url()).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub
            .subscribe(system.names.events_channel())
            .await
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            loop {
                let message = tokio::select! {
                    _ = &mut stopped => break,
                    message = messages.next() => message,
                };
                let Some(message) = message else { break };
                let payload: String = message.get_payload().unwrap_or_default();
                if let Ok(event) = serde_json::from_str(&payload) {
                    sink.lock().unwrap().push(event);
                }
            }
        });
        Events { seen, _stop: stop }
    }

    /// The events of one job, in order.
    fn of(&self, job_id: &str) -> Vec<Value> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|e| e["job_id"] == job_id)
            .cloned()
            .collect()
    }
}

async fn list(gateway: &Gateway, query: &str, token: &str) -> (u16, Vec<Value>, Value) {
    let (status, body, _) = gateway.call(Method::GET, query, None, Some(token)).await;
    let jobs = body["jobs"].as_array().cloned().unwrap_or_default();
    (status, jobs, body)
}

fn ids(jobs: &[Value]) -> Vec<&str> {
    jobs.iter().map(|j| j["job_id"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_takes_the_tenant_from_the_token_and_lists_by_tenant() {
    let tokens = [(ALICE, "submit", "alice"), (OPS, "admin", "ops")].map(|(t, r, n)| {
        format!("[[gateway.tokens]]\ntoken = \"{t}\"\nrole = \"{r}\"\nname = \"{n}\"")
    });
    let system = ConfigBuilder::one_host()
        .section(&tokens.join("\n"))
        .echo("echo")
        .system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let gateway = start_gateway(&system).await;
    let events = Events::subscribe(&system).await;

    // Alice's job is alice's, in its record and in every event.
    let (status, created, _) = gateway
        .call(
            Method::POST,
            "/v1/jobs",
            Some(json!({"feature": "echo", "inputs": {"n": 1}})),
            Some(ALICE),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let alices = created["job_id"].as_str().unwrap().to_owned();
    let job = gateway.wait_final_as(&alices, Some(ALICE)).await;
    assert_eq!(
        (job["status"].as_str(), job["tenant"].as_str()),
        (Some("completed"), Some("alice")),
        "{job}"
    );
    assert_eq!(system.job_hash(&alices).await["tenant"], "alice");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = events.of(&alices);
    let statuses: Vec<&str> = seen.iter().filter_map(|e| e["status"].as_str()).collect();
    assert_eq!(statuses, ["queued", "processing", "completed"], "{seen:?}");
    assert!(seen.iter().all(|e| e["tenant"] == "alice"), "{seen:?}");

    // A submit token may not name a tenant, not even its own.
    for tenant in ["bob", "alice"] {
        let (status, refused, _) = gateway
            .call(
                Method::POST,
                "/v1/jobs",
                Some(json!({"feature": "echo", "tenant": tenant})),
                Some(ALICE),
            )
            .await;
        assert_eq!(status, 400, "{refused}");
        assert_eq!(refused["error"]["code"], "invalid_request");
        assert!(refused.to_string().contains("'tenant'"), "{refused}");
    }
    // An admin may; its own jobs are its name's.
    let mut admin_jobs = Vec::new();
    for body in [
        json!({"feature": "echo", "tenant": "team-x"}),
        json!({"feature": "echo"}),
    ] {
        let (status, created, _) = gateway
            .call(Method::POST, "/v1/jobs", Some(body), Some(OPS))
            .await;
        assert_eq!(status, 201, "{created}");
        admin_jobs.push(created["job_id"].as_str().unwrap().to_owned());
    }
    for (id, tenant) in admin_jobs.iter().zip(["team-x", "ops"]) {
        let job = gateway.wait_final_as(id, Some(OPS)).await;
        assert_eq!(job["tenant"], tenant, "{job}");
    }

    // Listing by tenant: only that tenant's jobs; a submit token its own only.
    let (status, jobs, body) = list(&gateway, "/v1/jobs?tenant=alice", OPS).await;
    assert_eq!((status, ids(&jobs)), (200, vec![alices.as_str()]), "{body}");
    let (_, jobs, _) = list(&gateway, "/v1/jobs?tenant=team-x", OPS).await;
    assert_eq!(ids(&jobs), vec![admin_jobs[0].as_str()]);
    assert!(jobs.iter().all(|j| j["tenant"] == "team-x"));
    let (_, jobs, _) = list(&gateway, "/v1/jobs?tenant=team-x", ALICE).await;
    assert!(jobs.is_empty(), "{jobs:?}");
    let (_, jobs, _) = list(&gateway, "/v1/jobs?tenant=alice", ALICE).await;
    assert_eq!(ids(&jobs), vec![alices.as_str()]);
    let (status, _, body) = list(&gateway, "/v1/jobs?tenant=a%20b", OPS).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_request"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_amqp_publishers_set_the_tenant_and_the_cli_lists_by_it() {
    let system = ConfigBuilder::one_host().echo("echo").system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;

    // The CLI: --tenant, else jobs.default_tenant ("default").
    let cli_submit = |tenant: Option<&str>| {
        let mut args = vec!["submit", "echo", "--wait", "--json"];
        if let Some(tenant) = tenant {
            args.extend(["--tenant", tenant]);
        }
        let output = system.gpuq(&args, WAIT);
        assert!(output.status.success(), "{output:?}");
        // The job id on the first line, then the final record as JSON.
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (_, record) = stdout.split_once('\n').unwrap();
        serde_json::from_str::<Value>(record).unwrap()
    };
    let bobs = cli_submit(Some("bob"));
    assert_eq!(bobs["tenant"], "bob", "{bobs}");
    let bobs = bobs["job_id"].as_str().unwrap().to_owned();
    assert_eq!(system.job_hash(&bobs).await["tenant"], "bob");
    let plain = cli_submit(None);
    assert_eq!(plain["tenant"], "default", "{plain}");
    let refused = system.gpuq(&["submit", "echo", "--tenant", "no good"], WAIT);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("invalid_parameter") && stderr.contains("tenant"),
        "{stderr}"
    );

    // A raw JSON publish: the body's tenant, else "default"; an invalid one fails.
    let carols = format!("{}-carol", system.names.namespace());
    let record = submit(&system, "echo", &carols, r#", "tenant": "carol""#).await;
    assert_eq!(
        (record["status"].as_str(), record["tenant"].as_str()),
        ("completed", "carol")
    );
    let anonymous = format!("{}-none", system.names.namespace());
    let record = submit(&system, "echo", &anonymous, "").await;
    assert_eq!(record["tenant"], "default");
    let bad = format!("{}-bad", system.names.namespace());
    publish(&system, "echo", &bad, r#", "tenant": "a:b""#).await;
    let record = system.wait_for_status(&bad, &["failed"], WAIT).await;
    assert_eq!(record["error_code"], "invalid_parameter", "{record:?}");
    assert!(record["error_message"].contains("tenant"), "{record:?}");
    assert_eq!(
        record.get("tenant"),
        None,
        "an invalid tenant is never recorded"
    );

    // `gpuq jobs --tenant`: that tenant's jobs only.
    let listed = |tenant: &str| {
        let output = system.gpuq(&["jobs", "--tenant", tenant, "--json"], WAIT);
        assert!(output.status.success(), "{output:?}");
        let jobs: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
        jobs.iter()
            .map(|j| j["job_id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(listed("carol"), vec![carols]);
    assert_eq!(listed("bob"), vec![bobs]);
    let defaults = listed("default");
    assert_eq!(defaults.len(), 2, "{defaults:?}");
    assert!(defaults.contains(&anonymous), "{defaults:?}");
}
