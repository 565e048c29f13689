//! `gpuq serve`: the HTTP gateway (axum), for front ends that today POST a job
//! to a FastAPI server and poll for a mesh.
//!
//! Stateless: every request goes through the producer library to RabbitMQ and
//! Redis, so several gateways can run behind a load balancer. Errors are JSON
//! `{"error": {"code", "message"}}` with a stable code. With bearer tokens
//! configured, nothing but `/healthz` answers without one, and a token's role
//! decides what it sees ([`auth`]); without tokens it listens only on loopback
//! unless `gateway.allow_anonymous` says otherwise. `/` is a live dashboard
//! with 15 minutes of history charts ([`history`]) and `/jobs/{id}` a page per
//! job, both plain scripts over these routes, served from the binary
//! ([`assets`]; no build step, no CDN).

mod assets;
mod auth;
mod error;
mod history;
mod metrics;
mod routes;
mod server;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::producer::{Producer, ProducerError};
pub use error::ApiError;

/// The OpenAPI 3 description of every route, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

struct AppState {
    producer: Producer,
    tokens: auth::Tokens,
    /// Said on `/readyz` while the gateway runs anonymous off loopback.
    warning: Option<String>,
    /// One permit per live event stream (`gateway.max_streams`).
    streams: Arc<tokio::sync::Semaphore>,
    /// Cancelled at shutdown: event streams end on it.
    shutdown: CancellationToken,
    /// The dashboard's last 15 minutes, filled by [`history::sampler`].
    history: history::History,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Producer(#[from] ProducerError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Anonymous(#[from] auth::AnonymousExposure),
}

fn app_state(
    producer: Producer,
    warning: Option<String>,
    shutdown: CancellationToken,
) -> Arc<AppState> {
    let config = &producer.config().gateway;
    Arc::new(AppState {
        tokens: auth::Tokens::new(config.access_tokens()),
        warning,
        streams: Arc::new(tokio::sync::Semaphore::new(config.max_streams as usize)),
        shutdown,
        history: history::History::default(),
        producer,
    })
}

/// The gateway's routes over a connected producer.
fn router(state: Arc<AppState>) -> Router {
    let config = state.producer.config().gateway.clone();
    let api = Router::new()
        .route(
            "/v1/jobs",
            axum::routing::post(routes::submit).get(routes::list_jobs),
        )
        .route("/v1/jobs/{id}", get(routes::job).delete(routes::cancel))
        .route("/v1/jobs/{id}/events", get(streams::job_events))
        .route(
            "/v1/artifacts",
            axum::routing::post(routes::upload_artifact),
        )
        .route("/v1/artifacts/{id}", get(routes::download_artifact))
        .route("/v1/events", get(streams::all_events))
        .route("/", get(assets::dashboard))
        .route("/jobs/{id}", get(assets::job_page))
        .route("/v1/models", get(routes::models))
        .route("/v1/features", get(routes::features))
        .route("/v1/system", get(routes::system))
        .route("/v1/history", get(history::route))
        .route("/readyz", get(routes::ready))
        .route("/metrics", get(metrics::render))
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    OPENAPI,
                )
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::authenticate,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/assets/{name}", get(assets::asset))
        .merge(api)
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(axum::extract::DefaultBodyLimit::max(config.max_body_bytes))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            Duration::from_secs(config.body_timeout_s),
        ))
        .with_state(state)
}

/// Serves until `shutdown` is cancelled. Refuses, before listening, to
/// serve anonymously off loopback (see [`auth::exposure`]).
pub async fn serve(producer: Producer, shutdown: CancellationToken) -> Result<(), GatewayError> {
    let config = producer.config().gateway.clone();
    let address = config.listen.clone();
    let listen_error = |source| GatewayError::Listen {
        address: address.clone(),
        source,
    };
    // Resolve once and bind exactly what was checked.
    let addresses: Vec<std::net::SocketAddr> = tokio::net::lookup_host(&address)
        .await
        .map_err(listen_error)?
        .collect();
    let warning = auth::exposure(&config, &address, &addresses)?;
    if let Some(warning) = &warning {
        tracing::warn!(%address, "{warning}");
    }
    let listener = tokio::net::TcpListener::bind(addresses.as_slice())
        .await
        .map_err(listen_error)?;
    tracing::info!(
        %address,
        tokens = config.access_tokens().len(),
        anonymous = config.access_tokens().is_empty(),
        "gateway listening"
    );
    let header_timeout = Duration::from_secs(config.header_timeout_s);
    let state = app_state(producer, warning, shutdown.clone());
    let background = TaskTracker::new();
    let sampled = Arc::clone(&state);
    let sampler_shutdown = shutdown.clone();
    background.spawn(
        async move {
            let interval = history::SAMPLE_INTERVAL;
            history::sampler::run(
                &sampled.producer,
                &sampled.history,
                interval,
                sampler_shutdown,
            )
            .await;
        }
        .instrument(tracing::info_span!("history_sampler")),
    );
    background.close();
    server::serve_connections(listener, router(state), header_timeout, shutdown).await;
    // The sampler ends on the same token, between two samples at most.
    background.wait().await;
    Ok(())
}
