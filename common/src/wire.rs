//! The public message contract: what a publisher sends, what a worker replies.
//!
//! Any AMQP client may publish a [`JobMessage`], as msgpack (`application/msgpack`,
//! maps with named fields) or JSON (`application/json`). This module decodes both
//! and reports *why* a body is unusable, so the worker can record a clear error
//! instead of dropping the message. It owns no IO.
//!
//! Values inside `inputs`, `result` and `metadata` are [`rmpv::Value`]: msgpack's
//! own data model, a superset of JSON's that also carries raw bytes.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The message schema version this build writes, and the highest it reads.
pub const SCHEMA_VERSION: u32 = 1;
/// Content type of msgpack bodies (`application/x-msgpack` is accepted too).
pub const CONTENT_TYPE_MSGPACK: &str = "application/msgpack";
/// Content type of JSON bodies.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// A dynamically typed value: the type of every input, output and metadata entry.
pub type Value = rmpv::Value;
/// Named values: a job's inputs or a model's outputs.
pub type ValueMap = BTreeMap<String, Value>;

fn default_schema_version() -> u32 {
    SCHEMA_VERSION
}

/// A job as it travels through RabbitMQ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    /// Schema version of this body; absent means 1. Newer versions are refused.
    #[serde(default = "default_schema_version")]
    pub schema_version: u32,
    /// The job's id and idempotency key; may be left to AMQP `message_id`.
    #[serde(default)]
    pub job_id: String,
    /// Feature name, e.g. `text_to_textured_mesh`.
    pub feature: String,
    /// Model id that must run the job; absent means the feature's default model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Named inputs, interpreted by the model.
    #[serde(default)]
    pub inputs: ValueMap,
    /// 0 (lowest) to 9: its priority level (low, normal, high; docs/protocol.md 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Run-time limit in seconds; absent means the model's `timeout_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// Opaque client data, stored with the job and never interpreted.
    #[serde(default, skip_serializing_if = "ValueMap::is_empty")]
    pub metadata: ValueMap,
    /// When the client submitted the job, unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at_ms: Option<u64>,
    /// Longest wait in the queue, seconds from `submitted_at_ms`; a job not
    /// started by then ends `timed_out` without running. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_s: Option<u64>,
    /// Name of the gateway token that submitted the job (set by the gateway;
    /// other publishers leave it out). Output artifacts are owned by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
    /// The tenant the job belongs to (1 to 64 of `A-Za-z0-9._-`); absent
    /// means [`DEFAULT_TENANT`]. The gateway sets it from its token's name;
    /// other publishers are trusted to set it (see [`JobMessage::tenant`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Where to POST its status changes (`crate::webhook`); absent: the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<crate::webhook::WebhookRequest>,
}

/// Lifecycle state of a job, as stored in Redis and sent in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Processing,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Processing,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::TimedOut => "timed_out",
        }
    }

    /// A final job never runs again, even when its message is redelivered.
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Processing)
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stable, machine-readable reason for a failed or dead-lettered job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is neither valid msgpack nor valid JSON of a job.
    MalformedMessage,
    /// `content_type` is set to something other than msgpack or JSON.
    UnsupportedContentType,
    /// `schema_version` is newer than this worker understands.
    UnsupportedSchemaVersion,
    /// Neither the body nor `message_id` carries a job id.
    MissingJobId,
    /// The body exceeds the configured maximum message size.
    PayloadTooLarge,
    /// No model serves the job's feature.
    UnknownFeature,
    /// The job pins a model that does not exist or does not serve its feature.
    UnknownModel,
    /// The broker could not route the job to any queue.
    Unroutable,
    /// An input is missing or has the wrong type.
    InvalidInput,
    /// `timeout_s` or `priority` is out of range.
    InvalidParameter,
    /// The model raised an error while running the job.
    ModelFailed,
    /// The model could not be loaded (bad file, adapter failed to start or load).
    ModelLoadFailed,
    /// The GPU had no room for the model, or CUDA ran out of memory.
    OutOfMemory,
    /// The job ran longer than its timeout.
    Timeout,
    /// The artifact store could not be read or written.
    ArtifactUnavailable,
    /// The model's process died while running the job (adapter exit or crash).
    ModelCrashed,
    /// The job was started `jobs.max_attempts` times without finishing (its
    /// worker died, or it failed with a retryable error each time).
    TooManyAttempts,
    /// The job was cancelled.
    Cancelled,
    /// The job's tenant is past one of its `[tenants.<name>]` limits
    /// (`max_queued`, `rate_per_s`): it was not queued.
    QuotaExceeded,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedMessage => "malformed_message",
            ErrorCode::UnsupportedContentType => "unsupported_content_type",
            ErrorCode::UnsupportedSchemaVersion => "unsupported_schema_version",
            ErrorCode::MissingJobId => "missing_job_id",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnknownFeature => "unknown_feature",
            ErrorCode::UnknownModel => "unknown_model",
            ErrorCode::Unroutable => "unroutable",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::InvalidParameter => "invalid_parameter",
            ErrorCode::ModelFailed => "model_failed",
            ErrorCode::ModelLoadFailed => "model_load_failed",
            ErrorCode::OutOfMemory => "out_of_memory",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ArtifactUnavailable => "artifact_unavailable",
            ErrorCode::ModelCrashed => "model_crashed",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::QuotaExceeded => "quota_exceeded",
        }
    }
}

impl ErrorCode {
    /// Errors worth another attempt (after a back-off): the job itself may be fine.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::OutOfMemory
                | ErrorCode::ArtifactUnavailable
                | ErrorCode::ModelLoadFailed
                | ErrorCode::ModelCrashed
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error recorded against a job: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
}

impl JobError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// One status transition, published as JSON on the events channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub job_id: String,
    pub status: JobStatus,
    /// When the transition happened, unix milliseconds.
    pub ts_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Fraction done (0 to 1), on progress events of a processing job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// The job's tenant, on the events whose writer knows it (queued,
    /// processing, retry and the worker's final event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl StatusEvent {
    /// A transition of `job_id` to `status` now; set the optional fields with
    /// struct-update syntax.
    pub fn new(job_id: impl Into<String>, status: JobStatus) -> StatusEvent {
        StatusEvent {
            job_id: job_id.into(),
            status,
            ts_ms: crate::now_ms(),
            feature: None,
            model: None,
            worker: None,
            attempt: None,
            progress: None,
            error: None,
            tenant: None,
        }
    }
}

/// The reply published to a job's `reply_to` queue once it is final.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobReply {
    pub schema_version: u32,
    pub job_id: String,
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ValueMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    pub finished_at_ms: u64,
}

impl JobMessage {
    /// Decodes a body and checks what any worker needs: a supported schema
    /// version and a job id (`fallback_job_id` is the AMQP `message_id`).
    pub fn decode(
        content_type: Option<&str>,
        body: &[u8],
        fallback_job_id: Option<&str>,
    ) -> Result<JobMessage, JobError> {
        Self::decode_with_encoding(content_type, body, fallback_job_id).map(|(job, _)| job)
    }

    /// [`JobMessage::decode`], and the body's encoding (a reply uses the
    /// job's own), found once.
    pub fn decode_with_encoding(
        content_type: Option<&str>,
        body: &[u8],
        fallback_job_id: Option<&str>,
    ) -> Result<(JobMessage, Encoding), JobError> {
        let encoding = Encoding::detect(content_type, body)?;
        let mut job: JobMessage = match encoding {
            Encoding::Json => {
                let mut job: JobMessage = serde_json::from_slice(body).map_err(|e| {
                    JobError::new(
                        ErrorCode::MalformedMessage,
                        format!("body is not a valid JSON job: {e}"),
                    )
                })?;
                for value in job.inputs.values_mut() {
                    decode_bytes_markers(value).map_err(|e| {
                        JobError::new(ErrorCode::MalformedMessage, format!("inputs: {e}"))
                    })?;
                }
                job
            }
            Encoding::Msgpack => rmp_serde::from_slice(body).map_err(|e| {
                JobError::new(
                    ErrorCode::MalformedMessage,
                    format!("body is not a valid msgpack job: {e}"),
                )
            })?,
        };
        if job.schema_version == 0 || job.schema_version > SCHEMA_VERSION {
            return Err(JobError::new(
                ErrorCode::UnsupportedSchemaVersion,
                format!(
                    "schema_version {} is not supported; this worker reads 1 to {SCHEMA_VERSION}",
                    job.schema_version
                ),
            ));
        }
        if job.job_id.is_empty() {
            job.job_id = fallback_job_id.unwrap_or_default().to_owned();
        }
        validate_job_id(&job.job_id)?;
        Ok((job, encoding))
    }
}

/// Longest accepted job id, in bytes; ids are Redis key parts and AMQP short strings.
pub const MAX_JOB_ID_LEN: usize = 128;

/// A job id is 1 to 128 printable ASCII characters without spaces.
pub fn validate_job_id(job_id: &str) -> Result<(), JobError> {
    if job_id.is_empty() {
        return Err(JobError::new(
            ErrorCode::MissingJobId,
            "the job has no id: set 'job_id' in the body or the AMQP message_id property",
        ));
    }
    if job_id.len() > MAX_JOB_ID_LEN || !job_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(JobError::new(
            ErrorCode::MalformedMessage,
            format!(
                "job id must be 1 to {MAX_JOB_ID_LEN} printable ASCII characters without spaces"
            ),
        ));
    }
    Ok(())
}

impl JobReply {
    /// Encodes the reply; JSON carries result bytes as `$bytes` like Redis does.
    pub fn encode(&self, encoding: Encoding) -> Result<Vec<u8>, EncodeError> {
        match encoding {
            Encoding::Msgpack => encoding.encode(self),
            Encoding::Json => {
                let mut json = serde_json::to_value(self)?;
                if let Some(result) = &self.result {
                    json["result"] = serde_json::from_str(&value_map_to_json_string(result))?;
                }
                Ok(serde_json::to_vec(&json)?)
            }
        }
    }
}

mod encoding;
mod json;
mod tenant;
pub use encoding::{EncodeError, Encoding};
use json::decode_bytes_markers;
pub use json::{value_from_json, value_map_to_json_string, value_to_json};
pub use json::{JsonValueError, BYTES_KEY};
pub use tenant::{validate_tenant, DEFAULT_TENANT, MAX_TENANT_LEN};

#[cfg(test)]
mod tests;
