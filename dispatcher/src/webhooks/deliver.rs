//! One delivery's fate: send it; on a 2xx ack it; on a permanent refusal
//! dead-letter it at once; on any other failure park it in a retry tier,
//! or dead-letter it once it is older than `webhooks.max_age_s`. The
//! parked or dead copy is confirmed before the original is acked; if it
//! cannot be published the original goes back to the queue instead.
//!
//! A webhook's failure never touches the job's record.

use std::time::Duration;

use gpuq_common::config::Config;
use gpuq_common::webhook::WebhookDelivery;
use tracing::Instrument;

use super::retry::{next_step_now, Next};
use super::send::{post, SendError};
use crate::amqp::webhooks::{WebhookMessage, WebhookPublisher};

/// Pause before a delivery that could not be moved goes back to the queue,
/// so that a broker refusing publishes does not turn into a resend loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(5);

/// Sends one message of `<ns>.webhooks` and settles it.
pub async fn handle(config: &Config, publisher: &WebhookPublisher, message: WebhookMessage) {
    let attempt = message.attempts_before() + 1;
    let delivery: WebhookDelivery = match serde_json::from_slice(message.body()) {
        Ok(delivery) => delivery,
        Err(error) => {
            tracing::warn!(%error, "malformed webhook delivery; dead-lettered");
            let error = format!("malformed webhook delivery: {error}");
            let dead = config.names().webhooks_dead_queue();
            settle(&message, publisher, &dead, "", attempt, &error).await;
            return;
        }
    };
    let host = url::Url::parse(&delivery.url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .unwrap_or_default();
    let span = tracing::info_span!(
        "webhook",
        webhook_id = %delivery.id,
        job_id = %delivery.job_id,
        event = %delivery.event,
        %host,
        attempt,
    );
    attempt_and_settle(config, publisher, &message, &delivery, attempt)
        .instrument(span)
        .await;
}

async fn attempt_and_settle(
    config: &Config,
    publisher: &WebhookPublisher,
    message: &WebhookMessage,
    delivery: &WebhookDelivery,
    attempt: u64,
) {
    let names = config.names();
    let error = match post(&config.webhooks, delivery).await {
        Ok(()) => {
            tracing::debug!("webhook delivered");
            message.ack().await;
            return;
        }
        Err(error) => error,
    };
    let text = error.to_string();
    let queue = match next(config, delivery, attempt, &error) {
        Next::Retry { delay_s } => {
            tracing::info!(error = %text, delay_s, "webhook attempt failed; retrying");
            names.webhooks_retry_queue(delay_s)
        }
        Next::GiveUp if error.is_permanent() => {
            tracing::warn!(error = %text, "webhook refused; dead-lettered without retrying");
            names.webhooks_dead_queue()
        }
        Next::GiveUp => {
            tracing::warn!(
                error = %text,
                max_age_s = config.webhooks.max_age_s,
                "webhook still failing after webhooks.max_age_s; dead-lettered"
            );
            names.webhooks_dead_queue()
        }
    };
    settle(message, publisher, &queue, &delivery.id, attempt, &text).await;
}

/// Where a failed attempt goes: nowhere but the dead queue when permanent.
fn next(config: &Config, delivery: &WebhookDelivery, attempt: u64, error: &SendError) -> Next {
    if error.is_permanent() {
        return Next::GiveUp;
    }
    next_step_now(&config.webhooks, delivery.created_ms, attempt)
}

/// Publishes the failed delivery to `queue`, then acks the original; on a
/// failed publish, requeues the original instead.
async fn settle(
    message: &WebhookMessage,
    publisher: &WebhookPublisher,
    queue: &str,
    message_id: &str,
    attempts: u64,
    last_error: &str,
) {
    let published = publisher
        .publish(
            queue,
            message.body(),
            message_id,
            attempts,
            Some(last_error),
        )
        .await;
    match published {
        Ok(()) => message.ack().await,
        Err(error) => {
            tracing::warn!(%error, %queue, "webhook delivery not moved; requeued");
            tokio::time::sleep(REQUEUE_PAUSE).await;
            message.requeue().await;
        }
    }
}
