//! High availability on a real 3-node RabbitMQ cluster (`scripts/cluster.sh`):
//! jobs keep flowing, none is lost and none completes twice, while the node
//! leading the model queue and then a node a dispatcher is connected to are
//! stopped and started again; and a node lost for good leaves a queue that
//! the other two keep serving. Skipped (with a message) where RabbitMQ is
//! not installed. Each test prints its figures.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gpuq_integration_tests::cluster::LocalCluster;
use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::jobs::run_counts as runs;
use gpuq_integration_tests::TestSystem;

const CLI_JOBS: usize = 300;
const PIKA_JOBS: usize = 300;
const PUBLISH_WINDOW: Duration = Duration::from_secs(40);
const SETTLE: Duration = Duration::from_secs(120);

/// A host whose processes try the cluster's nodes in `order` (no shuffle,
/// so the test knows where each starts), with two workers of a 40 ms
/// `sleep` model that logs every run.
fn host(cluster: &LocalCluster, host_id: &str, order: &[u8], run_log: &Path) -> ConfigBuilder {
    ConfigBuilder::new()
        .section(&cluster.amqp_urls_toml(order))
        .section("[amqp]\nshuffle_nodes = false")
        .section("[jobs]\nretry_backoff_s = 1")
        .host(host_id)
        .dispatcher("workers_per_gpu = 2")
        .gpu(8192)
        .sleep_model("sleep", 1024, 40)
        .run_log(run_log)
}

/// The node (1..=3) a record says its process is connected to.
fn node_of(record: &HashMap<String, String>) -> Option<u8> {
    let node = record.get("amqp_node")?;
    (1..=3).find(|n| node.ends_with(&format!(":{}", 5680 + u16::from(*n))))
}

/// Seconds until `workers` workers are consuming again on a node other than
/// `stopped`, and the queue has as many consumers.
async fn recovery_seconds(system: &TestSystem, workers: usize, stopped: u8, since: Instant) -> f64 {
    let queue = system.names.model_queue("sleep");
    let deadline = since + Duration::from_secs(60);
    loop {
        let mut redis = system.redis().await;
        let live: Vec<String> = redis::cmd("SMEMBERS")
            .arg(system.names.workers_set())
            .query_async(&mut redis)
            .await
            .unwrap();
        let mut moved = 0;
        for worker in &live {
            let record: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(system.names.worker_key(worker))
                .query_async(&mut redis)
                .await
                .unwrap();
            let consuming = record.get("consuming").is_some_and(|c| c.contains("sleep"));
            if consuming && node_of(&record).is_some_and(|n| n != stopped) {
                moved += 1;
            }
        }
        let consumers = system.queue_depth(&queue).await.map_or(0, |(_, c)| c);
        if moved >= workers && consumers as usize >= workers {
            return since.elapsed().as_secs_f64();
        }
        assert!(
            Instant::now() < deadline,
            "workers not consuming again 60 s after node {stopped} stopped: {moved} moved, {consumers} consumers"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Publishes `CLI_JOBS` jobs with the `gpuq` CLI (config `config`), one
/// process each, spread over the window; returns the failed runs' output.
fn publish_with_cli(config: &Path) -> Vec<String> {
    let gap = PUBLISH_WINDOW / CLI_JOBS as u32;
    let started = Instant::now();
    let mut failures = Vec::new();
    for i in 0..CLI_JOBS {
        let id = format!("cli-{i}");
        let tag = format!("tag={id}");
        let output = Command::new("timeout")
            .arg("60")
            .arg(gpuq_integration_tests::binary("gpuq"))
            .arg("--config")
            .arg(config)
            .args(["submit", "sleep", "--job-id", &id, "-i", &tag])
            .output()
            .expect("running gpuq");
        if !output.status.success() {
            // Exit 124: `timeout` stopped a CLI that hung.
            failures.push(format!(
                "{id}: {} stdout {:?} stderr {}",
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        let next = started + gap * (i as u32 + 1);
        if let Some(pause) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(pause);
        }
    }
    failures
}

/// Starts the pika publisher of `PIKA_JOBS` jobs over the window.
fn start_pika(system: &TestSystem, cluster: &LocalCluster) -> std::process::Child {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/fixtures/ha_pika_publisher.py"))
        .arg(system.names.jobs_exchange())
        .arg("pika")
        .arg(PIKA_JOBS.to_string())
        .arg(PUBLISH_WINDOW.as_secs().to_string())
        .args(&cluster.amqp_urls)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the pika publisher")
}

/// Counts `completed` events per job id on the system's events channel.
fn count_completions(system: &TestSystem) -> tokio::task::JoinHandle<HashMap<String, u32>> {
    let channel = system.names.events_channel();
    let url = gpuq_integration_tests::redis_url();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = tokio::spawn(async move {
        let client = redis::Client::open(url).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe(&channel).await.unwrap();
        ready_tx.send(()).unwrap();
        let mut counts: HashMap<String, u32> = HashMap::new();
        let mut messages = pubsub.on_message();
        let quiet = Duration::from_secs(15);
        while let Ok(Some(message)) = tokio::time::timeout(quiet, messages.next()).await {
            let payload: String = message.get_payload().unwrap_or_default();
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&payload) else {
                continue;
            };
            if event["status"] == "completed" {
                let id = event["job_id"].as_str().unwrap_or_default().to_owned();
                *counts.entry(id).or_default() += 1;
            }
        }
        counts
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("events subscription");
    handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_the_loss_of_the_queue_leader_and_of_a_dispatchers_node() {
    let Some(cluster) = LocalCluster::up() else {
        return;
    };
    let runs_dir = tempfile::tempdir().unwrap();
    let run_log = runs_dir.path().join("runs.log");
    let system = host(&cluster, "host-a", &[1, 2, 3], &run_log).system();
    let host_b = host(&cluster, "host-b", &[2, 3, 1], &run_log).build();
    let host_b = system.extra_config("host-b.toml", &host_b);
    let _a = system.dispatcher(&[]);
    let _b = system.spawn_with_config("gpuq-dispatcher", &host_b, &[]);
    let queue = system.names.model_queue("sleep");
    system
        .wait_for_consumers(&queue, 4, Duration::from_secs(60))
        .await;
    let (record_a, record_b) = (
        system.host_record("host-a").await,
        system.host_record("host-b").await,
    );
    assert_eq!(node_of(&record_a), Some(1), "host-a starts on node 1");
    assert_eq!(node_of(&record_b), Some(2), "host-b starts on node 2");

    let completions = count_completions(&system);
    let pika = start_pika(&system, &cluster);
    let config = system.config_path.clone();
    let cli = tokio::task::spawn_blocking(move || publish_with_cli(&config));

    // A while into the publishing, stop the queue's leader; once every
    // worker consumes again, start it. Then the same with host-a's node.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let leader = cluster.quorum_leader(&queue);
    let stopped_at = Instant::now();
    cluster.stop_node(leader);
    let first = recovery_seconds(&system, 4, leader, stopped_at).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start_node(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a_node = node_of(&system.host_record("host-a").await).expect("host-a's node");
    let stopped_at = Instant::now();
    cluster.stop_node(a_node);
    let second = recovery_seconds(&system, 4, a_node, stopped_at).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start_node(a_node);

    let cli_failures = cli.await.unwrap();
    let pika = pika.wait_with_output().unwrap();
    let pika_said = String::from_utf8_lossy(&pika.stdout).trim().to_owned();
    assert!(
        pika.status.success(),
        "pika publisher: {pika_said} {}",
        String::from_utf8_lossy(&pika.stderr)
    );
    assert!(
        cli_failures.is_empty(),
        "{} CLI submits failed: {cli_failures:#?}",
        cli_failures.len()
    );

    // Every job ends completed.
    let ids: Vec<String> = (0..CLI_JOBS)
        .map(|i| format!("cli-{i}"))
        .chain((0..PIKA_JOBS).map(|i| format!("pika-{i}")))
        .collect();
    let deadline = Instant::now() + SETTLE;
    for id in &ids {
        loop {
            let record = system.job_hash(id).await;
            match record.get("status").map(String::as_str) {
                Some("completed") => break,
                Some("failed" | "timed_out" | "cancelled") => panic!("{id} ended {record:?}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "{id} not completed: {record:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Exactly one completion event per job; how many ran twice.
    let counts = completions.await.unwrap();
    let twice: Vec<&String> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(twice.is_empty(), "jobs completed more than once: {twice:?}");
    let missing: HashSet<&String> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(missing.is_empty(), "no completion event for {missing:?}");
    let runs = runs(&run_log);
    let ran_twice = ids
        .iter()
        .filter(|id| runs.get(*id).copied().unwrap_or(0) > 1)
        .count();
    eprintln!(
        "ha_amqp: {} jobs ({CLI_JOBS} CLI, {PIKA_JOBS} pika: {pika_said}); \
         stopped node {leader} (queue leader): workers consuming again in {first:.1} s; \
         stopped node {a_node} (host-a's node): again in {second:.1} s; \
         {ran_twice} jobs ran twice",
        ids.len()
    );
    assert!(
        first <= 10.0 && second <= 10.0,
        "recovery took {first:.1} s and {second:.1} s (more than 10 s)"
    );
    assert!(ran_twice <= 10, "{ran_twice} jobs ran twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_lost_for_good_leaves_queues_served_by_the_other_two() {
    let Some(cluster) = LocalCluster::up() else {
        return;
    };
    let runs_dir = tempfile::tempdir().unwrap();
    let run_log = runs_dir.path().join("runs.log");
    let system = host(&cluster, "host-a", &[1, 2, 3], &run_log).system();
    let _a = system.dispatcher(&[]);
    let queue = system.names.model_queue("sleep");
    system
        .wait_for_consumers(&queue, 2, Duration::from_secs(60))
        .await;
    let submit = |prefix: &str, count: usize| {
        let ids: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
        for id in &ids {
            let tag = format!("tag={id}");
            let output = system.gpuq(
                &["submit", "sleep", "--job-id", id, "-i", &tag],
                Duration::from_secs(60),
            );
            assert!(
                output.status.success(),
                "{id}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        ids
    };
    let before = submit("before", 20);

    // The node leading the queue goes for good: stopped, then forgotten.
    let leader = cluster.quorum_leader(&queue);
    let lost_at = Instant::now();
    cluster.run(&["forget-node", &leader.to_string()]);
    let recovered = recovery_seconds(&system, 2, leader, lost_at).await;
    let after = submit("after", 40);
    let deadline = Instant::now() + SETTLE;
    for id in before.iter().chain(&after) {
        system
            .wait_for_status(
                id,
                &["completed"],
                deadline.saturating_duration_since(Instant::now()),
            )
            .await;
    }
    let new_leader = cluster.quorum_leader(&queue);
    assert_ne!(new_leader, leader, "the queue has a leader on a live node");
    eprintln!(
        "ha_amqp: node {leader} lost for good; the queue's leader is now node {new_leader}; \
         {} jobs completed ({} after the loss); workers consuming from the other nodes {recovered:.1} s after it",
        before.len() + after.len(),
        after.len()
    );
}
