//! Chaos: a few hundred synthetic jobs while workers are SIGKILLed at random and
//! a dispatcher is restarted. Every job must end in a final state, none may be
//! missing, and no completed job may run again after it completed (runs are
//! counted by the synthetic model's run log). Bounded: well under 3 minutes.
//!
//! Host B's workers hold two deliveries (`worker.prefetch = 2`), so a job's
//! outcome is recorded and acked while the next one already runs on its
//! freed slot (the pipelined path, `gpu-worker/src/job/mod.rs`); host A's
//! hold one. The kills land at random points of both.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::jobs::start_publish_json;
use lapin::options::ConfirmSelectOptions;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::seq::IndexedRandom;
use rand::SeedableRng;

const JOBS: usize = 300;
const CHAOS: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_secs(120);

/// A host with two workers on one 8 GiB GPU that restart fast and never give
/// up, holding `prefetch` deliveries each, serving a 60 ms `sleep` model that
/// logs every run to `run_log`.
fn host(host_id: &str, run_log: &Path, prefetch: u32) -> ConfigBuilder {
    ConfigBuilder::new()
        .section("[jobs]\nretry_backoff_s = 1")
        .section(&format!(
            "[worker]\nprefetch = {prefetch}\nheartbeat_interval_ms = 200\nheartbeat_ttl_ms = 2000\nshutdown_grace_s = 10"
        ))
        .host(host_id)
        .dispatcher("workers_per_gpu = 2")
        .dispatcher("crash_loop_limit = 1000")
        .dispatcher("restart_backoff_initial_ms = 100")
        .dispatcher("restart_backoff_max_ms = 400")
        .gpu(8192)
        .sleep_model("sleep", 1024, 60)
        .run_log(run_log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_ends_final_and_none_runs_after_completing_under_chaos() {
    let runs_dir = tempfile::tempdir().unwrap();
    let run_log = runs_dir.path().join("runs.log");
    let system = host("host-a", &run_log, 1).system();
    let host_b = system.extra_config("host-b.toml", &host("host-b", &run_log, 2).build());
    let _a = system.dispatcher(&[]);
    let mut b = system.spawn_with_config("gpuq-dispatcher", &host_b, &[]);
    let queue = system.names.model_queue("sleep");
    system
        .wait_for_consumers(&queue, 4, Duration::from_secs(30))
        .await;

    // Publish every job on one confirmed channel, as a busy client would.
    let connection = system.amqp().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let ids: Vec<String> = (0..JOBS).map(|i| format!("chaos-{i}")).collect();
    for id in &ids {
        let body =
            format!(r#"{{"job_id": "{id}", "feature": "sleep", "inputs": {{"tag": "{id}"}}}}"#);
        // Confirms are awaited all together below.
        let _pending_confirm = start_publish_json(
            &channel,
            &system.names.jobs_exchange(),
            "sleep",
            body.as_bytes(),
        )
        .await;
    }
    assert!(
        channel.wait_for_confirms().await.unwrap().is_empty(),
        "every job routed"
    );
    let _ = connection.close(200, "published".into()).await;

    // Chaos: kill a random worker every 300 ms; restart dispatcher B half-way.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let started = Instant::now();
    let mut kills = 0;
    let mut restarted_b = false;
    while started.elapsed() < CHAOS {
        let mut redis = system.redis().await;
        let workers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(system.names.workers_set())
            .query_async(&mut redis)
            .await
            .unwrap();
        if let Some(worker) = workers.choose(&mut rng) {
            if let Some(pid) = system
                .worker_field(worker, "pid")
                .await
                .and_then(|p| p.parse::<i32>().ok())
            {
                if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                    kills += 1;
                }
            }
        }
        if !restarted_b && started.elapsed() > CHAOS / 2 {
            b.stop(Duration::from_secs(20));
            b = system.spawn_with_config("gpuq-dispatcher", &host_b, &[]);
            restarted_b = true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(kills >= 10, "the chaos killed only {kills} workers");

    // Every job ends final; none is missing.
    let deadline = Instant::now() + SETTLE;
    let mut records: HashMap<String, HashMap<String, String>> = HashMap::new();
    for id in &ids {
        loop {
            let record = system.job_hash(id).await;
            let status = record.get("status").cloned().unwrap_or_default();
            if ["completed", "failed", "timed_out", "cancelled"].contains(&status.as_str()) {
                records.insert(id.clone(), record);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} not final after the chaos: {record:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(records.len(), JOBS);

    // No completed job ran again after it completed.
    let mut runs: HashMap<String, Vec<u64>> = HashMap::new();
    for line in std::fs::read_to_string(&run_log).unwrap().lines() {
        let (tag, at) = line.split_once(' ').unwrap();
        runs.entry(tag.to_owned())
            .or_default()
            .push(at.parse().unwrap());
    }
    let mut completed = 0;
    let mut reran = 0;
    for (id, record) in &records {
        let job_runs = runs.get(id).cloned().unwrap_or_default();
        let attempts: usize = record["attempts"].parse().unwrap();
        assert!(
            job_runs.len() <= attempts,
            "{id} ran {} times in {attempts} attempts",
            job_runs.len()
        );
        if record["status"] == "completed" {
            completed += 1;
            let finished: u64 = record["finished_ms"].parse().unwrap();
            assert!(
                job_runs.iter().all(|at| *at <= finished),
                "{id} ran after completing: {job_runs:?} > {finished}"
            );
            reran += usize::from(job_runs.len() > 1);
        } else {
            assert_eq!(
                record["error_code"], "too_many_attempts",
                "{id}: {record:?}"
            );
        }
    }
    eprintln!("chaos: {JOBS} jobs, {kills} worker kills, dispatcher restarted: {restarted_b}, {completed} completed, {reran} re-run after a kill, {} gave up", JOBS - completed);
    assert!(
        completed >= JOBS * 9 / 10,
        "only {completed} of {JOBS} completed"
    );
}
