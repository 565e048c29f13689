//! Owns lapin in the dispatcher: its three uses of the broker, each on a
//! connection of its own with small frames (control traffic only):
//! declaring the topology at start, reading each model's ready count for
//! placement, and consuming the dead-letter events. Nothing else in the
//! dispatcher names lapin.

use std::collections::BTreeMap;

use futures_util::stream::{BoxStream, StreamExt};
use gpuq_common::amqp::{connect_with_frame_max, declare_topology, CONTROL_FRAME_MAX};
use gpuq_common::config::Config;
use gpuq_common::names::dead_letter_header;
use gpuq_common::topology::Topology;
use gpuq_common::Names;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

/// The broker refused or dropped something; the caller retries or reconnects.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("queue of model {model}: {source}")]
    Queue {
        model: String,
        #[source]
        source: lapin::Error,
    },
}

/// Declares gpuq's exchanges and queues (idempotent), then disconnects.
pub async fn declare(config: &Config, host_id: &str) -> Result<(), BrokerError> {
    let connection = connect_with_frame_max(
        &config.amqp_url,
        &format!("gpuq-dispatcher {host_id}"),
        CONTROL_FRAME_MAX,
    )
    .await?;
    let channel = connection.create_channel().await?;
    declare_topology(&channel, &Topology::for_config(config)).await?;
    let _ = channel.close(200, "topology declared".into()).await;
    let _ = connection.close(200, "topology declared".into()).await;
    Ok(())
}

/// The placement loop's connection: reads ready counts with passive declares.
pub struct QueueReader {
    connection: Connection,
    channel: Channel,
}

impl QueueReader {
    pub async fn connect(config: &Config, host_id: &str) -> Result<QueueReader, BrokerError> {
        let connection = connect_with_frame_max(
            &config.amqp_url,
            &format!("gpuq-placer {host_id}"),
            CONTROL_FRAME_MAX,
        )
        .await?;
        let channel = connection.create_channel().await?;
        Ok(QueueReader {
            connection,
            channel,
        })
    }

    /// Ready messages in each of these models' queues.
    pub async fn ready_counts(
        &self,
        names: &Names,
        model_ids: impl Iterator<Item = &str>,
    ) -> Result<BTreeMap<String, u64>, BrokerError> {
        let mut depths = BTreeMap::new();
        for model in model_ids {
            let queue = self
                .channel
                .queue_declare(
                    names.model_queue(model).into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|source| BrokerError::Queue {
                    model: model.to_owned(),
                    source,
                })?;
            depths.insert(model.to_owned(), u64::from(queue.message_count()));
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
}

/// The dead-letter events this dispatcher consumes, on a connection of its own.
pub struct DeadLetterFeed {
    /// Kept open while the feed lives.
    _connection: Connection,
    letters: BoxStream<'static, Result<DeadLetter, BrokerError>>,
}

impl DeadLetterFeed {
    /// The next letter; `None` or an error once the connection is lost.
    pub async fn next(&mut self) -> Option<Result<DeadLetter, BrokerError>> {
        self.letters.next().await
    }
}

/// Consumes `<ns>.dead.events` (shared by every dispatcher, so each letter
/// is handled once).
pub async fn dead_letters(config: &Config, host_id: &str) -> Result<DeadLetterFeed, BrokerError> {
    let connection = connect_with_frame_max(
        &config.amqp_url,
        &format!("gpuq-dispatcher {host_id} dead-letters"),
        CONTROL_FRAME_MAX,
    )
    .await?;
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
    Ok(DeadLetterFeed {
        _connection: connection,
        letters,
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
