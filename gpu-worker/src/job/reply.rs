//! Which `reply_to` queues get a job's reply, and the reply itself (sent
//! again from the record when a job that already ended is redelivered: the
//! first delivery's connection may have died with its reply, e.g. in a
//! failover, so a client may get a reply twice, never none).
//!
//! The reply is published to the default exchange with routing key `reply_to`,
//! so an unchecked `reply_to` would let any publisher make workers write into
//! any queue: another model's job queue, or another client's reply queue. Only
//! RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to*`) and queues under
//! `jobs.reply_prefix` are answered; any other value is logged, noted on the
//! job's record (`reply_to_ignored`) and gets no reply.

use gpuq_common::wire::{value_from_json, JobReply, SCHEMA_VERSION};
use gpuq_common::{now_ms, ValueMap};

use super::InFlight;
use crate::store::Outcome;

/// Prefix of RabbitMQ's direct reply-to pseudo-queue (and the names it expands to).
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Whether a job's `reply_to` may receive its reply.
pub fn reply_allowed(reply_to: &str, reply_prefix: &str) -> bool {
    reply_to.starts_with(DIRECT_REPLY_TO) || reply_to.starts_with(reply_prefix)
}

impl InFlight<'_> {
    /// The delivery's `reply_to` if it may be answered; a refused one is
    /// logged and noted on the job's record (best effort: the outcome matters
    /// more).
    pub(super) async fn checked_reply_to(&self) -> Option<String> {
        let reply_to = self.delivery.reply_to()?;
        let prefix = &self.ctx.config.jobs.reply_prefix;
        if reply_allowed(&reply_to, prefix) {
            return Some(reply_to);
        }
        tracing::warn!(
            reply_to,
            reply_prefix = %prefix,
            "reply_to ignored: only amq.rabbitmq.reply-to and queues starting with jobs.reply_prefix get replies"
        );
        let noted = self
            .ctx
            .store
            .note_reply_to_ignored(&self.job.job_id, &reply_to)
            .await;
        if let Err(error) = noted {
            tracing::warn!(%error, "ignored reply_to not noted in redis");
        }
        None
    }

    /// The redelivery of a job that already ended: if it asks for a reply,
    /// sends one built from its record (best effort, like every reply).
    pub(super) async fn reply_again(&self) {
        let Some(reply_to) = self.checked_reply_to().await else {
            return;
        };
        let record = match self.ctx.store.recorded_outcome(&self.job.job_id).await {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "record not read; no reply sent again");
                return;
            }
        };
        let Some(status) = record.status.filter(|s| s.is_final()) else {
            return;
        };
        let result = record.result.as_ref().and_then(|json| {
            let map = json.as_object()?;
            map.iter()
                .map(|(key, value)| Some((key.clone(), value_from_json(value).ok()?)))
                .collect::<Option<ValueMap>>()
        });
        let outcome = Outcome {
            status,
            result,
            error: record.error,
        };
        let finished_at_ms = record.finished_ms.unwrap_or_else(now_ms);
        tracing::info!(reply_to, "reply sent again for a redelivered final job");
        self.reply(&outcome, &reply_to, finished_at_ms).await;
    }

    /// Sends the recorded outcome to `reply_to`, in the job's own encoding.
    /// A lost reply is logged: the outcome is in Redis, so it only costs the
    /// client a lookup.
    pub(super) async fn reply(&self, outcome: &Outcome, reply_to: &str, finished_at_ms: u64) {
        let reply = JobReply {
            schema_version: SCHEMA_VERSION,
            job_id: self.job.job_id.clone(),
            status: outcome.status,
            result: outcome.result.clone(),
            error: outcome.error.clone(),
            finished_at_ms,
        };
        let correlation_id = self.delivery.correlation_id();
        let sent = match reply.encode(self.encoding) {
            Ok(body) => self
                .ctx
                .broker
                .reply(
                    reply_to,
                    correlation_id.as_deref(),
                    self.encoding.content_type(),
                    &body,
                )
                .await
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = sent {
            tracing::warn!(%error, reply_to, "reply not delivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reply_allowed;

    #[test]
    fn only_direct_reply_to_and_prefixed_queues_get_replies() {
        let prefix = "gpuq.reply.";
        for allowed in [
            "amq.rabbitmq.reply-to",
            "amq.rabbitmq.reply-to.g1hkABCDEF.xyz",
            "gpuq.reply.client-7f3a",
        ] {
            assert!(reply_allowed(allowed, prefix), "{allowed}");
        }
        for refused in [
            "some.other.queue",
            "gpuq.model.sleep",
            "gpuq.reply",
            "amq.gen-abc",
            "",
        ] {
            assert!(!reply_allowed(refused, prefix), "{refused:?}");
        }
        // An empty prefix lets every queue through (trusted publishers only).
        assert!(reply_allowed("some.other.queue", ""));
    }
}
