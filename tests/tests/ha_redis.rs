//! Redis failover: a few hundred jobs published over ~20 s while the Redis
//! primary is SIGKILLed mid-stream and Sentinel promotes its replica (the
//! local cluster of `scripts/cluster.sh`, reached through a
//! `redis+sentinel://` URL; RabbitMQ is the shared one). Every job must end
//! final, no completed job's record may be missing afterwards, each job must
//! publish exactly one final-status event, and the gateway's `/readyz` must
//! say 503 while Redis is unreachable and 200 again after the failover.
//!
//! The killed primary is started again once the replica is promoted: with
//! `redis.min_replicas_acked` at its Sentinel default (1), outcomes wait for
//! a replica, and Sentinel makes the old primary one.
//!
//! Skipped (and said so) where RabbitMQ or Redis is not installed. Every wait
//! is bounded; the whole test takes about two minutes, most of it the
//! cluster's start.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gpuq_common::config::RedisTarget;
use gpuq_common::Names;
use gpuq_integration_tests::cluster::{cluster_sh, LocalCluster};
use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::http::start_gateway;
use gpuq_integration_tests::jobs::start_publish_json;
use gpuq_integration_tests::TestSystem;
use lapin::options::ConfirmSelectOptions;
use tokio::sync::oneshot;

const JOBS: usize = 300;
/// Publishing takes this long, one job at a time.
const SPREAD: Duration = Duration::from_secs(20);
/// The primary is killed this far into publishing.
const KILL_AFTER: Duration = Duration::from_secs(8);
/// Longest Sentinel may take to promote the replica (it takes about 4 s).
const PROMOTION: Duration = Duration::from_secs(30);
/// Longest every job may take to end once publishing is over.
const SETTLE: Duration = Duration::from_secs(150);
const FINAL: [&str; 4] = ["completed", "failed", "timed_out", "cancelled"];

/// One host, two workers on one GPU, a 50 ms `sleep` model logging its runs.
fn host(run_log: &Path) -> ConfigBuilder {
    ConfigBuilder::new()
        .section("[jobs]\nretry_backoff_s = 1")
        .host("host-a")
        .dispatcher("workers_per_gpu = 2")
        .gpu(8192)
        .sleep_model("sleep", 1024, 50)
        .run_log(run_log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_a_redis_primary_failover() {
    let Some(cluster) = LocalCluster::up() else {
        eprintln!("SKIPPED: Redis failover needs the local cluster (scripts/cluster.sh)");
        return;
    };
    let runs_dir = tempfile::tempdir().unwrap();
    let run_log = runs_dir.path().join("runs.log");
    let system = TestSystem::with_redis(&host(&run_log).build(), &cluster.redis_url);
    let RedisTarget::Sentinel(target) = system.config.redis.target().clone() else {
        panic!(
            "the cluster's URL is not a Sentinel URL: {}",
            cluster.redis_url
        );
    };
    let sentinels = (target.sentinels.clone(), target.master_name.clone());
    let old_primary = primary_port(&sentinels).await.expect("a sentinel answers");
    let replica = if old_primary == 6391 { 6392 } else { 6391 };

    let events = FinalEvents::subscribe(replica, &system.names).await;
    let _dispatcher = system.dispatcher(&[]);
    let gateway = start_gateway(&system).await;
    system
        .wait_for_consumers(
            &system.names.model_queue("sleep"),
            2,
            Duration::from_secs(60),
        )
        .await;
    let readyz = Readyz::poll(format!("{}/readyz", gateway.base));

    let ids: Vec<String> = (0..JOBS).map(|i| format!("ha-{i}")).collect();
    let publishing = tokio::spawn(publish_spread(system.names.clone(), ids.clone()));
    tokio::time::sleep(KILL_AFTER).await;
    let killed = run_script(&["kill-redis-primary"]).await;
    let killed_at = Instant::now();
    eprintln!("killed the redis primary: {}", killed.trim());
    let promoted_after = wait_for_promotion(&sentinels, replica, killed_at).await;
    run_script(&["start-redis", &old_primary.to_string()]).await;
    tokio::time::timeout(SPREAD * 2, publishing)
        .await
        .expect("publishing ended in time")
        .expect("publishing succeeded");

    let records = wait_all_final(&system, &ids).await;
    let readyz = readyz.stop().await;
    let (final_events, event_drops) = events.stop().await;

    // No completed job's record is missing once it all settled.
    let completed: Vec<&String> = ids
        .iter()
        .filter(|id| records[*id].get("status").map(String::as_str) == Some("completed"))
        .collect();
    for id in &completed {
        let record = system.job_hash(id).await;
        assert_eq!(
            record.get("status").map(String::as_str),
            Some("completed"),
            "{id}'s record changed or went missing: {record:?}"
        );
    }
    assert_eq!(
        completed.len(),
        JOBS,
        "every job completes: {:?}",
        records
            .iter()
            .filter(|(_, r)| r.get("status").map(String::as_str) != Some("completed"))
            .take(5)
            .collect::<Vec<_>>()
    );

    // At most one final-status event per job, seen on the replica that
    // became the primary. PUBLISH reaches replicas, so only the moment
    // between Sentinel dropping this subscription (at the promotion) and
    // subscribing again can hide an event: then some may go unseen.
    let twice: Vec<_> = final_events.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "jobs with more than one final event: {twice:?}"
    );
    let unseen = ids
        .iter()
        .filter(|id| !final_events.contains_key(*id))
        .count();
    assert!(
        unseen == 0 || event_drops > 0,
        "{unseen} jobs published no final event, with no subscription gap"
    );

    // /readyz: 503 while Redis was unreachable, 200 again after the failover.
    let unready = readyz
        .iter()
        .find(|(at, status)| *at > killed_at && *status != 200)
        .map(|(at, _)| *at)
        .expect("/readyz never said 503 after the primary was killed");
    let ready_again = readyz
        .iter()
        .find(|(at, status)| *at > unready && *status == 200)
        .map(|(at, _)| *at)
        .expect("/readyz did not say 200 again after the failover");
    assert!(
        readyz
            .iter()
            .any(|(at, status)| *at > killed_at && *status == 503),
        "/readyz answered no 503 after the kill: {:?}",
        readyz
            .iter()
            .filter(|(at, _)| *at > killed_at)
            .take(10)
            .collect::<Vec<_>>()
    );

    let reran = runs_per_job(&run_log)
        .values()
        .filter(|runs| **runs > 1)
        .count();
    eprintln!(
        "redis failover: {JOBS} jobs, {} completed; sentinel promoted the replica after {:.1} s; \
         /readyz 503 after {:.1} s and 200 again after {:.1} s; {reran} jobs ran more than once \
         (duplicate runs); {} final events, {unseen} jobs' final event unseen across \
         {event_drops} subscription drop(s)",
        completed.len(),
        promoted_after.as_secs_f64(),
        unready.duration_since(killed_at).as_secs_f64(),
        ready_again.duration_since(killed_at).as_secs_f64(),
        final_events.values().sum::<u32>(),
    );
}

/// Runs `scripts/cluster.sh ARGS` off the runtime; panics when it fails.
async fn run_script(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cluster_sh(&args)
    })
    .await
    .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "cluster.sh failed:\n{printed}");
    printed
}

type Sentinels = (Vec<(String, u16)>, String);

/// The primary's port, from the first sentinel that answers.
async fn primary_port((sentinels, master): &Sentinels) -> Option<u16> {
    for (host, port) in sentinels {
        let client = redis::Client::open(format!("redis://{host}:{port}/")).ok()?;
        let connecting = client.get_multiplexed_async_connection();
        let Ok(Ok(mut connection)) = tokio::time::timeout(Duration::from_secs(2), connecting).await
        else {
            continue;
        };
        let address: redis::RedisResult<Option<(String, u16)>> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master)
            .query_async(&mut connection)
            .await;
        if let Ok(Some((_, port))) = address {
            return Some(port);
        }
    }
    None
}

/// Waits until the sentinels name `replica` the primary; how long after the kill.
async fn wait_for_promotion(sentinels: &Sentinels, replica: u16, killed_at: Instant) -> Duration {
    while primary_port(sentinels).await != Some(replica) {
        assert!(
            killed_at.elapsed() < PROMOTION,
            "sentinel did not promote the replica on {replica} within {PROMOTION:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    killed_at.elapsed()
}

/// Publishes one `sleep` job per id, evenly over [`SPREAD`], on one
/// confirmed channel of the shared RabbitMQ; every confirm awaited at the end.
async fn publish_spread(names: Names, ids: Vec<String>) {
    let connection = gpuq_common::amqp::connect(&gpuq_integration_tests::amqp_url(), "ha-redis")
        .await
        .expect("amqp connection");
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let gap = SPREAD / u32::try_from(ids.len()).unwrap();
    for id in &ids {
        let body =
            format!(r#"{{"job_id": "{id}", "feature": "sleep", "inputs": {{"tag": "{id}"}}}}"#);
        // Confirms are awaited all together below.
        let _pending_confirm =
            start_publish_json(&channel, &names.jobs_exchange(), "sleep", body.as_bytes()).await;
        tokio::time::sleep(gap).await;
    }
    assert!(
        channel.wait_for_confirms().await.unwrap().is_empty(),
        "every job routed"
    );
    let _ = connection.close(200, "published".into()).await;
}

/// Every job's record once it is final (bounded by [`SETTLE`]).
async fn wait_all_final(
    system: &TestSystem,
    ids: &[String],
) -> HashMap<String, HashMap<String, String>> {
    let deadline = Instant::now() + SETTLE;
    let mut records = HashMap::new();
    for id in ids {
        loop {
            let record = system.job_hash(id).await;
            if FINAL.contains(&record.get("status").map(String::as_str).unwrap_or("")) {
                records.insert(id.clone(), record);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} not final {SETTLE:?} after publishing: {record:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    records
}

/// Runs per job tag, from the sleep model's run log.
fn runs_per_job(run_log: &Path) -> HashMap<String, usize> {
    let mut runs = HashMap::new();
    for line in std::fs::read_to_string(run_log).unwrap_or_default().lines() {
        if let Some((tag, _)) = line.split_once(' ') {
            *runs.entry(tag.to_owned()).or_default() += 1;
        }
    }
    runs
}

/// Final-status events per job, from a subscription on one Redis node (the
/// replica, which receives what the primary publishes): when the node drops
/// it (Sentinel disconnects subscribers of the replica it promotes), it
/// subscribes again at once, and counts the drop.
struct FinalEvents {
    counts: Arc<Mutex<HashMap<String, u32>>>,
    drops: Arc<AtomicU32>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl FinalEvents {
    async fn subscribe(port: u16, names: &Names) -> FinalEvents {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let channel = names.events_channel();
        let first = subscribe_on(&client, &channel).await.expect("subscribing");
        let counts = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
        let drops = Arc::new(AtomicU32::new(0));
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn({
            let (counts, drops) = (Arc::clone(&counts), Arc::clone(&drops));
            async move {
                let mut pubsub = Some(first);
                loop {
                    let Some(subscribed) = pubsub.take() else {
                        tokio::select! {
                            _ = &mut stopped => return,
                            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        }
                        pubsub = subscribe_on(&client, &channel).await.ok();
                        continue;
                    };
                    let mut messages = subscribed.into_on_message();
                    loop {
                        let message = tokio::select! {
                            _ = &mut stopped => return,
                            message = messages.next() => message,
                        };
                        let Some(message) = message else { break };
                        let event: serde_json::Value =
                            serde_json::from_slice(message.get_payload_bytes()).unwrap_or_default();
                        if FINAL.contains(&event["status"].as_str().unwrap_or("")) {
                            let job = event["job_id"].as_str().unwrap_or_default().to_owned();
                            *counts.lock().unwrap().entry(job).or_default() += 1;
                        }
                    }
                    drops.fetch_add(1, Ordering::SeqCst);
                    pubsub = subscribe_on(&client, &channel).await.ok();
                }
            }
        });
        FinalEvents {
            counts,
            drops,
            stop,
            task,
        }
    }

    /// The counts, and how often the subscription dropped.
    async fn stop(self) -> (HashMap<String, u32>, u32) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        let counts = self.counts.lock().unwrap().clone();
        (counts, self.drops.load(Ordering::SeqCst))
    }
}

async fn subscribe_on(
    client: &redis::Client,
    channel: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

/// `/readyz` polled every 100 ms in the background: when, and what it said
/// (0: no answer within 2 s).
struct Readyz {
    seen: Arc<Mutex<Vec<(Instant, u16)>>>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Readyz {
    fn poll(url: String) -> Readyz {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                loop {
                    let status = match client.get(&url).send().await {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    };
                    seen.lock().unwrap().push((Instant::now(), status));
                    tokio::select! {
                        _ = &mut stopped => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        });
        Readyz { seen, stop, task }
    }

    async fn stop(self) -> Vec<(Instant, u16)> {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        let seen = self.seen.lock().unwrap().clone();
        seen
    }
}
