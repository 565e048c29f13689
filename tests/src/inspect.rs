//! What a test reads of its system, with plain Redis and AMQP commands (as
//! any outside client would): records, statuses, queue depths, consumers,
//! and raw publishes. Every wait has a deadline.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use crate::TestSystem;

/// A connection to the primary of `target` now (after a failover, the new one).
pub(crate) async fn redis_connection(
    target: &gpuq_common::config::RedisTarget,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    gpuq_common::redis_link::primary_client(target)
        .await?
        .get_multiplexed_async_connection()
        .await
}

impl TestSystem {
    /// A field of a host record, parsed as JSON when it is JSON.
    pub async fn host_record(&self, host_id: &str) -> HashMap<String, String> {
        let mut connection = self.redis().await;
        redis::cmd("HGETALL")
            .arg(self.names.host_key(host_id))
            .query_async(&mut connection)
            .await
            .expect("HGETALL")
    }

    /// The slots of a host record as JSON.
    pub async fn host_slots(&self, host_id: &str) -> Vec<serde_json::Value> {
        let record = self.host_record(host_id).await;
        record
            .get("slots")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    }

    /// A connection to the system's Redis primary (with Sentinel, the one
    /// the sentinels name now).
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis_connection(self.config.redis.target())
            .await
            .expect("redis connection")
    }

    /// A connection to the system's RabbitMQ (in a cluster, the first node
    /// that answers).
    pub async fn amqp(&self) -> lapin::Connection {
        gpuq_common::amqp::BrokerNodes::new(self.config.amqp_nodes(), false)
            .connect("gpuq-tests")
            .await
            .expect("amqp connection")
            .0
    }

    /// `HGETALL` of a job's record, read with plain Redis commands.
    pub async fn job_hash(&self, job_id: &str) -> HashMap<String, String> {
        let mut connection = self.redis().await;
        redis::cmd("HGETALL")
            .arg(self.names.job_key(job_id))
            .query_async(&mut connection)
            .await
            .expect("HGETALL")
    }

    /// Polls a job's record until its status is one of `statuses`.
    pub async fn wait_for_status(
        &self,
        job_id: &str,
        statuses: &[&str],
        timeout: Duration,
    ) -> HashMap<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let hash = self.job_hash(job_id).await;
            if hash
                .get("status")
                .is_some_and(|s| statuses.contains(&s.as_str()))
            {
                return hash;
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} did not reach {statuses:?} within {timeout:?}; record: {hash:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes raw bytes to the jobs exchange, as any AMQP client could.
    pub async fn publish_raw(
        &self,
        routing_key: &str,
        body: &[u8],
        content_type: Option<&str>,
        message_id: Option<&str>,
    ) {
        let connection = self.amqp().await;
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(Default::default())
            .await
            .expect("confirm_select");
        let mut properties = lapin::BasicProperties::default().with_delivery_mode(2);
        if let Some(content_type) = content_type {
            properties = properties.with_content_type(content_type.into());
        }
        if let Some(message_id) = message_id {
            properties = properties.with_message_id(message_id.into());
        }
        let confirm = channel
            .basic_publish(
                self.names.jobs_exchange().as_str().into(),
                routing_key.into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(
            confirm.is_ack() && confirm.take_message().is_none(),
            "job to '{routing_key}' was not routed"
        );
        let _ = connection.close(200, "done".into()).await;
    }

    /// Recent dead-letter notes (`<namespace>:dead`), newest first.
    pub async fn dead_letter_notes(&self) -> Vec<String> {
        let mut connection = self.redis().await;
        redis::cmd("LRANGE")
            .arg(self.names.dead_letters_list())
            .arg(0)
            .arg(-1)
            .query_async(&mut connection)
            .await
            .expect("LRANGE")
    }

    /// A field of a worker's record.
    pub async fn worker_field(&self, worker_id: &str, field: &str) -> Option<String> {
        let mut connection = self.redis().await;
        redis::cmd("HGET")
            .arg(self.names.worker_key(worker_id))
            .arg(field)
            .query_async(&mut connection)
            .await
            .expect("HGET")
    }

    /// SIGKILLs a worker, by the pid its record names (a crash, as the
    /// OOM killer or a segfault would end it).
    pub async fn kill_worker(&self, worker_id: &str) {
        let pid: i32 = self
            .worker_field(worker_id, "pid")
            .await
            .expect("the worker's record names its pid")
            .parse()
            .expect("a pid");
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
    }

    /// Messages and consumers of a queue (passive declare on a throwaway channel).
    pub async fn queue_depth(&self, queue: &str) -> Option<(u32, u32)> {
        let connection = self.amqp().await;
        let channel = connection.create_channel().await.ok()?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await
            .ok()
            .map(|q| (q.message_count(), q.consumer_count()));
        let _ = connection.close(200, "done".into()).await;
        declared
    }

    /// Waits until `queue` has at least `consumers` consumers.
    pub async fn wait_for_consumers(&self, queue: &str, consumers: u32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let depth = self.queue_depth(queue).await;
            if depth.is_some_and(|(_, c)| c >= consumers) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "queue {queue} has {depth:?}, wanted {consumers} consumer(s) within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
