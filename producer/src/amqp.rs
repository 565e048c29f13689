//! Owns the producer's RabbitMQ connection: confirmed, mandatory publishes and
//! queue depth look-ups.

use gpuq_common::amqp::{connect, declare_topology};
use gpuq_common::topology::Topology;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};

/// What the broker did with a published job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Stored in a queue (confirmed).
    Queued,
    /// No queue is bound to the routing key: the broker returned the job.
    Unroutable,
    /// The broker refused to store it (nack), e.g. a full quorum queue.
    Refused,
}

/// Depth of one queue, from a passive declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub messages: u32,
    pub consumers: u32,
}

/// A publish sent, its confirm still to come.
pub type StartedPublish = Result<PublisherConfirm, lapin::Error>;

pub struct Publisher {
    connection: Connection,
    channel: Channel,
}

impl Publisher {
    pub async fn connect(
        url: &str,
        topology: Option<&Topology>,
    ) -> Result<Publisher, lapin::Error> {
        let connection = connect(url, &format!("gpuq-producer pid{}", std::process::id())).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        if let Some(topology) = topology {
            declare_topology(&channel, topology).await?;
        }
        Ok(Publisher {
            connection,
            channel,
        })
    }

    /// Publishes with `mandatory`; the returned confirm resolves when the broker
    /// has taken (or returned) the message, so many publishes can be in flight.
    /// Publishes without waiting for the broker's confirm (see [`Publisher::outcome`]).
    pub async fn start_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PublisherConfirm, lapin::Error> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        self.channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties,
            )
            .await
    }

    /// What the broker did with a published message.
    pub async fn outcome(confirm: PublisherConfirm) -> Result<PublishOutcome, lapin::Error> {
        Ok(match confirm.await? {
            Confirmation::Ack(Some(_returned)) => PublishOutcome::Unroutable,
            Confirmation::Ack(None) | Confirmation::NotRequested => PublishOutcome::Queued,
            Confirmation::Nack(_) => PublishOutcome::Refused,
        })
    }

    /// Messages and consumers of a queue; `None` if it does not exist.
    pub async fn queue_depth(&self, queue: &str) -> Result<Option<QueueDepth>, lapin::Error> {
        // A passive declare of a missing queue closes its channel: use a throwaway one.
        let channel = self.connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await;
        let depth = match declared {
            Ok(queue) => Some(QueueDepth {
                messages: queue.message_count(),
                consumers: queue.consumer_count(),
            }),
            Err(_) => None,
        };
        if channel.status().connected() {
            let _ = channel.close(200, "depth read".into()).await;
        }
        Ok(depth)
    }

    pub fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    pub async fn close(&self) {
        let _ = self.connection.close(200, "producer closing".into()).await;
    }
}
