//! The job record's one author: which transitions of a job's status are
//! legal ([`apply`], a pure function) and the Lua scripts that make them in
//! Redis ([`scripts`]), which every process calls instead of writing its own.
//!
//! Before, the transitions were Lua in three crates and "is this status
//! final" was written five times; a change to how a job ends meant finding
//! them all. Now the rules live here twice, on purpose, in two forms that are
//! checked against each other: [`apply`] is what a reader reasons about and
//! what the property tests explore; the scripts are what Redis runs, and
//! `tests/tests/job_record.rs` drives random event sequences through them on
//! a real Redis and compares every step with [`apply`].
//!
//! The rules:
//! - a job is submitted once (a second submission of its id is refused);
//! - a final status (`completed`, `failed`, `cancelled`, `timed_out`) never
//!   changes, so a redelivered or late message cannot undo an outcome;
//! - a claim (a worker starting the job) moves it to `processing` and counts an
//!   attempt, from any non-final status, record or not (a job published
//!   straight to RabbitMQ has no `queued` record);
//! - progress only touches a `processing` job;
//! - a retry puts a non-final job back to `queued`, keeping its attempts;
//! - an ending (an outcome, a cancel, a queue timeout, a dead letter, an
//!   unroutable publish) makes a non-final job final.

#[cfg(feature = "redis")]
mod loaded;
pub mod scripts;

#[cfg(feature = "redis")]
pub use loaded::RecordScripts;

use crate::wire::JobStatus;

/// What the record says about a job, as far as transitions care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobState {
    /// `None`: no record.
    pub status: Option<JobStatus>,
    /// Starts so far (claims), never decreasing.
    pub attempts: u32,
}

/// Something that happens to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    /// A producer writes its `queued` record before publishing.
    Submit,
    /// A worker starts it.
    Claim,
    /// A running job reports progress.
    Progress,
    /// A retryable failure: back to the queue, to run again after a back-off.
    Retry,
    /// It ends with this final status (a worker's outcome, a cancel, a queue
    /// timeout, a dead letter, a publish nothing could route).
    End(JobStatus),
}

/// What an event does to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The record becomes this.
    Applied(JobState),
    /// Refused: the job already ended with this status; the record stays.
    AlreadyFinal(JobStatus),
    /// Refused: a submission of an id that has a record.
    Exists,
    /// Nothing to do (progress of a job that is not running); the record stays.
    Ignored,
}

/// The transition `event` makes from `state`. Pure: the scripts in
/// [`scripts`] make the same one in Redis.
pub fn apply(state: JobState, event: JobEvent) -> Transition {
    debug_assert!(!matches!(event, JobEvent::End(s) if !s.is_final()));
    if event == JobEvent::Submit {
        return match state.status {
            None => Transition::Applied(JobState {
                status: Some(JobStatus::Queued),
                attempts: 0,
            }),
            Some(_) => Transition::Exists,
        };
    }
    if let Some(status) = state.status.filter(|s| s.is_final()) {
        return match event {
            JobEvent::Progress => Transition::Ignored,
            _ => Transition::AlreadyFinal(status),
        };
    }
    let next = |status| {
        Transition::Applied(JobState {
            status: Some(status),
            ..state
        })
    };
    match event {
        JobEvent::Submit => unreachable!("handled above"),
        JobEvent::Claim => Transition::Applied(JobState {
            status: Some(JobStatus::Processing),
            attempts: state.attempts.saturating_add(1),
        }),
        JobEvent::Progress if state.status == Some(JobStatus::Processing) => {
            next(JobStatus::Processing)
        }
        JobEvent::Progress => Transition::Ignored,
        JobEvent::Retry => next(JobStatus::Queued),
        JobEvent::End(status) => next(status),
    }
}

/// The record after `event`, whatever the transition (refused ones leave it).
pub fn after(state: JobState, event: JobEvent) -> JobState {
    match apply(state, event) {
        Transition::Applied(next) => next,
        _ => state,
    }
}

#[cfg(test)]
mod tests;
