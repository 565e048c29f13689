//! A job as the broker delivered it, wrapped so that nothing outside the
//! worker's broker module names lapin: the job path reads the body and the
//! few properties it needs, and settles the delivery (ack, requeue,
//! dead-letter, republish) only through `crate::amqp`. Settling takes the
//! delivery by value, so a job cannot be acked twice or acked after a requeue.

use lapin::options::{BasicAckOptions, BasicNackOptions};

/// One delivery from a model's queue.
pub struct Delivery(pub(super) lapin::message::Delivery);

impl Delivery {
    /// The message body, as published.
    pub fn body(&self) -> &[u8] {
        &self.0.data
    }

    pub fn content_type(&self) -> Option<&str> {
        self.0
            .properties
            .content_type()
            .as_ref()
            .map(|v| v.as_str())
    }

    /// The AMQP `message_id`, the job id when the body has none.
    pub fn message_id(&self) -> Option<String> {
        self.0
            .properties
            .message_id()
            .as_ref()
            .map(|v| v.to_string())
    }

    /// The RPC correlation id a reply carries back.
    pub fn correlation_id(&self) -> Option<String> {
        self.0
            .properties
            .correlation_id()
            .as_ref()
            .map(|v| v.to_string())
    }

    pub fn reply_to(&self) -> Option<String> {
        self.0.properties.reply_to().as_ref().map(|v| v.to_string())
    }

    /// The AMQP `timestamp`, unix seconds, when the publisher set one.
    pub fn timestamp_s(&self) -> Option<u64> {
        *self.0.properties.timestamp()
    }

    /// A string header, e.g. `traceparent`.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        gpuq_common::amqp::header_str(self.0.properties.headers().as_ref(), name)
    }

    /// A numeric header, e.g. the quorum queue's `x-delivery-count`.
    pub fn header_u64(&self, name: &str) -> Option<u64> {
        gpuq_common::amqp::header_u64(self.0.properties.headers().as_ref(), name)
    }

    /// Acknowledges the delivery; a failure means the channel is gone and the
    /// broker will redeliver, so it is logged, not fatal.
    pub async fn ack(self) {
        if let Err(error) = self.0.ack(BasicAckOptions::default()).await {
            tracing::warn!(%error, "ack failed; the broker will redeliver the job");
        }
    }

    /// Returns the delivery to its queue for another try.
    pub async fn requeue(self) {
        self.nack(true).await;
    }

    /// Rejects the delivery without requeue: the queue's dead-letter exchange takes it.
    pub async fn reject_to_dead_letter(self) {
        self.nack(false).await;
    }

    async fn nack(self, requeue: bool) {
        let options = BasicNackOptions {
            requeue,
            ..BasicNackOptions::default()
        };
        if let Err(error) = self.0.nack(options).await {
            tracing::warn!(%error, requeue, "nack failed; the broker will redeliver the job");
        }
    }
}
