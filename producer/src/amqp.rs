//! Owns the producer's RabbitMQ connection: confirmed, mandatory publishes and
//! queue depth look-ups, on whichever node of the cluster answers
//! ([`BrokerNodes`]: a lost connection is replaced on the next node).

use gpuq_common::amqp::{declare_topology, NoNodeError};
/// The cluster's nodes; the producer connects through [`Publisher::connect`].
pub use gpuq_common::amqp::{BrokerNodes, NodeIndex};
use gpuq_common::topology::Topology;
use gpuq_common::wire::Encoding;
use gpuq_common::JobMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
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

/// RabbitMQ could not be reached, or refused or dropped something.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    Amqp(#[from] lapin::Error),
    /// No node of the cluster answered.
    #[error("{0}")]
    NoNode(std::sync::Arc<NoNodeError>),
    /// The broker did not confirm a publish in `amqp.publish_timeout_ms`,
    /// re-sends after failovers included.
    #[error(
        "rabbitmq did not confirm the publish within {timeout_ms} ms (amqp.publish_timeout_ms)"
    )]
    ConfirmTimeout { timeout_ms: u64 },
    /// A node stopped answering mid-call (a node going down).
    #[error("rabbitmq did not answer {what} within {} s", BROKER_CALL_TIMEOUT.as_secs())]
    NoAnswer { what: &'static str },
}

impl From<NoNodeError> for BrokerError {
    fn from(error: NoNodeError) -> Self {
        BrokerError::NoNode(std::sync::Arc::new(error))
    }
}

impl BrokerError {
    /// The connection or channel is gone (the message may not have reached
    /// the broker): a re-send on a new connection may succeed.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            BrokerError::Amqp(_) | BrokerError::NoNode(_) | BrokerError::NoAnswer { .. }
        )
    }
}

/// Longest wait for one broker call that is not a publish (declares, a
/// queue's depth, closing): a node that is going down may never answer.
pub const BROKER_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `call`, or [`BrokerError::NoAnswer`] past [`BROKER_CALL_TIMEOUT`].
async fn bounded<T>(
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(BROKER_CALL_TIMEOUT, call).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(BrokerError::NoAnswer { what }),
    }
}

/// A publish sent, its confirm still to come (or why it was not sent).
pub struct StartedPublish(Result<PublisherConfirm, lapin::Error>);

/// A job's AMQP properties (see [`job_properties`]).
#[derive(Clone)]
pub struct JobProperties(BasicProperties);

pub struct Publisher {
    connection: Connection,
    channel: Channel,
    /// The node the connection reached, reported back when it is lost.
    pub node: NodeIndex,
}

impl Publisher {
    /// Connects to the first node that answers (declaring the topology
    /// there, when given one) and opens the confirmed publishing channel.
    pub async fn connect(
        nodes: &BrokerNodes,
        topology: Option<&Topology>,
    ) -> Result<Publisher, BrokerError> {
        // A node may go down between the handshake and the declares (a
        // failover under way): then the next node, each at most once.
        let mut tries = nodes.labels().len();
        loop {
            match Self::connect_once(nodes, topology).await {
                Ok(publisher) => return Ok(publisher),
                Err((error, Some(node))) if tries > 1 => {
                    tracing::warn!(%error, "rabbitmq node dropped the new connection; trying the next");
                    nodes.connection_lost(node);
                    tries -= 1;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// One connection: the error, and the node when it was reached.
    async fn connect_once(
        nodes: &BrokerNodes,
        topology: Option<&Topology>,
    ) -> Result<Publisher, (BrokerError, Option<NodeIndex>)> {
        let name = format!("gpuq-producer pid{}", std::process::id());
        let (connection, node) = nodes.connect(&name).await.map_err(|e| (e.into(), None))?;
        // Any failure after the handshake counts against this node: a
        // connection reset mid-declare leaves lapin no time to mark it closed,
        // and an error every node repeats (a topology mismatch) is returned
        // after the last one. The connection is closed, not left open.
        let set_up = async {
            if let Some(topology) = topology {
                bounded(
                    "the topology declares",
                    declare_topology(&connection, topology),
                )
                .await?;
            }
            let channel = bounded("a new channel", connection.create_channel()).await?;
            bounded(
                "confirm mode",
                channel.confirm_select(ConfirmSelectOptions::default()),
            )
            .await?;
            Ok::<_, BrokerError>(channel)
        };
        match set_up.await {
            Ok(channel) => Ok(Publisher {
                connection,
                channel,
                node,
            }),
            Err(error) => {
                let closing = connection.close(200, "setup failed".into());
                let _ = tokio::time::timeout(BROKER_CALL_TIMEOUT, closing).await;
                Err((error, Some(node)))
            }
        }
    }

    /// Publishes with `mandatory`; the returned confirm resolves when the broker
    /// has taken (or returned) the message, so many publishes can be in flight.
    /// Publishes without waiting for the broker's confirm (see [`Publisher::outcome`]).
    pub async fn start_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: JobProperties,
    ) -> StartedPublish {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        StartedPublish(
            self.channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    body,
                    properties.0,
                )
                .await,
        )
    }

    /// What the broker did with a published message.
    pub async fn outcome(started: StartedPublish) -> Result<PublishOutcome, BrokerError> {
        Ok(match started.0?.await? {
            Confirmation::Ack(Some(_returned)) => PublishOutcome::Unroutable,
            Confirmation::Ack(None) | Confirmation::NotRequested => PublishOutcome::Queued,
            Confirmation::Nack(_) => PublishOutcome::Refused,
        })
    }

    /// Declares queues (a model's sub-queues) on this connection: idempotent,
    /// and on a channel of its own, so a refusal never closes the
    /// publishing channel every submission shares.
    pub async fn declare(&self, topology: &Topology) -> Result<(), BrokerError> {
        bounded(
            "the sub-queue declares",
            declare_topology(&self.connection, topology),
        )
        .await
    }

    /// Messages and consumers of a queue; `None` if it does not exist.
    pub async fn queue_depth(&self, queue: &str) -> Result<Option<QueueDepth>, BrokerError> {
        // A passive declare of a missing queue closes its channel: use a throwaway one.
        let channel = bounded("a new channel", self.connection.create_channel()).await?;
        let declared = tokio::time::timeout(
            BROKER_CALL_TIMEOUT,
            channel.queue_declare(
                queue.into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            ),
        )
        .await
        .map_err(|_| BrokerError::NoAnswer {
            what: "a queue's depth",
        })?;
        let depth = match declared {
            Ok(queue) => Some(QueueDepth {
                messages: queue.message_count(),
                consumers: queue.consumer_count(),
            }),
            Err(_) => None,
        };
        if channel.status().connected() {
            let closing = channel.close(200, "depth read".into());
            let _ = tokio::time::timeout(BROKER_CALL_TIMEOUT, closing).await;
        }
        Ok(depth)
    }

    pub fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    pub async fn close(&self) {
        let closing = self.connection.close(200, "producer closing".into());
        let _ = tokio::time::timeout(BROKER_CALL_TIMEOUT, closing).await;
    }
}

/// Largest per-message TTL RabbitMQ accepts (`expiration`, milliseconds,
/// 2^32 - 1); a larger one would close the shared publishing channel.
const MAX_AMQP_EXPIRATION_MS: u64 = u32::MAX as u64;

/// The AMQP properties of a job: persistent, its id, a W3C `traceparent`
/// (the job's trace id travels with it to the worker's logs), its priority
/// and, with a queue timeout, a per-message TTL RabbitMQ accepts.
pub fn job_properties(message: &JobMessage, created_ms: u64) -> JobProperties {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(format!("00-{trace_id}-{span_id}-01").as_str().into()),
    );
    tracing::debug!(job_id = %message.job_id, %trace_id, feature = %message.feature, "job submitted");
    let mut properties = BasicProperties::default()
        .with_headers(headers)
        .with_content_type(Encoding::Msgpack.content_type().into())
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(message.job_id.as_str()))
        .with_timestamp(created_ms / 1000)
        .with_app_id("gpuq".into());
    if let Some(priority) = message.priority {
        properties = properties.with_priority(priority);
    }
    if let Some(expiration_ms) = message
        .queue_timeout_s
        .and_then(|s| s.checked_mul(1000))
        .filter(|ms| *ms <= MAX_AMQP_EXPIRATION_MS)
    {
        // The broker drops (dead-letters) it too, even if no worker ever looks.
        properties = properties.with_expiration(expiration_ms.to_string().as_str().into());
    }
    JobProperties(properties)
}
