//! The gateway's handlers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures_util::{Stream, StreamExt};
use gpuq_common::wire::value_from_json;
use gpuq_common::{StatusEvent, ValueMap};
use serde::Deserialize;
use serde_json::{json, Value as JsonValue};

use super::{ApiError, AppState};
use crate::producer::{JobRequest, SubmitError};
use crate::store::CancelOutcome;

/// `POST /v1/jobs` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    feature: String,
    #[serde(default)]
    inputs: serde_json::Map<String, JsonValue>,
    model: Option<String>,
    priority: Option<u8>,
    timeout_s: Option<u64>,
    queue_timeout_s: Option<u64>,
    #[serde(default)]
    metadata: serde_json::Map<String, JsonValue>,
    /// Client-chosen id; the `Idempotency-Key` header does the same.
    job_id: Option<String>,
}

fn to_values(map: serde_json::Map<String, JsonValue>, what: &str) -> Result<ValueMap, ApiError> {
    map.into_iter()
        .map(|(k, v)| value_from_json(&v).map(|v| (k, v)))
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                format!("{what}: {e}"),
            )
        })
}

pub async fn submit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<SubmitBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<JsonValue>), ApiError> {
    let Json(body) = body.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            e.body_text(),
        )
    })?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let job_id = body.job_id.clone().or(key);
    let producer = &state.producer;
    // A retry with the same key returns the job the first try created.
    if let Some(id) = &job_id {
        if let Some(record) = producer.status(id).await? {
            return Ok((
                StatusCode::OK,
                Json(serde_json::to_value(record).unwrap_or_default()),
            ));
        }
    }
    let limit = producer.config().gateway.max_queue_depth;
    if limit > 0 {
        let model = body.model.clone().or_else(|| {
            producer
                .config()
                .registry()
                .default_model(&body.feature)
                .map(|m| m.id.clone())
        });
        if let Some(model) = model {
            if let Some(depth) = producer.queue_depth(&model).await? {
                if depth.messages >= limit {
                    return Err(ApiError::unavailable(
                        "queue_full",
                        format!(
                            "model '{model}' has {} jobs waiting (limit {limit}); retry later",
                            depth.messages
                        ),
                    ));
                }
            }
        }
    }
    let mut request = JobRequest::new(body.feature);
    request.inputs = to_values(body.inputs, "inputs")?;
    request.metadata = to_values(body.metadata, "metadata")?;
    request.model = body.model;
    request.priority = body.priority;
    request.timeout_s = body.timeout_s;
    request.queue_timeout_s = body.queue_timeout_s;
    request.job_id = job_id;
    match producer.submit(request).await {
        Ok(id) => Ok((
            StatusCode::CREATED,
            Json(json!({"job_id": id, "status": "queued"})),
        )),
        // Two retries raced: the other one created it.
        Err(SubmitError::DuplicateJobId(id)) => match producer.status(&id).await? {
            Some(record) => Ok((
                StatusCode::OK,
                Json(serde_json::to_value(record).unwrap_or_default()),
            )),
            None => Err(ApiError::not_found(&id)),
        },
        Err(error) => Err(error.into()),
    }
}

/// `GET /v1/jobs` filters.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    feature: Option<String>,
    limit: Option<usize>,
}

/// Recent jobs, newest first.
pub async fn list_jobs(
    State(state): State<Arc<AppState>>,
    axum::extract::Query(query): axum::extract::Query<ListQuery>,
) -> Result<Json<JsonValue>, ApiError> {
    let status = match query.status.as_deref() {
        Some(s) => Some(gpuq_common::JobStatus::parse(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("unknown status '{s}'"),
            )
        })?),
        None => None,
    };
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    let jobs = state
        .producer
        .recent_jobs(limit, status, query.feature.as_deref())
        .await?;
    Ok(Json(json!({ "jobs": jobs })))
}

pub async fn job(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<JsonValue>, ApiError> {
    match state.producer.status(&id).await? {
        Some(record) => Ok(Json(serde_json::to_value(record).unwrap_or_default())),
        None => Err(ApiError::not_found(&id)),
    }
}

pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<JsonValue>, ApiError> {
    if state.producer.status(&id).await?.is_none() {
        return Err(ApiError::not_found(&id));
    }
    match state.producer.cancel(&id).await? {
        CancelOutcome::Cancelled { was } => Ok(Json(
            json!({"job_id": id, "status": "cancelled", "was": was}),
        )),
        CancelOutcome::AlreadyFinal(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_final",
            format!("job '{id}' already ended: {status}"),
        )),
    }
}

/// Server-Sent Events of one job's transitions and progress; ends after its final event.
pub async fn events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let events = state.producer.subscribe_events().await?;
    let Some(current) = state.producer.status(&id).await? else {
        return Err(ApiError::not_found(&id));
    };
    let first = Event::default()
        .event(current.status.map_or("unknown", |s| s.as_str()))
        .json_data(&current)
        .unwrap_or_default();
    let job_id = id.clone();
    let updates =
        events.filter(move |event: &StatusEvent| std::future::ready(event.job_id == job_id));
    // Yield events until (and including) the final one, then end the stream.
    let updates = futures_util::stream::unfold(
        (Box::pin(updates), current.is_final()),
        |(mut updates, done)| async move {
            if done {
                return None;
            }
            let event = updates.next().await?;
            let sse = Event::default()
                .event(event.status.as_str())
                .json_data(&event)
                .unwrap_or_default();
            Some((sse, (updates, event.status.is_final())))
        },
    );
    let stream = futures_util::stream::once(async move { first })
        .chain(updates)
        .map(Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `POST /v1/artifacts`: multipart upload of one file (the first field);
/// returns its id, to pass as `{"$artifact": id}` in inputs.
pub async fn upload_artifact(
    State(state): State<Arc<AppState>>,
    mut multipart: axum::extract::Multipart,
) -> Result<(StatusCode, Json<JsonValue>), ApiError> {
    let bad = |message: String| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_upload", message)
    };
    let field = multipart
        .next_field()
        .await
        .map_err(|e| bad(e.body_text()))?
        .ok_or_else(|| bad("the upload has no file field".into()))?;
    let name = field.file_name().map(str::to_owned);
    let bytes = field.bytes().await.map_err(|e| bad(e.body_text()))?;
    let size = bytes.len();
    let id = state.producer.put_artifact(bytes.to_vec()).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"artifact_id": id, "size_bytes": size, "file_name": name})),
    ))
}

/// `GET /v1/artifacts/{id}`: the stored bytes.
pub async fn download_artifact(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    use axum::http::header;
    use axum::response::IntoResponse;
    use gpuq_common::artifacts::ArtifactError;
    match state.producer.get_artifact(&id).await {
        // Streamed chunk by chunk from the store, never whole in memory.
        Ok(download) => Ok((
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                (header::CONTENT_LENGTH, download.size_bytes.to_string()),
            ],
            axum::body::Body::from_stream(download.chunks),
        )
            .into_response()),
        Err(crate::ProducerError::Artifacts(ArtifactError::NotFound(_))) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "artifact_not_found",
            format!("no artifact '{id}'"),
        )),
        Err(crate::ProducerError::Artifacts(ArtifactError::InvalidId(_))) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_artifact_id",
            format!("'{id}' is not an artifact id"),
        )),
        // A symlink planted in the store, or a store directory gone unsafe.
        Err(crate::ProducerError::Artifacts(error @ ArtifactError::Unsafe { .. })) => {
            tracing::error!(%error, "artifact refused");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "artifact_unavailable",
                format!("artifact '{id}' cannot be read safely; see the gateway's log"),
            ))
        }
        Err(other) => Err(other.into()),
    }
}

/// Every status event of the system, as Server-Sent Events (the dashboard's feed).
pub async fn all_events(
    State(state): State<Arc<AppState>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let events = state.producer.subscribe_events().await?;
    let stream = events.map(|event| Ok(Event::default().json_data(&event).unwrap_or_default()));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

pub async fn models(State(state): State<Arc<AppState>>) -> Result<Json<JsonValue>, ApiError> {
    let hosts = state.producer.system_status().await?.hosts;
    let models: Vec<JsonValue> = state
        .producer
        .config()
        .registry()
        .models()
        .iter()
        .map(|m| {
            let served_by: Vec<&str> = hosts
                .iter()
                .filter(|h| h.slots.iter().any(|s| s.models.contains(&m.id)))
                .map(|h| h.host_id.as_str())
                .collect();
            json!({
                "id": m.id, "feature": m.feature, "vram_mib": m.vram_mib, "timeout_s": m.timeout_s,
                "default": state.producer.config().registry().is_default(m), "served_by": served_by,
            })
        })
        .collect();
    Ok(Json(json!({ "models": models })))
}

pub async fn features(State(state): State<Arc<AppState>>) -> Json<JsonValue> {
    let registry = state.producer.config().registry();
    let features: Vec<JsonValue> = registry
        .features()
        .map(|f| {
            json!({
                "feature": f,
                "default_model": registry.default_model(f).map(|m| m.id.clone()),
                "models": registry.models_for(f).map(|m| m.id.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "namespace": state.producer.config().namespace, "features": features }))
}

pub async fn system(State(state): State<Arc<AppState>>) -> Result<Json<JsonValue>, ApiError> {
    let status = state.producer.system_status().await?;
    Ok(Json(serde_json::to_value(status).unwrap_or_default()))
}

/// 200 when RabbitMQ and Redis both answer, else 503.
pub async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<JsonValue>, ApiError> {
    state.producer.check_ready().await?;
    Ok(Json(json!({"status": "ready"})))
}
