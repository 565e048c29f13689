//! Live event streams cannot hurt the gateway or Redis: one Redis
//! subscription however many streams, bounded memory for clients that never
//! read, a final `event: lagged` for a reader that fell behind, a cap on
//! concurrent streams, and a header timeout for clients that never finish a
//! request.

use std::time::Duration;

use gpuq_common::{ErrorCode, JobError, JobStatus, StatusEvent};
use gpuq_integration_tests::fixtures::ConfigBuilder;
use gpuq_integration_tests::http::{start_gateway, Gateway};
use gpuq_integration_tests::{eventually, TestSystem};
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn scenario() -> ConfigBuilder {
    ConfigBuilder::new()
        .section("[gateway]\nmax_streams = 4096\nheader_timeout_s = 1")
        .echo("echo")
}

/// A client that asks for `path` as an event stream and then never reads,
/// with the smallest receive buffer the kernel allows.
async fn idle_stream(gateway: &Gateway, path: &str) -> TcpStream {
    let address: std::net::SocketAddr = gateway.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(address).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Publishes `count` status events of about `pad` bytes each on the system's channel.
async fn flood(system: &TestSystem, count: usize, pad: usize) {
    let mut redis = system.redis().await;
    let message = "x".repeat(pad);
    for batch in (0..count).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for n in batch {
            let event = StatusEvent {
                error: Some(JobError::new(ErrorCode::ModelFailed, message.clone())),
                ..StatusEvent::new(format!("flood-{n}"), JobStatus::Failed)
            };
            pipe.publish(
                system.names.events_channel(),
                serde_json::to_string(&event).unwrap(),
            )
            .ignore();
        }
        pipe.query_async::<()>(&mut redis).await.unwrap();
    }
}

async fn subscribers(system: &TestSystem) -> u64 {
    let mut redis = system.redis().await;
    let (_, count): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(system.names.events_channel())
        .query_async(&mut redis)
        .await
        .unwrap();
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_streams_cost_bounded_memory_and_one_subscription() {
    let system = scenario().system();
    let gateway = start_gateway(&system).await;
    // Warm up: the shared subscription exists once the first stream opened.
    let warm = idle_stream(&gateway, "/v1/events").await;
    eventually(
        "the gateway subscribes",
        Duration::from_secs(10),
        || async { subscribers(&system).await == 1 },
    )
    .await;
    let before_kib = rss_kib(gateway.process.pid());

    let mut clients = vec![warm];
    for _ in 0..2_000 {
        clients.push(idle_stream(&gateway, "/v1/events").await);
    }
    assert_eq!(
        subscribers(&system).await,
        1,
        "one Redis subscription for every stream"
    );
    // 10,000 events of about 300 bytes each reach 2,001 clients that never read.
    flood(&system, 10_000, 200).await;
    // Normal requests keep answering while the streams are stuck.
    // (On a loaded 2-core machine the first answer may be a 503 from a Redis
    // reply that took longer than its 5 s timeout while the gateway fanned
    // the flood out: an answer, not a hang; a 200 must follow.)
    let mut answers = Vec::new();
    for _ in 0..5 {
        let (status, body, _) = gateway
            .call(Method::GET, "/v1/jobs?limit=1", None, None)
            .await;
        answers.push((status, body));
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(answers.last().map(|a| a.0), Some(200), "{answers:?}");
    let (status, body, _) = gateway.call(Method::GET, "/v1/features", None, None).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_kib = rss_kib(gateway.process.pid());
    let grown_mib = after_kib.saturating_sub(before_kib) / 1024;
    eprintln!("gateway RSS {before_kib} KiB -> {after_kib} KiB with 2,001 idle streams");
    assert!(grown_mib < 50, "gateway RSS grew {grown_mib} MiB");
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_behind_gets_lagged_and_the_stream_ends() {
    let system = scenario().system();
    let gateway = start_gateway(&system).await;
    let mut client = idle_stream(&gateway, "/v1/events").await;
    eventually(
        "the gateway subscribes",
        Duration::from_secs(10),
        || async { subscribers(&system).await == 1 },
    )
    .await;
    // Far more than the kernel's buffers and the shared ring hold.
    flood(&system, 20_000, 1_000).await;
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(60), client.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the stream did not end");
    let text = String::from_utf8_lossy(&received);
    let last_event = text
        .rfind("event: ")
        .map(|i| &text[i..])
        .unwrap_or_default();
    assert!(
        last_event.starts_with("event: lagged"),
        "last event: {last_event:.200}"
    );
    let delivered = text.matches("\ndata: ").count();
    assert!(
        delivered < 20_000,
        "all {delivered} events were buffered for a stalled reader"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_max_streams_are_refused_and_unknown_jobs_are_404() {
    let system = TestSystem::new(
        &scenario()
            .build()
            .replace("max_streams = 4096", "max_streams = 2"),
    );
    let gateway = start_gateway(&system).await;
    let first = idle_stream(&gateway, "/v1/events").await;
    let _second = idle_stream(&gateway, "/v1/events").await;
    eventually("two streams open", Duration::from_secs(10), || async {
        subscribers(&system).await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body, headers) = gateway.call(Method::GET, "/v1/events", None, None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "too_many_streams");
    assert!(headers.contains_key("retry-after"));
    let (status, body, _) = gateway
        .call(Method::GET, "/v1/jobs/no-such-job/events", None, None)
        .await;
    assert_eq!(status, 503, "the cap applies before anything else: {body}");
    // A client that leaves gives its place back.
    drop(first);
    eventually("a stream slot frees", Duration::from_secs(20), || async {
        let (status, _, _) = gateway
            .call(Method::GET, "/v1/jobs/no-such-job/events", None, None)
            .await;
        status == 404
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let system = scenario().system();
    let gateway = start_gateway(&system).await;
    let address = gateway.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gate")
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut buffer)).await;
    assert!(
        read.is_ok(),
        "the connection stayed open past header_timeout_s"
    );
    // The gateway still serves others.
    let (status, _, _) = gateway.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 200);
}
