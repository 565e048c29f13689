//! Owns the worker's RabbitMQ connection.
//!
//! Each model's queues are consumed (with `worker.prefetch` per queue) and
//! fetched from (`basic.get`, for pull mode) on a channel of their own, so
//! the deliveries and acks of one model never wait on another's channel
//! lock (issue 18); one more channel publishes with confirms (dead letters,
//! forwarded jobs, RPC replies), as lapin recommends: a slow publish
//! confirm never stalls deliveries. A model's channel stays open for the
//! whole connection, even while none of its queues is consumed: closing it
//! would requeue the deliveries it holds.

use futures_util::stream::{BoxStream, StreamExt};
use gpuq_common::amqp::{declare_topology, NoNodeError};
/// The cluster's nodes; the worker connects through [`Broker::connect`].
pub use gpuq_common::amqp::{BrokerNodes, NodeIndex};
use gpuq_common::fair_share::SubQueue;
use gpuq_common::names::dead_letter_header;
use gpuq_common::topology::Topology;
use gpuq_common::{JobError, Names};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};

mod delivery;
pub use delivery::Delivery;

/// Why a worker's publish or connection failed: the job path requeues (or,
/// for a reply, logs) and the session reconnects on the next node.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("rabbitmq did not confirm a message published to '{exchange}' within {timeout_ms} ms (amqp.publish_timeout_ms)")]
    ConfirmTimeout { exchange: String, timeout_ms: u64 },
    #[error("rabbitmq refused (nacked) a message published to '{0}'")]
    Nacked(String),
    #[error("rabbitmq returned a message published to queue '{0}': the queue is missing or its node is down")]
    Unroutable(String),
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    #[error(transparent)]
    NoNode(#[from] NoNodeError),
    #[error("rabbitmq took the connection but did not set it up within {} s", SETUP_TIMEOUT.as_secs())]
    SetupTimeout,
}

/// Longest wait for a new connection's channels and declares.
const SETUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Broker {
    connection: Connection,
    /// Each model's consume channel, opened at its first consumer or fetch.
    consume_channels: parking_lot::Mutex<HashMap<String, Channel>>,
    /// The prefetch each consume channel is given (`set_prefetch`).
    prefetch: AtomicU16,
    publish_channel: Channel,
    names: Names,
    /// Running consumers, with the channel each runs on.
    consumer_tags: parking_lot::Mutex<Vec<(String, Channel)>>,
    /// Longest wait for a publish's confirm (`amqp.publish_timeout_ms`).
    publish_timeout: std::time::Duration,
    /// The node the connection reached, reported back when it is lost.
    pub node: NodeIndex,
}

impl Broker {
    /// Connects to the first node that answers, opens both channels and
    /// declares the topology (again: the node may be new).
    pub async fn connect(
        nodes: &BrokerNodes,
        worker_id: &str,
        names: Names,
        topology: &Topology,
        publish_timeout: std::time::Duration,
    ) -> Result<Broker, BrokerError> {
        let (connection, node) = nodes.connect(&format!("gpuq-worker {worker_id}")).await?;
        let setup = async {
            let publish_channel = connection.create_channel().await?;
            publish_channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            declare_topology(&connection, topology).await?;
            Ok::<_, lapin::Error>(publish_channel)
        };
        // A node going down may take the handshake and never answer the
        // rest: then the next node, not a hung worker.
        let set_up = tokio::time::timeout(SETUP_TIMEOUT, setup).await;
        let failed = match set_up {
            Ok(Ok(publish_channel)) => {
                return Ok(Broker {
                    connection,
                    consume_channels: parking_lot::Mutex::new(HashMap::new()),
                    prefetch: AtomicU16::new(0),
                    publish_channel,
                    names,
                    consumer_tags: parking_lot::Mutex::new(Vec::new()),
                    publish_timeout,
                    node,
                })
            }
            Ok(Err(error)) => BrokerError::from(error),
            Err(_) => BrokerError::SetupTimeout,
        };
        // Closed, not left open: the worker retries with back-off.
        nodes.connection_lost(node);
        let closing = connection.close(200, "setup failed".into());
        let _ = tokio::time::timeout(SETUP_TIMEOUT, closing).await;
        Err(failed)
    }

    /// Sets how many unacked deliveries each consumer may hold.
    pub async fn set_prefetch(&self, prefetch: u16) -> Result<(), BrokerError> {
        self.prefetch.store(prefetch, Ordering::Relaxed);
        let open: Vec<Channel> = self.consume_channels.lock().values().cloned().collect();
        for channel in open {
            channel
                .basic_qos(prefetch, BasicQosOptions { global: false })
                .await?;
        }
        Ok(())
    }

    /// The channel `model_id`'s queues are consumed and fetched on.
    async fn consume_channel(&self, model_id: &str) -> Result<Channel, BrokerError> {
        if let Some(channel) = self.consume_channels.lock().get(model_id) {
            return Ok(channel.clone());
        }
        let channel = self.connection.create_channel().await?;
        let prefetch = self.prefetch.load(Ordering::Relaxed);
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await?;
        let mut channels = self.consume_channels.lock();
        Ok(channels
            .entry(model_id.to_owned())
            .or_insert(channel)
            .clone())
    }

    /// Names of this namespace's queues.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Starts consuming one of a model's queues under `tag` (unique per channel).
    /// The stream ends once the consumer is cancelled and every delivery the
    /// broker sent before the cancel has been yielded.
    pub async fn start_consumer(
        &self,
        model_id: &str,
        sub: &SubQueue,
        tag: &str,
    ) -> Result<BoxStream<'static, Result<Delivery, BrokerError>>, BrokerError> {
        let channel = self.consume_channel(model_id).await?;
        let consumer = channel
            .basic_consume(
                sub.queue_name(&self.names, model_id).into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.consumer_tags.lock().push((tag.to_owned(), channel));
        Ok(consumer
            .map(|delivery| delivery.map(Delivery).map_err(BrokerError::from))
            .boxed())
    }

    /// Fetches one job of a model's queue (`basic.get`, acked later like a
    /// delivery to a consumer), or `None` when the queue is empty: a
    /// worker in pull mode (`crate::pull`) takes exactly the job it runs.
    pub async fn get(
        &self,
        model_id: &str,
        sub: &SubQueue,
    ) -> Result<Option<Delivery>, BrokerError> {
        let channel = self.consume_channel(model_id).await?;
        let message = channel
            .basic_get(
                sub.queue_name(&self.names, model_id).into(),
                BasicGetOptions::default(),
            )
            .await?;
        Ok(message.map(|message| Delivery(message.delivery)))
    }

    /// Stops one consumer: the broker sends it nothing more.
    pub async fn cancel_consumer(&self, tag: &str) -> Result<(), BrokerError> {
        let channel = {
            let mut tags = self.consumer_tags.lock();
            let at = tags.iter().position(|(t, _)| t == tag);
            at.map(|at| tags.remove(at).1)
        };
        if let Some(channel) = channel {
            channel
                .basic_cancel(tag.into(), BasicCancelOptions::default())
                .await?;
        }
        Ok(())
    }

    /// Stops every consumer: the broker sends no more deliveries.
    pub async fn cancel_consumers(&self) {
        let tags = std::mem::take(&mut *self.consumer_tags.lock());
        for (tag, channel) in tags {
            if let Err(error) = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await
            {
                tracing::warn!(%error, consumer = %tag, "cancelling consumer failed");
            }
        }
    }

    /// Publishes a copy of an unusable message to the dead-letter exchange with
    /// the reason in headers, and waits for the broker to confirm it.
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        source_queue: &str,
        error: &JobError,
        worker_id: &str,
    ) -> Result<(), BrokerError> {
        let mut headers = delivery.0.properties.headers().clone().unwrap_or_default();
        let mut put = |key: &str, value: &str| {
            headers.insert(key.into(), AMQPValue::LongString(value.into()));
        };
        put(dead_letter_header::ERROR_CODE, error.code.as_str());
        put(dead_letter_header::ERROR_MESSAGE, &error.message);
        put(dead_letter_header::SOURCE_QUEUE, source_queue);
        put(dead_letter_header::WORKER, worker_id);
        let properties = delivery.0.properties.clone().with_headers(headers);
        let exchange = self.names.dead_letter_exchange();
        self.publish_confirmed(&exchange, source_queue, &delivery.0.data, properties, false)
            .await
            .map(|_| ())
    }

    /// Re-publishes a job under another routing key (a job pinned to a model
    /// other than the queue's). Returns `false` when nothing could route it.
    pub async fn forward(
        &self,
        routing_key: &str,
        delivery: &Delivery,
    ) -> Result<bool, BrokerError> {
        let exchange = self.names.jobs_exchange();
        self.publish_confirmed(
            &exchange,
            routing_key,
            &delivery.0.data,
            delivery.0.properties.clone(),
            true,
        )
        .await
    }

    /// Moves a job to another of its model's queues (a VRAM tier): declares
    /// it (the giver may be the first to use it), then publishes the job
    /// there, confirmed. `false` when the queue did not take it.
    pub async fn give_back(
        &self,
        queue: &gpuq_common::topology::QueueSpec,
        delivery: &Delivery,
    ) -> Result<bool, BrokerError> {
        let topology = Topology {
            exchanges: Vec::new(),
            queues: vec![queue.clone()],
        };
        declare_topology(&self.connection, &topology).await?;
        self.publish_confirmed(
            "",
            &queue.name,
            &delivery.0.data,
            delivery.0.properties.clone(),
            true,
        )
        .await
    }

    /// Parks a job in a retry queue for `delay` (per-message TTL); the broker
    /// then dead-letters it back to its model's queue.
    pub async fn park(
        &self,
        retry_queue: &str,
        delivery: &Delivery,
        delay: std::time::Duration,
    ) -> Result<(), BrokerError> {
        let properties = delivery
            .0
            .properties
            .clone()
            .with_delivery_mode(2)
            .with_expiration(delay.as_millis().to_string().as_str().into());
        match self
            .publish_confirmed("", retry_queue, &delivery.0.data, properties, true)
            .await?
        {
            true => Ok(()),
            // The retry queue's node is down (a classic queue): the caller
            // requeues the job rather than ack a copy that went nowhere.
            false => Err(BrokerError::Unroutable(retry_queue.to_owned())),
        }
    }

    /// Publishes a webhook delivery to `<ns>.webhooks` (persistent,
    /// confirmed); `false` when no such queue exists (no sender declared it).
    pub async fn publish_webhook(
        &self,
        delivery: &gpuq_common::webhook::WebhookDelivery,
    ) -> Result<bool, BrokerError> {
        let body = serde_json::to_vec(delivery).expect("a webhook delivery serializes");
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(delivery.id.as_str().into());
        let queue = self.names.webhooks_queue();
        self.publish_confirmed("", &queue, &body, properties, true)
            .await
    }

    /// Sends a job's reply to its `reply_to` queue (RPC style).
    pub async fn reply(
        &self,
        reply_to: &str,
        correlation_id: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> Result<(), BrokerError> {
        let mut properties = BasicProperties::default().with_content_type(content_type.into());
        if let Some(correlation_id) = correlation_id {
            properties = properties.with_correlation_id(correlation_id.into());
        }
        self.publish_confirmed("", reply_to, body, properties, false)
            .await
            .map(|_| ())
    }

    /// Publishes and waits for the confirm. Returns whether the message was routed
    /// (always `true` unless `mandatory`).
    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<bool, BrokerError> {
        let confirm = self
            .publish_channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await?;
        let confirmation = tokio::time::timeout(self.publish_timeout, confirm)
            .await
            .map_err(|_| BrokerError::ConfirmTimeout {
                exchange: exchange.to_owned(),
                timeout_ms: self.publish_timeout.as_millis() as u64,
            })??;
        match confirmation {
            Confirmation::Ack(returned) => Ok(returned.is_none()),
            Confirmation::Nack(_) => Err(BrokerError::Nacked(exchange.to_owned())),
            Confirmation::NotRequested => Ok(true),
        }
    }

    pub async fn close(&self) {
        if let Err(error) = self.connection.close(200, "worker stopping".into()).await {
            tracing::debug!(%error, "closing rabbitmq connection");
        }
    }
}
