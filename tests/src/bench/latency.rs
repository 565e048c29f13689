//! Sequential submit-and-wait latency, measured in every run: each run's
//! percentiles (p50, p95, p99, p99.9) and maximum become one value of a
//! figure, so the table reports their median over runs with the spread
//! (min and max), like every other figure, instead of one run's sample.
//! Each round trip is also split in two, so a change can be placed: the
//! submit (the queued record's Redis write and the confirmed publish) and
//! the wait (delivery, the worker's claim and outcome, the event, the final
//! read of the record); their p50s are rows of their own. Beside them, in
//! the same run, the broker's floor: a bare lapin pair's confirmed publish
//! and its publish-to-delivery (`raw::round_trips`), which a gpuq submit
//! and a gpuq round trip each contain, and a bare Redis round trip (`PING`):
//! a gpuq round trip makes four Redis calls in series (the queued record,
//! the claim, the outcome, the final read) and one pub/sub hop.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use gpuq_producer::JobRequest;

use super::{percentile, raw, BenchOptions, BenchSystem, Figure};

/// The latency figures over `options.runs` runs of
/// `options.latency_samples` round trips each.
pub async fn figures(echo: &BenchSystem, options: &BenchOptions) -> Result<Vec<Figure>> {
    const PERCENTILES: [f64; 4] = [50.0, 95.0, 99.0, 99.9];
    let mut per_run: Vec<Vec<f64>> = vec![Vec::new(); PERCENTILES.len() + 6];
    for run in 0..options.runs.max(1) {
        let mut latency = Vec::with_capacity(options.latency_samples);
        let mut submit = Vec::with_capacity(options.latency_samples);
        let mut wait = Vec::with_capacity(options.latency_samples);
        for i in 0..options.latency_samples {
            let mut request = JobRequest::new("echo").input("i", i as u64);
            request.job_id = Some(format!("lat-{run}-{i}-{}", uuid::Uuid::new_v4().simple()));
            let started = Instant::now();
            let id = echo.producer.submit(request).await?;
            let submitted = started.elapsed();
            let record = echo.producer.wait(&id, Duration::from_secs(30)).await?;
            if !record.is_some_and(|r| r.status == Some(gpuq_common::JobStatus::Completed)) {
                bail!("latency job {id} did not complete");
            }
            let total = started.elapsed();
            latency.push(total.as_secs_f64() * 1000.0);
            submit.push(submitted.as_secs_f64() * 1000.0);
            wait.push((total - submitted).as_secs_f64() * 1000.0);
        }
        latency.sort_by(f64::total_cmp);
        for (index, p) in PERCENTILES.iter().enumerate() {
            per_run[index].push(percentile(&latency, *p));
        }
        per_run[PERCENTILES.len()].push(latency.last().copied().unwrap_or(f64::NAN));
        submit.sort_by(f64::total_cmp);
        wait.sort_by(f64::total_cmp);
        per_run[PERCENTILES.len() + 1].push(percentile(&submit, 50.0));
        per_run[PERCENTILES.len() + 2].push(percentile(&wait, 50.0));
        let (mut confirmed, mut delivered) =
            raw::round_trips(&echo.system, options, options.latency_samples).await?;
        confirmed.sort_by(f64::total_cmp);
        delivered.sort_by(f64::total_cmp);
        per_run[PERCENTILES.len() + 3].push(percentile(&confirmed, 50.0));
        per_run[PERCENTILES.len() + 4].push(percentile(&delivered, 50.0));
        let mut redis = echo.system.redis().await;
        let mut pings = Vec::with_capacity(options.latency_samples);
        for _ in 0..options.latency_samples {
            let started = Instant::now();
            redis::cmd("PING").query_async::<()>(&mut redis).await?;
            pings.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        pings.sort_by(f64::total_cmp);
        per_run[PERCENTILES.len() + 5].push(percentile(&pings, 50.0));
    }
    let mut names: Vec<String> = PERCENTILES
        .iter()
        .map(|p| format!("latency p{p}"))
        .collect();
    names.push("latency max".to_owned());
    names.push("latency p50: submit".to_owned());
    names.push("latency p50: wait".to_owned());
    names.push("bare lapin p50: publish to confirm".to_owned());
    names.push("bare lapin p50: publish to delivery".to_owned());
    names.push("bare redis p50: round trip (PING)".to_owned());
    Ok(names
        .iter()
        .zip(per_run)
        .map(|(name, values)| Figure::new(name, "ms", values))
        .collect())
}
