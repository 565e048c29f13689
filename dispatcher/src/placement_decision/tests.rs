use super::*;

pub(super) const NOW: u64 = 1_000_000;

pub(super) fn policy() -> Policy {
    Policy {
        min_residency_ms: 10_000,
        max_queue_wait_ms: 30_000,
        lookahead_ms: 0,
    }
}

pub(super) fn model(id: &str, waiting: u64, run_ms: u64, load_ms: u64) -> ModelState {
    ModelState {
        id: id.into(),
        vram_mib: 6_000,
        packed_mib: 6_000,
        load_ms,
        run_ms,
        waiting,
        running: 0,
        arrivals_per_s: 0.0,
        unserved_since_ms: None,
        min_replicas: 0,
        max_replicas: 0,
    }
}

pub(super) fn worker(id: &str, eligible: &[&str]) -> WorkerState {
    WorkerState {
        id: id.into(),
        host: "h1".into(),
        budget_mib: Some(16_000),
        max_models: 2,
        eligible: eligible.iter().map(|m| m.to_string()).collect(),
        ..WorkerState::default()
    }
}

/// Workers w1..=wn, each able to serve a, b and c.
fn workers(n: usize) -> Vec<WorkerState> {
    (1..=n).map(|i| worker(&format!("w{i}"), ABC)).collect()
}

pub(super) fn with_resident(
    mut worker: WorkerState,
    model: &str,
    loaded_ago_ms: u64,
) -> WorkerState {
    worker.resident.push((model.into(), NOW - loaded_ago_ms));
    worker
}

fn snapshot(models: Vec<ModelState>, workers: Vec<WorkerState>) -> Snapshot {
    Snapshot {
        now_ms: NOW,
        models,
        workers,
    }
}

fn main_of<'a>(decision: &'a Decision, worker: &str) -> Option<&'a str> {
    decision.main.get(worker).map(String::as_str)
}

fn consumes(decision: &Decision, worker: &str, model: &str) -> bool {
    decision.assignments[worker].iter().any(|m| m == model)
}

const ABC: &[&str] = &["a", "b", "c"];

#[test]
fn an_idle_system_consumes_every_model_everywhere() {
    let decision = decide(
        &snapshot(
            vec![
                model("a", 0, 100, 1000),
                model("b", 0, 100, 1000),
                model("c", 0, 100, 1000),
            ],
            workers(2),
        ),
        &policy(),
    );
    assert!(decision.main.is_empty());
    assert_eq!(decision.assignments["w1"], ["a", "b", "c"]);
    assert_eq!(decision.assignments["w2"], ["a", "b", "c"]);
}

#[test]
fn idle_workers_with_loaded_models_keep_to_them_and_share_the_rest() {
    let decision = decide(
        &snapshot(
            vec![
                model("a", 0, 100, 1000),
                model("b", 0, 100, 1000),
                model("c", 0, 100, 1000),
            ],
            vec![
                with_resident(worker("w1", ABC), "a", 60_000),
                with_resident(worker("w2", ABC), "b", 60_000),
            ],
        ),
        &policy(),
    );
    assert!(consumes(&decision, "w1", "a") && !consumes(&decision, "w1", "b"));
    assert!(consumes(&decision, "w2", "b") && !consumes(&decision, "w2", "a"));
    // c, loaded nowhere, is consumed by exactly one of them.
    let c: Vec<_> = ["w1", "w2"]
        .into_iter()
        .filter(|w| consumes(&decision, w, "c"))
        .collect();
    assert_eq!(c.len(), 1, "{decision:?}");
}

#[test]
fn every_model_with_a_backlog_gets_a_worker() {
    let decision = decide(
        &snapshot(
            vec![
                model("a", 500, 1000, 1000),
                model("b", 1, 100, 1000),
                model("c", 1, 100, 1000),
            ],
            workers(3),
        ),
        &policy(),
    );
    for id in ["a", "b", "c"] {
        assert_eq!(decision.replicas(id), 1, "{id}: {decision:?}");
    }
}

#[test]
fn heavy_backlogs_get_more_workers() {
    let decision = decide(
        &snapshot(
            vec![model("a", 100, 1000, 5000), model("b", 2, 100, 5000)],
            workers(4),
        ),
        &policy(),
    );
    assert_eq!(decision.replicas("a"), 3, "{decision:?}");
    assert_eq!(decision.replicas("b"), 1, "{decision:?}");
}

#[test]
fn idle_workers_join_while_the_work_per_worker_exceeds_a_load() {
    // 12 s of work, 5 s loads: a second worker finishes at 8.5 s instead of 12,
    // a third at 7.3 s instead of 8.5; a fourth (4 s each, less than a load) not.
    let workers = (1..=5).map(|i| worker(&format!("w{i}"), ABC)).collect();
    let decision = decide(
        &snapshot(vec![model("a", 12, 1000, 5000)], workers),
        &policy(),
    );
    assert_eq!(decision.replicas("a"), 3, "{decision:?}");
}

#[test]
fn a_small_backlog_is_not_worth_loading_on_idle_workers() {
    // 3 jobs of 100 ms against a 5 s load: one worker, and the idle ones do
    // not consume the queue (they would each load the model for one job).
    let decision = decide(
        &snapshot(
            vec![model("a", 3, 100, 5000), model("b", 0, 100, 5000)],
            workers(3),
        ),
        &policy(),
    );
    assert_eq!(decision.replicas("a"), 1);
    let serving: Vec<_> = ["w1", "w2", "w3"]
        .into_iter()
        .filter(|w| consumes(&decision, w, "a"))
        .collect();
    assert_eq!(serving.len(), 1, "{decision:?}");
    // The idle workers stay ready for the quiet model.
    let idle: Vec<_> = ["w1", "w2", "w3"]
        .into_iter()
        .filter(|w| main_of(&decision, w).is_none())
        .collect();
    assert_eq!(idle.len(), 2);
    assert!(idle.iter().all(|w| consumes(&decision, w, "b")));
}

#[test]
fn warm_workers_keep_their_models() {
    // By id order w1 would take a; it keeps b because b is loaded there.
    let decision = decide(
        &snapshot(
            vec![model("a", 50, 1000, 3000), model("b", 50, 1000, 3000)],
            vec![
                with_resident(worker("w1", ABC), "b", 60_000),
                with_resident(worker("w2", ABC), "a", 60_000),
            ],
        ),
        &policy(),
    );
    assert_eq!(main_of(&decision, "w1"), Some("b"));
    assert_eq!(main_of(&decision, "w2"), Some("a"));
    assert!(!consumes(&decision, "w1", "a"), "{decision:?}");
}

#[test]
fn an_idle_worker_prefers_the_model_it_has_loaded() {
    let decision = decide(
        &snapshot(
            vec![model("a", 50, 1000, 3000)],
            vec![
                worker("w1", ABC),
                with_resident(worker("w2", ABC), "a", 1_000),
            ],
        ),
        &policy(),
    );
    // w2 is picked first for a (no load), and w1 joins since the work is worth a load.
    assert_eq!(main_of(&decision, "w2"), Some("a"));
    assert_eq!(decision.replicas("a"), 2);
}

#[test]
fn a_worker_on_the_last_job_of_its_model_is_moved_on_before_it_ends() {
    let mut a = model("a", 0, 1000, 3000);
    a.running = 1;
    let mut busy = with_resident(worker("w1", ABC), "a", 1_000);
    busy.running = vec!["a".into()];
    let decision = decide(
        &snapshot(vec![a, model("b", 20, 1000, 3000)], vec![busy]),
        &policy(),
    );
    // Its next job is b's: it is delivered while a's last job runs.
    assert_eq!(main_of(&decision, "w1"), Some("b"), "{decision:?}");
}

#[test]
fn a_worker_moved_to_a_model_stays_there_while_it_finishes_the_old_one() {
    // The last decision moved w1 from a to b; it still runs a's job and a still
    // has work, but the decision does not flip back (each flip costs a load).
    let mut a = model("a", 30, 1000, 3000);
    a.running = 1;
    let mut moved = with_resident(worker("w1", ABC), "a", 60_000);
    moved.running = vec!["a".into()];
    moved.main = Some(("b".into(), NOW - 1_000));
    let w2 = with_resident(worker("w2", ABC), "a", 60_000);
    let decision = decide(
        &snapshot(vec![a, model("b", 30, 1000, 3000)], vec![moved, w2]),
        &policy(),
    );
    assert_eq!(main_of(&decision, "w1"), Some("b"), "{decision:?}");
    assert_eq!(main_of(&decision, "w2"), Some("a"), "{decision:?}");
}

#[test]
fn coverage_stays_with_the_worker_that_had_it() {
    let mut w1 = worker("w1", ABC);
    w1.resident = vec![("a".into(), NOW - 60_000)];
    let mut w2 = worker("w2", ABC);
    w2.resident = vec![("b".into(), NOW - 60_000)];
    w2.consuming = vec!["b".into(), "c".into()];
    let decision = decide(
        &snapshot(
            vec![
                model("a", 0, 100, 1000),
                model("b", 0, 100, 1000),
                model("c", 0, 100, 1000),
            ],
            vec![w1, w2],
        ),
        &policy(),
    );
    assert!(consumes(&decision, "w2", "c") && !consumes(&decision, "w1", "c"));
}

#[test]
fn min_residency_holds_a_fresh_model_and_frees_an_old_one() {
    let mut a = model("a", 1, 1000, 3000);
    a.running = 1;
    let decision = decide(
        &snapshot(
            vec![a, model("b", 200, 1000, 3000)],
            vec![
                with_resident(worker("w1", ABC), "a", 2_000),
                with_resident(worker("w2", ABC), "b", 60_000),
                with_resident(worker("w3", ABC), "a", 60_000),
            ],
        ),
        &policy(),
    );
    // w1 loaded a 2 s ago (min residency 10 s): stays. w3 has held a long
    // enough and b's backlog is heavy: it moves.
    assert_eq!(main_of(&decision, "w1"), Some("a"), "{decision:?}");
    assert_eq!(main_of(&decision, "w3"), Some("b"), "{decision:?}");
}

#[test]
fn a_starving_model_preempts_a_warm_one_and_a_waiting_one_does_not() {
    let busy = with_resident(worker("w1", ABC), "a", 1_000);
    let mut b = model("b", 3, 1000, 3000);
    b.unserved_since_ms = Some(NOW - 5_000);
    let decision = decide(
        &snapshot(
            vec![model("a", 100, 1000, 3000), b.clone()],
            vec![busy.clone()],
        ),
        &policy(),
    );
    assert_eq!(main_of(&decision, "w1"), Some("a"));
    // b is still consumed (its jobs wait behind a's), not abandoned.
    assert!(consumes(&decision, "w1", "b"), "{decision:?}");

    b.unserved_since_ms = Some(NOW - 31_000);
    let decision = decide(
        &snapshot(vec![model("a", 100, 1000, 3000), b], vec![busy]),
        &policy(),
    );
    assert_eq!(main_of(&decision, "w1"), Some("b"), "{decision:?}");
    assert!(
        consumes(&decision, "w1", "a"),
        "a stays consumed: {decision:?}"
    );
}

#[test]
fn a_model_without_a_worker_takes_one_from_a_model_with_two() {
    let decision = decide(
        &snapshot(
            vec![model("a", 100, 1000, 3000), model("b", 10, 1000, 3000)],
            vec![
                with_resident(worker("w1", ABC), "a", 1_000),
                with_resident(worker("w2", ABC), "a", 1_000),
            ],
        ),
        &policy(),
    );
    assert_eq!(decision.replicas("a"), 1, "{decision:?}");
    assert_eq!(decision.replicas("b"), 1, "{decision:?}");
}

mod limits;

#[test]
fn a_model_served_beside_another_main_gets_its_own_worker_only_when_that_beats_a_load() {
    // w1 works a down and has b loaded beside it, so it consumes b too; w2
    // holds nothing. Three jobs of b (300 ms) are not worth w2's 1 s load.
    let mut w1 = with_resident(with_resident(worker("w1", ABC), "a", 60_000), "b", 60_000);
    w1.main = Some(("a".into(), NOW - 60_000));
    let w2 = worker("w2", ABC);
    let decide_with = |b_waiting: u64| {
        decide(
            &snapshot(
                vec![
                    model("a", 5, 100, 1000),
                    model("b", b_waiting, 100, 1000),
                    model("c", 0, 100, 1000),
                ],
                vec![w1.clone(), w2.clone()],
            ),
            &policy(),
        )
    };
    let light = decide_with(3);
    assert_eq!(main_of(&light, "w1"), Some("a"), "{light:?}");
    assert!(consumes(&light, "w1", "b"), "{light:?}");
    assert_eq!(main_of(&light, "w2"), None, "{light:?}");
    assert!(!consumes(&light, "w2", "b"), "{light:?}");
    // Thirty jobs (3 s) are: w2 takes b.
    let heavy = decide_with(30);
    assert_eq!(main_of(&heavy, "w2"), Some("b"), "{heavy:?}");
}

#[test]
fn while_other_models_wait_a_load_must_gain_more_than_it_takes_from_the_fleet() {
    // As in idle_workers_join_while_the_work_per_worker_exceeds_a_load (12 s
    // of work, 5 s loads, five workers), but b has jobs waiting on w5. A third
    // worker on a would end it 0.3 s sooner, less than its load costs the fleet
    // (5 s / 5 workers): two, not three.
    let mut workers: Vec<WorkerState> = (1..=4).map(|i| worker(&format!("w{i}"), &["a"])).collect();
    let mut w5 = with_resident(worker("w5", &["b"]), "b", 60_000);
    w5.main = Some(("b".into(), NOW - 60_000));
    workers.push(w5);
    let decision = decide(
        &snapshot(
            vec![model("a", 12, 1000, 5000), model("b", 100, 1000, 5000)],
            workers,
        ),
        &policy(),
    );
    assert_eq!(decision.replicas("a"), 2, "{decision:?}");
    assert_eq!(main_of(&decision, "w5"), Some("b"), "{decision:?}");
}

#[test]
fn a_side_model_is_consumed_only_while_it_is_as_busy_as_the_main_and_kept_until_half_as_busy() {
    // w1's main is a, w2's is b; w1 also holds b. b (work per worker 2 s)
    // against a: taken as a side model when a has 2 s, not when a has 3 s;
    // once consumed, kept at 3 s and dropped at 5 s.
    let mut w1 = with_resident(with_resident(worker("w1", ABC), "a", 60_000), "b", 60_000);
    w1.main = Some(("a".into(), NOW - 60_000));
    let mut w2 = with_resident(worker("w2", ABC), "b", 60_000);
    w2.main = Some(("b".into(), NOW - 60_000));
    let side = |a_jobs: u64, consumed: bool| {
        let mut w1 = w1.clone();
        if consumed {
            w1.consuming = vec!["a".into(), "b".into()];
        }
        let models = vec![model("a", a_jobs, 1000, 5000), model("b", 2, 1000, 5000)];
        let decision = decide(&snapshot(models, vec![w1, w2.clone()]), &policy());
        assert_eq!(main_of(&decision, "w1"), Some("a"), "{decision:?}");
        consumes(&decision, "w1", "b")
    };
    assert!(side(2, false));
    assert!(!side(3, false));
    assert!(side(3, true));
    assert!(!side(5, true));
}
