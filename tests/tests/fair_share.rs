//! Fair share and priorities on the default quorum queues (issue 15), on the
//! real broker and Redis, with the synthetic `sleep` model (it sleeps; no
//! real model runs). One worker runs one job at a time, so the order in
//! which jobs start (the model's run log) is the order the worker chose.
//!
//! - A flood of one tenant does not hold back another: the small tenant's
//!   jobs start interleaved with the flood's (and, with
//!   `tenants.fair_share = false`, after all of it, as before).
//! - A `high` job submitted behind a backlog on a quorum queue starts next.
//! - A worker killed while holding jobs of several tenants loses none:
//!   every job completes, once.
//! - A busy worker holds no job of a model with several queues (pull
//!   mode): what is published while its slot is full stays in the broker.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use gpuq_common::amqp::declare_topology;
use gpuq_common::config::QueueType;
use gpuq_common::fair_share::SubQueue;
use gpuq_common::topology::Topology;
use gpuq_integration_tests::eventually;
use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::TestSystem;
use gpuq_producer::{JobRequest, Producer};

const WAIT: Duration = Duration::from_secs(60);
const WORKER: &str = "host-a-gpu0-slot0";

/// One host, one worker, a `sleep` model of `run_ms` per job logging each
/// start to `runs.log`; `extra` is more config (`[tenants]`).
fn system(runs_dir: &Path, run_ms: u64, extra: &str) -> TestSystem {
    ConfigBuilder::new()
        .section(extra)
        .section("[jobs]\nretry_backoff_s = 1")
        .host("host-a")
        .dispatcher("restart_backoff_initial_ms = 100")
        .gpu(8192)
        .sleep_model("sleep", 1024, run_ms)
        .model_keys("timeout_s = 60")
        .run_log(&runs_dir.join("runs.log"))
        .system()
}

/// Tags in the order their jobs started (first start of each).
fn start_order(runs_dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(runs_dir.join("runs.log")).unwrap_or_default();
    let mut runs: Vec<(u64, usize, String)> = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let (tag, at) = line.split_once(' ').unwrap();
        if !runs.iter().any(|(_, _, t)| t == tag) {
            runs.push((at.parse().unwrap(), line_no, tag.to_owned()));
        }
    }
    runs.sort();
    runs.into_iter().map(|(_, _, tag)| tag).collect()
}

fn job(tenant: &str, tag: &str, priority: Option<u8>) -> JobRequest {
    let mut request = JobRequest::new("sleep").input("tag", tag.to_owned());
    request.tenant = Some(tenant.to_owned());
    request.priority = priority;
    request
}

async fn submit_all(producer: &Producer, jobs: Vec<JobRequest>) -> Vec<String> {
    producer
        .submit_many(jobs)
        .await
        .into_iter()
        .map(|r| r.expect("submitted"))
        .collect()
}

async fn wait_completed(system: &TestSystem, ids: &[String]) {
    for id in ids {
        let record = system
            .wait_for_status(id, &["completed", "failed", "timed_out"], WAIT)
            .await;
        assert_eq!(record["status"], "completed", "{id}: {record:?}");
    }
}

/// A's flood of 30, then B's 4: positions (0-based) at which B's jobs
/// started among the flood's starts.
async fn flood_then_small_tenant(extra: &str) -> Vec<usize> {
    let runs = tempfile::tempdir().unwrap();
    let system = system(runs.path(), 60, extra);
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;
    let producer = Producer::connect(system.config.clone()).await.unwrap();
    // One job each first: both tenants' sub-queues exist and are consumed
    // before the flood, so what follows is the worker's choice alone.
    let warm = submit_all(
        &producer,
        vec![job("a", "warm-a", None), job("b", "warm-b", None)],
    )
    .await;
    wait_completed(&system, &warm).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let flood: Vec<JobRequest> = (0..30).map(|i| job("a", &format!("a{i}"), None)).collect();
    let mut ids = submit_all(&producer, flood).await;
    let small: Vec<JobRequest> = (0..4).map(|i| job("b", &format!("b{i}"), None)).collect();
    ids.extend(submit_all(&producer, small).await);
    wait_completed(&system, &ids).await;

    let order: Vec<String> = start_order(runs.path())
        .into_iter()
        .filter(|t| !t.starts_with("warm"))
        .collect();
    assert_eq!(order.len(), 34, "{order:?}");
    order
        .iter()
        .enumerate()
        .filter(|(_, t)| t.starts_with('b'))
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_one_tenant_does_not_hold_back_another() {
    let fair = flood_then_small_tenant("").await;
    // B's four jobs alternate with A's from the first free slot: all of
    // them start within the first dozen starts, not after A's 30.
    assert!(fair.iter().all(|&i| i < 12), "B's starts: {fair:?}");

    let fifo = flood_then_small_tenant("[tenants]\nfair_share = false").await;
    assert_eq!(fifo, vec![30, 31, 32, 33], "without fair share, B waits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlogged_tenants_share_the_worker_by_weight() {
    let runs = tempfile::tempdir().unwrap();
    let system = system(runs.path(), 40, "[tenants.heavy]\nweight = 3");
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;
    let producer = Producer::connect(system.config.clone()).await.unwrap();
    let warm = vec![job("heavy", "warm-h", None), job("light", "warm-l", None)];
    wait_completed(&system, &submit_all(&producer, warm).await).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Heavy's backlog first, then light's: in arrival order light would wait.
    let mut jobs: Vec<JobRequest> = (0..30)
        .map(|i| job("heavy", &format!("h{i}"), None))
        .collect();
    jobs.extend((0..10).map(|i| job("light", &format!("l{i}"), None)));
    let ids = submit_all(&producer, jobs).await;
    wait_completed(&system, &ids).await;
    let order: Vec<String> = start_order(runs.path())
        .into_iter()
        .filter(|t| !t.starts_with("warm"))
        .collect();
    // Equal run times: weight 3 to 1 is 3 jobs to 1 while both have jobs.
    let light = order[..20].iter().filter(|t| t.starts_with('l')).count();
    assert!(
        (4..=6).contains(&light),
        "light ran {light} of the first 20: {order:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_job_behind_a_backlog_on_a_quorum_queue_starts_next() {
    let runs = tempfile::tempdir().unwrap();
    let system = system(runs.path(), 60, "");
    let _dispatcher = system.dispatcher(&[]);
    let queue = system.names.model_queue("sleep");
    system.wait_for_consumers(&queue, 1, WAIT).await;
    let producer = Producer::connect(system.config.clone()).await.unwrap();
    let warm = submit_all(&producer, vec![job("default", "warm", Some(9))]).await;
    wait_completed(&system, &warm).await;
    let high_queue = format!("{queue}.high");
    system.wait_for_consumers(&high_queue, 1, WAIT).await;
    // Declaring it again as a quorum queue (the config's default type) is
    // accepted: RabbitMQ refuses a declare whose `x-queue-type` differs.
    assert!(matches!(system.config.queues.queue_type, QueueType::Quorum));
    let sub = SubQueue::for_job("default", Some(9), true);
    let again = Topology {
        exchanges: Vec::new(),
        queues: vec![Topology::sub_queue(&system.config, "sleep", &sub)],
    };
    assert_eq!(again.queues[0].name, high_queue);
    declare_topology(&system.amqp().await, &again)
        .await
        .unwrap();

    let backlog: Vec<JobRequest> = (0..25)
        .map(|i| job("default", &format!("n{i}"), None))
        .collect();
    let mut ids = submit_all(&producer, backlog).await;
    eventually("the backlog is running", WAIT, || async {
        start_order(runs.path()).iter().any(|t| t == "n0")
    })
    .await;
    ids.extend(submit_all(&producer, vec![job("default", "urgent", Some(9))]).await);
    let low = submit_all(&producer, vec![job("default", "later", Some(0))]).await;
    ids.extend(low);
    wait_completed(&system, &ids).await;

    let order = start_order(runs.path());
    let urgent = order.iter().position(|t| t == "urgent").unwrap();
    let started_before: Vec<&String> = order[..urgent]
        .iter()
        .filter(|t| t.starts_with('n'))
        .collect();
    // Behind at most the job running and the one the worker held.
    assert!(started_before.len() <= 3, "{order:?}");
    // Each of the model's queues has a job held beside the running one, so
    // the low job waits for the whole normal backlog.
    assert_eq!(order.last().map(String::as_str), Some("later"), "{order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_holding_jobs_of_several_tenants_loses_none() {
    let runs = tempfile::tempdir().unwrap();
    let system = system(runs.path(), 400, "[worker]\nconcurrency = 2");
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;
    let producer = Producer::connect(system.config.clone()).await.unwrap();
    let mut jobs = Vec::new();
    for tenant in ["default", "t1", "t2"] {
        for i in 0..4 {
            jobs.push(job(tenant, &format!("{tenant}-{i}"), None));
        }
    }
    let ids = submit_all(&producer, jobs).await;
    // Held and running jobs of the named tenants: their sub-queues are consumed.
    eventually("jobs of two tenants have run", WAIT, || async {
        let order = start_order(runs.path());
        order.iter().any(|t| t.starts_with("t1")) && order.iter().any(|t| t.starts_with("t2"))
    })
    .await;
    system.kill_worker(WORKER).await;

    wait_completed(&system, &ids).await;
    let mut completions: HashMap<String, u32> = HashMap::new();
    for id in &ids {
        let record = system.job_hash(id).await;
        *completions.entry(record["status"].clone()).or_default() += 1;
    }
    assert_eq!(completions.get("completed"), Some(&12), "{completions:?}");
    let started = start_order(runs.path());
    assert_eq!(started.len(), 12, "every job ran: {started:?}");
    for tenant in ["t1", "t2"] {
        let queue = format!("{}.normal.{tenant}", system.names.model_queue("sleep"));
        assert_eq!(
            system.queue_depth(&queue).await.map(|d| d.0),
            Some(0),
            "{queue}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_leaves_the_jobs_of_a_model_with_several_queues_in_the_broker() {
    let runs = tempfile::tempdir().unwrap();
    let system = system(runs.path(), 50, "");
    let _dispatcher = system.dispatcher(&[]);
    let main = system.names.model_queue("sleep");
    system.wait_for_consumers(&main, 1, WAIT).await;
    let producer = Producer::connect(system.config.clone()).await.unwrap();
    // The tenants' sub-queues exist and are served before the test proper.
    let warm = vec![job("t1", "warm-1", None), job("t2", "warm-2", None)];
    wait_completed(&system, &submit_all(&producer, warm).await).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let queues = [
        main.clone(),
        format!("{main}.normal.t1"),
        format!("{main}.normal.t2"),
    ];
    for queue in &queues {
        system.wait_for_consumers(queue, 1, WAIT).await;
    }

    // The worker's one slot runs a long job.
    let long = job("t1", "long", None).input("duration_ms", 5000);
    let mut ids = submit_all(&producer, vec![long]).await;
    system.wait_for_status(&ids[0], &["processing"], WAIT).await;
    let mut backlog = Vec::new();
    for tenant in ["default", "t1", "t2"] {
        backlog.extend((0..3).map(|i| job(tenant, &format!("{tenant}-{i}"), None)));
    }
    ids.extend(submit_all(&producer, backlog).await);
    // Long enough for any delivery to arrive; the long job still runs.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // All 3 of each queue ready: none was delivered to the busy worker.
    // (Consumer counts do not show it: a quorum queue keeps counting a
    // cancelled consumer until its unacked job, here the long one, settles.)
    for queue in &queues {
        let ready = system.queue_depth(queue).await.map(|(ready, _)| ready);
        assert_eq!(ready, Some(3), "{queue}");
    }
    let waiting = system.worker_field(WORKER, "waiting").await;
    assert!(
        waiting.as_deref().is_none_or(|w| !w.contains("sleep")),
        "nothing held: {waiting:?}"
    );
    assert_eq!(
        system.job_hash(&ids[0]).await["status"],
        "processing",
        "the check ran while the slot was full"
    );

    wait_completed(&system, &ids).await;
    let order: Vec<String> = start_order(runs.path())
        .into_iter()
        .filter(|t| !t.starts_with("warm"))
        .collect();
    assert_eq!(order.len(), 10, "each job ran once: {order:?}");
    // Fetched in fair order by GPU time: t1 has just used 5 s, so the
    // other two tenants' jobs all run before t1's.
    assert_eq!(order[0], "long");
    assert!(
        order[7..].iter().all(|t| t.starts_with("t1-")),
        "t1's jobs last: {order:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_never_runs_more_than_its_max_running_across_workers() {
    let runs = tempfile::tempdir().unwrap();
    let extra = "[tenants.capped]\nmax_running = 1";
    let system = ConfigBuilder::new()
        .section(extra)
        .host("host-a")
        .dispatcher("workers_per_gpu = 2")
        .gpu(8192)
        .sleep_model("sleep", 1024, 300)
        .model_keys("timeout_s = 60")
        .run_log(&runs.path().join("runs.log"))
        .system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 2, WAIT)
        .await;
    let producer = Producer::connect(system.config.clone()).await.unwrap();
    let mut jobs: Vec<JobRequest> = (0..6)
        .map(|i| job("capped", &format!("c{i}"), None))
        .collect();
    jobs.extend((0..6).map(|i| job("free", &format!("f{i}"), None)));
    let ids = submit_all(&producer, jobs).await;
    wait_completed(&system, &ids).await;

    // The claim refuses a second running job of `capped` in the same step
    // that counts it: its jobs ran one after another, on either worker.
    let mut capped = Vec::new();
    for id in &ids[..6] {
        let record = system.job_hash(id).await;
        let at = |field: &str| record[field].parse::<u64>().unwrap();
        capped.push((
            at("started_ms"),
            at("finished_ms"),
            record["worker"].clone(),
        ));
    }
    capped.sort();
    for pair in capped.windows(2) {
        // A few ms of slack: each worker stamps its own clock reading.
        assert!(
            pair[1].0 + 20 >= pair[0].1,
            "two capped jobs overlapped: {capped:?}"
        );
    }
    assert_eq!(start_order(runs.path()).len(), 12, "every job ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_sub_queues_new_tenants_share_the_models_queue() {
    let runs = tempfile::tempdir().unwrap();
    let system = system(runs.path(), 10, "[tenants]\nmax_sub_queues = 2");
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;
    let producer = Producer::connect(system.config.clone()).await.unwrap();
    let jobs = ["t1", "t2", "t3", "t4"].map(|t| job(t, t, None)).to_vec();
    let ids = submit_all(&producer, jobs).await;
    wait_completed(&system, &ids).await;
    // Two sub-queues were made; the other tenants' jobs ran from the model's queue.
    let mut redis = system.redis().await;
    let listed: Vec<String> = redis::cmd("SMEMBERS")
        .arg(system.names.sub_queues_key("sleep"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for id in &ids {
        assert!(system.job_hash(id).await["tenant"].starts_with('t'));
    }
}
