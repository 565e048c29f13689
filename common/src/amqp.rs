//! Applies the [`Topology`](crate::topology::Topology) with lapin, and opens
//! named connections (to one node, or failing over across a cluster's nodes
//! with [`BrokerNodes`]). Shared by every process so that all of them declare
//! exactly the same exchanges, queues and arguments.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind as LapinExchangeKind};

use crate::topology::{ArgValue, ExchangeKind, QueueSpec, Topology, REPLICAS_ARGUMENT};

pub mod nodes;
pub use nodes::{BrokerNodes, NoNodeError, NodeFailure, NodeIndex, CONNECT_TIMEOUT};

/// Opens a connection that shows up as `connection_name` in RabbitMQ's management UI.
pub async fn connect(url: &str, connection_name: &str) -> Result<Connection, lapin::Error> {
    let properties =
        ConnectionProperties::default().with_connection_name(LongString::from(connection_name));
    Connection::connect(url, properties).await
}

/// Frame size for connections that carry only small control messages.
pub const CONTROL_FRAME_MAX: u32 = 16 * 1024;

/// Like [`connect`], asking the broker for frames of at most `frame_max` bytes
/// (unless the URL sets `frame_max` itself). lapin keeps buffers of 32 frames
/// each way, so at RabbitMQ's default of 128 KiB a connection costs 8 MiB;
/// larger messages still pass, split over more frames.
pub async fn connect_with_frame_max(
    url: &str,
    connection_name: &str,
    frame_max: u32,
) -> Result<Connection, lapin::Error> {
    connect(&with_frame_max(url, frame_max), connection_name).await
}

pub(crate) fn with_frame_max(url: &str, frame_max: u32) -> String {
    if url.contains("frame_max=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}frame_max={frame_max}")
}

/// Declares exchanges, queues and bindings on a channel of its own; safe to
/// call again with the same topology, on any node of the cluster.
pub async fn declare_topology(
    connection: &Connection,
    topology: &Topology,
) -> Result<(), lapin::Error> {
    let mut channel = connection.create_channel().await?;
    for exchange in &topology.exchanges {
        let kind = match exchange.kind {
            ExchangeKind::Direct => LapinExchangeKind::Direct,
            ExchangeKind::Fanout => LapinExchangeKind::Fanout,
        };
        channel
            .exchange_declare(
                exchange.name.as_str().into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    for queue in &topology.queues {
        match declare_queue(&channel, queue, &queue.arguments).await {
            Err(error) if is_replicas_mismatch(&error) => {
                // The queue exists with another initial group size (e.g. it
                // was created before `queues.replicas`); the size only applies
                // at creation, so declare it as it is. The refusal closed the
                // channel: continue on a new one.
                tracing::warn!(queue = %queue.name, "queue exists with another x-quorum-initial-group-size; keeping its replicas (grow them with `rabbitmq-queues grow`)");
                channel = connection.create_channel().await?;
                let arguments: Vec<(String, ArgValue)> = queue
                    .arguments
                    .iter()
                    .filter(|(key, _)| key != REPLICAS_ARGUMENT)
                    .cloned()
                    .collect();
                declare_queue(&channel, queue, &arguments).await?;
            }
            Err(error) if queue.keep_existing && is_inequivalent(&error) => {
                tracing::warn!(queue = %queue.name, %error, "queue exists with other arguments (an older gpuq made it); keeping it as it is");
                channel = connection.create_channel().await?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                let kept = channel
                    .queue_declare(queue.name.as_str().into(), passive, FieldTable::default())
                    .await;
                match kept {
                    Err(error) if is_home_node_down(&error) => {
                        tracing::warn!(queue = %queue.name, %error, "queue's node is down; continuing without it");
                        channel = connection.create_channel().await?;
                    }
                    kept => {
                        kept?;
                    }
                }
            }
            Err(error) if is_home_node_down(&error) => {
                // A classic queue (a model's retry queue) lives on one node;
                // while that node is down the queue exists but cannot be
                // declared. It keeps its messages for when the node returns:
                // go on without it rather than refuse to serve the others.
                tracing::warn!(queue = %queue.name, %error, "queue's node is down; continuing without declaring it");
                channel = connection.create_channel().await?;
            }
            declared => declared?,
        }
    }
    let _ = channel.close(200, "topology declared".into()).await;
    tracing::debug!(queues = topology.queues.len(), "amqp topology declared");
    Ok(())
}

/// The broker refused a declare because the queue exists with other arguments.
fn is_inequivalent(error: &lapin::Error) -> bool {
    let text = error.to_string();
    text.contains("PRECONDITION_FAILED") && text.contains("inequivalent arg")
}

/// The broker refused a declare because the existing queue's home node (a
/// classic queue's only node) is down.
fn is_home_node_down(error: &lapin::Error) -> bool {
    let text = error.to_string();
    text.contains("NOT_FOUND") && text.contains("is down or inaccessible")
}

/// The broker refused a declare because an existing queue has another (or
/// no) `x-quorum-initial-group-size`.
fn is_replicas_mismatch(error: &lapin::Error) -> bool {
    let text = error.to_string();
    text.contains("PRECONDITION_FAILED") && text.contains(REPLICAS_ARGUMENT)
}

async fn declare_queue(
    channel: &Channel,
    queue: &QueueSpec,
    arguments: &[(String, ArgValue)],
) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            queue.name.as_str().into(),
            QueueDeclareOptions::durable(),
            field_table(arguments),
        )
        .await?;
    for (exchange, routing_key) in &queue.bindings {
        channel
            .queue_bind(
                queue.name.as_str().into(),
                exchange.as_str().into(),
                routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

fn field_table(arguments: &[(String, ArgValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in arguments {
        let value = match value {
            ArgValue::Str(s) => AMQPValue::LongString(s.as_str().into()),
            ArgValue::Int(i) => AMQPValue::LongLongInt(*i),
        };
        table.insert(key.as_str().into(), value);
    }
    table
}

/// Reads a string header, whatever string type the publisher used.
pub fn header_str<'a>(headers: Option<&'a FieldTable>, key: &str) -> Option<&'a str> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// An integer header (e.g. a quorum queue's `x-delivery-count`), whatever
/// integer type the broker encoded it with.
pub fn header_u64(headers: Option<&FieldTable>, key: &str) -> Option<u64> {
    match headers?.inner().get(key)? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_max_is_added_unless_the_url_sets_it() {
        assert_eq!(
            with_frame_max("amqp://h:5672/%2f", 16384),
            "amqp://h:5672/%2f?frame_max=16384"
        );
        assert_eq!(
            with_frame_max("amqp://h/%2f?heartbeat=10", 4096),
            "amqp://h/%2f?heartbeat=10&frame_max=4096"
        );
        assert_eq!(
            with_frame_max("amqp://h/%2f?frame_max=8192", 4096),
            "amqp://h/%2f?frame_max=8192"
        );
    }
}
