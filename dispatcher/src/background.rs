//! The dispatcher's background tasks, started once the slots run: the
//! metrics endpoint, the dead-letter watcher, the artifact janitor, with
//! webhooks on the webhook sender, and with placement on the placement
//! loop. Each ends on the shutdown token; the dispatcher closes the
//! returned tracker and waits for it on the way out.

use std::sync::Arc;

use gpuq_common::config::Config;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::Store;

/// The metrics endpoint, dead-letter watcher, artifact janitor and placement
/// loop: each ends on `shutdown`, and `run` waits for all of them.
pub fn start(
    config: &Config,
    host_id: &str,
    store: &Store,
    artifacts: gpuq_common::artifacts::ArtifactStore,
    metrics_view: &crate::metrics::SharedView,
    shutdown: &CancellationToken,
) -> TaskTracker {
    let background = TaskTracker::new();
    // Written by the placement loop while it holds the lease, read at scrape.
    let backlog = &crate::autoscaling::SharedBacklog::default();
    if !config.dispatcher.metrics_listen.is_empty() {
        let serving = crate::metrics::serve(
            config.dispatcher.metrics_listen.clone(),
            Arc::clone(metrics_view),
            Arc::clone(backlog),
            store.clone(),
            shutdown.clone(),
        );
        background.spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!(%error, "metrics endpoint failed");
            }
        });
    }
    background.spawn(crate::dead_letters::watch(
        config.clone(),
        store.clone(),
        host_id.to_owned(),
        shutdown.clone(),
    ));

    if config.webhooks.enabled() {
        background.spawn(crate::webhooks::run(
            config.clone(),
            host_id.to_owned(),
            shutdown.clone(),
        ));
    }

    background.spawn(crate::artifact_janitor::run(
        artifacts,
        config.artifacts.ttl(),
        shutdown.clone(),
    ));

    if config.placement.enabled {
        background.spawn(crate::placement_loop::run(
            config.clone(),
            host_id.to_owned(),
            store.clone(),
            Arc::clone(backlog),
            shutdown.clone(),
        ));
    }

    background
}
