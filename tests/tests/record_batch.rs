//! A batch of record scripts (`gpuq_common::job_record::scripts::batch`, what
//! a worker sends when many writes wait) makes exactly the transitions of
//! its scripts run one by one: random steps of several jobs, cut into
//! batches of random sizes, are run on the real Redis, and every op's reply,
//! every record, status index and tenant load count is compared with the
//! pure state machine (`gpuq_common::job_record::apply`), as
//! `job_record.rs` does for single calls. And an op that fails inside a
//! batch fails alone.

mod record_steps;

use gpuq_common::job_record::scripts::{self, Ending};
use gpuq_common::job_record::{after, apply, JobState, RecordScripts, Transition};
use gpuq_common::{JobStatus, Names};
use gpuq_integration_tests::{redis_url, TestSystem};
use proptest::prelude::*;
use record_steps::{
    call_of, claimant, indexed_under, missing_from_field_indexes, outcome_of, record, step,
    tenant_loads,
};

/// Jobs each case's steps are spread over.
const JOBS: u32 = 3;

fn connection() -> redis::Connection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn batches_make_exactly_the_transitions_of_their_scripts_in_order() {
    let system = TestSystem::new("");
    let names = system.names.clone();
    let scripts = RecordScripts::new();
    let runtime = runtime();
    let batches = runtime.block_on(async {
        redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    });
    let batches = std::cell::RefCell::new(batches);
    let redis = std::cell::RefCell::new(connection());
    let cases = std::cell::Cell::new(0u32);
    let config = ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let steps = proptest::collection::vec((0..JOBS, step()), 1..30);
    let cuts = proptest::collection::vec(1..=scripts::MAX_BATCH, 30);
    proptest!(config, |(steps in steps, cuts in cuts)| {
        let first = cases.get() * JOBS + 1;
        cases.set(cases.get() + 1);
        let redis = &mut *redis.borrow_mut();
        let mut expected = vec![JobState::default(); JOBS as usize];
        let mut rest = steps.as_slice();
        for cut in &cuts {
            if rest.is_empty() {
                break;
            }
            let (batch, later) = rest.split_at((*cut).min(rest.len()));
            rest = later;
            let calls = batch
                .iter()
                .map(|(job, step)| call_of(&names, &job_id(first, *job), *step))
                .collect();
            let replies = runtime
                .block_on(scripts.run_batch(&mut *batches.borrow_mut(), calls))
                .unwrap();
            prop_assert_eq!(replies.len(), batch.len());
            for ((job, (step, tenant)), reply) in batch.iter().zip(replies) {
                let state = &mut expected[*job as usize];
                let transition = apply(*state, step.event());
                let (wrote, attempt) = outcome_of(*step, reply.unwrap());
                prop_assert_eq!(wrote, matches!(transition, Transition::Applied(_)), "{:?} naming {:?} from {:?}", step, tenant, state);
                *state = after(*state, step.event());
                if let Some(attempt) = attempt {
                    prop_assert_eq!(attempt, i64::from(state.attempts));
                }
            }
            for (job, state) in expected.iter().enumerate() {
                let id = job_id(first, job as u32);
                prop_assert_eq!(record(&names, redis, &id), *state, "job {}", id);
                let indexed = indexed_under(&names, redis, &id);
                prop_assert_eq!(indexed, state.status.into_iter().collect::<Vec<_>>());
                let missing = missing_from_field_indexes(&names, redis, &id);
                prop_assert!(missing.is_empty(), "job {}: not in {:?}", id, missing);
            }
            let (counted, counts) = tenant_loads(&names, redis, first + JOBS - 1);
            prop_assert_eq!(counts, counted);
        }
    });
}

/// Ids `job-<n>`, as `record_steps::tenant_loads` reads them.
fn job_id(first: u32, job: u32) -> String {
    format!("job-{}", first + job)
}

/// An op whose script fails (its job key holds a string, so `HGET` is
/// refused) gets its own error; the ops before and after it still run and
/// reply as they would alone.
#[test]
fn an_op_that_fails_inside_a_batch_fails_alone() {
    let system = TestSystem::new("");
    let names: Names = system.names.clone();
    let scripts = RecordScripts::new();
    let redis = &mut connection();
    let _: () = redis::cmd("SET")
        .arg(names.job_key("broken"))
        .arg("not a hash")
        .query(redis)
        .unwrap();
    let by = claimant("f", Some("t1"));
    let ending = Ending {
        status: JobStatus::Completed,
        finished_ms: gpuq_common::now_ms(),
        ttl_s: 600,
        result_json: Some("{}".into()),
        error: None,
        event_json: "{}".into(),
        feature: None,
        model: None,
        tenant: None,
    };
    let calls = vec![
        scripts::claim(&names, "good", 1, &by),
        scripts::claim(&names, "broken", 1, &by),
        scripts::finish(&names, "good", ending),
    ];
    let replies = runtime()
        .block_on(async {
            let mut connection = redis::Client::open(redis_url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            scripts.run_batch(&mut connection, calls).await
        })
        .unwrap();
    assert_eq!(replies.len(), 3);
    assert_eq!(replies[0].as_ref().unwrap(), &redis::Value::Int(1));
    let error = replies[1].as_ref().unwrap_err().to_string();
    assert!(error.contains("WRONGTYPE"), "{error}");
    let finished: String = redis::from_redis_value(replies[2].clone().unwrap()).unwrap();
    assert_eq!(finished, "ok");
    let good = record(&names, redis, "good");
    assert_eq!(good.status, Some(JobStatus::Completed));
    assert_eq!(good.attempts, 1);
}
