//! Listing jobs does bounded Redis work, whatever the filter: the indexes per
//! status, feature and submitter are kept by the real status scripts (queued,
//! processing, completed, cancelled, and a job published straight to AMQP),
//! and a listing reads only what its smallest index holds, capped, without
//! results. Each test has a Redis of its own, so Redis's command counters
//! (`INFO commandstats`) count this test's reads alone.

use std::time::Duration;

use gpuq_common::job_index::MAX_RECORDS_READ_PER_LIST;
use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::http::start_gateway;
use gpuq_integration_tests::{PrivateRedis, TestSystem};
use gpuq_producer::{JobRequest, Producer};
use redis::AsyncCommands;
use reqwest::Method;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn scenario() -> ConfigBuilder {
    ConfigBuilder::one_host()
        .echo("echo")
        .echo("other")
        .echo("rare")
}

/// Calls of the commands that read job records, since the last reset.
async fn record_reads(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_hmget:") || l.starts_with("cmdstat_hgetall:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

async fn reset_stats(redis: &mut redis::aio::MultiplexedConnection) {
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(redis)
        .await
        .unwrap();
}

/// `count` jobs of `feature` queued through the producer library (no worker
/// runs them), in batches as a busy front end would.
async fn queue_jobs(producer: &Producer, feature: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for batch in (0..count).collect::<Vec<_>>().chunks(500) {
        let requests = batch
            .iter()
            .map(|n| JobRequest::new(feature).input("n", *n as i64))
            .collect();
        for result in producer.submit_many(requests).await {
            ids.push(result.unwrap());
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_listings_read_only_their_index_and_never_past_the_cap() {
    let private = PrivateRedis::start();
    let system = TestSystem::with_redis(&scenario().build(), &private.url());
    let producer = Producer::connect(system.config.clone()).await.unwrap();
    // A busy day: 2,500 cancelled `other` jobs (through the real cancel
    // script), 2,500 queued `echo` jobs, and 5 jobs of a rare feature.
    let others = queue_jobs(&producer, "other", 2_500).await;
    for id in &others {
        producer.cancel(id).await.unwrap();
    }
    queue_jobs(&producer, "echo", 2_500).await;
    let rare = queue_jobs(&producer, "rare", 5).await;
    let gateway = start_gateway(&system).await;
    let mut redis = system.redis().await;
    let list = |query: &'static str| {
        let gateway = &gateway;
        async move {
            let (status, body, _) = gateway.call(Method::GET, query, None, None).await;
            assert_eq!(status, 200, "{body}");
            body
        }
    };

    // A feature nobody uses: nothing to read at all.
    reset_stats(&mut redis).await;
    let body = list("/v1/jobs?feature=nomatch&limit=1000").await;
    assert_eq!(body["jobs"].as_array().unwrap().len(), 0);
    assert_eq!(
        record_reads(&mut redis).await,
        0,
        "no record is read for an empty index"
    );

    // The rare feature among 5,000 others: only its 5 records are read.
    reset_stats(&mut redis).await;
    let body = list("/v1/jobs?feature=rare&limit=1000").await;
    let mut listed: Vec<String> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut expected = rare.clone();
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(record_reads(&mut redis).await, 5);

    // A full page reads no more than it returns.
    reset_stats(&mut redis).await;
    let body = list("/v1/jobs?feature=echo&limit=1000").await;
    assert_eq!(body["jobs"].as_array().unwrap().len(), 1000);
    assert!(body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["feature"] == "echo"));
    assert_eq!(record_reads(&mut redis).await, 1000);

    // Two large indexes that never match each other: the cap stops the read
    // and the answer says it was cut short.
    reset_stats(&mut redis).await;
    let body = list("/v1/jobs?status=queued&feature=other&limit=1000").await;
    assert_eq!(body["jobs"].as_array().unwrap().len(), 0);
    assert_eq!(body["truncated"], true);
    assert_eq!(
        record_reads(&mut redis).await,
        MAX_RECORDS_READ_PER_LIST as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_follow_every_transition_and_listings_leave_out_results() {
    let system = scenario().system();
    let producer = Producer::connect(system.config.clone()).await.unwrap();
    let _dispatcher = system.dispatcher(&[]);
    system
        .wait_for_consumers(&system.names.model_queue("echo"), 1, WAIT)
        .await;
    let gateway = start_gateway(&system).await;
    let mut redis = system.redis().await;

    // A job through the library: queued -> processing -> completed.
    let done = producer
        .submit(JobRequest::new("echo").input("prompt", "a chair"))
        .await
        .unwrap();
    // A job published straight to RabbitMQ by another client (no queued record).
    let direct = "direct-amqp-job-1";
    system
        .publish_raw(
            "echo",
            &serde_json::to_vec(&json!({"job_id": direct, "feature": "echo", "inputs": {"a": 1}}))
                .unwrap(),
            Some("application/json"),
            None,
        )
        .await;
    // A job cancelled while queued, for a model no worker serves.
    let cancelled = producer.submit(JobRequest::new("other")).await.unwrap();
    producer.cancel(&cancelled).await.unwrap();
    gateway.wait_final(&done).await;
    gateway.wait_final(direct).await;

    let members = |key: String| {
        let mut redis = redis.clone();
        async move {
            let ids: Vec<String> = redis.zrange(key, 0, -1).await.unwrap();
            ids
        }
    };
    let names = &system.names;
    let completed = members(names.jobs_by_status("completed")).await;
    assert!(completed.contains(&done) && completed.contains(&direct.to_owned()));
    assert!(members(names.jobs_by_status("queued")).await.is_empty());
    assert!(members(names.jobs_by_status("processing")).await.is_empty());
    assert_eq!(
        members(names.jobs_by_status("cancelled")).await,
        vec![cancelled.clone()]
    );
    let echo = members(names.jobs_by_feature("echo")).await;
    assert!(echo.contains(&done) && echo.contains(&direct.to_owned()));
    assert_eq!(
        members(names.jobs_by_feature("other")).await,
        vec![cancelled]
    );

    // The listing leaves the result out; the job itself has it.
    let (_, listing, _) = gateway
        .call(Method::GET, "/v1/jobs?status=completed", None, None)
        .await;
    let entry = listing["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == done.as_str())
        .unwrap()
        .clone();
    assert!(entry["result"].is_null(), "{entry}");
    let (_, job, _) = gateway
        .call(Method::GET, &format!("/v1/jobs/{done}"), None, None)
        .await;
    assert_eq!(job["result"]["prompt"], "a chair");

    // An expired record leaves the index when a listing meets it.
    let _: () = redis.del(names.job_key(&done)).await.unwrap();
    let (_, listing, _) = gateway
        .call(Method::GET, "/v1/jobs?status=completed", None, None)
        .await;
    assert!(listing["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["job_id"] != done.as_str()));
    let score: Option<f64> = redis
        .zscore(names.jobs_by_status("completed"), &done)
        .await
        .unwrap();
    assert_eq!(score, None);
}
