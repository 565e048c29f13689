//! The webhook sender: consumes `<ns>.webhooks` (what workers publish when
//! a job reaches a status its webhook wants) and POSTs each delivery,
//! signed per the Standard Webhooks spec, until it is answered with a 2xx
//! or is older than `webhooks.max_age_s`.
//!
//! - `send`: one attempt (URL and SSRF checks, pinned DNS, signing; reqwest).
//! - `retry`: when to try again (tiers with jitter, the age limit; pure).
//! - `deliver`: one delivery's fate (ack, park, dead-letter).
//!
//! Every dispatcher with `webhooks.allow_hosts` set runs one; they share the
//! queue, so each delivery is sent by one of them. Retries wait in the tier
//! queues of `gpuq_common::webhook::queues`, in the broker, so a restart
//! loses none. Delivery is at least once: a sender that dies after the POST
//! and before the ack sends again, under the same `webhook-id`. It does not
//! read or write job records: the worker decided what to send.

use std::sync::Arc;
use std::time::Duration;

use gpuq_common::config::Config;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::amqp::webhooks::WebhookLink;

mod deliver;
mod retry;
mod send;

/// Deliveries in flight at once (the consumer's prefetch).
const PREFETCH: u16 = 16;
/// Longest wait for a new connection's declares and consumer.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before reconnecting after a lost connection.
const RECONNECT_PAUSE: Duration = Duration::from_secs(2);

/// Sends webhooks until `shutdown`, reconnecting on failure.
pub async fn run(config: Config, host_id: String, shutdown: CancellationToken) {
    let config = Arc::new(config);
    loop {
        let connecting = WebhookLink::connect(&config, &host_id, PREFETCH);
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            connected = tokio::time::timeout(SETUP_TIMEOUT, connecting) => connected,
        };
        match connected {
            Ok(Ok(link)) => {
                tracing::info!(
                    "webhook sender consuming {}",
                    config.names().webhooks_queue()
                );
                session(&config, link, &shutdown).await;
            }
            Ok(Err(error)) => tracing::warn!(%error, "webhook sender cannot connect; retrying"),
            Err(_) => tracing::warn!("webhook sender not set up within 10 s; reconnecting"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
        }
    }
}

/// Sends what one connection delivers, each delivery on a tracked task,
/// until the connection is lost or `shutdown`; then waits for the sends in
/// flight (bounded) and closes the connection.
async fn session(config: &Arc<Config>, mut link: WebhookLink, shutdown: &CancellationToken) {
    let publisher = link.publisher();
    let sending = TaskTracker::new();
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = link.next() => message,
        };
        match message {
            Some(Ok(message)) => {
                let config = Arc::clone(config);
                let publisher = publisher.clone();
                sending.spawn(async move { deliver::handle(&config, &publisher, message).await });
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "webhook sender lost its connection; reconnecting");
                break;
            }
            None => {
                tracing::warn!("webhook consumer ended; reconnecting");
                break;
            }
        }
    }
    sending.close();
    if tokio::time::timeout(drain_limit(config), sending.wait())
        .await
        .is_err()
    {
        // Their deliveries stay unacked and go back to the queue when the
        // connection closes below.
        tracing::warn!("webhook sends still running at the drain limit; they will be sent again");
    }
    link.close().await;
}

/// How long sends in flight may take to finish: an attempt's resolve and
/// request (each within `webhooks.timeout_ms`), a confirmed publish, and
/// the pause before a requeue.
fn drain_limit(config: &Config) -> Duration {
    config.webhooks.timeout() * 2
        + Duration::from_millis(config.amqp.publish_timeout_ms)
        + Duration::from_secs(5)
}
