//! The job record's scripts make exactly the transitions of the pure state
//! machine (`gpuq_common::job_record::apply`): random sequences of events
//! run through the real scripts on the real Redis, and after every step the
//! script's reply, the record's status and attempts, and the status index
//! that holds the job are compared with what `apply` says; the tenants' load
//! counts (`<ns>:tenant_load:<tenant>`) are compared with the records.

mod record_steps;

use gpuq_common::job_record::scripts::{self, Ending, Quota};
use gpuq_common::job_record::{after, apply, JobState, RecordScripts, Transition};
use gpuq_common::names::job_field;
use gpuq_common::{ErrorCode, JobError, JobStatus, Names};
use gpuq_integration_tests::{redis_url, TestSystem};
use proptest::prelude::*;
use record_steps::{
    call_of, claimant, indexed_under, missing_from_field_indexes, outcome_of, record, step,
    tenant_loads,
};

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
        for (step, tenant) in steps {
            let transition = apply(expected, step.event());
            let call = call_of(&names, &job_id, (step, tenant));
            let reply: redis::Value = scripts.invocation(&call).invoke(redis).unwrap();
            let (wrote, attempt) = outcome_of(step, reply);
            prop_assert_eq!(wrote, matches!(transition, Transition::Applied(_)), "{:?} from {:?}", step, expected);
            expected = after(expected, step.event());
            if let Some(attempt) = attempt {
                prop_assert_eq!(attempt, i64::from(expected.attempts));
            }
            prop_assert_eq!(record(&names, redis, &job_id), expected, "after {:?}", step);
            let indexed = indexed_under(&names, redis, &job_id);
            prop_assert_eq!(indexed, expected.status.into_iter().collect::<Vec<_>>());
            let missing = missing_from_field_indexes(&names, redis, &job_id);
            prop_assert!(missing.is_empty(), "after {:?}: not in {:?}", step, missing);
            // Every job so far, not only this one: a count wrong by one job
            // would hide behind the floor at 0 if only one job were counted.
            let (counted, counts) = tenant_loads(&names, redis, job.get());
            prop_assert_eq!(counts, counted, "after {:?} naming {:?}", step, tenant);
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
    let claim_for = |tenant| claimant("f", tenant);
    // Written by the producer: a claim naming another tenant keeps it.
    let fields = [
        (job_field::STATUS, "queued".to_owned()),
        (job_field::FEATURE, "f".to_owned()),
        (job_field::CREATED_MS, now.to_string()),
        (job_field::TENANT, "alice".to_owned()),
    ];
    let call = scripts::queued(&names, "q", now, 0, &fields, "{}".into(), Quota::NONE);
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
    let call = scripts::claim(&names, "q", now, &claim_for(Some("mallory")));
    let _: i64 = scripts.invocation(&call).invoke(&mut redis).unwrap();
    assert_eq!(tenant_of(&names, &mut redis, "q").as_deref(), Some("alice"));
    assert!(!in_tenant_index(&names, &mut redis, "mallory", "q"));
    let event: String = pubsub.get_message().unwrap().get_payload().unwrap();
    let event: serde_json::Value = serde_json::from_str(&event).unwrap();
    assert_eq!(event["tenant"], "alice", "{event}");
    // Published by another client: the first claim records it.
    let call = scripts::claim(&names, "c", now, &claim_for(Some("carol")));
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
    let call = scripts::claim(&names, "n", now, &claim_for(None));
    let _: i64 = scripts.invocation(&call).invoke(&mut redis).unwrap();
    assert_eq!(tenant_of(&names, &mut redis, "n"), None);
}

fn connection() -> redis::Connection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap()
}

/// Writes job `id`'s queued record for tenant `acme` within `quota`.
fn submit_within(
    scripts: &RecordScripts,
    names: &Names,
    redis: &mut redis::Connection,
    id: &str,
    quota: Quota,
) -> scripts::QueuedReply {
    let now = gpuq_common::now_ms();
    let fields = [
        (job_field::STATUS, "queued".to_owned()),
        (job_field::CREATED_MS, now.to_string()),
        (job_field::TENANT, "acme".to_owned()),
    ];
    let call = scripts::queued(names, id, now, 0, &fields, "{}".into(), quota);
    scripts.invocation(&call).invoke(redis).unwrap()
}

fn load(names: &Names, redis: &mut redis::Connection, field: &str) -> u64 {
    let count: Option<u64> = redis::cmd("HGET")
        .arg(names.tenant_load_key("acme"))
        .arg(field)
        .query(redis)
        .unwrap();
    count.unwrap_or(0)
}

/// The quota is checked in the step that writes the record: past
/// `max_queued` nothing is written; a claim frees a place; a re-sent id
/// answers "exists" whatever the quota; a forgotten record frees its place.
#[test]
fn the_queued_script_refuses_a_tenant_at_max_queued() {
    use scripts::QueuedReply::{Exists, OverMaxQueued, Written};
    let system = TestSystem::new("");
    let names = system.names.clone();
    let scripts = RecordScripts::new();
    let redis = &mut connection();
    let quota = Quota {
        max_queued: Some(2),
        rate: None,
    };
    assert_eq!(submit_within(&scripts, &names, redis, "a", quota), Written);
    assert_eq!(submit_within(&scripts, &names, redis, "b", quota), Written);
    let refused = submit_within(&scripts, &names, redis, "c", quota);
    assert_eq!(refused, OverMaxQueued { queued: 2 });
    let exists: bool = redis::cmd("EXISTS")
        .arg(names.job_key("c"))
        .query(redis)
        .unwrap();
    assert!(!exists, "a refused job has no record");
    assert_eq!(submit_within(&scripts, &names, redis, "a", quota), Exists);
    // A claim moves one to processing: a place is free.
    let by = claimant("f", None);
    let _: i64 = scripts
        .invocation(&scripts::claim(&names, "a", 1, &by))
        .invoke(redis)
        .unwrap();
    assert_eq!(
        (
            load(&names, redis, "queued"),
            load(&names, redis, "processing")
        ),
        (1, 1)
    );
    assert_eq!(submit_within(&scripts, &names, redis, "c", quota), Written);
    // A record deleted because its job never reached the broker frees its place.
    let _: i64 = scripts
        .invocation(&scripts::forget(&names, "c"))
        .invoke(redis)
        .unwrap();
    assert_eq!(load(&names, redis, "queued"), 1);
    assert_eq!(submit_within(&scripts, &names, redis, "d", quota), Written);
}

/// The token bucket: `burst` submits at once, then a refusal that says how
/// long until the next token; a re-sent id takes no token.
#[test]
fn the_queued_script_takes_a_token_per_new_record() {
    use scripts::QueuedReply::{Exists, OverRate, Written};
    let system = TestSystem::new("");
    let names = system.names.clone();
    let scripts = RecordScripts::new();
    let redis = &mut connection();
    // One token every 1000 s: none comes back during the test.
    let quota = Quota {
        max_queued: None,
        rate: Some(scripts::Rate {
            per_s: 0.001,
            burst: 2,
        }),
    };
    assert_eq!(submit_within(&scripts, &names, redis, "a", quota), Written);
    assert_eq!(submit_within(&scripts, &names, redis, "a", quota), Exists);
    assert_eq!(submit_within(&scripts, &names, redis, "b", quota), Written);
    match submit_within(&scripts, &names, redis, "c", quota) {
        OverRate { retry_after_ms } => assert!(
            (500_000..=1_000_000).contains(&retry_after_ms),
            "{retry_after_ms}"
        ),
        other => panic!("{other:?}"),
    }
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(names.tenant_bucket_key("acme"))
        .query(redis)
        .unwrap();
    assert!(
        ttl_ms > 1_000_000,
        "the bucket lives until it is full: {ttl_ms}"
    );
}
