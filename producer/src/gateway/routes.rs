//! The gateway's handlers.

use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use gpuq_common::wire::{validate_tenant, value_from_json};
use gpuq_common::ValueMap;
use serde::Deserialize;
use serde_json::{json, Value as JsonValue};

use super::auth::{self, Identity};
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
    /// Admin tokens only: the tenant the job belongs to (default: the
    /// token's name). See `auth::submission_tenant`.
    tenant: Option<String>,
    /// `{url, events?}`: where to POST the job's status changes.
    webhook: Option<gpuq_common::webhook::WebhookRequest>,
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
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Result<Json<SubmitBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<JsonValue>), ApiError> {
    let Json(body) = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::payload_too_large(e.body_text());
        }
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
    let tenant = auth::submission_tenant(&identity, body.tenant.clone())?;
    let producer = &state.producer;
    // A retry with the same key returns the job the first try created (to
    // its submitter only: another's id answers 409, never the record).
    if let Some(id) = &job_id {
        if let Some(record) = producer.status(id).await? {
            return auth::retried_job(&identity, id, record);
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
    request.submitted_by = identity.submitter().map(str::to_owned);
    request.tenant = Some(tenant);
    request.webhook = body.webhook;
    auth::check_input_artifacts(&state, &identity, &request.inputs).await?;
    match producer.submit(request).await {
        Ok(id) => Ok((
            StatusCode::CREATED,
            Json(json!({"job_id": id, "status": "queued"})),
        )),
        // Two retries raced: the other one created it.
        Err(SubmitError::DuplicateJobId(id)) => match producer.status(&id).await? {
            Some(record) => auth::retried_job(&identity, &id, record),
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
    tenant: Option<String>,
    limit: Option<usize>,
}

/// Recent jobs, newest first; a `submit` token sees only its own.
pub async fn list_jobs(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
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
    if let Some(Err(error)) = query.tenant.as_deref().map(validate_tenant) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            error.message,
        ));
    }
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    let filter = crate::producer::JobFilter {
        status,
        feature: query.feature,
        submitted_by: auth::listing_scope(&identity),
        tenant: query.tenant,
    };
    let listing = state.producer.recent_jobs(limit, &filter).await?;
    Ok(Json(
        json!({ "jobs": listing.jobs, "truncated": listing.truncated }),
    ))
}

pub async fn job(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Json<JsonValue>, ApiError> {
    let record = auth::visible_job(&identity, &id, state.producer.status(&id).await?)?;
    Ok(Json(serde_json::to_value(record).unwrap_or_default()))
}

pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Json<JsonValue>, ApiError> {
    auth::visible_job(&identity, &id, state.producer.status(&id).await?)?;
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

/// `POST /v1/artifacts`: multipart upload of one file (the first field);
/// returns its id, to pass as `{"$artifact": id}` in inputs.
pub async fn upload_artifact(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    mut multipart: axum::extract::Multipart,
) -> Result<(StatusCode, Json<JsonValue>), ApiError> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::payload_too_large(e.body_text());
        }
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_upload",
            e.body_text(),
        )
    };
    let field = multipart.next_field().await.map_err(bad)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_upload",
            "the upload has no file field",
        )
    })?;
    let name = field.file_name().map(str::to_owned);
    let bytes = field.bytes().await.map_err(bad)?;
    let size = bytes.len();
    let id = state.producer.put_artifact(bytes.to_vec()).await?;
    if let Some(owner) = identity.submitter() {
        state.producer.set_artifact_owner(&id, owner).await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"artifact_id": id, "size_bytes": size, "file_name": name})),
    ))
}

/// `GET /v1/artifacts/{id}`: the stored bytes.
pub async fn download_artifact(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    use axum::http::header;
    use axum::response::IntoResponse;
    use gpuq_common::artifacts::ArtifactError;
    auth::check_artifact_access(&state, &identity, &id).await?;
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

pub async fn system(
    State(state): State<Arc<AppState>>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<JsonValue>, ApiError> {
    auth::require_admin(&identity)?;
    let status = state.producer.system_status().await?;
    Ok(Json(serde_json::to_value(status).unwrap_or_default()))
}

/// 200 when RabbitMQ and Redis both answer, else 503; says so while the
/// gateway runs anonymous off loopback.
pub async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<JsonValue>, ApiError> {
    state.producer.check_ready().await?;
    Ok(Json(match &state.warning {
        Some(warning) => json!({"status": "ready", "warning": warning}),
        None => json!({"status": "ready"}),
    }))
}
