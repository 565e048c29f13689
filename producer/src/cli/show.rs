//! What the CLI shows of one job: its record, and `gpuq watch`'s live
//! progress bar over the shared events subscription.

use std::time::Duration;

use anyhow::Context;
use gpuq_common::record::JobRecord;
use gpuq_common::JobStatus;

use crate::producer::{HubEvent, Producer};

/// Follows a job's events with a progress bar; the exit code is `--wait`'s.
pub(super) async fn watch(
    producer: &Producer,
    job_id: &str,
    timeout: Duration,
) -> anyhow::Result<i32> {
    let events = producer.subscribe_events().await?;
    let Some(record) = producer.status(job_id).await? else {
        eprintln!("no job '{job_id}' (unknown, or its record expired)");
        return Ok(4);
    };
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:30}] {pos:>3}% {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let show = |status: &str, progress: Option<f64>| {
        if let Some(p) = progress {
            bar.set_position((p * 100.0).round() as u64);
        }
        bar.set_message(status.to_owned());
    };
    show(
        &record.status.map_or("unknown".into(), |s| s.to_string()),
        record.progress,
    );
    if !record.is_final() {
        let mut events = events;
        let deadline = tokio::time::Instant::now() + timeout;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
            let (status, progress) = match event {
                HubEvent::Status(event) if event.job_id == job_id => (event.status, event.progress),
                HubEvent::Status(_) => continue,
                // Missed events: the record says where the job is.
                HubEvent::Gap => match producer.status(job_id).await? {
                    Some(record) => match record.status {
                        Some(status) => (status, record.progress),
                        None => continue,
                    },
                    None => break,
                },
            };
            show(status.as_str(), progress);
            if status.is_final() {
                break;
            }
        }
    }
    bar.finish_and_clear();
    let record = producer
        .status(job_id)
        .await?
        .context("the job's record expired")?;
    print_record(&record, false);
    Ok(match record.status {
        Some(JobStatus::Completed) => 0,
        Some(status) if status.is_final() => 2,
        _ => 3,
    })
}

pub(super) fn print_record(record: &JobRecord, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(record).unwrap_or_default()
        );
        return;
    }
    let status = record
        .status
        .map_or("unknown".to_owned(), |s| s.to_string());
    println!("status: {status}");
    if let Some(model) = &record.model {
        println!("model: {model}");
    }
    if let Some(worker) = &record.worker {
        println!("worker: {worker} (attempts: {})", record.attempts);
    }
    match (record.priority, record.priority_lowered_from) {
        (Some(priority), Some(asked)) => {
            println!("priority: {priority} (lowered from {asked} by the tenant's max_priority)")
        }
        (Some(priority), None) => println!("priority: {priority}"),
        _ => {}
    }
    if let (Some(started), Some(finished)) = (record.started_ms, record.finished_ms) {
        println!("run time: {} ms", finished.saturating_sub(started));
    }
    if let Some(error) = &record.error {
        println!("error: {}: {}", error.code, error.message);
    }
    if let Some(result) = &record.result {
        println!("result: {result}");
    }
}
