//! Records the fate of jobs the broker dead-letters on its own: a job whose
//! queue timeout expired before any worker started it ends `timed_out`, one
//! past the quorum delivery limit ends `failed`. Without this they would sit in
//! the dead-letter queue while Redis still says `queued`.
//!
//! Every dead letter is copied (fanout) to `<ns>.dead` for people and to
//! `<ns>.dead.events` for this watcher; dispatchers share the latter, so each
//! letter is handled once. Jobs already final in Redis are left as they are.
//! A job this watcher ends sends its webhook (when it has one that wants
//! the status) before the letter is acked, as a worker's job does.

use std::time::Duration;

use gpuq_common::config::Config;
use gpuq_common::webhook::payload::JobEvent;
use gpuq_common::webhook::WebhookDelivery;
use gpuq_common::wire::validate_job_id;
use gpuq_common::{now_ms, ErrorCode, JobError, JobMessage, JobStatus};
use tokio_util::sync::CancellationToken;

use crate::amqp::webhooks::{PublishError, WebhookPublisher};
use crate::amqp::DeadLetter;
use crate::store::Store;

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

fn job_id(letter: &DeadLetter) -> Option<String> {
    let id = letter.message_id().or_else(|| {
        let content_type = letter.content_type();
        JobMessage::decode(content_type.as_deref(), letter.body(), None)
            .ok()
            .map(|j| j.job_id)
    })?;
    validate_job_id(&id).ok().map(|_| id)
}

async fn handle(
    config: &Config,
    store: &Store,
    webhooks: Option<&WebhookPublisher>,
    letter: &DeadLetter,
) {
    // Letters a worker dead-lettered already have their outcome in Redis.
    if let (false, Some((reason, queue, count)), Some(job_id)) =
        (letter.sent_by_a_worker(), letter.death(), job_id(letter))
    {
        let ttl_s = config.jobs.finished_ttl_s;
        let (status, error) = fate(&reason, &queue, count);
        let ended = match store.end_if_not_final(&job_id, status, &error, ttl_s).await {
            Ok(true) => {
                tracing::warn!(job_id = %job_id, %reason, "job dead-lettered by the broker; recorded as {status}");
                true
            }
            // Ended by an earlier try of this letter, which may have died
            // before its webhook: publish again (same webhook id).
            Ok(false) => letter.redelivered(),
            Err(error) => {
                tracing::warn!(%error, job_id = %job_id, "dead letter not recorded in redis");
                false
            }
        };
        if let (true, Some(publisher)) = (ended, webhooks) {
            let event = (job_id.as_str(), status, &error);
            if let Err(error) = notify(config, publisher, letter, event).await {
                tracing::warn!(%error, job_id = %job_id, "webhook not queued; the letter is handled again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return letter.requeue().await;
            }
        }
    }
    letter.ack().await;
}

/// Publishes the webhook of a job the broker ended, if it (or its tenant,
/// or the config) names one that wants `status`.
async fn notify(
    config: &Config,
    publisher: &WebhookPublisher,
    letter: &DeadLetter,
    (job_id, status, error): (&str, JobStatus, &JobError),
) -> Result<(), PublishError> {
    let content_type = letter.content_type();
    let Ok(job) = JobMessage::decode(content_type.as_deref(), letter.body(), None) else {
        return Ok(());
    };
    let tenant = job.tenant().ok();
    let webhook = job
        .webhook
        .as_ref()
        .or_else(|| config.tenants.named.get(tenant?)?.webhook.as_ref())
        .or(config.webhooks.default.as_ref());
    let Some(webhook) = webhook.filter(|w| w.wants(status.as_str())) else {
        return Ok(());
    };
    let payload = JobEvent {
        job_id,
        status,
        feature: &job.feature,
        model: job.model.as_deref(),
        tenant,
        attempt: None,
        worker: None,
        error: Some(error),
        result: None,
    }
    .payload(now_ms());
    let delivery = WebhookDelivery::new(job_id, status.as_str(), &webhook.url, payload, now_ms());
    let body = serde_json::to_vec(&delivery).expect("a webhook delivery serializes");
    let queue = config.names().webhooks_queue();
    publisher
        .publish(&queue, &body, &delivery.id, 0, None)
        .await
}

/// Consumes `<ns>.dead.events` until `shutdown`, reconnecting on failure.
pub async fn watch(config: Config, store: Store, host_id: String, shutdown: CancellationToken) {
    loop {
        let session = async {
            // A node going down may take the connection and never set it up.
            let connecting = crate::amqp::dead_letters(&config, &host_id);
            let Ok(feed) = tokio::time::timeout(Duration::from_secs(10), connecting).await else {
                tracing::warn!("dead-letter feed not set up within 10 s; reconnecting");
                return Ok(());
            };
            let mut feed = feed?;
            while let Some(letter) = feed.next().await {
                handle(&config, &store, feed.webhooks.as_ref(), &letter?).await;
            }
            Ok::<_, crate::amqp::BrokerError>(())
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

    #[test]
    fn each_broker_reason_has_its_fate() {
        let (status, error) = fate("expired", "gpuq.model.echo", 1);
        assert_eq!(
            (status, error.code),
            (JobStatus::TimedOut, ErrorCode::Timeout)
        );
        assert_eq!(
            fate("delivery_limit", "q", 6).1.code,
            ErrorCode::TooManyAttempts
        );
        assert_eq!(fate("rejected", "q", 1).1.code, ErrorCode::MalformedMessage);
    }
}
