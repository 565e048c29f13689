//! Backlog-aware placement with real processes: two dispatchers share one
//! placement (one lease holder), the workers follow a backlog that moves from
//! one model to another without restarting, and no job is lost or run twice.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use gpuq_common::record::Assignment;
use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::{eventually, TestSystem};

const WAIT: Duration = Duration::from_secs(60);

/// Two synthetic models of 10 GiB (`a` and `b`, 400 ms to load, 150 ms a
/// job, every run logged to `run_log`): a 16 GiB worker holds one at a time.
fn host(host_id: &str, run_log: &Path) -> ConfigBuilder {
    let mut host = ConfigBuilder::new()
        .section(
            "[placement]\ninterval_ms = 200\nmin_residency_ms = 1000\nmax_queue_wait_ms = 10000",
        )
        .host(host_id)
        .dispatcher("vram_reserve_mib = 0")
        .gpu(16384);
    for model in ["a", "b"] {
        host = host
            .sleep_model(model, 10240, 150)
            .params("load_ms = 400")
            .run_log(run_log);
    }
    host
}

const WORKERS: [&str; 2] = ["host-a-gpu0-slot0", "host-b-gpu0-slot0"];

async fn assignment(system: &TestSystem, worker: &str) -> Option<Assignment> {
    let mut redis = system.redis().await;
    let json: Option<String> = redis::cmd("GET")
        .arg(system.names.assignment_key(worker))
        .query_async(&mut redis)
        .await
        .unwrap();
    json.map(|j| serde_json::from_str(&j).unwrap())
}

async fn lease_holder(system: &TestSystem) -> Option<String> {
    let mut redis = system.redis().await;
    redis::cmd("GET")
        .arg(system.names.placement_lease())
        .query_async(&mut redis)
        .await
        .unwrap()
}

async fn submit(system: &TestSystem, model: &str, ids: &[String]) {
    for id in ids {
        let body =
            format!(r#"{{"job_id": "{id}", "feature": "{model}", "inputs": {{"tag": "{id}"}}}}"#);
        system
            .publish_raw(model, body.as_bytes(), Some("application/json"), None)
            .await;
    }
}

/// Waits until both workers' main model is `model`, and returns their pids.
async fn both_workers_on(system: &TestSystem, model: &str) {
    eventually(&format!("both workers placed on {model}"), WAIT, || async {
        for worker in WORKERS {
            let main = assignment(system, worker).await.and_then(|a| a.main);
            if main.as_deref() != Some(model) {
                return false;
            }
        }
        true
    })
    .await;
}

async fn worker_pids(system: &TestSystem) -> Vec<String> {
    let mut pids = Vec::new();
    for worker in WORKERS {
        pids.push(system.worker_field(worker, "pid").await.unwrap_or_default());
    }
    pids
}

/// Waits for every job to end; returns the hosts that ran them.
async fn all_completed(system: &TestSystem, ids: &[String]) -> HashSet<String> {
    let mut hosts = HashSet::new();
    for id in ids {
        let record = system
            .wait_for_status(id, &["completed", "failed", "timed_out"], WAIT)
            .await;
        assert_eq!(record["status"], "completed", "{id}: {record:?}");
        hosts.insert(record["host"].clone());
    }
    hosts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_two_hosts_follow_the_backlog_without_losing_or_repeating_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let run_log = dir.path().join("runs.log");
    let system = host("host-a", &run_log).system();
    let second = system.extra_config("host-b.toml", &host("host-b", &run_log).build());
    let host_a = system.dispatcher(&[]);
    let host_b = system.spawn_with_config("gpuq-dispatcher", &second, &[]);
    eventually("both workers assigned by one dispatcher", WAIT, || async {
        let mut by = HashSet::new();
        for worker in WORKERS {
            match assignment(&system, worker).await {
                Some(a) => by.insert(a.by),
                None => return false,
            };
        }
        by.len() == 1 && lease_holder(&system).await.is_some_and(|h| by.contains(&h))
    })
    .await;
    let pids = worker_pids(&system).await;

    // A backlog on a: both workers load a and work it down.
    let first: Vec<String> = (0..40).map(|i| format!("a-{i}")).collect();
    submit(&system, "a", &first).await;
    both_workers_on(&system, "a").await;
    let hosts = all_completed(&system, &first).await;
    assert_eq!(hosts.len(), 2, "both hosts ran a's jobs: {hosts:?}");

    // The backlog moves to b: the same worker processes switch to b.
    let second_batch: Vec<String> = (0..40).map(|i| format!("b-{i}")).collect();
    submit(&system, "b", &second_batch).await;
    both_workers_on(&system, "b").await;
    let hosts = all_completed(&system, &second_batch).await;
    assert_eq!(hosts.len(), 2, "both hosts ran b's jobs: {hosts:?}");
    assert_eq!(worker_pids(&system).await, pids, "no worker restarted");

    // Every job ran exactly once.
    let log = std::fs::read_to_string(dir.path().join("runs.log")).unwrap();
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for line in log.lines() {
        let tag = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        *runs.entry(tag).or_default() += 1;
    }
    for id in first.iter().chain(&second_batch) {
        assert_eq!(runs.get(id), Some(&1), "{id} ran {:?} times", runs.get(id));
    }
    assert_eq!(runs.len(), first.len() + second_batch.len());

    // The lease holder stops: the other dispatcher takes placement over.
    let holder = lease_holder(&system).await.unwrap();
    let survivor = if holder == "host-a" {
        "host-b"
    } else {
        "host-a"
    };
    if holder == "host-a" {
        drop(host_a);
    } else {
        drop(host_b);
    }
    eventually("the other dispatcher holds the lease", WAIT, || async {
        lease_holder(&system).await.as_deref() == Some(survivor)
    })
    .await;
    let worker = format!("{survivor}-gpu0-slot0");
    eventually(
        "the survivor renews its worker's assignment",
        WAIT,
        || async {
            assignment(&system, &worker)
                .await
                .is_some_and(|a| a.by == survivor)
        },
    )
    .await;
}

/// Writes a worker's assignment as any Redis client could, and announces it.
async fn assign(system: &TestSystem, worker: &str, models: &[&str]) {
    let assignment = Assignment {
        models: models.iter().map(|m| m.to_string()).collect(),
        main: models.first().map(|m| m.to_string()),
        by: "test".into(),
        decided_ms: gpuq_common::now_ms(),
    };
    let mut redis = system.redis().await;
    let _: () = redis::cmd("SET")
        .arg(system.names.assignment_key(worker))
        .arg(serde_json::to_string(&assignment).unwrap())
        .arg("PX")
        .arg(60_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::cmd("PUBLISH")
        .arg(system.names.assignments_channel())
        .arg(worker)
        .query_async(&mut redis)
        .await
        .unwrap();
}

async fn consumers(system: &TestSystem, model: &str) -> (u32, u32) {
    system
        .queue_depth(&system.names.model_queue(model))
        .await
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_follows_its_assignment_and_gives_back_the_jobs_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let run_log = dir.path().join("runs.log");
    let system = host("solo", &run_log).system();
    let first = system.spawn("gpuq-worker", &["--worker-id", "w1", "--host-id", "solo"]);
    // No assignment yet: it consumes every model it can serve.
    system
        .wait_for_consumers(&system.names.model_queue("a"), 1, WAIT)
        .await;
    system
        .wait_for_consumers(&system.names.model_queue("b"), 1, WAIT)
        .await;
    let pid = system.worker_field("w1", "pid").await;

    assign(&system, "w1", &["a"]).await;
    eventually("w1 stops consuming b", WAIT, || async {
        consumers(&system, "b").await.1 == 0 && consumers(&system, "a").await.1 == 1
    })
    .await;

    // Busy on a long job of a, holding one job of b when b is taken away.
    assign(&system, "w1", &["a", "b"]).await;
    system
        .wait_for_consumers(&system.names.model_queue("b"), 1, WAIT)
        .await;
    let body =
        r#"{"job_id": "long-a", "feature": "a", "inputs": {"tag": "long-a", "duration_ms": 3000}}"#;
    system
        .publish_raw("a", body.as_bytes(), Some("application/json"), None)
        .await;
    system
        .wait_for_status("long-a", &["processing"], WAIT)
        .await;
    let b_jobs: Vec<String> = (0..3).map(|i| format!("b-{i}")).collect();
    submit(&system, "b", &b_jobs).await;
    eventually("w1 holds a job of b", WAIT, || async {
        system
            .worker_field("w1", "waiting")
            .await
            .is_some_and(|w| w.contains("\"b\":1"))
    })
    .await;
    assign(&system, "w1", &["a"]).await;
    eventually("the held job is back in b's queue", WAIT, || async {
        consumers(&system, "b").await == (3, 0)
    })
    .await;

    // Another worker serves b; every job runs once, and w1 never restarted.
    let _second = system.spawn(
        "gpuq-worker",
        &["--worker-id", "w2", "--host-id", "solo", "--models", "b"],
    );
    all_completed(&system, &b_jobs).await;
    all_completed(&system, &["long-a".to_string()]).await;
    for id in &b_jobs {
        assert_eq!(system.job_hash(id).await["worker"], "w2", "{id}");
    }
    let log = std::fs::read_to_string(&run_log).unwrap();
    let mut tags: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, ["b-0", "b-1", "b-2", "long-a"]);
    assert_eq!(
        system.worker_field("w1", "pid").await,
        pid,
        "w1 did not restart"
    );

    // Without an assignment (expired or deleted), it consumes everything again.
    let mut redis = system.redis().await;
    let _: () = redis::cmd("DEL")
        .arg(system.names.assignment_key("w1"))
        .query_async(&mut redis)
        .await
        .unwrap();
    eventually("w1 consumes b again", WAIT, || async {
        consumers(&system, "b").await.1 == 2
    })
    .await;
    drop(first);
}
