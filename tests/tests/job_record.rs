//! The job record's scripts make exactly the transitions of the pure state
//! machine (`gpuq_common::job_record::apply`): random sequences of events
//! run through the real scripts on the real Redis, and after every step the
//! script's reply, the record's status and attempts, and the status index
//! that holds the job are compared with what `apply` says.

use gpuq_common::job_record::scripts::{self, Claimant, Ending};
use gpuq_common::job_record::{after, apply, JobEvent, JobState, RecordScripts, Transition};
use gpuq_common::names::job_field;
use gpuq_common::{ErrorCode, JobError, JobStatus, Names};
use gpuq_integration_tests::{redis_url, TestSystem};
use proptest::prelude::*;

/// An event, and for an ending through which script it travels.
#[derive(Debug, Clone, Copy)]
enum Step {
    Event(JobEvent),
    /// `End(Cancelled)` through the cancel script (a user's cancel).
    Cancel,
}

impl Step {
    fn event(self) -> JobEvent {
        match self {
            Step::Event(event) => event,
            Step::Cancel => JobEvent::End(JobStatus::Cancelled),
        }
    }
}

fn step() -> impl Strategy<Value = Step> {
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

/// Runs one step's script; `true` when the script says it wrote.
fn run(
    scripts: &RecordScripts,
    names: &Names,
    redis: &mut redis::Connection,
    job_id: &str,
    step: Step,
) -> (bool, Option<i64>) {
    let now = gpuq_common::now_ms();
    let error = JobError::new(ErrorCode::ModelFailed, "on purpose");
    let call = match step {
        Step::Event(JobEvent::Submit) => scripts::queued(
            names,
            job_id,
            now,
            0,
            &[
                (job_field::STATUS, "queued".to_owned()),
                (job_field::FEATURE, "f".to_owned()),
                (job_field::ATTEMPTS, "0".to_owned()),
                (job_field::CREATED_MS, now.to_string()),
            ],
            "{}".to_owned(),
        ),
        Step::Event(JobEvent::Claim) => {
            let by = Claimant {
                feature: "f",
                model: "m",
                worker: "w",
                host: "h",
                gpu: "0",
                metadata_json: None,
                tenant: Some("t1"),
            };
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
                tenant: Some("t1"),
            },
        ),
        Step::Cancel => scripts::cancel(names, job_id, "by request", now, 600, "{}".to_owned()),
    };
    let reply: redis::Value = scripts.invocation(&call).invoke(redis).unwrap();
    match reply {
        redis::Value::Int(n) if step.event() == JobEvent::Claim => (true, Some(n)),
        redis::Value::Int(n) => (n == 1, None),
        other => {
            let text: String = redis::from_redis_value(other).unwrap();
            (text == "ok" || text.starts_with("was_"), None)
        }
    }
}

fn record(names: &Names, redis: &mut redis::Connection, job_id: &str) -> JobState {
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
fn indexed_under(names: &Names, redis: &mut redis::Connection, job_id: &str) -> Vec<JobStatus> {
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

#[test]
fn the_scripts_make_exactly_the_state_machine_s_transitions() {
    let system = TestSystem::new("");
    let names = system.names.clone();
    let scripts = RecordScripts::new();
    // proptest's closure is `Fn`: the connection and the job counter are shared cells.
    let redis = std::cell::RefCell::new(
        redis::Client::open(redis_url())
            .unwrap()
            .get_connection()
            .unwrap(),
    );
    let job = std::cell::Cell::new(0u32);
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(steps in proptest::collection::vec(step(), 1..12))| {
        job.set(job.get() + 1);
        let job_id = format!("job-{}", job.get());
        let redis = &mut *redis.borrow_mut();
        let mut expected = JobState::default();
        for step in steps {
            let transition = apply(expected, step.event());
            let (wrote, attempt) = run(&scripts, &names, redis, &job_id, step);
            prop_assert_eq!(wrote, matches!(transition, Transition::Applied(_)), "{:?} from {:?}", step, expected);
            expected = after(expected, step.event());
            if let Some(attempt) = attempt {
                prop_assert_eq!(attempt, i64::from(expected.attempts));
            }
            prop_assert_eq!(record(&names, redis, &job_id), expected, "after {:?}", step);
            let indexed = indexed_under(&names, redis, &job_id);
            prop_assert_eq!(indexed, expected.status.into_iter().collect::<Vec<_>>());
        }
    });
}

fn tenant_of(names: &Names, redis: &mut redis::Connection, job_id: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(names.job_key(job_id))
        .arg(job_field::TENANT)
        .query(redis)
        .unwrap()
}

fn in_tenant_index(names: &Names, redis: &mut redis::Connection, tenant: &str, id: &str) -> bool {
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(names.jobs_by_tenant(tenant))
        .arg(id)
        .query(redis)
        .unwrap();
    score.is_some()
}

/// The tenant is written once: by the `queued` record (the producer), else
/// by the first claim or ending (a job another client published); a later
/// claim naming another tenant never moves the job. The tenant index
/// follows the record, and the claim's event carries the record's tenant.
#[test]
fn the_scripts_record_the_tenant_once_and_index_it() {
    let system = TestSystem::new("");
    let names = system.names.clone();
    let scripts = RecordScripts::new();
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let now = gpuq_common::now_ms();
    let claimant = |tenant| Claimant {
        feature: "f",
        model: "m",
        worker: "w",
        host: "h",
        gpu: "0",
        metadata_json: None,
        tenant,
    };
    // Written by the producer: a claim naming another tenant keeps it.
    let fields = [
        (job_field::STATUS, "queued".to_owned()),
        (job_field::FEATURE, "f".to_owned()),
        (job_field::CREATED_MS, now.to_string()),
        (job_field::TENANT, "alice".to_owned()),
    ];
    let call = scripts::queued(&names, "q", now, 0, &fields, "{}".to_owned());
    let _: i64 = scripts.invocation(&call).invoke(&mut redis).unwrap();
    assert!(in_tenant_index(&names, &mut redis, "alice", "q"));
    let mut events = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut pubsub = events.as_pubsub();
    pubsub.subscribe(names.events_channel()).unwrap();
    pubsub
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let call = scripts::claim(&names, "q", now, &claimant(Some("mallory")));
    let _: i64 = scripts.invocation(&call).invoke(&mut redis).unwrap();
    assert_eq!(tenant_of(&names, &mut redis, "q").as_deref(), Some("alice"));
    assert!(!in_tenant_index(&names, &mut redis, "mallory", "q"));
    let event: String = pubsub.get_message().unwrap().get_payload().unwrap();
    let event: serde_json::Value = serde_json::from_str(&event).unwrap();
    assert_eq!(event["tenant"], "alice", "{event}");
    // Published by another client: the first claim records it.
    let call = scripts::claim(&names, "c", now, &claimant(Some("carol")));
    let _: i64 = scripts.invocation(&call).invoke(&mut redis).unwrap();
    assert_eq!(tenant_of(&names, &mut redis, "c").as_deref(), Some("carol"));
    assert!(in_tenant_index(&names, &mut redis, "carol", "c"));
    // Ended without a claim: the ending records it.
    let error = JobError::new(ErrorCode::InvalidInput, "on purpose");
    let mut ending = Ending::without_result(JobStatus::Failed, now, 600, &error, "{}".into());
    ending.tenant = Some("dave");
    let call = scripts::finish(&names, "e", ending);
    let _: String = scripts.invocation(&call).invoke(&mut redis).unwrap();
    assert_eq!(tenant_of(&names, &mut redis, "e").as_deref(), Some("dave"));
    assert!(in_tenant_index(&names, &mut redis, "dave", "e"));
    // No tenant given (an invalid one is never passed): none recorded.
    let call = scripts::claim(&names, "n", now, &claimant(None));
    let _: i64 = scripts.invocation(&call).invoke(&mut redis).unwrap();
    assert_eq!(tenant_of(&names, &mut redis, "n"), None);
}
