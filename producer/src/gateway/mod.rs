//! `gpuq serve`: the HTTP gateway (axum), for front ends that today POST a job
//! to a FastAPI server and poll for a mesh.
//!
//! Stateless: every request goes through the producer library to RabbitMQ and
//! Redis, so several gateways can run behind a load balancer. Errors are JSON
//! `{"error": {"code", "message"}}` with a stable code. With bearer tokens
//! configured, nothing but `/healthz` answers without one (as a header, or as
//! `?access_token=` for the dashboard's EventSource). `/` is a one-page live
//! dashboard (no build step) over these routes.

mod error;
mod metrics;
mod routes;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::producer::{Producer, ProducerError};
pub use error::ApiError;

/// The OpenAPI 3 description of every route, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

struct AppState {
    producer: Producer,
    tokens: Vec<String>,
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
}

/// The gateway's routes over a connected producer.
fn router(producer: Producer) -> Router {
    let config = producer.config().gateway.clone();
    let state = Arc::new(AppState {
        producer,
        tokens: config.tokens.clone(),
    });
    let api = Router::new()
        .route(
            "/v1/jobs",
            axum::routing::post(routes::submit).get(routes::list_jobs),
        )
        .route("/v1/jobs/{id}", get(routes::job).delete(routes::cancel))
        .route("/v1/jobs/{id}/events", get(routes::events))
        .route(
            "/v1/artifacts",
            axum::routing::post(routes::upload_artifact),
        )
        .route("/v1/artifacts/{id}", get(routes::download_artifact))
        .route("/v1/events", get(routes::all_events))
        .route(
            "/",
            get(|| async { axum::response::Html(include_str!("dashboard.html")) }),
        )
        .route("/v1/models", get(routes::models))
        .route("/v1/features", get(routes::features))
        .route("/v1/system", get(routes::system))
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
            authorize,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(api)
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(axum::extract::DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state)
}

/// Refuses requests without a configured bearer token (when any is configured).
async fn authorize(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.tokens.is_empty() {
        return Ok(next.run(request).await);
    }
    let from_header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    // Browsers cannot set headers on EventSource: the dashboard passes ?access_token=.
    let from_query = request.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("access_token="))
            .map(str::to_owned)
    });
    let authorized = [from_header, from_query]
        .into_iter()
        .flatten()
        .any(|token| state.tokens.contains(&token));
    if authorized {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::unauthorized())
    }
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(producer: Producer, shutdown: CancellationToken) -> Result<(), GatewayError> {
    let address = producer.config().gateway.listen.clone();
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|source| GatewayError::Listen {
            address: address.clone(),
            source,
        })?;
    tracing::info!(%address, auth = !producer.config().gateway.tokens.is_empty(), "gateway listening");
    axum::serve(listener, router(producer))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|source| GatewayError::Listen { address, source })
}
