//! `gpuq-bench --listing`: what one job listing costs Redis, and what eight
//! at once cost every other Redis client, with the job indexes against the
//! scan they replaced, side by side on the same data.
//!
//! The data: `jobs` finished (cancelled, through the real cancel script)
//! jobs of one feature, queued through the producer library into a namespace
//! of its own on the local Redis and RabbitMQ. The query is the issue's
//! worst case, `feature=nomatch&limit=1000`: it matches nothing, so the old
//! scan read every record of the day. The old scan is reproduced here as it
//! was (pages of `limit * 4` ids, `HGETALL` each, parse, filter), so both
//! run against the same Redis in one run. A third row lists `feature=busy`,
//! a full page of 1,000 records read through the indexes, the most a
//! matching listing of that limit reads. Figures only; nothing is asserted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gpuq_producer::{JobFilter, JobRequest, Producer};
use redis::AsyncCommands;
use serde::Serialize;

use crate::TestSystem;

const BODY: &str = r#"
[[models]]
id = "busy"
feature = "busy"
runtime = "echo"
vram_mib = 256
"#;

/// Side-by-side figures of one run.
#[derive(Debug, Serialize)]
pub struct ListingReport {
    pub jobs: usize,
    pub indexed: ListingFigures,
    /// `feature=busy&limit=1000` through the indexes: a full page, 1,000
    /// records read, the most one listing of 1,000 reads when it matches.
    pub indexed_full_page: ListingFigures,
    pub scan: ListingFigures,
}

#[derive(Debug, Serialize)]
pub struct ListingFigures {
    /// One listing alone, milliseconds (median of 5).
    pub single_ms: f64,
    /// One listing while eight clients list at once (mean), milliseconds.
    pub eight_concurrent_ms: f64,
    /// PING round trips of another client during the eight, milliseconds.
    pub ping_p50_ms: f64,
    pub ping_p99_ms: f64,
    pub ping_max_ms: f64,
}

/// The listing before the indexes: the all-jobs index, every record read whole.
async fn scan_listing(
    redis: &mut redis::aio::MultiplexedConnection,
    system: &TestSystem,
    feature: &str,
    limit: usize,
) -> usize {
    let mut found = 0;
    let page = (limit * 4).max(100) as isize;
    let mut start = 0isize;
    while found < limit {
        let ids: Vec<String> = redis
            .zrevrange(system.names.jobs_index(), start, start + page - 1)
            .await
            .unwrap();
        if ids.is_empty() {
            break;
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(system.names.job_key(id));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(redis).await.unwrap();
        for (id, hash) in ids.iter().zip(hashes) {
            let Some(record) = gpuq_common::record::JobRecord::from_hash(id, &hash) else {
                continue;
            };
            if record.feature.as_deref() == Some(feature) {
                found += 1;
            }
        }
        start += page;
    }
    found
}

/// A connection without a response timeout: the old scan's pipelines of
/// 4,000 `HGETALL`s take longer than the harness's default allows.
async fn unbounded_connection() -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(crate::redis_url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

async fn measure<F, Fut>(system: &TestSystem, listing: F) -> anyhow::Result<ListingFigures>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut singles = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        listing().await;
        singles.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    singles.sort_by(f64::total_cmp);
    let mut pinger = system.redis().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pings = {
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let _: String = redis::cmd("PING").query_async(&mut pinger).await.unwrap();
                samples.push(started.elapsed().as_secs_f64() * 1000.0);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            samples
        })
    };
    // Eight clients list over and over for at least two seconds, so the
    // PING sample is large enough for a p99 even when a listing is fast.
    let started = Instant::now();
    let mut eight = Vec::new();
    for _ in 0..8 {
        let listing = listing.clone();
        eight.push(tokio::spawn(async move {
            let mut count = 0u32;
            while count == 0 || started.elapsed() < Duration::from_secs(2) {
                listing().await;
                count += 1;
            }
            count
        }));
    }
    let mut listings = 0u32;
    for handle in eight {
        listings += handle.await?;
    }
    // Mean time of one listing while eight run at once.
    let eight_ms = started.elapsed().as_secs_f64() * 1000.0 * 8.0 / f64::from(listings);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut pings = pings.await?;
    pings.sort_by(f64::total_cmp);
    let at = |q: f64| pings[((pings.len() as f64 - 1.0) * q).round() as usize];
    Ok(ListingFigures {
        single_ms: singles[2],
        eight_concurrent_ms: eight_ms,
        ping_p50_ms: at(0.5),
        ping_p99_ms: at(0.99),
        ping_max_ms: at(1.0),
    })
}

pub async fn run(jobs: usize) -> anyhow::Result<ListingReport> {
    let system = TestSystem::new(BODY);
    let producer = std::sync::Arc::new(Producer::connect(system.config.clone()).await?);
    for batch in (0..jobs).collect::<Vec<_>>().chunks(1000) {
        let requests = batch
            .iter()
            .map(|n| JobRequest::new("busy").input("n", *n as i64))
            .collect();
        for id in producer.submit_many(requests).await {
            producer.cancel(&id?).await?;
        }
    }
    let indexed = {
        let producer = std::sync::Arc::clone(&producer);
        measure(&system, move || {
            let producer = std::sync::Arc::clone(&producer);
            async move {
                let filter = JobFilter {
                    feature: Some("nomatch".into()),
                    ..JobFilter::default()
                };
                producer.recent_jobs(1000, &filter).await.unwrap();
            }
        })
        .await?
    };
    let indexed_full_page = {
        let producer = std::sync::Arc::clone(&producer);
        measure(&system, move || {
            let producer = std::sync::Arc::clone(&producer);
            async move {
                let filter = JobFilter {
                    feature: Some("busy".into()),
                    ..JobFilter::default()
                };
                producer.recent_jobs(1000, &filter).await.unwrap();
            }
        })
        .await?
    };
    let system = std::sync::Arc::new(system);
    let scan = {
        let system_for_listing = std::sync::Arc::clone(&system);
        measure(&system, move || {
            let system = std::sync::Arc::clone(&system_for_listing);
            async move {
                let mut redis = unbounded_connection().await;
                scan_listing(&mut redis, &system, "nomatch", 1000).await;
            }
        })
        .await?
    };
    Ok(ListingReport {
        jobs,
        indexed,
        indexed_full_page,
        scan,
    })
}

pub fn render(report: &ListingReport) -> String {
    let row = |name: &str, f: &ListingFigures| {
        format!(
            "{name:<28} {:>9.1} {:>13.1} {:>9.2} {:>9.2} {:>9.2}\n",
            f.single_ms, f.eight_concurrent_ms, f.ping_p50_ms, f.ping_p99_ms, f.ping_max_ms
        )
    };
    let mut out = format!(
        "listing limit=1000 over {} finished jobs of feature busy, feature=nomatch unless said (ms)\n{:<28} {:>9} {:>13} {:>9} {:>9} {:>9}\n",
        report.jobs, "", "one alone", "one of eight", "ping p50", "ping p99", "ping max"
    );
    out += &row("indexes (this version)", &report.indexed);
    out += &row("indexes, feature=busy (1000)", &report.indexed_full_page);
    out += &row("full scan (before)", &report.scan);
    out
}
