//! The least-privilege Redis user of docs/reliability.md works: a dispatcher,
//! its worker and the CLI run a job end to end (submit, complete, list, cancel)
//! as that user, the user cannot touch keys outside its namespace, and Redis
//! refused none of gpuq's commands on the way.

use std::time::Duration;

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::{first_line, redis_url, TestSystem};

const WAIT: Duration = Duration::from_secs(60);

/// One host serving `echo`, and a `huge` model that fits no GPU: its jobs
/// stay queued until cancelled.
fn scenario() -> ConfigBuilder {
    ConfigBuilder::new()
        .host("host-a")
        .gpu(16384)
        .echo("echo")
        .model("huge", "sleep", 999999)
}

/// The `ACL SETUSER` words of the documented example (namespace `gpuq`).
fn documented_acl_rules() -> Vec<String> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reliability.md"),
    )
    .unwrap();
    let start = doc
        .find("\nACL SETUSER gpuq ")
        .expect("docs/reliability.md shows `ACL SETUSER gpuq ...`");
    let block = &doc[start + 1..];
    let block = &block[..block.find("```").expect("the example's code block ends")];
    let words: Vec<String> = block.split_whitespace().map(str::to_owned).collect();
    assert_eq!(words[..3], ["ACL", "SETUSER", "gpuq"]);
    words[3..].to_vec()
}

/// The documented rules for `namespace`, with `password`.
fn rules_for(namespace: &str, password: &str) -> Vec<String> {
    documented_acl_rules()
        .into_iter()
        .map(|word| match word.as_str() {
            "~gpuq:*" => format!("~{namespace}:*"),
            "&gpuq:*" => format!("&{namespace}:*"),
            w if w.starts_with('>') => format!(">{password}"),
            _ => word,
        })
        .collect()
}

/// A Redis user that exists while the guard lives, deleted even when the test fails.
struct AclUser {
    name: String,
    admin: redis::Client,
}

impl AclUser {
    fn create(name: &str, rules: &[String]) -> AclUser {
        let admin = redis::Client::open(redis_url()).unwrap();
        let mut connection = admin.get_connection().unwrap();
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(name)
            .arg(rules)
            .query::<()>(&mut connection)
            .unwrap_or_else(|e| panic!("the documented ACL rules are refused: {e}"));
        AclUser {
            name: name.to_owned(),
            admin,
        }
    }

    /// Commands Redis refused this user (`ACL LOG`), as "reason object context".
    fn refusals(&self) -> Vec<String> {
        let mut connection = self.admin.get_connection().unwrap();
        let log: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("ACL")
            .arg("LOG")
            .arg(1000)
            .query(&mut connection)
            .unwrap();
        let text = |value: Option<&redis::Value>| match value {
            Some(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            Some(redis::Value::SimpleString(s)) => s.clone(),
            Some(other) => format!("{other:?}"),
            None => String::new(),
        };
        log.iter()
            .filter(|entry| text(entry.get("username")) == self.name)
            .map(|entry| {
                format!(
                    "{} {} ({})",
                    text(entry.get("reason")),
                    text(entry.get("object")),
                    text(entry.get("context"))
                )
            })
            .collect()
    }
}

impl Drop for AclUser {
    fn drop(&mut self) {
        if let Ok(mut connection) = self.admin.get_connection() {
            let _: Result<(), _> = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(&self.name)
                .query(&mut connection);
        }
    }
}

/// The test Redis URL with `user:password` as its credentials.
fn url_for(user: &str, password: &str) -> String {
    let url = redis_url();
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:{password}@{host}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_redis_acl_runs_a_job_end_to_end_and_denies_other_keys() {
    // The system's own client (checks, clean-up) stays the admin; the gpuq
    // processes get a config that logs in as the restricted user.
    let system = scenario().system();
    let namespace = system.names.namespace().to_owned();
    let user_name = format!("gpuq-acl-{namespace}");
    let password = uuid::Uuid::new_v4().simple().to_string();
    let user = AclUser::create(&user_name, &rules_for(&namespace, &password));
    let url = url_for(&user_name, &password);
    let config = system.extra_config(
        "acl.toml",
        &scenario()
            .section(&format!("redis_url = \"{url}\""))
            .section(GATEWAY_TOKEN_CONFIG)
            .build(),
    );

    let _dispatcher = system.spawn_with_config("gpuq-dispatcher", &config, &[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;

    // Submit and complete.
    let output = system.gpuq_with_config(
        &config,
        &["submit", "echo", "--input", "text=acl", "--wait"],
        WAIT,
    );
    assert!(
        output.status.success(),
        "submit as the ACL user failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let done = first_line(&output);
    assert_eq!(system.job_hash(&done).await["status"], "completed");

    // List.
    let output = system.gpuq_with_config(&config, &["jobs", "--feature", "echo", "--json"], WAIT);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&done),
        "the listing lacks {done}"
    );

    // Cancel a job that is still queued.
    let output = system.gpuq_with_config(&config, &["submit", "huge"], WAIT);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let queued = first_line(&output);
    let output = system.gpuq_with_config(&config, &["cancel", &queued], WAIT);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let record = system.wait_for_status(&queued, &["cancelled"], WAIT).await;
    assert_eq!(record["status"], "cancelled");

    // The gateway as the same user, with a submit token: an upload (its
    // owner record), a job that reads it, the submitter's listing and the
    // job's event stream (the shared subscription).
    gateway_runs_as_the_user(&system, &config).await;

    let refusals = user.refusals();
    assert!(
        refusals.is_empty(),
        "Redis refused gpuq commands for the documented user: {refusals:?}"
    );
    // The worker's own writes went through as that user too (its heartbeat).
    assert!(
        system
            .worker_field("host-a-gpu0-slot0", "pid")
            .await
            .is_some(),
        "no worker record"
    );

    // Outside its namespace: NOPERM, for reads, writes and KEYS alike.
    let restricted = redis::Client::open(url.as_str()).unwrap();
    let mut connection = restricted.get_multiplexed_async_connection().await.unwrap();
    let outside = format!("other-{namespace}:job:x");
    for command in [
        redis::cmd("GET").arg(&outside).clone(),
        redis::cmd("HSET").arg(&outside).arg("f").arg("v").clone(),
        redis::cmd("KEYS").arg("*").clone(),
    ] {
        let error = command
            .query_async::<redis::Value>(&mut connection)
            .await
            .expect_err("a command outside the namespace was allowed");
        assert!(
            error.to_string().contains("NOPERM") || error.code() == Some("NOPERM"),
            "{error}"
        );
    }
}

const ACL_TOKEN: &str = "acl-submit-token-000001";

const GATEWAY_TOKEN_CONFIG: &str = r#"
[[gateway.tokens]]
token = "acl-submit-token-000001"
role = "submit"
name = "acl"

# Quotas run inside the record script (a count and a token bucket on Redis's
# clock), so they must pass the documented ACL too.
[tenants.default]
max_queued = 1000
rate_per_s = 1000
[tenants.acl]
max_queued = 1000
rate_per_s = 1000
"#;

async fn gateway_runs_as_the_user(system: &TestSystem, config: &std::path::Path) {
    use serde_json::{json, Value};
    let gateway = gpuq_integration_tests::http::start_gateway_with_config(system, config).await;
    let (base, client) = (&gateway.base, &gateway.client);
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![7u8; 4096]).file_name("part.bin"),
    );
    let uploaded: Value = client
        .post(format!("{base}/v1/artifacts"))
        .bearer_auth(ACL_TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let artifact = uploaded["artifact_id"].as_str().unwrap_or_else(|| {
        panic!(
            "upload failed as the ACL user: {uploaded} {}",
            gateway.process.log()
        )
    });
    let created: Value = client
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(ACL_TOKEN)
        .json(&json!({"feature": "echo", "inputs": {"part": {"$artifact": artifact}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    let record = system
        .wait_for_status(&id, &["completed", "failed"], WAIT)
        .await;
    assert_eq!(record["status"], "completed", "{record:?}");
    assert_eq!(record["submitted_by"], "acl");
    let listing: Value = client
        .get(format!("{base}/v1/jobs?feature=echo"))
        .bearer_auth(ACL_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        listing["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["job_id"] == id.as_str()),
        "{listing}"
    );
    // The stream of a final job: its current state, then the end.
    let events = tokio::time::timeout(
        WAIT,
        client
            .get(format!("{base}/v1/jobs/{id}/events"))
            .bearer_auth(ACL_TOKEN)
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(events.status().as_u16(), 200);
    let text = tokio::time::timeout(WAIT, events.text())
        .await
        .unwrap()
        .unwrap();
    assert!(text.contains("event: completed"), "{text}");
}
