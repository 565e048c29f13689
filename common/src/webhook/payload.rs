//! The JSON a job's webhook POSTs, built the same way by every process that
//! ends jobs (a worker, or a dispatcher recording a broker dead letter):
//!
//! ```json
//! {"type": "job.completed", "timestamp_ms": 1764500000000,
//!  "data": {"job_id": "...", "status": "completed", "feature": "...",
//!           "model": "...", "tenant": "...", "attempt": 1, "worker": "...",
//!           "error": {"code": "...", "message": "..."}, "result": {...}}}
//! ```
//!
//! `error` only for a job that has one; `result` only for a completed job
//! whose outputs are at hand and at most [`MAX_RESULT_JSON`] bytes of JSON
//! (else `result_omitted: true`: fetch `GET /v1/jobs/{id}`).

use serde_json::{json, Value};

use crate::wire::{JobError, JobStatus};

/// Largest result carried in a payload, bytes of JSON.
pub const MAX_RESULT_JSON: usize = 64 * 1024;

/// What a webhook says about a job.
pub struct JobEvent<'a> {
    pub job_id: &'a str,
    pub status: JobStatus,
    pub feature: &'a str,
    pub model: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub attempt: Option<u32>,
    pub worker: Option<&'a str>,
    pub error: Option<&'a JobError>,
    pub result: Option<&'a Value>,
}

impl JobEvent<'_> {
    /// The POSTed JSON, stamped `now_ms`.
    pub fn payload(&self, now_ms: u64) -> Value {
        let mut data = json!({
            "job_id": self.job_id,
            "status": self.status.as_str(),
            "feature": self.feature,
            "model": self.model,
            "tenant": self.tenant,
            "attempt": self.attempt,
            "worker": self.worker,
        });
        if let Some(error) = self.error {
            data["error"] = json!({"code": error.code.to_string(), "message": error.message});
        }
        if let Some(result) = self.result {
            if result.to_string().len() <= MAX_RESULT_JSON {
                data["result"] = result.clone();
            } else {
                data["result_omitted"] = json!(true);
            }
        }
        json!({
            "type": format!("job.{}", self.status.as_str()),
            "timestamp_ms": now_ms,
            "data": data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ErrorCode;

    #[test]
    fn a_payload_carries_the_error_and_a_small_result_only() {
        let error = JobError::new(ErrorCode::Timeout, "too slow");
        let big = json!({"blob": "x".repeat(MAX_RESULT_JSON)});
        let mut event = JobEvent {
            job_id: "j1",
            status: JobStatus::TimedOut,
            feature: "mesh",
            model: None,
            tenant: Some("acme"),
            attempt: None,
            worker: None,
            error: Some(&error),
            result: None,
        };
        let payload = event.payload(7);
        assert_eq!(payload["type"], "job.timed_out");
        assert_eq!(payload["timestamp_ms"], 7);
        assert_eq!(payload["data"]["error"]["code"], "timeout");
        assert_eq!(payload["data"]["tenant"], "acme");
        assert!(payload["data"].get("result").is_none());
        event.status = JobStatus::Completed;
        event.error = None;
        event.result = Some(&big);
        let payload = event.payload(8);
        assert_eq!(payload["data"]["result_omitted"], true);
        let small = json!({"n": 1});
        event.result = Some(&small);
        assert_eq!(event.payload(9)["data"]["result"]["n"], 1);
    }
}
