//! Records the fate of jobs the broker dead-letters on its own: a job whose
//! queue timeout expired before any worker started it ends `timed_out`, one
//! past the quorum delivery limit ends `failed`. Without this they would sit in
//! the dead-letter queue while Redis still says `queued`.
//!
//! Every dead letter is copied (fanout) to `<ns>.dead` for people and to
//! `<ns>.dead.events` for this watcher; dispatchers share the latter, so each
//! letter is handled once. Jobs already final in Redis are left as they are.

use std::time::Duration;

use futures_util::StreamExt;
use gpuq_common::amqp::{connect_with_frame_max, CONTROL_FRAME_MAX};
use gpuq_common::config::Config;
use gpuq_common::names::dead_letter_header;
use gpuq_common::wire::validate_job_id;
use gpuq_common::{ErrorCode, JobError, JobMessage, JobStatus};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Why the broker dead-lettered a message, from its first `x-death` entry.
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

/// The final status and error to record for a broker dead-letter reason.
pub fn fate(reason: &str, queue: &str, count: i64) -> (JobStatus, JobError) {
    match reason {
        "expired" => (
            JobStatus::TimedOut,
            JobError::new(ErrorCode::Timeout, format!("the job's queue timeout expired in {queue} before any worker started it")),
        ),
        "delivery_limit" => (
            JobStatus::Failed,
            JobError::new(
                ErrorCode::TooManyAttempts,
                format!("the job was delivered from {queue} more times than queues.delivery_limit allows ({count}); its worker died each time"),
            ),
        ),
        other => (
            JobStatus::Failed,
            JobError::new(ErrorCode::MalformedMessage, format!("the broker dead-lettered the job from {queue} ({other})")),
        ),
    }
}

fn job_id(delivery: &Delivery) -> Option<String> {
    let from_property = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string());
    let id = from_property.or_else(|| {
        let content_type = delivery
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.to_string());
        JobMessage::decode(content_type.as_deref(), &delivery.data, None)
            .ok()
            .map(|j| j.job_id)
    })?;
    validate_job_id(&id).ok().map(|_| id)
}

async fn handle(store: &Store, ttl_s: u64, delivery: &Delivery) {
    let headers = delivery.properties.headers().as_ref();
    // Letters a worker dead-lettered already have their outcome in Redis.
    let from_worker =
        gpuq_common::amqp::header_str(headers, dead_letter_header::ERROR_CODE).is_some();
    if let (false, Some((reason, queue, count)), Some(job_id)) =
        (from_worker, death_reason(headers), job_id(delivery))
    {
        let (status, error) = fate(&reason, &queue, count);
        match store.end_if_not_final(&job_id, status, &error, ttl_s).await {
            Ok(true) => {
                tracing::warn!(job_id = %job_id, %reason, "job dead-lettered by the broker; recorded as {status}")
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, job_id = %job_id, "dead letter not recorded in redis")
            }
        }
    }
    let _ = delivery.ack(BasicAckOptions::default()).await;
}

/// Consumes `<ns>.dead.events` until `shutdown`, reconnecting on failure.
pub async fn watch(config: Config, store: Store, host_id: String, shutdown: CancellationToken) {
    let queue = config.names().dead_letter_events_queue();
    loop {
        let session = async {
            let connection = connect_with_frame_max(
                &config.amqp_url,
                &format!("gpuq-dispatcher {host_id} dead-letters"),
                CONTROL_FRAME_MAX,
            )
            .await?;
            let channel = connection.create_channel().await?;
            channel.basic_qos(32, BasicQosOptions::default()).await?;
            let mut deliveries = channel
                .basic_consume(
                    queue.as_str().into(),
                    format!("{host_id}.dead-letters").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            while let Some(delivery) = deliveries.next().await {
                handle(&store, config.jobs.finished_ttl_s, &delivery?).await;
            }
            Ok::<_, lapin::Error>(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            result = session => {
                if let Err(error) = result {
                    tracing::warn!(%error, "dead-letter watcher lost its connection; reconnecting");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldArray;

    #[test]
    fn x_death_headers_give_the_reason_and_the_fate() {
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
        let (status, error) = fate(&reason, &queue, count);
        assert_eq!(
            (status, error.code),
            (JobStatus::TimedOut, ErrorCode::Timeout)
        );
        assert_eq!(
            fate("delivery_limit", "q", 6).1.code,
            ErrorCode::TooManyAttempts
        );
        assert!(death_reason(None).is_none());
    }
}
