use super::*;
use crate::system::SubQueueStatus;
use serde_json::json;

fn host(id: &str, gpus: serde_json::Value) -> HostRecord {
    serde_json::from_value(json!({
        "host_id": id, "version": "0", "pid": 1, "gpu_source": "declared",
        "gpus": gpus, "slots": [], "unplaced_models": [], "started_ms": 0, "heartbeat_ms": 0,
    }))
    .unwrap()
}

fn gpu(index: u32, total: u64, used: u64, others: u64) -> serde_json::Value {
    json!({"index": index, "name": "g", "memory_total_mib": total,
           "memory_used_mib": used, "foreign_used_mib": others, "source": "declared"})
}

fn worker(id: &str, jobs: &[&str]) -> WorkerRecord {
    serde_json::from_value(json!({
        "worker_id": id, "host": "h", "gpu": "0", "pid": 1, "state": "idle",
        "vram_budget_mib": 1, "models": [], "current_jobs": jobs,
        "jobs_done": 0, "jobs_failed": 0, "started_ms": 0, "heartbeat_ms": 0,
    }))
    .unwrap()
}

fn queue(model: &str, messages: Option<u32>, subs: &[u32]) -> QueueStatus {
    QueueStatus {
        model: model.into(),
        feature: "f".into(),
        queue: format!("q.{model}"),
        vram_mib: 1,
        messages,
        consumers: Some(1),
        sub_queues: subs
            .iter()
            .map(|&messages| SubQueueStatus {
                tenant: "t".into(),
                level: "normal".into(),
                messages,
            })
            .collect(),
    }
}

#[test]
fn a_point_sums_sub_queues_splits_gpu_memory_and_counts_busy_workers() {
    let hosts = [
        host("b", json!([gpu(0, 1000, 600, 100)])),
        host("a", json!([gpu(1, 500, 50, 80)])),
    ];
    let workers = [worker("w1", &["j1"]), worker("w2", &[])];
    let queues = [queue("m", Some(3), &[2, 5]), queue("new", None, &[])];
    let point = Point::from_parts(&hosts, &workers, &queues);
    assert_eq!(
        point.queued,
        BTreeMap::from([("m".into(), 10), ("new".into(), 0)])
    );
    let gpus: Vec<(&str, u64, u64, u64)> = point
        .gpus
        .iter()
        .map(|g| (g.gpu.as_str(), g.gpuq_mib, g.others_mib, g.free_mib))
        .collect();
    // Sorted by name; others' use is never above the total used.
    assert_eq!(gpus, [("a/1", 0, 50, 450), ("b/0", 500, 100, 400)]);
    assert_eq!((point.workers_busy, point.workers), (1, 2));
    assert!(!point.truncated);
}

#[test]
fn a_point_keeps_at_most_max_series_models_and_says_so() {
    let queues: Vec<QueueStatus> = (0..MAX_SERIES + 3)
        .map(|i| queue(&format!("m{i:03}"), Some(1), &[]))
        .collect();
    let point = Point::from_parts(&[], &[], &queues);
    assert_eq!(point.queued.len(), MAX_SERIES);
    assert!(point.queued.contains_key("m000"));
    assert!(point.truncated);
    let json = serde_json::to_value(&point).unwrap();
    assert_eq!(json["truncated"], true);
}

#[test]
fn final_statuses_become_rates_per_second() {
    let mut counts = FinishedCounts::default();
    for status in [
        JobStatus::Queued,
        JobStatus::Processing,
        JobStatus::Completed,
        JobStatus::Completed,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::TimedOut,
    ] {
        counts.count(status);
    }
    let rates = counts.rates(Duration::from_secs(2));
    assert_eq!(
        rates,
        FinishedRates {
            completed: 1.5,
            failed: 0.5,
            cancelled: 0.0,
            timed_out: 0.5
        }
    );
    // Never a division by zero.
    assert!(counts.rates(Duration::ZERO).completed.is_finite());
}

#[test]
fn the_history_keeps_the_last_max_points_and_answers_since_a_time() {
    let history = History::default();
    for ts_ms in 1..=(MAX_POINTS as u64 + 10) {
        let mut point = Point::from_parts(&[], &[], &[]);
        point.ts_ms = ts_ms;
        history.push(point);
    }
    let all = history.since(0);
    assert_eq!(all.len(), MAX_POINTS);
    assert_eq!(all[0].ts_ms, 11, "the oldest were dropped");
    let last = history.since(MAX_POINTS as u64 + 8);
    assert_eq!(
        last.iter().map(|p| p.ts_ms).collect::<Vec<_>>(),
        [MAX_POINTS as u64 + 9, MAX_POINTS as u64 + 10]
    );
    assert!(history.since(u64::MAX).is_empty());
    assert_eq!(MAX_POINTS, 450, "15 minutes at 2 s");
}
