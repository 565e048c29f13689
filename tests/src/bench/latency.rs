//! Sequential submit-and-wait latency, measured in every run: each run's
//! percentiles (p50, p95, p99, p99.9) and maximum become one value of a
//! figure, so the table reports their median over runs with the spread
//! (min and max), like every other figure, instead of one run's sample.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use gpuq_producer::JobRequest;

use super::{percentile, BenchOptions, BenchSystem, Figure};

/// The latency figures over `options.runs` runs of
/// `options.latency_samples` round trips each.
pub async fn figures(echo: &BenchSystem, options: &BenchOptions) -> Result<Vec<Figure>> {
    const PERCENTILES: [f64; 4] = [50.0, 95.0, 99.0, 99.9];
    let mut per_run: Vec<Vec<f64>> = vec![Vec::new(); PERCENTILES.len() + 1];
    for run in 0..options.runs.max(1) {
        let mut latency = Vec::with_capacity(options.latency_samples);
        for i in 0..options.latency_samples {
            let mut request = JobRequest::new("echo").input("i", i as u64);
            request.job_id = Some(format!("lat-{run}-{i}-{}", uuid::Uuid::new_v4().simple()));
            let started = Instant::now();
            let id = echo.producer.submit(request).await?;
            let record = echo.producer.wait(&id, Duration::from_secs(30)).await?;
            if !record.is_some_and(|r| r.status == Some(gpuq_common::JobStatus::Completed)) {
                bail!("latency job {id} did not complete");
            }
            latency.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        latency.sort_by(f64::total_cmp);
        for (index, p) in PERCENTILES.iter().enumerate() {
            per_run[index].push(percentile(&latency, *p));
        }
        per_run[PERCENTILES.len()].push(latency.last().copied().unwrap_or(f64::NAN));
    }
    let mut names: Vec<String> = PERCENTILES
        .iter()
        .map(|p| format!("latency p{p}"))
        .collect();
    names.push("latency max".to_owned());
    Ok(names
        .iter()
        .zip(per_run)
        .map(|(name, values)| Figure::new(name, "ms", values))
        .collect())
}
