//! The steps the record tests drive through the scripts (one event of
//! `gpuq_common::job_record` each), and what they read back: shared by
//! `job_record.rs` (one script call per step) and `record_batch.rs` (steps
//! in batches).

// Each test binary uses only part of it.
#![allow(dead_code)]

use gpuq_common::job_record::scripts::{self, Claimant, Ending, Quota, ScriptCall};
use gpuq_common::job_record::{JobEvent, JobState};
use gpuq_common::names::job_field;
use gpuq_common::{ErrorCode, JobError, JobStatus, Names};
use proptest::prelude::*;

/// An event, and for an ending through which script it travels.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    Event(JobEvent),
    /// `End(Cancelled)` through the cancel script (a user's cancel).
    Cancel,
}

impl Step {
    pub fn event(self) -> JobEvent {
        match self {
            Step::Event(event) => event,
            Step::Cancel => JobEvent::End(JobStatus::Cancelled),
        }
    }
}

/// The tenants a step may name (`None`: it names none).
pub const TENANTS: [Option<&str>; 3] = [Some("t1"), Some("t2"), None];

pub fn step() -> impl Strategy<Value = (Step, Option<&'static str>)> {
    (event_step(), proptest::sample::select(TENANTS.to_vec()))
}

pub fn event_step() -> impl Strategy<Value = Step> {
    let finals = vec![
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::TimedOut,
    ];
    prop_oneof![
        Just(Step::Event(JobEvent::Submit)),
        Just(Step::Event(JobEvent::Claim)),
        Just(Step::Event(JobEvent::Progress)),
        Just(Step::Event(JobEvent::Retry)),
        proptest::sample::select(finals).prop_map(|s| Step::Event(JobEvent::End(s))),
        Just(Step::Cancel),
    ]
}

/// A claim of `feature` by worker `w`, naming `tenant`, with no limits.
pub fn claimant<'a>(feature: &'a str, tenant: Option<&'a str>) -> Claimant<'a> {
    Claimant {
        feature,
        model: "m",
        worker: "w",
        host: "h",
        gpu: "0",
        metadata_json: None,
        tenant,
        max_running: None,
        max_queued: None,
    }
}

/// One step's script call (naming `tenant` where the step can).
pub fn call_of(names: &Names, job_id: &str, (step, tenant): (Step, Option<&str>)) -> ScriptCall {
    let now = gpuq_common::now_ms();
    let error = JobError::new(ErrorCode::ModelFailed, "on purpose");
    match step {
        Step::Event(JobEvent::Submit) => {
            let mut fields = vec![
                (job_field::STATUS, "queued".to_owned()),
                (job_field::FEATURE, "f".to_owned()),
                (job_field::ATTEMPTS, "0".to_owned()),
                (job_field::CREATED_MS, now.to_string()),
            ];
            fields.extend(tenant.map(|t| (job_field::TENANT, t.to_owned())));
            // A submitter for some, so the submitter index is kept too.
            if tenant == Some("t1") {
                fields.push((job_field::SUBMITTED_BY, "u".to_owned()));
            }
            scripts::queued(names, job_id, now, 0, &fields, "{}".to_owned(), Quota::NONE)
        }
        Step::Event(JobEvent::Claim) => {
            // Another feature for some claims: the claim's feature replaces
            // the record's, and the index must follow.
            let by = claimant(if tenant.is_none() { "g" } else { "f" }, tenant);
            scripts::claim(names, job_id, now, &by)
        }
        Step::Event(JobEvent::Progress) => scripts::progress(names, job_id, 0.5, "{}".to_owned()),
        Step::Event(JobEvent::Retry) => {
            scripts::retry(names, job_id, Some(&error), now + 1000, "{}".to_owned())
        }
        Step::Event(JobEvent::End(status)) => scripts::finish(
            names,
            job_id,
            Ending {
                status,
                finished_ms: now,
                ttl_s: 600,
                result_json: Some("{}".to_owned()),
                error: (status != JobStatus::Completed).then_some(&error),
                event_json: "{}".to_owned(),
                feature: None,
                model: None,
                tenant,
            },
        ),
        Step::Cancel => scripts::cancel(names, job_id, "by request", now, 600, "{}".to_owned()),
    }
}

/// What a step's script replied: `true` when it says it wrote, and the
/// attempt a claim counted.
pub fn outcome_of(step: Step, reply: redis::Value) -> (bool, Option<i64>) {
    match reply {
        redis::Value::Int(n) if step.event() == JobEvent::Claim => (true, Some(n)),
        redis::Value::Int(_) if step.event() == JobEvent::Submit => {
            let reply: scripts::QueuedReply = redis::from_redis_value(reply).unwrap();
            (reply == scripts::QueuedReply::Written, None)
        }
        redis::Value::Int(n) => (n == 1, None),
        other => {
            let text: String = redis::from_redis_value(other).unwrap();
            (text == "ok" || text.starts_with("was_"), None)
        }
    }
}

pub fn record(names: &Names, redis: &mut redis::Connection, job_id: &str) -> JobState {
    let (status, attempts): (Option<String>, Option<u32>) = redis::cmd("HMGET")
        .arg(names.job_key(job_id))
        .arg(job_field::STATUS)
        .arg(job_field::ATTEMPTS)
        .query(redis)
        .unwrap();
    JobState {
        status: status.and_then(|s| JobStatus::parse(&s)),
        attempts: attempts.unwrap_or(0),
    }
}

/// The statuses whose index holds the job.
pub fn indexed_under(names: &Names, redis: &mut redis::Connection, job_id: &str) -> Vec<JobStatus> {
    JobStatus::ALL
        .into_iter()
        .filter(|status| {
            let score: Option<f64> = redis::cmd("ZSCORE")
                .arg(names.jobs_by_status(status.as_str()))
                .arg(job_id)
                .query(redis)
                .unwrap();
            score.is_some()
        })
        .collect()
}

/// The feature, submitter and tenant indexes of the record's values that
/// do not hold the job (every write keeps it in them): empty when right.
pub fn missing_from_field_indexes(
    names: &Names,
    redis: &mut redis::Connection,
    job_id: &str,
) -> Vec<String> {
    let (feature, by, tenant): (Option<String>, Option<String>, Option<String>) =
        redis::cmd("HMGET")
            .arg(names.job_key(job_id))
            .arg(job_field::FEATURE)
            .arg(job_field::SUBMITTED_BY)
            .arg(job_field::TENANT)
            .query(redis)
            .unwrap();
    let indexes = [
        feature.map(|f| names.jobs_by_feature(&f)),
        by.map(|b| names.jobs_by_submitter(&b)),
        tenant.map(|t| names.jobs_by_tenant(&t)),
    ];
    indexes
        .into_iter()
        .flatten()
        .filter(|index| {
            let score: Option<f64> = redis::cmd("ZSCORE")
                .arg(index)
                .arg(job_id)
                .query(redis)
                .unwrap();
            score.is_none()
        })
        .collect()
}

/// The `queued` and `processing` counts of t1 and t2 as the records of jobs
/// 1 to `jobs` say, then as the tenants' load hashes say.
pub type Loads = Vec<(u64, u64)>;
pub fn tenant_loads(names: &Names, redis: &mut redis::Connection, jobs: u32) -> (Loads, Loads) {
    let mut pipe = redis::pipe();
    for n in 1..=jobs {
        pipe.cmd("HMGET")
            .arg(names.job_key(&format!("job-{n}")))
            .arg(job_field::STATUS)
            .arg(job_field::TENANT);
    }
    let records: Vec<(Option<String>, Option<String>)> = pipe.query(redis).unwrap();
    let mut counted = Vec::new();
    let mut counts = Vec::new();
    for tenant in ["t1", "t2"] {
        let of = |status: &str| {
            records
                .iter()
                .filter(|(s, t)| s.as_deref() == Some(status) && t.as_deref() == Some(tenant))
                .count() as u64
        };
        counted.push((of("queued"), of("processing")));
        let (queued, processing): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(names.tenant_load_key(tenant))
            .arg("queued")
            .arg("processing")
            .query(redis)
            .unwrap();
        counts.push((queued.unwrap_or(0), processing.unwrap_or(0)));
    }
    (counted, counts)
}
