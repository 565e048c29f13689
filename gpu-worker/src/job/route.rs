//! The pure decisions about a decoded job, before anything runs: whether it
//! runs here (and with what time limit) or is forwarded to the model it pins,
//! and whether it waited in the queue too long. No IO, so they are unit-tested
//! in `job/tests.rs`. [`InFlight::check`] is the job path's step that asks
//! them all.

use std::time::Duration;

use crate::amqp::Delivery;
use gpuq_common::artifacts::{self, FetchLimits};
use gpuq_common::config::Config;
use gpuq_common::registry::ModelConfig;
use gpuq_common::{now_ms, ErrorCode, JobError, JobMessage, JobStatus, Names};

use super::record::failed;
use super::run::artifact_error;
use super::InFlight;
use crate::runtime;
use crate::store::Outcome;

/// Where a decoded job goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Run here with this time limit.
    Run { timeout: Duration },
    /// The job pins another model of the same feature: publish it there.
    Forward { routing_key: String },
}

/// What the checks decided about an in-flight job.
pub(super) enum Checked {
    /// Claim and run it with this time limit.
    Run { timeout: Duration },
    /// Publish it to the model it pins.
    Forward { routing_key: String },
    /// Record this outcome without running it (bad input, waited too long).
    Refused(Outcome),
    /// Its size class needs more VRAM than this worker has: move it to a
    /// VRAM tier of its model (`job/give_back.rs`).
    GiveBack(super::give_back::GiveBack),
}

impl InFlight<'_> {
    /// The step after decode: where the job runs, whether its inputs and
    /// artifact references are acceptable, and whether it waited too long.
    pub(super) fn check(&self) -> Checked {
        let config = &self.ctx.config;
        let timeout = match route(&self.job, self.model, config) {
            Ok(Route::Run { timeout }) => timeout,
            Ok(Route::Forward { routing_key }) => return Checked::Forward { routing_key },
            Err(error) => return Checked::Refused(failed(JobStatus::Failed, error)),
        };
        let limits = FetchLimits::from_config(config);
        let inputs = &self.job.inputs;
        let valid = artifacts::check_reference_count(inputs, &limits)
            .map_err(artifact_error)
            .and_then(|_| runtime::validate_with_references(self.model, inputs));
        if let Err(error) = valid {
            return Checked::Refused(failed(JobStatus::Failed, error));
        }
        if let Some(error) = queue_timeout_exceeded(&self.job, &self.delivery, config, now_ms()) {
            return Checked::Refused(failed(JobStatus::TimedOut, error));
        }
        if let Some(back) = self.vram_give_back() {
            return Checked::GiveBack(back);
        }
        Checked::Run { timeout }
    }
}

/// Decides what to do with a job found on `queue_model`'s queue.
pub fn route(
    job: &JobMessage,
    queue_model: &ModelConfig,
    config: &Config,
) -> Result<Route, JobError> {
    let registry = config.registry();
    if job.feature != queue_model.feature {
        let code = if registry.default_model(&job.feature).is_none() {
            ErrorCode::UnknownFeature
        } else {
            ErrorCode::InvalidParameter
        };
        return Err(JobError::new(
            code,
            format!(
                "job feature '{}' does not match queue of model '{}' (feature '{}'); publish with routing key '{}'",
                job.feature, queue_model.id, queue_model.feature, job.feature
            ),
        ));
    }
    if let Some(pinned) = job.model.as_deref().filter(|m| *m != queue_model.id) {
        return match registry.model(pinned) {
            Some(model) if model.feature == job.feature => Ok(Route::Forward {
                routing_key: Names::pinned_routing_key(&job.feature, pinned),
            }),
            _ => Err(JobError::new(
                ErrorCode::UnknownModel,
                format!(
                    "model '{pinned}' does not exist or does not serve feature '{}'",
                    job.feature
                ),
            )),
        };
    }
    job.tenant()?;
    if let Some(priority) = job.priority.filter(|p| *p > 9) {
        return Err(JobError::new(
            ErrorCode::InvalidParameter,
            format!("priority {priority} is out of range 0 to 9"),
        ));
    }
    let max = config.jobs.max_timeout_s;
    if let Some(t) = job.timeout_s.filter(|t| *t == 0 || *t > max) {
        return Err(JobError::new(
            ErrorCode::InvalidParameter,
            format!("timeout_s {t} is out of range 1 to {max}"),
        ));
    }
    // Never below the model's floor: a tiny timeout must not cycle the worker.
    Ok(Route::Run {
        timeout: Duration::from_secs(queue_model.effective_timeout_s(job.timeout_s)),
    })
}

/// `Some(error)` when the job waited in the queue past its `queue_timeout_s`
/// (or `jobs.queue_timeout_s`), counted from `submitted_at_ms` or the AMQP timestamp.
pub fn queue_timeout_exceeded(
    job: &JobMessage,
    delivery: &Delivery,
    config: &Config,
    now_ms: u64,
) -> Option<JobError> {
    let limit_s = job
        .queue_timeout_s
        .or(Some(config.jobs.queue_timeout_s))
        .filter(|s| *s > 0)?;
    let submitted_ms = job
        .submitted_at_ms
        .or_else(|| delivery.timestamp_s().map(|s| s.saturating_mul(1000)))?;
    let waited_ms = now_ms.saturating_sub(submitted_ms);
    // Client numbers: saturate, never overflow (a panic in debug, a wrong
    // limit in release).
    (waited_ms > limit_s.saturating_mul(1000)).then(|| {
        JobError::new(
            ErrorCode::Timeout,
            format!(
                "the job waited {} s in the queue, longer than its queue_timeout_s of {limit_s} s",
                waited_ms / 1000
            ),
        )
    })
}
