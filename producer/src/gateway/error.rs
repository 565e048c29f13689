//! API errors: an HTTP status, a stable machine code and a message for people.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::producer::{ProducerError, SubmitError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 503 answers and a 429 from a tenant's rate limit.
    pub retry_after_s: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after_s: Some(5),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    pub fn not_found(job_id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "job_not_found",
            format!("no job '{job_id}' (unknown, or its record expired)"),
        )
    }
}

impl ApiError {
    pub fn artifact_not_found(artifact_id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "artifact_not_found",
            format!("no artifact '{artifact_id}'"),
        )
    }

    /// 413: a request body over `gateway.max_body_bytes`, or a job over
    /// `queues.max_message_bytes` once encoded.
    pub fn payload_too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut response = (self.status, body).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<ProducerError> for ApiError {
    fn from(error: ProducerError) -> ApiError {
        match error {
            ProducerError::Artifacts(e) => {
                ApiError::unavailable("artifact_store_unavailable", e.to_string())
            }
            other => ApiError::unavailable("backend_unavailable", other.to_string()),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> ApiError {
        let unprocessable =
            |code| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, error.to_string());
        match &error {
            SubmitError::UnknownFeature { .. } => unprocessable("unknown_feature"),
            SubmitError::UnknownModel { .. } => unprocessable("unknown_model"),
            SubmitError::Unroutable { .. } => unprocessable("unroutable"),
            SubmitError::Invalid(job_error)
                if job_error.code == gpuq_common::ErrorCode::PayloadTooLarge =>
            {
                ApiError::payload_too_large(job_error.message.clone())
            }
            SubmitError::Invalid(job_error) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                job_error.code.as_str(),
                job_error.message.clone(),
            ),
            SubmitError::DuplicateJobId(_) => {
                ApiError::new(StatusCode::CONFLICT, "duplicate_job_id", error.to_string())
            }
            SubmitError::QuotaExceeded {
                error: job_error,
                retry_after_ms,
            } => ApiError {
                retry_after_s: retry_after_ms.map(retry_after_s),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    job_error.code.as_str(),
                    job_error.message.clone(),
                )
            },
            SubmitError::Refused => ApiError::unavailable("queue_refused", error.to_string()),
            SubmitError::Broker(_) | SubmitError::Store(_) => {
                ApiError::unavailable("backend_unavailable", error.to_string())
            }
        }
    }
}

/// `Retry-After` for a wait in milliseconds: whole seconds, rounded up, at least 1.
fn retry_after_s(ms: u64) -> u32 {
    u32::try_from(ms.div_ceil(1000).max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuq_common::{ErrorCode, JobError};

    #[test]
    fn a_quota_refusal_is_429_with_retry_after_only_from_the_rate_limit() {
        let refusal = |retry_after_ms| SubmitError::QuotaExceeded {
            error: JobError::new(ErrorCode::QuotaExceeded, "tenant 'a' has 3 jobs waiting"),
            retry_after_ms,
        };
        let error = ApiError::from(refusal(None));
        assert_eq!(error.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(error.code, "quota_exceeded");
        assert_eq!(error.message, "tenant 'a' has 3 jobs waiting");
        assert_eq!(error.retry_after_s, None);
        for (ms, seconds) in [(1, 1), (999, 1), (1000, 1), (1001, 2), (0, 1)] {
            assert_eq!(
                ApiError::from(refusal(Some(ms))).retry_after_s,
                Some(seconds)
            );
        }
    }
}
