//! Owns lapin in the dispatcher: its four uses of the broker, each on a
//! connection of its own with small frames (control traffic only):
//! declaring the topology at start, reading each model's ready count for
//! placement, consuming the dead-letter events, and the webhook sender's
//! queues ([`webhooks`]). Nothing else in the dispatcher names lapin.
//!
//! The four share one [`BrokerNodes`] for the process: each reconnects on
//! the next node of the cluster after a loss, and the host record and the
//! `gpuq_amqp_*` metrics report the node of the latest connection.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use futures_util::stream::{BoxStream, StreamExt};
use gpuq_common::amqp::{declare_topology, BrokerNodes, NoNodeError, NodeIndex, CONTROL_FRAME_MAX};
use gpuq_common::config::Config;
use gpuq_common::names::dead_letter_header;
use gpuq_common::record::AmqpLink;
use gpuq_common::topology::Topology;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

pub mod webhooks;

/// The broker refused or dropped something; the caller retries or reconnects.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    #[error(transparent)]
    NoNode(#[from] NoNodeError),
    #[error("queue of model {model}: {source}")]
    Queue {
        model: String,
        #[source]
        source: lapin::Error,
    },
}

static NODES: OnceLock<BrokerNodes> = OnceLock::new();

/// The process's RabbitMQ nodes (from the first config that asks; a
/// dispatcher runs one config's nodes for its whole life: a reload that
/// changes them needs a restart).
fn nodes(config: &Config) -> &'static BrokerNodes {
    NODES.get_or_init(|| BrokerNodes::for_config(config))
}

/// A small-frame control connection to the first node that answers.
async fn connect(config: &Config, name: &str) -> Result<(Connection, NodeIndex), BrokerError> {
    let connected = nodes(config)
        .connect_with_frame_max(name, CONTROL_FRAME_MAX)
        .await?;
    Ok(connected)
}

/// A connection to `node` dropped: the process's next connections start at
/// the node after it.
fn lost(node: NodeIndex) {
    if let Some(nodes) = NODES.get() {
        nodes.connection_lost(node);
    }
}

/// The node the dispatcher's latest connection reached, and its reconnects
/// (for the host record and `gpuq_amqp_*` metrics).
pub fn link() -> AmqpLink {
    NODES
        .get()
        .map_or_else(AmqpLink::default, |nodes| AmqpLink {
            node: nodes.connected_node(),
            reconnects: nodes.reconnects(),
        })
}

/// Declares gpuq's exchanges and queues (idempotent), then disconnects.
pub async fn declare(config: &Config, host_id: &str) -> Result<(), BrokerError> {
    let (connection, _) = connect(config, &format!("gpuq-dispatcher {host_id}")).await?;
    declare_topology(&connection, &Topology::for_config(config)).await?;
    let _ = connection.close(200, "topology declared".into()).await;
    Ok(())
}

/// The placement loop's connection: reads ready counts with passive declares.
pub struct QueueReader {
    connection: Connection,
    channel: Channel,
    node: NodeIndex,
}

impl QueueReader {
    pub async fn connect(config: &Config, host_id: &str) -> Result<QueueReader, BrokerError> {
        let (connection, node) = connect(config, &format!("gpuq-placer {host_id}")).await?;
        let channel = connection.create_channel().await?;
        Ok(QueueReader {
            connection,
            channel,
            node,
        })
    }

    /// Ready messages of each model, summed over its queues (its own and
    /// its sub-queues). A sub-queue someone deleted counts as empty: its
    /// failed passive declare closes the channel, which is opened again.
    pub async fn ready_counts(
        &mut self,
        queues: &[(String, Vec<String>)],
    ) -> Result<BTreeMap<String, u64>, BrokerError> {
        let mut depths = BTreeMap::new();
        for (model, names) in queues {
            let mut ready = 0;
            for (position, queue) in names.iter().enumerate() {
                let declared = self
                    .channel
                    .queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await;
                match declared {
                    Ok(queue) => ready += u64::from(queue.message_count()),
                    Err(_) if position > 0 && self.connection.status().connected() => {
                        tracing::warn!(%queue, "a listed sub-queue does not exist; counted empty");
                        self.channel = self.connection.create_channel().await?;
                    }
                    Err(source) => {
                        if !self.connection.status().connected() {
                            lost(self.node);
                        }
                        return Err(BrokerError::Queue {
                            model: model.clone(),
                            source,
                        });
                    }
                }
            }
            depths.insert(model.clone(), ready);
        }
        Ok(depths)
    }

    pub async fn close(self) {
        let _ = self
            .connection
            .close(200, "dispatcher stopping".into())
            .await;
    }
}

/// One message of `<ns>.dead.events`, read into what the watcher decides on.
pub struct DeadLetter {
    delivery: lapin::message::Delivery,
}

impl DeadLetter {
    pub fn body(&self) -> &[u8] {
        &self.delivery.data
    }

    pub fn message_id(&self) -> Option<String> {
        let id = self.delivery.properties.message_id().as_ref();
        id.map(|v| v.to_string())
    }

    pub fn content_type(&self) -> Option<String> {
        let content_type = self.delivery.properties.content_type().as_ref();
        content_type.map(|v| v.to_string())
    }

    /// A worker dead-lettered it (with its reason in headers), so its outcome
    /// is in Redis already.
    pub fn sent_by_a_worker(&self) -> bool {
        let headers = self.delivery.properties.headers().as_ref();
        gpuq_common::amqp::header_str(headers, dead_letter_header::ERROR_CODE).is_some()
    }

    /// Why the broker dead-lettered it: reason, source queue and count, from
    /// its first `x-death` entry.
    pub fn death(&self) -> Option<(String, String, i64)> {
        death_reason(self.delivery.properties.headers().as_ref())
    }

    pub async fn ack(&self) {
        let _ = self.delivery.ack(BasicAckOptions::default()).await;
    }

    /// Back to the queue, to be handled again (a step after the record failed).
    pub async fn requeue(&self) {
        let options = lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        let _ = self.delivery.nack(options).await;
    }

    /// Delivered before (a watcher died or requeued it mid-way).
    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered
    }
}

/// The dead-letter events this dispatcher consumes, on a connection of its own.
pub struct DeadLetterFeed {
    /// Kept open while the feed lives.
    _connection: Connection,
    node: NodeIndex,
    letters: BoxStream<'static, Result<DeadLetter, BrokerError>>,
    /// Publishes the webhooks of jobs the watcher ends (with webhooks on).
    pub webhooks: Option<webhooks::WebhookPublisher>,
}

impl DeadLetterFeed {
    /// The next letter; `None` or an error once the connection is lost.
    pub async fn next(&mut self) -> Option<Result<DeadLetter, BrokerError>> {
        let letter = self.letters.next().await;
        if !matches!(letter, Some(Ok(_))) {
            lost(self.node);
        }
        letter
    }
}

/// Consumes `<ns>.dead.events` (shared by every dispatcher, so each letter
/// is handled once).
pub async fn dead_letters(config: &Config, host_id: &str) -> Result<DeadLetterFeed, BrokerError> {
    let (connection, node) =
        connect(config, &format!("gpuq-dispatcher {host_id} dead-letters")).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(32, BasicQosOptions::default()).await?;
    let deliveries = channel
        .basic_consume(
            config.names().dead_letter_events_queue().as_str().into(),
            format!("{host_id}.dead-letters").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let letters = deliveries
        .map(|delivery| {
            delivery
                .map(|delivery| DeadLetter { delivery })
                .map_err(BrokerError::from)
        })
        .boxed();
    let webhooks = match config.webhooks.enabled() {
        true => Some(webhooks::WebhookPublisher::open(&connection, config).await?),
        false => None,
    };
    Ok(DeadLetterFeed {
        _connection: connection,
        node,
        letters,
        webhooks,
    })
}

/// The reason, source queue and count of a message's first `x-death` entry.
pub fn death_reason(headers: Option<&FieldTable>) -> Option<(String, String, i64)> {
    let AMQPValue::FieldArray(deaths) = headers?.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let text = |key: &str| match first.inner().get(key) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => String::new(),
    };
    let count = match first.inner().get("count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        _ => 1,
    };
    Some((text("reason"), text("queue"), count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldArray;

    #[test]
    fn x_death_headers_give_the_reason_queue_and_count() {
        let mut death = FieldTable::default();
        death.insert("reason".into(), AMQPValue::LongString("expired".into()));
        death.insert(
            "queue".into(),
            AMQPValue::LongString("gpuq.model.echo".into()),
        );
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        let (reason, queue, count) = death_reason(Some(&headers)).unwrap();
        assert_eq!(
            (reason.as_str(), queue.as_str(), count),
            ("expired", "gpuq.model.echo", 1)
        );
        assert!(death_reason(None).is_none());
    }
}
