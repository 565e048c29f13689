//! The webhook sender's broker link, on a connection of its own: declares
//! the webhook queues, consumes `<ns>.webhooks` on one channel, and parks
//! or dead-letters deliveries with confirmed, mandatory, persistent
//! publishes on another (a slow confirm never stalls deliveries).
//!
//! What to send, when to retry and where a delivery goes next are
//! `crate::webhooks`'s decisions; this file only speaks AMQP.

use std::time::Duration;

use futures_util::stream::{BoxStream, StreamExt};
use gpuq_common::amqp::{declare_topology, header_u64};
use gpuq_common::config::Config;
use gpuq_common::names::webhook_header;
use gpuq_common::topology::Topology;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::{connect, lost, BrokerError, NodeIndex};

/// Longest `x-gpuq-last-error` header written, bytes.
const MAX_ERROR_HEADER_BYTES: usize = 1024;

/// Why a park or dead-letter publish failed; the caller requeues the
/// delivery so that it is not lost.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("rabbitmq refused (nacked) a message published to queue '{0}'")]
    Nacked(String),
    #[error("rabbitmq returned a message published to queue '{0}': the queue is missing")]
    Unroutable(String),
    #[error("rabbitmq did not confirm a message published to queue '{0}' in time (amqp.publish_timeout_ms)")]
    ConfirmTimeout(String),
}

/// One message of `<ns>.webhooks`.
pub struct WebhookMessage {
    delivery: lapin::message::Delivery,
}

impl WebhookMessage {
    /// The body: a JSON `gpuq_common::webhook::WebhookDelivery`.
    pub fn body(&self) -> &[u8] {
        &self.delivery.data
    }

    /// Attempts made before this one (`x-gpuq-attempt`; 0 on the first).
    pub fn attempts_before(&self) -> u64 {
        let headers = self.delivery.properties.headers().as_ref();
        header_u64(headers, webhook_header::ATTEMPT).unwrap_or(0)
    }

    /// Done with it: delivered, parked or dead-lettered.
    pub async fn ack(&self) {
        let _ = self.delivery.ack(BasicAckOptions::default()).await;
    }

    /// Back to the queue, to be tried again (its park could not be published).
    pub async fn requeue(&self) {
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        let _ = self.delivery.nack(options).await;
    }
}

/// Publishes deliveries to the retry tier and dead queues; cheap to clone.
#[derive(Clone)]
pub struct WebhookPublisher {
    channel: Channel,
    confirm_timeout: Duration,
}

impl WebhookPublisher {
    /// Publishes `body` to `queue` (default exchange; persistent, mandatory,
    /// confirmed) with the attempt count and, when given, the last error.
    pub async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        message_id: &str,
        attempts: u64,
        last_error: Option<&str>,
    ) -> Result<(), PublishError> {
        let mut headers = FieldTable::default();
        let attempts = i64::try_from(attempts).unwrap_or(i64::MAX);
        headers.insert(
            webhook_header::ATTEMPT.into(),
            AMQPValue::LongLongInt(attempts),
        );
        if let Some(error) = last_error {
            let error = truncated(error, MAX_ERROR_HEADER_BYTES);
            headers.insert(
                webhook_header::LAST_ERROR.into(),
                AMQPValue::LongString(error.into()),
            );
        }
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(message_id.into())
            .with_headers(headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = self
            .channel
            .basic_publish("".into(), queue.into(), options, body, properties)
            .await?;
        let confirmation = tokio::time::timeout(self.confirm_timeout, confirm)
            .await
            .map_err(|_| PublishError::ConfirmTimeout(queue.to_owned()))??;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(PublishError::Unroutable(queue.to_owned())),
            Confirmation::Nack(_) => Err(PublishError::Nacked(queue.to_owned())),
        }
    }
}

impl WebhookPublisher {
    /// A confirmed publisher on a channel of its own of `connection`.
    pub async fn open(connection: &Connection, config: &Config) -> Result<Self, BrokerError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(WebhookPublisher {
            channel,
            confirm_timeout: Duration::from_millis(config.amqp.publish_timeout_ms),
        })
    }
}

/// The sender's connection: the consumer of `<ns>.webhooks` and the publisher.
pub struct WebhookLink {
    connection: Connection,
    node: NodeIndex,
    messages: BoxStream<'static, Result<WebhookMessage, BrokerError>>,
    publisher: WebhookPublisher,
}

impl WebhookLink {
    /// Connects, declares the webhook queues and starts consuming with
    /// `prefetch` unacked deliveries at most.
    pub async fn connect(
        config: &Config,
        host_id: &str,
        prefetch: u16,
    ) -> Result<WebhookLink, BrokerError> {
        let (connection, node) =
            connect(config, &format!("gpuq-dispatcher {host_id} webhooks")).await?;
        let topology = Topology {
            exchanges: Vec::new(),
            queues: gpuq_common::webhook::queues::queue_specs(config),
        };
        declare_topology(&connection, &topology).await?;
        let publisher = WebhookPublisher::open(&connection, config).await?;
        let consume_channel = connection.create_channel().await?;
        consume_channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let deliveries = consume_channel
            .basic_consume(
                config.names().webhooks_queue().as_str().into(),
                format!("{host_id}.webhooks").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let messages = deliveries
            .map(|delivery| {
                delivery
                    .map(|delivery| WebhookMessage { delivery })
                    .map_err(BrokerError::from)
            })
            .boxed();
        Ok(WebhookLink {
            connection,
            node,
            messages,
            publisher,
        })
    }

    /// The next delivery; `None` or an error once the connection is lost.
    pub async fn next(&mut self) -> Option<Result<WebhookMessage, BrokerError>> {
        let message = self.messages.next().await;
        if !matches!(message, Some(Ok(_))) {
            lost(self.node);
        }
        message
    }

    pub fn publisher(&self) -> WebhookPublisher {
        self.publisher.clone()
    }

    /// Closes the connection; unacked deliveries go back to the queue.
    pub async fn close(self) {
        let closing = self.connection.close(200, "webhook sender stopping".into());
        let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn webhook_error_headers_are_cut_at_a_character_boundary() {
        assert_eq!(super::truncated("abc", 10), "abc");
        assert_eq!(super::truncated("aéb", 2), "a");
        assert_eq!(super::truncated("aéb", 3), "aé");
    }
}
