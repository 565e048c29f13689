use proptest::prelude::*;

use super::scripts::Script;
use super::*;

const FINALS: [JobStatus; 4] = [
    JobStatus::Completed,
    JobStatus::Failed,
    JobStatus::Cancelled,
    JobStatus::TimedOut,
];

fn event() -> impl Strategy<Value = JobEvent> {
    prop_oneof![
        Just(JobEvent::Submit),
        Just(JobEvent::Claim),
        Just(JobEvent::Progress),
        Just(JobEvent::Retry),
        proptest::sample::select(FINALS.to_vec()).prop_map(JobEvent::End),
    ]
}

fn state() -> impl Strategy<Value = JobState> {
    (
        proptest::option::of(proptest::sample::select(JobStatus::ALL.to_vec())),
        0u32..5,
    )
        .prop_map(|(status, attempts)| JobState { status, attempts })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Over any sequence of events: a final status never changes, at most one
    /// event makes the job final (exactly one when an ending is applied at
    /// all), and attempts never decrease.
    #[test]
    fn sequences_keep_the_record_rules(events in proptest::collection::vec(event(), 0..24)) {
        let mut record = JobState::default();
        let mut finals_applied = 0;
        let mut final_status = None;
        for event in events {
            let before = record;
            let transition = apply(before, event);
            record = after(before, event);
            prop_assert!(record.attempts >= before.attempts);
            if let Some(status) = final_status {
                prop_assert_eq!(record.status, Some(status), "a final status changed");
                prop_assert!(!matches!(transition, Transition::Applied(_)));
            }
            if let (Transition::Applied(next), Some(false) | None) =
                (transition, before.status.map(JobStatus::is_final))
            {
                if next.status.is_some_and(JobStatus::is_final) {
                    finals_applied += 1;
                    final_status = next.status;
                }
            }
        }
        prop_assert!(finals_applied <= 1);
        prop_assert_eq!(finals_applied == 1, record.status.is_some_and(JobStatus::is_final));
    }

    /// Every event from every state: what is refused leaves the record as it
    /// was, and only a claim changes attempts (by one).
    #[test]
    fn single_steps_change_only_what_they_may(state in state(), event in event()) {
        match apply(state, event) {
            Transition::Applied(next) => {
                let expected = if event == JobEvent::Claim { state.attempts + 1 } else if event == JobEvent::Submit { 0 } else { state.attempts };
                prop_assert_eq!(next.attempts, expected);
                prop_assert!(!state.status.is_some_and(JobStatus::is_final));
            }
            Transition::AlreadyFinal(status) => {
                prop_assert_eq!(state.status, Some(status));
                prop_assert!(status.is_final());
            }
            Transition::Exists => prop_assert!(event == JobEvent::Submit && state.status.is_some()),
            Transition::Ignored => prop_assert!(event == JobEvent::Progress && state.status != Some(JobStatus::Processing)),
        }
    }
}

#[test]
fn the_transitions_of_a_normal_life() {
    let mut job = JobState::default();
    for (event, status, attempts) in [
        (JobEvent::Submit, JobStatus::Queued, 0),
        (JobEvent::Claim, JobStatus::Processing, 1),
        (JobEvent::Progress, JobStatus::Processing, 1),
        (JobEvent::Retry, JobStatus::Queued, 1),
        (JobEvent::Claim, JobStatus::Processing, 2),
        (JobEvent::End(JobStatus::Completed), JobStatus::Completed, 2),
    ] {
        job = after(job, event);
        assert_eq!(
            job,
            JobState {
                status: Some(status),
                attempts
            },
            "{event:?}"
        );
    }
    assert_eq!(
        apply(job, JobEvent::Claim),
        Transition::AlreadyFinal(JobStatus::Completed)
    );
    assert_eq!(apply(job, JobEvent::Submit), Transition::Exists);
    assert_eq!(apply(job, JobEvent::Progress), Transition::Ignored);
}

#[test]
fn a_job_without_a_record_can_be_claimed_ended_or_retried_but_not_progressed() {
    let none = JobState::default();
    assert!(matches!(
        apply(none, JobEvent::Claim),
        Transition::Applied(_)
    ));
    assert!(matches!(
        apply(none, JobEvent::End(JobStatus::Cancelled)),
        Transition::Applied(_)
    ));
    assert!(matches!(
        apply(none, JobEvent::Retry),
        Transition::Applied(_)
    ));
    assert_eq!(apply(none, JobEvent::Progress), Transition::Ignored);
}

#[test]
fn every_script_checks_finality_through_the_one_generated_function() {
    for script in Script::ALL {
        let source = script.source();
        assert_eq!(
            source.matches("status == 'completed'").count(),
            1,
            "{script:?} spells the final statuses out again"
        );
        assert!(source.contains("local function gpuq_is_final(status)"));
    }
    let source = Script::Finish.source();
    for status in FINALS {
        assert!(source.contains(&format!("status == '{}'", status.as_str())));
    }
    assert!(!source.contains("status == 'queued'"));
}
