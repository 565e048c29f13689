//! The broker's raw limit: a bare lapin publisher (confirms, persistent
//! messages, same queue type) and bare consumers with manual acks, no Redis and
//! no gpuq code, on the same machine and in the same run as the gpuq figures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

use super::BenchOptions;
use crate::TestSystem;

/// Declares a bare queue: the same queue type as gpuq's, and an expiry, so
/// a queue a failed run left on the shared broker goes by itself a minute
/// after its last use (these queues are not in gpuq's topology, which the
/// test system's clean-up deletes).
async fn declare_raw_queue(
    channel: &lapin::Channel,
    queue: &str,
    options: &BenchOptions,
) -> Result<()> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(options.queue_type.as_str().into()),
    );
    arguments.insert("x-expires".into(), AMQPValue::LongUInt(60_000));
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
        .await
        .with_context(|| format!("declaring the bare queue {queue}"))?;
    Ok(())
}

/// Messages per second from first publish to last ack.
pub async fn broker_limit(system: &TestSystem, options: &BenchOptions) -> Result<f64> {
    let queue = format!("{}.raw", system.names.namespace());
    let consumers = system.amqp().await;
    let setup = consumers.create_channel().await?;
    declare_raw_queue(&setup, &queue, options).await?;

    // A warm-up round first: a new quorum queue is slow for its first messages.
    let warm_up = options.jobs.min(1000);
    let acked = Arc::new(AtomicUsize::new(0));
    let warmed = Arc::new(tokio::sync::Notify::new());
    let done = Arc::new(tokio::sync::Notify::new());
    for i in 0..options.workers {
        let channel = consumers.create_channel().await?;
        channel
            .basic_qos(
                options.prefetch.min(u32::from(u16::MAX)) as u16,
                BasicQosOptions::default(),
            )
            .await?;
        let mut deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                format!("raw-{i}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (acked, warmed, done, target) = (
            Arc::clone(&acked),
            Arc::clone(&warmed),
            Arc::clone(&done),
            warm_up + options.jobs,
        );
        tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = deliveries.next().await {
                let _ = delivery.ack(BasicAckOptions::default()).await;
                let count = acked.fetch_add(1, Ordering::Relaxed) + 1;
                if count == warm_up {
                    warmed.notify_one();
                }
                if count == target {
                    done.notify_one();
                }
            }
        });
    }

    let publisher = system.amqp().await;
    let channel = publisher.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let body = vec![7u8; options.payload_bytes + 120];
    let publish = |count: usize| {
        let (channel, queue, body) = (channel.clone(), queue.clone(), body.clone());
        async move {
            for _ in 0..count {
                let _pending_confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?;
            }
            channel.wait_for_confirms().await.map(|_| ())
        }
    };
    let warm = warmed.notified();
    publish(warm_up).await?;
    tokio::time::timeout(Duration::from_secs(300), warm)
        .await
        .context("raw warm-up did not finish")?;
    let finished = done.notified();
    let started = Instant::now();
    publish(options.jobs).await?;
    tokio::time::timeout(Duration::from_secs(300), finished)
        .await
        .context("raw consumers did not finish")?;
    let elapsed = started.elapsed();
    let _ = setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = publisher.close(200, "done".into()).await;
    let _ = consumers.close(200, "done".into()).await;
    Ok(options.jobs as f64 / elapsed.as_secs_f64())
}

/// The broker's own floor under gpuq's latency: `samples` sequential round
/// trips of a bare lapin pair on a queue of the same type, each a persistent
/// publish awaited until confirmed, then its delivery awaited and acked.
/// Returns, per round trip in ms, (publish to confirm, publish to delivery):
/// what a gpuq submit and a whole gpuq round trip cost at the least.
pub async fn round_trips(
    system: &TestSystem,
    options: &BenchOptions,
    samples: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let queue = format!("{}.raw-latency", system.names.namespace());
    let connection = system.amqp().await;
    let channel = connection.create_channel().await?;
    declare_raw_queue(&channel, &queue, options).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consumer = connection.create_channel().await?;
    let mut deliveries = consumer
        .basic_consume(
            queue.as_str().into(),
            "raw-latency".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let body = vec![7u8; options.payload_bytes + 120];
    let (mut confirmed, mut delivered) = (Vec::new(), Vec::new());
    // A few unmeasured round trips first, as for the throughput figure.
    for sample in 0..samples + 20 {
        let started = Instant::now();
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        let confirm = started.elapsed();
        let delivery = tokio::time::timeout(Duration::from_secs(30), deliveries.next())
            .await
            .context("raw latency delivery did not come")?
            .context("raw latency consumer ended")??;
        let total = started.elapsed();
        delivery.ack(BasicAckOptions::default()).await?;
        if sample >= 20 {
            confirmed.push(confirm.as_secs_f64() * 1000.0);
            delivered.push(total.as_secs_f64() * 1000.0);
        }
    }
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    Ok((confirmed, delivered))
}
