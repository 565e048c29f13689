//! Owns the worker's RabbitMQ connection.
//!
//! One channel consumes (with prefetch = concurrency per queue) and another
//! publishes with confirms (dead letters, forwarded jobs, RPC replies), as lapin
//! recommends: a slow publish confirm never stalls deliveries.

use futures_util::stream::{BoxStream, StreamExt};
use gpuq_common::amqp::{connect, declare_topology};
use gpuq_common::names::dead_letter_header;
use gpuq_common::topology::Topology;
use gpuq_common::{JobError, Names};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection};

mod delivery;
pub use delivery::Delivery;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("rabbitmq refused (nacked) a message published to '{0}'")]
    Nacked(String),
}

pub struct Broker {
    connection: Connection,
    consume_channel: Channel,
    publish_channel: Channel,
    names: Names,
    consumer_tags: parking_lot::Mutex<Vec<String>>,
}

impl Broker {
    /// Connects, opens both channels and declares the topology.
    pub async fn connect(
        url: &str,
        worker_id: &str,
        names: Names,
        topology: &Topology,
    ) -> Result<Broker, BrokerError> {
        let connection = connect(url, &format!("gpuq-worker {worker_id}")).await?;
        let consume_channel = connection.create_channel().await?;
        let publish_channel = connection.create_channel().await?;
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        declare_topology(&publish_channel, topology).await?;
        Ok(Broker {
            connection,
            consume_channel,
            publish_channel,
            names,
            consumer_tags: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Sets how many unacked deliveries each consumer may hold.
    pub async fn set_prefetch(&self, prefetch: u16) -> Result<(), BrokerError> {
        self.consume_channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await?;
        Ok(())
    }

    /// Starts consuming one model's queue under `tag` (unique per channel).
    /// The stream ends once the consumer is cancelled and every delivery the
    /// broker sent before the cancel has been yielded.
    pub async fn start_consumer(
        &self,
        model_id: &str,
        tag: &str,
    ) -> Result<BoxStream<'static, Result<Delivery, BrokerError>>, BrokerError> {
        let consumer = self
            .consume_channel
            .basic_consume(
                self.names.model_queue(model_id).into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.consumer_tags.lock().push(tag.to_owned());
        Ok(consumer
            .map(|delivery| delivery.map(Delivery).map_err(BrokerError::from))
            .boxed())
    }

    /// Stops one consumer: the broker sends it nothing more.
    pub async fn cancel_consumer(&self, tag: &str) -> Result<(), BrokerError> {
        self.consumer_tags.lock().retain(|t| t != tag);
        self.consume_channel
            .basic_cancel(tag.into(), BasicCancelOptions::default())
            .await?;
        Ok(())
    }

    /// Stops every consumer: the broker sends no more deliveries.
    pub async fn cancel_consumers(&self) {
        let tags = std::mem::take(&mut *self.consumer_tags.lock());
        for tag in tags {
            if let Err(error) = self
                .consume_channel
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
        self.publish_confirmed("", retry_queue, &delivery.0.data, properties, true)
            .await
            .map(|_| ())
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
        let confirmation = self
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
            .await?
            .await?;
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
