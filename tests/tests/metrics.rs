//! The dispatcher's Prometheus `/metrics` after some jobs: the counts match.

use std::time::Duration;

use gpuq_integration_tests::fixtures::ConfigBuilder;

const WAIT: Duration = Duration::from_secs(30);

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_jobs_each_model_ran() {
    let port = gpuq_integration_tests::http::free_port();
    let system = ConfigBuilder::one_host()
        .dispatcher(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .echo("echo")
        .model("sleep", "sleep", 256)
        .system();
    let dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("sleep"), 1, WAIT)
        .await;
    for i in 0..3 {
        let output = system.gpuq(
            &["submit", "echo", "--input", &format!("i={i}"), "--wait"],
            WAIT,
        );
        assert!(output.status.success());
    }
    let output = system.gpuq(
        &[
            "submit",
            "sleep",
            "--input",
            "fail=true",
            "--input",
            "duration_ms=5",
            "--wait",
        ],
        WAIT,
    );
    assert_eq!(output.status.code(), Some(2));
    // The producer's W3C trace context reached the worker's job span.
    let failed_id = String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let log = dispatcher.log();
    let line = log
        .lines()
        .find(|l| l.contains(&failed_id) && l.contains("job finished"))
        .unwrap_or_else(|| panic!("no log line for {failed_id}: {log}"));
    let trace_id = line.split("trace_id=").nth(1).map(|rest| {
        rest.trim_start_matches('"')
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .count()
    });
    assert_eq!(trace_id, Some(32), "{line}");

    let url = format!("http://127.0.0.1:{port}/metrics");
    let worker = r#"worker="host-a-gpu0-slot0""#;
    let mut text = String::new();
    for _ in 0..100 {
        text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if sample(
            &text,
            &format!(r#"gpuq_jobs_total{{{worker},model="sleep",status="failed"}}"#),
        ) == Some(1.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sample(
            &text,
            &format!(r#"gpuq_jobs_total{{{worker},model="echo",status="completed"}}"#)
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"gpuq_jobs_total{{{worker},model="sleep",status="failed"}}"#)
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"gpuq_job_run_seconds_count{{{worker},model="echo"}}"#)
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"gpuq_job_queue_wait_seconds_count{{{worker},model="echo"}}"#)
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"gpuq_model_loads_total{{{worker},model="echo"}}"#)
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!(r#"gpuq_models_resident{{{worker}}}"#)),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!(r#"gpuq_worker_restarts_total{{{worker}}}"#)),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"gpuq_gpu_memory_total_bytes{gpu="0"}"#),
        Some(8192.0 * 1024.0 * 1024.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE gpuq_job_run_seconds histogram"),
        "{text}"
    );
}

/// The placing dispatcher's autoscaling gauges: queued work in GPU-seconds
/// (jobs × the model's run time), drained over the workers consuming it,
/// and the fleet's total; back to zero once the jobs are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaling_gauges_show_queued_work_in_gpu_seconds() {
    let port = gpuq_integration_tests::http::free_port();
    let system = ConfigBuilder::one_host()
        .dispatcher(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .sleep_model("slow", 256, 1_000)
        .system();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("slow"), 1, WAIT)
        .await;
    for _ in 0..6 {
        let output = system.gpuq(&["submit", "slow"], WAIT);
        assert!(output.status.success(), "{output:?}");
    }
    let url = format!("http://127.0.0.1:{port}/metrics");
    let series = |name: &str| format!(r#"{name}{{model="slow"}}"#);
    // Seen while at least three jobs wait.
    let mut text = String::new();
    for _ in 0..100 {
        text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if sample(&text, &series("gpuq_model_backlog_jobs")).is_some_and(|jobs| jobs >= 3.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let jobs = sample(&text, &series("gpuq_model_backlog_jobs")).expect("backlog gauge");
    assert!(jobs >= 3.0, "{text}");
    let seconds = sample(&text, &series("gpuq_model_backlog_seconds")).unwrap();
    // One second per job, declared (or measured, a little more).
    let per_job = seconds / jobs;
    assert!(
        (0.99..1.5).contains(&per_job),
        "{per_job} s per job: {text}"
    );
    // One worker consumes the model: it drains in the backlog's seconds.
    let drain = sample(&text, &series("gpuq_model_drain_seconds")).unwrap();
    assert!((drain - seconds).abs() < 1e-6, "{text}");
    assert!(sample(&text, &series("gpuq_model_oldest_wait_seconds")).unwrap() > 0.0);
    let wanted = sample(&text, "gpuq_gpu_seconds_wanted").unwrap();
    assert!(wanted >= seconds, "queued plus running: {text}");

    for _ in 0..200 {
        text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if sample(&text, "gpuq_gpu_seconds_wanted") == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sample(&text, &series("gpuq_model_backlog_jobs")),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &series("gpuq_model_drain_seconds")),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "gpuq_gpu_seconds_wanted"),
        Some(0.0),
        "{text}"
    );
}
