//! Owns prometheus in the gateway: request counts and durations by route,
//! served at `/metrics`.

use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

struct GatewayMetrics {
    registry: Registry,
    requests: IntCounterVec,
    durations: HistogramVec,
}

static METRICS: LazyLock<GatewayMetrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let requests = IntCounterVec::new(
        Opts::new(
            "gpuq_gateway_requests_total",
            "HTTP requests, by route, method and status.",
        ),
        &["route", "method", "status"],
    )
    .expect("valid metric");
    let durations = HistogramVec::new(
        HistogramOpts::new(
            "gpuq_gateway_request_duration_seconds",
            "HTTP request durations, by route and method.",
        ),
        &["route", "method"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(requests.clone()))
        .expect("registered once");
    registry
        .register(Box::new(durations.clone()))
        .expect("registered once");
    GatewayMetrics {
        registry,
        requests,
        durations,
    }
});

/// Counts and times every request by its route pattern (not its raw path).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    METRICS
        .requests
        .with_label_values(&[&route, &method, &status])
        .inc();
    METRICS
        .durations
        .with_label_values(&[&route, &method])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The gateway's RabbitMQ node and reconnects, read at each scrape.
fn amqp_families(nodes: &crate::amqp::BrokerNodes) -> Vec<prometheus::proto::MetricFamily> {
    let registry = Registry::new();
    let reconnects = prometheus::IntCounter::new(
        "gpuq_amqp_reconnects_total",
        "RabbitMQ connections made after the first (failovers).",
    )
    .expect("valid metric");
    reconnects.inc_by(nodes.reconnects());
    let connected = prometheus::IntGaugeVec::new(
        Opts::new(
            "gpuq_amqp_connected_node",
            "1 for the RabbitMQ node this gateway is connected to.",
        ),
        &["node"],
    )
    .expect("valid metric");
    if let Some(node) = nodes.connected_node() {
        connected.with_label_values(&[&node]).set(1);
    }
    let registered = registry
        .register(Box::new(reconnects))
        .and_then(|()| registry.register(Box::new(connected)));
    if let Err(error) = registered {
        tracing::warn!(%error, "amqp metrics not registered");
    }
    registry.gather()
}

/// `GET /metrics`, for admins only.
pub async fn render(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<super::AppState>>,
    axum::Extension(identity): axum::Extension<super::auth::Identity>,
) -> Result<impl IntoResponse, super::ApiError> {
    super::auth::require_admin(&identity)?;
    let mut buffer = Vec::new();
    let mut families = METRICS.registry.gather();
    families.extend(amqp_families(state.producer.broker_nodes()));
    if let Err(error) = TextEncoder::new().encode(&families, &mut buffer) {
        tracing::warn!(%error, "metrics not encoded");
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        buffer,
    ))
}
